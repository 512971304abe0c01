"""What the prefix-LM families' training sides share (PaliGemma, the Q-Former family): the encoded
split, ``generate`` as the reference answerer (greedy, one answer, sampled), and the eos ids.

The families differ in what ``generate`` needs beside the prompt and pixels (PaliGemma: the
prompt's token_type_ids); they pass it as ``extra``, a callable prompt tensor -> keyword arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgevqa.train import infer
from edgevqa.train.base import Generated
from edgevqa.train.data import ImageCache

Extra = Callable[[Any], dict[str, Any]] | None


@dataclass
class Encoded:
    """A split, tokenized once: prompt ids as the processor builds them, answer ids + eos."""

    records: list
    image_paths: list[Path]
    prompt_ids: list[list[int]]
    answer_ids: list[list[int]]

    def subset(self, idx: Any) -> Encoded:
        fields = (self.records, self.image_paths, self.prompt_ids, self.answer_ids)
        return Encoded(*([f[i] for i in idx] for f in fields))


def eos_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every id generate() stops on (the generation config may list several)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    eos = getattr(base.generation_config, "eos_token_id", None)
    eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
    return eos or [tokenizer.eos_token_id]


def cut_at_eos(seq: list[int], eos: list[int]) -> list[int]:
    """Generated ids up to and including the first eos (generate pads after it)."""
    for j, t in enumerate(seq):
        if t in eos:
            return seq[: j + 1]
    return seq


def _generate(model: Any, prompt: Any, pixels: Any, extra: Extra, **kwargs: Any) -> Any:
    import torch

    return model.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        pixel_values=pixels,
        **(extra(prompt) if extra else {}),
        **kwargs,
    )


def generate_answers(
    model: Any,
    tokenizer: Any,
    enc: Encoded,
    images: ImageCache,
    max_answer_tokens: int,
    batch_size: int = 16,
    progress: bool = False,
    extra: Extra = None,
) -> Generated:
    """Greedy answers from ``model.generate`` as a user runs it: batches hold prompts of one
    length only, so no padding changes an answer."""
    import torch
    from tqdm.auto import tqdm

    batches = infer.length_batches([len(p) for p in enc.prompt_ids], batch_size)
    texts, ids = [""] * len(enc.records), [[] for _ in enc.records]
    eos = eos_ids(model, tokenizer)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.inference_mode():
        for idx in tqdm(batches, desc="pytorch generate", disable=not progress or None, leave=False):
            prompt = torch.tensor([enc.prompt_ids[i] for i in idx], device=device)
            pixels = torch.from_numpy(np.stack([images.get(enc.image_paths[i]) for i in idx])).to(device)
            out = _generate(
                model, prompt, pixels, extra, max_new_tokens=max_answer_tokens, do_sample=False, num_beams=1
            )
            for i, seq in zip(idx, out[:, prompt.shape[1] :].tolist()):
                ids[i] = cut_at_eos(seq, eos)
                texts[i] = tokenizer.decode(ids[i], skip_special_tokens=True).strip()
    model.train(was_training)
    return Generated(texts, ids)


def answer(
    model: Any,
    tokenizer: Any,
    prompt_ids: list[int],
    pixels: Any,
    spec: dict[str, Any],
    streamer: Any = None,
    extra: Extra = None,
) -> tuple[str, list[int]]:
    """One greedy answer (the bench's PyTorch side): text and answer ids; ``streamer`` (a
    transformers streamer) sees each token as it is generated."""
    import torch

    ids = torch.tensor([prompt_ids])
    with torch.inference_mode():
        out = _generate(
            model,
            ids,
            torch.from_numpy(pixels),
            extra,
            max_new_tokens=spec["max_new_tokens"],
            min_new_tokens=spec.get("min_new_tokens", 0),
            do_sample=False,
            num_beams=1,
            streamer=streamer,
        )
    seq = cut_at_eos(out[0, ids.shape[1] :].tolist(), eos_ids(model, tokenizer))
    return tokenizer.decode(seq, skip_special_tokens=True).strip(), seq


def sample_answers(
    model: Any,
    tokenizer: Any,
    enc: Encoded,
    images: ImageCache,
    i: int,
    n: int,
    sampling: Any,
    max_answer_tokens: int,
    extra: Extra = None,
) -> list[str]:
    """``n`` answers to question ``i`` sampled by ``generate`` (temperature / top-k / top-p)."""
    import torch

    prompt = torch.tensor([enc.prompt_ids[i]])
    pixels = torch.from_numpy(images.get(enc.image_paths[i]))[None]
    with torch.inference_mode():
        out = _generate(
            model,
            prompt,
            pixels,
            extra,
            max_new_tokens=max_answer_tokens,
            **infer.sampling_kwargs(sampling, n),
        )
    eos = eos_ids(model, tokenizer)
    seqs = [cut_at_eos(s, eos) for s in out[:, prompt.shape[1] :].tolist()]
    return [tokenizer.decode(s, skip_special_tokens=True).strip() for s in seqs]
