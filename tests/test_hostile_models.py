"""Model folders edited by hand or half-copied: refused with one line, never loaded with guesses."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from conftest import edgevqa_cmd

from edgevqa.errors import InputError


def edited(base_run, tmp_path, name, edit):
    folder = tmp_path / name
    shutil.copytree(base_run / "model", folder)
    cfg = folder / "preprocessor_config.json"
    if edit is None:
        cfg.unlink()
    else:
        cfg.write_text(json.dumps(edit(json.loads(cfg.read_text()))))
    return folder


@pytest.mark.parametrize(
    "name, edit, fragment",
    [
        ("no-processor", None, "no preprocessor_config.json"),
        ("odd-resample", lambda c: {**c, "resample": 9}, "resample 9 is not a PIL filter"),
        ("other-size", lambda c: {**c, "size": {"height": 96, "width": 96}}, "resizes to 96x96"),
    ],
)
def test_an_image_processor_that_does_not_fit_the_model_is_refused(base_run, tmp_path, name, edit, fragment):
    from edgevqa.train.models import load_pretrained

    assert load_pretrained(str(base_run / "model")).image.resample == "bicubic"  # the unedited one loads
    with pytest.raises(InputError, match=fragment):
        load_pretrained(str(edited(base_run, tmp_path, name, edit)))


def test_export_of_such_a_folder_is_one_line_and_writes_nothing(base_run, synth_data, tmp_path):
    folder = edited(base_run, tmp_path, "no-processor", None)
    p = subprocess.run(
        edgevqa_cmd("export", str(folder), "--data", str(synth_data), "--out", "b"),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "no preprocessor_config.json" in lines[0], p.stderr
    assert not (tmp_path / "b").exists()
