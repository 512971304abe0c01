"""`edgevqa data inspect | convert | qa-from-captions | mix`, run in-process through the real entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_layouts import png, slake

from edgevqa.cli import main
from edgevqa.data.captions import CaptionRecord, write_captions
from edgevqa.data.records import SPLITS, load_split


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(result: tuple[int, str, str], fragment: str) -> None:
    code, _, err = result
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result
    assert fragment in lines[0], lines[0]


def test_data_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "data", "--help")
    assert code == 0
    for cmd in ("synth", "inspect", "convert", "qa-from-captions", "mix"):
        assert cmd in out


def test_inspect_prints_counts_filtered_and_skipped_rows(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, _ = run(capsys, "data", "inspect", str(slake(tmp_path)))
    assert code == 0
    assert out.splitlines() == [
        f"{tmp_path}: slake (vqa)",
        "",
        "split  records  images  closed  open",
        "train        3       2       1     2",
        "val          1       1       0     1",
        "test         1       1       1     0",
        "total        5       4       2     3",
        "",
        "answer_type/category  train  val  test  total",
        "closed/abnormality        0    0     1      1",
        "closed/organ              1    0     0      1",
        "open/abnormality          1    0     0      1",
        "open/modality             1    0     0      1",
        "open/position             0    1     0      1",
        "",
        "filtered 2 rows: q_lang 'zh', not English (--all-languages keeps it): 2",
        "",
        "skipped 2 rows: train.json row 4: missing image; "
        "train.json row 6: answer_type 'MAYBE' is not CLOSED or OPEN",
    ]
    code, out, _ = run(capsys, "data", "inspect", str(tmp_path), "--all-languages", "--format", "slake")
    assert code == 0 and "total        7" in out


def test_convert_then_mix(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(
        capsys, "data", "convert", str(slake(tmp_path / "src")), "--out", str(tmp_path / "slake")
    )
    assert (
        code == 0
        and out.splitlines()[-1] == f"next: edgevqa train --data {tmp_path / 'slake'} --out runs/slake"
    )
    assert [len(load_split(tmp_path / "slake", s)) for s in SPLITS] == [3, 1, 1]
    assert run(capsys, "data", "synth", "--out", str(tmp_path / "synth"), "--n", "10")[0] == 0
    code, out, _ = run(
        capsys,
        "data",
        "mix",
        f"{tmp_path / 'slake'}:0.5",
        f"{tmp_path / 'synth'}:0.5",
        "--out",
        str(tmp_path / "m"),
    )
    assert code == 0
    assert json.loads(out)["splits"]["train"] == {"records": 6, "by_source": {"slake": 3, "synth": 3}}


def test_qa_from_captions(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "caps" / "images").mkdir(parents=True)
    (tmp_path / "caps" / "images" / "a.png").write_bytes(png(7))
    cap = CaptionRecord("images/a.png", "Chest X-ray: right pneumothorax.", "x-ray", "a")
    for s in SPLITS:
        write_captions(tmp_path / "caps", s, [cap] if s == "train" else [])
    code, out, _ = run(
        capsys, "data", "qa-from-captions", str(tmp_path / "caps"), "--out", str(tmp_path / "qa")
    )
    assert code == 0
    assert json.loads(out.splitlines()[0])["splits"]["train"] == {"captions": 1, "records": 12, "images": 1}


def test_user_errors_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    slake(tmp_path / "s")
    assert_user_error(run(capsys, "data", "inspect", str(tmp_path / "nope")), "not found")
    assert_user_error(
        run(capsys, "data", "inspect", str(tmp_path / "s"), "--format", "slak"), "did you mean slake"
    )
    assert_user_error(run(capsys, "data", "inspect", str(tmp_path)), "not a dataset layout")
    (tmp_path / "b").mkdir()
    mix_args = ("data", "mix", f"{tmp_path / 's'}:0.5", f"{tmp_path / 'b'}:0.4", "--out", str(tmp_path / "m"))
    assert_user_error(run(capsys, *mix_args), "ratios must sum to 1, got 0.9")
    assert_user_error(
        run(capsys, "data", "mix", f"{tmp_path / 's'}=1", "--out", str(tmp_path / "m")), "DIR:RATIO"
    )
    assert_user_error(
        run(capsys, "data", "qa-from-captions", str(tmp_path / "s"), "--out", str(tmp_path / "q")),
        "no captions",
    )
    assert not (tmp_path / "m").exists() and not (tmp_path / "q").exists()
