"""Mixtures of dataset folders: ratios per split, seeded sampling, provenance, user errors."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from data_layouts import png

from edgevqa.data.mix import Part, counts, mix, parse_parts, sample
from edgevqa.data.records import SPLITS, VQARecord, load_split, write_split
from edgevqa.errors import InputError


def dataset(root: Path, name: str, sizes: dict[str, int]) -> Path:
    """A folder in our layout: one image and one question per record."""
    (root / "images").mkdir(parents=True)
    for s in SPLITS:
        recs = []
        for i in range(sizes[s]):
            img = f"images/{s}-{i}.png"
            (root / img).write_bytes(png(i % 250))
            recs.append(VQARecord(img, f"{name} question {i}?", "yes", "closed", "presence", id=f"{s}-{i}"))
        write_split(root, s, recs)
    return root


@pytest.fixture()
def sources(tmp_path: Path) -> tuple[Path, Path]:
    a = dataset(tmp_path / "big", "big", {"train": 100, "val": 20, "test": 20})
    b = dataset(tmp_path / "small", "small", {"train": 10, "val": 4, "test": 3})
    return a, b


def test_parse_parts_and_its_errors(sources: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = sources
    assert parse_parts([f"{a}:0.8", f"{b}:0.2"]) == [Part(a, 0.8, "big"), Part(b, 0.2, "small")]
    cases = {
        (f"{a}",): "expected DIR:RATIO",
        (f"{a}:x", f"{b}:0.2"): "expected DIR:RATIO",
        (f"{a}:-0.5", f"{b}:1.5"): "positive ratio",
        (f"{a}:0.8", f"{b}:0.1"): "ratios must sum to 1, got 0.9 (0.8 + 0.1)",
        (f"{tmp_path / 'none'}:1",): "no such dataset folder",
        (f"{a}:0.5", f"{a}:0.5"): "given twice",
        (): "nothing to mix",
    }
    for specs, message in cases.items():
        with pytest.raises(
            InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")
        ):
            parse_parts(list(specs))


def test_counts_and_sample() -> None:
    assert counts([0.8, 0.2], 50) == [40, 10]
    assert counts([1 / 3, 1 / 3, 1 / 3], 10) == [4, 3, 3]  # the remainder goes to the first
    rng = np.random.default_rng(0)
    few = sample(4, 10, rng)  # fewer than available: without replacement
    assert len(few) == len(set(few)) == 4 and all(0 <= i < 10 for i in few)
    idx = sample(25, 10, rng)  # two full passes, then 5 without replacement
    assert sorted(Counter(Counter(idx).values()).items()) == [(2, 5), (3, 5)]


def test_mix_default_size_takes_every_split_at_the_ratio_without_repeats(sources, tmp_path: Path) -> None:
    a, b = sources
    summary = mix(parse_parts([f"{a}:0.8", f"{b}:0.2"]), tmp_path / "mix", seed=0)
    # small limits: train 10/0.2 = 50 records, val 4/0.2 = 20, test 3/0.2 = 15
    assert summary["splits"] == {
        "train": {"records": 50, "by_source": {"big": 40, "small": 10}},
        "val": {"records": 20, "by_source": {"big": 16, "small": 4}},
        "test": {"records": 15, "by_source": {"big": 12, "small": 3}},
    }
    train = load_split(tmp_path / "mix", "train")
    assert len({r.id for r in train}) == 50  # no repeats
    assert Counter(r.meta["source"] for r in train) == {"big": 40, "small": 10}
    for r in train:
        assert r.id.startswith(f"{r.meta['source']}/") and r.question.startswith(r.meta["source"])
        assert (tmp_path / "mix" / r.image).is_file() and r.image.startswith(
            f"sources/{r.meta['source']}/images/"
        )
    assert [r.meta["source"] for r in train[:10]] != ["big"] * 10  # shuffled together, not concatenated


def test_mix_size_repeats_evenly_and_never_repeats_eval_splits(sources, tmp_path: Path) -> None:
    a, b = sources
    summary = mix(parse_parts([f"{a}:0.5", f"{b}:0.5"]), tmp_path / "mix", size=50, seed=1)
    assert summary["splits"]["train"]["by_source"] == {"big": 25, "small": 25}
    train = load_split(tmp_path / "mix", "train")
    small = Counter(r.id.split("~")[0] for r in train if r.meta["source"] == "small")
    assert sorted(Counter(small.values()).items()) == [(2, 5), (3, 5)]  # 25 of 10 records: each 2 or 3 times
    assert len({r.id for r in train}) == 50  # repeats get ~2, ~3 ids
    test = load_split(tmp_path / "mix", "test")
    assert len(test) == len({r.id for r in test}) == 6  # 3 small + 3 big: the largest 50/50 without repeats


def test_mix_is_deterministic_per_seed(sources, tmp_path: Path) -> None:
    a, b = sources
    parts = parse_parts([f"{a}:0.8", f"{b}:0.2"])
    for name, seed in (("x", 0), ("y", 0), ("z", 1)):
        mix(parts, tmp_path / name, seed=seed)
    x, y, z = ((tmp_path / n / "train.jsonl").read_text() for n in "xyz")
    assert x == y and x != z
    with pytest.raises(InputError, match="--overwrite"):
        mix(parts, tmp_path / "x")
    with pytest.raises(InputError, match="--size must be a positive"):
        mix(parts, tmp_path / "w", size=0)
