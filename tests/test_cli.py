"""What a user sees: help, and one clear line + exit code 2 for every bad input, nothing written."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from conftest import edgevqa_cmd
from PIL import Image


def ask(tmp_path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        edgevqa_cmd("ask", *args), capture_output=True, text=True, timeout=120, cwd=tmp_path
    )


def assert_user_error(p: subprocess.CompletedProcess, *fragments: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert "Traceback" not in p.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", 0)
        + b"IEND"
        + struct.pack(">I", zlib.crc32(b"IEND"))
    )


@pytest.fixture()
def good_image(tmp_path):
    p = tmp_path / "ok.png"
    Image.fromarray(np.full((40, 40), 120, np.uint8)).save(p)
    return p


def test_help_lists_commands():
    p = subprocess.run(edgevqa_cmd("--help"), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0
    for cmd in ("train", "compose", "export", "ask", "bench", "demo", "data", "--debug"):
        assert cmd in p.stdout


def test_output_off_a_terminal_has_no_progress_bars(tmp_path):
    """Scripted runs (stderr a pipe or a file) get edgevqa's lines, not tqdm's redraws."""
    p = subprocess.run(
        edgevqa_cmd("data", "synth", "--out", str(tmp_path / "d"), "--n", "12"),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "synth images" not in p.stderr and "it/s" not in p.stderr and "img/s" not in p.stderr
    assert (tmp_path / "d" / "train.jsonl").is_file()


def test_library_warnings_stay_off_stderr_unless_debug(tmp_path):
    script = (
        "import sys, warnings\n"
        "from edgevqa.cli.base import app\n"
        "from edgevqa.cli.main import main\n"
        "app.command('noisy')(lambda: warnings.warn('a library speaks', UserWarning))\n"
        "main(sys.argv[1:])\n"
    )
    for args, shown in ((["noisy"], False), (["noisy", "--debug"], True)):
        p = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert ("a library speaks" in p.stderr) is shown


def test_bad_images(tmp_path, bundle):
    (tmp_path / "notes.txt").write_text("not an image")
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buf, format="PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (tmp_path / "bomb.png").write_bytes(png_header_only(100_000, 100_000))
    (tmp_path / "adir").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    cases = {
        "missing.png": "not found",
        "adir": "directory",
        "notes.txt": "not an image",
        "cut.png": "truncated",
        "bomb.png": "limit",
    }
    for name, fragment in cases.items():
        assert_user_error(ask(tmp_path, name, "is there a lesion?", "--model", str(bundle)), fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_bad_questions_and_bundles(tmp_path, bundle, good_image):
    assert_user_error(ask(tmp_path, str(good_image), "", "--model", str(bundle)), "question is empty")
    assert_user_error(ask(tmp_path, str(good_image), "   \t", "--model", str(bundle)), "question is empty")
    assert_user_error(ask(tmp_path, str(good_image), "what?", "--model", str(tmp_path / "none")), "not found")
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    for graph in tampered.glob("*/vision_encoder.onnx"):  # whichever precision auto picks
        with open(graph, "ab") as f:
            f.write(b"\0")
    assert_user_error(ask(tmp_path, str(good_image), "what?", "--model", str(tampered)), "sha256")
    for p in ("fp32", "int8"):
        assert_user_error(
            ask(tmp_path, str(good_image), "what?", "--model", str(tampered), "--precision", p), "sha256"
        )
    assert_user_error(
        ask(tmp_path, str(good_image), "what?", "--model", str(bundle), "--precision", "fp16"), "fp16"
    )


def test_odd_but_valid_images_are_answered(tmp_path, bundle):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 65535, (50, 70), dtype=np.uint16)).save(tmp_path / "g16.png")
    Image.fromarray(rng.integers(0, 255, (30, 30, 4), dtype=np.uint8), "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)).convert("P").save(tmp_path / "pal.png")
    Image.fromarray(rng.integers(0, 255, (30, 30, 4), dtype=np.uint8), "CMYK").save(tmp_path / "cmyk.jpg")
    Image.new("L", (1, 1), 200).save(tmp_path / "one.png")
    for name in ("g16.png", "rgba.png", "pal.png", "cmyk.jpg", "one.png"):
        p = ask(tmp_path, name, "is there a lesion?", "--model", str(bundle))
        assert p.returncode == 0, (name, p.stderr)
        assert p.stdout.strip() != "" or p.returncode == 0


def test_missing_argument_is_one_line():
    p = subprocess.run(edgevqa_cmd("ask"), capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.strip().startswith("error:") and "Traceback" not in p.stderr


def test_train_rejects_lora_on_random_preset(tmp_path, synth_data):
    p = subprocess.run(
        edgevqa_cmd("train", "--data", str(synth_data), "--out", str(tmp_path / "r"), "--lora"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_user_error(p, "--lora")
    assert not (tmp_path / "r" / "model").exists()


def test_several_questions_and_rank_mode(tmp_path, bundle, good_image):
    p = ask(
        tmp_path,
        str(good_image),
        "is there a lesion?",
        "-q",
        "what modality is this?",
        "--model",
        str(bundle),
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("is there a lesion?\t")
    p = ask(tmp_path, str(good_image), "is there a lesion?", "--rank", "--json", "--model", str(bundle))
    assert p.returncode == 0, p.stderr
    row = json.loads(p.stdout)
    assert set(row["scores"]) == {"yes", "no"} and row["answer"] in ("yes", "no")
    assert_user_error(ask(tmp_path, str(good_image), "--model", str(bundle)), "no question")
    assert_user_error(
        ask(tmp_path, str(good_image), "ok?", "-q", " ", "--model", str(bundle)), "question is empty"
    )


def test_what_the_machine_refuses_is_one_line(tmp_path, monkeypatch, capsys):
    """A full disk (or a read-only folder) is the user's to fix: one line and exit 2, not a traceback."""
    import errno

    from edgevqa.cli import main
    from edgevqa.data import synth

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "data" / "x.png"))

    monkeypatch.setattr(synth, "generate", full)
    with pytest.raises(SystemExit) as e:
        main(["data", "synth", "--out", str(tmp_path / "data")])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: No space left on device: {tmp_path / 'data' / 'x.png'}"


def test_an_export_step_keeps_the_type_of_what_failed_in_it(caplog):
    """A user's error in a step is its own one line (no "step failed" log line before it); a bug
    keeps its type and gets the step's line, to say where it happened."""
    from edgevqa.errors import BundleError
    from edgevqa.export.exporter import log, step

    log.addHandler(caplog.handler)  # (main() elsewhere in the session stops edgevqa's propagation)
    with pytest.raises(BundleError, match="^broken$"), step("quantize"):
        raise BundleError("broken")
    assert not [r for r in caplog.records if "quantize" in r.getMessage()]
    with pytest.raises(KeyError), step("quantize"):
        raise KeyError("bug")
    log.removeHandler(caplog.handler)
    assert {r.getMessage().split(" failed")[0] for r in caplog.records} == {"export step 'quantize'"}


@pytest.mark.parametrize("command", ["train", "export"])
def test_a_hub_id_without_a_reachable_hub_fails_at_once_naming_the_local_folder_way(
    tmp_path, synth_data, command
):
    """No hub: the local cache alone is read, no retries (they took ~50 s: the bound below is for
    a hang, not a speed), and the line names the way that works offline."""
    import time

    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_HUB_OFFLINE", None)
    args = {
        "train": ("train", "--base", "someone/some-vlm", "--data", str(synth_data), "--out", "run"),
        "export": ("export", "someone/some-vlm", "--data", str(synth_data), "--out", "run"),
    }[command]
    t0 = time.monotonic()
    p = subprocess.run(edgevqa_cmd(*args), capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert time.monotonic() - t0 < 40
    assert_user_error(p, "cannot read 'someone/some-vlm': it is not in the local cache", "--local-dir DIR")
    assert not (tmp_path / "run").exists()
