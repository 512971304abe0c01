"""Request counts, a latency histogram and error counts for ``/metrics``, through prometheus_client.

The exposition is prometheus_client's own, so scrapers and its parser read it as they read any
other exporter's::

    # HELP edgevqa_requests_total Requests answered, by route and HTTP status.
    # TYPE edgevqa_requests_total counter
    edgevqa_requests_total{route="/v1/ask",status="200"} 12.0

Routes are the app's own paths; any other path counts as ``route="other"``, so a scan of random
URLs cannot grow the label set. A client that went away before its answer counts as status 499
(kind ``aborted``), not as a server error. Each :class:`Metrics` has a registry of its own (two apps
in one process, as in the tests, count apart); it also carries prometheus_client's process
collector (``process_resident_memory_bytes``, CPU seconds, open file descriptors; Linux only).

Example:
    >>> m = Metrics(routes={"/v1/ask"})
    >>> m.observe("/v1/ask", 200, 0.004)
    >>> b'edgevqa_requests_total{route="/v1/ask",status="200"} 1.0' in m.render()
    True
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

# seconds; an answer from the demo bundle takes a few ms, blip-vqa-base about a second on a CPU
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST
ABORTED = 499  # nginx's "client closed request": what a request counts as when its client left


class Metrics:
    """The server's counters, latency histogram and gauges, in a registry of their own."""

    def __init__(self, routes: set[str] | frozenset[str]):
        self.routes = frozenset(routes)
        self.registry = r = CollectorRegistry()
        self._requests = Counter(
            "edgevqa_requests",
            "Requests answered, by route and HTTP status.",
            ["route", "status"],
            registry=r,
        )
        self._errors = Counter(
            "edgevqa_errors",
            "Error responses, by route and kind (client: 4xx, aborted: the client left (499), "
            "overload: 503, server: other 5xx).",
            ["route", "kind"],
            registry=r,
        )
        self._latency = Histogram(
            "edgevqa_request_duration_seconds",
            "Request latency, arrival to response.",
            ["route"],
            buckets=BUCKETS,
            registry=r,
        )
        self._cache = Counter(
            "edgevqa_image_encodings",
            "Images answered, by whether the encoding cache hit.",
            ["cache"],
            registry=r,
        )
        ProcessCollector(registry=r)

    def route(self, path: str) -> str:
        return path if path in self.routes else "other"

    def observe(self, path: str, status: int, seconds: float) -> None:
        """Count one finished request: its status, its latency, and its error kind if any."""
        route = self.route(path)
        self._requests.labels(route, str(status)).inc()
        if status >= 400:
            self._errors.labels(route, error_kind(status)).inc()
        self._latency.labels(route).observe(seconds)

    def image_cache(self, hit: bool) -> None:
        self._cache.labels("hit" if hit else "miss").inc()

    def gauge(self, name: str, help_: str, read: Callable[[], float]) -> None:
        """A gauge whose value ``read()`` gives at each scrape."""
        Gauge(name, help_, registry=self.registry).set_function(read)

    def render(self) -> bytes:
        """The exposition text (:data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


def error_kind(status: int) -> str:
    if status == ABORTED:
        return "aborted"
    if status == 503:
        return "overload"
    return "server" if status >= 500 else "client"
