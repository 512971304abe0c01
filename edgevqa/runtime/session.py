"""onnxruntime sessions that do not fight over the cores.

Each InferenceSession normally owns a spinning intra-op pool; with three graphs per answer the
pools fight over the cores (measured here: an answer ~40% slower). Two remedies, both measured
best: one process-wide pool, or per-session pools with spinning switched off.

The process-wide pool is opt-in (``use_global_pool``), for processes edgevqa owns (the CLI, the
bench workers): once it exists, onnxruntime refuses every session in the process that asks for
its own threads — including sessions created by the user's other code. Library callers get
per-session pools without spinning, which leaves the rest of their process alone.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger("edgevqa.runtime")
_global_pool: int | None = None


def use_global_pool(threads: int = 0) -> bool:
    """Create the process-wide pool before any session exists; False if it is too late."""
    global _global_pool
    if _global_pool is not None:
        return True
    try:
        ort.set_global_thread_pool_sizes(threads or default_threads(), 1)
    except Exception as e:  # the onnxruntime environment already exists in this process
        log.debug("global thread pool unavailable (%s); per-session pools without spinning", e)
        return False
    _global_pool = threads or default_threads()
    return True


def default_threads() -> int:
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, n or 1)


def session_options(
    threads: int, level: ort.GraphOptimizationLevel, spin: bool = False
) -> ort.SessionOptions:
    """Options for a session in this process's pool, or in its own pool of ``threads`` (0: every
    core) that spins only with ``spin`` (for one session timed alone, as in floor.py)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = level
    so.log_severity_level = 3
    if _global_pool is not None:
        so.use_per_session_threads = False
    else:
        so.intra_op_num_threads = threads or default_threads()
        so.inter_op_num_threads = 1
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return so


def make_session(
    path: str | Path,
    threads: int = 0,
    providers: tuple[str, ...] = ("CPUExecutionProvider",),
    graph_sha256: str | None = None,
) -> ort.InferenceSession:
    """An InferenceSession on ``path`` (``threads`` 0: every core).

    With ``graph_sha256`` (the manifest's, already verified) the optimized graph comes from the
    machine-local cache (optcache.py), built there on first use.
    """
    from edgevqa.runtime import optcache

    full = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    root = optcache.cache_root() if graph_sha256 else None
    if root is not None and not optcache.usable_root(root):
        root = None
    if root is None:
        return ort.InferenceSession(
            str(path), sess_options=session_options(threads, full), providers=list(providers)
        )
    key = optcache.entry_key(graph_sha256, providers)
    if (cached := optcache.cached_graph(root, key)) is not None:
        try:
            return ort.InferenceSession(
                str(cached),
                sess_options=session_options(threads, ort.GraphOptimizationLevel.ORT_DISABLE_ALL),
                providers=list(providers),
            )
        except Exception as e:  # unreadable entry (disk trouble, another ORT build): rebuild it
            log.warning("optimized-graph cache entry %s does not load (%s); rebuilding it", cached.parent, e)
            optcache.drop_entry(root, key)
    sessions: list[ort.InferenceSession] = []

    def optimize(out: Path) -> None:
        so = session_options(threads, full)
        so.optimized_model_filepath = str(out)
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "weights.bin")
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        sessions.append(ort.InferenceSession(str(path), sess_options=so, providers=list(providers)))

    try:
        optcache.build_entry(root, key, optimize)
    except OSError as e:  # a read-only or full cache location must not stop an answer
        log.warning("cannot write the optimized-graph cache in %s (%s); continuing without it", root, e)
    return (
        sessions[0]
        if sessions
        else ort.InferenceSession(
            str(path), sess_options=session_options(threads, full), providers=list(providers)
        )
    )
