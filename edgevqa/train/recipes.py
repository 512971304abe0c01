"""The papers' training recipes as plain default settings. Torch-free.

Precedence, lowest first: ``TrainConfig``'s own defaults < the recipe's settings below < values
given explicitly (CLI flags, or keyword arguments of :func:`config_for`). The resolved values are
what ``RUN/config.json`` records, so a resumed run or an export never consults this table again.

=========  ==================================================================================
default    today's demo: tiny-blip from scratch, all weights, lr 5e-4 (``TrainConfig`` as is).
vqa        paper 000 §3.5 fine-tune: vision encoder frozen (eq. 10), AdamW lr 1e-5, weight decay
           0.01, clip 1.0, cosine to 1e-6 over 15 epochs, batch 8, early stopping with patience 4
           on validation exact match evaluated every epoch. ``--lora`` stays optional.
dapt       paper 000 §3.3: ITC (tau 0.07, no momentum encoder) + ITM (hard negatives) + LM on
           image-caption pairs (captions <= 64 tokens), gradient accumulation 8, lr warm-up
           5e-9 -> 4e-7 then cosine to 1e-9 (see train/dapt.py).
dapt-sd    dapt + progressive self-distillation, eqs. 1-8 (see train/distill.py).
caption    paper 002: captioning fine-tune of the image-grounded decoder, lr 5e-5, gradient
           accumulation 4, ``--train full|decoder|encoder``, captions <= 128 tokens; inference
           with beam search 4, at most 128 new tokens (see train/caption.py).
projector  papers 003/004 stage 1 (PaliGemma): only the multimodal projector trains, everything
           else frozen, 5 epochs; Appendix B: constant lr, weight decay 0, gradient accumulation
           16, batch 6 (fp16 on a GPU).
lora       papers 003/004 stage 2, ``--init`` the stage 1 run: LoRA (peft) on the attention
           projections of the vision tower and the language model; the same training arguments.
qformer-   paper 001 stage 1 (Q-Former family): image captioning for medical concept alignment;
caption    the Q-Former and projection train whole, LoRA on the LLM, the vision encoder frozen.
qformer-   paper 001 stages 2 and 3, ``--init`` the previous stage: general medical VQA (PMC-VQA),
vqa        then radiology VQA (VQA-RAD, SLAKE); the same trainable parts.
=========  ==================================================================================

Paper 001 gives no optimiser settings in the text available here (DeepSpeed on 4 A100s, LoRA,
three stages): every value of its two recipes below is ours (a usual LoRA rate, cosine, no decay).

Not given by the papers, chosen here (and marked "ours" below): AdamW betas (PyTorch's
0.9/0.999), the dapt batch size, epochs and warm-up length, the dapt weight decay (BLIP's
pretraining value 0.05) and clipping, and the caption recipe's batch size, weight decay, schedule
and patience. The paper 000 schedule of §3.4.4 is stated for the self-distillation stage; dapt uses it
too, so that the two rows of its Table 1 differ only by the distillation.

Example:
    >>> cfg = config_for("vqa", data="data/vqa-rad", out="runs/vqa", lr=3e-5)
    >>> cfg.lr, cfg.weight_decay, cfg.freeze_vision
    (3e-05, 0.01, True)
"""

from __future__ import annotations

from typing import Any

from edgevqa.config import RECIPES, TrainConfig
from edgevqa.errors import InputError

_ADAMW = {"betas": (0.9, 0.999)}  # ours: the papers say "AdamW" only

_DAPT: dict[str, Any] = {
    **_ADAMW,
    "lr": 4e-7,  # §3.4.4: linear warm-up from 5e-9 to 4e-7 ...
    "warmup_start_lr": 5e-9,
    "min_lr": 1e-9,  # ... followed by cosine decay to 1e-9
    "grad_accum": 8,  # §3.4.4: gradient accumulation (8 steps)
    "max_caption_tokens": 64,  # §3.3.1: maximum 64 tokens per caption
    "warmup_steps": 100,  # ours
    "epochs": 5.0,  # ours
    "batch_size": 16,  # ours (an optimizer step sees 16 x 8 = 128 pairs)
    "weight_decay": 0.05,  # ours: BLIP's pretraining value
    "grad_clip": 1.0,  # ours
    "eval_every": 0,
}

# Papers 003/004, Appendix B (training arguments of both stages). The learning rate's value is
# missing from the table: 1e-4 with no warm-up is ours (a usual LoRA / projector rate).
_PALIGEMMA: dict[str, Any] = {
    "lr_schedule": "constant",
    "lr": 1e-4,  # ours
    "warmup_steps": 0,  # constant from the first step
    "weight_decay": 0.0,
    "grad_accum": 16,
    "batch_size": 6,
    "epochs": 3.0,  # ours (stage 2)
}

# Paper 001: all ours (see the module doc).
_QFORMER: dict[str, Any] = {
    **_ADAMW,
    "lora": True,
    "freeze_vision": True,
    "lr": 1e-4,
    "min_lr": 1e-6,
    "warmup_steps": 0,
    "weight_decay": 0.0,
    "epochs": 3.0,
    "batch_size": 16,
}

DEFAULTS: dict[str, dict[str, Any]] = {
    "default": {},
    "vqa": {
        **_ADAMW,
        "freeze_vision": True,  # §3.5.2 eq. (10)
        "lr": 1e-5,  # §3.5.3
        "min_lr": 1e-6,  # §3.5.3: cosine annealing with minimum lr 1e-6 ...
        "epochs": 15.0,  # ... over 15 epochs
        "warmup_steps": 0,  # §3.5.3 names no warm-up
        "weight_decay": 0.01,  # §3.5.3
        "grad_clip": 1.0,  # §3.5.3
        "batch_size": 8,  # §3.5.3
        "patience": 4,  # §3.5.3: early stopping with patience of 4 epochs
        "eval_every": 0,  # evaluated per epoch (patience) instead
        "eval_limit": 0,  # the whole validation split decides early stopping
    },
    "dapt": dict(_DAPT),
    "dapt-sd": dict(_DAPT),
    "projector": dict(_PALIGEMMA, epochs=5.0),  # §4.4: "the projection layer for 5 epochs on SLAKE"
    "lora": dict(_PALIGEMMA, lora=True),
    "qformer-caption": dict(_QFORMER, max_caption_tokens=64, eval_every=0),
    "qformer-vqa": dict(_QFORMER),
    "caption": {
        **_ADAMW,
        "lr": 5e-5,  # paper 002
        "grad_accum": 4,  # paper 002
        "max_caption_tokens": 128,  # paper 002: max_length 128
        "epochs": 3.0,  # paper 002: "1-3 epochs with early stopping"
        "patience": 1,  # ours (on validation caption loss)
        "batch_size": 8,  # ours
        "weight_decay": 0.01,  # ours (PyTorch's AdamW default)
        "warmup_steps": 0,  # ours: cosine from 5e-5 to 0
        "min_lr": 0.0,
        "eval_every": 0,
    },
}


def config_for(recipe: str = "default", **given: Any) -> TrainConfig:
    """The TrainConfig of ``recipe``, with ``given`` values (None: not given) taking precedence.

    Raises:
        InputError: unknown recipe (the message lists them) or an invalid resolved value.
    """
    if recipe not in DEFAULTS:
        raise InputError(f"unknown recipe {recipe!r}; available: {', '.join(RECIPES)}")
    values = {**DEFAULTS[recipe], **{k: v for k, v in given.items() if v is not None}}
    return TrainConfig(recipe=recipe, **values)
