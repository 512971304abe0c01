"""Training (torch side): ``train(TrainConfig) -> Path`` of the run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def train(cfg: Any, resume: bool = False, progress: bool = True) -> Path:
    from edgevqa.train.loop import train as _train

    return _train(cfg, resume=resume, progress=progress)
