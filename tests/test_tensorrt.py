"""TensorRT paths that need no GPU: profiles, flags, the split decoder, backend choice, refusals.

The end-to-end engine tests at the bottom are marked `gpu` and `trt`: they run only where a CUDA
GPU and the tensorrt package exist (`pytest -m "gpu and trt"`), never on CI here.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import edgevqa_cmd, ruining

from edgevqa.errors import BundleError, InputError
from edgevqa.export import tensorrt as trt_export
from edgevqa.families import registry as specs
from edgevqa.runtime import backends
from edgevqa.runtime.backends import Gpu, Machine

SPEC = specs.get("blip-vqa")
CPU_ONLY = Machine(("CPUExecutionProvider",), None, None)
H200 = Gpu("NVIDIA H200", "9.0")
GPU_BOX = Machine(
    ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"), "10.13.0", H200
)
BUILT_HERE = {"gpu": "NVIDIA H200", "compute_capability": "9.0", "tensorrt": "10.13.0"}

# fixed sizes as read from a tiny model's graphs: 2 layers, 4 heads, head_dim 8, 17 image tokens
CACHE = {0: 2, 2: 4, 4: 8}
FIXED = {
    "pixel_values": {1: 3, 2: 64, 3: 64},
    "image_key": {**CACHE, 3: 17},
    "image_value": {**CACHE, 3: 17},
    "past_key": CACHE,
    "past_value": CACHE,
    "cross_key": CACHE,
    "cross_value": CACHE,
}
LIMITS = trt_export.Limits(max_batch=4, max_question=32, max_answer=8)


def test_profiles_cover_every_input_with_hand_checked_shapes():
    p = {g.name: trt_export.profile(g, FIXED, LIMITS).shapes for g in SPEC.exported(tensorrt=True)}
    assert set(p) == {"vision_encoder", "question_encoder", "decoder_step", "decoder_first"}
    assert p["vision_encoder"]["pixel_values"] == ((1, 3, 64, 64), (1, 3, 64, 64), (4, 3, 64, 64))
    assert p["question_encoder"]["input_ids"] == ((1, 1), (1, 16), (4, 32))
    assert p["question_encoder"]["image_key"] == ((2, 1, 4, 17, 8), (2, 1, 4, 17, 8), (2, 4, 4, 17, 8))
    # with-past decoder: past 1 .. max_answer-1, one new token; never a zero-length past
    assert p["decoder_step"]["past_key"] == ((2, 1, 4, 1, 8), (2, 1, 4, 4, 8), (2, 4, 4, 7, 8))
    assert p["decoder_step"]["input_ids"] == ((1, 1), (1, 1), (4, 9))
    assert p["decoder_step"]["cross_key"] == ((2, 1, 4, 1, 8), (2, 1, 4, 16, 8), (2, 4, 4, 32, 8))
    assert set(p["decoder_first"]) == {"input_ids", "cross_key", "cross_value"}  # no cache in
    for shapes in p.values():
        for lo, mid, hi in shapes.values():
            assert all(a <= b <= c for a, b, c in zip(lo, mid, hi))


def test_profile_refuses_an_axis_it_cannot_size():
    with pytest.raises(ValueError, match="neither symbolic nor fixed"):
        trt_export.profile(SPEC.graph("decoder_step"), {**FIXED, "past_key": {0: 2}}, LIMITS)
    with pytest.raises(KeyError, match="no TensorRT profile rule"):
        LIMITS.axis("frames")


def test_builder_flags_per_precision():
    assert trt_export.builder_flags("trt-fp16") == ["FP16", "PREFER_PRECISION_CONSTRAINTS"]
    assert trt_export.builder_flags("trt-int8") == ["INT8", "FP16"]  # explicit Q/DQ, rest fp16
    assert trt_export.SOURCES == {"trt-fp16": "fp32", "trt-int8": "int8-static"}
    with pytest.raises(InputError, match="TensorRT precision"):
        trt_export.builder_flags("fp16")


def test_layers_are_traced_to_their_onnx_nodes_by_the_parsers_names():
    nodes = {"/text_decoder/cls/predictions/transform/dense/MatMul", "/a/MatMul"}
    assert trt_export.from_node("/a/MatMul", nodes)
    assert trt_export.from_node("/a/MatMul_12", nodes)  # a further layer of the same node
    assert not trt_export.from_node("/a/MatMul_x", nodes)
    assert not trt_export.from_node("/a/MatMul2", nodes)
    assert not trt_export.from_node("/b/MatMul", nodes)


class _FakeTrt:
    """What pin_fp32 uses of the tensorrt module: layer types and data types."""

    class LayerType:
        NORMALIZATION, SOFTMAX, REDUCE, MATRIX_MULTIPLY, SHUFFLE = range(5)

    float32, float16, int64 = "float32", "float16", "int64"


class _Layer:
    def __init__(self, name, kind, dtype):
        self.name, self.type, self.precision, self.num_outputs = name, kind, None, 1
        self.dtype, self.output_types = dtype, {}

    def get_output(self, i):
        return type("Out", (), {"dtype": self.dtype})()

    def set_output_type(self, i, t):
        self.output_types[i] = t


def test_fp16_engines_pin_fragile_layers_and_the_kept_nodes_to_fp32():
    T = _FakeTrt.LayerType
    layers = [
        _Layer("/ln/LayerNormalization", T.NORMALIZATION, "float16"),
        _Layer("/attn/Softmax", T.SOFTMAX, "float32"),
        _Layer("/shape/ReduceProd", T.REDUCE, "int64"),  # a shape computation: left alone
        _Layer("/dense/MatMul", T.MATRIX_MULTIPLY, "float16"),  # kept by the fallback
        _Layer("/dense/MatMul_3", T.SHUFFLE, "float16"),  # another layer of the same node
        _Layer("/other/MatMul", T.MATRIX_MULTIPLY, "float16"),
    ]
    network = type("Net", (), {"num_layers": len(layers), "get_layer": lambda self, i: layers[i]})()
    trt_export.pin_fp32(_FakeTrt, network, ["/dense/MatMul"])
    pinned = [la.name for la in layers if la.precision == "float32"]
    assert pinned == ["/ln/LayerNormalization", "/attn/Softmax", "/dense/MatMul", "/dense/MatMul_3"]
    assert all(la.output_types == {0: "float32"} for la in layers if la.name in pinned)
    assert layers[2].precision is None and layers[5].precision is None


TARGET = "transform.dense"  # the LM head's transform: in decoder_step and decoder_first


def _engines_as_onnx(monkeypatch, make_engine) -> list:
    """No GPU here: an "engine" is an ONNX graph under the .plan name, written by
    ``make_engine(onnx_path, engine_path, keep_fp32)`` and run by onnxruntime; the machine looks
    like the GPU box the engines were built for. Returns the builds, in order."""
    import onnxruntime as ort

    from edgevqa.runtime import trt as runtime_trt

    builds = []

    def build_engine(onnx_path, engine_path, profile, precision, timing_cache=None, keep_fp32=(), **kw):
        builds.append((engine_path.stem, sorted(keep_fp32)))
        return make_engine(onnx_path, engine_path, keep_fp32)

    monkeypatch.setattr(trt_export, "build_engine", build_engine)
    monkeypatch.setattr(trt_export, "device_info", lambda: BUILT_HERE)
    monkeypatch.setattr(backends, "probe", lambda: GPU_BOX)
    monkeypatch.setattr(
        runtime_trt,
        "TrtGraph",
        lambda path: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]),
    )
    return builds


def _check_engine_fallback(out: Path, p: str, builds: list, stand_in: str) -> None:
    from edgevqa.bundle import load_manifest

    fid = json.loads((out / "fidelity.json").read_text())
    rep = fid["precisions"][p]
    fb = rep["fallback"]
    assert float(fb["reason"].split()[2]) < 0.95  # the engines did fail first
    kept = {(e["graph"], e["node"]) for e in fb["kept_fp32"]}
    assert {e["scope"] for e in fb["kept_fp32"]} == {TARGET}
    assert {g for g, _ in kept} == {"decoder_step", "decoder_first"}
    assert stand_in in fb["measure"]
    assert rep["answer_agreement"] >= 0.95 and fid["passed"]
    last = dict(builds)  # each graph's last build is what shipped
    if p == "trt-fp16":  # pinned layers; int8 engines keep nodes through their Q/DQ graph instead
        assert {(g, n) for g, nodes in last.items() for n in nodes} == kept
    m = load_manifest(out)  # sealed: every file matches its sha256
    assert p in m.precisions
    assert not [f for f in out.rglob("*") if ".fallback" in str(f)]  # no scratch left in the bundle


def test_a_failing_fp16_engine_is_rebuilt_with_its_sensitive_matmuls_pinned(lora_run, tmp_path, monkeypatch):
    """The fake TensorRT ruins the LM head's transform in fp16; the real export must find the
    layer on the CPU stand-ins (fp16 ONNX graphs), rebuild the engines with it pinned to fp32,
    and ship a bundle that passes the gate."""
    from edgevqa.config import ExportConfig
    from edgevqa.export import exporter
    from edgevqa.export.quantize import convert_fp16

    ruin = ruining(convert_fp16, TARGET)
    builds = _engines_as_onnx(monkeypatch, ruin)
    monkeypatch.setitem(exporter.QUANTIZERS, "fp16", ruin)  # the stand-in sees what the engine does
    out = tmp_path / "bundle"
    cfg = ExportConfig(
        run=str(lora_run), out=str(out), precisions=["fp32"], trt=True, validate_limit=30, min_agreement=0.95
    )
    exporter.export(cfg, progress=False)
    _check_engine_fallback(out, "trt-fp16", builds, "fp16 ONNX graphs")


def test_a_failing_int8_engine_is_rebuilt_from_a_qdq_graph_that_keeps_them(lora_run, tmp_path, monkeypatch):
    """The same for int8 engines: kept nodes are left unquantized in the Q/DQ graph the engine
    is rebuilt from. The int8-static ONNX precision fails too, and ships through its own fallback."""
    import shutil

    from edgevqa.config import ExportConfig
    from edgevqa.export import calibrate, exporter

    calibrated = calibrate.static_int8  # the real calibrated Q/DQ quantizer, ruining TARGET
    monkeypatch.setattr(
        calibrate, "static_int8", lambda feeds, method: ruining(calibrated(feeds, method), TARGET)
    )

    def engine_from(onnx_path, engine_path, keep_fp32):
        assert not keep_fp32  # int8 engines are never pinned
        shutil.copyfile(onnx_path, engine_path)
        return engine_path

    builds = _engines_as_onnx(monkeypatch, engine_from)
    out = tmp_path / "bundle"
    cfg = ExportConfig(
        run=str(lora_run),
        out=str(out),
        precisions=["fp32", "int8-static"],
        trt=True,
        validate_limit=30,
        min_agreement=0.95,
    )
    exporter.export(cfg, progress=False)
    _check_engine_fallback(out, "trt-int8", builds, "int8-static Q/DQ graphs")
    fid = json.loads((out / "fidelity.json").read_text())
    assert {e["scope"] for e in fid["precisions"]["int8-static"]["fallback"]["kept_fp32"]} == {TARGET}


def test_trt_precisions_follow_the_precision_option():
    from edgevqa.config import ExportConfig

    assert ExportConfig(run="r", out="o").trt_precisions == []
    assert ExportConfig(run="r", out="o", trt=True).trt_precisions == ["trt-fp16"]
    both = ExportConfig(run="r", out="o", precisions=["int8-static", "fp16"], trt=True)
    assert both.trt_precisions == ["trt-int8", "trt-fp16"]  # int8 from the calibrated Q/DQ graphs


def test_fixed_dims_are_read_from_the_graph(bundle):
    fixed = trt_export.fixed_dims(bundle / "fp32" / "vision_encoder.onnx")
    m = json.loads((bundle / "manifest.json").read_text())
    assert fixed["pixel_values"] == {1: 3, 2: m["image"]["height"], 3: m["image"]["width"]}
    q = trt_export.fixed_dims(bundle / "fp32" / "question_encoder.onnx")
    d = m["decoder"]
    assert {0: d["num_layers"], 2: d["num_heads"], 4: d["head_dim"]}.items() <= q["image_key"].items()
    assert 3 in q["image_key"]  # image tokens: fixed by the image size
    assert q["input_ids"] == {}  # batch and question length are symbolic


# --- backend choice ---------------------------------------------------------------------------


def test_auto_picks_the_best_backend_the_machine_offers():
    assert backends.select("auto", CPU_ONLY, has_engines=True) == "cpu"
    assert backends.select("auto", GPU_BOX, has_engines=False) == "tensorrt"
    assert backends.select("auto", GPU_BOX, has_engines=True) == "trt-engine"
    cuda_only = Machine(("CUDAExecutionProvider", "CPUExecutionProvider"), None, H200)
    assert backends.select("auto", cuda_only, has_engines=True) == "cuda"


def test_unavailable_backends_are_refused_with_what_they_need():
    with pytest.raises(InputError, match="backend cuda needs onnxruntime-gpu.*available here: cpu"):
        backends.select("cuda", CPU_ONLY, has_engines=False)
    with pytest.raises(InputError, match="unknown backend 'gpu'"):
        backends.select("gpu", CPU_ONLY, has_engines=False)
    with pytest.raises(BundleError, match="no TensorRT engines"):
        backends.select("trt-engine", GPU_BOX, has_engines=False)


def test_this_machine_is_probed_as_it_is():
    import onnxruntime as ort

    m = backends.probe()
    assert m.ort_providers == tuple(ort.get_available_providers())
    assert m.offers("cpu")


def test_engines_for_another_gpu_or_version_are_refused():
    assert backends.engine_mismatch(BUILT_HERE, GPU_BOX) is None
    other = Machine(GPU_BOX.ort_providers, "10.13.0", Gpu("NVIDIA L4", "8.9"))
    why = backends.engine_mismatch(BUILT_HERE, other)
    assert "gpu 'NVIDIA H200' (here: 'NVIDIA L4')" in why and "compute_capability '9.0'" in why
    newer = Machine(GPU_BOX.ort_providers, "10.14.1", H200)
    assert "tensorrt '10.13.0' (here: '10.14.1')" in backends.engine_mismatch(BUILT_HERE, newer)
    assert "need TensorRT" in backends.engine_mismatch(BUILT_HERE, CPU_ONLY)


def test_tensorrt_provider_options_cache_engines():
    provs = backends.providers("tensorrt", cache_dir=None, fp16=True)
    assert provs[0] == ("TensorrtExecutionProvider", {"trt_fp16_enable": True})
    assert provs[1:] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    name, opts = backends.providers("tensorrt", cache_dir=__import__("pathlib").Path("/c"))[0]
    assert opts["trt_engine_cache_enable"] and opts["trt_engine_cache_path"] == "/c"
    with pytest.raises(InputError):
        backends.providers("trt-engine")


def test_the_tensorrt_provider_keeps_its_engines_outside_the_sealed_bundle(bundle, tmp_path, monkeypatch):
    """--backend tensorrt: onnxruntime's TensorRT provider writes the engines it builds to the
    machine-local cache (keyed by the verified graph's sha256), never into the bundle, whose
    manifest lists every file."""
    from edgevqa.bundle import load_manifest
    from edgevqa.runtime import pipeline

    seen, real = [], backends.providers

    def providers(backend, cache_dir=None, fp16=False):  # no TensorRT here: record, then run on CPU
        seen.append((backend, cache_dir))
        return real("cpu")

    monkeypatch.setattr(backends, "providers", providers)
    monkeypatch.setenv("EDGEVQA_CACHE_DIR", str(tmp_path / "cache"))
    before = sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*"))
    m = load_manifest(bundle, verify=True)
    pipeline._load_graph(bundle, m, "fp32", "vision_encoder", "tensorrt", 1, verify=True)
    (backend, where), sha = seen[-1], m.files[m.precisions["fp32"]["vision_encoder"]]["sha256"]
    assert backend == "tensorrt" and where == tmp_path / "cache" / "tensorrt-ep" / sha[:32]
    assert where.is_dir() and bundle.resolve() not in where.resolve().parents
    assert sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*")) == before


def test_choose_runs_engines_only_where_they_were_built(bundle, monkeypatch):
    from edgevqa.bundle import load_manifest
    from edgevqa.runtime.pipeline import choose

    m = load_manifest(bundle, verify=False)
    assert choose(m, None, "auto", CPU_ONLY) == ("fp32", "cpu")
    m.precisions["trt-fp16"] = {g: f"trt-fp16/{g}.plan" for g in m.precisions["fp32"]}
    m.trt["trt-fp16"] = {"built_for": BUILT_HERE, "source": "fp32", "profiles": {}}
    assert choose(m, None, "auto", GPU_BOX) == ("trt-fp16", "trt-engine")
    assert choose(m, None, "auto", CPU_ONLY) == ("fp32", "cpu")  # engines unusable: ONNX on CPU
    with pytest.raises(BundleError, match="built for another machine"):
        choose(m, "trt-fp16", "auto", Machine(GPU_BOX.ort_providers, "10.13.0", Gpu("NVIDIA L4", "8.9")))
    with pytest.raises(InputError, match="--backend trt-engine"):
        choose(m, "trt-fp16", "cpu", GPU_BOX)
    with pytest.raises(InputError, match="trt-engine runs only"):
        choose(m, "int8", "trt-engine", GPU_BOX)


# --- what a user sees here -----------------------------------------------------------------------


def test_export_trt_without_tensorrt_is_one_line_and_writes_nothing(lora_run, tmp_path):
    out = tmp_path / "bundle"
    p = subprocess.run(
        edgevqa_cmd("export", str(lora_run), "--out", str(out), "--trt"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "pip install tensorrt" in lines[0]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_ask_with_a_backend_this_machine_lacks_is_one_line(bundle, tmp_path):
    from PIL import Image

    img = tmp_path / "x.png"
    Image.new("L", (32, 32)).save(img)
    p = subprocess.run(
        edgevqa_cmd("ask", str(img), "is there a lesion?", "--model", str(bundle), "--backend", "cuda"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 and p.stderr.strip().startswith("error: backend cuda needs"), p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


# --- the split decoder, run on the CPU -----------------------------------------------------------


@pytest.fixture(scope="module")
def split_bundle(tmp_path_factory, base_run):
    """A bundle laid out for TensorRT (decoder_first beside decoder_step), fp32 only."""
    from edgevqa import atomic
    from edgevqa.export.exporter import make_manifest, seal, write_graphs
    from edgevqa.train import models

    loaded = models.load_pretrained(str(base_run))
    out = tmp_path_factory.mktemp("split") / "bundle"
    with atomic.directory(out) as tmp:
        write_graphs(loaded.model, SPEC, tmp, ["fp32"], tensorrt=True)
        loaded.tokenizer.backend_tokenizer.save(str(tmp / "tokenizer.json"))
        seal(tmp, make_manifest(loaded, SPEC, ["fp32"], 32, 8, {}, True))
    return out


def test_first_step_graph_answers_like_the_single_decoder(split_bundle, synth_data):
    from edgevqa.data.records import load_split
    from edgevqa.runtime import VQAPipeline

    split = VQAPipeline.from_bundle(split_bundle)
    assert set(split.sessions) == {"vision_encoder", "question_encoder", "decoder_step", "decoder_first"}
    single = VQAPipeline.from_bundle(split_bundle)
    del single.sessions["decoder_first"]  # the ONNX way: decoder_step with an empty cache
    enc = split.encode_image(load_split(synth_data, "val")[0].image_path(synth_data))
    ids = split.question_ids("is there a lesion?")
    _, state = split.model.start(enc.arrays, ids)
    first = np.array([[split.manifest.text.bos_id, 7, 9]])
    (la, a), (lb, b) = split.model.step(first, state), single.model.step(first, state)
    for x, y in ((la, lb), (a.past_key, b.past_key), (a.past_value, b.past_value)):
        assert x.shape == y.shape and np.abs(x - y).max() < 1e-5
    for r in load_split(synth_data, "val")[:20]:
        path = r.image_path(synth_data)
        assert split.ask(path, r.question).token_ids == single.ask(path, r.question).token_ids
        ranked = split.rank(path, r.question)
        assert ranked.scores == pytest.approx(single.rank(path, r.question).scores, abs=1e-4)


# --- on a GPU with TensorRT only ---------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.trt
def test_trt_engines_answer_like_pytorch(lora_run, tmp_path):
    """Builds trt-fp16 engines, validates them against PyTorch (the gate) and answers with them."""
    from edgevqa.config import ExportConfig
    from edgevqa.export import export
    from edgevqa.runtime import VQAPipeline

    out = export(ExportConfig(run=str(lora_run), out=str(tmp_path / "b"), trt=True), progress=False)
    fid = json.loads((out / "fidelity.json").read_text())
    assert fid["precisions"]["trt-fp16"]["answer_agreement"] >= 0.99
    pipe = VQAPipeline.from_bundle(out, backend="auto")
    assert pipe.backend == "trt-engine" and pipe.precision == "trt-fp16"
