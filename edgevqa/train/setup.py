"""What a training run starts from: absolute paths, its data, its base model and tokenizer, the
device and the precision it trains in.

Example:
    >>> from edgevqa.train.recipes import config_for
    >>> cfg = config_for("vqa", init="runs/dapt", data="data/vqa-rad", out="runs/vqa")
    >>> absolute_paths(cfg).base  # doctest: +SKIP
    '/home/me/runs/dapt'
"""

from __future__ import annotations

import contextlib
import functools
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgevqa.config import CAPTION_RECIPES, TrainConfig
from edgevqa.data.captions import load_captions
from edgevqa.data.records import load_split
from edgevqa.errors import InputError
from edgevqa.train import lora, models


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Store local paths absolute, so export and bench find the base and data from any directory.

    ``--init RUN`` becomes the base: the run's model/ is what this run starts from.
    """
    data = str(Path(cfg.data).expanduser().resolve())
    if cfg.init:
        init = Path(cfg.init).expanduser().resolve()
        if models.resolve_model_dir(str(init)) is None:
            raise InputError(f"--init {cfg.init}: no such run (expected a RUN folder with model/)")
        return replace(cfg, data=data, init=str(init), base=str(init))
    base = Path(cfg.base).expanduser()
    return replace(cfg, data=data, base=str(base.resolve()) if base.exists() else cfg.base)


def words_of(texts: list[str]) -> set[str]:
    return {w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())}


def load_data(cfg: TrainConfig) -> tuple[list, list]:
    """Train and val records: captions for dapt, dapt-sd and caption, VQA records otherwise."""
    if cfg.recipe in CAPTION_RECIPES:
        return load_captions(cfg.data, "train"), load_captions(cfg.data, "val")
    return load_split(cfg.data, "train"), load_split(cfg.data, "val")


def vocabulary_texts(cfg: TrainConfig, train_items: list) -> list[str]:
    """The texts a preset's tokenizer is built from: the training questions and answers, or the
    captions (plus the questions and answers when the folder holds a VQA split too, so that a
    following vqa run in the same folder reads whole words)."""
    if cfg.recipe not in CAPTION_RECIPES:
        return [r.question for r in train_items] + [r.answer for r in train_items]
    texts = [r.caption for r in train_items]
    if (Path(cfg.data) / "train.jsonl").is_file():
        recs = load_split(cfg.data, "train")
        texts += [r.question for r in recs] + [r.answer for r in recs]
    return texts


def load_model(cfg: TrainConfig, run: Path, texts: list[str]) -> models.Loaded:
    """The base model: a preset built from its config, or a pretrained folder / hub id / RUN."""
    if cfg.base in models.PRESETS:
        if cfg.lora:
            raise InputError(
                "--lora adapts a trained model: train tiny-blip fully first, then `--base RUN --lora`"
            )
        from edgevqa.train.tokenizer import build_wordpiece_tokenizer

        tok_dir = run / "tokenizer"
        if (tok_dir / "tokenizer.json").is_file():
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(tok_dir)
        else:
            tok = build_wordpiece_tokenizer(words_of(texts), tok_dir)
        model = models.build_tiny(tok, cfg.image_size, cfg.seed)
        return models.Loaded(model, tok, models.image_spec_for(cfg.image_size), cfg.base)
    loaded = models.load_pretrained(cfg.base)
    loaded.tokenizer.save_pretrained(run / "tokenizer")
    return loaded


def prepare(model: Any, cfg: TrainConfig) -> Any:
    """VQA recipes: freeze the vision encoder (paper 000 eq. 10) and/or wrap with LoRA."""
    if cfg.freeze_vision:
        for p in model.vision_model.parameters():
            p.requires_grad_(False)
    return lora.wrap(model, cfg) if cfg.lora else model


def pick_device(cfg: TrainConfig) -> Any:
    import torch

    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: torch sees no CUDA GPU (use --device cpu or auto)")
    return torch.device("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")


def mixed_precision(device: Any, cfg: TrainConfig) -> tuple[Any, Any, str]:
    """(autocast context factory, GradScaler or None, label). CUDA only: CPU runs stay fp32.

    bf16 where the GPU has it (no loss scaling needed), else fp16 with a GradScaler.
    """
    import torch

    if device.type != "cuda" or not cfg.amp:
        return contextlib.nullcontext, None, "fp32"
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    label = "bf16" if dtype == torch.bfloat16 else "fp16"
    return functools.partial(torch.autocast, device_type="cuda", dtype=dtype), scaler, f"{label} autocast"
