"""The training loop, written out (nanoGPT style): warmup + cosine lr, AdamW, gradient accumulation,
clipping, mixed precision on CUDA, periodic and per-epoch evaluation with early stopping, atomic
checkpoints, bit-exact resume (on CPU).

One loop serves every recipe (train/recipes.py). What differs is the *task*, which turns a
micro-batch of example indices into a loss: :class:`VQATask` (here) for ``default`` and ``vqa``,
``DAPTTask`` (train/dapt.py) for ``dapt`` and ``dapt-sd``, ``CaptionTask`` (train/caption.py) for
``caption``. A task provides:

    module                    the nn.Module whose trainable parameters the optimizer steps
    n_train, drop_last        training examples; whether a short last micro-batch is dropped
    loss(idx, step, micro)    -> (loss tensor, {name: float} logged to metrics.jsonl)
    after_step(step, total)   after every optimizer step (dapt-sd: the EMA teacher update)
    validate(limit)           -> (score, metrics row); a higher score is better (early stopping)
    describe(score)           the score in words, for the progress bar
    report()                  -> eval.json;  finish(run): the final weights
    state(), load_state()     the task's own resume state: (JSON-able dict, tensors)

Example:
    >>> from edgevqa.train.recipes import config_for
    >>> train(config_for("vqa", data="data/synth", out="runs/vqa"))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgevqa import atomic, config
from edgevqa.config import CAPTION_RECIPES, TrainConfig
from edgevqa.data.captions import load_optional_captions
from edgevqa.data.records import load_optional_split
from edgevqa.errors import InputError
from edgevqa.eval.metrics import majority_baseline, record_accuracy
from edgevqa.families import registry
from edgevqa.train import checkpoint, lora, setup
from edgevqa.train.base import Loaded
from edgevqa.train.data import ImageCache, to_device

log = logging.getLogger("edgevqa.train")


def get_lr(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.min_lr at ``total``.

    The warmup (``warmup_for``) ramps lr*(step+1)/warmup, or, with ``warmup_start_lr`` > 0, runs
    linearly from warmup_start_lr at step 0 to lr at step warmup (dapt: 5e-9 -> 4e-7).
    """
    warmup = warmup_for(cfg, total)
    if step < warmup:
        if cfg.warmup_start_lr > 0:
            return cfg.warmup_start_lr + (cfg.lr - cfg.warmup_start_lr) * step / warmup
        return cfg.lr * (step + 1) / warmup
    if cfg.lr_schedule == "constant":
        return cfg.lr
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def warmup_for(cfg: TrainConfig, total: int) -> int:
    """The warm-up a ``total``-step run gets: ``cfg.warmup_steps``, unless that is more than a
    quarter of the run (a recipe's 300 steps in a 40-step run would keep the lr near zero for
    all of it); then a tenth of the run. ``_train`` says so when it happens."""
    return cfg.warmup_steps if cfg.warmup_steps * 4 <= total else total // 10


@dataclass
class EarlyStopping:
    """Stop after ``patience`` evaluations in a row without a better score (patience 0: never)."""

    patience: int
    best: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0
    evaluated: int = 0

    def update(self, score: float, epoch: int) -> bool:
        """Record an epoch's score; True when it is the best so far."""
        self.evaluated += 1
        if score > self.best:
            self.best, self.best_epoch, self.bad_epochs = score, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience


# ---------------------------------------------------------------------------------------------
# evaluation


def evaluate(
    model: Any,
    tok: Any,
    enc: Any,
    images: ImageCache,
    cfg: TrainConfig,
    limit: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    if limit and limit < len(enc.records):
        enc = enc.subset(np.random.default_rng(0).choice(len(enc.records), limit, replace=False))
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    fam = registry.side(cfg.family, "train")
    longest = cfg.max_caption_tokens if cfg.recipe in CAPTION_RECIPES else cfg.max_answer_tokens
    out = fam.generate_answers(base, tok, enc, images, longest, progress=progress)
    return record_accuracy(out.texts, enc.records)


def final_report(
    model: Any, loaded: Loaded, cfg: TrainConfig, images: ImageCache, train_recs: list, val: Any
) -> dict[str, Any]:
    """Accuracy and majority baseline on val (already encoded) and, when there is one, test."""
    splits = {"val": val}
    captions = cfg.recipe in CAPTION_RECIPES  # (a family that reads captions as questions)
    load_test = load_optional_captions if captions else load_optional_split
    if (test := load_test(cfg.data, "test")) is not None:
        splits["test"] = registry.side(cfg.family, "train").encode(loaded, test, cfg.data, cfg)
    tok = loaded.tokenizer
    return {
        split: {
            "n": len(enc.records),
            "accuracy": evaluate(model, tok, enc, images, cfg, progress=True),
            "baseline": majority_baseline(train_recs, enc.records),
        }
        for split, enc in splits.items()
    }


class VQATask:
    """default, vqa, projector and lora: the answer's LM loss of the family's model (BLIP: paper 000
    eq. 9; PaliGemma: the answer tokens after the prompt)."""

    drop_last = False

    def __init__(self, cfg: TrainConfig, loaded: Loaded, train: list, val: list, device: Any):
        self.cfg, self.loaded, self.device, self.tok = cfg, loaded, device, loaded.tokenizer
        self.fam = registry.side(cfg.family, "train")
        self.module = setup.prepare(loaded.model, cfg).to(device)
        self.images = ImageCache(loaded.image)
        self.enc = self.fam.encode(loaded, train, cfg.data, cfg)
        self.val = self.fam.encode(loaded, val, cfg.data, cfg)
        self.train_recs = self.enc.records  # a family may read caption records as questions
        self.n_train = len(train)

    def loss(self, idx: Any, step: int, micro: int) -> tuple[Any, dict[str, float]]:
        batch = self.fam.make_batch(self.loaded, self.enc, idx, self.images)
        return self.module(**to_device(batch, self.device)).loss, {}

    def after_step(self, step: int, total: int) -> None:
        pass

    def validate(self, limit: int) -> tuple[float, dict[str, Any]]:
        acc = evaluate(self.module, self.tok, self.val, self.images, self.cfg, limit=limit)
        return acc["overall"], {"val_exact_match": acc}

    def describe(self, score: float) -> str:
        return f"val exact match {score:.3f}"

    def report(self) -> dict[str, Any]:
        return final_report(self.module, self.loaded, self.cfg, self.images, self.train_recs, self.val)

    def state(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return {}, {}

    def load_state(self, state: dict[str, Any], tensors: dict[str, Any]) -> None:
        pass

    def finish(self, run: Path) -> None:
        finish(run, self.module, self.loaded, self.cfg)


def build_task(cfg: TrainConfig, loaded: Loaded, train: list, val: list, device: Any) -> Any:
    if cfg.recipe in ("dapt", "dapt-sd"):
        from edgevqa.train.dapt import DAPTTask

        return DAPTTask(cfg, loaded, train, val, device)
    if cfg.recipe == "caption":
        from edgevqa.train.caption import CaptionTask

        return CaptionTask(cfg, loaded, train, val, device)
    return VQATask(cfg, loaded, train, val, device)


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
        cfg = setup.resumed_config(cfg, run)
    elif run.exists() and any(run.iterdir()):
        raise InputError(f"{run} already exists; choose a new --out or pass --resume to continue it")
    else:
        cfg = setup.absolute_paths(cfg)
    train_items, val_items = setup.load_data(cfg)
    created = not run.exists()
    run.mkdir(parents=True, exist_ok=True)
    try:
        return _train(cfg, run, resume, progress, train_items, val_items)
    except BaseException:
        if created and not checkpoint.exists(run):
            shutil.rmtree(run, ignore_errors=True)
        raise


def step_batches(step: int, steps_per_epoch: int, micro_per_epoch: int, n: int, cfg: TrainConfig) -> list:
    """The example indices of each micro-batch of optimizer step ``step``.

    The epoch's order depends only on (seed, epoch), so a resumed run continues the same sequence.
    An epoch is ``steps_per_epoch`` optimizer steps of up to ``grad_accum`` micro-batches each.
    """
    epoch, pos = divmod(step, steps_per_epoch)
    order = np.random.default_rng([cfg.seed, epoch]).permutation(n)
    first, bs = pos * cfg.grad_accum, cfg.batch_size
    return [order[m * bs : (m + 1) * bs] for m in range(first, min(first + cfg.grad_accum, micro_per_epoch))]


def _train(
    cfg: TrainConfig, run: Path, resume: bool, progress: bool, train_items: list, val_items: list
) -> Path:
    import torch
    from tqdm.auto import tqdm

    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    torch.manual_seed(cfg.seed)
    device = setup.pick_device(cfg)
    autocast, scaler, precision = setup.mixed_precision(device, cfg)

    loaded = setup.load_model(cfg, run, setup.vocabulary_texts(cfg, train_items))
    task = build_task(cfg, loaded, train_items, val_items, device)
    n = task.n_train
    micro_per_epoch = max(1, n // cfg.batch_size) if task.drop_last else math.ceil(n / cfg.batch_size)
    steps_per_epoch = math.ceil(micro_per_epoch / cfg.grad_accum)
    total = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)
    config.save(cfg, run / "config.json")
    if warmup_for(cfg, total) != cfg.warmup_steps:
        log.warning(
            "warm-up of %d steps in a %d-step run: the lr would stay below its peak for most of it; "
            "using %d warm-up steps (a tenth of the run)",
            cfg.warmup_steps,
            total,
            warmup_for(cfg, total),
        )
    n_train, n_all = lora.count_parameters(task.module)
    log.info("recipe %s on %s (%s)", cfg.recipe, device.type, precision)
    log.info("trainable parameters: %s of %s (%.2f%%)", f"{n_train:,}", f"{n_all:,}", 100 * n_train / n_all)

    opt = make_optimizer(task.module, cfg)
    step, early = restore(run, task, opt, scaler, cfg) if resume else (0, EarlyStopping(cfg.patience))

    task.module.train()
    bar = tqdm(
        total=total,
        initial=step,
        desc=f"train {cfg.recipe}",
        disable=not progress or None,
        dynamic_ncols=True,
    )
    t0, losses, parts = time.perf_counter(), [], {}
    tenth = max(50, -(-total // 500) * 50)  # a multiple of the 50-step metrics rows
    while step < total:
        lr = get_lr(step, total, cfg)
        for g in opt.param_groups:
            g["lr"] = lr
        micro = step_batches(step, steps_per_epoch, micro_per_epoch, n, cfg)
        optimizer_step(task, opt, micro, step, autocast, scaler, cfg, losses, parts)
        task.after_step(step, total)
        step += 1
        bar.update(1)

        stop = False
        if cfg.patience and step % steps_per_epoch == 0:
            stop = end_of_epoch(run, task, early, step, step // steps_per_epoch, cfg, bar)
        if step % 50 == 0 or step == total or stop:
            elapsed = time.perf_counter() - t0
            loss = log_training(run, bar, step / steps_per_epoch, step, lr, elapsed, losses, parts)
            losses, parts = [], {}
            if progress and bar.disable and (step % tenth == 0 or step == total or stop):
                # off a terminal the bar is off: a line per tenth of the run instead
                log.info("step %d/%d: loss %.3f, lr %.1e, %.0f s", step, total, loss, lr, elapsed)
        if stop:
            bar.write(f"early stopping: no better validation score for {cfg.patience} epochs")
            break
        if cfg.eval_every and step % cfg.eval_every == 0 and step < total:
            score, row = task.validate(cfg.eval_limit)
            checkpoint.append_metrics(run, {"step": step, **row})
            bar.write(f"step {step}: {task.describe(score)}")
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < total:
            save_checkpoint(run, task, opt, scaler, step, early)
    bar.close()

    train_seconds = time.perf_counter() - t0  # this session's steps (after a resume: only the rest)
    if early.best_epoch:  # early stopping keeps the best epoch's weights
        checkpoint.load_best(run, task.module)
    task.finish(run)
    write_report(run, task, cfg, early, step, train_seconds)
    return run


def make_optimizer(model: Any, cfg: TrainConfig) -> Any:
    """AdamW over the trainable parameters; no weight decay on biases and norms (ndim < 2)."""
    import torch

    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=cfg.betas,
    )


def optimizer_step(
    task: Any,
    opt: Any,
    micro: list,
    step: int,
    autocast: Any,
    scaler: Any,
    cfg: TrainConfig,
    losses: list[float],
    parts: dict[str, list[float]],
) -> None:
    """Forward and backward each micro-batch (gradients summed, each loss / len(micro): the mean
    over the step), clip, step. Appends the micro-batch losses and the task's logged values."""
    import torch

    opt.zero_grad(set_to_none=True)
    for k, idx in enumerate(micro):
        with autocast():
            loss, logged = task.loss(idx, step, k)
        scaled = loss / len(micro)
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        losses.append(loss.item())
        for key, v in logged.items():
            parts.setdefault(key, []).append(v)
    if scaler is not None:
        scaler.unscale_(opt)  # clip the true gradients
    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], cfg.grad_clip)
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()


def log_training(
    run: Path, bar: Any, epoch: float, step: int, lr: float, elapsed: float, losses: list, parts: dict
) -> float:
    """One metrics.jsonl row: mean loss (and the task's logged values) since the previous row; the
    mean loss."""
    row = {"step": step, "epoch": round(epoch, 3), "loss": float(np.mean(losses)), "lr": lr}
    row["elapsed_s"] = round(elapsed, 2)
    row.update({key: float(np.mean(v)) for key, v in parts.items()})
    bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{lr:.1e}")
    checkpoint.append_metrics(run, row)
    return row["loss"]


def end_of_epoch(
    run: Path, task: Any, early: EarlyStopping, step: int, epoch: int, cfg: TrainConfig, bar: Any
) -> bool:
    """Validate, keep the best epoch's weights in checkpoints/best; True when it is time to stop."""
    score, row = task.validate(cfg.eval_limit)
    if early.update(score, epoch):
        checkpoint.save_best(run, task.module)
    checkpoint.append_metrics(run, {"step": step, "epoch": epoch, **row})
    bar.write(f"epoch {epoch}: {task.describe(score)} (best: epoch {early.best_epoch})")
    return early.stop


def save_checkpoint(run: Path, task: Any, opt: Any, scaler: Any, step: int, early: EarlyStopping) -> None:
    task_state, extra = task.state()
    state = {"step": step, "early": asdict(early), "task": task_state}
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    checkpoint.save(run, task.module, opt, state, extra)


def restore(run: Path, task: Any, opt: Any, scaler: Any, cfg: TrainConfig) -> tuple[int, EarlyStopping]:
    """Weights, optimizer, the task's own state and the loop's counters from checkpoints/last."""
    state = checkpoint.load(run, task.module, opt)
    task.load_state(state.get("task", {}), checkpoint.load_extra(run))
    if scaler is not None and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    return state["step"], EarlyStopping(**state.get("early", {"patience": cfg.patience}))


def write_report(
    run: Path, task: Any, cfg: TrainConfig, early: EarlyStopping, step: int, train_seconds: float
) -> None:
    """eval.json: the task's final evaluation, early stopping's outcome, steps and times."""
    t1 = time.perf_counter()
    report = {"recipe": cfg.recipe, **task.report()}
    if cfg.patience:
        report["early_stopping"] = {
            "best_epoch": early.best_epoch,
            "best_score": early.best,
            "epochs_evaluated": early.evaluated,
            "stopped_early": early.stop,
        }
    report.update(
        steps=step, train_seconds=round(train_seconds, 1), eval_seconds=round(time.perf_counter() - t1, 1)
    )
    atomic.write_json(run / "eval.json", report)


def finish(run: Path, model: Any, loaded: Loaded, cfg: TrainConfig) -> None:
    """Write the final weights: adapter/ for LoRA (and the merged model/ where the family chains
    LoRA stages), model/ otherwise (each atomically)."""
    fam = registry.side(cfg.family, "train")
    if cfg.lora:
        with atomic.directory(run / "adapter", overwrite=True) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
        if getattr(fam, "MERGED_WITH_ADAPTER", False):  # a stage the next one starts from (--init)
            with atomic.directory(run / "model", overwrite=True) as tmp:
                fam.save_merged(model, loaded, tmp)
    else:
        with atomic.directory(run / "model", overwrite=True) as tmp:
            fam.save_model_dir(
                Loaded(model, loaded.tokenizer, loaded.image, loaded.source, cfg.family, loaded.extra), tmp
            )
