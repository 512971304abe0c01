"""Serve the app with uvicorn: no forwarded headers unless asked, our access log, head deadlines.

* Forwarded headers: uvicorn by default believes ``X-Forwarded-For``/``-Proto`` from 127.0.0.1,
  so any local client could choose the address the log and the image cache see. They count here
  only from the proxies ``--forwarded-allow-ips`` names.
* Access log: uvicorn's writes the query string; middleware.RequestLog writes our own line without
  it, so uvicorn's is off.
* Deadlines: uvicorn times out a connection only while it idles between requests, and any byte
  restarts nothing, so a client that trickles its request line and headers holds its connection
  forever. :class:`HeadDeadline` closes a connection that has not sent a complete request head
  within ``header_timeout_s`` of connecting or of its last response; the body has its own
  deadline in middleware.BodyLimit (408).

Example:
    >>> run(build_app(pipe, settings), settings)       # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from edgevqa.serve.app import ServeSettings


class HeadDeadline(H11Protocol):
    """uvicorn's h11 protocol, closing connections that send no complete request head in time."""

    timeout_s = 10.0  # set per server by :func:`protocol`

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()  # the next request's head has the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self.timeout_s, self._expired)

    def _expired(self) -> None:
        answering = self.cycle is not None and not self.cycle.response_complete
        if not answering and not self.transport.is_closing():
            self.transport.close()


def protocol(settings: ServeSettings) -> type[HeadDeadline]:
    """:class:`HeadDeadline` with ``settings.header_timeout_s``."""
    return type("HeadDeadline", (HeadDeadline,), {"timeout_s": settings.header_timeout_s})


def run(app: Any, settings: ServeSettings) -> None:
    """Serve ``app`` with uvicorn until interrupted (SIGINT/SIGTERM stop it cleanly)."""
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        http=protocol(settings),
        access_log=False,  # middleware.RequestLog writes the access log, without query strings
        proxy_headers=settings.forwarded_allow_ips is not None,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        log_level="info",
        timeout_keep_alive=5,
        server_header=False,
    )
