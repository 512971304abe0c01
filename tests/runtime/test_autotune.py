"""--precision auto: the gated precision that answers fastest here, measured once and cached."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
from conftest import edgevqa_cmd
from PIL import Image

from edgevqa.bundle import load_manifest
from edgevqa.runtime import VQAPipeline, autotune


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEVQA_CACHE_DIR", str(tmp_path / "cache" / "ort"))
    return tmp_path / "cache" / "ort" / "auto"


def fake_times(monkeypatch, ms: dict[str, float]) -> list[str]:
    timed = []

    def timer(pipe, image, repeats=autotune.REPEATS):
        timed.append(pipe.precision)
        return ms[pipe.precision]

    monkeypatch.setattr(autotune, "time_answer", timer)
    return timed


def test_auto_picks_the_fastest_measured_and_remembers_it(bundle, cache, monkeypatch):
    timed = fake_times(monkeypatch, {"fp32": 9.0, "int8": 4.0})
    pipe = VQAPipeline.from_bundle(bundle, precision="auto")
    assert pipe.precision == "int8" and timed == ["fp32", "int8"]
    assert pipe.auto["measured_ms"] == {"fp32": 9.0, "int8": 4.0} and not pipe.auto["cached"]
    [kept] = cache.glob("*.json")
    assert json.loads(kept.read_text())["precision"] == "int8"
    again = VQAPipeline.from_bundle(bundle, precision="auto")
    assert again.precision == "int8" and again.auto["cached"] and timed == ["fp32", "int8"]  # not re-measured
    fake_times(monkeypatch, {"fp32": 3.0, "int8": 4.0})
    other = VQAPipeline.from_bundle(bundle, precision="auto", threads=1)  # another key: measured again
    assert other.precision == "fp32" and not other.auto["cached"]


def test_only_gated_cpu_precisions_are_candidates(bundle, tmp_path):
    m = load_manifest(bundle)
    fid = json.loads((bundle / "fidelity.json").read_text())
    fid["precisions"]["int8"]["answer_agreement"] = fid["min_agreement"] - 0.01  # shipped with --force
    (tmp_path / "fidelity.json").write_text(json.dumps(fid))
    assert autotune.candidates(tmp_path, m, "cpu") == ["fp32"]
    m.precisions["fp16"] = dict(m.precisions["fp32"])
    fid["precisions"]["fp16"] = fid["precisions"]["fp32"]
    (tmp_path / "fidelity.json").write_text(json.dumps(fid))
    assert "fp16" not in autotune.candidates(tmp_path, m, "cpu")
    assert "fp16" in autotune.candidates(tmp_path, m, "cuda")


def test_the_measurement_times_whole_answers_with_the_vision_graph(bundle):
    pipe = VQAPipeline.from_bundle(bundle, precision="fp32")
    image = Image.fromarray(np.zeros((32, 32), np.uint8))
    calls = []
    real = pipe._encode

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    pipe._encode = counting
    assert autotune.time_answer(pipe, image, repeats=3) > 0
    assert len(calls) == 4  # the warm-up and every timed answer encode the image


def test_ask_json_reports_the_choice(bundle, tmp_path):
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "x.png")
    env = {**os.environ, "EDGEVQA_CACHE_DIR": str(tmp_path / "ort")}
    p = subprocess.run(
        edgevqa_cmd("ask", "x.png", "is there a lesion?", "--model", str(bundle), "--json"),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert p.returncode == 0, p.stderr
    row = json.loads(p.stdout)
    assert row["precision"] == row["precision_auto"]["precision"]
    assert set(row["precision_auto"]["measured_ms"]) <= {"fp32", "int8"}
