"""The dataset: stratified splits by image, records and captions, the summary, and
:func:`generate`, which writes it all atomically."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from edgevqa import atomic
from edgevqa.data.captions import CaptionRecord, write_captions
from edgevqa.data.records import SPLITS, VQARecord, write_split
from edgevqa.data.splits import assign_splits
from edgevqa.data.synth.config import GENERATOR_VERSION, SPLIT_FRACTIONS, SynthConfig
from edgevqa.data.synth.draw import render_image
from edgevqa.data.synth.questions import _KINDS, _Image, _plan_image
from edgevqa.errors import InputError

# ---------------------------------------------------------------------------- splits


def _cells(im: _Image) -> Counter[tuple[str, ...]]:
    """What a split should hold in proportion: images, question kinds and their answers."""
    cells: Counter[tuple[str, ...]] = Counter({("image",): 1})
    for atype, cat, _, answer, _ in im.qas:
        cells[(atype, cat)] += 1
        cells[(atype, cat, answer)] += 1
    return cells


def _assign_splits(images: list[_Image], seed: int) -> list[str]:
    """Split by image, greedily stratified over question kinds and answers (80/10/10 images)."""
    return assign_splits([_cells(im) for im in images], SPLIT_FRACTIONS, seed)


# ---------------------------------------------------------------------------- dataset


def _records(im: _Image) -> list[VQARecord]:
    return [
        VQARecord(
            image=f"images/{im.index:06d}.png",
            question=q,
            answer=a,
            answer_type=atype,
            category=cat,
            id=f"synth-{im.index:06d}-{j}",
            meta={**im.meta, **({"asked": asked} if asked is not None else {})},
        )
        for j, (atype, cat, q, a, asked) in enumerate(im.qas)
    ]


def _summary(cfg: SynthConfig, images: list[_Image], splits: list[str]) -> dict[str, Any]:
    counts: dict[str, dict[str, Any]] = {k: {} for k in ("images", "questions", "answer_type", "category")}
    counts["answer_type_category"] = {}
    answers: dict[str, Counter[str]] = {f"{a}/{c}": Counter() for a, c in _KINDS}
    for s in SPLITS:
        qas = [qa for im, sp in zip(images, splits, strict=True) if sp == s for qa in im.qas]
        counts["images"][s] = splits.count(s)
        counts["questions"][s] = len(qas)
        counts["answer_type"][s] = dict(sorted(Counter(q[0] for q in qas).items()))
        counts["category"][s] = dict(sorted(Counter(q[1] for q in qas).items()))
        counts["answer_type_category"][s] = dict(sorted(Counter(f"{q[0]}/{q[1]}" for q in qas).items()))
        for atype, cat, _, answer, _ in qas:
            answers[f"{atype}/{cat}"][answer] += 1
    findings = {
        "modality": dict(sorted(Counter(im.modality for im in images).items())),
        "region": dict(sorted(Counter(im.region for im in images).items())),
        "lesion_count": dict(sorted(Counter(str(len(im.lesions)) for im in images).items())),
        "lesion_size": dict(sorted(Counter(str(im.size) for im in images).items())),
        "lesion_side": dict(sorted(Counter(str(im.side) for im in images).items())),
    }
    return {
        "generator": "edgevqa.data.synth",
        "generator_version": GENERATOR_VERSION,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},  # as in JSON
        "side_convention": "radiological: lesion_side is the patient's side, whose left is the image's right",
        "splits": {s: {"images": counts["images"][s], "questions": counts["questions"][s]} for s in SPLITS},
        "counts": counts,
        "answers": {k: dict(sorted(v.items())) for k, v in answers.items()},
        "findings": findings,
    }


def caption_of(im: _Image) -> str:
    """A one-line report of the image's findings: "brain ct with one small lesion on the right"."""
    head = f"{im.region} {im.modality}"
    if not im.lesions:
        return f"{head} with no lesion"
    n = len(im.lesions)
    return f"{head} with {('one', 'two')[n - 1]} {im.size} lesion{'s' if n > 1 else ''} on the {im.side}"


def _caption_record(im: _Image) -> CaptionRecord:
    return CaptionRecord(
        image=f"images/{im.index:06d}.png",
        caption=caption_of(im),
        modality=im.modality,
        id=f"synth-{im.index:06d}",
        meta=im.meta,
    )


def generate(
    out_dir: str | Path,
    cfg: SynthConfig,
    overwrite: bool = False,
    progress: bool = True,
    captions: bool = False,
) -> dict[str, Any]:
    """Write the synthetic dataset to `out_dir` (all of it or, on any error, nothing).

    Same config => byte-identical files: every random draw comes from numpy generators seeded by
    ``(cfg.seed, image index)``.

    Args:
        out_dir: dataset directory to create (see the module docstring for its layout).
        cfg: what to generate.
        overwrite: replace an existing non-empty `out_dir`.
        progress: show a tqdm progress bar (on stderr) while drawing images.
        captions: also write ``{split}.captions.jsonl``, one caption per image (same splits).

    Returns:
        The summary also written to ``out_dir/dataset.json``: config, generator version, images and
        questions per split (``splits``), counts per split / answer type / category (``counts``),
        answer distributions (``answers``) and finding counts (``findings``).

    Raises:
        InputError: `out_dir` exists, is not empty and `overwrite` is False.
    """
    out = Path(out_dir)
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} already exists and is not empty; pass --overwrite to replace it")
    images = [_plan_image(i, cfg) for i in range(cfg.n_images)]
    splits = _assign_splits(images, cfg.seed)
    with atomic.directory(out, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        for im in tqdm(images, desc="synth images", unit="img", disable=not progress or None):
            rng = np.random.default_rng([cfg.seed, im.index, 1])
            img = render_image(im.modality, im.region, list(im.lesions), rng, cfg.image_size)
            img.save(tmp / "images" / f"{im.index:06d}.png", format="PNG")
        for s in SPLITS:
            write_split(
                tmp, s, [r for im, sp in zip(images, splits, strict=True) if sp == s for r in _records(im)]
            )
            if captions:
                write_captions(tmp, s, [_caption_record(im) for im, sp in zip(images, splits) if sp == s])
        summary = _summary(cfg, images, splits)
        atomic.write_json(tmp / "dataset.json", summary)
    return summary
