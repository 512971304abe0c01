"""The FastAPI app: one shared pipeline behind a bounded queue, JSON errors, a page, metrics.

Routes (all but ``/healthz`` and the page need the bearer token when one is set):

* ``POST /v1/ask`` -- multipart (``image`` file, ``question``, optional ``window`` "C,W" and
  ``frame``) or JSON (``image_base64``, ``question``, optional ``filename``, ``window``, ``frame``)
  -> ``{"answer", "question", "image_cached", "latency_ms", "timings_ms", ...}``
* ``POST /v1/preview`` -- the same image fields -> a PNG of the image the model sees (DICOM
  converted), at most ``PREVIEW_SIDE`` pixels a side
* ``GET /v1/model`` -- what is being served (family, precision, backend, versions, limits)
* ``GET /healthz``, ``GET /metrics`` (Prometheus text), ``GET /openapi.json``, ``GET /`` (the page)

Every bad input is a 4xx with ``{"error": "..."}``; a bug is a 500 with a fixed message (the
traceback goes to the server's log only). When ``max_queue`` requests are already admitted, the
next gets 503 with ``Retry-After``.

Example:
    >>> pipe = VQAPipeline.from_bundle("bundle")                   # doctest: +SKIP
    >>> app = build_app(pipe, ServeSettings(token="s3cret"))       # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import ipaddress
import json
import logging
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from edgevqa import __version__
from edgevqa.errors import EdgeVQAError, InputError, MissingDependencyError
from edgevqa.runtime.images import load_image
from edgevqa.serve.engine import Engine
from edgevqa.serve.metrics import CONTENT_TYPE, Metrics
from edgevqa.serve.middleware import BodyLimit, Guard, RequestMetrics
from edgevqa.serve.upload import ASK_BODY, PREVIEW_BODY, ApiError, Upload, read_upload

log = logging.getLogger("edgevqa.serve")
PREVIEW_SIDE = 1024
ROUTES = frozenset({"/", "/healthz", "/metrics", "/openapi.json", "/v1/ask", "/v1/preview", "/v1/model"})
PUBLIC = frozenset({"/", "/healthz"})
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
PAGE_HEADERS = {
    # one self-contained file: its inline script and style, images from the API (blob:) only
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class ServeSettings:
    """How ``edgevqa serve`` listens and what it accepts (each field is a flag of the command)."""

    host: str = "127.0.0.1"  # loopback by default: only this machine can connect
    port: int = 8000
    token: str | None = None  # bearer token every route but /healthz and / needs (None: no token)
    max_body_bytes: int = 32 * 1024 * 1024  # the largest request body (an image or DICOM file)
    max_pixels: int = 40_000_000  # the largest image (or DICOM frame), checked before decoding
    max_question_chars: int = 500
    max_queue: int = 8  # requests admitted at once, running or waiting; the next one gets 503
    workers: int = 2  # threads that decode uploads; inference itself runs one at a time
    retry_after_s: int = 1  # what a 503 tells the client to wait
    allowed_hosts: tuple[str, ...] | None = (
        None  # Host headers served (None: loopback names on loopback, else any)
    )

    def __post_init__(self) -> None:
        for flag, value, least in (
            ("--port", self.port, 0),
            ("--max-body-mb", self.max_body_bytes, 1),
            ("--max-pixels", self.max_pixels, 1),
            ("--max-question-chars", self.max_question_chars, 1),
            ("--max-queue", self.max_queue, 1),
            ("--workers", self.workers, 1),
        ):
            if value < least:
                raise InputError(f"{flag} must be at least {least}, got {value}")
        if self.token is not None and len(self.token) < 8:
            raise InputError("--token (or EDGEVQA_TOKEN) must be at least 8 characters")

    def hosts(self) -> tuple[str, ...]:
        if self.allowed_hosts is not None:
            return self.allowed_hosts
        return (*LOOPBACK_NAMES, self.host) if is_loopback(self.host) else ("*",)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------


def build_app(pipeline: Any, settings: ServeSettings | None = None) -> FastAPI:
    """The app serving ``pipeline`` (a :class:`~edgevqa.runtime.VQAPipeline`) with ``settings``."""
    settings = settings or ServeSettings()
    engine = Engine(pipeline, capacity=settings.max_queue, workers=settings.workers)
    metrics = Metrics(ROUTES)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        engine.close()

    app = FastAPI(
        title="edgevqa",
        version=__version__,
        description="Radiology visual question answering from a verified ONNX bundle. "
        "Supports, and does not replace, clinical judgement.",
        docs_url=None,  # the Swagger page loads from a CDN; /openapi.json is the schema
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.engine, app.state.metrics, app.state.settings = engine, metrics, settings
    _errors(app)
    _routes(app, engine, metrics, settings, model_summary(pipeline, settings))
    # the last added runs first: metrics see every response, the guard runs before the body is read
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(Guard, token=settings.token, allowed_hosts=settings.hosts(), public=PUBLIC)
    app.add_middleware(RequestMetrics, metrics=metrics)
    return app


def _errors(app: FastAPI) -> None:
    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return error(e.status, str(e))

    @app.exception_handler(EdgeVQAError)
    async def user_error(request: Request, e: EdgeVQAError) -> JSONResponse:
        return error(501 if isinstance(e, MissingDependencyError) else 400, str(e))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        message = e.detail if isinstance(e.detail, str) else json.dumps(e.detail)
        return error(e.status_code, message.lower() if e.status_code in (404, 405) else message, e.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(Exception)
    async def bug(request: Request, e: Exception) -> JSONResponse:
        log.error("internal error on %s: %s", request.url.path, type(e).__name__, exc_info=e)
        return error(500, "internal error (details are in the server log)")


def _routes(app: FastAPI, engine: Engine, metrics: Metrics, settings: ServeSettings, summary: dict) -> None:
    page = resources.files("edgevqa.serve").joinpath("page.html").read_text(encoding="utf-8")
    busy = {"Retry-After": str(settings.retry_after_s)}

    def overloaded() -> JSONResponse:
        message = (
            f"busy: {settings.max_queue} requests are running or queued; retry in {settings.retry_after_s} s"
        )
        return JSONResponse({"error": message}, status_code=503, headers=busy)

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/v1/model", summary="What is being served: family, precision, backend, versions, limits")
    async def model() -> dict:
        return summary

    @app.get("/metrics", summary="Prometheus metrics (text format)", response_class=Response)
    async def prometheus() -> Response:
        gauges = {
            "edgevqa_requests_admitted": (
                "Requests running or waiting for the model now.",
                engine.gate.inside,
            ),
            "edgevqa_requests_admitted_max": ("Requests admitted at once before 503.", engine.gate.capacity),
        }
        if (rss := resident_bytes()) is not None:
            gauges["process_resident_memory_bytes"] = ("Resident memory of the server process.", rss)
        return Response(metrics.render(gauges), media_type=CONTENT_TYPE)

    @app.post("/v1/ask", summary="Answer a question about an image or DICOM", openapi_extra=ASK_BODY)
    async def ask(request: Request) -> Any:
        t0 = time.perf_counter()
        if not engine.gate.try_enter():
            return overloaded()
        try:
            up = await read_upload(request, settings.max_question_chars, need_question=True)
            assert up.question is not None
            result = await engine.run(lambda: _answer(engine, settings, up))
        finally:
            engine.gate.leave()
        metrics.image_cache(result["image_cached"])
        return {**result, "latency_ms": round(1e3 * (time.perf_counter() - t0), 3)}

    @app.post("/v1/preview", summary="PNG of the image the model sees", openapi_extra=PREVIEW_BODY)
    async def preview(request: Request) -> Response:
        if not engine.gate.try_enter():
            return overloaded()
        try:
            up = await read_upload(request, settings.max_question_chars, need_question=False)
            png, size = await engine.run(lambda: _preview(settings, up))
        finally:
            engine.gate.leave()
        headers = {"Cache-Control": "no-store", "X-Image-Size": f"{size[0]}x{size[1]}"}
        return Response(png, media_type="image/png", headers=headers)


def _answer(engine: Engine, settings: ServeSettings, up: Upload) -> dict:
    """In a worker thread: decode the upload, then ask the shared pipeline under its lock."""
    t0 = time.perf_counter()
    img = load_image(up.data, max_pixels=settings.max_pixels, dicom=up.dicom, name=up.name)
    t1 = time.perf_counter()
    with engine.lock:
        t2 = time.perf_counter()
        ans = engine.pipeline.ask(img, up.question)
    pipe = engine.pipeline
    return {
        "answer": ans.text,
        "question": up.question,
        "image_cached": ans.image_cached,
        "precision": pipe.precision,
        "backend": pipe.backend,
        "timings_ms": {"decode_ms": round(1e3 * (t1 - t0), 3), "queue_ms": round(1e3 * (t2 - t1), 3)}
        | ans.timings_ms,
    }


def _preview(settings: ServeSettings, up: Upload) -> tuple[bytes, tuple[int, int]]:
    img = load_image(up.data, max_pixels=settings.max_pixels, dicom=up.dicom, name=up.name)
    size = img.size
    img.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue(), size


# ---------------------------------------------------------------------------------------------


def model_summary(pipeline: Any, settings: ServeSettings) -> dict:
    """What ``/v1/model`` answers: enough to identify the model, no file system paths."""
    m = pipeline.manifest
    manifest_file = Path(pipeline.bundle) / "manifest.json"
    digest = hashlib.sha256(manifest_file.read_bytes()).hexdigest()[:16] if manifest_file.exists() else None
    return {
        "family": m.family,
        "schema_version": m.schema_version,
        "manifest_sha256": digest,
        "precision": pipeline.precision,
        "backend": pipeline.backend,
        "precisions": sorted(m.precisions),
        "image_size": [m.image.height, m.image.width],
        "max_answer_tokens": m.text.max_answer_tokens,
        "lora": bool(m.source.get("lora", False)),
        "versions": {"edgevqa_server": __version__, **{f"export_{k}": v for k, v in m.versions.items()}},
        "limits": {
            "max_body_bytes": settings.max_body_bytes,
            "max_pixels": settings.max_pixels,
            "max_question_chars": settings.max_question_chars,
            "max_queue": settings.max_queue,
        },
    }


def resident_bytes() -> int | None:
    """This process's resident memory (Linux ``/proc``), or None elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def run(app: FastAPI, settings: ServeSettings, access_log: bool = True) -> None:
    """Serve ``app`` with uvicorn until interrupted (SIGINT/SIGTERM stop it cleanly)."""
    import uvicorn

    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        access_log=access_log,
        log_level="info",
        timeout_keep_alive=5,
        server_header=False,
    )
