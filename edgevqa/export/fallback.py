"""When a quantized precision fails the fidelity gate: find the MatMuls that quantization hurts
most, keep them in fp32, try again.

Sensitivity is measured, per node and locally: each MatMul of the quantized graph is run on the
validation inputs, and its output is compared with ``X @ W`` computed from the *same* input X
and the fp32 weight W. Errors that arrive from upstream nodes therefore do not count against a
node; only what its own quantization did. A token table quantized to int8 (a Gather from a
constant table, export/quantize.py) is a candidate too: its rows against the fp32 table's rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("edgevqa.export")


@dataclass(frozen=True)
class NodeError:
    graph: str
    node: str  # node name in the fp32 graph (what nodes_to_exclude takes)
    scope: str  # the torch module it came from, e.g. layers.0.attention.self.key
    rel_error: float  # ||Y_q - X W|| / ||X W||, worst over the validation inputs


def _scope(node) -> str:
    """The deepest torch module path recorded by the exporter, e.g. layers.0.attention.self.key."""
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            parts = [s.strip("'\" ") for s in p.value.strip("[]").split(",")]
            return max(parts, key=len, default="")
    return ""


def local_errors(
    graph: str, fp32_path: Path, q_path: Path, feeds: list[dict[str, np.ndarray]]
) -> list[NodeError]:
    """Local relative error of every weight MatMul (and constant-table Gather) in the quantized
    graph at ``q_path``.

    Weights are read one at a time and the probe graph is written beside ``q_path`` (sharing its
    external data), so graphs over 2 GB are measured without a second copy in memory."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    FLOAT = TensorProto.FLOAT

    fp = onnx.load(str(fp32_path), load_external_data=False)
    inits = {i.name: i for i in fp.graph.initializer}
    q = onnx.load(str(q_path), load_external_data=False)
    replaced = {i.name for i in fp.graph.initializer} - {i.name for i in q.graph.initializer}
    nodes = [
        n
        for n in fp.graph.node
        if (n.op_type == "MatMul" and _weight(n) in inits)
        # a float table the quantizer replaced (by its int8 copy); position tables stay fp32
        or (n.op_type == "Gather" and _weight(n) in replaced and inits[_weight(n)].data_type == FLOAT)
    ]
    # intermediate tensors become outputs, with their real element type (fp16 graphs have fp16 ones)
    types = {
        v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(q).graph.value_info
    }
    present = {o.name for o in q.graph.output} | {i.name for i in q.graph.input}
    wanted = {t for n in nodes for t in (_activation(n), n.output[0])}
    for name in wanted - present:
        q.graph.output.append(helper.make_tensor_value_info(name, types.get(name, TensorProto.FLOAT), None))
    probe = q_path.with_name(f".probe-{q_path.name}")
    onnx.save(q, str(probe))
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(probe), so, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        runs = [
            {k: v for k, v in [*zip(names, sess.run(None, feed)), *feed.items()] if k in wanted}
            for feed in feeds
        ]
        del sess
    finally:
        probe.unlink(missing_ok=True)
    out = []
    for n in nodes:  # one weight in memory at a time: a 3B model's decoder is 10 GB
        w = numpy_helper.to_array(inits[_weight(n)], base_dir=str(fp32_path.parent)).astype(np.float32)
        worst = 0.0
        for got in runs:
            x, y = got[_activation(n)], got[n.output[0]].astype(np.float32)
            ref = np.take(w, x, axis=0) if n.op_type == "Gather" else np.matmul(x.astype(np.float32), w)
            worst = max(worst, float(np.linalg.norm(y - ref) / (np.linalg.norm(ref) + 1e-12)))
        out.append(NodeError(graph, n.name, _scope(n), worst))
    return out


# which input of a candidate node is its constant weight (the other is what it reads)
GATHER = {"Gather": 0, "MatMul": 1}


def _weight(node) -> str:
    return node.input[GATHER[node.op_type]]


def _activation(node) -> str:
    return node.input[1 - GATHER[node.op_type]]


def exclusion_batches(errors: list[NodeError]) -> list[list[NodeError]]:
    """The candidates for fp32, most sensitive first, in batches of 1, 1, 2, 4, ...; never all of
    them (a precision that keeps every MatMul in fp32 quantizes nothing)."""
    out, start = [], 0
    while start < len(errors) - 1:
        end = min(max(1, 2 * start), len(errors) - 1)
        out.append(errors[start:end])
        start = end
    return out


def weight_matmuls(path: Path) -> set[str]:
    """Names of the MatMul / Gemm nodes of the graph at ``path`` whose weight is an fp32 constant
    (read without the weights: external data stays on disk)."""
    import onnx
    from onnx import TensorProto

    m = onnx.load(str(path), load_external_data=False)
    floats = {i.name for i in m.graph.initializer if i.data_type == TensorProto.FLOAT}
    return {n.name for n in m.graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in floats}


def quantized_share(
    fp32_dir: Path, q_dir: Path, graphs: dict[str, Path], shared: Sequence[Path] = ()
) -> dict[str, int]:
    """What a precision really is: how many of the fp32 graphs' weight MatMuls it no longer runs
    as fp32 MatMuls (quantized, or fp16), out of how many, and its bytes on disk: its folder
    ``q_dir`` and the ``shared`` files it runs from another precision's folder (int4's prefill
    graph; an OpenVINO path's text graphs). ``graphs``: graph name -> the file the precision runs."""
    quantized = total = 0
    for g, dst in graphs.items():
        src = fp32_dir / f"{g}.onnx"
        if src.exists() and dst.exists():
            mine = weight_matmuls(src)
            total += len(mine)
            quantized += len(mine - weight_matmuls(dst))
    size = sum(f.stat().st_size for f in [*q_dir.iterdir(), *shared] if f.is_file())
    return {"matmuls": quantized, "of": total, "bytes": size}
