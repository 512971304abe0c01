"""Bundle origin: an Ed25519 signature over the manifest, required where the workstation holds
trusted public keys (EDGEVQA_TRUSTED_KEYS), and refused when it does not verify."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from conftest import edgevqa_cmd
from PIL import Image

from edgevqa import signing
from edgevqa.errors import BundleError, InputError
from edgevqa.runtime import VQAPipeline

pytest.importorskip("cryptography")


@pytest.fixture()
def signed(bundle, tmp_path):
    keys = tmp_path / "keys"
    private, public = signing.new_keys(keys)
    b = tmp_path / "bundle"
    shutil.copytree(bundle, b, copy_function=os.link)
    signing.sign(b, private)
    return b, private, public


def test_keys_are_made_once_and_the_private_one_is_the_owners(tmp_path):
    private, public = signing.new_keys(tmp_path / "k")
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    assert public.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    with pytest.raises(InputError, match="already holds a signing key"):
        signing.new_keys(tmp_path / "k")


def test_a_signed_bundle_loads_where_its_key_is_trusted(signed, monkeypatch):
    b, _, public = signed
    monkeypatch.setenv("EDGEVQA_TRUSTED_KEYS", str(public.parent))
    assert VQAPipeline.from_bundle(b, precision="fp32").precision == "fp32"
    assert signing.check(b, signing.trusted_keys()) == json.loads((b / "manifest.sig").read_text())["key_id"]


def test_unsigned_edited_or_foreign_bundles_are_refused_where_keys_are_trusted(
    signed, bundle, tmp_path, monkeypatch
):
    b, _, public = signed
    monkeypatch.setenv("EDGEVQA_TRUSTED_KEYS", str(public))
    with pytest.raises(BundleError, match="is not signed"):
        VQAPipeline.from_bundle(bundle)  # the unsigned original
    m = json.loads((b / "manifest.json").read_text())
    m["source"]["note"] = "edited after signing"
    (b / "manifest.json").unlink()  # hard-linked: replace, do not write through
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="not signed by a trusted key"):
        VQAPipeline.from_bundle(b)
    other, _ = signing.new_keys(tmp_path / "other")
    (b / "manifest.json").unlink()
    shutil.copy(bundle / "manifest.json", b / "manifest.json")
    signing.sign(b, other)
    with pytest.raises(BundleError, match="not signed by a trusted key"):
        VQAPipeline.from_bundle(b)
    monkeypatch.delenv("EDGEVQA_TRUSTED_KEYS")
    assert VQAPipeline.from_bundle(bundle)  # without trusted keys, nothing is required


def test_a_tampered_bundle_is_not_signed(signed, tmp_path):
    b, private, _ = signed
    graph = b / "fp32" / "vision_encoder.onnx"
    data = graph.read_bytes()
    graph.unlink()
    graph.write_bytes(data + b"\0")
    with pytest.raises(BundleError, match="sha256"):
        signing.sign(b, private)


def test_the_cli_signs_verifies_and_refuses_in_one_line(signed, bundle, tmp_path):
    b, private, public = signed
    ok = subprocess.run(
        edgevqa_cmd("verify", str(b), "--key", str(public)), capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0 and "signed by trusted key" in ok.stdout, ok.stderr
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "x.png")
    env = {**os.environ, "EDGEVQA_TRUSTED_KEYS": str(public)}
    p = subprocess.run(
        edgevqa_cmd("ask", "x.png", "is there a lesion?", "--model", str(bundle)),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "is not signed" in lines[0], p.stderr
    answered = subprocess.run(
        edgevqa_cmd("ask", "x.png", "is there a lesion?", "--model", str(b)),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert answered.returncode == 0 and answered.stdout.strip(), answered.stderr
