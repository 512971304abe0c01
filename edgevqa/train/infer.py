"""Greedy answers from a PyTorch BLIP VQA model with transformers' ``generate`` — the reference
every exported graph is compared against.

Questions are batched only with questions of the same token length: ``generate`` lets the
decoder attend to question pads while ``forward`` masks them (shared/notes, pitfall 5), so
equal-length batches make batched answers identical to one-at-a-time answers.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from edgevqa.train.base import Generated
from edgevqa.train.data import Encoded, ImageCache


def generate_answers(
    model: Any,
    tokenizer: Any,
    enc: Encoded,
    images: ImageCache,
    max_answer_tokens: int,
    batch_size: int = 64,
    progress: bool = False,
) -> Generated:
    import torch
    from tqdm.auto import tqdm

    batches = length_batches([len(q) for q in enc.question_ids], batch_size)
    texts: list[str] = [""] * len(enc.records)
    ids: list[list[int]] = [[] for _ in enc.records]
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for idx in tqdm(batches, desc="pytorch generate", disable=not progress or None, leave=False):
            out = generate_batch(model, enc, images, idx, max_answer_tokens)
            for i, seq in zip(idx, out):
                ids[i] = strip_answer(seq, tokenizer.sep_token_id, tokenizer.pad_token_id)
                texts[i] = tokenizer.decode(ids[i], skip_special_tokens=True)
    model.train(was_training)
    return Generated(texts, ids)


def sampling_kwargs(sampling: Any, n: int) -> dict[str, Any]:
    """generate()'s arguments for ``n`` sampled answers (temperature, top-k, top-p: runtime/decoding.py)."""
    return dict(
        do_sample=True,
        temperature=sampling.temperature,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        num_beams=1,
        num_return_sequences=n,
    )


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices in batches of one input length each (no padding can change an answer)."""
    by_len: dict[int, list[int]] = defaultdict(list)
    for i, n in enumerate(lengths):
        by_len[n].append(i)
    return [idx[s : s + batch_size] for idx in by_len.values() for s in range(0, len(idx), batch_size)]


def generate_batch(
    model: Any, enc: Encoded, images: ImageCache, idx: list[int], max_answer_tokens: int
) -> list:
    import torch

    device = next(model.parameters()).device  # a model trained on CUDA answers there too
    pixels = torch.from_numpy(np.stack([images.get(enc.image_paths[i]) for i in idx])).to(device)
    q = torch.tensor([enc.question_ids[i] for i in idx], dtype=torch.long, device=device)
    out = model.generate(
        input_ids=q,
        pixel_values=pixels,
        attention_mask=torch.ones_like(q),
        max_new_tokens=max_answer_tokens,
        do_sample=False,
        num_beams=1,
    )
    return out.tolist()


def strip_answer(seq: list[int], sep_id: int, pad_id: int) -> list[int]:
    """Generated ids -> answer ids: drop the leading bos, cut at (and keep) the first [SEP]."""
    body = seq[1:]
    if sep_id in body:
        body = body[: body.index(sep_id) + 1]
    return [t for t in body if t != pad_id]
