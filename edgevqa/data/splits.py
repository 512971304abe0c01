"""Split groups of records (all questions about one image) into train/val/test, stratified.

A group never spans two splits, so no image is seen in training and then scored in test. Each group
describes itself as *cells* it counts towards (``("image",)``, an answer type and category, a
closed answer, ...), and the splits end up holding every cell in about their fractions.

Example:
    >>> from collections import Counter
    >>> cells = [Counter({("image",): 1, ("closed", "presence"): 2}) for _ in range(10)]
    >>> assign_splits(cells, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0).count("train")
    8
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

# Where a dataset has no official split: 70/10/20 of its images.
DEFAULT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
# Where it has train and test but no val: val is carved from train in the same 70:10 proportion.
VAL_FROM_TRAIN = {"train": 7 / 8, "val": 1 / 8}


def assign_splits(
    cells: Sequence[Mapping[Hashable, int]], fractions: Mapping[str, float], seed: int
) -> list[str]:
    """Give each group a split: exact group quotas, greedily stratified over the groups' cells.

    Quotas are ``round(n * fraction)`` groups for every split but the first, which takes the rest.
    Groups are visited in a seeded random order and each joins the split (with quota left) whose
    cells are most under-filled relative to its fraction (iterative stratification).

    Args:
        cells: per group, how much it counts towards each cell.
        fractions: split name -> fraction of the groups, in order; the first absorbs rounding.
        seed: the same seed and input give the same assignment.

    Returns:
        The split name of each group, in input order.
    """
    names = list(fractions)
    n = len(cells)
    quota = {s: round(n * fractions[s]) for s in names[1:]}
    quota[names[0]] = n - sum(quota.values())
    totals: Counter[Hashable] = Counter()
    for c in cells:
        totals.update(c)
    have: dict[str, Counter[Hashable]] = {s: Counter() for s in names}
    left = dict(quota)
    out = [""] * n
    for i in np.random.default_rng([seed, 1 << 30]).permutation(n):

        def deficit(s: str, i: int = int(i)) -> float:
            f = fractions[s]
            return sum(k * (f * totals[c] - have[s][c]) / (f * totals[c]) for c, k in cells[i].items())

        split = max((s for s in names if left[s] > 0), key=deficit)
        out[i], left[split] = split, left[split] - 1
        have[split].update(cells[i])
    return out
