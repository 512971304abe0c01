"""What runs in the worker threads: decode an upload, answer it on the shared pipeline, preview it.

Both ``/v1/ask`` and ``/v1/chat/completions`` answer through :func:`answer`, so the same image and
question give the same answer on either route (greedy unless the chat request asks to sample).

Example:
    >>> ans = await engine.run(lambda: answer(engine, settings, up, client_of(request)))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from edgevqa.runtime.decoding import DecodingOptions, SamplingOptions
from edgevqa.runtime.images import load_image
from edgevqa.runtime.pipeline import Answer
from edgevqa.serve.engine import Engine
from edgevqa.serve.upload import ApiError, Upload

if TYPE_CHECKING:
    from edgevqa.serve.app import ServeSettings

PREVIEW_SIDE = 1024


@contextlib.contextmanager
def admitted(engine: Engine, settings: ServeSettings) -> Iterator[None]:
    """One of the ``max_queue`` slots for the duration, or ApiError 503 with Retry-After at once.

    Routes take it only once the request's body is read: a slow upload never holds a slot.
    """
    if not engine.gate.try_enter():
        wait = settings.retry_after_s
        message = f"busy: {settings.max_queue} requests are running or queued; retry in {wait} s"
        raise ApiError(503, message, {"Retry-After": str(wait)})
    try:
        yield
    finally:
        engine.gate.leave()


def answer(
    engine: Engine,
    settings: ServeSettings,
    up: Upload,
    client: str,
    options: DecodingOptions | None = None,
    sampling: SamplingOptions | None = None,
    seed: int | None = None,
) -> Answer:
    """The pipeline's answer to ``up`` for ``client``.

    Greedy by default; with ``sampling``, one sampled answer (``seed`` makes it reproducible).
    Its ``timings_ms`` gain ``load_ms`` (decoding the upload) and ``queue_ms`` (waiting for the
    pipeline) in front of the pipeline's own.
    """
    t0 = time.perf_counter()
    img = load_image(up.data, max_pixels=settings.max_pixels, dicom=up.dicom, name=up.name)
    t1 = time.perf_counter()
    with engine.serving(client) as pipe:
        t2 = time.perf_counter()
        if sampling is None:
            ans = pipe.ask(img, up.question, options)
        else:
            rng = np.random.default_rng(seed)
            ans = pipe.sample(img, up.question, 1, sampling, rng, options)[0]
    ans.timings_ms = {"load_ms": round(1e3 * (t1 - t0), 3), "queue_ms": round(1e3 * (t2 - t1), 3)} | (
        ans.timings_ms
    )
    return ans


def preview(settings: ServeSettings, up: Upload) -> tuple[bytes, tuple[int, int]]:
    """A PNG of the image the model sees (DICOM converted), at most ``PREVIEW_SIDE`` a side."""
    img = load_image(up.data, max_pixels=settings.max_pixels, dicom=up.dicom, name=up.name)
    size = img.size
    img.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue(), size
