"""Export: the graphs reproduce PyTorch, the merge is exact, the gate refuses a bad export."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgevqa.bundle import load_manifest
from edgevqa.config import ExportConfig
from edgevqa.errors import InputError, ValidationError


def test_fidelity_report(bundle):
    fid = json.loads((bundle / "fidelity.json").read_text())
    fp32 = fid["precisions"]["fp32"]
    assert fp32["answer_agreement"] == 1.0 and fp32["sequence_agreement"] == 1.0
    for graph, rep in fp32["graphs"].items():
        assert rep["within_atol"], (graph, rep)
    assert set(fid["precisions"]["int8"]["graphs"]) == {"vision_encoder", "question_encoder", "decoder_step"}
    assert fid["merge"]["lora"] and fid["merge"]["identical_answers"] == fid["merge"]["probe_questions"]
    assert fid["merge"]["max_logit_diff"] < 1e-3


def test_runtime_answers_match_transformers_generate(bundle, lora_run, synth_data):
    """Parity with the Hugging Face reference: the torch-free runtime vs generate() on test images."""
    from edgevqa.data.records import load_split
    from edgevqa.export.merge import merge_run
    from edgevqa.runtime import VQAPipeline
    from edgevqa.train.data import ImageCache, encode_records
    from edgevqa.train.infer import generate_answers

    recs = load_split(synth_data, "test")[:12]
    merged = merge_run(lora_run, None, None).loaded
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
    from edgevqa.export import specs
    from edgevqa.export.merge import merge_run

    model = merge_run(lora_run, None, None).loaded.model
    spec = specs.get("blip-vqa")
    for g in spec.graphs:
        path = lora_run / f"grid-{g.name}.onnx"
        export_onnx.export_graph(model, spec, g.name, path)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for batch, question, past, new in [(1, 5, 0, 1), (3, 9, 4, 1), (2, 3, 2, 3)]:
            feed = export_onnx.dummy_inputs(model, g.name, batch=batch, question=question, past=past, new=new)
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

    def broken(src, dst):
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
    with pytest.raises(ValidationError, match="int8 answers agree") as e:
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
