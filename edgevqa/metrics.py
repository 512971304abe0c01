"""Answer metrics shared by training, export validation and bench. Pure functions, torch-free."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

_SPACED_PUNCT = re.compile(r"\s*([-/'])\s*")
_WS = re.compile(r"\s+")


def normalize_answer(text: str) -> str:
    """Lower case, single spaces, and word-piece spacing undone ("x - ray" -> "x-ray")."""
    text = _WS.sub(" ", text.strip().lower())
    return _SPACED_PUNCT.sub(r"\1", text)


def exact_match(pred: str, gold: str) -> bool:
    return normalize_answer(pred) == normalize_answer(gold)


def accuracy_by(preds: Sequence[str], golds: Sequence[str], groups: Sequence[str]) -> dict[str, float]:
    """Exact-match accuracy overall and per group (e.g. answer type or category)."""
    if not (len(preds) == len(golds) == len(groups)):
        raise ValueError("preds, golds and groups must have the same length")
    hits: dict[str, list[bool]] = defaultdict(list)
    for p, g, k in zip(preds, golds, groups):
        ok = exact_match(p, g)
        hits["overall"].append(ok)
        hits[k].append(ok)
    return {k: sum(v) / len(v) for k, v in hits.items()}


def majority_predictions(
    train_answers: Sequence[str], train_groups: Sequence[str], test_groups: Sequence[str]
) -> list[str]:
    """The majority-answer baseline: for each test question, the most frequent training answer
    of its group (falling back to the overall most frequent). Ties break by answer text."""
    by_group: dict[str, Counter[str]] = defaultdict(Counter)
    for a, g in zip(train_answers, train_groups):
        by_group[g][normalize_answer(a)] += 1
    overall = Counter(normalize_answer(a) for a in train_answers)

    def top(c: Counter[str]) -> str:
        return min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] if c else ""

    return [top(by_group.get(g) or overall) for g in test_groups]


def agreement(a: Sequence[str], b: Sequence[str]) -> float:
    """Fraction of answers that are identical after normalisation."""
    if len(a) != len(b):
        raise ValueError("answer lists differ in length")
    return sum(normalize_answer(x) == normalize_answer(y) for x, y in zip(a, b)) / max(len(a), 1)


def record_accuracy(preds: Sequence[str], records: Sequence[Any]) -> dict:
    """:func:`vqa_accuracy` of ``preds`` against VQA records (their answer, type and category)."""
    return vqa_accuracy(
        preds, [r.answer for r in records], [r.answer_type for r in records], [r.category for r in records]
    )


def majority_baseline(train: Sequence[Any], test: Sequence[Any]) -> dict:
    """Accuracy on ``test`` records of always answering the group's most frequent training answer."""
    preds = majority_predictions([r.answer for r in train], [r.group for r in train], [r.group for r in test])
    return record_accuracy(preds, test)


def vqa_accuracy(
    preds: Sequence[str], golds: Sequence[str], answer_types: Sequence[str], categories: Sequence[str]
) -> dict:
    """``{"overall", "closed", "open", "by_category": {"closed/presence": ...}}`` exact match."""
    by_type = accuracy_by(preds, golds, answer_types)
    by_cat = accuracy_by(preds, golds, [f"{t}/{c}" for t, c in zip(answer_types, categories)])
    out = {"overall": by_type["overall"]}
    out.update({t: by_type[t] for t in ("closed", "open") if t in by_type})
    out["by_category"] = {k: v for k, v in sorted(by_cat.items()) if k != "overall"}
    return out
