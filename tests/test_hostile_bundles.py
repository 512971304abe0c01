"""Bundles edited by hand or by an attacker, generated here from the test bundle: every one is
refused with one BundleError line before anything runs, and nothing outside the bundle is read."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from conftest import edgevqa_cmd
from PIL import Image

from edgevqa.errors import BundleError
from edgevqa.runtime import VQAPipeline


def copy_of(bundle, dst):
    """The bundle hard-linked (cheap), with a manifest of its own to edit."""
    shutil.copytree(bundle, dst, copy_function=os.link)
    manifest = json.loads((dst / "manifest.json").read_text())
    (dst / "manifest.json").unlink()
    return manifest


def with_manifest(bundle, dst, edit):
    m = copy_of(bundle, dst)
    edit(m)
    (dst / "manifest.json").write_text(json.dumps(m))
    return dst


def setter(*keys_and_value):
    *keys, value = keys_and_value

    def edit(m):
        for k in keys[:-1]:
            m = m[k]
        m[keys[-1]] = value

    return edit


EDITS = {
    "size as text": (setter("image", "height", "64"), "image size"),
    "size unlike the graph": (
        setter("image", "height", 96),
        "pixel_values has size 64 on axis 2, the manifest says 96",
    ),
    "layers unlike the graph": (setter("decoder", "num_layers", 3), "past_key has size 2 on axis 0"),
    "vocabulary unlike the graph": (setter("decoder", "vocab_size", 100), "logits has size 173"),
    "bos out of range": (setter("text", "bos_id", 10**9), "text.bos_id 1000000000 is not a token id"),
    "negative eos": (setter("text", "eos_ids", [-1]), "text.eos_ids -1 is not a token id"),
    "no answer tokens": (setter("text", "max_answer_tokens", 0), "max_answer_tokens"),
    "two means": (setter("image", "mean", [0.5, 0.5]), "image.mean and image.std"),
    "zero std": (setter("image", "std", [0, 1, 1]), "image.mean and image.std"),
    "unknown resample": (setter("image", "resample", "sinc"), "image.resample 'sinc'"),
    "text not an object": (setter("text", "x"), "malformed"),
    "unknown default precision": (setter("default_precision", "fp64"), "default_precision 'fp64'"),
    "precision not a mapping": (setter("precisions", "fp32", "x"), "precisions.fp32"),
    "size not a number": (setter("files", "tokenizer.json", "bytes", "big"), "files.tokenizer.json"),
    "graph path up and out": (
        setter("precisions", "fp32", "vision_encoder", "../other/vision_encoder.onnx"),
        "outside the bundle",
    ),
    "absolute graph path": (
        setter("precisions", "fp32", "vision_encoder", "/etc/passwd"),
        "outside the bundle",
    ),
    "unknown family": (setter("family", "llama"), "family 'llama' is not supported"),
    "other schema": (setter("schema_version", 99), "schema_version 99"),
    "unknown graph engine": (
        setter("engines", {"fp32": {"vision_encoder": "my-engine"}}),
        "engines.fp32: unknown engine",
    ),
    "engine for an unknown precision": (
        setter("engines", {"int9": {"vision_encoder": "openvino-f32"}}),
        "engines.int9 must map graphs",
    ),
    "engines not an object": (setter("engines", ["openvino-f32"]), "engines must map"),
}


@pytest.mark.parametrize("case", sorted(EDITS))
def test_an_edited_manifest_is_one_bundle_error(bundle, tmp_path, case):
    edit, fragment = EDITS[case]
    edited = with_manifest(bundle, tmp_path / "b", edit)
    for verify in (True, False):  # also when a caller skips the hashes
        with pytest.raises(BundleError, match=None) as e:
            VQAPipeline.from_bundle(edited, precision="fp32", verify=verify)
        assert fragment in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_graph_that_is_a_link_out_of_the_bundle_is_refused(bundle, tmp_path):
    """Same bytes, same sha256: only where it lives is wrong."""
    outside = tmp_path / "elsewhere.onnx"
    shutil.copy(bundle / "fp32" / "vision_encoder.onnx", outside)
    b = with_manifest(bundle, tmp_path / "b", lambda m: None)
    (b / "fp32" / "vision_encoder.onnx").unlink()
    (b / "fp32" / "vision_encoder.onnx").symlink_to(outside)
    with pytest.raises(BundleError, match="a link that leads outside the bundle"):
        VQAPipeline.from_bundle(b, precision="fp32")


def test_a_manifest_nested_absurdly_deep_is_refused(bundle, tmp_path):
    copy_of(bundle, tmp_path / "b")
    (tmp_path / "b" / "manifest.json").write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(BundleError, match="nested too deeply"):
        VQAPipeline.from_bundle(tmp_path / "b")


def test_the_cli_refuses_an_escaping_manifest_in_one_line(bundle, tmp_path):
    b = with_manifest(bundle, tmp_path / "b", setter("precisions", "fp32", "vision_encoder", "../../x.onnx"))
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "x.png")
    p = subprocess.run(
        edgevqa_cmd("ask", "x.png", "is there a lesion?", "--model", str(b), "--precision", "fp32"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "outside the bundle" in lines[0], p.stderr
