"""Sampling in numpy: the logit filters by hand and against transformers, greedy limits, seeds."""

from __future__ import annotations

import numpy as np
import pytest

from edgevqa.runtime.decoding import DecodingOptions, SamplingOptions, filter_logits, greedy, sample, softmax

V, BOS, EOS, PAD = 12, 1, 2, 0
EMPTY = np.zeros((1, 1, 1, 0, 2), np.float32)


def random_step(seed: int):
    """A decoder whose logits depend on the step, the row and the fed id (so choices propagate)."""
    table = np.random.default_rng(seed).normal(0, 2, (16, V, V)).astype(np.float32)

    def step(ids, past_k):
        n = past_k.shape[3]
        logits = table[n, ids[:, -1]][:, None, :]
        grown = np.zeros((*past_k.shape[:3], n + 1, past_k.shape[4]), np.float32)
        return logits, grown

    return step


def first(batch: int, bos: int = BOS) -> np.ndarray:
    return np.full((batch, 1), bos, dtype=np.int64)


def opts(max_new: int = 6, min_new: int = 0) -> DecodingOptions:
    return DecodingOptions((EOS,), PAD, max_new_tokens=max_new, min_new_tokens=min_new)


def empty(batch: int) -> np.ndarray:
    return np.zeros((1, batch, 1, 0, 2), np.float32)


def test_top_k_keeps_the_k_largest_and_ties():
    z = np.array([[1.0, 3.0, 2.0, 3.0, 0.0]])
    kept = np.isfinite(filter_logits(z, SamplingOptions(top_k=2)))
    assert kept.tolist() == [[False, True, False, True, False]]
    kept = np.isfinite(filter_logits(z, SamplingOptions(top_k=3)))
    assert kept.tolist() == [[False, True, True, True, False]]
    assert np.isfinite(filter_logits(z, SamplingOptions(top_k=0))).all()


def test_top_p_by_hand():
    # probabilities .1 .5 .05 .2 .15 -> sorted .5 .2 .15 .1 .05, mass before each: 0 .5 .7 .85 .95
    z = np.log(np.array([[0.1, 0.5, 0.05, 0.2, 0.15]]))
    p = softmax(filter_logits(z, SamplingOptions(top_k=0, top_p=0.75)))  # keeps .5 .2 .15 (0.85)
    assert p[0] == pytest.approx([0, 0.5 / 0.85, 0, 0.2 / 0.85, 0.15 / 0.85])
    p = softmax(filter_logits(z, SamplingOptions(top_k=0, top_p=0.55)))  # .5 + .2 reaches .55
    assert p[0] == pytest.approx([0, 0.5 / 0.7, 0, 0.2 / 0.7, 0])
    p = softmax(filter_logits(z, SamplingOptions(top_k=0, top_p=0.45)))  # the top token alone
    assert p[0] == pytest.approx([0, 1, 0, 0, 0])


def test_temperature_scales_logits():
    z = np.array([[1.0, 2.0, 4.0]])
    assert filter_logits(z, SamplingOptions(temperature=2.0, top_k=0)) == pytest.approx(z / 2)


def test_filters_match_transformers_warpers():
    torch = pytest.importorskip("torch")
    gen = pytest.importorskip("transformers.generation.logits_process")
    z = np.random.default_rng(0).normal(0, 3, (4, 40)).astype(np.float32)
    for t, k, p in [(0.7, 10, 1.0), (1.0, 0, 0.8), (1.3, 5, 0.6), (1.0, 50, 0.95)]:
        scores = torch.from_numpy(z.copy())
        for w in (
            gen.TemperatureLogitsWarper(t),
            gen.TopKLogitsWarper(k) if k else None,
            gen.TopPLogitsWarper(p),
        ):
            if w is not None and not (isinstance(w, gen.TopPLogitsWarper) and p == 1.0):
                scores = w(None, scores)
        ours = filter_logits(z, SamplingOptions(t, k, p))
        assert (np.isfinite(ours) == torch.isfinite(scores).numpy()).all(), (t, k, p)
        assert softmax(ours) == pytest.approx(torch.softmax(scores.double(), -1).numpy(), abs=1e-6)


def test_temperature_zero_and_top_k_one_are_greedy():
    for seed in range(5):
        ref = greedy(random_step(seed), first(3), empty(3), opts())
        rng = np.random.default_rng(seed)
        assert (
            sample(random_step(seed), first(3), empty(3), opts(), SamplingOptions(temperature=0.0), rng)
            == ref
        )
        assert sample(random_step(seed), first(3), empty(3), opts(), SamplingOptions(top_k=1), rng) == ref
        cold = SamplingOptions(temperature=1e-6, top_k=0)  # temperature -> 0
        assert sample(random_step(seed), first(3), empty(3), opts(), cold, rng) == ref


def test_seeds_reproduce_and_rows_draw_independently():
    s = SamplingOptions(temperature=1.5, top_k=0)

    def draw(seed: int) -> list[list[int]]:
        return sample(random_step(0), first(8), empty(8), opts(), s, np.random.default_rng(seed))

    assert draw(3) == draw(3)
    assert draw(3) != draw(4)
    assert len({tuple(x) for x in draw(3)}) > 1  # eight rows of the same question differ


def test_sampling_follows_the_filtered_distribution():
    probs = np.array([0.5, 0.2, 0.15, 0.1, 0.05])

    def step(ids, past_k):
        return np.log(np.tile(probs, (ids.shape[0], 1, 1))), past_k

    o = DecodingOptions(eos_ids=(8,), pad_id=7, max_new_tokens=1)
    n = 20000
    got = np.array(sample(step, first(n), empty(n), o, SamplingOptions(top_k=0), np.random.default_rng(0)))[
        :, 0
    ]
    assert np.bincount(got, minlength=5) / n == pytest.approx(probs, abs=0.015)
    got = np.array(sample(step, first(n), empty(n), o, SamplingOptions(top_k=2), np.random.default_rng(0)))[
        :, 0
    ]
    assert np.bincount(got, minlength=5) / n == pytest.approx([5 / 7, 2 / 7, 0, 0, 0], abs=0.015)


def test_min_new_tokens_and_eos_padding_hold_when_sampling():
    s, rng = SamplingOptions(temperature=2.0, top_k=0), np.random.default_rng(1)
    for seq in sample(random_step(2), first(16), empty(16), opts(max_new=8, min_new=3), s, rng):
        assert EOS not in seq[:3] and len(seq) <= 8
        assert EOS not in seq[:-1]  # a sequence ends at its first eos


def test_sampling_options_are_validated():
    for bad in ({"temperature": -1.0}, {"top_k": -1}, {"top_p": 0.0}, {"top_p": 1.5}):
        with pytest.raises(ValueError):
            SamplingOptions(**bad)
