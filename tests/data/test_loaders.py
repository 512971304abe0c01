"""Dataset loaders on tiny copies of each public layout: records, splits by image, skipped rows."""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import shutil
import sys
from pathlib import Path

import pytest
from data_layouts import medpix, pmc_vqa, png, rocov2, slake, unsplit_parquet, vqa_rad

from edgevqa.data.captions import load_captions
from edgevqa.data.loaders import Loaded, convert, describe, detect_format, load_dataset
from edgevqa.data.records import SPLITS, load_split
from edgevqa.data.sources.common import LoadOptions
from edgevqa.errors import InputError, MissingDependencyError

# The parquet layouts (VQA-RAD, ROCOv2, MedPix) need pyarrow, part of the dev and datasets extras.
parquet = pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="pyarrow is not installed")

RAD_TRAIN = "data/train-00000-of-00001-0a1b2c.parquet"


def hashes(loaded: Loaded) -> dict[str, set[str]]:
    return {s: {r.meta["image_sha256"] for r in rs} for s, rs in loaded.splits.items()}


def assert_disjoint(loaded: Loaded) -> None:
    h = hashes(loaded)
    for a, b in itertools.combinations(SPLITS, 2):
        assert not h[a] & h[b], (a, b)


@pytest.fixture(scope="module")
def rad(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return vqa_rad(tmp_path_factory.mktemp("vqa-rad"))


# ---------------------------------------------------------------------------- VQA-RAD


@parquet
def test_vqa_rad_official_test_is_kept_and_repeated_images_never_cross_splits(rad: Path) -> None:
    loaded = load_dataset(rad)
    assert loaded.format == "vqa-rad" and loaded.kind == "vqa"
    test = loaded.splits["test"]
    assert [(r.question, r.answer, r.answer_type) for r in test] == [
        ("is the heart enlarged?", "no", "closed"),
        ("is there a fracture?", "yes", "closed"),
        ("what modality?", "ct", "open"),
    ]
    # image 1 is in train rows 1-2 and in test: those train rows go; image 2's two rows stay together
    assert_disjoint(loaded)
    img1, img2 = hashlib.sha256(png(1)).hexdigest(), hashlib.sha256(png(2)).hexdigest()
    assert img1 in hashes(loaded)["test"]
    assert sum(img2 in h for h in hashes(loaded).values()) == 1
    train_val = loaded.splits["train"] + loaded.splits["val"]
    assert len(train_val) == 11 and len({r.image for r in train_val}) == 10
    assert len({r.image for r in loaded.splits["val"]}) == 1  # 1/8 of the 10 train images, rounded
    assert {r.answer for r in train_val if r.meta["image_sha256"] == img2} == {"no", "left lung"}


@parquet
def test_vqa_rad_malformed_rows_are_reported_with_file_and_row(rad: Path) -> None:
    loaded = load_dataset(rad)
    assert [str(s) for s in loaded.skipped[:2]] == [
        f"{RAD_TRAIN} row 6: empty answer",
        f"{RAD_TRAIN} row 7: missing image",
    ]
    assert str(loaded.skipped[2]).startswith(
        f"{RAD_TRAIN} row 8: unreadable image: it is not an image PIL can read"
    )
    assert [str(s) for s in loaded.skipped[3:]] == [
        f"{RAD_TRAIN} row 1: its image is also in the test split",
        f"{RAD_TRAIN} row 2: its image is also in the test split",
    ]
    assert "skipped 5 rows: " + f"{RAD_TRAIN} row 6: empty answer;" in describe(loaded)


@parquet
def test_records_are_normalised_and_typed(rad: Path) -> None:
    recs = {r.question + r.answer: r for s in SPLITS for r in load_dataset(rad).splits[s]}
    r = recs["where is it?left lung"]  # "Left  Lung" in the file
    assert (r.answer_type, r.category) == ("open", "general")
    assert recs["is there a fracture?yes"].answer_type == "closed"  # "Yes" in the file
    assert r.image == f"images/{r.meta['image_sha256'][:16]}.png"


@parquet
def test_splits_are_deterministic_per_seed(rad: Path) -> None:
    a, b = load_dataset(rad, opts=LoadOptions(seed=3)), load_dataset(rad, opts=LoadOptions(seed=3))
    assert a.splits == b.splits


@parquet
def test_a_lone_train_split_is_split_70_10_20_by_image_and_stratified(tmp_path: Path) -> None:
    loaded = load_dataset(unsplit_parquet(tmp_path, n_images=20))
    images = {s: len({r.image for r in rs}) for s, rs in loaded.splits.items()}
    assert images == {"train": 14, "val": 2, "test": 4}
    assert {s: len(rs) for s, rs in loaded.splits.items()} == {"train": 28, "val": 4, "test": 8}
    assert_disjoint(loaded)
    for s in ("val", "test"):  # yes and no both reach the small splits
        assert {r.answer for r in loaded.splits[s] if r.answer_type == "closed"} == {"yes", "no"}


# ---------------------------------------------------------------------------- SLAKE


@pytest.mark.parametrize("zipped", [False, True], ids=["imgs-folder", "imgs-zip"])
def test_slake_english_by_default_with_categories(tmp_path: Path, zipped: bool) -> None:
    loaded = load_dataset(slake(tmp_path, zipped=zipped))
    assert loaded.format == "slake"
    got = {s: [(r.id, r.answer, r.group) for r in rs] for s, rs in loaded.splits.items()}
    assert got == {
        "train": [("slake-1", "yes", "closed/organ"), ("slake-3", "left lung", "open/abnormality"),
                  ("slake-5", "ct", "open/modality")],
        "val": [("slake-7", "right", "open/position")],
        "test": [("slake-8", "no", "closed/abnormality")],
    }  # fmt: skip
    assert loaded.splits["train"][0].meta["location"] == "Lung"
    assert loaded.filtered == {"q_lang 'zh', not English (--all-languages keeps it)": 2}
    assert [str(s) for s in loaded.skipped] == [
        "train.json row 4: missing image",
        "train.json row 6: answer_type 'MAYBE' is not CLOSED or OPEN",
    ]
    assert_disjoint(loaded)


def test_slake_all_languages_keeps_chinese(tmp_path: Path) -> None:
    loaded = load_dataset(slake(tmp_path), opts=LoadOptions(all_languages=True))
    assert [r.id for r in loaded.splits["train"]] == ["slake-1", "slake-2", "slake-3", "slake-5"]
    assert [r.answer for r in loaded.splits["test"]] == ["no", "否"]
    assert loaded.filtered == {}


def test_slake_without_images_is_one_clear_error(tmp_path: Path) -> None:
    shutil.rmtree(slake(tmp_path) / "imgs")
    with pytest.raises(InputError, match="SLAKE images not found"):
        load_dataset(tmp_path)


# ---------------------------------------------------------------------------- PMC-VQA


def test_pmc_vqa_misspelled_columns_and_choice_prefixes(tmp_path: Path) -> None:
    loaded = load_dataset(pmc_vqa(tmp_path))
    assert loaded.format == "pmc-vqa"
    train = loaded.splits["train"] + loaded.splits["val"]  # 3 images: too few to carve a val image
    assert loaded.splits["val"] == []
    assert [(r.answer, r.meta["answer_label"]) for r in train] == [
        ("ct scan", "A"),
        ("mri", "B"),
        ("ultrasound", "D"),
    ]
    r = train[0]
    assert (r.answer_type, r.category, r.question) == (
        "open",
        "multiple-choice",
        "What imaging technique was used?",
    )
    assert r.meta["choices"] == ["CT scan", "MRI", "X-ray", "Ultrasound"]
    assert [(r.answer, r.meta["answer_label"]) for r in loaded.splits["test"]] == [("x-ray", "C")]
    assert [str(s) for s in loaded.skipped] == [
        "train.csv row 3: Answer_label 'E' names no choice",
        "train.csv row 5: missing image",
    ]


def test_pmc_vqa_without_the_expected_columns(tmp_path: Path) -> None:
    pmc_vqa(tmp_path)
    (tmp_path / "train.csv").write_text("Figure_path,Question,Answer\nPMC1_F1.jpg,What?,CT\n")
    with pytest.raises(InputError, match=r"train.csv: expected the PMC-VQA columns"):
        load_dataset(tmp_path)


# ---------------------------------------------------------------------------- ROCOv2


@parquet
def test_rocov2_modality_and_caption_length_filters(tmp_path: Path) -> None:
    loaded = load_dataset(rocov2(tmp_path))
    assert (loaded.format, loaded.kind) == ("rocov2", "captions")
    got = [(r.id.removeprefix("ROCOv2_2023_"), r.modality) for s in SPLITS for r in loaded.splits[s]]
    # train_000001 CT; _000004 exactly 64 words; _000006 no modality word: its CUI says plain x-ray
    assert got == [
        ("train_000001", "ct"),
        ("train_000004", "ct"),
        ("train_000006", "x-ray"),
        ("train_000008", "mri"),
        ("valid_000001", "x-ray"),
        ("test_000001", "ct"),
    ]
    assert [(r.modality, r.caption) for r in loaded.splits["test"]] == [
        ("ct", "Contrast-enhanced CT of the abdomen: a mass in the liver.")
    ]
    assert loaded.filtered == {  # 000002 ultrasound before CT, 000003 PET-CT; 000005 is 65 words
        "primary modality is not CT, MRI or X-ray": 2,
        "caption longer than 64 words": 1,
    }
    assert [str(s) for s in loaded.skipped] == ["data/train-00000-of-00001.parquet row 7: empty caption"]
    longer = load_dataset(tmp_path, opts=LoadOptions(max_caption_words=65))
    assert longer.filtered == {"primary modality is not CT, MRI or X-ray": 2}
    assert len(longer.splits["train"]) == 5


@parquet
def test_rocov2_convert_writes_caption_records_and_images(tmp_path: Path) -> None:
    loaded = convert(rocov2(tmp_path / "src"), tmp_path / "out")
    for s in SPLITS:
        assert load_captions(tmp_path / "out", s) == loaded.splits[s]
        for r in loaded.splits[s]:
            assert (
                hashlib.sha256(r.image_path(tmp_path / "out").read_bytes()).hexdigest()
                == r.meta["image_sha256"]
            )
    assert detect_format(tmp_path / "out") == "edgevqa-captions"


# ---------------------------------------------------------------------------- MedPix


@parquet
def test_medpix_capitalised_split_names(tmp_path: Path) -> None:
    loaded = load_dataset(medpix(tmp_path))
    assert loaded.format == "medpix"
    got = {
        s: [(r.answer, r.answer_type, r.meta["image_id"], r.meta["mode"]) for r in rs]
        for s, rs in loaded.splits.items()
    }
    assert got == {
        "train": [("yes", "closed", "MPX1", "CT"), ("kidney", "open", "MPX2", "CT")],
        "val": [("no", "closed", "MPX3", "CT")],
        "test": [("left", "open", "MPX4", "CT")],
    }


# ---------------------------------------------------------------------------- convert and own layout


@parquet
def test_convert_writes_a_dataset_train_can_read(rad: Path, tmp_path: Path) -> None:
    out = tmp_path / "rad"
    loaded = convert(rad, out)
    for s in SPLITS:
        assert load_split(out, s) == loaded.splits[s]
    used = {r.image for rs in loaded.splits.values() for r in rs}
    assert sorted(f"images/{p.name}" for p in (out / "images").iterdir()) == sorted(used)  # each image once
    assert len(used) == 13
    info = json.loads((out / "dataset.json").read_text())
    assert info["format"] == "vqa-rad" and info["options"]["seed"] == 0
    assert info["splits"]["test"] == {"records": 3, "images": 3} and len(info["skipped"]) == 5

    again = load_dataset(out)  # our own layout reads back as is
    assert again.format == "edgevqa" and again.splits == loaded.splits
    (out / sorted(used)[0]).unlink()
    assert "not found" in str(load_dataset(out).skipped[0])
    with pytest.raises(InputError, match="already in edgevqa's own layout"):
        convert(out, tmp_path / "again")


@parquet
def test_convert_refuses_a_non_empty_folder_and_leaves_it_alone(rad: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="--overwrite"):
        convert(rad, tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep.txt"]


@parquet
def test_detection_and_format_errors(tmp_path: Path, rad: Path) -> None:
    with pytest.raises(InputError, match="not a dataset layout edgevqa knows"):
        load_dataset(tmp_path)
    with pytest.raises(InputError, match="unknown format 'vqarad'; did you mean vqa-rad"):
        load_dataset(rad, fmt="vqarad")
    with pytest.raises(InputError, match="neither a folder nor a Hugging Face id"):
        load_dataset(str(tmp_path / "missing" / "deeper" / "x"))


# ---------------------------------------------------------------------------- the hub


@parquet
def test_hub_ids_download_then_read_like_a_folder(monkeypatch: pytest.MonkeyPatch, rad: Path) -> None:
    hub = pytest.importorskip("huggingface_hub")
    calls = []
    monkeypatch.setattr(hub, "snapshot_download", lambda **kw: calls.append(kw) or str(rad))
    loaded = load_dataset("flaviagiammarino/vqa-rad")
    assert calls == [{"repo_id": "flaviagiammarino/vqa-rad", "repo_type": "dataset"}]
    assert (loaded.format, loaded.source, len(loaded.splits["test"])) == (
        "vqa-rad",
        "flaviagiammarino/vqa-rad",
        3,
    )


def test_hub_offline_missing_and_not_installed_are_one_line_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = pytest.importorskip("huggingface_hub")
    from huggingface_hub.utils import LocalEntryNotFoundError, RepositoryNotFoundError

    def raises(exc: Exception):
        def f(**kw):
            raise exc

        return f

    monkeypatch.setattr(hub, "snapshot_download", raises(LocalEntryNotFoundError("offline")))
    with pytest.raises(
        InputError, match=r"cannot download BoKelvin/SLAKE: the Hugging Face Hub is unreachable"
    ):
        load_dataset("BoKelvin/SLAKE")
    monkeypatch.setattr(
        hub, "snapshot_download", raises(RepositoryNotFoundError.__new__(RepositoryNotFoundError))
    )
    with pytest.raises(InputError, match="nor a dataset on the Hugging Face Hub"):
        load_dataset("nobody/nothing")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(MissingDependencyError, match="pip install huggingface_hub"):
        load_dataset("BoKelvin/SLAKE")
