"""PaliGemma behind the runtime's seam: a prefix LM. The image's projected tokens (once per image,
cached) are spliced in front of bos + the prompt + "\\n"; the prefill runs the whole prefix at once
with bidirectional attention, then the answer is decoded causally one token at a time.

The prompt is the processor's: ``"<image>" * N + "<bos>" + template.format(question=q) + "\\n"``,
tokenized whole, so the ids equal ``PaliGemmaProcessor``'s. The image tokens attend to the prompt
(bidirectional prefix), so nothing but the image embeddings can be reused by a follow-up question.
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
    """The decoder's state between calls: before the prefill, the prompt's image embeddings; after
    it, the KV cache [layers, rows, kv heads, past, head_dim]."""

    image_embeds: np.ndarray | None  # [1, N, D], until the prefill has spliced it
    past_key: np.ndarray | None = None
    past_value: np.ndarray | None = None

    @property
    def past(self) -> int:
        return 0 if self.past_key is None else self.past_key.shape[3]


class Model:
    """The PaliGemma graphs as ``encode_image`` / ``start`` / ``step`` for the shared decoder loop."""

    def __init__(self, manifest: Manifest, sessions: dict[str, Any], tokenizer: QuestionTokenizer):
        self.manifest, self.sessions, self.tokenizer = manifest, sessions, tokenizer
        cfg, t = manifest.family_config, manifest.text
        try:
            self.image_token_id = int(cfg["image_token_id"])
            self.num_image_tokens = int(cfg["num_image_tokens"])
            self.template = str(cfg["prompt"])
            self.image_token, self.bos_token = str(cfg["image_token"]), str(cfg["bos_token"])
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"manifest.json family_config lacks a PaliGemma setting ({e})") from None
        if "{question}" not in self.template:
            raise BundleError("manifest.json prompt template has no {question} placeholder")
        self.eos_ids, self.pad_id = t.eos, t.pad_id
        d = manifest.decoder
        self.empty = np.zeros((d.num_layers, 1, d.num_heads, 0, d.head_dim), dtype=np.float32)

    def prompt_ids(self, question: str) -> np.ndarray:
        """[1, T] prompt ids: image placeholders, bos, the template's text and "\\n".

        Raises:
            InputError: an empty question, or one whose prompt exceeds the bundle's budget.
        """
        if not question.strip():
            raise InputError("the question is empty")
        prefix = self.image_token * self.num_image_tokens + self.bos_token
        ids = self.tokenizer.ids(prefix + self.template.format(question=question) + "\n")
        text = len(ids) - self.num_image_tokens - 1
        if text > self.manifest.text.max_question_tokens:
            raise InputError(
                f"the question makes a prompt of {text} tokens; this bundle takes at most "
                f"{self.manifest.text.max_question_tokens} (shorten the question)"
            )
        return np.asarray(ids, dtype=np.int64)[None, :]

    def encode_image(self, pixels: np.ndarray) -> tuple[np.ndarray, ...]:
        """The projected image tokens [1, N, D] the decoder's prompt begins with."""
        return tuple(self.sessions["vision_encoder"].run(None, {"pixel_values": pixels}))

    def start(
        self, image: tuple[np.ndarray, ...], prompt: np.ndarray, rows: int = 1
    ) -> tuple[np.ndarray, State]:
        """The prompt goes in whole on the first step (the prefill), for ``rows`` sequences."""
        return np.repeat(prompt, rows, axis=0), State(image[0])

    def step(self, ids: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        """Logits [rows, T, V] for the new ids (the prefill: [rows, 1, V], its last position only)
        and the grown cache."""
        if state.image_embeds is not None:
            return self._prefill(ids, state.image_embeds)
        rows, t = ids.shape
        past = state.past
        positions = np.arange(past + 1, past + t + 1)  # PaliGemma counts from 1
        logits, k, v = run_step(
            self.sessions,
            self._embed(ids),
            causal_bias(rows, t, past),
            positions,
            np.arange(t),
            (state.past_key, state.past_value),
            self.empty,
        )
        return logits, State(None, k, v)

    def _prefill(self, ids: np.ndarray, image_embeds: np.ndarray) -> tuple[np.ndarray, State]:
        rows, t = ids.shape
        row = ids[:1]  # every row holds the same prompt: run it once, repeat the cache
        is_image = row[0] == self.image_token_id
        if int(is_image.sum()) != image_embeds.shape[1]:
            raise InputError(
                f"the prompt holds {int(is_image.sum())} image tokens; the image has {image_embeds.shape[1]}"
            )
        embeds = np.empty((1, t, image_embeds.shape[2]), dtype=np.float32)
        embeds[0, is_image] = image_embeds[0]
        embeds[0, ~is_image] = self._embed(row[:, ~is_image])[0]
        bidirectional = np.zeros((1, 1, t, t), dtype=np.float32)  # the whole prefix sees itself
        logits, k, v = run_step(
            self.sessions,
            embeds,
            bidirectional,
            np.arange(1, t + 1),
            np.array([t - 1]),
            None,
            self.empty,
            prefill=True,
        )
        if rows > 1:
            logits, k, v = np.repeat(logits, rows, 0), np.repeat(k, rows, 1), np.repeat(v, rows, 1)
        return logits, State(None, k, v)

    def _embed(self, ids: np.ndarray) -> np.ndarray:
        return self.sessions["embed_tokens"].run(None, {"input_ids": np.ascontiguousarray(ids)})[0]

    def candidate_ids(self, candidate: str) -> list[int]:
        """A rank-mode candidate as the answer tokens generate() would produce: text ids + eos."""
        ids = self.tokenizer.ids(candidate)[: self.manifest.text.max_answer_tokens]
        return [*ids, self.eos_ids[0]]
