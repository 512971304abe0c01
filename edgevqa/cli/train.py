"""`edgevqa train`: a recipe's settings, then the training loop."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from edgevqa.cli.base import app, need
from edgevqa.cli.options import BY_RECIPE


@app.command()
def train(
    data: Annotated[
        Path,
        typer.Option(
            help="Dataset folder: train.jsonl and val.jsonl, or {split}.captions.jsonl for the dapt, "
            "dapt-sd, caption and qformer-caption recipes."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Run folder to write.")],
    recipe: Annotated[
        str,
        typer.Option(
            help="default (a preset from scratch, or all weights), vqa (paper 000 fine-tune), dapt / "
            "dapt-sd (paper 000 pretraining on captions, + self-distillation), caption (paper 002); "
            "PaliGemma: projector (papers 003/004 stage 1), lora (stage 2, --init the stage 1 run); "
            "Q-Former: qformer-caption (paper 001 stage 1), qformer-vqa (stages 2 and 3, --init). "
            "Explicit flags override the recipe's settings."
        ),
    ] = "default",
    base: Annotated[
        str | None,
        typer.Option(
            help="tiny-blip, tiny-paligemma, tiny-qformer, a Hugging Face id (Salesforce/blip-vqa-base, "
            "google/paligemma-3b-pt-224, a BLIP-2 id), a model folder or a previous RUN "
            "(default: tiny-blip). "
            "Its model type picks the family; other types are refused."
        ),
    ] = None,
    init: Annotated[
        Path | None,
        typer.Option(help="Start from a previous RUN of any recipe (dapt -> vqa); replaces --base."),
    ] = None,
    train_part: Annotated[
        str | None, typer.Option("--train", help="caption: full, decoder or encoder (the parts that learn).")
    ] = None,
    lora: Annotated[
        bool | None, typer.Option("--lora/--no-lora", help="Train a LoRA adapter (peft)." + BY_RECIPE)
    ] = None,
    lora_r: Annotated[int, typer.Option(help="LoRA rank.")] = 8,
    freeze_vision: Annotated[
        bool | None,
        typer.Option("--freeze-vision/--no-freeze-vision", help="Keep the vision encoder fixed." + BY_RECIPE),
    ] = None,
    epochs: Annotated[float | None, typer.Option(help="Passes over the training split." + BY_RECIPE)] = None,
    max_steps: Annotated[int, typer.Option(help="Stop after N optimizer steps (overrides --epochs).")] = 0,
    lr: Annotated[
        float | None, typer.Option(help="Peak learning rate (AdamW, warmup then cosine)." + BY_RECIPE)
    ] = None,
    min_lr: Annotated[
        float | None, typer.Option(help="Learning rate the cosine ends at." + BY_RECIPE)
    ] = None,
    warmup_steps: Annotated[int | None, typer.Option(help="Linear warmup steps." + BY_RECIPE)] = None,
    weight_decay: Annotated[float | None, typer.Option(help="AdamW weight decay." + BY_RECIPE)] = None,
    batch_size: Annotated[int | None, typer.Option(help="Examples per forward pass." + BY_RECIPE)] = None,
    grad_accum: Annotated[
        int | None, typer.Option(help="Micro-batches per optimizer step (gradient accumulation)." + BY_RECIPE)
    ] = None,
    patience: Annotated[
        int | None,
        typer.Option(help="Early stopping: epochs without a better val score (0: off)." + BY_RECIPE),
    ] = None,
    max_caption_tokens: Annotated[
        int | None, typer.Option(help="Caption tokens kept (dapt: 64, caption: 128)." + BY_RECIPE)
    ] = None,
    image_size: Annotated[int, typer.Option(help="Input size of the tiny presets.")] = 64,
    prompt_template: Annotated[
        str | None,
        typer.Option(
            help="PaliGemma: the prompt around the question, with {question} "
            "(default: 'answer en {question}')."
        ),
    ] = None,
    lr_schedule: Annotated[
        str | None, typer.Option(help="cosine or constant (after the warm-up)." + BY_RECIPE)
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    eval_every: Annotated[
        int | None, typer.Option(help="Validation every N steps (0: only at the end)." + BY_RECIPE)
    ] = None,
    device: Annotated[
        str, typer.Option(help="auto, cpu or cuda; CUDA runs use mixed precision (--no-amp: fp32).")
    ] = "auto",
    amp: Annotated[bool, typer.Option("--amp/--no-amp", help="Mixed precision on CUDA.")] = True,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted run in --out from its last checkpoint.")
    ] = False,
) -> None:
    """Train a VQA model (BLIP, PaliGemma or Q-Former), or pretrain / caption-tune it for a later VQA run.

    Settings, lowest precedence first: the built-in defaults, the recipe's (edgevqa/train/recipes.py),
    then the flags given here. The resolved settings are saved in RUN/config.json.
    """
    need("torch", "transformers", "peft", "safetensors")
    from edgevqa.train import train as run_train
    from edgevqa.train.recipes import config_for

    cfg = config_for(
        recipe,
        base=base,
        init=str(init) if init else None,
        data=str(data),
        out=str(out),
        train_part=train_part,
        lora=lora,
        lora_r=lora_r,
        lora_alpha=2 * lora_r,
        freeze_vision=freeze_vision,
        epochs=epochs,
        max_steps=max_steps,
        lr=lr,
        min_lr=min_lr,
        warmup_steps=warmup_steps,
        weight_decay=weight_decay,
        batch_size=batch_size,
        grad_accum=grad_accum,
        patience=patience,
        max_caption_tokens=max_caption_tokens,
        image_size=image_size,
        prompt=prompt_template,
        lr_schedule=lr_schedule,
        seed=seed,
        eval_every=eval_every,
        device=device,
        amp=amp,
    )
    run = run_train(cfg, resume=resume)
    for line in _train_summary(run, json.loads((run / "eval.json").read_text())):
        typer.echo(line)


def _train_summary(run: Path, report: dict) -> list[str]:
    """What the run reached, in one line, and the command to run next."""
    nan = float("nan")
    if report.get("recipe") in ("dapt", "dapt-sd", "caption"):
        val = report.get("val", {})
        what = (
            f"val caption loss {val.get('loss', nan):.3f}"
            if report["recipe"] == "caption"
            else f"val itc+itm+lm {val.get('total', nan):.3f}, "
            f"image->text recall@1 {val.get('i2t_recall@1', nan):.3f}"
        )
        return [
            f"run written to {run}; {what}",
            f"next: edgevqa train --recipe vqa --init {run} --data VQA_DIR --out {run}-vqa",
        ]
    test = report.get("test") or report.get("val", {})
    return [
        f"run written to {run}; test exact match {test.get('accuracy', {}).get('overall', nan):.3f} "
        f"(majority baseline {test.get('baseline', {}).get('overall', nan):.3f})",
        f"next: edgevqa export {run} --out {run}-bundle",
    ]
