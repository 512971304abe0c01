"""Run folder layout, checkpoints for --resume, and the final artifacts export reads back.

RUN/
  config.json          resolved TrainConfig
  tokenizer/           the tokenizer the run trains with (presets build theirs from the data)
  metrics.jsonl        one JSON object per logged step / evaluation
  checkpoints/last/    trainable weights (safetensors) + optimizer state + loop state, for --resume;
                       extra.safetensors: a recipe's other tensors (dapt-sd: the EMA teacher)
  checkpoints/best/    with --patience: the trainable weights of the best epoch so far
  model/               full weights when all weights were trained (save_pretrained, safetensors)
  adapter/             LoRA adapter when --lora (peft save_pretrained); the base is config.base
  eval.json            final accuracy on val and test, with the majority baseline (caption recipes:
                       their losses and metrics)
  dapt_heads.safetensors, teacher/   dapt recipes: ITC/ITM heads; dapt-sd: the EMA teacher's model
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgevqa import atomic

WEIGHTS = "trainable.safetensors"
EXTRA = "extra.safetensors"
OPTIM = "optimizer.pt"
STATE = "state.json"


def trainable_state(model: Any) -> dict[str, Any]:
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save(
    run: Path, model: Any, optimizer: Any, state: dict[str, Any], extra: dict[str, Any] | None = None
) -> None:
    """Write checkpoints/last atomically: a crash mid-save keeps the previous checkpoint."""
    import torch
    from safetensors.torch import save_file

    with atomic.directory(run / "checkpoints" / "last", overwrite=True) as tmp:
        save_file(trainable_state(model), str(tmp / WEIGHTS))
        if extra:
            save_file(extra, str(tmp / EXTRA))
        torch.save(optimizer.state_dict(), tmp / OPTIM)
        (tmp / STATE).write_text(json.dumps(state))


def load_extra(run: Path) -> dict[str, Any]:
    """The recipe's extra tensors of checkpoints/last ({} when there are none)."""
    from safetensors.torch import load_file

    path = run / "checkpoints" / "last" / EXTRA
    return load_file(str(path)) if path.is_file() else {}


def save_best(run: Path, model: Any) -> None:
    from safetensors.torch import save_file

    with atomic.directory(run / "checkpoints" / "best", overwrite=True) as tmp:
        save_file(trainable_state(model), str(tmp / WEIGHTS))


def load_best(run: Path, model: Any) -> None:
    """Put the best epoch's trainable weights back into ``model``."""
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(run / "checkpoints" / "best" / WEIGHTS)), strict=False)


def exists(run: Path) -> bool:
    return (run / "checkpoints" / "last" / STATE).is_file()


def load(run: Path, model: Any, optimizer: Any) -> dict[str, Any]:
    """Restore trainable weights and optimizer state; returns the saved loop state (step, rng)."""
    import torch
    from safetensors.torch import load_file

    ck = run / "checkpoints" / "last"
    weights = load_file(str(ck / WEIGHTS))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if unexpected or (trainable - set(weights)):
        raise RuntimeError(
            f"checkpoint does not match the model: unexpected={unexpected[:5]} "
            f"missing={sorted(trainable - set(weights))[:5]}"
        )
    # weights_only: optimizer state is tensors and numbers; never unpickle arbitrary objects
    # (read onto the CPU; load_state_dict moves the state to each parameter's device)
    optimizer.load_state_dict(torch.load(ck / OPTIM, weights_only=True, map_location="cpu"))
    return json.loads((ck / STATE).read_text())


def append_metrics(run: Path, row: dict[str, Any]) -> None:
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
