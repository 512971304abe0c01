"""The runtime never needs torch: prove it in processes where importing torch fails."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import BLOCK_TORCH, edgevqa_cmd


def run_py(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + code], capture_output=True, text=True, timeout=120
    )


def test_runtime_imports_without_torch():
    p = run_py(
        "import edgevqa.runtime, edgevqa.bundle, edgevqa.cli, sys\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'torch','transformers','peft'}))"
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[]"


def test_help_imports_nothing_heavy():
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from edgevqa.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'torch','transformers','peft','onnxruntime','onnx','numpy'}))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert "HEAVY []" in p.stdout


def test_ask_answers_without_torch(bundle, synth_data):
    from edgevqa.data.records import load_split

    rec = load_split(synth_data, "test")[0]
    p = subprocess.run(
        edgevqa_cmd(
            "ask",
            str(rec.image_path(synth_data)),
            rec.question,
            "--model",
            str(bundle),
            "--json",
            block_torch=True,
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert isinstance(out["answer"], str) and out["token_ids"]
    assert {"preprocess_ms", "vision_ms", "question_ms", "decode_ms", "total_ms"} <= set(out["timings_ms"])


def test_torch_side_commands_name_the_extra_when_torch_is_missing(tmp_path):
    for args in (
        ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r")],
        ["export", str(tmp_path), "--out", str(tmp_path / "b")],
    ):
        p = subprocess.run(edgevqa_cmd(*args, block_torch=True), capture_output=True, text=True, timeout=60)
        assert p.returncode == 2, p.stderr
        assert "pip install" in p.stderr and "torch==2.13.0" in p.stderr and "Traceback" not in p.stderr
    assert list(tmp_path.iterdir()) == []


def test_dicom_batch_and_serve_modules_import_without_torch():
    p = run_py(
        "import pathlib, sys\n"
        "import edgevqa.runtime.batch, edgevqa.runtime.dicom\n"
        "import edgevqa.serve.app, edgevqa.serve.engine, edgevqa.serve.metrics, edgevqa.serve.middleware\n"
        "import edgevqa.serve.upload\n"
        "import pydicom\n"
        "from edgevqa.runtime.images import load_image\n"
        "img = load_image(pathlib.Path(pydicom.__file__).parent / 'data' / 'test_files' / 'CT_small.dcm')\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'transformers', 'peft'})\n"
        "print(img.size, heavy)"
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "(128, 128) []"
