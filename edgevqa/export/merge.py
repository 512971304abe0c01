"""Load a training run as one plain BLIP model: LoRA adapters merged into the base weights.

A merge is accepted only if the merged model answers exactly as the adapted one did (same
greedy token ids on the validation questions) and its logits stay within float noise.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edgevqa import config
from edgevqa.config import TrainConfig
from edgevqa.errors import InputError, ValidationError
from edgevqa.train import models
from edgevqa.train.data import Encoded, make_batch
from edgevqa.train.infer import generate_answers

log = logging.getLogger("edgevqa.export")


@dataclass
class MergedRun:
    loaded: models.Loaded  # the plain (merged) model, its tokenizer and image settings
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
    return config.load(TrainConfig, run / "config.json")


def load_adapted(run: Path, cfg: TrainConfig) -> models.Loaded:
    from peft import PeftModel

    base = models.load_pretrained(cfg.base)
    model = PeftModel.from_pretrained(base.model, str(run / "adapter")).eval()
    return models.Loaded(model, base.tokenizer, base.image, cfg.base)


def merge_run(run: Path, probe: Encoded | None, images_for: Any) -> MergedRun:
    """The run's model with any LoRA merged; ``probe`` questions prove the merge changed nothing.

    Args:
        run: training run folder.
        probe: encoded validation questions (None: skip the answer comparison).
        images_for: callable ImageSpec -> ImageCache (the caller owns the cache).
    """
    cfg = read_run(run)
    if not (run / "adapter").is_dir():
        return MergedRun(models.load_pretrained(str(run / "model")), cfg, lora=False)
    adapted = load_adapted(run, cfg)
    tok = adapted.tokenizer
    report: dict[str, Any] = {"lora": True}
    if probe is not None:
        images = images_for(adapted.image)
        batch = make_batch(probe, list(range(min(16, len(probe.records)))), images, tok.pad_token_id)
        with torch.inference_mode():
            logits_before = _logits(adapted.model, batch)
        before = generate_answers(adapted.model.get_base_model(), tok, probe, images, cfg.max_answer_tokens)
    merged = adapted.model.merge_and_unload()
    if probe is not None:
        with torch.inference_mode():
            diff = (_logits(merged, batch) - logits_before).abs().max().item()
        after = generate_answers(merged, tok, probe, images, cfg.max_answer_tokens)
        same = sum(a == b for a, b in zip(before.token_ids, after.token_ids))
        report.update(probe_questions=len(probe.records), identical_answers=same, max_logit_diff=diff)
        if same != len(probe.records) or diff > 1e-3:
            raise ValidationError(
                f"merging the LoRA adapter changed answers ({same}/{len(probe.records)} identical, "
                f"max logit diff {diff:.2e}); the adapter and base do not fit together"
            )
        log.info("merge: %d/%d answers identical, max logit diff %.2e", same, len(probe.records), diff)
    return MergedRun(
        models.Loaded(merged.eval(), tok, adapted.image, cfg.base), cfg, lora=True, report=report
    )


def _logits(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """Decoder logits for teacher-forced answers (the full forward pass)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    image = base.vision_model(pixel_values=batch["pixel_values"]).last_hidden_state
    q = base.text_encoder(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], encoder_hidden_states=image
    ).last_hidden_state
    return base.text_decoder(
        input_ids=batch["decoder_input_ids"],
        encoder_hidden_states=q,
        encoder_attention_mask=batch["attention_mask"],
    ).logits
