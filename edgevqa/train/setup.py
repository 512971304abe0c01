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
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from edgevqa import config
from edgevqa.config import CAPTION_RECIPES, TrainConfig
from edgevqa.data.captions import load_captions, load_optional_captions
from edgevqa.data.records import load_optional_split, load_split
from edgevqa.errors import InputError, first_line
from edgevqa.families import registry
from edgevqa.train import base as train_base
from edgevqa.train.tokenizer import as_saved


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Store local paths absolute, so export and bench find the base and data from any directory.

    ``--init RUN`` becomes the base: the run's model/ is what this run starts from.
    """
    if cfg.init and train_base.resolve_model_dir(str(Path(cfg.init).expanduser().resolve())) is None:
        raise InputError(f"--init {cfg.init}: no such run (expected a RUN folder with model/)")
    return with_family(resolved_paths(cfg))


def resolved_paths(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its data, init and (local) base as absolute paths, as RUN/config.json keeps them."""
    data = str(Path(cfg.data).expanduser().resolve())
    if cfg.init:
        init = str(Path(cfg.init).expanduser().resolve())
        return replace(cfg, data=data, init=init, base=init)
    base = Path(cfg.base).expanduser()
    return replace(cfg, data=data, base=str(base.resolve()) if base.exists() else cfg.base)


def resumed_config(given: TrainConfig, run: Path) -> TrainConfig:
    """The settings a resumed run continues with: its own (RUN/config.json). Flags given with
    --resume that differ from them are refused, not ignored."""
    saved = config.load(TrainConfig, run / "config.json")
    saved = saved if saved.family else with_family(saved)  # runs before families: all BLIP
    given = resolved_paths(given)
    differ = [
        f"--{f.name.replace('_', '-')} {getattr(given, f.name)!r} (the run has {getattr(saved, f.name)!r})"
        for f in fields(TrainConfig)
        if f.name not in ("family", "out") and getattr(given, f.name) != getattr(saved, f.name)
    ]
    if differ:
        raise InputError(
            f"--resume continues {run} with the settings it started with; these differ: "
            + "; ".join(differ)
            + " (drop them, or start a new run with another --out)"
        )
    return saved


def with_family(cfg: TrainConfig) -> TrainConfig:
    """The config with its base's family, checked against the recipe; refuses what no family loads."""
    family = family_of_base(cfg.base)
    if cfg.family and cfg.family != family:
        raise InputError(f"--base {cfg.base} is a {family} model, not {cfg.family}")
    recipes = registry.side(family, "train").RECIPES
    if cfg.recipe not in recipes:
        raise InputError(
            f"--recipe {cfg.recipe} does not apply to {family} models; they take {', '.join(recipes)}"
        )
    return replace(cfg, family=family)


def family_of_base(base: str) -> str:
    """A preset's family, a local folder's (its config.json), or a hub id's (its config, which needs
    the hub or a local cache; ids that cannot be read are refused with one line)."""
    if family := registry.family_of_preset(base):
        return family
    local = train_base.resolve_model_dir(base)
    if local is not None:
        return registry.family_of_folder(local.parent if local.name == "model" else local) or "blip-vqa"
    return registry.family_of_model_type(hub_model_type(base), base)


def hub_model_type(model_id: str) -> str:
    """``model_type`` of a Hugging Face id from its config, without retries when offline."""
    import os

    from edgevqa._deps import hub_kwargs, hub_offline_hint, hub_reachable

    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(model_id, **hub_kwargs(model_id)).model_type
    except (OSError, ValueError) as e:
        if not hub_reachable():
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            raise InputError(
                f"cannot read {model_id!r}: it is not in the local cache{hub_offline_hint(offline)}"
            ) from None
        raise InputError(f"cannot read {model_id!r}: {first_line(e)}{hub_offline_hint(False)}") from None


def words_of(texts: list[str]) -> set[str]:
    return {w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())}


def load_data(cfg: TrainConfig) -> tuple[list, list]:
    """Train and val records: captions for dapt, dapt-sd and caption, VQA records otherwise."""
    if cfg.recipe in CAPTION_RECIPES:
        load_optional_captions(cfg.data, "test")  # a malformed test split fails now, not after training
        return load_captions(cfg.data, "train"), load_captions(cfg.data, "val")
    load_optional_split(cfg.data, "test")
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


def load_model(cfg: TrainConfig, run: Path, texts: list[str]) -> train_base.Loaded:
    """The base model: a preset built from its config, or a pretrained folder / hub id / RUN."""
    fam = registry.side(cfg.family or family_of_base(cfg.base), "train")
    if registry.family_of_preset(cfg.base):
        if cfg.lora:
            raise InputError(
                f"--lora adapts a trained model: train {cfg.base} fully first, then `--base RUN --lora`"
            )
        return fam.build_preset(cfg.base, sorted(words_of(texts)), run / "tokenizer", cfg)
    loaded = fam.load_pretrained(cfg.base)
    as_saved(loaded.tokenizer).save_pretrained(run / "tokenizer")
    return loaded


def prepare(model: Any, cfg: TrainConfig) -> Any:
    """Freeze and wrap for the recipe (the family decides what its recipes train)."""
    return registry.side(cfg.family, "train").prepare(model, cfg)


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
