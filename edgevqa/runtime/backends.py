"""Which engine runs a bundle's graphs: onnxruntime on the CPU, CUDA or TensorRT, or native
TensorRT engines (``--backend auto|cpu|cuda|tensorrt|trt-engine``).

What the machine offers is probed once into a ``Machine`` value, so choosing a backend and
refusing an engine built elsewhere are plain functions, tested without a GPU.

* cpu:        onnxruntime's CPUExecutionProvider (the base install).
* cuda:       CUDAExecutionProvider (pip install onnxruntime-gpu).
* tensorrt:   TensorrtExecutionProvider (onnxruntime-gpu + TensorRT): onnxruntime builds and
              caches TensorRT engines from the ONNX graphs itself, on first use.
* trt-engine: the bundle's own engines (`edgevqa export --trt`), run with the tensorrt API; they
              load only on the GPU model and TensorRT version they were built with.
* openvino:   OpenVINO compiling the bundle's ONNX graphs for the CPU (runtime/openvino.py; the
              openvino extra). Its default precision is bf16 on CPUs that have it: opt-in only.
auto = the first of trt-engine, tensorrt, cuda, cpu that the bundle and the machine allow.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from edgevqa.errors import BundleError, InputError

BACKENDS = ("auto", "cpu", "cuda", "tensorrt", "trt-engine", "openvino")
PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}
_NEEDS = {
    "cuda": "onnxruntime-gpu and a CUDA GPU (pip uninstall onnxruntime; pip install onnxruntime-gpu)",
    "tensorrt": "onnxruntime-gpu built with TensorRT, TensorRT itself and a CUDA GPU",
    "trt-engine": "TensorRT, cuda-python and a CUDA GPU (pip install tensorrt cuda-python)",
    "openvino": "OpenVINO (pip install 'edgevqa[openvino]')",
}


@dataclass(frozen=True)
class Gpu:
    name: str
    compute_capability: str  # "9.0"


@dataclass(frozen=True)
class Machine:
    """What this machine offers the runtime."""

    ort_providers: tuple[str, ...]
    tensorrt_version: str | None  # the tensorrt Python package, if installed
    gpu: Gpu | None  # the CUDA device 0, if cuda-python can see one

    def offers(self, backend: str) -> bool:
        if backend in PROVIDERS:
            return PROVIDERS[backend] in self.ort_providers
        if backend == "trt-engine":
            return self.tensorrt_version is not None and self.gpu is not None
        if backend == "openvino":
            return importlib.util.find_spec("openvino") is not None
        raise InputError(f"unknown backend {backend!r}; choose one of {BACKENDS}")


@cache
def probe() -> Machine:
    """Probe onnxruntime's providers, the tensorrt package and the GPU (cached per process)."""
    import onnxruntime as ort

    version = None
    if importlib.util.find_spec("tensorrt") is not None:
        try:
            version = md.version("tensorrt")
        except md.PackageNotFoundError:
            version = "unknown"
    return Machine(tuple(ort.get_available_providers()), version, _cuda_gpu())


def _cuda_gpu() -> Gpu | None:
    try:
        cudart = cuda_runtime()
    except ImportError:
        return None
    err, props = cudart.cudaGetDeviceProperties(0)
    if int(err) != 0:  # no driver, no device
        return None
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return Gpu(name.strip("\x00 "), f"{props.major}.{props.minor}")


def cuda_runtime() -> Any:
    """cuda-python's runtime module (newer releases moved it to cuda.bindings)."""
    try:
        from cuda.bindings import runtime
    except ImportError:
        from cuda import cudart as runtime
    return runtime


def select(requested: str, machine: Machine, has_engines: bool) -> str:
    """The backend to run: ``requested``, or for auto the best the machine and bundle allow.

    Raises:
        InputError: an unknown backend, or one this machine cannot run (the message says what
            it needs and what is available here).
        BundleError: trt-engine asked of a bundle without engines.
    """
    if requested not in BACKENDS:
        raise InputError(f"unknown backend {requested!r}; choose one of {', '.join(BACKENDS)}")
    if requested == "auto":
        order = ("trt-engine", "tensorrt", "cuda", "cpu") if has_engines else ("tensorrt", "cuda", "cpu")
        return next(b for b in order if b == "cpu" or machine.offers(b))
    if requested == "trt-engine" and not has_engines:
        raise BundleError("this bundle has no TensorRT engines; export it with `edgevqa export --trt`")
    if not machine.offers(requested):
        here = [b for b in BACKENDS[1:] if b == "cpu" or machine.offers(b)]
        raise InputError(f"backend {requested} needs {_NEEDS[requested]}; available here: {', '.join(here)}")
    return requested


def providers(backend: str, cache_dir: Path | None = None, fp16: bool = False) -> list[Any]:
    """onnxruntime providers (with options) for an onnxruntime backend, CPU last as fallback."""
    if backend == "cpu":
        return [PROVIDERS["cpu"]]
    if backend == "cuda":
        return [PROVIDERS["cuda"], PROVIDERS["cpu"]]
    if backend == "tensorrt":
        opts: dict[str, Any] = {"trt_fp16_enable": fp16}
        if cache_dir is not None:  # engines and timings onnxruntime builds, kept across runs
            opts.update(
                trt_engine_cache_enable=True,
                trt_engine_cache_path=str(cache_dir),
                trt_timing_cache_enable=True,
                trt_timing_cache_path=str(cache_dir),
            )
        return [(PROVIDERS["tensorrt"], opts), PROVIDERS["cuda"], PROVIDERS["cpu"]]
    raise InputError(f"{backend} is not an onnxruntime backend")


def engine_mismatch(built_for: dict[str, str], machine: Machine) -> str | None:
    """Why an engine built for ``built_for`` cannot run here, or None when it can."""
    if machine.gpu is None or machine.tensorrt_version is None:
        return f"TensorRT engines need {_NEEDS['trt-engine']}"
    here = {
        "gpu": machine.gpu.name,
        "compute_capability": machine.gpu.compute_capability,
        "tensorrt": machine.tensorrt_version,
    }
    diff = [f"{k} {built_for.get(k)!r} (here: {v!r})" for k, v in here.items() if built_for.get(k) != v]
    if diff:
        return (
            "the bundle's TensorRT engines were built for another machine: "
            + ", ".join(diff)
            + "; rebuild them here with `edgevqa export RUN --trt` or use --backend cpu"
        )
    return None
