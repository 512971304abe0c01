"""Run requests on one shared pipeline without unbounded queues.

One onnxruntime pipeline serves every request, and its image-encoding cache is not thread-safe,
so calls into it hold a lock. Decoding an upload (PNG, JPEG, DICOM) needs no lock and runs in a
small worker pool beside it. In front of both sits a gate: at most ``capacity`` requests are
admitted (running or waiting); the next one is refused at once, and the server answers 503 with
``Retry-After`` instead of letting a backlog grow in memory.

The pipeline's image-encoding cache is keyed by the image's content alone, so a shared cache would
tell a client (by ``image_cached``, or by a faster answer) that someone else sent the same image.
:meth:`Engine.serving` therefore empties it whenever the pipeline serves another client than the
one before: a client reuses only encodings of images it sent itself, since nobody else was served.

Example:
    >>> engine = Engine(pipe, capacity=8, workers=2)        # doctest: +SKIP
    >>> def ask(client, img, question):                      # in a worker thread
    ...     with engine.serving(client) as pipe:
    ...         return pipe.ask(img, question)
    >>> if engine.gate.try_enter():                          # doctest: +SKIP
    ...     answer = await engine.run(lambda: ask("10.0.0.7", img, "what modality?"))
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class Gate:
    """A non-blocking admission counter: ``try_enter`` succeeds while fewer than ``capacity`` are in."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"the queue capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._lock = threading.Lock()
        self._inside = 0

    def try_enter(self) -> bool:
        with self._lock:
            if self._inside >= self.capacity:
                return False
            self._inside += 1
            return True

    def leave(self) -> None:
        with self._lock:
            if self._inside <= 0:
                raise RuntimeError("Gate.leave() without a matching try_enter()")
            self._inside -= 1

    @property
    def inside(self) -> int:
        """Requests admitted and not yet finished (running or waiting for the pipeline)."""
        return self._inside


class Engine:
    """The shared pipeline, the lock around it, the worker pool and the gate in front."""

    def __init__(self, pipeline: Any, capacity: int = 8, workers: int = 2):
        self.pipeline = pipeline
        self.gate = Gate(capacity)
        self.lock = threading.Lock()  # one caller at a time inside the pipeline
        self.pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="edgevqa-worker")
        self._client: str | None = None  # whom the pipeline served last (under the lock)

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the worker pool (decoding and inference never block the event loop)."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn)

    @contextlib.contextmanager
    def serving(self, client: str) -> Iterator[Any]:
        """Hold the pipeline lock for ``client`` (an opaque id, see upload.client_of) and yield the
        pipeline, its image cache emptied first when the last request served was another client's."""
        with self.lock:
            if client != self._client:
                self.pipeline.forget_images()
                self._client = client
            yield self.pipeline

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
