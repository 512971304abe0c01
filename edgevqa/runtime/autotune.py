"""``--precision auto``: the bundle's fastest gated precision on this machine, measured once.

Which precision answers fastest depends on the CPU (int4's 4-bit kernels beat int8 on some, lose on
others, and the order flips under load), so no fixed default is right everywhere. ``auto`` times a
whole answer with each candidate on this machine, once, keeps the fastest in the machine-local cache
and reuses that choice until the bundle, the CPU, the thread count or the library versions change.

Candidates are the bundle's ONNX precisions that passed its fidelity gate (``fidelity.json``: answer
agreement with PyTorch at least the export's ``--min-agreement``; a precision shipped with
``--force`` despite failing is never chosen) and that the backend runs well: on the CPU, not fp16
and not int8-static (onnxruntime's CPU kernels run its Q/DQ graphs far slower than dynamic int8:
a blip-vqa-base decoder step 229.7 vs 7.8 ms on Zen 4, its vision graph 345.7 vs 173.1 ms on a
Xeon with AMX); the OpenVINO paths (int8+ov, int4+ov) where OpenVINO is installed.
Each is timed on a synthetic image of the bundle's size and a fixed question: one warm-up answer,
then ``REPEATS`` answers with the image cache emptied before each (the vision graph runs every
time), median. One precision is loaded at a time.

The choice lives in ``$EDGEVQA_CACHE_DIR/auto/KEY.json`` (beside the optimized graphs, under the
same ownership rules) and is reported by ``ask --json``, ``/v1/model`` and ``bench``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgevqa import __version__
from edgevqa.bundle import FIDELITY, MANIFEST, Manifest
from edgevqa.errors import BundleError

log = logging.getLogger("edgevqa.runtime")
REPEATS = 5
QUESTION = "is there a lesion?"
# onnxruntime's CPU provider runs fp16 graphs through casts and Q/DQ graphs slowly: never CPU picks
NOT_ON_CPU = ("fp16", "int8-static")


def candidates(bundle: Path, m: Manifest, backend: str) -> list[str]:
    """The ONNX precisions ``auto`` may choose: gated, and suited to ``backend``."""
    from edgevqa.runtime.backends import probe

    def suits(p: str) -> bool:
        if p in m.engines:  # an OpenVINO path: the CPU, with OpenVINO installed
            return backend == "cpu" and probe().offers("openvino")
        return not (backend == "cpu" and p in NOT_ON_CPU)

    onnx = [p for p in m.precisions if p not in m.trt and suits(p)]
    try:
        fid = json.loads((bundle / FIDELITY).read_text("utf-8"))
        reports, floor = fid["precisions"], float(fid["min_agreement"])
    except (OSError, ValueError, KeyError, TypeError):
        raise BundleError(f"{bundle} has no readable {FIDELITY}: --precision auto needs its gate") from None
    return [
        p
        for p in onnx
        if isinstance(reports.get(p), dict) and float(reports[p].get("answer_agreement", 0)) >= floor
    ]


def cache_key(bundle: Path, backend: str, threads: int) -> str:
    """What the choice depends on: the bundle (its manifest's bytes), this CPU, the backend and
    threads, and the versions of edgevqa, onnxruntime and OpenVINO (installed or not)."""
    import onnxruntime as ort

    from edgevqa.runtime import optcache

    manifest = hashlib.sha256((bundle / MANIFEST).read_bytes()).hexdigest()
    parts = [manifest, optcache.cpu_id(), backend, str(threads), __version__, ort.__version__]
    raw = "|".join([*parts, optcache.openvino_version()])
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def _store() -> Path | None:
    from edgevqa.runtime import optcache

    root = optcache.cache_root()
    if root is None or not optcache.usable_root(root):
        return None
    return root / "auto"


def cached_choice(key: str, allowed: list[str]) -> dict[str, Any] | None:
    from edgevqa.runtime import optcache

    store = _store()
    path = store / f"{key}.json" if store else None
    if path is None or not path.is_file() or not optcache.trusted(path):
        return None
    try:
        choice = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return choice if isinstance(choice, dict) and choice.get("precision") in allowed else None


def save_choice(key: str, choice: dict[str, Any]) -> None:
    from edgevqa import atomic

    store = _store()
    if store is None:
        return
    try:
        store.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic.write_json(store / f"{key}.json", choice)
    except OSError as e:  # a read-only cache must not stop an answer
        log.warning("cannot keep the --precision auto choice in %s (%s)", store, e)


def time_answer(pipe: Any, image: Any, repeats: int = REPEATS) -> float:
    """Median ms of a whole answer (vision graph included) after one warm-up answer."""
    pipe.ask(image, QUESTION)
    times = []
    for _ in range(repeats):
        pipe.forget_images()
        t0 = time.perf_counter()
        pipe.ask(image, QUESTION)
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times)


def choose(bundle: Path, m: Manifest, backend: str, threads: int, load: Any) -> dict[str, Any]:
    """The precision ``auto`` runs here, and how it was decided.

    Args:
        load: ``load(precision) -> VQAPipeline`` (verified, on ``backend``).

    Returns:
        ``{"precision", "measured_ms": {precision: median ms}, "cpu", "cached": bool}``.

    Raises:
        BundleError: no precision of the bundle passed its gate.
    """
    allowed = candidates(bundle, m, backend)
    if not allowed:
        raise BundleError(f"{bundle}: no precision passed its fidelity gate for --precision auto")
    if len(allowed) == 1:
        from edgevqa.runtime import optcache

        return {"precision": allowed[0], "measured_ms": {}, "cpu": optcache.cpu_name(), "cached": False}
    key = cache_key(bundle, backend, threads)
    if (hit := cached_choice(key, allowed)) is not None:
        return {**hit, "cached": True}
    from PIL import Image

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (m.image.height, m.image.width), dtype=np.uint8))
    measured = {}
    for p in allowed:  # one at a time: a 3B bundle's precisions do not fit in memory together
        pipe = load(p)
        measured[p] = round(time_answer(pipe, image), 3)
        del pipe
    best = min(measured, key=measured.get)
    from edgevqa.runtime import optcache

    choice = {"precision": best, "measured_ms": measured, "cpu": optcache.cpu_name()}
    log.info(
        "--precision auto: %s (whole answer here: %s)",
        best,
        ", ".join(f"{p} {ms:.1f} ms" for p, ms in measured.items()),
    )
    save_choice(key, choice)
    return {**choice, "cached": False}
