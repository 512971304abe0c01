"""Every registered family is complete, and the registry is the one switch between families."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import pytest
from conftest import BLOCK_TORCH

from edgevqa.errors import BundleError, InputError
from edgevqa.families import registry

FAMILIES = registry.names()
TRAIN = ("RECIPES", "build_preset", "load_pretrained", "save_model_dir", "encode", "make_batch")
TRAIN += ("generate_answers", "prepare", "teacher_forced_logits", "arch", "answer", "sample_answers")
EXPORT = ("WRAPPERS", "dummy_inputs", "graph_inputs", "manifest_parts")
RUNTIME = ("prompt_ids", "encode_image", "start", "step", "candidate_ids")


def test_the_families_of_the_papers_are_registered():
    assert {"blip-vqa", "paligemma", "qformer"} <= set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_spec_and_runtime_side_import_without_torch(family):
    code = (
        "import sys, edgevqa.families.registry as r\n"
        f"spec = r.get({family!r}); m = r.side({family!r}, 'runtime')\n"
        f"missing = [a for a in {RUNTIME!r} if not hasattr(m.Model, a)]\n"
        "heavy = sorted(x for x in sys.modules if x.split('.')[0] in {'torch', 'transformers', 'peft'})\n"
        "print(missing, heavy, [g.name for g in spec.graphs])"
    )
    p = subprocess.run([sys.executable, "-c", BLOCK_TORCH + code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("[] []"), p.stdout


@pytest.mark.parametrize("family", FAMILIES)
def test_every_side_has_its_members(family):
    spec = registry.get(family)
    train, export = registry.side(family, "train"), registry.side(family, "export")
    assert [a for a in TRAIN if not hasattr(train, a)] == []
    assert [a for a in EXPORT if not hasattr(export, a)] == []
    assert set(export.WRAPPERS) == {g.name for g in spec.graphs}  # a wrapper for every graph
    assert spec.presets and set(spec.presets) <= set(spec.archs)
    assert {g.role for g in spec.graphs} >= {"image", "step", "first"}
    assert "default" in train.RECIPES or "projector" in train.RECIPES
    for g in spec.graphs:  # the decoder graphs stream their weights per token: int4 candidates
        assert g.streams_weights == (g.role in ("step", "first"))


def test_presets_and_archs_name_their_family():
    for family in FAMILIES:
        spec = registry.get(family)
        assert all(registry.family_of_preset(p) == family for p in spec.presets)
        assert all(registry.family_of_arch(a) == family for a in spec.archs)
    with pytest.raises(InputError, match="unknown architecture 'gpt-9'.*blip-vqa-base"):
        registry.family_of_arch("gpt-9")


def test_model_types_choose_the_family_and_others_are_refused(tmp_path):
    assert registry.family_of_model_type("blip", "x") == "blip-vqa"
    assert registry.family_of_model_type("paligemma", "x") == "paligemma"
    assert registry.family_of_model_type("blip-2", "x") == "qformer"
    with pytest.raises(InputError, match="is a 'llama' model; edgevqa loads blip, blip-2, paligemma"):
        registry.family_of_model_type("llama", "some/llama")
    (tmp_path / "pg").mkdir()
    (tmp_path / "pg" / "config.json").write_text(json.dumps({"model_type": "paligemma"}))
    assert registry.family_of_folder(tmp_path / "pg") == "paligemma"
    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "config.json").write_text(json.dumps({"recipe": "default", "family": "paligemma"}))
    (tmp_path / "run" / "model" / "config.json").write_text(json.dumps({"model_type": "paligemma"}))
    assert registry.family_of_folder(tmp_path / "run") == "paligemma"
    (tmp_path / "old").mkdir()  # a run from before families: BLIP
    (tmp_path / "old" / "config.json").write_text(json.dumps({"recipe": "default"}))
    assert registry.family_of_folder(tmp_path / "old") == "blip-vqa"


def test_a_bundle_of_an_unknown_family_is_refused_naming_the_known_ones():
    assert registry.for_bundle("paligemma").family == "paligemma"
    known = "'llava' is not supported by this edgevqa.*blip-vqa, paligemma, qformer"
    with pytest.raises(BundleError, match=known):
        registry.for_bundle("llava")


def test_training_a_base_of_another_type_is_refused(tmp_path):
    from edgevqa.config import TrainConfig
    from edgevqa.train import setup

    folder = tmp_path / "llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(InputError, match="is a 'llama' model"):
        setup.absolute_paths(TrainConfig(base=str(folder), data=str(tmp_path), out=str(tmp_path / "o")))
    with pytest.raises(InputError, match="--recipe dapt does not apply to paligemma"):
        setup.absolute_paths(TrainConfig(recipe="dapt", base="tiny-paligemma", data=".", out="o"))


def test_no_family_switch_outside_the_registry():
    """No `if family == "..."` dispatch and no PaliGemma name outside the families' own modules."""
    import pathlib

    root = pathlib.Path(importlib.import_module("edgevqa").__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if "families/" in rel:
            continue
        text = path.read_text("utf-8")
        if 'family == "' in text or 'family != "' in text or '"paligemma"' in text:
            offenders.append(rel)
    assert offenders == []
