"""What every family's training side hands to the loop, the exporter and the bench: a loaded base
(model, tokenizer, image settings) and PyTorch's reference answers. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgevqa.bundle import ImageSpec
from edgevqa.errors import InputError


@dataclass
class Loaded:
    model: Any  # the transformers model (BlipForQuestionAnswering, PaliGemmaForConditionalGeneration)
    tokenizer: Any  # a transformers tokenizer
    image: ImageSpec
    source: str
    family: str = "blip-vqa"
    extra: dict | None = None  # family-specific settings saved with the model (prompt template, ...)


@dataclass
class Generated:
    texts: list[str]
    token_ids: list[list[int]]  # answer ids: without the prompt / bos, up to and including eos


def resolve_model_dir(base: str) -> Path | None:
    """A local folder with a saved model, or None if ``base`` is not a local path."""
    p = Path(base).expanduser()
    if (p / "model" / "config.json").is_file():  # a previous edgevqa RUN
        return p / "model"
    if (p / "config.json").is_file():
        return p
    if p.exists():
        raise InputError(
            f"{p} holds no model: expected config.json (a model folder) or model/config.json (a RUN)"
        )
    return None
