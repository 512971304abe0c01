"""Progressive self-distillation, paper 000 §3.4, eqs. (1)-(8): the math, apart from any model.

An EMA teacher follows the student (eq. 1); per task k in (ITC, ITM, LM) the student/teacher loss
ratio (eq. 2) is EMA-smoothed (eq. 3), clamped and turned into softmax weights (eq. 4), which
weight an MSE between the student's and the teacher's task losses (eqs. 5-7). The total loss is
the three task losses plus the three distillation terms (eq. 8).

What the paper leaves open, and what is done here:
  * the momentum schedule ("progressively increases from 0.95 to 0.995 during training"): linear
    in the optimizer step, 0.95 at the first update and 0.995 at the last;
  * where the clamp sits: the clamped value is what the EMA keeps (``r̄ <- clamp(α r̄ + (1-α) r)``);
  * the EMA's start: 1.0, the ratio of a student to its own copy (the teacher starts as one);
  * how often eqs. 2-4 run: at every forward pass (every micro-batch), before its loss is formed.

Example:
    >>> d = Distiller()
    >>> w = d.update({"itc": 2.0, "itm": 0.7, "lm": 3.0}, {"itc": 1.0, "itm": 0.7, "lm": 3.0})
    >>> round(d.rbar["itc"], 6), round(w["itc"], 4)
    (1.1, 0.3559)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

TASKS = ("itc", "itm", "lm")
MOMENTUM_START, MOMENTUM_END = 0.95, 0.995  # eq. (1): tau rises from 0.95 to 0.995
EPS = 1e-8  # eq. (2)
ALPHA = 0.9  # eq. (3)
CLAMP = (0.1, 5.0)  # "clamped to [0.1, 5.0]"


def teacher_momentum(step: int, total: int) -> float:
    """tau for the update after optimizer step ``step`` (0-based) of ``total``: linear 0.95 -> 0.995."""
    if total <= 1:
        return MOMENTUM_END
    return MOMENTUM_START + (MOMENTUM_END - MOMENTUM_START) * min(1.0, step / (total - 1))


def ema_update(teacher: Any, student: Any, tau: float) -> None:
    """Eq. (1): theta_teacher <- tau * theta_teacher + (1 - tau) * theta_student, in place."""
    import torch

    with torch.no_grad():
        for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
            t.mul_(tau).add_(s.detach().to(t.dtype), alpha=1.0 - tau)


def ratios(student: Mapping[str, float], teacher: Mapping[str, float]) -> dict[str, float]:
    """Eq. (2): r_k = L_k^student / (L_k^teacher + eps)."""
    return {k: student[k] / (teacher[k] + EPS) for k in TASKS}


def smooth(prev: Mapping[str, float], r: Mapping[str, float]) -> dict[str, float]:
    """Eq. (3) and the clamp: r̄_k <- clamp(alpha * r̄_k + (1 - alpha) * r_k, 0.1, 5.0)."""
    lo, hi = CLAMP
    return {k: min(hi, max(lo, ALPHA * prev[k] + (1 - ALPHA) * r[k])) for k in TASKS}


def weights(rbar: Mapping[str, float]) -> dict[str, float]:
    """Eq. (4): w_k = exp(r̄_k) / sum_j exp(r̄_j)."""
    top = max(rbar[k] for k in TASKS)  # shift for stability; the softmax is unchanged
    e = {k: math.exp(rbar[k] - top) for k in TASKS}
    z = sum(e.values())
    return {k: e[k] / z for k in TASKS}


def distill_loss(student: Mapping[str, Any], teacher: Mapping[str, float], w: Mapping[str, float]) -> Any:
    """Eqs. (5)-(7), summed: sum_k MSE(L_k^student, L_k^teacher) * w_k.

    ``student`` holds the task losses (tensors: gradients flow through them); ``teacher`` and ``w``
    are numbers (the teacher is a target, the weights are not optimised). The MSE of two scalars is
    their squared difference.
    """
    return sum(w[k] * (student[k] - teacher[k]) ** 2 for k in TASKS)


class Distiller:
    """The smoothed ratios r̄ across steps (saved in checkpoints, so a resumed run continues them)."""

    def __init__(self) -> None:
        self.rbar = {k: 1.0 for k in TASKS}

    def update(self, student: Mapping[str, float], teacher: Mapping[str, float]) -> dict[str, float]:
        """Eqs. (2)-(4) for one forward pass; returns the weights w_k."""
        self.rbar = smooth(self.rbar, ratios(student, teacher))
        return weights(self.rbar)

    def state_dict(self) -> dict[str, float]:
        return dict(self.rbar)

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.rbar = {k: float(state[k]) for k in TASKS}
