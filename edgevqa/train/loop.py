"""The training loop, written out (nanoGPT style): warmup + cosine lr, AdamW, clipping,
periodic evaluation, atomic checkpoints, resume.

Example:
    >>> from edgevqa.config import TrainConfig
    >>> train(TrainConfig(base="tiny-blip", data="data/synth", out="runs/base"))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgevqa import atomic, config
from edgevqa.config import TrainConfig
from edgevqa.data.records import load_split
from edgevqa.errors import InputError
from edgevqa.metrics import majority_baseline, record_accuracy
from edgevqa.train import checkpoint, lora, models
from edgevqa.train.data import Encoded, ImageCache, encode_records, make_batch
from edgevqa.train.infer import generate_answers

log = logging.getLogger("edgevqa.train")


def get_lr(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.min_lr at ``total``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Store local paths absolute, so export and bench find the base and data from any directory."""
    from dataclasses import replace

    base = Path(cfg.base).expanduser()
    return replace(
        cfg,
        data=str(Path(cfg.data).expanduser().resolve()),
        base=str(base.resolve()) if base.exists() else cfg.base,
    )


def words_of(texts: list[str]) -> set[str]:
    return {w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())}


# ---------------------------------------------------------------------------------------------
# model set-up


def load_model(cfg: TrainConfig, run: Path, train_recs: list) -> models.Loaded:
    """The base model: a preset built from its config, or a pretrained folder / hub id."""
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
            tok = build_wordpiece_tokenizer(
                words_of([r.question for r in train_recs] + [r.answer for r in train_recs]), tok_dir
            )
        model = models.build_tiny(tok, cfg.image_size, cfg.seed)
        return models.Loaded(model, tok, models.image_spec_for(cfg.image_size), cfg.base)
    loaded = models.load_pretrained(cfg.base)
    loaded.tokenizer.save_pretrained(run / "tokenizer")
    return loaded


def prepare(model: Any, cfg: TrainConfig) -> Any:
    if cfg.freeze_vision:
        for p in model.vision_model.parameters():
            p.requires_grad_(False)
    return lora.wrap(model, cfg) if cfg.lora else model


# ---------------------------------------------------------------------------------------------
# evaluation


def evaluate(
    model: Any,
    tok: Any,
    enc: Encoded,
    images: ImageCache,
    cfg: TrainConfig,
    limit: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    if limit and limit < len(enc.records):
        enc = enc.subset(np.random.default_rng(0).choice(len(enc.records), limit, replace=False))
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    out = generate_answers(base, tok, enc, images, cfg.max_answer_tokens, progress=progress)
    return record_accuracy(out.texts, enc.records)


def final_report(
    model: Any, tok: Any, cfg: TrainConfig, images: ImageCache, train_recs: list, val: Encoded
) -> dict[str, Any]:
    """Accuracy and majority baseline on val (already encoded) and, when there is one, test."""
    splits = {"val": val}
    try:
        test = load_split(cfg.data, "test")
        splits["test"] = encode_records(test, cfg.data, tok, cfg.max_question_tokens, cfg.max_answer_tokens)
    except InputError:
        pass
    return {
        split: {
            "n": len(enc.records),
            "accuracy": evaluate(model, tok, enc, images, cfg, progress=True),
            "baseline": majority_baseline(train_recs, enc.records),
        }
        for split, enc in splits.items()
    }


# ---------------------------------------------------------------------------------------------
# the loop


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> Path:
    """Train and write the run folder (see checkpoint.py for its layout). Returns the run path.

    A run that fails before its first checkpoint is removed again: nothing to resume, nothing left.
    """
    run = Path(cfg.out)
    if resume:
        if not checkpoint.exists(run):
            raise InputError(f"--resume: no checkpoint in {run}/checkpoints/last; start without --resume")
        cfg = config.load(TrainConfig, run / "config.json")
    elif run.exists() and any(run.iterdir()):
        raise InputError(f"{run} already exists; choose a new --out or pass --resume to continue it")
    else:
        cfg = absolute_paths(cfg)
    train_recs, val_recs = load_split(cfg.data, "train"), load_split(cfg.data, "val")
    created = not run.exists()
    run.mkdir(parents=True, exist_ok=True)
    try:
        return _train(cfg, run, resume, progress, train_recs, val_recs)
    except BaseException:
        if created and not checkpoint.exists(run):
            shutil.rmtree(run, ignore_errors=True)
        raise


def _train(
    cfg: TrainConfig, run: Path, resume: bool, progress: bool, train_recs: list, val_recs: list
) -> Path:
    import torch
    from tqdm.auto import tqdm

    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    torch.manual_seed(cfg.seed)

    loaded = load_model(cfg, run, train_recs)
    model, tok = prepare(loaded.model, cfg), loaded.tokenizer
    config.save(cfg, run / "config.json")
    n_train, n_all = lora.count_parameters(model)
    log.info("trainable parameters: %s of %s (%.2f%%)", f"{n_train:,}", f"{n_all:,}", 100 * n_train / n_all)

    images = ImageCache(loaded.image)
    enc = encode_records(train_recs, cfg.data, tok, cfg.max_question_tokens, cfg.max_answer_tokens)
    val = encode_records(val_recs, cfg.data, tok, cfg.max_question_tokens, cfg.max_answer_tokens)
    steps_per_epoch = math.ceil(len(enc.records) / cfg.batch_size)
    total = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)

    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=cfg.betas,
    )
    step = checkpoint.load(run, model, opt)["step"] if resume else 0

    model.train()
    bar = tqdm(total=total, initial=step, desc="train", disable=not progress, dynamic_ncols=True)
    t0, losses = time.perf_counter(), []
    while step < total:
        # the epoch's order depends only on (seed, epoch): a resumed run continues the same sequence
        epoch, pos = divmod(step, steps_per_epoch)
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(enc.records))
        idx = order[pos * cfg.batch_size : (pos + 1) * cfg.batch_size]
        lr = get_lr(step, total, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        loss = model(**make_batch(enc, idx, images, tok.pad_token_id)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.grad_clip)
        opt.step()
        step += 1
        losses.append(loss.item())
        bar.update(1)
        if step % 50 == 0 or step == total:
            row = {
                "step": step,
                "epoch": round(step / steps_per_epoch, 3),
                "loss": float(np.mean(losses)),
                "lr": lr,
                "elapsed_s": round(time.perf_counter() - t0, 2),
            }
            bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{lr:.1e}")
            checkpoint.append_metrics(run, row)
            losses = []
        if cfg.eval_every and step % cfg.eval_every == 0 and step < total:
            acc = evaluate(model, tok, val, images, cfg, limit=cfg.eval_limit)
            checkpoint.append_metrics(run, {"step": step, "val_exact_match": acc})
            bar.write(f"step {step}: val exact match {acc['overall']:.3f}")
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
            checkpoint.save(run, model, opt, {"step": step})
    bar.close()

    train_seconds = time.perf_counter() - t0  # this session's steps (after a resume: only the rest)
    finish(run, model, loaded, cfg)
    t1 = time.perf_counter()
    report = final_report(model, tok, cfg, images, train_recs, val)
    report.update(
        steps=total, train_seconds=round(train_seconds, 1), eval_seconds=round(time.perf_counter() - t1, 1)
    )
    atomic.write_json(run / "eval.json", report)
    return run


def finish(run: Path, model: Any, loaded: models.Loaded, cfg: TrainConfig) -> None:
    """Write the final weights: adapter/ for LoRA, model/ otherwise (each atomically)."""
    if cfg.lora:
        with atomic.directory(run / "adapter", overwrite=True) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
    else:
        with atomic.directory(run / "model", overwrite=True) as tmp:
            models.save_model_dir(models.Loaded(model, loaded.tokenizer, loaded.image, loaded.source), tmp)
