"""The demo's whole loop in its short form (slow: run with `pytest -m slow`)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_demo_fast_runs_the_whole_loop(tmp_path):
    from edgevqa import demo
    from edgevqa.runtime.backends import probe

    text = demo.run(tmp_path / "demo", fast=True)
    report = json.loads((tmp_path / "demo" / "report" / "report.json").read_text())
    ov = {"onnx-int4+ov"} if probe().offers("openvino") else set()  # OpenVINO's vision graph
    assert set(report["backends"]) == {"torch-fp32", "onnx-fp32", "onnx-int8", "onnx-int4", *ov}
    assert report["backends"]["onnx-fp32"]["agreement"] == 1.0
    assert "onnx-int8" in text and "majority baseline" in text
    # a second run reuses every finished step
    assert demo.run(tmp_path / "demo", fast=True)
