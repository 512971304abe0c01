"""Metric functions against hand-computed values."""

from __future__ import annotations

import pytest

from edgevqa.eval.metrics import agreement, exact_match, majority_predictions, normalize_answer, vqa_accuracy


def test_normalize_undoes_wordpiece_spacing():
    assert normalize_answer("  X - Ray ") == "x-ray"
    assert normalize_answer("Left\tlung") == "left lung"
    assert exact_match("x - ray", "X-ray")
    assert not exact_match("left", "right")


def test_vqa_accuracy_by_type_and_category():
    preds = ["yes", "no", "ct", "mri", "2"]
    golds = ["yes", "yes", "ct", "ct", "2"]
    types = ["closed", "closed", "open", "open", "open"]
    cats = ["presence", "presence", "modality", "modality", "count"]
    acc = vqa_accuracy(preds, golds, types, cats)
    assert acc["overall"] == pytest.approx(3 / 5)
    assert acc["closed"] == pytest.approx(1 / 2)
    assert acc["open"] == pytest.approx(2 / 3)
    assert acc["by_category"] == {"closed/presence": 0.5, "open/count": 1.0, "open/modality": 0.5}


def test_majority_predictions_per_group_with_deterministic_ties():
    train_a = ["yes", "yes", "no", "ct", "mri"]
    train_g = ["p", "p", "p", "m", "m"]  # group m ties ct/mri -> "ct" (alphabetical)
    assert majority_predictions(train_a, train_g, ["p", "m", "unknown"]) == ["yes", "ct", "yes"]


def test_agreement():
    assert agreement(["a", "b", "c", "d"], ["a", "B", "x", "d"]) == 0.75
    with pytest.raises(ValueError):
        agreement(["a"], [])
