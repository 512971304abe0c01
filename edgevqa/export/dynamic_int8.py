"""Dynamic int8 for graphs over 2 GB, one weight at a time.

onnxruntime's ``quantize_dynamic`` holds a graph in memory three times over (it deep-copies the
model to run shape inference on it, then loads the result): for Gemma 2B's 10 GB decoder that is
30 GB, more than a 24 GB workstation has (measured: killed at 23.9 GB peak RSS). This writes the
same int8 graph as ``quantize_dynamic(per_channel=True, weight_type=QInt8, MatMulConstBOnly)``:
the same weights, scales and zero points (onnxruntime's own ``quantize_data`` formula, per output
column, symmetric, vectorized here), and the same nodes (``DynamicQuantizeLinear`` once per
activation, ``MatMulInteger``, ``Cast``, two ``Mul``), which onnxruntime fuses into
``DynamicQuantizeMatMul`` as it does its own. Weights stream from the source's external data to
the destination's: the peak is one weight, not the graph (tests/test_external_data.py compares
both quantizers on the same graph, bit for bit).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgevqa.export import onnxfile

QMAX = 127  # int8 symmetric: [-127, 127]; onnxruntime clips the rounded value to [-128, 127]
ROWS = 4096  # rows of a weight quantized at once: bounds the temporaries of a 257k-token LM head
ALIGN = 4096  # each tensor starts at a page in the data file (as onnx's own writer does)


def column_scales(w: np.ndarray) -> np.ndarray:
    """Per output column (axis 1) scale of a [K, N] float32 weight, as onnxruntime computes it:
    (2 * absmax, in float64) / 254, stored as float32; 1.0 for an all-zero column."""
    absmax = np.maximum(np.abs(np.minimum(w.min(axis=0), 0)), np.abs(np.maximum(w.max(axis=0), 0)))
    scale = (absmax.astype(np.float64) * 2) / (2 * QMAX)
    return np.where(scale < np.finfo(np.float32).tiny, 1.0, scale).astype(np.float32)


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int8 [K, N], float32 scale [N]) of a [K, N] float32 weight."""
    scale = column_scales(w)
    q = np.empty(w.shape, np.int8)
    for r in range(0, w.shape[0], ROWS):
        q[r : r + ROWS] = np.clip(np.round(w[r : r + ROWS] / scale), -128, 127)
    return q, scale


class _DataWriter:
    """Tensors appended to one external-data file; each gets its reference."""

    def __init__(self, path: Path):
        self.path = path
        self.f = open(path, "wb")  # noqa: SIM115 (closed by close())

    def add(self, tensor: Any, raw: bytes | memoryview) -> None:
        from onnx import TensorProto

        pad = -self.f.tell() % ALIGN
        self.f.write(b"\0" * pad)
        offset = self.f.tell()
        self.f.write(raw)
        tensor.ClearField("raw_data")
        del tensor.external_data[:]
        tensor.data_location = TensorProto.EXTERNAL
        for k, v in (("location", self.path.name), ("offset", str(offset)), ("length", str(len(raw)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = k, v

    def close(self) -> None:
        self.f.close()


def _external_bytes(tensor: Any, base: Path) -> bytes:
    info = {e.key: e.value for e in tensor.external_data}
    with open(base / info["location"], "rb") as f:
        f.seek(int(info.get("offset", 0)))
        return f.read(int(info["length"])) if "length" in info else f.read()


def quantize(src: Path, dst: Path, exclude: Sequence[str] = ()) -> Path:
    """int8 copy of the graph at ``src`` (weights in external data) at ``dst``: every MatMul whose
    second input is a 2-D float initializer, except the nodes named in ``exclude``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnx.external_data_helper import uses_external_data

    src, dst = Path(src), Path(dst)
    model = onnx.load(str(src), load_external_data=False)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    skip = set(exclude)

    def quantizable(n: Any) -> bool:
        w = inits.get(n.input[1]) if n.op_type == "MatMul" else None
        return w is not None and w.data_type == TensorProto.FLOAT and len(w.dims) == 2 and n.name not in skip

    old = [onnx.NodeProto() for _ in graph.node]
    for copy, n in zip(old, graph.node):
        copy.CopyFrom(n)
    weights = {n.input[1] for n in old if quantizable(n)}
    dynamic: set[str] = set()  # activations with their DynamicQuantizeLinear (made once each)
    nodes = []
    for n in old:
        if not quantizable(n):
            nodes.append(n)
            continue
        x, w, y = n.input[0], n.input[1], n.output[0]
        if x not in dynamic:
            dq = helper.make_node(
                "DynamicQuantizeLinear",
                [x],
                [f"{x}_quantized", f"{x}_scale", f"{x}_zero_point"],
                name=f"{x}_QuantizeLinear",
            )
            dynamic.add(x)
            nodes.append(dq)
        scales = f"{n.name}_quant_scales_mul:0"
        nodes += [
            helper.make_node(
                "Mul", [f"{x}_scale", f"{w}_scale"], [scales], name=f"{n.name}_quant_scales_mul"
            ),
            helper.make_node(
                "MatMulInteger",
                [f"{x}_quantized", f"{w}_quantized", f"{x}_zero_point", f"{w}_zero_point"],
                [f"{y}_output_quantized"],
                name=f"{n.name}_quant",
            ),
            helper.make_node(
                "Cast",
                [f"{y}_output_quantized"],
                [f"{y}_output_quantized_cast_output"],
                name=f"{y}_output_quantized_cast",
                to=TensorProto.FLOAT,
            ),
            helper.make_node(
                "Mul",
                [f"{y}_output_quantized_cast_output", scales],
                [y],
                name=f"{n.name}_quant_output_scale_mul",
            ),
        ]
        # the exporter's name scopes stay on the MatMulInteger (the fallback report names layers)
        nodes[-3].metadata_props.extend(n.metadata_props)

    onnxfile.remove(dst)
    data = _DataWriter(onnxfile.data_file(dst))
    out_inits = []
    try:
        for t in graph.initializer:
            if t.name in weights:
                w = numpy_helper.to_array(t, base_dir=str(src.parent)).astype(np.float32, copy=False)
                q, scale = quantize_weight(w)
                del w
                qt = TensorProto(name=f"{t.name}_quantized", data_type=TensorProto.INT8, dims=list(t.dims))
                data.add(qt, q.tobytes())
                out_inits += [
                    qt,
                    helper.make_tensor(f"{t.name}_scale", TensorProto.FLOAT, [len(scale)], scale.tolist()),
                    helper.make_tensor(
                        f"{t.name}_zero_point", TensorProto.INT8, [len(scale)], [0] * len(scale)
                    ),
                ]
            elif uses_external_data(t):
                copy = TensorProto()
                copy.CopyFrom(t)
                data.add(copy, _external_bytes(t, src.parent))
                out_inits.append(copy)
            else:
                out_inits.append(t)
    finally:
        data.close()
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(out_inits)
    del graph.value_info[:]
    onnx.save(model, str(dst))
    return dst
