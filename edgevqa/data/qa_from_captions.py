"""Image-caption pairs -> closed and open questions, by rules over the caption's words.

Each rule reads one thing from the caption with :mod:`edgevqa.data.terms` and asks about it:

* **modality** (CT / MRI / X-ray): "what imaging modality was used?" and "is this a ct scan?";
* **region** (chest, brain, abdomen, pelvis, spine), only when exactly one is named;
* **presence** of findings (fracture, effusion, mass, nodule, pneumothorax, ...), "is there ...?";
  and **abnormality**, "what abnormality is seen?", when exactly one finding is asserted;
* **side** (left/right, the patient's, as captions state it) of the findings, when one side is named.

Yes/no questions come in pairs, so answers are balanced by construction: every "yes" question has
a "no" twin on the same image, asking about another modality, region or side (an image has one
each), or about a finding that is certainly absent: one the caption negates ("no pneumothorax"),
else one that cannot occur in the image's region (no pneumothorax in a brain scan). A finding that
is merely not mentioned is never answered "no": a caption is not a complete report.

Example:
    >>> cap = CaptionRecord("images/a.png", "Axial CT of the chest: left pleural effusion.", "ct", "c1")
    >>> [(q.category, q.question, q.answer) for q in questions(cap, seed=0)][:2]  # doctest: +SKIP
    [('modality', 'what imaging modality was used?', 'ct'), ('modality', 'is this a ct scan?', 'yes')]
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

from edgevqa import atomic
from edgevqa.data.captions import CaptionRecord, captions_path, load_captions
from edgevqa.data.files import carry_images
from edgevqa.data.records import SPLITS, VQARecord, write_split
from edgevqa.data.terms import FINDINGS, MODALITIES, REGIONS, SIDES, findings, primary_modality, regions, side
from edgevqa.errors import InputError

QA = tuple[str, str, str, str]  # answer_type, category, question, answer

TEMPLATES: dict[tuple[str, str], tuple[str, ...]] = {
    ("open", "modality"): ("what imaging modality was used?", "what kind of scan is this?"),
    ("closed", "modality"): ("is this {am} scan?", "is this {am} image?"),
    ("open", "region"): ("which body region is shown?", "what part of the body is this?"),
    ("closed", "region"): ("is this an image of the {r}?", "does this image show the {r}?"),
    ("closed", "presence"): ("is there {af}?", "does this image show {af}?"),
    ("open", "abnormality"): ("what abnormality is seen?", "what is the main finding?"),
    ("open", "side"): ("which side is the abnormality on?", "on which side is the {f}?"),
    ("closed", "side"): ("is the abnormality on the {s} side?", "is the {f} on the {s}?"),
}
_ARTICLE = {"x-ray": "an", "ct": "a", "mri": "an"}
_UNCOUNTABLE = {"calcification", "hemorrhage", "consolidation", "atelectasis", "cardiomegaly"}
_UNCOUNTABLE |= {"hydrocephalus", "ascites", "pneumoperitoneum"}


def _ask(rng: random.Random, atype: str, cat: str, answer: str, **slots: str) -> QA:
    return atype, cat, rng.choice(TEMPLATES[(atype, cat)]).format(**slots), answer


def _a(finding: str) -> str:
    if finding in _UNCOUNTABLE:
        return finding
    return ("an " if finding[0] in "aeiou" else "a ") + finding


def _yes_no(rng: random.Random, cat: str, yes: dict[str, str], no: dict[str, str]) -> list[QA]:
    return [_ask(rng, "closed", cat, "yes", **yes), _ask(rng, "closed", cat, "no", **no)]


# ---------------------------------------------------------------------------- rules


def modality_qas(modality: str | None, rng: random.Random) -> list[QA]:
    """Open "which modality" plus a yes/no pair (this one / another one)."""
    if modality not in MODALITIES:
        return []
    other = rng.choice([m for m in MODALITIES if m != modality])
    return [
        _ask(rng, "open", "modality", modality),
        *_yes_no(
            rng, "modality", {"am": f"{_ARTICLE[modality]} {modality}"}, {"am": f"{_ARTICLE[other]} {other}"}
        ),
    ]


def region_qas(caption: str, rng: random.Random) -> list[QA]:
    """Open "which region" plus a yes/no pair, when the caption names exactly one region."""
    named = regions(caption)
    if len(named) != 1:
        return []
    other = rng.choice([r for r in REGIONS if r != named[0]])
    return [_ask(rng, "open", "region", named[0]), *_yes_no(rng, "region", {"r": named[0]}, {"r": other})]


def finding_qas(caption: str, region: str | None, rng: random.Random) -> list[QA]:
    """ "is there X?" yes/no pairs (asserted X; negated or anatomically impossible Y), and the open
    "what abnormality" when exactly one finding is asserted."""
    found = findings(caption)
    present = sorted(f for f, yes in found.items() if yes)
    negated = sorted(f for f, yes in found.items() if not yes)
    elsewhere = [f for f, (_, r) in FINDINGS.items() if r and region and r != region and f not in found]
    negatives = negated + rng.sample(elsewhere, len(elsewhere))
    qas = [
        qa
        for pos, neg in zip(present, negatives)
        for qa in _yes_no(rng, "presence", {"af": _a(pos)}, {"af": _a(neg)})
    ]
    if len(present) == 1:
        qas.append(_ask(rng, "open", "abnormality", present[0]))
    return qas


def side_qas(caption: str, rng: random.Random) -> list[QA]:
    """Which side the findings are on, when the caption asserts findings and names exactly one side."""
    s = side(caption)
    present = [f for f, yes in findings(caption).items() if yes]
    if s is None or not present:
        return []
    f = present[0] if len(present) == 1 else "abnormality"
    other = next(x for x in SIDES if x != s)
    return [_ask(rng, "open", "side", s, f=f), *_yes_no(rng, "side", {"s": s, "f": f}, {"s": other, "f": f})]


def questions(rec: CaptionRecord, seed: int = 0) -> list[VQARecord]:
    """Every rule's questions about one captioned image (deterministic for a given seed and record)."""
    rng = random.Random(f"{seed}:{rec.id}:{rec.image}")
    caption = rec.caption
    named = regions(caption)
    qas = [
        *modality_qas(rec.modality if rec.modality in MODALITIES else primary_modality(caption), rng),
        *region_qas(caption, rng),
        *finding_qas(caption, named[0] if len(named) == 1 else None, rng),
        *side_qas(caption, rng),
    ]
    return [
        VQARecord(
            rec.image, q, a, atype, cat, id=f"{rec.id}-q{k}", meta={"caption_id": rec.id, "caption": caption}
        )
        for k, (atype, cat, q, a) in enumerate(qas)
    ]


# ---------------------------------------------------------------------------- dataset


def generate(
    captions_dir: str | Path, out: str | Path, seed: int = 0, overwrite: bool = False
) -> dict[str, Any]:
    """Write a VQA dataset (``{split}.jsonl``, images, ``dataset.json``) from a caption dataset.

    Splits are kept as they are (they were made by image). Images are hard-linked when possible.

    Returns:
        The summary written to ``dataset.json``: records and images per split, per category, yes/no.

    Raises:
        InputError: no caption files in `captions_dir`, a missing image, or a non-empty `out`.
    """
    src, out = Path(captions_dir), Path(out)
    have = [s for s in SPLITS if captions_path(src, s).is_file()]
    if not have:
        raise InputError(
            f"no captions in {captions_dir}: expected train.captions.jsonl, ... "
            "(make them with `edgevqa data convert eltorio/ROCOv2-radiology --out DIR`)"
        )
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} already exists and is not empty; pass --overwrite to replace it")
    summary: dict[str, Any] = {"generator": "edgevqa.data.qa_from_captions", "source": str(src), "seed": seed}
    summary.update(splits={}, categories={}, closed_answers={})
    with atomic.directory(out, overwrite=overwrite) as tmp:
        for s in SPLITS:
            caps = load_captions(src, s) if s in have else []
            recs = carry_images([q for c in caps for q in questions(c, seed)], src, tmp)
            write_split(tmp, s, recs)
            summary["splits"][s] = {
                "captions": len(caps),
                "records": len(recs),
                "images": len({r.image for r in recs}),
            }
            summary["categories"][s] = dict(sorted(Counter(r.group for r in recs).items()))
            summary["closed_answers"][s] = dict(
                sorted(Counter(r.answer for r in recs if r.answer_type == "closed").items())
            )
        atomic.write_json(tmp / "dataset.json", summary)
    return summary
