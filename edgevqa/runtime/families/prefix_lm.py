"""What the prefix-LM families' runtime sides share (not a family): the additive attention masks
their decoder graph takes and one call of that graph (edgevqa/families/prefix_lm.py)."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgevqa.families.spec import PREFILL

NEG = np.finfo(np.float32).min  # what transformers puts where a query may not attend


def causal_bias(rows: int, t: int, past: int) -> np.ndarray:
    """[rows, 1, t, past + t]: new token i sees the cache and the new tokens up to itself."""
    allowed = np.arange(past + t)[None, :] <= past + np.arange(t)[:, None]
    return np.broadcast_to(np.where(allowed, 0.0, NEG).astype(np.float32), (rows, 1, t, past + t)).copy()


def run_step(
    sessions: dict[str, Any],
    embeds: np.ndarray,
    bias: np.ndarray,
    positions: np.ndarray,
    picked: np.ndarray,
    past: tuple[np.ndarray, np.ndarray] | None,
    empty: np.ndarray,
    prefill: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One decoder call: logits at the picked positions and the grown cache. Without a cache the
    first-step graph runs where the bundle has one (TensorRT), else decoder_step on ``empty``.
    A ``prefill`` (a prompt, not answer tokens) runs the bundle's prompt copy of decoder_step
    where it has one (int4 bundles: int8 weights, faster for many rows; spec.PREFILL)."""
    rows, t = embeds.shape[:2]
    feed = {
        "inputs_embeds": embeds,
        "attention_bias": bias,
        "position_ids": np.broadcast_to(positions, (rows, t)).astype(np.int64).copy(),
        "logit_positions": np.broadcast_to(picked, (rows, picked.shape[-1])).astype(np.int64).copy(),
    }
    if past is None and "decoder_first" in sessions:
        return tuple(sessions["decoder_first"].run(None, feed))
    k, v = past if past is not None else (empty, empty)
    graph = PREFILL if prefill and PREFILL in sessions else "decoder_step"
    return tuple(sessions[graph].run(None, {**feed, "past_key": k, "past_value": v}))
