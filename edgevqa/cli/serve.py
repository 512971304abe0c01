"""`edgevqa serve`: the bundle over HTTP, with a page for clinicians."""

from __future__ import annotations

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
    precision: Precision = "auto",
    backend: Backend = "auto",
    threads: Threads = 0,
    max_queue: Annotated[
        int, typer.Option(help="Requests admitted at once (running + waiting); more get 503 + Retry-After.")
    ] = 8,
    workers: Annotated[
        int, typer.Option(help="Threads decoding uploads (inference runs one at a time).")
    ] = 2,
    max_uploads: Annotated[
        int, typer.Option(help="Request bodies received at once (each up to --max-body-mb); more get 503.")
    ] = 16,
    max_body_mb: Annotated[
        float, typer.Option(help="Largest request body in MB (image or DICOM file).")
    ] = 32.0,
    max_pixels: Annotated[int, typer.Option(help="Largest image or DICOM frame, in pixels.")] = 40_000_000,
    max_question_chars: Annotated[int, typer.Option(help="Longest question, in characters.")] = 500,
    body_timeout: Annotated[
        float, typer.Option(help="Seconds a request body may take to arrive (then 408).")
    ] = 60.0,
    header_timeout: Annotated[
        float, typer.Option(help="Seconds a connection may take to send a request's headers (then closed).")
    ] = 10.0,
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(
            show_default=False,
            help="Comma-separated proxy addresses whose X-Forwarded-For/-Proto are believed (default: none).",
        ),
    ] = None,
    insecure_no_token: Annotated[
        bool,
        typer.Option(
            "--insecure-no-token",
            help="Allow a non-loopback --host without a token (anyone who can reach it can ask).",
        ),
    ] = False,
    access_log: Annotated[
        bool, typer.Option(help="Log one line per request (address, method, route, status; no query string).")
    ] = True,
) -> None:
    """Serve the bundle over HTTP: a page for clinicians at /, /v1/ask, /v1/chat/completions, /metrics."""
    need("fastapi", "uvicorn", "python_multipart", "prometheus_client")
    from edgevqa.runtime import VQAPipeline
    from edgevqa.runtime.session import use_global_pool
    from edgevqa.serve.app import ServeSettings, build_app
    from edgevqa.serve.server import run

    settings = ServeSettings(
        host=host,
        port=port,
        token=token or None,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        max_pixels=max_pixels,
        max_question_chars=max_question_chars,
        max_queue=max_queue,
        max_uploads=max_uploads,
        workers=workers,
        body_timeout_s=body_timeout,
        header_timeout_s=header_timeout,
        forwarded_allow_ips=forwarded_allow_ips,
        insecure_no_token=insecure_no_token,
        access_log=access_log,
    )  # refuses a non-loopback host without a token, before the bundle loads
    use_global_pool(threads)  # this process is ours: one pool for the three graphs
    pipe = VQAPipeline.from_bundle(model, precision=precision, threads=threads, backend=backend)
    shown = f"[{host}]" if ":" in host else host
    typer.echo(
        f"serving {pipe.manifest.family} ({pipe.precision}, {pipe.backend}) on http://{shown}:{port}/ "
        f"(queue {max_queue}{', token required' if settings.token else ', no token'})",
        err=True,
    )
    run(build_app(pipe, settings), settings)
