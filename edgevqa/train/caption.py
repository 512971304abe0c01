"""Captioning (paper 002) with the VQA model's own parts: caption batches, the LM loss, beam search.

What is trained and saved: the ``BlipForQuestionAnswering`` itself. Its ``text_decoder`` is run as
BLIP's image-grounded text decoder, cross-attending to the vision encoder's image embeddings
(as in ``BlipForConditionalGeneration``; the decoder's cross-attention takes the vision width, so
this needs no new weights). ``--train`` picks the parts that learn: ``full`` = vision_model +
text_decoder, ``decoder`` = text_decoder, ``encoder`` = vision_model. The text encoder is not on
the captioning path and stays frozen. ``RUN/model/`` is then an ordinary VQA model folder, so
``edgevqa train --recipe vqa --init RUN`` starts from the captioning weights.

Captions follow the answer convention of train/data.py: the decoder sequence starts with the bos
id ([DEC]) and ends with [SEP], which is where ``generate`` starts and stops.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgevqa import atomic
from edgevqa.config import TrainConfig
from edgevqa.data.captions import CaptionRecord, load_optional_captions
from edgevqa.errors import InputError
from edgevqa.eval.metrics import normalize_answer
from edgevqa.train import models
from edgevqa.train.data import ImageCache, pad, to_device

log = logging.getLogger("edgevqa.train")

TRAIN_PARTS = {
    "full": ("vision_model", "text_decoder"),
    "decoder": ("text_decoder",),
    "encoder": ("vision_model",),
}
NUM_BEAMS, MAX_NEW_TOKENS = 4, 128  # paper 002's inference


@dataclass
class Captions:
    """A caption split, tokenized once: encoder form ([CLS] ... [SEP]) and decoder form ([DEC] ... [SEP])."""

    records: list[CaptionRecord]
    image_paths: list[Path]
    text_ids: list[list[int]]
    decoder_ids: list[list[int]]

    def subset(self, idx: Any) -> Captions:
        fields = (self.records, self.image_paths, self.text_ids, self.decoder_ids)
        return Captions(*([f[i] for i in idx] for f in fields))


def max_caption_tokens(model: Any, cfg: TrainConfig) -> int:
    """cfg.max_caption_tokens, capped by the text position table (tiny-blip has 64 positions)."""
    return min(cfg.max_caption_tokens, model.config.text_config.max_position_embeddings)


def encode_captions(records: list[CaptionRecord], root: str | Path, tokenizer: Any, max_len: int) -> Captions:
    ids = tokenizer([r.caption for r in records], truncation=True, max_length=max_len)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is None:
        raise InputError(
            "the tokenizer has no bos token ([DEC]); BLIP's decoder starts every caption with it"
        )
    return Captions(records, [r.image_path(root) for r in records], ids, [[bos, *s[1:]] for s in ids])


def make_caption_batch(data: Captions, idx: Any, images: ImageCache, pad_id: int) -> dict[str, Any]:
    """pixel_values; text ids + mask (encoder); decoder ids + mask + labels; ``positive[i, j]``: image i
    and caption j belong together (same image file or the same caption text)."""
    import torch

    t = pad([data.text_ids[i] for i in idx], pad_id)
    d = pad([data.decoder_ids[i] for i in idx], pad_id)
    paths = [data.image_paths[i] for i in idx]
    texts = [tuple(data.text_ids[i]) for i in idx]
    positive = np.array([[p == q or a == b for q, b in zip(paths, texts)] for p, a in zip(paths, texts)])
    return {
        "pixel_values": torch.from_numpy(np.stack([images.get(p) for p in paths])),
        "input_ids": torch.from_numpy(t),
        "attention_mask": torch.from_numpy((t != pad_id).astype(np.int64)),
        "decoder_input_ids": torch.from_numpy(d),
        "decoder_attention_mask": torch.from_numpy((d != pad_id).astype(np.int64)),
        "labels": torch.from_numpy(np.where(d == pad_id, -100, d)),
        "positive": torch.from_numpy(positive),
    }


def caption_loss(model: Any, image_embeds: Any, batch: dict[str, Any]) -> Any:
    """LM loss of the text decoder on the caption, conditioned on the image embeddings (it shifts)."""
    import torch

    image_mask = torch.ones(image_embeds.shape[:2], dtype=torch.long, device=image_embeds.device)
    return model.text_decoder(
        input_ids=batch["decoder_input_ids"],
        attention_mask=batch["decoder_attention_mask"],
        encoder_hidden_states=image_embeds,
        encoder_attention_mask=image_mask,
        labels=batch["labels"],
        reduction="mean",
    ).loss


def set_trainable(model: Any, part: str) -> None:
    """Only the modules of ``TRAIN_PARTS[part]`` learn; everything else is frozen."""
    keep = TRAIN_PARTS[part]
    for name, p in model.named_parameters():
        p.requires_grad_(name.split(".")[0] in keep)


def generate_captions(
    model: Any,
    tokenizer: Any,
    pixel_values: Any,
    num_beams: int = NUM_BEAMS,
    max_new_tokens: int = MAX_NEW_TOKENS,
) -> list[str]:
    """Captions by beam search (paper 002: 4 beams, at most 128 new tokens; fewer where the model's
    position table is shorter)."""
    import torch

    limit = model.config.text_config.max_position_embeddings - 1  # the bos takes one position
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        image = model.vision_model(pixel_values=pixel_values.to(device)).last_hidden_state
        out = model.text_decoder.generate(
            input_ids=torch.full((image.shape[0], 1), tokenizer.bos_token_id, device=device),
            eos_token_id=tokenizer.sep_token_id,
            pad_token_id=tokenizer.pad_token_id,
            encoder_hidden_states=image,
            encoder_attention_mask=torch.ones(image.shape[:2], dtype=torch.long, device=device),
            num_beams=num_beams,
            max_new_tokens=min(max_new_tokens, limit),
            do_sample=False,
        )
    model.train(was_training)
    return tokenizer.batch_decode(out[:, 1:], skip_special_tokens=True)


# ---------------------------------------------------------------------------------------------
# the caption recipe's task for the training loop (see loop.py for the interface)


class CaptionTask:
    drop_last = False

    def __init__(self, cfg: TrainConfig, loaded: models.Loaded, train: list, val: list, device: Any):
        self.cfg, self.loaded, self.device, self.tok = cfg, loaded, device, loaded.tokenizer
        self.module = loaded.model.to(device)
        set_trainable(self.module, cfg.train_part)
        self.max_len = max_caption_tokens(self.module, cfg)
        self.images = ImageCache(loaded.image)
        self.train = encode_captions(train, cfg.data, self.tok, self.max_len)
        self.val = encode_captions(val, cfg.data, self.tok, self.max_len)
        self.n_train = len(train)

    def batch(self, data: Captions, idx: Any) -> dict[str, Any]:
        return to_device(make_caption_batch(data, idx, self.images, self.tok.pad_token_id), self.device)

    def loss(self, idx: Any, step: int, micro: int) -> tuple[Any, dict[str, float]]:
        b = self.batch(self.train, idx)
        image = self.module.vision_model(pixel_values=b["pixel_values"]).last_hidden_state
        return caption_loss(self.module, image, b), {}

    def after_step(self, step: int, total: int) -> None:
        pass

    def mean_loss(self, data: Captions, limit: int = 0) -> float:
        import torch

        n = min(limit or len(data.records), len(data.records))
        total = 0.0
        with torch.inference_mode():
            for s in range(0, n, self.cfg.batch_size):
                idx = list(range(s, min(n, s + self.cfg.batch_size)))
                b = self.batch(data, idx)
                image = self.module.vision_model(pixel_values=b["pixel_values"]).last_hidden_state
                total += caption_loss(self.module, image, b).item() * len(idx)
        return total / max(n, 1)

    def validate(self, limit: int) -> tuple[float, dict[str, Any]]:
        loss = self.mean_loss(self.val, limit)
        return -loss, {"val_caption_loss": loss}

    def describe(self, score: float) -> str:
        return f"val caption loss {-score:.4f}"

    def split_report(self, data: Captions) -> dict[str, Any]:
        n = min(self.cfg.eval_limit or len(data.records), len(data.records))
        texts: list[str] = []
        for s in range(0, n, self.cfg.batch_size):
            idx = list(range(s, min(n, s + self.cfg.batch_size)))
            texts += generate_captions(self.module, self.tok, self.batch(data, idx)["pixel_values"])
        refs = [r.caption for r in data.records[:n]]
        exact = sum(normalize_answer(a) == normalize_answer(b) for a, b in zip(texts, refs)) / max(n, 1)
        return {
            "n": len(data.records),
            "loss": self.mean_loss(data),
            "generated": n,
            "exact_match": exact,
            "examples": [{"caption": r, "generated": t} for r, t in list(zip(refs, texts))[:3]],
        }

    def report(self) -> dict[str, Any]:
        out = {"val": self.split_report(self.val)}
        if (test := load_optional_captions(self.cfg.data, "test")) is not None:
            out["test"] = self.split_report(encode_captions(test, self.cfg.data, self.tok, self.max_len))
        return out

    def state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return {}, {}

    def load_state(self, state: dict[str, Any], tensors: dict[str, Any]) -> None:
        pass

    def finish(self, run: Path) -> None:
        with atomic.directory(run / "model", overwrite=True) as tmp:
            models.save_model_dir(self.loaded, tmp)
