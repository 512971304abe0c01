"""Import optional dependencies lazily, with an install hint instead of a bare ImportError."""

from __future__ import annotations

import functools
import importlib
import os
import socket
from pathlib import Path
from types import ModuleType
from urllib.parse import urlparse

from edgevqa.errors import MissingDependencyError

# module -> extra that provides it
_EXTRA = {
    "torch": "train",
    "transformers": "train",
    "peft": "train",
    "safetensors": "train",
    "onnx": "export",
    "onnxscript": "export",
    "matplotlib": "bench",
    "tensorrt": "trt",
    "pydicom": "dicom",
    "fastapi": "serve",
    "uvicorn": "serve",
    "multipart": "serve",
    "python_multipart": "serve",
    "prometheus_client": "serve",
}


def require(module: str) -> ModuleType:
    """Import ``module`` or raise MissingDependencyError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        extra = _EXTRA.get(module.split(".")[0], "dev")
        hint = "pip install torch==2.13.0 first, then " if extra == "train" else ""
        raise MissingDependencyError(
            f"{module} is not installed ({e}); {hint}pip install 'edgevqa[{extra}]'"
        ) from None


def hub_offline_hint(offline: bool) -> str:
    """What to say when a Hugging Face id could not be read: the local-folder alternative."""
    where = "HF_HUB_OFFLINE=1 is set" if offline else "no network or no local cache of it"
    return (
        f" ({where}; pass a local folder saved with save_pretrained instead: "
        "`huggingface-cli download ID --local-dir DIR` on a machine with network, then --base DIR)"
    )


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face Hub answers a TCP connect within ``timeout_s`` (never with
    HF_HUB_OFFLINE=1). Asked once per process: without it, an offline workstation waits ~30 s
    of the hub client's retries for every id before the error."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
    except OSError:
        return False
    return True


def hub_kwargs(source: str) -> dict[str, bool]:
    """``from_pretrained`` arguments for ``source``: a hub id is read from the local cache alone
    when the hub cannot be reached (a local folder needs nothing)."""
    return {} if Path(source).expanduser().exists() or hub_reachable() else {"local_files_only": True}
