"""OpenVINO reading a bundle's ONNX graphs (``--backend openvino``; the ``openvino`` extra).

OpenVINO compiles the same ONNX files onnxruntime runs, behind the same small interface the
runtime uses (``run``, ``get_inputs``, ``get_outputs``), so every family, the decode loop and the
caches work unchanged. Its CPU plugin runs at its own default inference precision: **bf16** on CPUs
with AMX or AVX-512 BF16, which changes the numbers (on this project's test bundles answers can
differ from PyTorch's). So the backend is never chosen by ``--backend auto`` or ``--precision
auto``; a user opts in, and ``EDGEVQA_OPENVINO_PRECISION=f32`` keeps fp32 numerics.

The OpenVINO paths of a bundle (``int8+ov``, ``int4+ov``: ``Manifest.engines``) are different:
one graph, validated by the export's gate on this engine at f32, runs here beside onnxruntime's
sessions; ``--precision auto`` may choose them.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgevqa.errors import InputError

log = logging.getLogger("edgevqa.runtime")
PRECISION_ENV = "EDGEVQA_OPENVINO_PRECISION"  # f32, bf16 or f16; unset: OpenVINO's default here


@dataclass(frozen=True)
class Port:
    name: str
    shape: list  # ints where static, strings where dynamic (as onnxruntime reports them)


def _ports(ports: Any) -> list[Port]:
    out = []
    for p in ports:
        shape = [int(d.get_length()) if d.is_static else f"d{i}" for i, d in enumerate(p.get_partial_shape())]
        out.append(Port(p.get_any_name(), shape))
    return out


class OpenVinoGraph:
    """One ONNX graph compiled by OpenVINO for the CPU, run like an onnxruntime session."""

    def __init__(self, path: Path, threads: int = 0, hint: str = "", cache_dir: Path | None = None):
        """``hint``: the inference precision (f32, bf16, f16); empty: $EDGEVQA_OPENVINO_PRECISION,
        else OpenVINO's default on this CPU. ``cache_dir``: OpenVINO's compiled-model cache for
        this graph (optcache.openvino_cache_dir: trusted, keyed by the verified graph)."""
        try:
            import openvino as ov
        except ImportError:
            raise InputError("--backend openvino needs OpenVINO: pip install 'edgevqa[openvino]'") from None
        core = ov.Core()
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        if want := hint or os.environ.get(PRECISION_ENV, ""):
            if want not in ("f32", "bf16", "f16"):
                raise InputError(f"{PRECISION_ENV} must be f32, bf16 or f16, got {want!r}")
            config["INFERENCE_PRECISION_HINT"] = want
        try:
            self.compiled = core.compile_model(
                str(path), "CPU", {**config, **({"CACHE_DIR": str(cache_dir)} if cache_dir else {})}
            )
        except Exception as e:
            if cache_dir is None:
                raise
            # an unreadable cached blob (disk trouble, another build): drop it, compile afresh
            log.warning("OpenVINO cache %s does not load (%s); compiling without it", cache_dir, e)
            shutil.rmtree(cache_dir, ignore_errors=True)
            self.compiled = core.compile_model(str(path), "CPU", config)
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.precision = hint.to_string() if hasattr(hint, "to_string") else str(hint)  # "f32", "bf16"
        self.request = self.compiled.create_infer_request()
        self._inputs, self._outputs = _ports(self.compiled.inputs), _ports(self.compiled.outputs)

    def get_inputs(self) -> list[Port]:
        return self._inputs

    def get_outputs(self) -> list[Port]:
        return self._outputs

    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        # inputs read in place (infer returns before they could change); outputs come back as
        # arrays of their own, so no further copy (BLIP's image keys/values: 42 MB per image)
        result = self.request.infer({k: np.ascontiguousarray(v) for k, v in feed.items()}, share_inputs=True)
        by_name = {p.get_any_name(): v for p, v in result.items()}
        return [by_name[n] for n in (output_names or [o.name for o in self._outputs])]
