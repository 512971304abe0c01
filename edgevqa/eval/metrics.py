"""Answer metrics shared by training, export validation, bench and eval. Pure functions, torch-free.

Two normalisations: :func:`normalize_answer` canonicalises an answer's spelling (lower case, single
spaces, word-piece spacing undone); the dataset loaders store answers in that form. :func:`match_key`
goes further for scoring (SQuAD/VQA-style "normalised exact match"): it also drops punctuation and
the articles a/an/the, so "The left lung." matches "left lung".
"""

from __future__ import annotations

import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

_SPACED_PUNCT = re.compile(r"\s*([-/'])\s*")
_WS = re.compile(r"\s+")
# any punctuation except - / ' (inside words: "x-ray", "t1/t2", "crohn's") and a decimal point or
# thousands comma between digits ("2.5", "1,000")
_PUNCT = re.compile(r"(?![.,](?<=\d[.,])(?=\d))[^\w\s\-/']")
_ARTICLES = frozenset({"a", "an", "the"})


def normalize_answer(text: str) -> str:
    """Lower case, single spaces, and word-piece spacing undone ("x - ray" -> "x-ray")."""
    text = _WS.sub(" ", text.strip().lower())
    return _SPACED_PUNCT.sub(r"\1", text)


def match_key(text: str) -> str:
    """:func:`normalize_answer`, then punctuation and the articles a/an/the removed: the form two
    answers are compared in ("The left lung." -> "left lung", "x - ray" -> "x-ray")."""
    words = (w.strip("-/'") for w in _PUNCT.sub(" ", normalize_answer(text)).split())
    return " ".join(w for w in words if w and w not in _ARTICLES)


def exact_match(pred: str, gold: str) -> bool:
    """Normalised exact match: equal :func:`match_key`."""
    return match_key(pred) == match_key(gold)


def levenshtein(a: str, b: str) -> int:
    """Character edit distance: fewest insertions, deletions and substitutions turning a into b."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def edit_similarity(pred: str, gold: str) -> float:
    """Normalised edit similarity, 1 - levenshtein / max length, on the :func:`match_key` forms
    (1.0: identical; two empty answers count as identical)."""
    p, g = match_key(pred), match_key(gold)
    return 1.0 - levenshtein(p, g) / max(len(p), len(g), 1)


def mean_by(values: Sequence[float], groups: Sequence[str]) -> dict[str, float]:
    """Mean of ``values`` overall and per group."""
    if len(values) != len(groups):
        raise ValueError("values and groups must have the same length")
    by: dict[str, list[float]] = defaultdict(list)
    for v, k in zip(values, groups):
        by["overall"].append(v)
        by[k].append(v)
    return {k: sum(v) / len(v) for k, v in by.items()}


def accuracy_by(preds: Sequence[str], golds: Sequence[str], groups: Sequence[str]) -> dict[str, float]:
    """Exact-match accuracy overall and per group (e.g. answer type or category)."""
    if not (len(preds) == len(golds) == len(groups)):
        raise ValueError("preds, golds and groups must have the same length")
    return mean_by([float(exact_match(p, g)) for p, g in zip(preds, golds)], groups)


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


# ---------------------------------------------------------------------------------------------
# the evaluation table (paper 000, Table 1) and robustness over sampled answers (paper 003)


def organ_of(record: Any) -> str:
    """The record's organ / body region, if its dataset names one: SLAKE's ``location``, the
    synthetic set's ``region``; "" otherwise."""
    meta = getattr(record, "meta", None) or {}
    return str(meta.get("organ") or meta.get("location") or meta.get("region") or "").strip().lower()


def _typed(means: dict[str, float]) -> dict[str, float]:
    return {k: means[k] for k in ("overall", "closed", "open") if k in means}


def _per_group(em: list[float], es: list[float], groups: list[str]) -> dict[str, dict[str, float]]:
    acc, sim, n = mean_by(em, groups), mean_by(es, groups), Counter(groups)
    return {g: {"n": n[g], "accuracy": acc[g], "edit_similarity": sim[g]} for g in sorted(n)}


def vqa_scores(preds: Sequence[str], records: Sequence[Any]) -> dict[str, Any]:
    """Normalised exact match and edit similarity, overall / closed / open (paper 000's Table 1),
    and both per category (``closed/presence``) and per organ (when the records name organs).

    Returns:
        ``{"n", "counts", "accuracy", "edit_similarity", "by_category"[, "by_organ"]}``; the
        accuracy and edit-similarity entries are ``{"overall", "closed", "open"}`` means.
    """
    if len(preds) != len(records):
        raise ValueError("preds and records must have the same length")
    em = [float(exact_match(p, r.answer)) for p, r in zip(preds, records)]
    es = [edit_similarity(p, r.answer) for p, r in zip(preds, records)]
    types = [r.answer_type for r in records]
    counts = Counter(types)
    out: dict[str, Any] = {
        "n": len(records),
        "counts": {"overall": len(records), **{t: counts[t] for t in ("closed", "open") if t in counts}},
        "accuracy": _typed(mean_by(em, types)),
        "edit_similarity": _typed(mean_by(es, types)),
        "by_category": _per_group(em, es, [r.group for r in records]),
    }
    organs = [organ_of(r) for r in records]
    if any(organs):
        out["by_organ"] = _per_group(em, es, [o or "unknown" for o in organs])
    return out


def differing_samples(samples: Sequence[str]) -> int:
    """How many of ``samples`` differ from their most common answer (compared by :func:`match_key`)."""
    keys = [match_key(s) for s in samples]
    return len(keys) - Counter(keys).most_common(1)[0][1] if keys else 0


def robustness(
    samples: Sequence[Sequence[str]], golds: Sequence[str], groups: Sequence[str], min_differing: int = 3
) -> dict[str, dict[str, float]]:
    """Accuracy over k sampled answers per question, with paper 003's penalty for instability.

    Paper 003 (section 5.3): "we define a prediction as non-robust if the model produces different
    answers in three or more out of five inferences. In such cases, we penalize the accuracy by one
    point". Read here as: a question is non-robust when ``min_differing`` (3) or more of its k (5)
    samples differ from the samples' most common answer, and a non-robust question loses its one
    point: it scores 0 in every sampling run even where the sample was right. Run j's penalised
    accuracy is ``sum_i correct_ij * (1 - nonrobust_i) / n``, an accuracy in [0, 1] (subtracting a
    point from a question that was already wrong would make accuracies negative).

    Args:
        samples: per question, its k sampled answers (the same k for every question).
        golds: the reference answer per question.
        groups: a group per question (e.g. the answer type); every group is also reported.
        min_differing: differing samples that make a question non-robust.

    Returns:
        Per group (``overall`` first): n, non_robust (count), non_robust_rate, accuracy_mean /
        accuracy_std (unpenalised, over the k runs) and penalised_mean / penalised_std
        (population std, ddof 0).
    """
    if not (len(samples) == len(golds) == len(groups)):
        raise ValueError("samples, golds and groups must have the same length")
    ks = {len(s) for s in samples}
    if len(ks) > 1 or 0 in ks:
        raise ValueError(f"every question needs the same, non-zero number of samples; got {sorted(ks)}")
    k = ks.pop() if ks else 0
    rows = [
        ([float(exact_match(s, g)) for s in ss], float(differing_samples(ss) >= min_differing))
        for ss, g in zip(samples, golds)
    ]
    by: dict[str, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        by["overall"].append(i)
        by[g].append(i)
    out = {}
    for name, idx in by.items():
        n, bad = len(idx), sum(rows[i][1] for i in idx)
        runs = [sum(rows[i][0][j] for i in idx) / n for j in range(k)]
        penalised = [sum(rows[i][0][j] * (1 - rows[i][1]) for i in idx) / n for j in range(k)]
        out[name] = {
            "n": n,
            "non_robust": int(bad),
            "non_robust_rate": bad / n,
            "accuracy_mean": statistics.fmean(runs),
            "accuracy_std": statistics.pstdev(runs),
            "penalised_mean": statistics.fmean(penalised),
            "penalised_std": statistics.pstdev(penalised),
        }
    return out
