"""The matmul floor of one answer on this machine: what a bundle's weight matmuls alone cost.

For each graph, a graph holding only its MatMuls with a constant 2-D weight (the bundle's own
weights), each fed from an input of the row count it sees in one answer, is quantized by the same
quantizer as the precision (export/quantize.py) and timed in onnxruntime on this machine's cores.
Each graph's time, times how often it runs per answer, summed: a lower bound on any answer with
these weights at that precision. Attention, normalization, activation functions, the patch
embedding and all data movement between nodes are left out, activation quantization is shared
between matmuls that read the same input, and the decoder's weights are timed without the rest of
the model competing for the caches.

Why: a speed goal below this floor cannot be reached by graph work on this machine, only by
faster matmuls (other hardware) or fewer weights. ``edgevqa bench --arch`` reports it beside the
measured answers.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("edgevqa.bench.floor")


@dataclass(frozen=True)
class Use:
    """One graph's part in an answer."""

    graph: str  # graph name in the bundle, e.g. vision_encoder
    rows: int  # rows each of its weight matmuls multiplies in one call (tokens x batch)
    calls: int  # calls per answer (the decoder step: once per answer token)
    label: str = ""  # the report's name for this use (a graph used twice: prefill and steps)
    head_n: int = 0  # the LM head's output width (the vocabulary) ...
    head_rows: int = 0  # ... and the rows it multiplies (a prefill picks one position's logits)
    prefill: bool = False  # a prompt: at the weights export/quantize.py's PREFILL_WEIGHTS names

    @property
    def name(self) -> str:
        return self.label or self.graph


def weight_matmuls(model: Any) -> list[tuple[Any, int, int]]:
    """(node, K, N) of every MatMul whose second input is a constant [K, N] initializer."""
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    return [
        (n, *shapes[n.input[1]])
        for n in model.graph.node
        if n.op_type == "MatMul" and len(shapes.get(n.input[1], ())) == 2
    ]


def matmul_graph(src: Path, dst: Path, rows: int, head: tuple[int, int] = (0, 0)) -> Counter[tuple[int, int]]:
    """``dst``: the weight matmuls of ``src`` with their weights, nothing else; the ones with inner
    size K all read the input ``x_K`` of shape [rows, K] (those of output width ``head[0]``, the LM
    head, ``head[1]`` rows instead). Returns the count per (K, N)."""
    import onnx
    from onnx import TensorProto, helper

    from edgevqa.export import onnxfile

    model = onnx.load(str(src), load_external_data=False)  # external weights: referenced, not read
    found = weight_matmuls(model)
    if not found:
        raise ValueError(f"{src} has no MatMul with a constant weight")
    used = {n.input[1] for n, _, _ in found}
    nodes, outputs, inputs = [], [], {}
    for i, (n, k, nn) in enumerate(found):
        r = head[1] if nn == head[0] else rows
        x = f"x_{k}" if r == rows else f"x_{k}_{r}"
        inputs[x] = helper.make_tensor_value_info(x, TensorProto.FLOAT, [r, k])
        nodes.append(helper.make_node("MatMul", [x, n.input[1]], [f"y_{i}"], name=f"matmul_{i}"))
        outputs.append(helper.make_tensor_value_info(f"y_{i}", TensorProto.FLOAT, [r, nn]))
    graph = helper.make_graph(
        nodes,
        f"{src.stem}_matmuls",
        [inputs[x] for x in sorted(inputs)],
        outputs,
        [i for i in model.graph.initializer if i.name in used],
    )
    small = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    onnxfile.copy_data(src, dst)
    onnx.save(small, str(dst))
    return Counter((k, nn) for _, k, nn in found)


def time_graph(path: Path, repeats: int, warmup: int = 3, threads: int = 0) -> list[float]:
    """Milliseconds per run of ``path`` on random inputs. Outputs of one shape share one buffer,
    allocated once (IO binding), as a graph reuses its intermediate buffers: neither a copy into
    numpy, nor fresh pages, nor writing every output to its own memory is timed."""
    import onnxruntime as ort

    from edgevqa.runtime.session import session_options

    so = session_options(threads, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, spin=True)
    sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    binding = sess.io_binding()
    for i in sess.get_inputs():
        binding.bind_cpu_input(i.name, rng.standard_normal(i.shape).astype(np.float32))
    buffers: dict[tuple[int, ...], Any] = {}
    for o in sess.get_outputs():
        shape = tuple(o.shape)
        if shape not in buffers:
            buffers[shape] = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32)
        binding.bind_ortvalue_output(o.name, buffers[shape])
    return timed(lambda: sess.run_with_iobinding(binding), repeats, warmup)


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 3) -> list[float]:
    """Milliseconds of each of ``repeats`` calls of ``fn``, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    ms = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ms.append(1e3 * (time.perf_counter() - t))
    return ms


def quantizer(precision: str) -> Callable[[Path, Path], Path] | None:
    """How ``precision`` turns an fp32 graph into its own (None: fp32 itself)."""
    from edgevqa.export.quantize import QUANTIZERS

    if precision == "fp32":
        return None
    if precision not in QUANTIZERS:
        raise ValueError(f"no matmul floor for {precision}: it is not quantized from fp32 alone")
    return QUANTIZERS[precision]


def measure(
    fp32_dir: Path,
    uses: Sequence[Use],
    precision: str,
    work: Path,
    repeats: int = 20,
    timer: Callable[[Path, int], list[float]] = time_graph,
) -> dict[str, Any]:
    """The floor of one answer at ``precision``: per graph, its weight matmuls timed together, the
    fastest of ``repeats`` runs (a bound from below should not carry the machine's noise; the
    median is kept beside it) times its calls per answer; ``ms`` is the sum."""
    from edgevqa.export import onnxfile
    from edgevqa.export.quantize import graph_weights

    log.info("matmul floor %s: timing the weight matmuls of %s", precision, ", ".join(u.graph for u in uses))
    work.mkdir(parents=True, exist_ok=True)
    by_graph, total = {}, 0.0
    for u in uses:
        weights = graph_weights(precision, u.graph, u.prefill)  # what the bundle's file holds
        quantize = quantizer(weights)
        dst = work / precision / f"{u.graph}.onnx"  # the quantizers choose by the graph's file name
        plain = work / precision / "fp32" / f"{u.graph}.onnx"
        plain.parent.mkdir(parents=True, exist_ok=True)
        shapes = matmul_graph(fp32_dir / f"{u.graph}.onnx", plain, u.rows, (u.head_n, u.head_rows))
        if quantize is None:
            onnxfile.move(plain, dst)
        else:
            quantize(plain, dst)
            onnxfile.remove(plain)
        ms = timer(dst, repeats)
        best = float(np.min(ms))
        by_graph[u.name] = {
            "weights": weights,
            "rows": u.rows,
            "calls": u.calls,
            "matmuls": sum(shapes.values()),
            "shapes": [[k, n, c] for (k, n), c in sorted(shapes.items())],
            "ms_per_call": {"min": best, "p50": float(np.median(ms)), "max": float(np.max(ms)), "n": len(ms)},
            "ms": best * u.calls,
        }
        total += best * u.calls
        onnxfile.remove(dst)
    log.info("matmul floor %s: %.1f ms per answer", precision, total)
    return {"precision": precision, "ms": total, "by_graph": by_graph}
