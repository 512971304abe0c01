"""Typed, validated, saved configuration for each command. Torch-free.

Each CLI flag maps 1:1 to a field; ``__post_init__`` names the flag in its error. The resolved
config is saved next to every artifact (``RUN/config.json``), and export reads it back to find
the base model.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edgevqa.errors import InputError

PRECISIONS = ("fp32", "int8", "fp16", "int8-static", "int4")
CALIB_METHODS = ("minmax", "entropy", "percentile")


@dataclass
class TrainConfig:
    base: str = "tiny-blip"
    """Preset (tiny-blip), Hugging Face id (Salesforce/blip-vqa-base), local model folder or previous RUN."""
    data: str = ""
    """Dataset folder with train.jsonl / val.jsonl (see `edgevqa data synth`)."""
    out: str = ""
    """Run folder to write: config.json, metrics.jsonl, checkpoints, model/ or adapter/."""
    lora: bool = False
    """Train a LoRA adapter (peft) instead of all weights."""
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["query", "value", "qkv"])
    freeze_vision: bool = False
    """Keep the vision encoder's weights fixed (paper 000's fine-tune)."""
    epochs: float = 10.0
    max_steps: int = 0
    """Stop after this many optimizer steps (0: use epochs)."""
    lr: float = 5e-4
    min_lr: float = 1e-5
    warmup_steps: int = 300
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    batch_size: int = 32
    seed: int = 0
    eval_every: int = 500
    """Validation exact match every N steps (0: only at the end)."""
    eval_limit: int = 300
    """Validation questions used for the periodic evaluation (the final one uses all)."""
    checkpoint_every: int = 500
    max_question_tokens: int = 32
    max_answer_tokens: int = 8
    image_size: int = 64
    """Input size of the tiny-blip preset (pretrained bases carry their own). 64 px = 4x4 patches: measured
    here, where a finding lies (left/right) is learned within 4000 steps at 64 px and not at 96 px."""
    threads: int = 0
    """torch threads (0: all cores)."""

    def __post_init__(self) -> None:
        checks = [
            (self.epochs > 0 or self.max_steps > 0, "`--epochs` or `--max-steps` must be > 0"),
            (self.lr > 0, "`--lr` must be > 0"),
            (self.batch_size >= 1, "`--batch-size` must be >= 1"),
            (self.lora_r >= 1, "`--lora-r` must be >= 1"),
            (self.max_answer_tokens >= 1, "`--max-answer-tokens` must be >= 1"),
            (self.image_size >= 16, "`--image-size` must be >= 16"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InputError(msg)
        self.betas = tuple(self.betas)  # type: ignore[assignment]


@dataclass
class ExportConfig:
    run: str = ""
    """Training run folder (RUN) to export."""
    out: str = ""
    """Bundle folder to write."""
    precisions: list[str] = field(default_factory=lambda: ["fp32", "int8"])
    """Precisions to ship; the first is the bundle's default."""
    opset: int = 17
    validate_limit: int = 200
    """Validation questions compared with PyTorch (0: all)."""
    min_agreement: float = 0.99
    """Answer agreement with PyTorch below which the export is refused (fidelity gate)."""
    calibrate: str = ""
    """Dataset whose train split calibrates int8-static (default: the run's data)."""
    calib_size: int = 64
    calib_method: str = "minmax"
    """minmax, entropy or percentile (activation ranges of int8-static)."""
    fallback: bool = True
    """When a quantized precision fails the gate, keep its most sensitive MatMuls in fp32 and retry."""
    force: bool = False
    overwrite: bool = False
    trt: bool = False
    """Also build TensorRT engines: trt-fp16 for fp16, trt-int8 (explicit Q/DQ) for int8-static in
    --precision; trt-fp16 when neither is asked for."""
    trt_max_batch: int = 4
    """Largest batch the engines' optimization profiles admit (rank mode: candidates)."""
    trt_timing_cache: str = ""
    """TensorRT timing cache file (default: in the edgevqa cache folder)."""

    @property
    def trt_precisions(self) -> list[str]:
        if not self.trt:
            return []
        engines = {"fp16": "trt-fp16", "int8-static": "trt-int8"}
        return [engines[p] for p in self.precisions if p in engines] or ["trt-fp16"]

    def __post_init__(self) -> None:
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad or not self.precisions:
            raise InputError(f"`--precision` must be among {PRECISIONS}, got {self.precisions}")
        if self.calib_method not in CALIB_METHODS:
            raise InputError(f"`--calib-method` must be one of {CALIB_METHODS}, got {self.calib_method!r}")
        if self.calib_size < 1:
            raise InputError("`--calib-size` must be >= 1")
        if self.trt_max_batch < 1:
            raise InputError("`--trt-max-batch` must be >= 1")
        if not 0 <= self.min_agreement <= 1:
            raise InputError("`--min-agreement` must be between 0 and 1")


def save(cfg: Any, path: str | Path) -> None:
    from edgevqa import atomic

    atomic.write_json(path, asdict(cfg))


def load(cls: type, path: str | Path) -> Any:
    """Read a saved config, ignoring keys this version does not know (forward compatible)."""
    d = json.loads(Path(path).read_text("utf-8"))
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in known})
