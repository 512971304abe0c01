"""LoRA with peft: BLIP's targets, wrapping (any family's targets), the trainable-parameter report."""

from __future__ import annotations

from typing import Any

from edgevqa.config import TrainConfig

# BLIP module names: text encoder/decoder attention is query/key/value (self and cross); the
# vision tower packs q, k and v into one `qkv` Linear.
VISION_TARGETS = ("qkv", "projection")


def targets(cfg: TrainConfig) -> list[str]:
    names = list(cfg.lora_targets)
    return [n for n in names if n not in VISION_TARGETS] if cfg.freeze_vision else names


def wrap(
    model: Any, cfg: TrainConfig, target_modules: Any = None, modules_to_save: list[str] | None = None
) -> Any:
    """``model`` with LoRA adapters (peft) on ``target_modules`` (default: BLIP's ``targets``);
    ``modules_to_save`` train whole and are saved with the adapter."""
    from peft import LoraConfig, get_peft_model

    lc = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=target_modules if target_modules is not None else targets(cfg),
        bias="none",
        modules_to_save=modules_to_save,
    )
    return get_peft_model(model, lc)


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts, shared weights counted once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total
