"""Load a training run as one plain model of its family: LoRA adapters merged into the base weights.

A merge is accepted only if the merged model answers exactly as the adapted one did (same
greedy token ids on the validation questions) and its logits stay within float noise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from edgevqa import config
from edgevqa.config import TrainConfig
from edgevqa.errors import InputError, ValidationError, first_line
from edgevqa.families import registry
from edgevqa.train.base import Loaded

log = logging.getLogger("edgevqa.export")


@dataclass
class MergedRun:
    loaded: Loaded  # the plain (merged) model, its tokenizer and image settings
    train_cfg: TrainConfig
    lora: bool
    report: dict[str, Any] = field(default_factory=dict)


def read_run(run: Path) -> TrainConfig:
    if not (run / "config.json").is_file():
        raise InputError(f"{run} is not a training run (no config.json); train one with `edgevqa train`")
    if not (run / "model").is_dir() and not (run / "adapter").is_dir():
        raise InputError(
            f"{run} has no model/ or adapter/: the training did not finish (resume it with --resume)"
        )
    cfg = config.load(TrainConfig, run / "config.json")
    return cfg if cfg.family else replace(cfg, family="blip-vqa")  # runs before families: all BLIP


def load_adapted(base: Loaded, adapter: Path) -> Loaded:
    """``base`` with the peft adapter in ``adapter`` (refused when it was made for another base)."""
    from peft import PeftConfig, PeftModel

    check_adapter(base, adapter)
    try:
        PeftConfig.from_pretrained(str(adapter))
        model = PeftModel.from_pretrained(base.model, str(adapter)).eval()
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise InputError(f"cannot apply the adapter in {adapter} to {base.source}: {first_line(e)}") from None
    return Loaded(model, base.tokenizer, base.image, base.source, base.family, base.extra)


def check_adapter(base: Loaded, adapter: Path) -> None:
    """Refuse an adapter made for another model: every module it adapts must exist in ``base``
    with the shapes it was trained on (peft itself only warns about missing modules)."""
    import json

    cfg_path = adapter / "adapter_config.json"
    if not cfg_path.is_file():
        raise InputError(f"{adapter} is not a peft adapter (no adapter_config.json)")
    try:
        raw = json.loads(cfg_path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{cfg_path} is not valid JSON ({e})") from None
    want = raw.get("base_model_name_or_path") or ""
    weights = adapter / "adapter_model.safetensors"
    if not weights.is_file():
        raise InputError(f"{adapter} has no adapter_model.safetensors (only safetensors adapters are loaded)")
    from safetensors import safe_open

    params = dict(base.model.named_parameters())
    with safe_open(str(weights), "pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
            if ".lora_A." not in key:
                continue
            module = key.removeprefix("base_model.model.").split(".lora_A.")[0]
            target = params.get(f"{module}.weight")
            rank_in = f.get_slice(key).get_shape()[1]
            if target is None or target.shape[-1] != rank_in:
                raise InputError(
                    f"the adapter in {adapter} was made for another model ({want or 'unknown base'}): "
                    f"{module} is not in {base.source} with the shape it adapts"
                )


def merge_run(
    cfg: TrainConfig, model: str, adapter: Path | None, encode: Any, images_for: Any
) -> tuple[MergedRun, Any]:
    """The model with any LoRA merged, and its encoded validation questions; they prove the merge
    changed nothing.

    Args:
        cfg: the run's training config (or one made for a model folder / hub id).
        model: the folder or hub id of the plain model (a run's model/, or the adapter's base).
        adapter: a peft adapter folder (a run's adapter/ or one saved elsewhere), or None.
        encode: callable Loaded -> the family's encoded validation questions (None: no probe).
        images_for: callable ImageSpec -> ImageCache (the caller owns the cache).
    """
    fam = registry.side(cfg.family, "train")
    if adapter is None:
        loaded = fam.load_pretrained(model)
        return MergedRun(loaded, cfg, lora=False), encode(loaded)
    adapted = load_adapted(fam.load_pretrained(model), adapter)
    probe = encode(adapted)
    tok = adapted.tokenizer
    report: dict[str, Any] = {"lora": True}
    if probe is not None:
        images = images_for(adapted.image)
        batch = fam.make_batch(adapted, probe, list(range(min(16, len(probe.records)))), images)
        with torch.inference_mode():
            logits_before = fam.teacher_forced_logits(adapted.model, batch)
        before = fam.generate_answers(
            adapted.model.get_base_model(), tok, probe, images, cfg.max_answer_tokens
        )
    merged = adapted.model.merge_and_unload()
    if probe is not None:
        with torch.inference_mode():
            diff = (fam.teacher_forced_logits(merged, batch) - logits_before).abs().max().item()
        after = fam.generate_answers(merged, tok, probe, images, cfg.max_answer_tokens)
        same = sum(a == b for a, b in zip(before.token_ids, after.token_ids))
        report.update(probe_questions=len(probe.records), identical_answers=same, max_logit_diff=diff)
        if same != len(probe.records) or diff > 1e-3:
            raise ValidationError(
                f"merging the LoRA adapter changed answers ({same}/{len(probe.records)} identical, "
                f"max logit diff {diff:.2e}); the adapter and base do not fit together"
            )
        log.info("merge: %d/%d answers identical, max logit diff %.2e", same, len(probe.records), diff)
    loaded = Loaded(merged.eval(), tok, adapted.image, cfg.base, adapted.family, adapted.extra)
    return MergedRun(loaded, cfg, lora=True, report=report), probe


def load_run(run: Path) -> MergedRun:
    """A run's model as export ships it (any LoRA merged), without the probe that proves the merge."""
    cfg = read_run(run)
    adapter = run / "adapter" if (run / "adapter").is_dir() else None
    return merge_run(cfg, cfg.base if adapter else str(run / "model"), adapter, lambda _: None, None)[0]
