"""onnxruntime sessions that share one global thread pool.

Each InferenceSession normally owns a spinning intra-op pool; with three graphs per answer the
pools fight over the cores (measured here: an answer ~40% slower). One process-wide pool, set
before the first session exists, avoids that; where it cannot be set any more (a session was
created elsewhere first) the sessions get their own pools with spinning switched off.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger("edgevqa.runtime")
_global_pool: int | None = None


def _ensure_global_pool(threads: int) -> bool:
    global _global_pool
    if _global_pool is not None:
        return True
    try:
        ort.set_global_thread_pool_sizes(threads, 1)
    except Exception as e:  # environment already created in this process
        log.debug("global thread pool unavailable (%s); using per-session pools without spinning", e)
        return False
    _global_pool = threads
    return True


def default_threads() -> int:
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, n or 1)


def make_session(path: str | Path, threads: int = 0,
                 providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> ort.InferenceSession:
    """An InferenceSession on ``path`` using the shared pool (``threads`` 0: every core)."""
    threads = threads or default_threads()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    if _ensure_global_pool(threads):
        so.use_per_session_threads = False
    else:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=so, providers=list(providers))
