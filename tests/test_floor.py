"""floor.py: the bundle's weight matmuls alone, quantized as the precision, summed per answer."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgevqa.bench import floor
from edgevqa.bench.runner import arch_uses

H, FF = 128, 512  # tiny-blip: hidden and intermediate sizes, 2 vision and 2 text layers


def _vocab(bundle: Path) -> int:
    m = onnx.load(str(bundle / "fp32" / "decoder_step.onnx"), load_external_data=False)
    return next(i.dims[1] for i in m.graph.initializer if i.name == "lm_weight")


def test_matmul_graph_keeps_every_weight_matmul_of_each_graph(bundle, tmp_path):
    vocab = _vocab(bundle)
    expected = {
        # per vision layer qkv, projection, fc1, fc2; and the image keys/values of each text layer
        "vision_encoder": Counter({(H, 3 * H): 2, (H, H): 2 + 2 * 2, (H, FF): 2, (FF, H): 2}),
        # per text layer: self q k v o, cross q o, the decoder's cross keys/values; the FFN
        "question_encoder": Counter({(H, H): 8 * 2, (H, FF): 2, (FF, H): 2}),
        # per text layer: self q k v o, cross q o; the FFN; the LM head's transform and its output
        "decoder_step": Counter({(H, H): 6 * 2 + 1, (H, FF): 2, (FF, H): 2, (H, vocab): 1}),
    }
    for graph, want in expected.items():
        assert floor.matmul_graph(bundle / "fp32" / f"{graph}.onnx", tmp_path / f"{graph}.onnx", 5) == want


def test_matmul_graph_multiplies_by_the_bundles_own_weights(bundle, tmp_path):
    src = bundle / "fp32" / "question_encoder.onnx"
    floor.matmul_graph(src, tmp_path / "q.onnx", rows=3)
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in onnx.load(str(src)).graph.initializer}
    first, k, n = floor.weight_matmuls(onnx.load(str(src)))[0]
    sess = ort.InferenceSession(str(tmp_path / "q.onnx"), providers=["CPUExecutionProvider"])
    assert [i.shape for i in sess.get_inputs()] == [[3, H], [3, FF]]
    x = np.random.default_rng(0).standard_normal((3, k)).astype(np.float32)
    feed = {i.name: np.zeros(i.shape, np.float32) for i in sess.get_inputs()} | {f"x_{k}": x}
    y0 = sess.run(["y_0"], feed)[0]
    np.testing.assert_allclose(y0, x @ weights[first.input[1]], rtol=1e-5, atol=1e-5)


def test_measure_is_the_fastest_run_times_calls_summed_over_graphs(bundle, tmp_path):
    runs = {
        "vision_encoder": [3.0, 2.0, 5.0],
        "question_encoder": [1.5, 1.0],
        "decoder_step": [0.5, 0.25, 0.75],
    }
    uses = [
        floor.Use("vision_encoder", 17, 1),
        floor.Use("question_encoder", 12, 1),
        floor.Use("decoder_step", 1, 4),
    ]
    r = floor.measure(bundle / "fp32", uses, "fp32", tmp_path, timer=lambda path, n: runs[path.stem])
    assert r["ms"] == pytest.approx(2.0 + 1.0 + 4 * 0.25)
    d = r["by_graph"]["decoder_step"]
    assert d["ms"] == pytest.approx(1.0) and d["calls"] == 4 and d["rows"] == 1
    assert d["ms_per_call"] == {"min": 0.25, "p50": 0.5, "max": 0.75, "n": 3}
    assert r["by_graph"]["vision_encoder"]["matmuls"] == 2 * 4 + 2 * 2
    assert not list(tmp_path.rglob("*.onnx"))  # the timed graphs do not stay on disk


def test_measure_quantizes_each_graph_as_the_precision_does(bundle, tmp_path):
    """int8: dynamic int8 everywhere; int4: 4-bit MatMulNBits in the decoder, int8 elsewhere."""
    ops: dict[tuple[str, str], set[str]] = {}

    def record(path: Path, n: int) -> list[float]:
        ops[(path.parent.name, path.stem)] = {node.op_type for node in onnx.load(str(path)).graph.node}
        return [1.0]

    uses = [floor.Use("question_encoder", 12, 1), floor.Use("decoder_step", 1, 2)]
    labels = {}
    for p in ("fp32", "int8", "int4"):
        r = floor.measure(bundle / "fp32", uses, p, tmp_path, timer=record)
        labels[p] = [g["weights"] for g in r["by_graph"].values()]
    assert ops[("fp32", "decoder_step")] == {"MatMul"}
    assert (
        "MatMulInteger" in ops[("int8", "question_encoder")] and "MatMul" not in ops[("int8", "decoder_step")]
    )
    assert "MatMulInteger" in ops[("int4", "question_encoder")]
    assert ops[("int4", "decoder_step")] == {"MatMulNBits"}
    # the report names the weights each graph was timed with: int4's encoders are int8
    assert labels == {"fp32": ["fp32"] * 2, "int8": ["int8"] * 2, "int4": ["int8", "int4"]}
    with pytest.raises(ValueError, match="int8-static"):
        floor.measure(bundle / "fp32", uses, "int8-static", tmp_path, timer=record)


def test_a_prefill_is_timed_at_the_weights_its_precision_prefills_with(bundle, tmp_path):
    """int4 bundles run prompts through int8's decoder_step (quantize.PREFILL_WEIGHTS): the floor
    times a prefill use at int8, the answer tokens at 4 bits, and says which it timed."""
    ops: list[set[str]] = []

    def record(path: Path, n: int) -> list[float]:
        ops.append({node.op_type for node in onnx.load(str(path)).graph.node})
        return [1.0]

    uses = [
        floor.Use("decoder_step", 12, 1, label="decoder_prefill", prefill=True),
        floor.Use("decoder_step", 1, 2),
    ]
    r = floor.measure(bundle / "fp32", uses, "int4", tmp_path, timer=record)
    assert "MatMulInteger" in ops[0] and "MatMulNBits" not in ops[0]
    assert ops[1] == {"MatMulNBits"}
    assert [g["weights"] for g in r["by_graph"].values()] == ["int8", "int4"]
    r = floor.measure(bundle / "fp32", uses, "fp32", tmp_path, timer=record)
    assert ops[2] == ops[3] == {"MatMul"} and [g["weights"] for g in r["by_graph"].values()] == ["fp32"] * 2


def test_time_graph_runs_the_graph(bundle, tmp_path):
    floor.matmul_graph(bundle / "fp32" / "decoder_step.onnx", tmp_path / "d.onnx", rows=1)
    ms = floor.time_graph(tmp_path / "d.onnx", repeats=4, warmup=1)
    assert len(ms) == 4 and all(t > 0 for t in ms)


def test_arch_uses_counts_the_tokens_the_graphs_really_see(bundle):
    """tiny-blip at 64 px: 16 patches and the class token, as the exported vision graph outputs."""
    uses = arch_uses("tiny-blip", question_tokens=12, answer_tokens=8)
    assert [(u.graph, u.rows, u.calls) for u in uses] == [
        ("vision_encoder", 17, 1),
        ("question_encoder", 12, 1),
        ("decoder_step", 1, 8),
    ]
    sess = ort.InferenceSession(
        str(bundle / "fp32" / "vision_encoder.onnx"), providers=["CPUExecutionProvider"]
    )
    (image_key,) = sess.run(["image_key"], {"pixel_values": np.zeros((1, 3, 64, 64), np.float32)})
    assert image_key.shape[3] == uses[0].rows
