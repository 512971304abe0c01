"""Greedy decoding with a KV cache, in numpy. Knows nothing about images, text or onnxruntime:
it calls ``step(input_ids, past_key, past_value) -> (logits, present_key, present_value)``.

It reproduces transformers' greedy ``generate`` for BLIP: start from bos, take the argmax of the
last position, stop a sequence at eos ([SEP]) and pad it afterwards, stop when all are done or
after ``max_new_tokens``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Step = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class DecodingOptions:
    bos_id: int  # first decoder input ([DEC] for BLIP)
    eos_id: int  # ends an answer ([SEP])
    pad_id: int  # fed to finished sequences
    max_new_tokens: int  # upper bound on generated tokens, eos included
    min_new_tokens: int = 0  # eos is suppressed before this many tokens (fixed-length benchmarks)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise ValueError("min_new_tokens must be between 0 and max_new_tokens")


def greedy(step: Step, empty_past: np.ndarray, batch: int, opts: DecodingOptions) -> list[list[int]]:
    """Generated ids per sequence, without bos, up to and including eos when it was produced.

    Args:
        step: one decoder call over the new ids and the cache so far.
        empty_past: a zero-length cache [layers, batch, heads, 0, head_dim] to start from.
        batch: number of sequences.
        opts: token ids and length limit.
    """
    ids = np.full((batch, 1), opts.bos_id, dtype=np.int64)
    past_k, past_v = empty_past, empty_past
    done = np.zeros(batch, dtype=bool)
    out: list[list[int]] = [[] for _ in range(batch)]
    for n in range(opts.max_new_tokens):
        logits, past_k, past_v = step(ids, past_k, past_v)
        last = logits[:, -1, :]
        if n < opts.min_new_tokens:  # as transformers' MinNewTokensLogitsProcessor: eos can't win
            last = last.copy()
            last[:, opts.eos_id] = -np.inf
        nxt = last.argmax(axis=-1)
        nxt = np.where(done, opts.pad_id, nxt)
        for i in np.flatnonzero(~done):
            out[i].append(int(nxt[i]))
        done |= nxt == opts.eos_id
        if done.all():
            break
        ids = nxt[:, None].astype(np.int64)
    return out
