"""VQA records -> model tensors: images through the runtime's own preprocessing, so training and
the torch-free runtime see the same pixels; questions and answers through the HF tokenizer.

Answers follow what BlipForQuestionAnswering.generate() expects (shared/notes, pitfalls 1-4):
they start with the decoder's bos id ([DEC]) and end with [SEP]; the padded ids go in as
``decoder_input_ids`` and the same ids with pads set to -100 as ``labels`` (the decoder shifts).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgevqa.bundle import ImageSpec
from edgevqa.data.records import VQARecord
from edgevqa.errors import InputError
from edgevqa.runtime.images import load_image
from edgevqa.runtime.preprocess import preprocess

_CACHE_LIMIT_BYTES = 2 << 30  # keep preprocessed images in memory up to 2 GiB, else decode per batch


@dataclass
class Encoded:
    """A split, tokenized once; images are decoded lazily and cached when small."""

    records: list[VQARecord]
    image_paths: list[Path]
    question_ids: list[list[int]]
    answer_ids: list[list[int]]

    def subset(self, idx: Any) -> Encoded:
        return Encoded(
            *(
                [field[i] for i in idx]
                for field in (self.records, self.image_paths, self.question_ids, self.answer_ids)
            )
        )


def encode_records(
    records: list[VQARecord], root: str | Path, tokenizer: Any, max_q: int, max_a: int
) -> Encoded:
    q = tokenizer([r.question for r in records], truncation=True, max_length=max_q)["input_ids"]
    a = tokenizer([r.answer for r in records], truncation=True, max_length=max_a + 1)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is None:
        raise InputError("the tokenizer has no bos token ([DEC]); BLIP's decoder starts every answer with it")
    answers = [[bos, *ids[1:]] for ids in a]  # [CLS] -> [DEC]; keeps the final [SEP]
    return Encoded(records, [r.image_path(root) for r in records], q, answers)


class ImageCache:
    """Preprocessed float32 images, keyed by path, kept in memory while they fit."""

    def __init__(self, spec: ImageSpec):
        self.spec = spec
        self.cache: dict[Path, np.ndarray] = {}
        self.per_image = 3 * spec.height * spec.width * 4

    def get(self, path: Path) -> np.ndarray:
        if (hit := self.cache.get(path)) is not None:
            return hit
        arr = preprocess(load_image(path), self.spec)[0]
        if (len(self.cache) + 1) * self.per_image <= _CACHE_LIMIT_BYTES:
            self.cache[path] = arr
        return arr


def pad(seqs: list[list[int]], value: int) -> np.ndarray:
    width = max(len(s) for s in seqs)
    out = np.full((len(seqs), width), value, dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


def make_batch(enc: Encoded, idx: list[int] | np.ndarray, images: ImageCache, pad_id: int) -> dict[str, Any]:
    """Tensors for ``model(**batch)``: pixel_values, input_ids, attention_mask, decoder ids, labels."""
    import torch

    q = pad([enc.question_ids[i] for i in idx], pad_id)
    a = pad([enc.answer_ids[i] for i in idx], pad_id)
    labels = np.where(a == pad_id, -100, a)
    pixels = np.stack([images.get(enc.image_paths[i]) for i in idx])
    return {
        "pixel_values": torch.from_numpy(pixels),
        "input_ids": torch.from_numpy(q),
        "attention_mask": torch.from_numpy((q != pad_id).astype(np.int64)),
        "decoder_input_ids": torch.from_numpy(a),
        "labels": torch.from_numpy(labels),
    }


def to_device(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    """The batch's tensors on ``device`` (a no-op on CPU)."""
    return {k: v.to(device) for k, v in batch.items()}
