"""Lower-precision copies of fp32 graphs (int8 for CPUs, fp16 for GPUs).

int8 is onnxruntime dynamic quantization: weights int8 per output channel, activations
quantized on the fly. Only MatMul/Gemm with a constant weight are quantized: the patch-embedding
Conv is slower in int8 on CPU, and quantizing activation x activation products (attention)
costs accuracy for nothing. A graph that is a token-embedding table alone (a prefix LM's
``embed_tokens``) gets its table in int8 (per tensor; rows dequantized after the Gather).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

from edgevqa.export import onnxfile

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


# a token-embedding table read one row per token: in fp32 it is most of a quantized bundle's bytes
# (paligemma-small: 671 of 929 MB), in int8 a quarter of that, for one dequantized row per token
EMBEDDING_GRAPHS = ("embed_tokens",)


def quantize_int8(src: Path, dst: Path, exclude: Sequence[str] = ()) -> Path:
    """int8 copy of ``src`` at ``dst``; nodes named in ``exclude`` stay fp32 (the gate's fallback)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    table = Path(src).stem in EMBEDDING_GRAPHS
    if not table and onnxfile.is_external(src):  # over 2 GB: quantize_dynamic needs 3x its size in RAM
        from edgevqa.export import dynamic_int8

        return dynamic_int8.quantize(src, dst, exclude)
    with _quiet_root():
        quantize_dynamic(
            model_input=str(src),
            model_output=str(dst),
            weight_type=QuantType.QInt8,
            per_channel=not table,
            op_types_to_quantize=["Gather"] if table else ["MatMul", "Gemm"],
            nodes_to_exclude=list(exclude),
            extra_options={"MatMulConstBOnly": True},
            use_external_data_format=onnxfile.is_external(src),  # a table over 2 GB (onnxfile.py)
        )
    return dst


# fp16 keeps these in fp32: normalisations and reductions lose too much in half precision
FP16_KEEP_FP32 = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceSum", "Pow", "Sqrt")


def convert_fp16(src: Path, dst: Path, exclude: Sequence[str] = ()) -> Path:
    """fp16 copy of ``src`` for GPUs: weights and most ops in half precision, graph inputs and outputs
    still fp32 (the runtime feeds the same arrays), FP16_KEEP_FP32 ops and ``exclude`` nodes in fp32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with _quiet_root():
        m16 = convert_float_to_float16(
            onnx.load(str(src)),
            keep_io_types=True,
            op_block_list=list(FP16_KEEP_FP32),
            node_block_list=list(exclude),
        )
    # the converter appends its Cast nodes after their consumers and leaves value_info typed as
    # before the conversion (float where a tensor is now float16): onnxruntime tolerates both,
    # ONNX type inference and other runtimes do not. Sort the nodes, drop the stale annotations,
    # and require strict inference to pass before the graph ships.
    topological_sort(m16.graph)
    del m16.graph.value_info[:]
    if onnxfile.weight_bytes(m16) <= onnxfile.LIMIT:  # in-memory inference stops at 2 GB
        onnx.shape_inference.infer_shapes(m16, check_type=True, strict_mode=True)
        return onnxfile.save(m16, dst, external=False)
    onnxfile.save(m16, dst, external=True)
    checked = dst.with_name(dst.name + ".inferred")  # the check only: the graph ships as saved
    try:
        onnx.shape_inference.infer_shapes_path(str(dst), str(checked), check_type=True, strict_mode=True)
    finally:
        checked.unlink(missing_ok=True)
    return dst


def topological_sort(graph) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs."""
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:
            raise ValueError(f"graph has a cycle or a dangling input near node {pending[0].name}")
        for n in ready:
            known.update(n.output)
        ordered += ready
        done = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in done]
    del graph.node[:]
    graph.node.extend(ordered)


# the decoder streams all its weights for every answer token: memory-bound, so fewer bits per
# weight is what makes a step faster (the encoders are compute-bound and stay int8)
DECODER_GRAPHS = ("decoder_step", "decoder_first")


def quantize_int4(src: Path, dst: Path, exclude: Sequence[str] = ()) -> Path:
    """Decoder graphs: 4-bit weight-only MatMulNBits (block 32, symmetric; accuracy_level 4 =
    int8 activations, the fast CPU kernel). Other graphs: as ``quantize_int8``. Lossier than
    int8: the fidelity gate decides whether it ships."""
    if Path(src).stem not in DECODER_GRAPHS:
        return quantize_int8(src, dst, exclude)
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    with _quiet_root():
        q = MatMulNBitsQuantizer(
            onnx.load(str(src)),
            bits=4,
            block_size=32,
            is_symmetric=True,
            accuracy_level=4,
            nodes_to_exclude=list(exclude),
        )
        q.process()
        q.model.topological_sort()
        onnxfile.save(q.model.model, dst)
    return dst


QUANTIZERS = {"int8": quantize_int8, "fp16": convert_fp16, "int4": quantize_int4}
