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


# PIL's resample codes, as HF image processors store them, and the names the bundle's ImageSpec takes
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
PIL_CODE = {name: code for code, name in PIL_RESAMPLE.items()}


def image_spec_of(ip: Any, model_size: int, base: str) -> ImageSpec:
    """An HF image processor's settings as the runtime's preprocessing takes them. What would make
    the runtime see other pixels than the model was trained on is refused, never guessed: a
    resample code PIL does not define, a size other than the model's vision input size.

    Raises:
        InputError: either of those (one line naming the base and the setting).
    """
    code = ip.resample if isinstance(ip.resample, int) else getattr(ip.resample, "value", ip.resample)
    if code not in PIL_RESAMPLE:
        raise InputError(
            f"{base}: the image processor's resample {ip.resample!r} is not a PIL filter "
            f"({', '.join(f'{c} {n}' for c, n in PIL_RESAMPLE.items())})"
        )
    size = ip.size or {}
    height, width = size.get("height"), size.get("width")
    if (height, width) != (model_size, model_size):
        raise InputError(
            f"{base}: the image processor resizes to {height}x{width} but the model's vision input is "
            f"{model_size}x{model_size} (fix size in preprocessor_config.json)"
        )
    return ImageSpec(
        height=int(height),
        width=int(width),
        mean=tuple(float(x) for x in ip.image_mean),
        std=tuple(float(x) for x in ip.image_std),
        resample=PIL_RESAMPLE[code],
        rescale_factor=float(ip.rescale_factor),
        do_convert_rgb=bool(ip.do_convert_rgb),
    )
