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
# graph metadata (written by the export, from GraphSpec.residual): the input carrying the residual stream
RESIDUAL_KEY = "edgevqa.residual_input"


def residual_nodes(model, start: str) -> list[str]:
    """The nodes that add to or read the residual stream that enters at input ``start``, and
    what they compute from it up to the next MatMul: every Add that reads the stream extends it
    (x + attention, x + MLP), and a norm (x^2, its mean, rsqrt, x * rsqrt, the weight) stays in
    fp32 up to the projection it feeds. Integer values (shapes) do not carry it on."""
    import onnx
    from onnx import TensorProto

    inferred = onnx.shape_inference.infer_shapes(model)
    floats = {
        v.name
        for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
        if v.type.tensor_type.elem_type == TensorProto.FLOAT
    }
    stream, derived, keep = {start}, set(), []
    for n in model.graph.node:  # topological order (the exporter's)
        if n.op_type == "MatMul" or not any(i in stream or i in derived for i in n.input):
            continue
        keep.append(n.name)
        out = {o for o in n.output if o in floats}
        derived |= out
        if n.op_type == "Add" and any(i in stream for i in n.input):
            stream |= out
    return keep


def convert_fp16(src: Path, dst: Path, exclude: Sequence[str] = ()) -> Path:
    """fp16 copy of ``src`` for GPUs: weights and most ops in half precision, graph inputs and outputs
    still fp32 (the runtime feeds the same arrays); FP16_KEEP_FP32 ops, the residual stream (when
    the export named its input, RESIDUAL_KEY) and ``exclude`` nodes in fp32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    light = onnx.load(str(src), load_external_data=False)  # shapes and types: no weights needed
    residual = {p.key: p.value for p in light.metadata_props}.get(RESIDUAL_KEY)
    keep = residual_nodes(light, residual) if residual else []
    del light
    model = onnx.load(str(src))
    with _quiet_root():
        m16 = convert_float_to_float16(
            model,
            keep_io_types=True,
            op_block_list=list(FP16_KEEP_FP32),
            node_block_list=[*exclude, *keep],
        )
    # the converter appends its Cast nodes after their consumers and leaves value_info typed as
    # before the conversion (float where a tensor is now float16): onnxruntime tolerates both,
    # ONNX type inference and other runtimes do not. Sort the nodes, drop the stale annotations,
    # and require strict inference to pass before the graph ships.
    fp32_made = {n.name for n in m16.graph.node if n.op_type in FP16_KEEP_FP32} | set(exclude) | set(keep)
    read_fp32_directly(m16.graph, fp32_made)
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


def read_fp32_directly(graph, fp32_nodes: set[str]) -> None:
    """The converter hands every fp32 value to an fp32 node through fp16: cast down after the
    graph input or the fp32 node that made it, cast back up before the reader. A residual stream
    of 1e5 is inf by then, and x^2 of any |x| > 256. Readers take the fp32 value itself; casts
    left without readers are removed."""
    from onnx import TensorProto

    def cast_to(n, to: int) -> bool:
        return n.op_type == "Cast" and any(a.name == "to" and a.i == to for a in n.attribute)

    fp32 = {i.name for i in graph.input if i.type.tensor_type.elem_type == TensorProto.FLOAT}
    fp32 |= {o for n in graph.node if n.name in fp32_nodes or cast_to(n, TensorProto.FLOAT) for o in n.output}
    made = {o: n for n in graph.node for o in n.output}
    for n in graph.node:
        for k, name in enumerate(n.input):
            up = made.get(name)
            down = made.get(up.input[0]) if up is not None and cast_to(up, TensorProto.FLOAT) else None
            if down is not None and cast_to(down, TensorProto.FLOAT16) and down.input[0] in fp32:
                n.input[k] = down.input[0]
    outputs = {o.name for o in graph.output}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if n.op_type == "Cast" and not any(o in read for o in n.output)]
        if not dead:
            return
        for n in dead:
            graph.node.remove(n)


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
    if graph_weights("int4", Path(src).stem) == "int8":  # an encoder: compute-bound, stays int8
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


# A prompt's prefill multiplies hundreds of rows by each weight (compute-bound), where onnxruntime's
# 4-bit MatMulNBits is slower than int8 MatMulInteger on CPUs; one answer token is one row
# (memory-bound), where 4 bits are faster. paligemma-small's decoder, 210-row prefill / one step,
# ms: AMD Zen 3 (AVX2) int8 200 / 17.4, int4 304 / 13.1; AMD Zen 4 (AVX-512 VNNI) prefill int4
# ~3x int8 (README; benchmarks/prefill_weights.py measures it on any machine). So an int4 bundle
# runs its prompts with the weights of this precision (spec.PREFILL) and its answer tokens with 4 bits.
PREFILL_WEIGHTS = {"int4": "int8"}


def graph_weights(precision: str, graph: str, prefill: bool = False) -> str:
    """The weights ``precision``'s quantizer gives ``graph``: int4 bundles keep their encoders at
    int8 (only DECODER_GRAPHS get 4 bits), and a prompt's prefill runs at PREFILL_WEIGHTS."""
    if prefill:
        return PREFILL_WEIGHTS.get(precision, precision)
    if precision == "int4" and graph not in DECODER_GRAPHS:
        return "int8"
    return precision


QUANTIZERS = {"int8": quantize_int8, "fp16": convert_fp16, "int4": quantize_int4}
