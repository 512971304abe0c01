"""When a quantized precision fails the fidelity gate: find the MatMuls that quantization hurts
most, keep them in fp32, try again.

Sensitivity is measured, per node and locally: each MatMul of the quantized graph is run on the
validation inputs, and its output is compared with ``X @ W`` computed from the *same* input X
and the fp32 weight W. Errors that arrive from upstream nodes therefore do not count against a
node; only what its own quantization did.
"""

from __future__ import annotations

import logging
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
    """Local relative error of every weight MatMul in the quantized graph at ``q_path``."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    fp = onnx.load(str(fp32_path))
    weights = {i.name: numpy_helper.to_array(i) for i in fp.graph.initializer}
    nodes = [n for n in fp.graph.node if n.op_type == "MatMul" and n.input[1] in weights]
    q = onnx.load(str(q_path))
    # intermediate tensors become outputs, with their real element type (fp16 graphs have fp16 ones)
    types = {
        v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(q).graph.value_info
    }
    present = {o.name for o in q.graph.output}
    for name in {t for n in nodes for t in (n.input[0], n.output[0])} - present:
        q.graph.output.append(helper.make_tensor_value_info(name, types.get(name, TensorProto.FLOAT), None))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(q.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    worst = dict.fromkeys((n.name for n in nodes), 0.0)
    for feed in feeds:
        got = {k: v.astype(np.float32) for k, v in zip(names, sess.run(None, feed))}
        for n in nodes:
            ref = np.matmul(got[n.input[0]], weights[n.input[1]].astype(np.float32))
            err = float(np.linalg.norm(got[n.output[0]] - ref) / (np.linalg.norm(ref) + 1e-12))
            worst[n.name] = max(worst[n.name], err)
    return [NodeError(graph, n.name, _scope(n), worst[n.name]) for n in nodes]


def exclusion_schedule(n_nodes: int) -> list[int]:
    """How many of the most sensitive nodes to keep in fp32 on each try: 1, 2, 4, ... up to all."""
    ks, k = [], 1
    while k < n_nodes:
        ks.append(k)
        k *= 2
    return [*ks, n_nodes] if n_nodes else []
