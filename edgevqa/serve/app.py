"""The FastAPI app: one shared pipeline behind a bounded queue, JSON errors, a page, metrics.

Routes (all but ``/healthz`` and the page need the bearer token when one is set):

* ``POST /v1/ask`` -- multipart (``image`` file, ``question``, optional ``window`` "C,W" and
  ``frame``) or JSON (``image_base64``, ``question``, optional ``filename``, ``window``, ``frame``)
  -> ``{"answer", "question", "image_cached", "latency_ms", "timings_ms", ...}``
* ``POST /v1/preview`` -- the same image fields -> a PNG of the image the model sees (DICOM
  converted), at most ``PREVIEW_SIDE`` pixels a side
* ``POST /v1/chat/completions``, ``GET /v1/models`` -- the same answers for OpenAI's clients (chat.py)
* ``GET /v1/model`` -- what is being served (family, precision, backend, versions, limits)
* ``GET /healthz``, ``GET /metrics`` (Prometheus), ``GET /openapi.json``, ``GET /`` (the page)

Every bad input is a 4xx with ``{"error": "..."}``; a bug is a 500 with a fixed message (the
traceback goes to the server's log, once). A request's body is read, within ``body_timeout_s``,
before it takes one of the ``max_queue`` slots; when all are taken it gets 503 with
``Retry-After``. Every response carries ``Cache-Control: no-store``; requests whose ``Origin`` is
another site's are refused (middleware.py).

Example:
    >>> pipe = VQAPipeline.from_bundle("bundle")                   # doctest: +SKIP
    >>> app = build_app(pipe, ServeSettings(token="s3cret"))       # doctest: +SKIP
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import json
import re
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException

from edgevqa import __version__
from edgevqa.errors import EdgeVQAError, InputError, MissingDependencyError
from edgevqa.serve import chat
from edgevqa.serve.engine import Engine
from edgevqa.serve.metrics import CONTENT_TYPE, Metrics
from edgevqa.serve.middleware import BodyLimit, DefaultHeaders, Guard, RequestLog, ServerErrors, error_body
from edgevqa.serve.upload import ASK_BODY, PREVIEW_BODY, ApiError, client_of, read_upload
from edgevqa.serve.work import admitted, answer, preview

ROUTES = frozenset(
    {"/", "/healthz", "/metrics", "/openapi.json", "/v1/ask", "/v1/preview", "/v1/model", *chat.ROUTES}
)
PUBLIC = frozenset({"/", "/healthz"})
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
# every response: answers are about patient images, and no cache (browser or proxy) may keep them
API_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
PAGE = resources.files("edgevqa.serve").joinpath("page.html").read_text(encoding="utf-8")


def csp_hashes(html: str, tag: str) -> str:
    """CSP sources allowing exactly the inline ``<tag>`` blocks of ``html``: ``'sha256-...'`` each."""
    blocks = re.findall(rf"<{tag}(?:\s[^>]*)?>(.*?)</{tag}>", html, flags=re.S | re.I)
    digests = (base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in blocks)
    return " ".join(f"'sha256-{d}'" for d in digests) or "'none'"


PAGE_HEADERS = {
    # one self-contained file: only its own inline script and style (by hash, computed from the file
    # above, so an injected script or style attribute does not run), images from the API (blob:)
    "Content-Security-Policy": f"default-src 'none'; script-src {csp_hashes(PAGE, 'script')}; "
    f"style-src {csp_hashes(PAGE, 'style')}; img-src blob: data:; connect-src 'self'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'",
    **API_HEADERS,
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
    body_timeout_s: float = 60.0  # a request body must be in this long after its head, else 408
    max_uploads: int = 16  # request bodies read at once (memory: at most this x max_body_bytes); then 503
    header_timeout_s: float = 10.0  # a connection must send a request head this soon, else closed
    forwarded_allow_ips: str | None = None  # proxies whose X-Forwarded-For/-Proto count (None: none)
    insecure_no_token: bool = False  # allow a non-loopback host without a token
    access_log: bool = True  # one line per request: address, method, route, status, ms

    def __post_init__(self) -> None:
        for flag, value, least in (
            ("--port", self.port, 0),
            ("--max-body-mb", self.max_body_bytes, 1),
            ("--max-pixels", self.max_pixels, 1),
            ("--max-question-chars", self.max_question_chars, 1),
            ("--max-queue", self.max_queue, 1),
            ("--max-uploads", self.max_uploads, 1),
            ("--workers", self.workers, 1),
        ):
            if value < least:
                raise InputError(f"{flag} must be at least {least}, got {value}")
        for flag, seconds in (
            ("--body-timeout", self.body_timeout_s),
            ("--header-timeout", self.header_timeout_s),
        ):
            if not seconds > 0:
                raise InputError(f"{flag} must be more than 0 seconds, got {seconds}")
        if self.token is not None and len(self.token) < 8:
            raise InputError("--token (or EDGEVQA_TOKEN) must be at least 8 characters")
        if self.token is None and not is_loopback(self.host) and not self.insecure_no_token:
            raise InputError(
                f"refusing to serve on {self.host} without a token (anyone who can reach the port could "
                "use the model): set EDGEVQA_TOKEN, or pass --insecure-no-token"
            )

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
    metrics.gauge(
        "edgevqa_requests_admitted",
        "Requests running or waiting for the model now.",
        lambda: engine.gate.inside,
    )
    metrics.gauge(
        "edgevqa_requests_admitted_max", "Requests admitted at once before 503.", lambda: engine.gate.capacity
    )

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
    summary = model_summary(pipeline, settings)
    _routes(app, engine, metrics, settings, summary)
    chat.add_routes(app, engine, metrics, settings, model_id=f"{summary['family']}-{summary['precision']}")
    # the last added runs first: the log sees every response, the guard runs before the body is read
    app.add_middleware(
        BodyLimit,
        limit=settings.max_body_bytes,
        timeout_s=settings.body_timeout_s,
        max_reading=settings.max_uploads,
        retry_after_s=settings.retry_after_s,
    )
    app.add_middleware(Guard, token=settings.token, allowed_hosts=settings.hosts(), public=PUBLIC)
    app.add_middleware(ServerErrors)
    app.add_middleware(DefaultHeaders, headers=API_HEADERS)
    app.add_middleware(RequestLog, metrics=metrics, access_log=settings.access_log)
    return app


def _errors(app: FastAPI) -> None:
    def error(request: Request, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        # json.dumps escapes to ASCII: a message can quote any string the client sent
        body = json.dumps(error_body(request.url.path, status, message))
        return Response(body, status_code=status, headers=headers, media_type="application/json")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> Response:
        return error(request, e.status, str(e), e.headers)

    @app.exception_handler(EdgeVQAError)
    async def user_error(request: Request, e: EdgeVQAError) -> Response:
        return error(request, 501 if isinstance(e, MissingDependencyError) else 400, str(e))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> Response:
        message = e.detail if isinstance(e.detail, str) else json.dumps(e.detail)
        return error(
            request, e.status_code, message.lower() if e.status_code in (404, 405) else message, e.headers
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> Response:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()))
        return error(request, 422, f"{where}: {first.get('msg', 'invalid request')}")

    # any other exception is a bug: middleware.ServerErrors answers the fixed 500 and logs it once


def _routes(app: FastAPI, engine: Engine, metrics: Metrics, settings: ServeSettings, summary: dict) -> None:
    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(PAGE, headers=PAGE_HEADERS)

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/v1/model", summary="What is being served: family, precision, backend, versions, limits")
    async def model() -> dict:
        return summary

    @app.get("/metrics", summary="Prometheus metrics (text format)", response_class=Response)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/v1/ask", summary="Answer a question about an image or DICOM", openapi_extra=ASK_BODY)
    async def ask(request: Request) -> Any:
        t0 = time.perf_counter()
        up = await read_upload(request, settings.max_question_chars, need_question=True)
        client = client_of(request)
        with admitted(engine, settings):
            ans = await engine.run(lambda: answer(engine, settings, up, client))
        metrics.image_cache(ans.image_cached)
        pipe = engine.pipeline
        return {
            "answer": ans.text,
            "question": up.question,
            "image_cached": ans.image_cached,
            "precision": pipe.precision,
            "backend": pipe.backend,
            "timings_ms": ans.timings_ms,
            "latency_ms": round(1e3 * (time.perf_counter() - t0), 3),
        }

    @app.post("/v1/preview", summary="PNG of the image the model sees", openapi_extra=PREVIEW_BODY)
    async def preview_png(request: Request) -> Response:
        up = await read_upload(request, settings.max_question_chars, need_question=False)
        with admitted(engine, settings):
            png, size = await engine.run(lambda: preview(settings, up))
        headers = {"X-Image-Size": f"{size[0]}x{size[1]}"}
        return Response(png, media_type="image/png", headers=headers)


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
        "precision_auto": getattr(pipeline, "auto", None),  # how --precision auto chose, if it did
        "backend": pipeline.backend,
        "engines": m.engines.get(pipeline.precision, {}),  # graphs not run by `backend` (OpenVINO paths)
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
