"""Request counts, a latency histogram and error counts in the Prometheus text format, by hand.

The format (version 0.0.4) is a few lines per metric, so no client library is needed::

    # HELP edgevqa_requests_total Requests answered, by route and HTTP status.
    # TYPE edgevqa_requests_total counter
    edgevqa_requests_total{route="/v1/ask",status="200"} 12

Routes are the app's own paths; any other path counts as ``route="other"``, so a scan of random
URLs cannot grow the label set.

Example:
    >>> m = Metrics(routes={"/v1/ask"})
    >>> m.observe("/v1/ask", 200, 0.004)
    >>> "edgevqa_requests_total{route=\\"/v1/ask\\",status=\\"200\\"} 1" in m.render()
    True
"""

from __future__ import annotations

import threading
from collections import Counter

# seconds; an answer from the demo bundle takes a few ms, blip-vqa-base about a second on a CPU
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """Counters and a per-route latency histogram; thread-safe."""

    def __init__(self, routes: set[str] | frozenset[str]):
        self.routes = frozenset(routes)
        self._lock = threading.Lock()
        self._requests: Counter[tuple[str, int]] = Counter()
        self._errors: Counter[tuple[str, str]] = Counter()
        self._buckets: dict[str, list[int]] = {}
        self._sum: Counter[str] = Counter()
        self._count: Counter[str] = Counter()
        self._cache: Counter[str] = Counter()

    def route(self, path: str) -> str:
        return path if path in self.routes else "other"

    def observe(self, path: str, status: int, seconds: float) -> None:
        """Count one finished request: its status, its latency, and its error kind if any."""
        route = self.route(path)
        with self._lock:
            self._requests[route, status] += 1
            if status >= 400:
                self._errors[route, error_kind(status)] += 1
            counts = self._buckets.setdefault(route, [0] * len(BUCKETS))
            for i, le in enumerate(BUCKETS):
                if seconds <= le:
                    counts[i] += 1
            self._sum[route] += seconds
            self._count[route] += 1

    def image_cache(self, hit: bool) -> None:
        with self._lock:
            self._cache["hit" if hit else "miss"] += 1

    def render(self, gauges: dict[str, tuple[str, float]] | None = None) -> str:
        """The exposition text; ``gauges`` maps a metric name to (help, value)."""
        with self._lock:
            out = _header("edgevqa_requests_total", "counter", "Requests answered, by route and HTTP status.")
            out += [
                f'edgevqa_requests_total{{route="{r}",status="{s}"}} {n}'
                for (r, s), n in sorted(self._requests.items())
            ]
            out += _header(
                "edgevqa_errors_total",
                "counter",
                "Error responses, by route and kind (client: 4xx, overload: 503, server: other 5xx).",
            )
            out += [
                f'edgevqa_errors_total{{route="{r}",kind="{k}"}} {n}'
                for (r, k), n in sorted(self._errors.items())
            ]
            out += _header(
                "edgevqa_request_duration_seconds", "histogram", "Request latency, arrival to response."
            )
            for r in sorted(self._buckets):
                for le, n in zip(BUCKETS, self._buckets[r]):
                    out.append(f'edgevqa_request_duration_seconds_bucket{{route="{r}",le="{le}"}} {n}')
                out.append(
                    f'edgevqa_request_duration_seconds_bucket{{route="{r}",le="+Inf"}} {self._count[r]}'
                )
                out.append(f'edgevqa_request_duration_seconds_sum{{route="{r}"}} {self._sum[r]:.6f}')
                out.append(f'edgevqa_request_duration_seconds_count{{route="{r}"}} {self._count[r]}')
            out += _header(
                "edgevqa_image_encodings_total",
                "counter",
                "Images answered, by whether the encoding cache hit.",
            )
            out += [
                f'edgevqa_image_encodings_total{{cache="{k}"}} {n}' for k, n in sorted(self._cache.items())
            ]
        for name, (help_, value) in sorted((gauges or {}).items()):
            out += _header(name, "gauge", help_)
            out.append(f"{name} {value:g}")
        return "\n".join(out) + "\n"


def error_kind(status: int) -> str:
    if status == 503:
        return "overload"
    return "server" if status >= 500 else "client"


def _header(name: str, kind: str, help_: str) -> list[str]:
    return [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
