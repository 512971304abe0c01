"""Plain ASGI middleware for the server: account for each request, add the headers every answer
carries, turn a bug into the fixed 500, check host, origin and token, cap and time the body.

Each is a small class around the next ASGI app, so it also sees the responses the app never
produces itself (401, 403, 408, 413, unknown paths) and answers with the same error JSON.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import ClientDisconnect

from edgevqa.serve.metrics import ABORTED, Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("edgevqa.serve")
access = logging.getLogger("edgevqa.serve.access")
BUG = "internal error (details are in the server log)"
OPENAI_ROUTES = frozenset({"/v1/chat/completions", "/v1/models"})
_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found_error"}
_DEFAULT_PORTS = {"http": 80, "https": 443}


def error_body(path: str, status: int, message: str) -> dict:
    """``{"error": message}``, or on the OpenAI-compatible routes the shape OpenAI's clients parse."""
    if path not in OPENAI_ROUTES:
        return {"error": message}
    kind = "server_error" if status >= 500 else _OPENAI_TYPES.get(status, "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


async def send_json(send: Send, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    """A complete JSON response through a bare ASGI ``send`` (ASCII-escaped: any string encodes)."""
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


async def send_error(
    scope: Scope, send: Send, status: int, message: str, headers: dict[str, str] | None = None
) -> None:
    await send_json(send, status, error_body(scope.get("path", ""), status, message), headers)


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", []):
        if k.lower() == name:
            return v.decode("latin-1")
    return None


# ---------------------------------------------------------------------------------------------


class RequestLog:
    """Times every HTTP request, records its final status in :class:`Metrics` and logs one line.

    The access-log line holds the client's address (the socket's peer: a forwarded header counts
    only where ``--forwarded-allow-ips`` names the proxy), the method, the route (any other path is
    logged as ``other``), the status and the milliseconds - never the query string, a header or the
    body, where a token or patient data could be. A client that went away before its answer was
    complete counts as 499, not as an error of the server.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, access_log: bool = True):
        self.app, self.metrics, self.access_log = app, metrics, access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 500  # what the client gets if the app dies before answering
        complete = left = False

        async def watch_receive() -> Message:
            nonlocal left
            message = await receive()
            left = left or (message["type"] == "http.disconnect" and not complete)
            return message

        async def watch_send(message: Message) -> None:
            nonlocal status, complete
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True
            await send(message)

        try:
            await self.app(scope, watch_receive, watch_send)
        finally:
            status = ABORTED if left else status
            seconds = time.perf_counter() - t0
            path = scope.get("path", "")
            self.metrics.observe(path, status, seconds)
            if self.access_log:
                host, port = scope.get("client") or ("-", 0)
                method, route = scope.get("method", "-"), self.metrics.route(path)
                access.info('%s:%d "%s %s" %d %.1f ms', host, port, method, route, status, 1e3 * seconds)


class DefaultHeaders:
    """Adds ``headers`` to every response that does not set them itself."""

    def __init__(self, app: ASGIApp, headers: dict[str, str]):
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def add(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw = list(message.get("headers", []))
                have = {k.lower() for k, _ in raw}
                message["headers"] = raw + [(k, v) for k, v in self.headers if k not in have]
            await send(message)

        await self.app(scope, receive, add)


class ServerErrors:
    """An exception out of the app becomes the fixed 500, logged here once with its traceback
    (and not raised on, so uvicorn does not log it a second time); a client that went away mid-
    request (ClientDisconnect) ends quietly, with nobody left to answer."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def track(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, track)
        except ClientDisconnect:
            return
        except Exception as e:
            log.error("internal error on %s: %s", scope.get("path"), type(e).__name__, exc_info=e)
            if not started:
                await send_error(scope, send, 500, BUG)


class Guard:
    """Refuses unknown Host headers (DNS rebinding), requests from another site's pages and, with
    a token, requests without it.

    A browser sends ``Origin`` with every cross-origin request (and with same-origin POSTs), so a
    request whose Origin is present and is not this server's own scheme, host and port - or is
    ``null`` (sandboxed frames, file: pages) - comes from a page the user visited, not from this
    server's page: 403. Clients that send no Origin (curl, scripts, the OpenAI client) pass.
    ``public`` paths (the health check, and the page, which holds no data and asks for the token
    itself) need no token. The token is compared in constant time.
    """

    def __init__(
        self, app: ASGIApp, token: str | None, allowed_hosts: tuple[str, ...], public: frozenset[str]
    ):
        self.app, self.public = app, public
        self.token = token.encode() if token else None
        self.allowed_hosts = {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        host = _header(scope, b"host") or ""
        if "*" not in self.allowed_hosts and host_name(host) not in self.allowed_hosts:
            return await send_error(scope, send, 400, "this Host header is not served here")
        origin = _header(scope, b"origin")
        if origin is not None and not same_origin(origin, scope.get("scheme", "http"), host):
            return await send_error(
                scope, send, 403, "cross-origin request refused: only this server's own page may call it"
            )
        if self.token is not None and scope.get("path") not in self.public:
            given = _header(scope, b"authorization") or ""
            scheme, _, credential = given.partition(" ")
            ok = scheme.lower() == "bearer" and hmac.compare_digest(credential.strip().encode(), self.token)
            if not ok:
                return await send_error(
                    scope,
                    send,
                    401,
                    "missing or wrong token: send Authorization: Bearer <token>",
                    {"WWW-Authenticate": "Bearer"},
                )
        await self.app(scope, receive, send)


def host_name(host: str) -> str:
    """``"127.0.0.1:8000"`` -> ``"127.0.0.1"``, ``"[::1]:8000"`` -> ``"::1"``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def same_origin(origin: str, scheme: str, host: str) -> bool:
    """Whether ``origin`` names the server a request with this scheme and Host header reached."""

    def parts(url: str) -> tuple[str, str | None, int | None]:
        u = urlsplit(url.strip().lower())
        return u.scheme, u.hostname, u.port or _DEFAULT_PORTS.get(u.scheme)

    try:
        mine, theirs = parts(f"{scheme}://{host}"), parts(origin)
    except ValueError:  # a malformed port or brackets
        return False
    return theirs[1] is not None and theirs[2] is not None and theirs == mine


class BodyTooLarge(Exception):
    """The request body grew past the limit while it was being read."""


class BodyTimeout(Exception):
    """The request body had not fully arrived by its deadline."""


class BodyLimit:
    """Answers 413 for a body over ``limit`` bytes (by Content-Length up front, else while it is
    read) and 408 for one still incomplete ``timeout_s`` seconds after the request's head.

    With the deadline a client that trickles its body cannot hold the request (and its
    connection: the 408 closes it) for long; the routes read the whole body before they take a
    queue slot, so such a client never holds one of those at all. Bodies are read into memory, so
    at most ``max_reading`` are read at once; a request with a body beyond that gets 503 with
    ``Retry-After`` before a byte of it is read (memory stays under max_reading x limit).
    """

    def __init__(
        self, app: ASGIApp, limit: int, timeout_s: float = 60.0, max_reading: int = 16, retry_after_s: int = 1
    ):
        self.app, self.limit, self.timeout_s = app, limit, timeout_s
        self.max_reading, self.retry_after_s = max_reading, retry_after_s
        self.reading = 0  # bodies being read now (one event loop: no lock needed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await send_error(scope, send, 413, self._too_large())
        has_body = (length is not None and int(length) > 0) or _header(
            scope, b"transfer-encoding"
        ) is not None
        if has_body and self.reading >= self.max_reading:
            message = f"busy: {self.max_reading} uploads are being received; try again shortly"
            return await send_error(scope, send, 503, message, {"Retry-After": str(self.retry_after_s)})
        deadline = time.monotonic() + self.timeout_s
        seen = 0
        complete, started, counted = not has_body, False, has_body
        self.reading += counted

        def done_reading() -> None:
            nonlocal counted
            if counted:
                self.reading -= 1
                counted = False

        async def limited_receive() -> Message:
            nonlocal seen, complete
            if complete:  # the body is in: later receives only wait for a disconnect
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise BodyTimeout from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                complete = not message.get("more_body", False)
                if complete:
                    done_reading()
                if seen > self.limit:
                    raise BodyTooLarge
            elif message["type"] == "http.disconnect":
                done_reading()
            return message

        async def track_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, track_send)
        except BodyTooLarge:
            if not started:
                await send_error(scope, send, 413, self._too_large())
        except BodyTimeout:
            if not started:
                message = f"the request body did not arrive within {self.timeout_s:g} s"
                await send_error(scope, send, 408, message, {"Connection": "close"})
        finally:
            done_reading()  # also when the route answered without reading the body (a 401, ...)

    def _too_large(self) -> str:
        return f"the request body is larger than the {self.limit / 1e6:.1f} MB limit"
