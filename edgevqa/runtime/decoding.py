"""Greedy decoding and sampling with a KV cache, in numpy, shared by every model family. Knows
nothing about images, text or onnxruntime: it calls ``step(input_ids, state) -> (logits, state)``,
where ``state`` is whatever the family carries between calls (its KV cache). The first call gets
the family's first ids (BLIP: bos with an empty cache; a prefix LM: its whole prompt, the prefill).

``greedy`` reproduces transformers' greedy ``generate``: take the argmax of the last position, stop
a sequence at any of the eos ids and pad it afterwards, stop when all are done or after
``max_new_tokens``. ``sample`` is the same loop drawing each token from the softmax after
transformers' warpers in their order (temperature, top-k, top-p), from a seeded numpy Generator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

Step = Callable[[np.ndarray, Any], tuple[np.ndarray, Any]]


@dataclass(frozen=True)
class DecodingOptions:
    eos_ids: tuple[int, ...]  # any of them ends an answer ([SEP] for BLIP; Gemma may list several)
    pad_id: int  # fed to finished sequences
    max_new_tokens: int  # upper bound on generated tokens, eos included
    min_new_tokens: int = 0  # eos is suppressed before this many tokens (fixed-length benchmarks)

    def __post_init__(self) -> None:
        if not self.eos_ids:
            raise ValueError("eos_ids must name at least one token")
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError("min_new_tokens must be between 0 and max_new_tokens")


@dataclass(frozen=True)
class SamplingOptions:
    temperature: float = 1.0  # logits are divided by it; 0 means greedy (argmax)
    top_k: int = 50  # keep the k most likely tokens (and ties with the k-th); 0: no limit
    top_p: float = 1.0  # keep the fewest most likely tokens whose probability reaches top_p; 1: all

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: no limit), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


Pick = Callable[[np.ndarray], np.ndarray]  # last-position logits [batch, vocab] -> next ids [batch]


def greedy(step: Step, first_ids: np.ndarray, state: Any, opts: DecodingOptions) -> list[list[int]]:
    """Generated ids per sequence (not the first ids), up to and including eos when produced.

    Args:
        step: one decoder call over the new ids and the state so far.
        first_ids: [batch, T] ids of the first call (one row per sequence).
        state: what the first call starts from (e.g. an empty KV cache).
        opts: token ids and length limit.
    """
    return _decode(step, first_ids, state, opts, lambda last: last.argmax(axis=-1))


def sample(
    step: Step,
    first_ids: np.ndarray,
    state: Any,
    opts: DecodingOptions,
    sampling: SamplingOptions,
    rng: np.random.Generator,
) -> list[list[int]]:
    """Like :func:`greedy`, but each token is drawn from the filtered softmax (see module doc).

    Temperature 0 is greedy decoding and draws nothing from ``rng``; every row draws its own token,
    so a batch of one question repeated gives independent samples.
    """
    if sampling.temperature == 0:
        return greedy(step, first_ids, state, opts)

    def pick(last: np.ndarray) -> np.ndarray:
        cdf = np.cumsum(softmax(filter_logits(last, sampling)), axis=-1)
        # inverse CDF: u scaled by the total, so rounding can never point past the last kept token
        u = rng.random(cdf.shape[0])[:, None] * cdf[:, -1:]
        return (cdf <= u).sum(axis=-1)

    return _decode(step, first_ids, state, opts, pick)


def filter_logits(logits: np.ndarray, sampling: SamplingOptions) -> np.ndarray:
    """[batch, vocab] logits divided by the temperature, with what top-k and top-p drop set to -inf
    (transformers' TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper, in that order)."""
    z = logits.astype(np.float64) / (sampling.temperature or 1.0)
    if 0 < sampling.top_k < z.shape[-1]:
        kth = -np.partition(-z, sampling.top_k - 1, axis=-1)[:, sampling.top_k - 1 : sampling.top_k]
        z = np.where(z < kth, -np.inf, z)
    if sampling.top_p < 1:
        order = np.argsort(-z, axis=-1, kind="stable")
        p = np.take_along_axis(softmax(z), order, axis=-1)
        before = np.cumsum(p, axis=-1) - p  # probability of the more likely tokens
        drop_sorted = before >= sampling.top_p  # the first token always stays (before = 0)
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        z = np.where(drop, -np.inf, z)
    return z


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _decode(
    step: Step, first_ids: np.ndarray, state: Any, opts: DecodingOptions, pick: Pick
) -> list[list[int]]:
    ids = np.asarray(first_ids, dtype=np.int64)
    batch = ids.shape[0]
    eos = np.asarray(opts.eos_ids, dtype=np.int64)
    done = np.zeros(batch, dtype=bool)
    out: list[list[int]] = [[] for _ in range(batch)]
    for n in range(opts.max_new_tokens):
        logits, state = step(ids, state)
        last = logits[:, -1, :]
        if n < opts.min_new_tokens:  # as transformers' MinNewTokensLogitsProcessor: eos can't win
            last = last.copy()
            last[:, eos] = -np.inf
        nxt = pick(last)
        nxt = np.where(done, opts.pad_id, nxt)
        for i in np.flatnonzero(~done):
            out[i].append(int(nxt[i]))
        done |= (nxt[:, None] == eos).any(axis=1)  # 2 us a step; np.isin takes 11 us here
        if done.all():
            break
        ids = nxt[:, None].astype(np.int64)
    return out
