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

# CPU paths that run the vision graph in OpenVINO (its int8-static Q/DQ copy, at f32) and every
# other graph as the named precision does in onnxruntime: OpenVINO runs that vision graph near the
# weight-matmul floor, onnxruntime runs the decoder steps fastest (measured: benchmarks/README.md)
OPENVINO_VISION = {"int8+ov": "int8", "int4+ov": "int4"}
PRECISIONS = ("fp32", "int8", "fp16", "int8-static", "int4", *OPENVINO_VISION)
CALIB_METHODS = ("minmax", "entropy", "percentile")
# Training recipes; their default settings live in edgevqa/train/recipes.py (torch-free).
RECIPES = (
    "default", "vqa", "dapt", "dapt-sd", "caption", "projector", "lora", "qformer-caption", "qformer-vqa",
)  # fmt: skip
# these read {split}.captions.jsonl
CAPTION_RECIPES = ("dapt", "dapt-sd", "caption", "qformer-caption")
TRAIN_PARTS = ("full", "decoder", "encoder")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    recipe: str = "default"
    """default, vqa, dapt, dapt-sd or caption: which objective the loop optimises. A recipe's default
    settings are applied by ``edgevqa.train.recipes.config_for`` (and the CLI), not by this field."""
    base: str = "tiny-blip"
    """Preset (tiny-blip, tiny-paligemma, tiny-qformer), Hugging Face id (Salesforce/blip-vqa-base,
    google/paligemma-3b-pt-224, a BLIP-2 id), local model folder or previous RUN."""
    family: str = ""
    """The model family of the base (blip-vqa, paligemma, qformer); found from the base at the start."""
    prompt: str = ""
    """Prefix-LM families: the prompt template around the question, with a literal {question}
    (default: the family's, PaliGemma "answer en {question}", BLIP-2 "Question: {question} Answer:")."""
    init: str = ""
    """A previous RUN (any recipe) whose model/ starts this run: chains dapt -> vqa. Becomes the base."""
    data: str = ""
    """Dataset folder with train.jsonl / val.jsonl (see `edgevqa data synth`), or with
    train.captions.jsonl / val.captions.jsonl for the dapt, dapt-sd and caption recipes."""
    out: str = ""
    """Run folder to write: config.json, metrics.jsonl, checkpoints, model/ or adapter/."""
    lora: bool = False
    """Train a LoRA adapter (peft) instead of all weights."""
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["query", "value", "qkv"])
    """BLIP module names; other families adapt their own attention projections (see their train side)."""
    freeze_vision: bool = False
    """Keep the vision encoder's weights fixed (paper 000's fine-tune)."""
    train_part: str = "full"
    """caption recipe: which parts learn: full (vision + decoder), decoder or encoder (vision)."""
    epochs: float = 10.0
    max_steps: int = 0
    """Stop after this many optimizer steps (0: use epochs)."""
    lr: float = 5e-4
    min_lr: float = 1e-5
    lr_schedule: str = "cosine"
    """cosine (from lr to min_lr after the warm-up) or constant (lr after the warm-up; papers 003/004)."""
    warmup_steps: int = 300
    warmup_start_lr: float = 0.0
    """lr of the first warmup step (0: ramp lr*(step+1)/warmup_steps as before); dapt-sd: 5e-9."""
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    batch_size: int = 32
    """Examples per forward pass (micro-batch); an optimizer step sees batch_size * grad_accum."""
    grad_accum: int = 1
    """Micro-batches whose gradients are summed (averaged) before each optimizer step."""
    patience: int = 0
    """Early stopping: evaluate at every epoch end and stop after this many epochs without a better
    validation score, then keep the best epoch's weights (0: off)."""
    seed: int = 0
    eval_every: int = 500
    """Validation every N steps (exact match; caption recipes: their losses) (0: only at the end)."""
    eval_limit: int = 300
    """Validation questions used for the periodic evaluation (the final one uses all)."""
    checkpoint_every: int = 500
    max_question_tokens: int = 32
    max_answer_tokens: int = 8
    max_caption_tokens: int = 64
    """Caption tokens kept, specials included (capped by the model's position table)."""
    image_size: int = 64
    """Input size of the tiny-blip preset (pretrained bases carry their own). 64 px = 4x4 patches: measured
    here, where a finding lies (left/right) is learned within 4000 steps at 64 px and not at 96 px."""
    threads: int = 0
    """torch threads (0: all cores)."""
    device: str = "auto"
    """auto (cuda when available), cpu or cuda."""
    amp: bool = True
    """Mixed precision on CUDA (torch.autocast: bf16, or fp16 with loss scaling); CPU always runs fp32."""

    def __post_init__(self) -> None:
        captions, dapt = self.recipe in CAPTION_RECIPES, self.recipe in ("dapt", "dapt-sd")
        checks = [
            (self.recipe in RECIPES, f"`--recipe` must be one of {RECIPES}, got {self.recipe!r}"),
            (
                self.train_part in TRAIN_PARTS,
                f"`--train` must be one of {TRAIN_PARTS}, got {self.train_part!r}",
            ),
            (
                self.train_part == "full" or self.recipe == "caption",
                "`--train` applies to --recipe caption only",
            ),
            (
                not (self.lora and captions and self.recipe != "qformer-caption"),
                "`--lora` does not apply to the dapt, dapt-sd and caption recipes",
            ),
            (
                not (self.freeze_vision and self.recipe == "caption"),
                "`--freeze-vision` does not apply to --recipe caption; use `--train decoder`",
            ),
            (not (dapt and self.batch_size < 2), "`--batch-size` must be >= 2 for dapt (in-batch negatives)"),
            (
                not self.init or self.base in ("tiny-blip", self.init),
                "Can't provide both `--base` and `--init`. Choose one.",
            ),
            (
                self.lora or self.recipe != "lora",
                "--recipe lora trains a LoRA adapter: drop --no-lora (or use --recipe default)",
            ),
            (self.device in DEVICES, f"`--device` must be one of {DEVICES}, got {self.device!r}"),
            (self.grad_accum >= 1, "`--grad-accum` must be >= 1"),
            (self.patience >= 0, "`--patience` must be >= 0"),
            (self.max_caption_tokens >= 3, "`--max-caption-tokens` must be >= 3"),
            (self.epochs > 0 or self.max_steps > 0, "`--epochs` or `--max-steps` must be > 0"),
            (self.lr > 0, "`--lr` must be > 0"),
            (self.lr_schedule in ("cosine", "constant"), "`--lr-schedule` must be cosine or constant"),
            (self.batch_size >= 1, "`--batch-size` must be >= 1"),
            (self.lora_r >= 1, "`--lora-r` must be >= 1"),
            (self.max_answer_tokens >= 1, "`--max-answer-tokens` must be >= 1"),
            (self.image_size >= 16, "`--image-size` must be >= 16"),
            (not self.prompt or "{question}" in self.prompt, "`--prompt-template` must contain {question}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InputError(msg)
        self.betas = tuple(self.betas)  # type: ignore[assignment]


@dataclass
class ExportConfig:
    run: str = ""
    """What to export: a training run (RUN), a local model folder (save_pretrained layout) or a
    Hugging Face id."""
    adapter: str = ""
    """A peft (LoRA) adapter folder saved elsewhere, merged into the model before export."""
    max_question_tokens: int = 32
    """Model folders and hub ids: the longest question (prefix LMs: prompt text) the bundle takes."""
    max_answer_tokens: int = 8
    """Model folders and hub ids: the most answer tokens the bundle generates."""
    out: str = ""
    """Bundle folder to write."""
    precisions: list[str] = field(default_factory=lambda: ["fp32", "int8"])
    """Precisions to ship; the first is the bundle's default."""
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
    int4_prefill: str = "int8"
    """Weights an int4 bundle of a prefix-LM family runs its prompts with: int8 (faster prompts;
    both decoders loaded) or int4 (the least memory)."""

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
        if lone := [
            p for p in self.precisions if p in OPENVINO_VISION and OPENVINO_VISION[p] not in self.precisions
        ]:
            need = ", ".join(f"{p} needs {OPENVINO_VISION[p]}" for p in lone)
            raise InputError(f"`--precision`: {need} in the list too (it runs that precision's text graphs)")
        if self.calib_method not in CALIB_METHODS:
            raise InputError(f"`--calib-method` must be one of {CALIB_METHODS}, got {self.calib_method!r}")
        if self.int4_prefill not in ("int8", "int4"):
            raise InputError(f"`--int4-prefill` must be int8 or int4, got {self.int4_prefill!r}")
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
