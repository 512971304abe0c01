"""Graphs over protobuf's 2 GB limit (PaliGemma 3B's decoder: 10 GB in fp32) keep their weights in
``graph.onnx.data``: exported, quantized, checksummed, verified per precision, answered, measured
by the fallback and the matmul floor. The limit is lowered here so a tiny model takes that path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import hf_answer, ruining
from onnx.external_data_helper import uses_external_data
from PIL import Image

from edgevqa.errors import BundleError
from edgevqa.export import onnxfile


def _external(path: Path) -> bool:
    m = onnx.load(str(path), load_external_data=False)
    return any(uses_external_data(t) for t in m.graph.initializer)


@pytest.fixture(scope="module")
def big_bundle(tmp_path_factory, synth_data):
    """tiny-paligemma with random weights, exported with a 64 KB limit: every graph goes external;
    int8 carries a ruined attention layer so the fallback measures nodes of external graphs."""
    import torch

    from edgevqa.config import ExportConfig
    from edgevqa.data.records import load_split
    from edgevqa.export import export
    from edgevqa.export import quantize as q
    from edgevqa.train.families import paligemma as pg

    tmp = tmp_path_factory.mktemp("external")
    recs = load_split(synth_data, "train")
    tok = pg.build_tokenizer([r.question for r in recs] + [r.answer for r in recs], tmp / "tok")
    loaded = pg.arch("tiny-paligemma", tok)
    torch.manual_seed(0)
    for p in loaded.model.parameters():  # Gemma's norms start at zero: make every weight matter
        p.data.normal_(0, 0.5)
    pg.save_model_dir(loaded, tmp / "model")
    mp = pytest.MonkeyPatch()
    mp.setattr(onnxfile, "LIMIT", 64 * 1024)
    ruin = ruining(q.QUANTIZERS["int8"], "layers.0.self_attn.q_proj")
    mp.setitem(q.QUANTIZERS, "int8", ruin)
    try:
        bundle = export(
            ExportConfig(
                run=str(tmp / "model"),
                out=str(tmp / "bundle"),
                precisions=["fp32", "int8", "int4"],
                validate_limit=8,
                force=True,
            ),
            data=str(synth_data),
            progress=False,
        )
    finally:
        mp.undo()
    return bundle, tmp / "model"


def test_graphs_over_the_limit_keep_their_weights_beside_them(big_bundle):
    bundle, _ = big_bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    for p in ("fp32", "int4"):  # (int8 here is the ruined copy, written from an in-memory graph)
        # (int4's own graphs: its prompts run int8's decoder_step)
        for graph in [g for g in manifest["precisions"][p].values() if g.startswith(f"{p}/")]:
            assert _external(bundle / graph), graph
            data = f"{graph}.data"
            assert (bundle / data).stat().st_size > (bundle / graph).stat().st_size
            assert manifest["files"][data]["bytes"] == (bundle / data).stat().st_size
    assert not list(bundle.rglob(".probe-*")), "the fallback's probe graphs are gone"


def test_external_graphs_answer_as_transformers_generate(big_bundle, synth_data):
    from transformers import PaliGemmaForConditionalGeneration, PaliGemmaProcessor

    from edgevqa.data.records import load_split
    from edgevqa.runtime import VQAPipeline

    bundle, model_dir = big_bundle
    proc = PaliGemmaProcessor.from_pretrained(model_dir)
    model = PaliGemmaForConditionalGeneration.from_pretrained(model_dir).eval()
    pipe = VQAPipeline.from_bundle(bundle, precision="fp32")
    recs = load_split(synth_data, "test")[:4]
    for r in recs:
        got = pipe.ask(r.image_path(synth_data), r.question).token_ids
        assert got == hf_answer(proc, model, Image.open(r.image_path(synth_data)), r.question)
    fid = json.loads((bundle / "fidelity.json").read_text())
    assert fid["precisions"]["fp32"]["answer_agreement"] == 1.0
    int4 = VQAPipeline.from_bundle(bundle, precision="int4")
    assert int4.ask(recs[0].image_path(synth_data), recs[0].question).token_ids


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantizing_an_external_graph_gives_the_weights_of_an_inline_one(big_bundle, precision, tmp_path):
    from onnx import numpy_helper

    from edgevqa.export.quantize import QUANTIZERS

    src = big_bundle[0] / "fp32" / "decoder_step.onnx"
    inline = tmp_path / "inline" / "decoder_step.onnx"  # the quantizers go by the graph's file name
    inline.parent.mkdir()
    onnxfile.save(onnx.load(str(src)), inline, external=False)
    got = {}
    for name, graph in (("external", src), ("inline", inline)):
        out = tmp_path / name / "q" / "decoder_step.onnx"
        out.parent.mkdir(parents=True)
        QUANTIZERS[precision](graph, out)
        m = onnx.load(str(out))
        got[name] = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    assert got["external"].keys() == got["inline"].keys()
    for k, v in got["external"].items():
        np.testing.assert_array_equal(v, got["inline"][k])


def test_the_fallback_finds_the_ruined_layer_in_external_graphs(big_bundle):
    fid = json.loads((big_bundle[0] / "fidelity.json").read_text())
    fb = fid["precisions"]["int8"]["fallback"]
    top = fb["most_sensitive"][0]
    assert top["scope"] == "layers.0.self_attn.q_proj" and top["rel_error"] > 1
    # kept in fp32 first, the graphs rebuilt and validated again (these random weights are too
    # chaotic for int8 to reach the gate's 99% with any number of MatMuls kept)
    assert fb["kept_fp32"][0]["node"] == top["node"] and fb["attempts"][0]["kept_fp32"] == 1


def test_weights_are_verified_with_their_graph_and_only_for_the_precision_loaded(big_bundle, tmp_path):
    import shutil

    from edgevqa.bundle import load_manifest

    bundle = tmp_path / "b"
    shutil.copytree(big_bundle[0], bundle)
    data = bundle / "fp32" / "decoder_step.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    load_manifest(bundle, precision="int8")  # another precision's weights are not read
    with pytest.raises(BundleError, match=r"fp32/decoder_step.onnx.data does not match its sha256"):
        load_manifest(bundle, precision="fp32")
    data.unlink()
    with pytest.raises(BundleError, match="bundle file missing"):
        load_manifest(bundle, precision="fp32")


def test_the_matmul_floor_reads_external_weights(big_bundle, tmp_path):
    from edgevqa.bench import floor

    src = big_bundle[0] / "fp32" / "decoder_step.onnx"
    shapes = floor.matmul_graph(src, tmp_path / "decoder_step.onnx", rows=3)
    assert sum(shapes.values()) == len(floor.weight_matmuls(onnx.load(str(src), load_external_data=False)))
    assert _external(tmp_path / "decoder_step.onnx")
    assert (tmp_path / "decoder_step.onnx.data").read_bytes() == Path(f"{src}.data").read_bytes()
    uses = [floor.Use("decoder_step", 1, 2)]
    for p in ("fp32", "int8"):
        rep = floor.measure(big_bundle[0] / "fp32", uses, p, tmp_path / "floor", repeats=2)
        assert rep["ms"] > 0 and rep["by_graph"]["decoder_step"]["calls"] == 2
    assert not [f for f in (tmp_path / "floor").rglob("*") if f.is_file()], "floor graphs are removed"


def test_save_picks_external_data_by_size_and_drops_a_stale_data_file(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [w],
    )
    assert onnxfile.weight_bytes(helper.make_model(graph)) == 64 * 64 * 4
    path = tmp_path / "g.onnx"
    onnxfile.save(helper.make_model(graph), path, external=True)
    assert _external(path) and onnxfile.data_file(path).stat().st_size == 64 * 64 * 4
    assert onnxfile.weight_bytes(onnx.load(str(path), load_external_data=False)) == 64 * 64 * 4
    onnxfile.save(
        helper.make_model(graph), path
    )  # under LIMIT: one file, and no data file left to disagree with it
    assert not _external(path) and not onnxfile.data_file(path).exists()


def test_a_quantized_token_table_is_measured_and_can_be_kept_in_fp32(big_bundle, tmp_path):
    """The int8 token table (a Gather, not a MatMul) is a fallback candidate: its rows against the
    fp32 rows, the number recomputed here from the stored int8 table; excluded, it stays fp32."""
    from onnx import numpy_helper

    from edgevqa.export.fallback import local_errors
    from edgevqa.export.quantize import quantize_int8

    src = big_bundle[0] / "fp32" / "embed_tokens.onnx"
    ids = np.array([[2, 5, 7, 7, 40]], np.int64)
    (tmp_path / "q").mkdir()
    q = quantize_int8(src, tmp_path / "q" / "embed_tokens.onnx")
    (err,) = local_errors("embed_tokens", src, q, [{"input_ids": ids}])
    table = numpy_helper.to_array(
        next(i for i in onnx.load(str(src)).graph.initializer if i.data_type == onnx.TensorProto.FLOAT)
    )
    qi = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(q)).graph.initializer}
    w8, scale, zero = (
        next(v for k, v in qi.items() if k.endswith(s)) for s in ("_quantized", "weight_scale", "_zero_point")
    )
    rows, ref = (w8[ids[0]].astype(np.float32) - np.float32(zero)) * scale, table[ids[0]]
    assert err.rel_error == pytest.approx(np.linalg.norm(rows - ref) / np.linalg.norm(ref), rel=1e-5)
    assert 0 < err.rel_error < 0.05
    kept = onnx.load(str(quantize_int8(src, tmp_path / "q" / "embed_tokens.onnx", [err.node])))
    assert not [n for n in kept.graph.node if n.op_type == "DequantizeLinear"]
    (fp,) = [numpy_helper.to_array(i) for i in kept.graph.initializer if list(i.dims) == list(table.shape)]
    np.testing.assert_array_equal(fp, table)


def test_the_streaming_int8_writes_what_quantize_dynamic_writes(big_bundle, tmp_path):
    """dynamic_int8 (graphs over 2 GB) against onnxruntime's quantize_dynamic on the same graph:
    the same weights, scales and zero points bit for bit, the same outputs for the same inputs."""
    import onnxruntime as ort
    from onnx import numpy_helper

    from edgevqa.export import dynamic_int8, quantize
    from edgevqa.families import registry

    src = big_bundle[0] / "fp32" / "decoder_step.onnx"
    for d in ("ours", "inline", "ort"):
        (tmp_path / d).mkdir()
    ours = dynamic_int8.quantize(src, tmp_path / "ours" / "decoder_step.onnx")
    inline = onnxfile.save(onnx.load(str(src)), tmp_path / "inline" / "decoder_step.onnx", external=False)
    theirs = quantize.quantize_int8(inline, tmp_path / "ort" / "decoder_step.onnx")
    a, b = onnx.load(str(ours)), onnx.load(str(theirs))
    ia = {i.name: numpy_helper.to_array(i) for i in a.graph.initializer}
    ib = {i.name: numpy_helper.to_array(i) for i in b.graph.initializer}
    quantized = [k[: -len("_quantized")] for k in ib if k.endswith("_quantized")]
    assert len(quantized) == 15  # 2 layers x 7 projections + the LM head
    for k in [w + s for w in quantized for s in ("_quantized", "_scale", "_zero_point")]:
        assert ia[k].dtype == ib[k].dtype and ia[k].shape == ib[k].shape, k
        np.testing.assert_array_equal(ia[k], ib[k], err_msg=k)
    count = {t: sum(n.op_type == t for n in a.graph.node) for t in ("MatMulInteger", "DynamicQuantizeLinear")}
    assert count == {t: sum(n.op_type == t for n in b.graph.node) for t in count}
    # one step of 3 new tokens on a cache of 2
    sizes = {"batch": 1, "new": 3, "past": 2, "total": 5, "picked": 1}
    axes = registry.get("paligemma").graph("decoder_step").inputs
    rng = np.random.default_rng(0)
    sa, sb = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (ours, theirs))
    feed = {}
    for i in sa.get_inputs():
        shape = [sizes[axes[i.name][k]] if k in axes[i.name] else d for k, d in enumerate(i.shape)]
        ints = "int64" in i.type
        feed[i.name] = rng.integers(0, 3, shape) if ints else rng.standard_normal(shape).astype(np.float32)
    for x, y in zip(sa.run(None, feed), sb.run(None, feed)):
        np.testing.assert_array_equal(x, y)
    # the fallback's exclusions: the named MatMul stays fp32 with its fp32 weight
    first = next(n for n in onnx.load(str(src), load_external_data=False).graph.node if n.op_type == "MatMul")
    kept = onnx.load(str(dynamic_int8.quantize(src, tmp_path / "ours" / "decoder_step.onnx", [first.name])))
    fp32 = {i.name for i in kept.graph.initializer}
    assert [n.name for n in kept.graph.node if n.op_type == "MatMul" and n.input[1] in fp32] == [first.name]
    assert sum(n.op_type == "MatMulInteger" for n in kept.graph.node) == count["MatMulInteger"] - 1
