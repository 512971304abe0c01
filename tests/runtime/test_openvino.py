"""--backend openvino: OpenVINO compiling the bundle's ONNX graphs, behind the runtime's seam."""

from __future__ import annotations

import pytest

from edgevqa.data.records import load_split
from edgevqa.runtime import VQAPipeline

pytest.importorskip("openvino")


def test_at_f32_openvino_answers_as_onnxruntime_does(bundle, synth_data, monkeypatch):
    monkeypatch.setenv("EDGEVQA_OPENVINO_PRECISION", "f32")
    ov = VQAPipeline.from_bundle(bundle, precision="fp32", backend="openvino")
    ort = VQAPipeline.from_bundle(bundle, precision="fp32", backend="cpu")
    assert ov.backend == "openvino" and {g.precision for g in ov.sessions.values()} == {"f32"}
    for r in load_split(synth_data, "test")[:6]:
        image = r.image_path(synth_data)
        assert ov.ask(image, r.question).token_ids == ort.ask(image, r.question).token_ids
    # a follow-up reuses the image's encoding, as on onnxruntime
    assert ov.ask(image, "is there a lesion?").image_cached


def test_openvino_is_opt_in_and_its_precision_setting_is_checked(bundle, monkeypatch):
    from edgevqa.errors import InputError

    assert VQAPipeline.from_bundle(bundle, precision="fp32").backend == "cpu"  # auto never picks it
    monkeypatch.setenv("EDGEVQA_OPENVINO_PRECISION", "fp64")
    with pytest.raises(InputError, match="must be f32, bf16 or f16"):
        VQAPipeline.from_bundle(bundle, precision="fp32", backend="openvino")
