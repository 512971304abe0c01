"""A machine-local cache of onnxruntime-optimized graphs (and OpenVINO's compiled graphs, and
onnxruntime's TensorRT engines): fast cold starts.

Optimizing a graph is most of what loading it costs (measured here on blip-vqa-base: creating the
three fp32 sessions took 6.8 s, from cached optimized graphs 0.6 s; int8 1.4 s -> 0.3 s, with the
same speed per answer). onnxruntime's fully optimized graphs are specific to the CPU they were
made on, so they never go into a bundle: they are written on first load, next to nothing else,
under ``$EDGEVQA_CACHE_DIR`` (default ``~/.cache/edgevqa/ort``; ``off`` disables the cache).

Each entry is keyed by the sha256 of the bundle's graph (already verified against the manifest),
the onnxruntime version, the providers and the CPU, and written to a temporary folder that is
renamed into place, so a crash never leaves half an entry. An entry that does not load is removed
and rebuilt.

Cached graphs are loaded without hashing them again, so whoever can write the cache could swap
a graph past the bundle's sha256. The cache is therefore used only when its folder, the entry and
the entry's files belong to this user, are not symlinks and cannot be written by group or others
(``trusted``); otherwise the graph is loaded from the bundle and a warning names the folder.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import shutil
import stat
import tempfile
from pathlib import Path

log = logging.getLogger("edgevqa.runtime")
GRAPH = "model.onnx"


def cache_root() -> Path | None:
    value = os.environ.get("EDGEVQA_CACHE_DIR", "")
    if value.lower() in ("off", "0", "none"):
        return None
    return Path(value).expanduser() if value else Path.home() / ".cache" / "edgevqa" / "ort"


@functools.lru_cache(maxsize=1)
def cpu_id() -> str:
    """This CPU as cache keys need it: architecture, processor and a hash of its feature flags."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln for ln in f if ln.startswith("flags")), "")
    except OSError:
        flags = ""
    return f"{platform.machine()}|{platform.processor()}|{hashlib.sha256(flags.encode()).hexdigest()[:16]}"


@functools.lru_cache(maxsize=1)
def cpu_name() -> str:
    """The CPU's model name, as ``lscpu`` shows it (for reports)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((ln for ln in f if ln.startswith("model name")), "")
    except OSError:
        line = ""
    return line.partition(":")[2].strip() or platform.processor() or platform.machine()


def entry_key(graph_sha256: str, providers: tuple[str, ...]) -> str:
    import onnxruntime as ort

    raw = "|".join([graph_sha256, ort.__version__, ",".join(providers), cpu_id()])
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def trusted(path: Path) -> bool:
    """``path`` is this user's own, not a symlink, and not writable by group or others (POSIX;
    where there are no owners, as on Windows, only the symlink check applies)."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    others_can_write = hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & 0o022)
    return not stat.S_ISLNK(st.st_mode) and not others_can_write


@functools.lru_cache(maxsize=8)
def _warn_untrusted(where: str) -> None:
    log.warning(
        "optimized-graph cache %s is writable by others or not yours: not used (graphs load from the "
        "bundle); make it yours with mode 700, or set EDGEVQA_CACHE_DIR",
        where,
    )


def usable_root(root: Path) -> bool:
    """The cache folder may be used: it does not exist yet (it is made 700), or it is trusted."""
    if not os.path.lexists(root) or trusted(root):
        return True
    _warn_untrusted(str(root))
    return False


def cached_graph(root: Path, key: str) -> Path | None:
    """The entry's graph when it exists and it, its folder and its weights file are trusted."""
    entry = root / key
    path = entry / GRAPH
    if not path.is_file():
        return None
    if not all(trusted(p) for p in (entry, *entry.iterdir())):
        _warn_untrusted(str(entry))
        return None
    return path


def build_entry(root: Path, key: str, optimize) -> Path:
    """Run ``optimize(output_path)`` into a temp folder and rename it to the entry; returns the graph."""
    # private to the user: cached graphs are loaded without re-hashing them (their source was verified)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    try:
        optimize(tmp / GRAPH)
        try:
            os.replace(tmp, root / key)
        except OSError:  # another process built the same entry first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root / key / GRAPH


def engine_cache_dir(graph_sha256: str | None) -> Path | None:
    """Where onnxruntime's TensorRT provider keeps the engines it builds for one verified graph:
    beside the optimized graphs, never inside the bundle (a bundle is sealed: its manifest lists
    every file). None without a verified graph, with the cache off, or in an untrusted folder."""
    root = cache_root()
    if graph_sha256 is None or root is None or not usable_root(root):
        return None
    where = root / "tensorrt-ep" / graph_sha256[:32]
    where.mkdir(mode=0o700, parents=True, exist_ok=True)
    return where if trusted(where) else None


def openvino_version() -> str:
    """The installed OpenVINO's version ("none" without it), without importing it: part of the keys
    of what depends on it."""
    import importlib.metadata as md

    try:
        return md.version("openvino")
    except md.PackageNotFoundError:
        return "none"


def openvino_cache_dir(graph_sha256: str | None) -> Path | None:
    """Where OpenVINO keeps the compiled form of one verified graph (its ``CACHE_DIR``: a start
    then imports it instead of compiling, blip-vqa-base's int8 vision graph 0.2 instead of 1.1 s).
    OpenVINO loads what it finds there as it is, so the folder and every file in it must be trusted
    like the optimized graphs; keyed by the graph's sha256, this CPU and OpenVINO's version. None
    without a verified graph, with the cache off, or where it is not trusted."""
    root = cache_root()
    if graph_sha256 is None or root is None or not usable_root(root):
        return None
    key = hashlib.sha256("|".join([graph_sha256, openvino_version(), cpu_id()]).encode()).hexdigest()[:32]
    where = root / "openvino" / key
    try:
        where.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:  # a read-only cache location must not stop an answer
        log.warning("cannot use the OpenVINO cache in %s (%s); compiling without it", where, e)
        return None
    if not all(trusted(p) for p in (where.parent, where, *where.iterdir())):
        _warn_untrusted(str(where))
        return None
    return where


def drop_entry(root: Path, key: str) -> None:
    shutil.rmtree(root / key, ignore_errors=True)
