"""`edgevqa serve`: the bundle over HTTP, with a page for clinicians."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from edgevqa.cli.base import app, need
from edgevqa.cli.options import Backend, Bundle, Precision, Threads


@app.command()
def serve(
    model: Bundle,
    host: Annotated[
        str, typer.Option(help="Address to listen on (loopback: only this machine).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="EDGEVQA_TOKEN",
            show_default=False,
            help="Bearer token required by every route but /healthz and the page (prefer the env var).",
        ),
    ] = None,
    precision: Precision = None,
    backend: Backend = "auto",
    threads: Threads = 0,
    max_queue: Annotated[
        int, typer.Option(help="Requests admitted at once (running + waiting); more get 503 + Retry-After.")
    ] = 8,
    workers: Annotated[
        int, typer.Option(help="Threads decoding uploads (inference runs one at a time).")
    ] = 2,
    max_body_mb: Annotated[
        float, typer.Option(help="Largest request body in MB (image or DICOM file).")
    ] = 32.0,
    max_pixels: Annotated[int, typer.Option(help="Largest image or DICOM frame, in pixels.")] = 40_000_000,
    max_question_chars: Annotated[int, typer.Option(help="Longest question, in characters.")] = 500,
    access_log: Annotated[bool, typer.Option(help="Log one line per request (method, path, status).")] = True,
) -> None:
    """Serve the bundle over HTTP: a page for clinicians at /, POST /v1/ask, /metrics, /healthz."""
    need("fastapi", "uvicorn", "python_multipart")
    from edgevqa.runtime import VQAPipeline
    from edgevqa.runtime.session import use_global_pool
    from edgevqa.serve.app import ServeSettings, build_app, is_loopback, run

    settings = ServeSettings(
        host=host,
        port=port,
        token=token or None,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        max_pixels=max_pixels,
        max_question_chars=max_question_chars,
        max_queue=max_queue,
        workers=workers,
    )
    if not is_loopback(host) and settings.token is None:
        logging.getLogger("edgevqa").warning(
            "serving on %s without a token: anyone who can reach this port can use the model "
            "(set EDGEVQA_TOKEN)",
            host,
        )
    use_global_pool(threads)  # this process is ours: one pool for the three graphs
    pipe = VQAPipeline.from_bundle(model, precision=precision, threads=threads, backend=backend)
    shown = f"[{host}]" if ":" in host else host
    typer.echo(
        f"serving {pipe.manifest.family} ({pipe.precision}, {pipe.backend}) on http://{shown}:{port}/ "
        f"(queue {max_queue}{', token required' if settings.token else ''})",
        err=True,
    )
    run(build_app(pipe, settings), settings, access_log=access_log)
