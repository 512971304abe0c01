"""Questions: paraphrase templates per answer type and category, what each image is asked,
its plan (modality, region, lesions, questions), and the vocabulary of every question and answer."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgevqa.data.synth.config import _ARTICLE, MODALITIES, REGIONS, SIDES, SIZES, Lesion, SynthConfig
from edgevqa.data.synth.findings import sample_lesions

# ---------------------------------------------------------------------------- questions
# Paraphrases per (answer_type, category), lower case, ending in "?".
# Fields: {am} the modality with its article ("an x-ray"), {m} modality, {r} region, {s} side.

_TEMPLATES: dict[tuple[str, str], tuple[str, ...]] = {
    ("closed", "presence"): (
        "is there a lesion?",
        "are there any nodules?",
        "is a lesion present?",
        "are there any lesions in this image?",
        "do you see a nodule?",
        "is there an abnormality?",
    ),
    ("closed", "modality"): (
        "is this {am} scan?",
        "is this {am} image?",
        "was this image taken with {m}?",
        "is the modality {m}?",
    ),
    ("closed", "region"): (
        "is this an image of the {r}?",
        "does this image show the {r}?",
        "is the {r} shown?",
        "is this a scan of the {r}?",
    ),
    ("closed", "side"): (
        "is the lesion on the {s} side?",
        "are the lesions on the {s}?",
        "is the {s} side affected?",
        "is the nodule on the patient's {s}?",
    ),
    ("open", "modality"): (
        "what modality is this?",
        "what imaging modality was used?",
        "what kind of scan is this?",
        "which imaging technique is shown?",
    ),
    ("open", "region"): (
        "which organ is shown?",
        "what part of the body is this?",
        "which body region is imaged?",
        "what region is shown in this image?",
    ),
    ("open", "side"): (
        "which side is the lesion on?",
        "on which side are the lesions?",
        "which side is affected?",
        "where is the nodule, left or right?",
    ),
    ("open", "count"): (
        "how many lesions are there?",
        "how many nodules can you see?",
        "what is the number of lesions?",
        "how many lesions are present?",
    ),
    ("open", "size"): (
        "how large is the lesion?",
        "what size are the nodules?",
        "how big is the lesion?",
        "are the lesions small or large?",
    ),
}
_KINDS = tuple(_TEMPLATES)
_NEEDS_LESION = ("side", "size")
# Sampling weights. The lesion kinds are slow to learn (see the notes), so they are asked more;
# modality and region have two kinds each (closed + open) and are easy, so each kind gets less;
# size exists only for lesion images, hence its large weight. Categories come out at 14-18% each.
_WEIGHTS = {
    ("closed", "modality"): 0.5,
    ("closed", "region"): 0.5,
    ("closed", "side"): 1.8,
    ("open", "modality"): 0.5,
    ("open", "region"): 0.5,
    ("open", "side"): 1.8,
    ("open", "count"): 2.4,
    ("open", "size"): 4.0,
}
_ZERO_COUNT_DAMPING = 0.2  # see _questions: keeps "0" from being the majority count answer
_P_PRESENCE = 0.7  # chance of a presence question, before rebalancing its yes/no


@dataclass(frozen=True)
class _Image:
    """Everything decided about one image before it is drawn."""

    index: int
    modality: str
    region: str
    side: str | None  # patient's side, None without lesions
    size: str | None
    lesions: tuple[Lesion, ...]
    qas: tuple[tuple[str, str, str, str, str | None], ...] = ()  # (answer_type, category, q, a, asked)

    @property
    def meta(self) -> dict[str, Any]:
        half = None if self.side is None else ("right" if self.side == "left" else "left")
        return {
            "image_index": self.index,
            "modality": self.modality,
            "region": self.region,
            "lesion_count": len(self.lesions),
            "lesion_side": self.side,
            "lesion_size": self.size,
            "lesion_image_half": half,
        }


def _closed_pick(truth: str, options: tuple[str, ...], rng: np.random.Generator) -> tuple[str, str]:
    """Ask about the true value or another one with equal odds, so yes and no are balanced."""
    if rng.random() < 0.5:
        return truth, "yes"
    others = [o for o in options if o != truth]
    return others[int(rng.integers(len(others)))], "no"


def _ask(kind: tuple[str, str], im: _Image, rng: np.random.Generator) -> tuple[str, str, str | None]:
    """One (question, answer, asked value) for `kind` about image `im`."""
    templates = _TEMPLATES[kind]
    text = templates[int(rng.integers(len(templates)))]
    atype, cat = kind
    truth = {"presence": None, "modality": im.modality, "region": im.region, "side": im.side, "size": im.size}
    if kind == ("closed", "presence"):
        return text, "yes" if im.lesions else "no", None
    if atype == "closed":
        options = {"modality": MODALITIES, "region": REGIONS, "side": SIDES}[cat]
        asked, answer = _closed_pick(str(truth[cat]), options, rng)
        question = text.format(am=f"{_ARTICLE.get(asked, 'a')} {asked}", m=asked, r=asked, s=asked)
        return question, answer, asked
    if cat == "count":
        return text, str(len(im.lesions)), None
    return text, str(truth[cat]), None


def _questions(im: _Image, cfg: SynthConfig, rng: np.random.Generator) -> _Image:
    kinds: list[tuple[str, str]] = []
    # Ask "is there a lesion?" less often on the more common answer so that yes/no come out even.
    f = cfg.lesion_fraction
    balance = min(1.0, (1 - f) / f) if im.lesions else min(1.0, f / (1 - f)) if f < 1 else 1.0
    if rng.random() < _P_PRESENCE * balance:
        kinds.append(("closed", "presence"))
    pool = [k for k in _WEIGHTS if im.lesions or k[1] not in _NEEDS_LESION]
    n = min(cfg.questions_per_image - len(kinds), len(pool))
    if n > 0:
        # Without lesions, count is one of only 5 kinds and would be asked nearly always, making "0"
        # the majority count answer; damp it so that 0, 1 and 2 come out closer to even.
        damp = {("open", "count"): _ZERO_COUNT_DAMPING} if not im.lesions else {}
        w = np.array([_WEIGHTS[k] * damp.get(k, 1.0) for k in pool])
        picks = rng.choice(len(pool), size=n, replace=False, p=w / w.sum())
        kinds += [pool[i] for i in sorted(picks)]
    qas = tuple((k[0], k[1], *_ask(k, im, rng)) for k in kinds)
    return _Image(im.index, im.modality, im.region, im.side, im.size, im.lesions, qas)


def _plan_image(index: int, cfg: SynthConfig) -> _Image:
    # One generator per image (and a separate one for drawing it): image i is the same whatever
    # n_images is, and planning never shifts the random stream of the pixels.
    rng = np.random.default_rng([cfg.seed, index, 0])
    modality = MODALITIES[int(rng.integers(len(MODALITIES)))]
    region = REGIONS[int(rng.integers(len(REGIONS)))]
    side = size = None
    lesions: list[Lesion] = []
    if rng.random() < cfg.lesion_fraction:
        count = int(rng.integers(1, cfg.max_lesions + 1))
        side, size = SIDES[int(rng.integers(2))], SIZES[int(rng.integers(2))]
        lo, hi = cfg.small_radius if size == "small" else cfg.large_radius
        radii = sorted(rng.uniform(lo, hi, count).tolist(), reverse=True)  # biggest first packs best
        brightness = rng.uniform(*cfg.lesion_brightness, count).tolist()
        lesions = sample_lesions(modality, region, side, radii, brightness, rng)
    return _questions(_Image(index, modality, region, side, size, tuple(lesions)), cfg, rng)


# ---------------------------------------------------------------------------- vocabulary

_TOKEN = re.compile(r"\w+|[^\w\s]")  # what a BERT basic tokenizer does to lower-case ASCII text


def vocabulary() -> list[str]:
    """Every token that can appear in a generated question or answer, sorted.

    Tokens are split like a BERT basic tokenizer: lower case, each punctuation character on its own
    ("x-ray" -> "x", "-", "ray"; "?" separate).

    Returns:
        The sorted unique tokens.
    """
    texts: list[str] = ["yes", "no", *MODALITIES, *REGIONS, *SIDES, *SIZES, "0", "1", "2"]
    for templates in _TEMPLATES.values():
        for t in templates:
            for m in MODALITIES:
                texts += [t.format(am=f"{_ARTICLE[m]} {m}", m=m, r=r, s=s) for r in REGIONS for s in SIDES]
    return sorted({tok for text in texts for tok in _TOKEN.findall(text.lower())})
