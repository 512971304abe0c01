"""ask --batch: answers appended as they come, bad lines as error records, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import edgevqa_cmd
from PIL import Image

from edgevqa.errors import InputError
from edgevqa.runtime import VQAPipeline
from edgevqa.runtime.batch import (
    answered_keys,
    parse_line,
    read_questions,
    record_key,
    repair_tail,
    run_batch,
)


def write_lines(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def images(folder: Path, n: int, size: int = 48) -> list[str]:
    folder.mkdir(exist_ok=True)
    names = []
    for i in range(n):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(folder / f"{i}.png")
        names.append(f"{folder.name}/{i}.png")
    return names


@pytest.fixture(scope="module")
def pipe(bundle):
    return VQAPipeline.from_bundle(bundle, precision="fp32")


# ---------------------------------------------------------------- parsing, pure


def test_lines_parse_into_questions_or_errors(tmp_path):
    assert parse_line('{"image": "a.png", "question": "is there a lesion?", "id": 7}', 3).error is None
    assert (
        parse_line("{not json", 4).error
        == "line 4: not JSON (Expecting property name enclosed in double quotes at column 2)"
    )
    assert (
        parse_line('{"question": "what?"}', 5).error == 'line 5: no image path ("image": "path/to/image.png")'
    )
    assert parse_line('{"image": "a.png", "question": "  "}', 6).error == "line 6: the question is empty"
    assert parse_line("[1, 2]", 7).error == "line 7: expected a JSON object, got list"
    assert parse_line('{"image": "a.png", "question": "q", "id": [1]}', 8).error == (
        "line 8: id must be a string or an integer"
    )
    q = write_lines(
        tmp_path / "q.jsonl",
        [
            {"image": "a.png", "question": "q1", "id": "x"},
            "",
            {"image": "b.png", "question": "q2", "id": "x"},
        ],
    )
    first, dup = read_questions(q)
    assert (first.line, first.key, dup.line) == (1, 'id:"x"', 3)
    assert dup.error == "line 3: id 'x' repeats line 1"
    assert record_key(None, 12) == "line:12" and record_key(5, 1) == "id:5"
    with pytest.raises(InputError, match="questions file not found"):
        read_questions(tmp_path / "none.jsonl")


def test_torn_last_line_is_cut_and_only_answers_count(tmp_path):
    out = tmp_path / "a.jsonl"
    good = (
        '{"line": 1, "answer": "yes"}\n{"line": 2, "error": "line 2: bad"}\n'
        '{"line": 3, "id": "c", "answer": "no"}\n'
    )
    out.write_text(good + '{"line": 4, "answ')
    assert repair_tail(out) == len('{"line": 4, "answ')
    assert out.read_text() == good
    assert repair_tail(out) == 0 and repair_tail(tmp_path / "none.jsonl") == 0
    assert answered_keys(out) == {"line:1", 'id:"c"'}


# ---------------------------------------------------------------- with the real pipeline


def test_batch_answers_reports_bad_lines_and_resumes(tmp_path, pipe):
    names = images(tmp_path / "img", 2)
    rows = [
        {"image": names[0], "question": "is there a lesion?", "id": "a"},
        {"image": names[0], "question": "what modality is this?", "id": "b"},
        "{oops",
        {"image": names[1], "question": "is there a lesion?"},
        {"image": "img/missing.png", "question": "is there a lesion?", "id": "m"},
        {"image": names[1], "question": ""},
        {"image": names[1], "question": "how many lesions are there?"},
    ]
    q = write_lines(tmp_path / "q.jsonl", rows)
    out = tmp_path / "out" / "answers.jsonl"
    summary = run_batch(q, out, pipe.ask, progress=False)
    assert (summary.total, summary.answered, summary.skipped, summary.errors) == (7, 4, 0, 3)
    recs = read_records(out)
    assert [r["line"] for r in recs] == [1, 2, 3, 4, 5, 6, 7]
    assert [r.get("id") for r in recs] == ["a", "b", None, None, "m", None, None]
    assert recs[2]["error"].startswith("line 3: not JSON")
    assert recs[4]["error"] == f"line 5: image not found: {tmp_path / 'img' / 'missing.png'}"
    assert recs[5]["error"] == "line 6: the question is empty"
    # consecutive questions about one image reuse its encoding
    answered = [r for r in recs if "answer" in r]
    assert [r["image_cached"] for r in answered] == [False, True, False, True]
    for r in answered:
        expected = pipe.ask(str(tmp_path / r["image"]), r["question"])
        assert (r["answer"], r["token_ids"]) == (expected.text, expected.token_ids)

    # resume: the answered are skipped, the error records retried (and appended again)
    before = out.read_text()
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(tmp_path / "img" / "missing.png")
    again = run_batch(q, out, pipe.ask, progress=False)
    assert (again.answered, again.skipped, again.errors) == (1, 4, 2)
    assert out.read_text().startswith(before)
    added = read_records(out)[len(recs) :]
    assert [(r["line"], "answer" in r) for r in added] == [(3, False), (5, True), (6, False)]


def test_cli_batch_writes_answers_and_a_summary(tmp_path, bundle, pipe):
    names = images(tmp_path / "img", 1)
    q = write_lines(
        tmp_path / "q.jsonl",
        [{"image": names[0], "question": "is there a lesion?", "id": 1}, "not json"],
    )
    out = tmp_path / "a.jsonl"
    cmd = edgevqa_cmd("ask", "--batch", str(q), "--model", str(bundle), "--out", str(out), block_torch=True)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"out": str(out), "total": 2, "answered": 1, "skipped": 0, "errors": 1}
    assert "line 2: not JSON" in p.stderr
    rec = read_records(out)[0]
    assert rec["answer"] == pipe.ask(str(tmp_path / names[0]), "is there a lesion?").text
    p = subprocess.run(
        edgevqa_cmd("ask", "--batch", str(q), "--model", str(bundle)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (
        p.returncode == 2
        and p.stderr.strip() == "error: --batch needs --out FILE (the answers, one JSON line per question)"
    )


def test_killed_batch_loses_nothing_and_resume_completes(tmp_path, bundle, pipe):
    names = images(tmp_path / "img", 40, size=256)
    questions = ["is there a lesion?", "what modality is this?", "which side is the lesion on?"]
    rows = [{"image": names[i // 3], "question": questions[i % 3], "id": f"q{i}"} for i in range(120)]
    q = write_lines(tmp_path / "q.jsonl", rows)
    out = tmp_path / "a.jsonl"
    cmd = edgevqa_cmd("ask", "--batch", str(q), "--model", str(bundle), "--out", str(out), "--threads", "1")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < 10):
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    written = out.read_bytes()
    complete = written[: written.rfind(b"\n") + 1]
    n_before = complete.count(b"\n")
    assert 10 <= n_before < 120, f"kill landed after {n_before} answers; the test needs it mid-way"
    print(f"killed after {n_before} complete answers, torn tail {len(written) - len(complete)} bytes")

    p = subprocess.run([*cmd, "--no-progress"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    final = out.read_bytes()
    assert final.startswith(complete)  # every answer written before the kill is still there, unchanged
    recs = read_records(out)
    assert len(recs) == 120 and sorted(r["id"] for r in recs) == sorted(r["id"] for r in rows)
    summary = json.loads(p.stdout)
    assert summary["skipped"] == n_before and summary["answered"] == 120 - n_before
    for r in recs[n_before - 2 : n_before + 2]:  # around the kill: the same answers as the pipeline's
        assert r["answer"] == pipe.ask(str(tmp_path / r["image"]), r["question"]).text


def test_a_line_that_is_not_valid_text_is_an_error_record_and_the_rest_are_answered(tmp_path, pipe):
    """JSON's "\\ud800" decodes to a lone surrogate: the tokenizer and a UTF-8 write both refuse it."""
    names = images(tmp_path / "img", 1)
    q = tmp_path / "q.jsonl"
    q.write_text(
        json.dumps({"image": names[0], "question": "is there a lesion?\ud800", "id": "bad"})
        + "\n"
        + json.dumps({"image": names[0] + "\udc80", "question": "is there a lesion?"})
        + "\n"
        + json.dumps({"image": names[0], "question": "what modality is this?", "id": "good"})
        + "\n"
    )
    out = tmp_path / "answers.jsonl"
    for _ in range(2):  # and a re-run does not crash at the same line either
        summary = run_batch(q, out, pipe.ask, progress=False)
        assert summary.errors == 2
    recs = read_records(out)
    assert [r.get("error", "").split(":")[0] for r in recs[:3]] == ["line 1", "line 2", ""]
    assert "not valid text" in recs[0]["error"] and recs[2]["answer"]
    with pytest.raises(InputError, match="not valid text"):
        pipe.ask(str(tmp_path / names[0]), "lesion?\ud800")
