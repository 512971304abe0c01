"""Lower-precision copies of fp32 graphs.

int8 is onnxruntime dynamic quantization: weights int8 per output channel, activations
quantized on the fly. Only MatMul/Gemm with a constant weight are quantized: the patch-embedding
Conv is slower in int8 on CPU, and quantizing activation x activation products (attention)
costs accuracy for nothing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

log = logging.getLogger("edgevqa.export")


@contextlib.contextmanager
def _quiet_root() -> Iterator[None]:
    """The quantizer logs a pre-processing hint and one line per skipped tensor on the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def quantize_int8(src: Path, dst: Path, exclude: Sequence[str] = ()) -> Path:
    """int8 copy of ``src`` at ``dst``; nodes named in ``exclude`` stay fp32 (the gate's fallback)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_root():
        quantize_dynamic(
            model_input=str(src),
            model_output=str(dst),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Gemm"],
            nodes_to_exclude=list(exclude),
            extra_options={"MatMulConstBOnly": True},
        )
    return dst


QUANTIZERS = {"int8": quantize_int8}
