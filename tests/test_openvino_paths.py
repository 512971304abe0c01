"""The OpenVINO paths of a bundle (int8+ov, int4+ov): the vision graph calibrated to int8 Q/DQ and
run by OpenVINO at f32, every other graph the base precision's, run by onnxruntime; exported,
gated, chosen by --precision auto only where OpenVINO is installed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgevqa.bundle import load_manifest
from edgevqa.config import ExportConfig
from edgevqa.data.records import load_split
from edgevqa.errors import InputError
from edgevqa.runtime import VQAPipeline, autotune, backends
from edgevqa.runtime import pipeline as rp


def test_an_openvino_path_needs_its_base_precision():
    with pytest.raises(InputError, match="int4\\+ov needs int4"):
        ExportConfig(run="r", out="o", precisions=["fp32", "int4+ov"])
    assert ExportConfig(run="r", out="o", precisions=["int4", "int4+ov"]).precisions[1] == "int4+ov"


@pytest.fixture(scope="module")
def ov_bundle(tmp_path_factory, lora_run):
    pytest.importorskip("openvino")
    from edgevqa.export import export

    out = tmp_path_factory.mktemp("ov") / "bundle"
    cfg = ExportConfig(
        run=str(lora_run),
        out=str(out),
        precisions=["fp32", "int8", "int8+ov"],
        validate_limit=24,
        calib_size=8,
        force=True,  # an almost untrained model's near-ties; the gate has its own tests
    )
    return export(cfg, progress=False)


def test_the_path_borrows_its_base_graphs_and_is_gated_on_openvino(ov_bundle):
    m = load_manifest(ov_bundle)  # every file verified against its sha256
    assert m.schema_version == 4 and m.engines == {"int8+ov": {"vision_encoder": "openvino-f32"}}
    assert m.precisions["int8+ov"] == {
        "vision_encoder": "int8+ov/vision_encoder.onnx",
        "question_encoder": "int8/question_encoder.onnx",
        "decoder_step": "int8/decoder_step.onnx",
    }
    assert sorted(p.name for p in (ov_bundle / "int8+ov").iterdir()) == ["vision_encoder.onnx"]
    import onnx

    ops = {n.op_type for n in onnx.load(str(ov_bundle / "int8+ov" / "vision_encoder.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # the calibrated Q/DQ graph OpenVINO runs in int8
    fid = json.loads((ov_bundle / "fidelity.json").read_text())["precisions"]
    share, fp32 = fid["int8+ov"]["quantized"], fid["fp32"]["quantized"]
    # every graph it runs counts, borrowed ones too: the same weight MatMuls as fp32 has
    assert share["of"] == fp32["of"] and share["matmuls"] > 0
    own = sum(f.stat().st_size for f in (ov_bundle / "int8+ov").iterdir())
    int8_text = sum(
        (ov_bundle / "int8" / f).stat().st_size for f in ("question_encoder.onnx", "decoder_step.onnx")
    )
    assert share["bytes"] == own + int8_text
    assert 0 <= fid["int8+ov"]["answer_agreement"] <= 1


def test_the_vision_graph_runs_in_openvino_at_f32_and_answers(ov_bundle, synth_data):
    from edgevqa.runtime.openvino import OpenVinoGraph

    pipe = VQAPipeline.from_bundle(ov_bundle, precision="int8+ov")
    vision = pipe.sessions["vision_encoder"]
    assert isinstance(vision, OpenVinoGraph) and vision.precision == "f32"
    assert not isinstance(pipe.sessions["decoder_step"], OpenVinoGraph) and pipe.backend == "cpu"
    fp32 = VQAPipeline.from_bundle(ov_bundle, precision="fp32")
    r = load_split(synth_data, "test")[0]
    image = r.image_path(synth_data)
    ours, ref = pipe.encode_image(image).arrays, fp32.encode_image(image).arrays
    for a, b in zip(ours, ref):  # int8 keys and values of the image, near fp32's
        assert a.shape == b.shape
        assert np.linalg.norm(a - b) / np.linalg.norm(b) < 0.15
    # what the gate measured is what this path answers
    fid = json.loads((ov_bundle / "fidelity.json").read_text())["precisions"]["int8+ov"]
    recs = load_split(synth_data, "val")[:24]
    ids = [pipe.ask(rec.image_path(synth_data), rec.question).token_ids for rec in recs]
    ref_ids = [fp32.ask(rec.image_path(synth_data), rec.question).token_ids for rec in recs]
    assert np.mean([a == b for a, b in zip(ids, ref_ids)]) == pytest.approx(fid["answer_agreement"], abs=0.05)


def test_without_openvino_the_path_is_one_line_and_auto_skips_it(ov_bundle, monkeypatch):
    monkeypatch.setattr(backends.Machine, "offers", lambda self, b: b == "cpu")  # no OpenVINO here
    m = load_manifest(ov_bundle)
    with pytest.raises(InputError, match=r"pip install 'edgevqa\[openvino\]', or --precision int8$"):
        rp.choose(m, "int8+ov", "auto", backends.probe())
    assert "int8+ov" not in autotune.candidates(ov_bundle, m, "cpu")


def test_the_path_runs_only_on_the_cpu_and_auto_weighs_it(ov_bundle):
    m = load_manifest(ov_bundle)
    with pytest.raises(InputError, match="--backend cpu"):
        rp.choose(m, "int8+ov", "cuda", backends.probe())
    assert rp.choose(m, "int8+ov", "auto", backends.probe()) == ("int8+ov", "cpu")
    fid = json.loads((ov_bundle / "fidelity.json").read_text())
    passed = {p for p, r in fid["precisions"].items() if r["answer_agreement"] >= fid["min_agreement"]}
    assert set(autotune.candidates(ov_bundle, m, "cpu")) == passed  # the OpenVINO path among them if gated


def test_auto_never_times_int8_static_on_the_cpu(bundle, tmp_path):
    """onnxruntime's CPU kernels run Q/DQ graphs far slower than dynamic int8: not a CPU choice."""
    import shutil

    b = tmp_path / "b"
    shutil.copytree(bundle, b)
    m = load_manifest(b)
    m.precisions["int8-static"] = dict(m.precisions["int8"])
    fid = json.loads((b / "fidelity.json").read_text())
    fid["min_agreement"] = 0.0
    fid["precisions"]["int8-static"] = fid["precisions"]["int8"]
    (b / "fidelity.json").write_text(json.dumps(fid))
    assert "int8-static" not in autotune.candidates(b, m, "cpu")
    assert "int8-static" in autotune.candidates(b, m, "cuda")


def test_a_bundle_without_engines_stays_readable_by_schema_3_runtimes(bundle):
    raw = json.loads((bundle / "manifest.json").read_text())
    assert raw["schema_version"] == 3 and raw["engines"] == {}


def test_the_path_answers_from_the_command_line_without_torch(ov_bundle, synth_data):
    """The torch-free runtime with OpenVINO beside onnxruntime: ``ask --json`` names the engine."""
    import subprocess

    from conftest import edgevqa_cmd

    r = load_split(synth_data, "test")[0]
    args = ["ask", str(r.image_path(synth_data)), r.question, "--model", str(ov_bundle)]
    p = subprocess.run(
        edgevqa_cmd(*args, "--precision", "int8+ov", "--json", block_torch=True),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["precision"] == "int8+ov" and out["engines"] == {"vision_encoder": "openvino-f32"}
    ref = VQAPipeline.from_bundle(ov_bundle, precision="int8+ov").ask(r.image_path(synth_data), r.question)
    assert out["token_ids"] == ref.token_ids


def test_openvino_keeps_its_compiled_graph_in_a_private_cache_and_refuses_a_shared_one(
    ov_bundle, synth_data, tmp_path, monkeypatch
):
    import os
    import stat

    from edgevqa.runtime import optcache

    monkeypatch.setenv("EDGEVQA_CACHE_DIR", str(tmp_path / "cache"))
    r = load_split(synth_data, "test")[0]
    image = r.image_path(synth_data)
    first = VQAPipeline.from_bundle(ov_bundle, precision="int8+ov").ask(image, r.question)
    folders = list((tmp_path / "cache" / "openvino").iterdir())
    assert len(folders) == 1 and any(f.suffix == ".blob" for f in folders[0].iterdir())
    assert stat.S_IMODE(folders[0].stat().st_mode) == 0o700
    again = VQAPipeline.from_bundle(ov_bundle, precision="int8+ov").ask(image, r.question)
    assert again.token_ids == first.token_ids  # started from the cached compiled graph
    # unverified graphs never use it; a folder others can write is not used (OpenVINO would load
    # what it finds there as it is)
    m = load_manifest(ov_bundle)
    assert optcache.openvino_cache_dir(None) is None
    sha = m.files[m.precisions["int8+ov"]["vision_encoder"]]["sha256"]
    assert optcache.openvino_cache_dir(sha) == folders[0]
    os.chmod(folders[0], 0o777)
    assert optcache.openvino_cache_dir(sha) is None
    os.chmod(folders[0], 0o700)
    for f in folders[0].iterdir():  # a corrupt blob: dropped, compiled afresh, same answer
        f.write_bytes(b"not a compiled model")
    assert VQAPipeline.from_bundle(ov_bundle, precision="int8+ov").ask(image, r.question).token_ids == (
        first.token_ids
    )


def test_an_openvino_graph_hands_back_arrays_of_its_own(tmp_path):
    """OpenVinoGraph returns OpenVINO's output copies as they are (no second copy of BLIP's 42 MB
    image keys/values per image): a later run must not change what an earlier one returned, as
    the image cache keeps those arrays."""
    pytest.importorskip("openvino")
    import onnx
    from onnx import TensorProto, helper

    from edgevqa.runtime.openvino import OpenVinoGraph

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["y"])], "double", [x], [y], [two])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "g.onnx")
    g = OpenVinoGraph(tmp_path / "g.onnx", threads=1, hint="f32")
    first_in = np.ones((2, 3), np.float32)
    (first,) = g.run(None, {"x": first_in})
    first_in[:] = 7  # the caller's input changing after the run changes nothing returned
    (second,) = g.run(["y"], {"x": np.full((2, 3), 5, np.float32)})
    assert first.tolist() == [[2.0] * 3] * 2 and second.tolist() == [[10.0] * 3] * 2
    assert first.flags.owndata and first.flags.writeable
