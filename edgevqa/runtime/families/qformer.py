"""The Q-Former family behind the runtime's seam: a prefix LM whose prefix is causal. The image's
projected query tokens (vision_encoder) are run through the decoder once per image; their KV
cache depends on the image alone (nothing after them is visible to them), so it is what the image
cache keeps, and a follow-up question prefills only its own tokens on it.

The prompt is ``Blip2Processor``'s: ``"<image>" * Q`` (no specials), then the tokenizer's encoding
of ``template.format(question=q)`` with its special tokens (bos); positions count from 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgevqa.bundle import Manifest
from edgevqa.errors import BundleError, InputError
from edgevqa.runtime.families.prefix_lm import causal_bias, run_step
from edgevqa.runtime.tokenizer import QuestionTokenizer


@dataclass(frozen=True)
class State:
    """The KV cache so far [layers, rows, kv heads, past, head_dim]; ``prefill``: the next call is
    the prompt's (logits at its last position only)."""

    past_key: np.ndarray
    past_value: np.ndarray
    prefill: bool = False

    @property
    def past(self) -> int:
        return self.past_key.shape[3]


class Model:
    """The Q-Former family's graphs as ``encode_image`` / ``start`` / ``step`` for the shared loop."""

    def __init__(self, manifest: Manifest, sessions: dict[str, Any], tokenizer: QuestionTokenizer):
        self.manifest, self.sessions, self.tokenizer = manifest, sessions, tokenizer
        cfg, t = manifest.family_config, manifest.text
        try:
            self.image_token_id = int(cfg["image_token_id"])
            self.num_image_tokens = int(cfg["num_image_tokens"])
            self.template = str(cfg["prompt"])
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"manifest.json family_config lacks a Q-Former setting ({e})") from None
        if "{question}" not in self.template:
            raise BundleError("manifest.json prompt template has no {question} placeholder")
        self.eos_ids, self.pad_id = t.eos, t.pad_id
        d = manifest.decoder
        self.empty = np.zeros((d.num_layers, 1, d.num_heads, 0, d.head_dim), dtype=np.float32)

    def prompt_ids(self, question: str) -> np.ndarray:
        """[1, T] prompt ids: the image placeholders, then the template's text with bos.

        Raises:
            InputError: an empty question, or one whose prompt exceeds the bundle's budget.
        """
        if not question.strip():
            raise InputError("the question is empty")
        text = self.tokenizer.ids_with_specials(self.template.format(question=question))
        if len(text) > self.manifest.text.max_question_tokens:
            raise InputError(
                f"the question makes a prompt of {len(text)} tokens; this bundle takes at most "
                f"{self.manifest.text.max_question_tokens} (shorten the question)"
            )
        return np.asarray([self.image_token_id] * self.num_image_tokens + text, dtype=np.int64)[None, :]

    def encode_image(self, pixels: np.ndarray) -> tuple[np.ndarray, ...]:
        """The query tokens' KV cache [L, 1, KV, Q, d] (keys, values): the image's projected queries
        run through the decoder at positions 0..Q-1."""
        (embeds,) = self.sessions["vision_encoder"].run(None, {"pixel_values": pixels})
        q = embeds.shape[1]
        if q != self.num_image_tokens:
            raise BundleError(
                f"the vision graph gives {q} image tokens, the manifest says {self.num_image_tokens}"
            )
        _, k, v = run_step(
            self.sessions,
            embeds,
            causal_bias(1, q, 0),
            np.arange(q),
            np.array([q - 1]),
            None,
            self.empty,
            prefill=True,
        )
        return k, v

    def start(
        self, image: tuple[np.ndarray, ...], prompt: np.ndarray, rows: int = 1
    ) -> tuple[np.ndarray, State]:
        """The prompt's text (after the image placeholders) goes in whole on the first step."""
        n = self.num_image_tokens
        if prompt.shape[1] <= n or not (prompt[:, :n] == self.image_token_id).all():
            raise InputError(f"the prompt does not start with the image's {n} tokens")
        return np.repeat(prompt[:, n:], rows, axis=0), State(image[0], image[1], prefill=True)

    def step(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """Logits [rows, T, V] for the new ids (the prompt's prefill: [rows, 1, V], its last
        position only) and the grown cache."""
        rows, t = ids.shape
        past = state.past
        if state.prefill:  # every row holds the same prompt: run it once, repeat the cache
            picked, run_ids = np.array([t - 1]), ids[:1]
        else:
            picked, run_ids = np.arange(t), ids
        r = run_ids.shape[0]
        cache = (state.past_key[:, :r], state.past_value[:, :r])
        logits, k, v = run_step(
            self.sessions,
            self._embed(run_ids),
            causal_bias(r, t, past),
            np.arange(past, past + t),
            picked,
            cache,
            self.empty,
            prefill=state.prefill,
        )
        if r < rows:
            logits, k, v = np.repeat(logits, rows, 0), np.repeat(k, rows, 1), np.repeat(v, rows, 1)
        return logits, State(k, v)

    def _embed(self, ids: np.ndarray) -> np.ndarray:
        return self.sessions["embed_tokens"].run(None, {"input_ids": np.ascontiguousarray(ids)})[0]

    def candidate_ids(self, candidate: str) -> list[int]:
        """A rank-mode candidate as the answer tokens generate() would produce: text ids + eos."""
        ids = self.tokenizer.ids(candidate)[: self.manifest.text.max_answer_tokens]
        return [*ids, self.eos_ids[0]]
