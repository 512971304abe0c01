"""BLIP VQA behind the runtime's seam: the image's cross-attention keys/values once per image,
the question encoder once per answer, then the answer decoder one token at a time from bos.

Graphs (edgevqa/families/blip_vqa.py): vision_encoder -> image_key/value; question_encoder ->
cross_key/value; decoder_step (and, in TensorRT bundles, decoder_first for the empty cache).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgevqa.bundle import Manifest
from edgevqa.runtime.tokenizer import QuestionTokenizer


@dataclass(frozen=True)
class State:
    """The decoder's KV cache so far and the question's cross-attention keys/values."""

    past_key: np.ndarray  # [layers, rows, heads, past, head_dim]
    past_value: np.ndarray
    cross_key: np.ndarray  # [layers, rows, heads, question, head_dim]
    cross_value: np.ndarray


class Model:
    """The three BLIP graphs as ``encode_image`` / ``start`` / ``step`` for the shared decoder loop."""

    def __init__(self, manifest: Manifest, sessions: dict[str, Any], tokenizer: QuestionTokenizer):
        self.manifest, self.sessions, self.tokenizer = manifest, sessions, tokenizer
        t = manifest.text
        self.eos_ids, self.pad_id, self.bos_id = t.eos, t.pad_id, t.bos_id

    def prompt_ids(self, question: str) -> np.ndarray:
        """[1, Q] question ids ([CLS] ... [SEP]), truncated as the HF tokenizer truncates."""
        return self.tokenizer.encode(question, self.manifest.text.max_question_tokens)[None, :]

    def encode_image(self, pixels: np.ndarray) -> tuple[np.ndarray, ...]:
        """Every text layer's cross-attention keys and values of the image tokens, [L,1,H,N,d] each."""
        return tuple(self.sessions["vision_encoder"].run(None, {"pixel_values": pixels}))

    def start(
        self, image: tuple[np.ndarray, ...], prompt: np.ndarray, rows: int = 1
    ) -> tuple[np.ndarray, State]:
        """The question encoder's pass; the decoder then starts from bos with an empty cache."""
        feed = {
            "input_ids": prompt,
            "attention_mask": np.ones_like(prompt),
            "image_key": image[0],
            "image_value": image[1],
        }
        ck, cv = self.sessions["question_encoder"].run(None, feed)
        if rows > 1:
            ck, cv = np.repeat(ck, rows, axis=1), np.repeat(cv, rows, axis=1)
        empty = np.zeros((*ck.shape[:3], 0, ck.shape[4]), dtype=ck.dtype)
        return np.full((rows, 1), self.bos_id, dtype=np.int64), State(empty, empty, ck, cv)

    def step(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """One decoder call: logits [rows, T, V] for the new ids and the grown cache. Bundles for
        TensorRT have a first-step graph without a cache; it takes the steps that start from none."""
        feed = {"input_ids": ids, "cross_key": state.cross_key, "cross_value": state.cross_value}
        if state.past_key.shape[3] == 0 and "decoder_first" in self.sessions:
            logits, k, v = self.sessions["decoder_first"].run(None, feed)
        else:
            feed = {**feed, "past_key": state.past_key, "past_value": state.past_value}
            logits, k, v = self.sessions["decoder_step"].run(None, feed)
        return logits, State(k, v, state.cross_key, state.cross_value)

    def candidate_ids(self, candidate: str) -> list[int]:
        """A rank-mode candidate as the answer tokens generate() would produce: text ids + [SEP]."""
        ids = self.tokenizer.encode(candidate, self.manifest.text.max_answer_tokens + 1).tolist()
        return ids[1:]  # drop [CLS]; keeps the final [SEP]
