"""Caption -> question rules, each checked by hand, and the dataset they write."""

from __future__ import annotations

import importlib.util
import random
from collections import Counter
from pathlib import Path

import pytest
from data_layouts import png

from edgevqa.data import terms
from edgevqa.data.captions import CaptionRecord, write_captions
from edgevqa.data.qa_from_captions import (
    TEMPLATES,
    finding_qas,
    generate,
    modality_qas,
    questions,
    region_qas,
    side_qas,
)
from edgevqa.data.records import SPLITS, load_split
from edgevqa.errors import InputError


def rng() -> random.Random:
    return random.Random(0)


def answers(qas: list[tuple[str, str, str, str]]) -> list[tuple[str, str, str]]:
    """(answer type, category, answer) of each question: what the rules decide (templates vary)."""
    return [(t, c, a) for t, c, _, a in qas]


def asked(template_key: tuple[str, str], question: str, **slots: str) -> bool:
    return question in {t.format(**slots) for t in TEMPLATES[template_key]}


# ---------------------------------------------------------------------------- terms


@pytest.mark.parametrize(
    ("caption", "modality"),
    [
        ("Axial CT of the chest.", "ct"),
        ("Contrast-enhanced computed tomography of the abdomen.", "ct"),
        ("T2-weighted image of the brain.", "mri"),
        ("MR angiography of the circle of Willis.", "mri"),
        ("Chest radiograph, PA view.", "x-ray"),
        ("Plain X ray of the wrist.", "x-ray"),
        ("Ultrasound, then CT of the liver.", "ultrasound"),  # the first one named wins
        ("PET/CT of the whole body.", "nuclear"),
        ("Digital subtraction angiography (DSA).", "angiography"),
        ("Mr. Smith's chest film.", "x-ray"),  # "Mr." is no MR
        ("An image of us and the liver.", None),  # lower-case "us" is no ultrasound
    ],
)
def test_primary_modality(caption: str, modality: str | None) -> None:
    assert terms.primary_modality(caption) == modality


def test_regions_sides_and_findings() -> None:
    assert terms.regions("CT of the chest and abdomen") == ["chest", "abdomen"]
    assert terms.regions("Femoral head fracture") == []  # "head" is ambiguous, so not a region
    assert terms.side("Left pleural effusion") == "left"
    assert terms.side("Right-sided mass") == "right"
    assert terms.side("left and right hilar nodes") is None
    assert terms.side("dilated left ventricle; catheter left in place") is None
    assert terms.findings("No pneumothorax. Small left pleural effusion.") == {
        "effusion": True,
        "pneumothorax": False,
    }
    assert terms.findings("Fracture was ruled out; however a nodule is seen") == {
        "fracture": False,
        "nodule": True,
    }
    assert terms.findings("no fracture, but a mass in the liver") == {"fracture": False, "mass": True}
    assert terms.findings("mass effect on the ventricles") == {}
    assert terms.findings("A mass and no mass") == {"mass": True}  # asserted once is enough


# ---------------------------------------------------------------------------- rules


def test_modality_rule_asks_open_and_a_yes_no_pair() -> None:
    qas = modality_qas("ct", rng())
    assert answers(qas) == [
        ("open", "modality", "ct"),
        ("closed", "modality", "yes"),
        ("closed", "modality", "no"),
    ]
    assert asked(("closed", "modality"), qas[1][2], am="a ct")
    other = next(m for m in ("an mri", "an x-ray") if asked(("closed", "modality"), qas[2][2], am=m))
    assert other != "a ct"
    assert modality_qas("ultrasound", rng()) == [] and modality_qas(None, rng()) == []


def test_region_rule_needs_exactly_one_region() -> None:
    qas = region_qas("MRI of the brain", rng())
    assert answers(qas) == [
        ("open", "region", "brain"),
        ("closed", "region", "yes"),
        ("closed", "region", "no"),
    ]
    assert asked(("closed", "region"), qas[1][2], r="brain") and not asked(
        ("closed", "region"), qas[2][2], r="brain"
    )
    assert region_qas("CT of the chest and abdomen", rng()) == []
    assert region_qas("Wrist radiograph", rng()) == []


def test_finding_rule_pairs_each_yes_with_a_certain_no() -> None:
    # asserted effusion + negated pneumothorax: the "no" is the negated finding
    qas = finding_qas("No pneumothorax. Small left pleural effusion.", "chest", rng())
    assert answers(qas) == [
        ("closed", "presence", "yes"),
        ("closed", "presence", "no"),
        ("open", "abnormality", "effusion"),
    ]
    assert asked(("closed", "presence"), qas[0][2], af="an effusion")
    assert asked(("closed", "presence"), qas[1][2], af="a pneumothorax")
    # nothing negated: the "no" is a finding that cannot be in a brain (a chest or abdomen one)
    qas = finding_qas("Right frontal mass.", "brain", rng())
    impossible = [f for f, (_, r) in terms.FINDINGS.items() if r in ("chest", "abdomen")]
    assert any(
        asked(("closed", "presence"), qas[1][2], af=a) for f in impossible for a in (f, f"a {f}", f"an {f}")
    )
    # no region known and nothing negated: no safe "no", so no yes/no pair (only the open question)
    assert answers(finding_qas("Fracture of the femur.", None, rng())) == [
        ("open", "abnormality", "fracture")
    ]
    # two findings: two pairs, no open "what abnormality" (it would have two answers)
    two = finding_qas("CT chest: a nodule and an effusion.", "chest", rng())
    assert [a for _, c, _, a in two] == ["yes", "no", "yes", "no"]


def test_side_rule_needs_one_side_and_a_finding() -> None:
    qas = side_qas("Left pleural effusion.", rng())
    assert answers(qas) == [("open", "side", "left"), ("closed", "side", "yes"), ("closed", "side", "no")]
    assert asked(("closed", "side"), qas[1][2], s="left", f="effusion")
    assert asked(("closed", "side"), qas[2][2], s="right", f="effusion")
    assert side_qas("Left knee, normal.", rng()) == []  # no finding to be on a side
    assert side_qas("Bilateral effusions, left more than right.", rng()) == []


def test_questions_are_deterministic_and_balanced() -> None:
    caps = [
        CaptionRecord(
            "images/a.png", "Axial CT of the chest: left pleural effusion, no pneumothorax.", "ct", "a"
        ),
        CaptionRecord("images/b.png", "T2-weighted MRI of the brain with a right frontal mass.", "mri", "b"),
        CaptionRecord("images/c.png", "Chest X-ray.", "x-ray", "c"),
        CaptionRecord("images/d.png", "Image of the right femur showing a fracture.", "x-ray", "d"),
    ]
    recs = [q for c in caps for q in questions(c, seed=1)]
    assert recs == [q for c in caps for q in questions(c, seed=1)]
    assert recs != [q for c in caps for q in questions(c, seed=2)]
    closed = Counter((r.category, r.answer) for r in recs if r.answer_type == "closed")
    for cat in ("modality", "region", "presence", "side"):
        assert closed[(cat, "yes")] == closed[(cat, "no")] > 0, cat
    first = recs[0]
    assert (first.image, first.id, first.meta["caption_id"]) == ("images/a.png", "a-q0", "a")


# ---------------------------------------------------------------------------- dataset


def test_generate_writes_a_vqa_dataset_with_the_caption_images(tmp_path: Path) -> None:
    src = tmp_path / "captions"
    (src / "images").mkdir(parents=True)
    for i, split in enumerate(SPLITS):
        (src / "images" / f"{i}.png").write_bytes(png(i))
        cap = CaptionRecord(f"images/{i}.png", "MRI of the brain: right frontal mass.", "mri", f"c{i}")
        write_captions(src, split, [cap])
    summary = generate(src, tmp_path / "qa", seed=0)
    for i, split in enumerate(SPLITS):
        recs = load_split(tmp_path / "qa", split)
        assert len(recs) == summary["splits"][split]["records"] == 12  # 3 modality, region, presence, side
        assert (tmp_path / "qa" / recs[0].image).read_bytes() == png(i)
    assert summary["closed_answers"]["train"] == {"no": 4, "yes": 4}
    with pytest.raises(InputError, match="--overwrite"):
        generate(src, tmp_path / "qa")
    with pytest.raises(InputError, match="no captions in"):
        generate(tmp_path / "qa", tmp_path / "qa2")


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="pyarrow is not installed")
def test_rocov2_to_questions_end_to_end(tmp_path: Path) -> None:
    from data_layouts import rocov2

    from edgevqa.data.loaders import convert

    convert(rocov2(tmp_path / "src"), tmp_path / "captions")
    generate(tmp_path / "captions", tmp_path / "qa")
    test = load_split(tmp_path / "qa", "test")  # "Contrast-enhanced CT of the abdomen: a mass in the liver."
    assert [(r.category, r.answer) for r in test if r.answer_type == "open"] == [
        ("modality", "ct"),
        ("region", "abdomen"),
        ("abnormality", "mass"),
    ]
