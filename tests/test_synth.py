"""The synthetic dataset: deterministic, split by image and stratified, self-consistent, atomic."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tokenizers.pre_tokenizers import BertPreTokenizer

from edgevqa.data import synth
from edgevqa.data.records import SPLITS, VQARecord, load_split
from edgevqa.data.synth import MODALITIES, REGIONS, SynthConfig, generate, render_image, vocabulary
from edgevqa.errors import InputError

SMALL = SynthConfig(n_images=40, image_size=48, seed=3)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    # Big enough for split proportions to mean something (30 test images), small enough to take ~1 s.
    root = tmp_path_factory.mktemp("synth") / "data"
    summary = generate(root, SynthConfig(n_images=300, image_size=64, seed=0), progress=False)
    return root, summary


@pytest.fixture(scope="module")
def records(dataset: tuple[Path, dict]) -> dict[str, list[VQARecord]]:
    return {s: load_split(dataset[0], s) for s in SPLITS}


# ---------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_files_and_another_seed_does_not(tmp_path: Path) -> None:
    generate(tmp_path / "a", SMALL, progress=False)
    generate(tmp_path / "b", SMALL, progress=False)
    generate(tmp_path / "c", SynthConfig(n_images=40, image_size=48, seed=4), progress=False)
    a, b, c = (_files(tmp_path / d) for d in "abc")
    assert a == b
    assert len(a) == 40 + 4  # images + 3 splits + dataset.json
    assert a["train.jsonl"] != c["train.jsonl"]
    assert sum(a[k] != c[k] for k in a if k.startswith("images/")) > 30


# ---------------------------------------------------------------------------- layout and splits


def test_layout_and_summary(dataset: tuple[Path, dict]) -> None:
    root, summary = dataset
    assert json.loads((root / "dataset.json").read_text()) == summary
    assert summary["generator_version"] == synth.GENERATOR_VERSION
    assert summary["config"]["n_images"] == 300
    assert summary["counts"]["images"] == {"train": 240, "val": 30, "test": 30}
    assert len(list((root / "images").glob("*.png"))) == 300
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_split_sizes_and_no_image_in_two_splits(dataset: tuple[Path, dict], records: dict) -> None:
    _, summary = dataset
    images = {s: {r.image for r in records[s]} for s in SPLITS}
    assert {s: len(images[s]) for s in SPLITS} == summary["counts"]["images"]
    assert {s: len(records[s]) for s in SPLITS} == summary["counts"]["questions"]
    assert not images["train"] & images["val"]
    assert not images["train"] & images["test"]
    assert not images["val"] & images["test"]
    ids = [r.id for s in SPLITS for r in records[s]]
    assert len(ids) == len(set(ids)) == 300 * SynthConfig().questions_per_image


def test_splits_are_stratified(records: dict) -> None:
    def mix(recs: list[VQARecord]) -> dict[str, float]:
        n = Counter(f"{r.answer_type}/{r.category}" for r in recs)
        return {k: v / len(recs) for k, v in n.items()}

    overall = mix([r for s in SPLITS for r in records[s]])
    assert len(overall) == 9  # every (answer_type, category) kind occurs
    for s in SPLITS:
        split_mix = mix(records[s])
        for kind, p in overall.items():
            assert abs(split_mix.get(kind, 0.0) - p) < 0.04, (s, kind, split_mix.get(kind), p)
        closed = [r for r in records[s] if r.answer_type == "closed"]
        assert abs(sum(r.answer == "yes" for r in closed) / len(closed) - 0.5) < 0.1


def test_categories_and_answers_are_balanced(dataset: tuple[Path, dict], records: dict) -> None:
    all_recs = [r for s in SPLITS for r in records[s]]
    share = Counter(r.category for r in all_recs)
    assert set(share) == {"presence", "modality", "region", "side", "count", "size"}
    assert all(0.08 < v / len(all_recs) < 0.26 for v in share.values()), share
    for kind, answers in dataset[1]["answers"].items():
        if kind.startswith("closed/"):
            assert set(answers) == {"yes", "no"}
            assert 0.35 < answers["yes"] / sum(answers.values()) < 0.65, (kind, answers)


# ---------------------------------------------------------------------------- content


def test_every_answer_matches_its_image_meta(dataset: tuple[Path, dict], records: dict) -> None:
    root, _ = dataset
    for rec in (r for s in SPLITS for r in records[s]):
        m, kind = rec.meta, (rec.answer_type, rec.category)
        assert rec.question == rec.question.lower() and rec.question.endswith("?")
        assert rec.image == f"images/{m['image_index']:06d}.png" and rec.image_path(root).is_file()
        count = m["lesion_count"]
        assert 0 <= count <= 2
        assert (m["lesion_side"] is None) == (m["lesion_size"] is None) == (count == 0)
        if count:  # radiological convention: the patient's left is the image's right
            assert m["lesion_image_half"] == {"left": "right", "right": "left"}[m["lesion_side"]]
        if rec.category in ("side", "size"):
            assert count > 0, rec
        if rec.answer_type == "closed":
            assert rec.answer in ("yes", "no")
        if kind == ("closed", "presence"):
            assert rec.answer == ("yes" if count else "no")
        elif rec.answer_type == "closed":
            truth = m[{"modality": "modality", "region": "region", "side": "lesion_side"}[rec.category]]
            assert m["asked"] in rec.question
            assert rec.answer == ("yes" if m["asked"] == truth else "no"), rec
        elif rec.category == "count":
            assert rec.answer == str(count)
        else:
            key = {"modality": "modality", "region": "region", "side": "lesion_side", "size": "lesion_size"}
            assert rec.answer == m[key[rec.category]], rec


def test_images_are_grayscale_pngs_of_the_configured_size(dataset: tuple[Path, dict]) -> None:
    root, _ = dataset
    for path in sorted((root / "images").glob("*.png"))[:20]:
        with Image.open(path) as im:
            assert (im.format, im.mode, im.size) == ("PNG", "L", (64, 64))
            assert np.asarray(im).std() > 10  # not blank


def test_vocabulary_covers_every_question_and_answer(records: dict) -> None:
    vocab = set(vocabulary())
    assert {"x", "-", "ray", "?", "ct", "mri", "yes", "no", "0", "1", "2"} <= vocab
    assert all(tok == tok.lower() for tok in vocab)
    bert = BertPreTokenizer()  # what BertTokenizerFast splits on, after lower-casing
    for rec in (r for s in SPLITS for r in records[s]):
        for text in (rec.question, rec.answer):
            tokens = {tok for tok, _ in bert.pre_tokenize_str(text.lower())}
            assert tokens <= vocab, (text, tokens - vocab)


@pytest.mark.parametrize("modality", MODALITIES)
@pytest.mark.parametrize("region", REGIONS)
def test_lesions_brighten_the_stated_side_only(modality: str, region: str) -> None:
    size, rng = 96, np.random.default_rng(7)
    for side, half in (("left", "right"), ("right", "left")):
        lesions = synth.sample_lesions(modality, region, side, [0.1, 0.1], [0.92, 0.92], rng)
        with_les = np.asarray(render_image(modality, region, lesions, np.random.default_rng(1), size), float)
        without = np.asarray(render_image(modality, region, [], np.random.default_rng(1), size), float)
        stated = slice(size // 2, None) if half == "right" else slice(None, size // 2)
        other = slice(None, size // 2 - 4) if half == "right" else slice(size // 2 + 4, None)
        assert with_les[:, stated].mean() > without[:, stated].mean() + 5
        np.testing.assert_array_equal(with_les[:, other], without[:, other])
        for les in lesions:  # the core of each lesion is bright, whatever lay under it
            yy, xx = np.mgrid[:size, :size] + 0.5
            core = np.hypot(xx / size - les.x, yy / size - les.y) < 0.4 * les.radius
            assert with_les[core].mean() > without[core].mean() + 40
            assert with_les[core].mean() > 180


def test_lesions_never_overlap_and_stay_off_the_midline() -> None:
    rng = np.random.default_rng(0)
    for modality in MODALITIES:
        for region in REGIONS:
            for side in ("left", "right"):
                a, b = synth.sample_lesions(modality, region, side, [0.11, 0.11], [0.9, 0.9], rng)
                assert np.hypot(a.x - b.x, a.y - b.y) > a.radius + b.radius
                for les in (a, b):
                    assert (les.x - les.radius > 0.5) if side == "left" else (les.x + les.radius < 0.5)


# ---------------------------------------------------------------------------- atomicity and errors


def test_failure_midway_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    real = synth.render_image

    def flaky(*args: object, **kwargs: object) -> Image.Image:
        nonlocal calls
        calls += 1
        if calls > 5:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(synth.dataset, "render_image", flaky)  # where generate() looks it up
    with pytest.raises(RuntimeError, match="disk on fire"):
        generate(tmp_path / "data", SMALL, progress=False)
    assert calls == 6
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "data"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="overwrite"):
        generate(out, SMALL, progress=False)
    assert (out / "keep.txt").exists()
    generate(out, SMALL, overwrite=True, progress=False)
    assert not (out / "keep.txt").exists() and (out / "test.jsonl").is_file()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_images": 5},
        {"image_size": 16},
        {"questions_per_image": 0},
        {"lesion_fraction": 1.5},
        {"max_lesions": 3},
        {"small_radius": (0.05, 0.1), "large_radius": (0.09, 0.1)},
        {"lesion_brightness": (0.9, 0.5)},
    ],
)
def test_bad_config_is_an_input_error(kwargs: dict) -> None:
    with pytest.raises(InputError):
        SynthConfig(**kwargs)
