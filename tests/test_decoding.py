"""Greedy decoding over a scripted mock decoder: ids, stopping, lengths, cache growth."""

from __future__ import annotations

import numpy as np
import pytest

from edgevqa.runtime.decoding import DecodingOptions, greedy

V, BOS, EOS, PAD = 10, 1, 2, 0


def scripted(per_seq: list[list[int]]):
    """A step function whose argmax at call n is per_seq[b][n]; it records the inputs it got."""
    calls = []

    def step(ids, past_k):
        n = len(calls)
        calls.append((ids.copy(), past_k.shape[3]))
        logits = np.zeros((ids.shape[0], ids.shape[1], V), dtype=np.float32)
        for b, seq in enumerate(per_seq):
            logits[b, -1, seq[min(n, len(seq) - 1)]] = 1.0
            logits[b, -1, EOS] = max(logits[b, -1, EOS], 0.5)  # eos is always the runner-up
        grown = np.zeros((*past_k.shape[:3], past_k.shape[3] + ids.shape[1], past_k.shape[4]), np.float32)
        return logits, grown

    return step, calls


def first(batch: int, bos: int = BOS) -> np.ndarray:
    return np.full((batch, 1), bos, dtype=np.int64)


def opts(max_new: int, min_new: int = 0) -> DecodingOptions:
    return DecodingOptions(eos_ids=(EOS,), pad_id=PAD, max_new_tokens=max_new, min_new_tokens=min_new)


EMPTY = np.zeros((2, 1, 2, 0, 4), np.float32)


def test_stops_at_eos_and_feeds_back_argmax():
    step, calls = scripted([[5, 6, EOS, 7]])
    assert greedy(step, first(1), EMPTY, opts(8)) == [[5, 6, EOS]]
    assert [c[0].tolist() for c in calls] == [[[BOS]], [[5]], [[6]]]
    assert [c[1] for c in calls] == [0, 1, 2]  # one new position per step: the cache is reused


def test_max_new_tokens_is_respected():
    step, calls = scripted([[5, 6, 7, 8, 9]])
    assert greedy(step, first(1), EMPTY, opts(3)) == [[5, 6, 7]]
    assert len(calls) == 3


def test_min_new_tokens_suppresses_eos():
    step, _ = scripted([[EOS, EOS, EOS, EOS]])
    # eos is the argmax from the start; with min_new=3 the runner-up... is eos too, so the
    # next best (token 0 = PAD with logit 0, first index) wins until eos is allowed
    out = greedy(step, first(1), EMPTY, opts(5, min_new=3))[0]
    assert EOS not in out[:3] and out[3] == EOS and len(out) == 4


def test_batch_pads_finished_sequences_and_stops_when_all_done():
    step, calls = scripted([[5, EOS], [6, 7, 8, EOS]])
    out = greedy(step, first(2), np.zeros((2, 2, 2, 0, 4), np.float32), opts(8))
    assert out == [[5, EOS], [6, 7, 8, EOS]]
    assert calls[2][0][0, 0] == EOS and calls[3][0][0, 0] == PAD  # then pad, as transformers does
    assert len(calls) == 4


def test_deterministic():
    step, _ = scripted([[3, 4, EOS]])
    assert greedy(step, first(1), EMPTY, opts(5)) == greedy(
        scripted([[3, 4, EOS]])[0], first(1), EMPTY, opts(5)
    )


def test_options_are_validated():
    with pytest.raises(ValueError):
        opts(0)
    with pytest.raises(ValueError):
        opts(2, min_new=3)


def test_any_of_several_eos_ids_ends_a_sequence():
    step, _ = scripted([[5, 9, 7], [9, 5, 7]])
    o = DecodingOptions(eos_ids=(EOS, 9), pad_id=PAD, max_new_tokens=6)
    assert greedy(step, first(2), np.zeros((2, 2, 2, 0, 4), np.float32), o) == [[5, 9], [9]]


def test_a_prompt_goes_in_whole_on_the_first_call():
    step, calls = scripted([[5, EOS]])
    assert greedy(step, np.array([[3, 4, 6]]), EMPTY, opts(4)) == [[5, EOS]]
    assert calls[0][0].tolist() == [[3, 4, 6]] and calls[1][0].tolist() == [[5]]
    assert [c[1] for c in calls] == [0, 3]  # the prefill filled the cache with the prompt
