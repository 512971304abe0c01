"""Export: the graphs reproduce PyTorch, the merge is exact, the gate refuses a bad export."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ruining

from edgevqa.bundle import load_manifest
from edgevqa.config import ExportConfig
from edgevqa.errors import InputError, ValidationError


def test_fidelity_report(bundle):
    fid = json.loads((bundle / "fidelity.json").read_text())
    fp32 = fid["precisions"]["fp32"]
    assert fp32["answer_agreement"] == 1.0 and fp32["sequence_agreement"] == 1.0
    assert fp32["teacher_forced_top1"] == 1.0  # PyTorch's answers fed back: its next token each time
    assert 0.9 <= fid["precisions"]["int8"]["teacher_forced_top1"] <= 1.0
    for graph, rep in fp32["graphs"].items():
        assert rep["within_atol"], (graph, rep)
    assert set(fid["precisions"]["int8"]["graphs"]) == {"vision_encoder", "question_encoder", "decoder_step"}
    assert fid["merge"]["lora"] and fid["merge"]["identical_answers"] == fid["merge"]["probe_questions"]
    assert fid["merge"]["max_logit_diff"] < 1e-3


def test_runtime_answers_match_transformers_generate(bundle, lora_run, synth_data):
    """Parity with the Hugging Face reference: the torch-free runtime vs generate() on test images."""
    from edgevqa.data.records import load_split
    from edgevqa.export.merge import load_run
    from edgevqa.runtime import VQAPipeline
    from edgevqa.train.data import ImageCache, encode_records
    from edgevqa.train.infer import generate_answers

    recs = load_split(synth_data, "test")[:12]
    merged = load_run(lora_run).loaded
    enc = encode_records(recs, synth_data, merged.tokenizer, 32, 8)
    ref = generate_answers(merged.model, merged.tokenizer, enc, ImageCache(merged.image), 8)
    pipe = VQAPipeline.from_bundle(bundle, precision="fp32")
    got = [pipe.ask(r.image_path(synth_data), r.question) for r in recs]
    assert [a.token_ids for a in got] == ref.token_ids
    assert [a.text for a in got] == ref.texts


def test_graphs_match_torch_over_a_shape_grid(lora_run):
    """Each graph vs its torch wrapper at several batch / question / past lengths."""
    import onnxruntime as ort
    import torch

    from edgevqa.export import onnx as export_onnx
    from edgevqa.export.merge import load_run
    from edgevqa.families import registry as specs

    model = load_run(lora_run).loaded.model
    spec = specs.get("blip-vqa")
    for g in spec.graphs:
        path = lora_run / f"grid-{g.name}.onnx"
        export_onnx.export_graph(model, spec, g.name, path)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for batch, question, past, new in [(1, 5, 0, 1), (3, 9, 4, 1), (2, 3, 2, 3)]:
            sizes = dict(batch=batch, question=question, past=past, new=new)
            feed = export_onnx.dummy_inputs(spec.family, model, g.name, **sizes)
            with torch.inference_mode():
                ref = export_onnx.wrapper(spec.family, g.name, model)(**feed)
            ref = ref if isinstance(ref, tuple) else (ref,)
            got = sess.run(None, {k: v.numpy() for k, v in feed.items()})
            for r, o in zip(ref, got):
                assert r.shape == o.shape
                assert np.abs(r.numpy() - o).max() <= g.atol
        path.unlink()


def test_gate_refuses_a_broken_quantization(lora_run, tmp_path, monkeypatch):
    """A quantizer that wrecks the weights must be caught: exit code 3, no bundle left behind."""
    import onnx
    from onnx import numpy_helper

    from edgevqa.export import exporter

    def broken(src, dst, exclude=()):  # wrecks every weight, kept-in-fp32 ones too: no fallback helps
        m = onnx.load(str(src))
        for init in m.graph.initializer:
            a = numpy_helper.to_array(init)
            if a.dtype == np.float32 and a.ndim == 2:
                init.CopyFrom(
                    numpy_helper.from_array(
                        np.random.default_rng(0).standard_normal(a.shape).astype(np.float32), init.name
                    )
                )
        onnx.save(m, str(dst))
        return dst

    monkeypatch.setitem(exporter.QUANTIZERS, "int8", broken)
    out = tmp_path / "bad-bundle"
    with pytest.raises(ValidationError, match="int8 answers agree.*in fp32 did not help") as e:
        exporter.export(
            ExportConfig(run=str(lora_run), out=str(out), precisions=["fp32", "int8"], validate_limit=30),
            progress=False,
        )
    assert e.value.exit_code == 3
    assert not out.exists() and not list(tmp_path.glob(".bad-bundle*"))


def test_export_input_errors(tmp_path, bundle, lora_run):
    from edgevqa.export import export

    with pytest.raises(InputError, match="not a training run"):
        export(ExportConfig(run=str(tmp_path), out=str(tmp_path / "b")), progress=False)
    with pytest.raises(InputError, match="already exists"):
        export(ExportConfig(run=str(lora_run), out=str(bundle)), progress=False)
    with pytest.raises(InputError, match="precision"):
        ExportConfig(run="r", out="o", precisions=["fp8"])
    assert load_manifest(bundle)  # the existing bundle is untouched


def test_fallback_keeps_the_broken_layer_in_fp32(lora_run, tmp_path, monkeypatch):
    """One layer that int8 breaks: the gate finds it by its measured local error, keeps it in
    fp32, and the bundle ships with answers that agree again."""
    from edgevqa.export import exporter
    from edgevqa.export.quantize import quantize_int8

    target = "transform.dense"
    breaks_one_layer = ruining(quantize_int8, target)
    monkeypatch.setitem(exporter.QUANTIZERS, "int8", breaks_one_layer)
    out = tmp_path / "bundle"
    exporter.export(ExportConfig(run=str(lora_run), out=str(out), validate_limit=30), progress=False)
    fid = json.loads((out / "fidelity.json").read_text())
    int8 = fid["precisions"]["int8"]
    fb = int8["fallback"]
    assert fb["most_sensitive"][0]["scope"] == target and fb["most_sensitive"][0]["graph"] == "decoder_step"
    assert [e["scope"] for e in fb["kept_fp32"]] == [target]
    assert fb["attempts"][-1]["answer_agreement"] == int8["answer_agreement"] >= 0.98
    assert float(fb["reason"].split()[2]) < 0.98  # it did fail before the fallback
    assert fid["passed"] and load_manifest(out, precision="int8")


def test_exported_graphs_carry_no_local_paths(bundle, lora_run):
    import onnx

    for f in (bundle / "fp32").glob("*.onnx"):
        m = onnx.load(str(f), load_external_data=False)
        assert not any(p.key == "pkg.torch.onnx.stack_trace" for n in m.graph.node for p in n.metadata_props)
    # nor the manifest and reports: the run is named relative to the bundle, which bench follows
    root = str(bundle.parent.parent.parent)
    for f in bundle.glob("*.json"):
        assert root not in f.read_text(), f
    assert (bundle / load_manifest(bundle).source["run"]).resolve() == lora_run.resolve()


def test_every_precision_loads_runs_and_agrees(lora_run, tmp_path, synth_data):
    """fp16 next to fp32 and int8: each graph loads in onnxruntime and answers; LayerNorm and
    Softmax stay fp32 inside the fp16 graphs; inputs and outputs stay fp32 for the runtime."""
    import onnx
    from onnx import TensorProto

    from edgevqa.data.records import load_split
    from edgevqa.export import exporter
    from edgevqa.runtime import VQAPipeline

    out = tmp_path / "b16"
    exporter.export(
        ExportConfig(run=str(lora_run), out=str(out), precisions=["fp16", "fp32", "int8"], validate_limit=30),
        progress=False,
    )
    fid = json.loads((out / "fidelity.json").read_text())
    assert fid["precisions"]["fp16"]["answer_agreement"] >= 0.98
    assert load_manifest(out).default_precision == "fp16"
    rec = load_split(synth_data, "test")[0]
    for p in ("fp16", "fp32", "int8"):
        assert (
            VQAPipeline.from_bundle(out, precision=p).ask(rec.image_path(synth_data), rec.question).token_ids
        )
    for g in ("vision_encoder", "question_encoder", "decoder_step"):
        m = onnx.shape_inference.infer_shapes(onnx.load(str(out / "fp16" / f"{g}.onnx")))
        types = {v.name: v.type.tensor_type.elem_type for v in (*m.graph.value_info, *m.graph.input)}
        assert any(i.data_type == TensorProto.FLOAT16 for i in m.graph.initializer)
        for node in m.graph.node:
            if node.op_type in ("LayerNormalization", "Softmax"):
                assert types.get(node.input[0], TensorProto.FLOAT) == TensorProto.FLOAT, (g, node.name)
        for v in (*m.graph.input, *m.graph.output):
            assert v.type.tensor_type.elem_type in (TensorProto.FLOAT, TensorProto.INT64)


def test_static_int8_is_calibrated_qdq_that_loads_and_agrees(lora_run, tmp_path, synth_data):
    import onnx

    from edgevqa.data.records import load_split
    from edgevqa.export import exporter
    from edgevqa.export.calibrate import record_feeds
    from edgevqa.runtime import VQAPipeline

    out = tmp_path / "bstatic"
    exporter.export(
        ExportConfig(
            run=str(lora_run),
            out=str(out),
            precisions=["fp32", "int8-static"],
            validate_limit=30,
            calib_size=8,
        ),
        progress=False,
    )
    fid = json.loads((out / "fidelity.json").read_text())
    assert fid["precisions"]["int8-static"]["answer_agreement"] >= 0.98
    graph = onnx.load(str(out / "int8-static" / "decoder_step.onnx")).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in graph.node}  # as TensorRT wants
    # weights in 7 bits: full-range int8 x int8 saturates the int16 sums of CPUs without VNNI (AVX2
    # only), where this run's int8-static answered 0% like PyTorch (measured on an AMD Zen 3)
    weights = [
        onnx.numpy_helper.to_array(i) for i in graph.initializer if i.data_type == onnx.TensorProto.INT8
    ]
    assert weights and max(int(np.abs(w.astype(np.int16)).max()) for w in weights) <= 64
    rec = load_split(synth_data, "test")[0]
    assert VQAPipeline.from_bundle(out, precision="int8-static").ask(rec.image_path(synth_data), rec.question)
    # the recorder sees every graph call: one vision + one question pass per item, one call per decoder step
    feeds = record_feeds(out, [(rec.image_path(synth_data), rec.question)] * 2)
    assert len(feeds["vision_encoder"]) == len(feeds["question_encoder"]) == 2
    assert len(feeds["decoder_step"]) >= 2 and feeds["decoder_step"][0]["past_key"].shape[3] == 0
    with pytest.raises(InputError, match="calib-method"):
        ExportConfig(run="r", out="o", calib_method="kl")


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibration_takes_inputs_of_different_shapes(tmp_path, method):
    """onnxruntime's histogram calibrators alone fail on ragged inputs (questions of different
    lengths); grouped by shape they merge, and the quantizer uses exactly the ranges found."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgevqa.export.calibrate import histogram_ranges, shape_groups, static_int8

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, "t", 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, "t", 3])],
        [w],
    )
    src = tmp_path / "mm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    feeds = [{"X": rng.standard_normal((1, t, 4)).astype(np.float32)} for t in (3, 5, 3, 7)]
    assert [len(g) for g in shape_groups(feeds)] == [2, 1, 1]
    ranges = histogram_ranges(src, feeds, method)
    biggest = max(float(np.abs(f["X"]).max()) for f in feeds)
    lo, hi = ranges["X"]
    bound = max(-lo, hi)  # activations are quantized symmetrically: the larger side sets the scale
    assert lo < 0 < hi and bound <= biggest * 1.001  # within what was seen (clipped, for entropy)
    static_int8({"mm": feeds}, method)(src, tmp_path / "q.onnx")
    q = onnx.load(str(tmp_path / "q.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    quant_x = next(n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "X")
    assert float(inits[quant_x.input[1]]) == pytest.approx(bound / 127, rel=1e-5)


def test_a_precision_shipped_without_fp32(lora_run, tmp_path):
    """fp32 graphs are only a means here (calibration, validation): not shipped, not listed."""
    from edgevqa.export import exporter

    out = tmp_path / "only-static"
    exporter.export(
        ExportConfig(
            run=str(lora_run), out=str(out), precisions=["int8-static"], validate_limit=20, calib_size=8
        ),
        progress=False,
    )
    m = load_manifest(out)
    assert set(m.precisions) == {"int8-static"} and m.default_precision == "int8-static"
    assert not (out / "fp32").exists() and not any(f.startswith("fp32/") for f in m.files)


def test_int4_decoder_ships_4bit_weights_only_where_memory_bound(lora_run, tmp_path, synth_data):
    """int4: the decoder's MatMuls become 4-bit MatMulNBits, the encoders stay int8 dynamic;
    fidelity.json holds its agreement like any precision, and the bundle answers."""
    import onnx

    from edgevqa.data.records import load_split
    from edgevqa.export import exporter
    from edgevqa.runtime import VQAPipeline

    out = tmp_path / "b4"
    cfg = ExportConfig(run=str(lora_run), out=str(out), precisions=["int4"], validate_limit=20, force=True)
    exporter.export(cfg, progress=False)
    ops = {
        g: {n.op_type for n in onnx.load(str(out / "int4" / f"{g}.onnx")).graph.node}
        for g in ("vision_encoder", "decoder_step")
    }
    assert "MatMulNBits" in ops["decoder_step"] and "MatMulInteger" not in ops["decoder_step"]
    assert "MatMulInteger" in ops["vision_encoder"] and "MatMulNBits" not in ops["vision_encoder"]
    rep = json.loads((out / "fidelity.json").read_text())["precisions"]["int4"]
    assert 0 <= rep["answer_agreement"] <= 1 and rep["n"] == 20
    rec = load_split(synth_data, "test")[0]
    assert VQAPipeline.from_bundle(out).ask(rec.image_path(synth_data), rec.question).token_ids


def test_teacher_forced_top1_is_the_greedy_answer_and_sees_a_wrong_one(bundle, synth_data):
    from edgevqa.data.records import load_split
    from edgevqa.runtime import VQAPipeline

    pipe = VQAPipeline.from_bundle(bundle, precision="fp32")
    r = load_split(synth_data, "test")[0]
    path = r.image_path(synth_data)
    ids = pipe.ask(path, r.question).token_ids
    assert pipe.teacher_forced(path, r.question, ids) == ids  # greedy: each token is the argmax
    wrong = [(ids[0] + 1) % 50 + 5, *ids[1:]]
    assert pipe.teacher_forced(path, r.question, wrong)[0] == ids[0]


def test_a_saved_run_answers_in_plain_transformers_as_the_bundle_does(bundle, base_run, lora_run, synth_data):
    """A user of plain transformers + peft (BlipProcessor, generate) gets the bundle's answers, also
    for questions longer than anything training truncated to: no tokenizer state is saved."""
    import torch
    from peft import PeftModel
    from PIL import Image
    from tokenizers import Tokenizer
    from transformers import BlipForQuestionAnswering, BlipProcessor

    from edgevqa.data.records import load_split
    from edgevqa.runtime import VQAPipeline

    for saved in (base_run / "model", base_run / "tokenizer", bundle):
        assert json.loads((saved / "tokenizer.json").read_text())["truncation"] is None, saved
    proc = BlipProcessor.from_pretrained(base_run / "model")
    base = BlipForQuestionAnswering.from_pretrained(base_run / "model")
    model = PeftModel.from_pretrained(base, str(lora_run / "adapter")).merge_and_unload().eval()
    plain = Tokenizer.from_file(str(bundle / "tokenizer.json"))
    recs = [r for r in load_split(synth_data, "test") if len(plain.encode(r.question).ids) > 9]
    assert len(recs) >= 3  # questions longer than training's answer truncation (9), so it would show
    pipe = VQAPipeline.from_bundle(bundle, precision="fp32")
    for r in recs:
        inputs = proc(
            images=Image.open(r.image_path(synth_data)).convert("RGB"), text=r.question, return_tensors="pt"
        )
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=8)
        assert pipe.ask(r.image_path(synth_data), r.question).text == proc.decode(
            out[0], skip_special_tokens=True
        )


def test_each_precision_reports_what_it_quantized(bundle):
    from edgevqa.export.fallback import weight_matmuls

    fid = json.loads((bundle / "fidelity.json").read_text())
    share = fid["precisions"]["int8"]["quantized"]
    total = sum(len(weight_matmuls(g)) for g in (bundle / "fp32").glob("*.onnx"))
    assert share["of"] == total > 0 and share["matmuls"] == total  # no fallback: every one is int8
    assert share["bytes"] == sum(f.stat().st_size for f in (bundle / "int8").iterdir())
    assert fid["precisions"]["fp32"]["quantized"]["matmuls"] == 0


def test_a_quantized_precision_that_quantizes_nothing_is_refused(lora_run, tmp_path, monkeypatch):
    """An "int8" whose weights all stayed fp32 agrees perfectly, and is fp32 under another name."""
    import shutil

    from edgevqa.export import exporter

    monkeypatch.setitem(exporter.QUANTIZERS, "int8", lambda src, dst, exclude=(): shutil.copy(src, dst))
    cfg = ExportConfig(
        run=str(lora_run), out=str(tmp_path / "b"), precisions=["fp32", "int8"], validate_limit=10, force=True
    )
    fid = json.loads((exporter.export(cfg, progress=False) / "fidelity.json").read_text())
    assert fid["precisions"]["int8"]["answer_agreement"] == 1.0
    assert fid["precisions"]["int8"]["quantized"]["matmuls"] == 0 and not fid["passed"]
    with pytest.raises(ValidationError, match=r"int8 quantizes none of its \d+ weight MatMuls"):
        exporter.gate(fid, ExportConfig(run="r", out="o"))  # what refuses it without --force
    assert any(line.startswith("int8:") and " 0 of " in line for line in exporter.summary(fid))


def test_the_fallback_keeps_only_what_improves_the_answers(lora_run, tmp_path, monkeypatch):
    """Local error ranks a harmless layer first: keeping it in fp32 does not improve the answers,
    so it is dropped, and only the broken layer is kept."""
    from edgevqa.export import exporter, fallback
    from edgevqa.export.quantize import quantize_int8

    target = "transform.dense"
    monkeypatch.setitem(exporter.QUANTIZERS, "int8", ruining(quantize_int8, target))
    measured = fallback.local_errors

    def misranked(*args):
        errs = sorted(measured(*args), key=lambda e: -e.rel_error)
        if errs and errs[0].scope == target:  # the broken layer's graph: a harmless one goes first
            errs[0], errs[-1] = errs[-1], errs[0]
            errs[0] = fallback.NodeError(errs[0].graph, errs[0].node, errs[0].scope, 1e9)
        return errs

    monkeypatch.setattr(fallback, "local_errors", misranked)
    out = tmp_path / "bundle"
    exporter.export(ExportConfig(run=str(lora_run), out=str(out), validate_limit=30), progress=False)
    int8 = json.loads((out / "fidelity.json").read_text())["precisions"]["int8"]
    fb = int8["fallback"]
    assert fb["attempts"][0]["accepted"] is False  # the harmless layer alone: answers no better
    assert [e["scope"] for e in fb["kept_fp32"]] == [target]
    assert int8["quantized"]["matmuls"] == int8["quantized"]["of"] - 1
    assert int8["answer_agreement"] >= 0.98
