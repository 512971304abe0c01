"""The bundle contract: manifest round trip and refusal of missing, malformed or tampered bundles."""

from __future__ import annotations

import json
import shutil

import pytest

from edgevqa.bundle import SCHEMA_VERSION, load_manifest
from edgevqa.errors import BundleError


def test_manifest_describes_the_bundle(bundle):
    m = load_manifest(bundle)
    # no OpenVINO path in it: written as schema 3, which earlier runtimes read (SCHEMA_VERSION with one)
    assert m.schema_version == 3 < SCHEMA_VERSION and m.family == "blip-vqa" and not m.engines
    assert set(m.precisions) == {"fp32", "int8"} and m.default_precision == "fp32"
    assert set(m.graphs) == {"vision_encoder", "question_encoder", "decoder_step"}
    assert m.graphs["decoder_step"].inputs == (
        "input_ids",
        "past_key",
        "past_value",
        "cross_key",
        "cross_value",
    )
    assert {"tokenizer.json", "fidelity.json", "fp32/vision_encoder.onnx", "int8/decoder_step.onnx"} <= set(
        m.files
    )
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in m.files.values())
    assert m.image.height == 64 and m.image.resample == "bicubic"
    assert m.text.bos_id != m.text.sep_id and m.text.max_answer_tokens == 8
    assert {"torch", "transformers", "onnxruntime", "edgevqa"} <= set(m.versions)


def _copy(bundle, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(bundle, dst)
    return dst


def test_tampered_graph_is_refused(bundle, tmp_path):
    b = _copy(bundle, tmp_path)
    f = b / "int8" / "decoder_step.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        load_manifest(b)
    load_manifest(b, precision="fp32")  # only the precision that is loaded must be intact


def test_missing_file_malformed_and_other_schema(bundle, tmp_path):
    b = _copy(bundle, tmp_path)
    (b / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match="missing"):
        load_manifest(b)
    m = json.loads((b / "manifest.json").read_text())
    (b / "manifest.json").write_text(json.dumps({**m, "schema_version": 99}))
    with pytest.raises(BundleError, match="schema_version"):
        load_manifest(b)
    (b / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_manifest(b)
    with pytest.raises(BundleError, match="not found"):
        load_manifest(tmp_path / "nope")
    with pytest.raises(BundleError, match="no manifest.json"):
        load_manifest(tmp_path)
    with pytest.raises(BundleError, match="precision"):
        load_manifest(bundle, precision="fp16")
