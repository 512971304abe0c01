"""Plain ASGI middleware for the server: count and time, check host and token, cap the body.

Each is a small class around the next ASGI app, so it also sees the responses the app never
produces itself (401, 413, unknown paths) and answers with the same ``{"error": "..."}`` JSON.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from edgevqa.serve.metrics import Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def send_json(send: Send, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    """A complete JSON response through a bare ASGI ``send``."""
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", []):
        if k.lower() == name:
            return v.decode("latin-1")
    return None


class RequestMetrics:
    """Times every HTTP request and records its final status in :class:`Metrics`."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = 500  # what the client gets if the app dies before answering

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.observe(scope.get("path", ""), status, time.perf_counter() - t0)


class Guard:
    """Refuses unknown Host headers (DNS rebinding) and, with a token, requests without it.

    ``public`` paths (the health check, and the page, which holds no data and asks for the
    token itself) need no token. The token is compared in constant time.
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
        if (
            "*" not in self.allowed_hosts
            and host_name(_header(scope, b"host") or "") not in self.allowed_hosts
        ):
            return await send_json(send, 400, {"error": "this Host header is not served here"})
        if self.token is not None and scope.get("path") not in self.public:
            given = _header(scope, b"authorization") or ""
            scheme, _, credential = given.partition(" ")
            ok = scheme.lower() == "bearer" and hmac.compare_digest(credential.strip().encode(), self.token)
            if not ok:
                return await send_json(
                    send,
                    401,
                    {"error": "missing or wrong token: send Authorization: Bearer <token>"},
                    {"WWW-Authenticate": "Bearer"},
                )
        await self.app(scope, receive, send)


def host_name(host: str) -> str:
    """``"127.0.0.1:8000"`` -> ``"127.0.0.1"``, ``"[::1]:8000"`` -> ``"::1"``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class BodyTooLarge(Exception):
    """The request body grew past the limit while it was being read."""


class BodyLimit:
    """Answers 413 for a body over ``limit`` bytes: by Content-Length up front, else while reading."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        error = {"error": f"the request body is larger than the {self.limit / 1e6:.1f} MB limit"}
        length = _header(scope, b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await send_json(send, 413, error)
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge
            return message

        async def track_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, track_send)
        except BodyTooLarge:
            if not started:
                await send_json(send, 413, error)
