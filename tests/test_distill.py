"""Progressive self-distillation math (paper 000 eqs. 1-8) against numbers computed by hand."""

from __future__ import annotations

import math

import pytest

from edgevqa.train import distill


def test_teacher_momentum_rises_linearly_from_095_to_0995():
    # 11 updates: 0.95 at the first (step 0), 0.995 at the last (step 10), halfway at step 5
    assert distill.teacher_momentum(0, 11) == pytest.approx(0.95)
    assert distill.teacher_momentum(5, 11) == pytest.approx(0.9725)  # 0.95 + 0.045 * 5/10
    assert distill.teacher_momentum(10, 11) == pytest.approx(0.995)
    assert distill.teacher_momentum(1, 1) == 0.995


def test_ema_update_is_eq1():
    import torch

    teacher, student = torch.nn.Linear(1, 2, bias=False), torch.nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        teacher.weight.copy_(torch.tensor([[1.0], [-2.0]]))
        student.weight.copy_(torch.tensor([[3.0], [2.0]]))
    distill.ema_update(teacher, student, tau=0.9)
    # 0.9 * 1 + 0.1 * 3 = 1.2 ; 0.9 * -2 + 0.1 * 2 = -1.6
    torch.testing.assert_close(teacher.weight, torch.tensor([[1.2], [-1.6]]))
    torch.testing.assert_close(student.weight, torch.tensor([[3.0], [2.0]]))  # the student is untouched
    assert teacher.weight.grad is None


def test_ratios_are_eq2_with_eps():
    r = distill.ratios({"itc": 2.0, "itm": 0.5, "lm": 3.0}, {"itc": 1.0, "itm": 1.0, "lm": 0.0})
    assert r["itc"] == pytest.approx(2 / (1 + 1e-8), abs=1e-12)  # 1.99999998
    assert r["itm"] == pytest.approx(0.499999995, abs=1e-12)
    assert r["lm"] == pytest.approx(3e8)  # a zero teacher loss: eps keeps it finite


def test_smoothing_is_eq3_then_clamped():
    prev = {"itc": 1.0, "itm": 1.0, "lm": 1.0}
    r = {"itc": 2.0, "itm": 0.5, "lm": 3e8}
    s = distill.smooth(prev, r)
    assert s["itc"] == pytest.approx(1.1)  # 0.9 * 1 + 0.1 * 2
    assert s["itm"] == pytest.approx(0.95)  # 0.9 * 1 + 0.1 * 0.5
    assert s["lm"] == 5.0  # 0.9 + 3e7, clamped to the upper bound
    low = distill.smooth({"itc": 0.1, "itm": 0.1, "lm": 0.1}, {"itc": 0.0, "itm": 0.0, "lm": 0.0})
    assert low == {"itc": 0.1, "itm": 0.1, "lm": 0.1}  # 0.09 clamped up to 0.1


def test_weights_are_a_softmax_eq4():
    w = distill.weights({"itc": 1.1, "itm": 0.95, "lm": 5.0})
    # e^1.1 = 3.004166, e^0.95 = 2.585710, e^5 = 148.413159; sum 154.003035
    assert w["itc"] == pytest.approx(0.0195072, abs=1e-6)
    assert w["itm"] == pytest.approx(0.0167900, abs=1e-6)
    assert w["lm"] == pytest.approx(0.9637028, abs=1e-6)
    assert sum(w.values()) == pytest.approx(1.0)
    assert distill.weights({"itc": 2.0, "itm": 2.0, "lm": 2.0}) == pytest.approx(
        {k: 1 / 3 for k in distill.TASKS}
    )


def test_distill_loss_is_weighted_squared_difference_eqs5_to_7():
    import torch

    student = {k: torch.tensor(v, requires_grad=True) for k, v in {"itc": 2.0, "itm": 0.5, "lm": 3.0}.items()}
    teacher = {"itc": 1.0, "itm": 1.0, "lm": 2.5}
    w = {"itc": 0.5, "itm": 0.25, "lm": 0.25}
    loss = distill.distill_loss(student, teacher, w)
    assert loss.item() == pytest.approx(0.625)  # 0.5 * 1^2 + 0.25 * 0.5^2 + 0.25 * 0.5^2
    loss.backward()
    # d/dL_s of w (L_s - L_t)^2 = 2 w (L_s - L_t): 2*0.5*1, 2*0.25*(-0.5), 2*0.25*0.5
    assert [student[k].grad.item() for k in distill.TASKS] == pytest.approx([1.0, -0.25, 0.25])


def test_distiller_carries_the_smoothed_ratios_across_steps():
    d = distill.Distiller()
    assert d.rbar == {"itc": 1.0, "itm": 1.0, "lm": 1.0}
    d.update({"itc": 2.0, "itm": 1.0, "lm": 1.0}, {"itc": 1.0, "itm": 1.0, "lm": 1.0})
    w = d.update({"itc": 4.0, "itm": 1.0, "lm": 1.0}, {"itc": 1.0, "itm": 1.0, "lm": 1.0})
    # r̄_itc: 0.9 * 1 + 0.1 * 2 = 1.1, then 0.9 * 1.1 + 0.1 * 4 = 1.39; the others stay 1
    assert d.rbar["itc"] == pytest.approx(1.39) and d.rbar["itm"] == pytest.approx(1.0)
    # e^1.39 / (e^1.39 + 2 e^1) = 4.014850 / 9.451414
    assert w["itc"] == pytest.approx(0.4247883, abs=1e-6)
    assert w["itm"] == pytest.approx(w["lm"]) and w["lm"] == pytest.approx(0.2876058, abs=1e-6)
    again = distill.Distiller()
    again.load_state_dict(d.state_dict())
    assert again.rbar == d.rbar
    assert math.isclose(sum(w.values()), 1.0)
