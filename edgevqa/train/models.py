"""The BLIP VQA family on the torch side: presets, loading a base, saving a model folder.

``--base`` accepts:
  * ``tiny-blip``: a 1-2 M parameter BLIP VQA built from a config with random weights (demo, tests);
  * a Hugging Face id such as ``Salesforce/blip-vqa-base`` (needs hub access or a local HF cache);
  * a local model folder (``save_pretrained`` layout: config.json, model.safetensors, tokenizer,
    preprocessor_config.json), or a previous RUN folder (its ``model/``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edgevqa._deps import hub_kwargs
from edgevqa.bundle import ImageSpec
from edgevqa.errors import InputError, first_line
from edgevqa.train.base import PIL_CODE, Loaded, image_spec_of, resolve_model_dir  # noqa: F401 (re-exported)
from edgevqa.train.tokenizer import as_saved

FAMILY = "blip-vqa"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PRESETS = ("tiny-blip",)
ARCHS = ("tiny-blip", "blip-vqa-base")


def blip_config(
    arch: str, vocab_size: int = 30524, image_size: int | None = None, token_ids: dict | None = None
) -> Any:
    """A BlipConfig for ``arch`` with random-init settings that train from scratch.

    ``blip-vqa-base`` is the full-size Salesforce/blip-vqa-base architecture: ViT-B/16 at 384 px,
    BERT-base text encoder/decoder with 12 heads (BlipTextConfig defaults to 8).
    """
    from transformers import BlipConfig

    ids = token_ids or {"bos_token_id": 30522, "sep_token_id": 102, "pad_token_id": 0}
    if arch == "tiny-blip":
        # Sizes measured in shared/notes: learns whole-image questions in ~1 min on 2 cores.
        vision = dict(
            hidden_size=128,
            intermediate_size=512,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=image_size or 64,
            patch_size=16,
            initializer_range=0.02,
        )
        text = dict(
            hidden_size=128,
            intermediate_size=512,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=64,
        )
    elif arch == "blip-vqa-base":
        vision = dict(image_size=384, patch_size=16, initializer_range=0.02)
        text = dict(num_attention_heads=12)
    else:
        raise InputError(f"unknown architecture {arch!r}; available: {', '.join(ARCHS)}")
    text.update(vocab_size=vocab_size, is_decoder=True, **ids)
    return BlipConfig(vision_config=vision, text_config=text)


def image_spec_for(arch_size: int) -> ImageSpec:
    return ImageSpec(height=arch_size, width=arch_size, mean=CLIP_MEAN, std=CLIP_STD, resample="bicubic")


def build_tiny(tokenizer: Any, image_size: int, seed: int) -> Any:
    import torch
    from transformers import BlipForQuestionAnswering

    torch.manual_seed(seed)
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "sep_token_id": tokenizer.sep_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    model = BlipForQuestionAnswering(blip_config("tiny-blip", len(tokenizer), image_size, ids))
    init_sincos_positions(model)
    return model


def sincos_2d(grid: int, dim: int) -> Any:
    """MAE-style 2D sin-cos table [grid*grid, dim]: half the channels encode the row, half the column."""
    import torch

    def one_d(pos: Any, d: int) -> Any:
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2))
        out = pos.reshape(-1, 1).double() * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.cat([one_d(ys, dim // 2), one_d(xs, dim // 2)], dim=1).float()


def init_sincos_positions(model: Any) -> None:
    """Start the from-scratch vision tower with informative patch positions.

    Random 0.02-std position embeddings carry almost no position signal at first; where a finding
    lies (left or right) then stays at chance for thousands of steps. A sin-cos table gives every
    patch a distinct, smooth position from step 0 (it stays trainable).
    """
    import torch

    emb = model.vision_model.embeddings
    pos = emb.position_embedding  # [1, 1 + grid*grid, dim]; index 0 is the class token
    grid = int(round((pos.shape[1] - 1) ** 0.5))
    with torch.no_grad():
        pos[0, 1:] = sincos_2d(grid, pos.shape[2]).to(pos.dtype)
        pos[0, 0] = 0.0


def load_pretrained(base: str) -> Loaded:
    """Load a BLIP VQA model, its tokenizer and its image settings from a folder or a hub id.

    Raises:
        InputError: the folder or id cannot be loaded (no network, wrong model type, ...).
    """
    from transformers import AutoTokenizer, BlipForQuestionAnswering, BlipImageProcessorPil

    local = resolve_model_dir(base)
    src = str(local) if local else base
    if local and not (local / "preprocessor_config.json").is_file():
        raise InputError(f"{base}: no preprocessor_config.json beside the model (its image settings)")
    try:
        # safetensors only: never unpickle a downloaded or user-supplied .bin
        model = BlipForQuestionAnswering.from_pretrained(src, use_safetensors=True, **hub_kwargs(src))
        tokenizer = AutoTokenizer.from_pretrained(src, **hub_kwargs(src))
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load BLIP VQA model {base!r}: {first_line(e)}") from None
    try:
        ip = BlipImageProcessorPil.from_pretrained(src, **hub_kwargs(src))
    except (OSError, ValueError, TypeError) as e:
        raise InputError(f"cannot read the image processor of {base!r}: {str(e).strip()[:200]}") from None
    spec = image_spec_of(ip, int(model.config.vision_config.image_size), base)
    return Loaded(model.eval(), tokenizer, spec, src)


def save_model_dir(loaded: Loaded, out: Path) -> None:
    """Write a folder that ``load_pretrained`` and ``transformers`` can both read."""
    loaded.model.save_pretrained(out, safe_serialization=True)
    as_saved(loaded.tokenizer).save_pretrained(out)
    spec = loaded.image
    (out / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "BlipImageProcessor",
                "processor_class": "BlipProcessor",
                "do_resize": True,
                "size": {"height": spec.height, "width": spec.width},
                "resample": PIL_CODE[spec.resample],
                "do_rescale": True,
                "rescale_factor": spec.rescale_factor,
                "do_normalize": True,
                "image_mean": list(spec.mean),
                "image_std": list(spec.std),
                "do_convert_rgb": spec.do_convert_rgb,
            },
            indent=2,
        )
    )
