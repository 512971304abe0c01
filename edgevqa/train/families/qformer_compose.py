"""A Q-Former base composed from parts, as paper 001 builds one: a domain vision encoder (kept
frozen by the stages), a new Q-Former, and a causal LM, written as a plain BLIP-2 folder that
``edgevqa train --base`` (and transformers' ``Blip2ForConditionalGeneration``) loads.

The vision encoder becomes BLIP-2's own vision model, weight for weight, so the folder stays a
transformers BLIP-2 and the export is the family's. That is exact for the ViTs whose layers are
BLIP-2's: timm's ``VisionTransformer`` (BiomedCLIP's trunk, read from an open_clip folder or hub
repo without open_clip or timm installed) and transformers' ``ViTModel``. CLIP's vision
model (a LayerNorm before its layers) and SigLIP's (no class token) have no place in BLIP-2's
vision model and are refused.

Example:
    >>> compose("hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
    ...         "models/RadBloomz-7b", Path("biomedclip-radbloomz"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgevqa import atomic
from edgevqa._deps import hub_kwargs
from edgevqa.bundle import ImageSpec
from edgevqa.errors import InputError, first_line
from edgevqa.train.base import PIL_CODE, Loaded, image_spec_of, resolve_model_dir
from edgevqa.train.families import qformer as qf

# BLIP-2's Q-Former (12 x 768, cross-attention every 2nd layer) and query count
QFORMER = dict(
    hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    cross_attention_frequency=2,
)  # fmt: skip
QUERIES = 32
OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# timm's ViT names carry their width, not their head count: heads by size word (timm's registry)
# timm's ViT names -> transformers ViTModel's (5.x, 4.x), in a layer
VIT_NAMES = {
    "norm1": ("layernorm_before", "layernorm_before"),
    "norm2": ("layernorm_after", "layernorm_after"),
    "attn.proj": ("attention.o_proj", "attention.output.dense"),
    "mlp.fc1": ("mlp.fc1", "intermediate.dense"),
    "mlp.fc2": ("mlp.fc2", "output.dense"),
    "q": ("attention.q_proj", "attention.attention.query"),
    "k": ("attention.k_proj", "attention.attention.key"),
    "v": ("attention.v_proj", "attention.attention.value"),
}
TIMM_HEADS = {"tiny": 3, "small": 6, "medium": 8, "base": 12, "large": 16, "huge": 16}


@dataclass
class Vision:
    """A vision encoder as BLIP-2's: its ``Blip2VisionConfig`` settings, its weights under
    ``Blip2VisionModel``'s names, and the preprocessing it was trained with."""

    config: dict[str, Any]
    state: dict[str, Any]
    image: ImageSpec
    source: str


def from_timm(state: dict[str, Any], heads: int, image_size: int, image: ImageSpec, source: str) -> Vision:
    """A timm ``VisionTransformer``'s state dict (class token, learned positions, pre-norm blocks,
    a final norm) as BLIP-2's vision model.

    Raises:
        InputError: the weights are not a plain timm ViT (another norm, layer scale, registers).
    """
    import torch

    extra = sorted(k for k in state if re.search(r"(norm_pre|fc_norm|ls\d|reg_token|q_norm|k_norm)\.", k))
    if extra or "cls_token" not in state:
        what = ", ".join(extra[:3]) or "no class token"
        raise InputError(f"{source}: not a plain timm ViT ({what}); BLIP-2's vision model cannot hold it")
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    width, patch = state["patch_embed.proj.weight"].shape[0], state["patch_embed.proj.weight"].shape[-1]
    out = {
        "embeddings.class_embedding": state["cls_token"],
        "embeddings.patch_embedding.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embedding.bias": state["patch_embed.proj.bias"],
        "embeddings.position_embedding": state["pos_embed"],
        "post_layernorm.weight": state["norm.weight"],
        "post_layernorm.bias": state["norm.bias"],
    }
    for i in range(depth):
        a, b = f"blocks.{i}.", f"encoder.layers.{i}."
        bias = torch.as_tensor(state[a + "attn.qkv.bias"])
        out |= {
            b + "layer_norm1.weight": state[a + "norm1.weight"],
            b + "layer_norm1.bias": state[a + "norm1.bias"],
            b + "self_attn.qkv.weight": state[a + "attn.qkv.weight"],
            b + "self_attn.qkv.bias": bias,
            b + "self_attn.projection.weight": state[a + "attn.proj.weight"],
            b + "self_attn.projection.bias": state[a + "attn.proj.bias"],
            b + "layer_norm2.weight": state[a + "norm2.weight"],
            b + "layer_norm2.bias": state[a + "norm2.bias"],
            b + "mlp.fc1.weight": state[a + "mlp.fc1.weight"],
            b + "mlp.fc1.bias": state[a + "mlp.fc1.bias"],
            b + "mlp.fc2.weight": state[a + "mlp.fc2.weight"],
            b + "mlp.fc2.bias": state[a + "mlp.fc2.bias"],
        }
    config = dict(
        hidden_size=width, intermediate_size=state["blocks.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=depth, num_attention_heads=heads, image_size=image_size, patch_size=patch,
        hidden_act="gelu", layer_norm_eps=1e-6, qkv_bias=True,
    )  # fmt: skip
    return Vision(config, {k: torch.as_tensor(v).float() for k, v in out.items()}, image, source)


def from_vit(model: Any, image: ImageSpec, source: str) -> Vision:
    """transformers' ``ViTModel`` as BLIP-2's vision model (its final LayerNorm is BLIP-2's
    post_layernorm; the pooler, if any, is not used)."""
    import torch

    cfg, s = model.config, model.state_dict()
    if getattr(cfg, "qkv_bias", True) is False:
        raise InputError(f"{source}: a ViT without attention biases; BLIP-2's vision model has them")
    timm = {
        "cls_token": s["embeddings.cls_token"],
        "pos_embed": s["embeddings.position_embeddings"],
        "patch_embed.proj.weight": s["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": s["embeddings.patch_embeddings.projection.bias"],
        "norm.weight": s["layernorm.weight"],
        "norm.bias": s["layernorm.bias"],
    }
    for i in range(cfg.num_hidden_layers):

        def get(name: str, w: str, i: int = i) -> Any:  # transformers 5.x's names, else 4.x's
            new, old = VIT_NAMES[name]
            key = f"layers.{i}.{new}.{w}"
            return s[key] if key in s else s[f"encoder.layer.{i}.{old}.{w}"]

        for w in ("weight", "bias"):
            for name in ("norm1", "norm2", "attn.proj", "mlp.fc1", "mlp.fc2"):
                timm[f"blocks.{i}.{name}.{w}"] = get(name, w)
            timm[f"blocks.{i}.attn.qkv.{w}"] = torch.cat([get(p, w) for p in "qkv"])
    vision = from_timm(timm, cfg.num_attention_heads, cfg.image_size, image, source)
    vision.config |= {"hidden_act": cfg.hidden_act, "layer_norm_eps": cfg.layer_norm_eps}
    return vision


def as_held(state: dict[str, Any], vision_model: Any) -> dict[str, Any]:
    """The vision weights under the names this transformers' BLIP-2 holds: a whole qkv bias (5.x),
    or separate q and v biases (the key's dropped: q·b_k is added alike to every score of a query,
    which softmax ignores)."""
    if any(k.endswith("qkv.bias") for k in vision_model.state_dict()):
        return state
    out = {}
    for k, v in state.items():
        if k.endswith("qkv.bias"):
            n = v.shape[0] // 3
            out[k.replace("qkv.bias", "q_bias")], out[k.replace("qkv.bias", "v_bias")] = v[:n], v[2 * n :]
        else:
            out[k] = v
    return out


# ---------------------------------------------------------------------------------------------
# loading


def load_vision(source: str) -> Vision:
    """``hf-hub:<id>`` or a folder with ``open_clip_config.json``: an open_clip model whose vision
    tower is a timm ViT (BiomedCLIP); otherwise a transformers ViT folder or hub id.

    Raises:
        InputError: not found, not safely loadable, or not a ViT BLIP-2's vision model can hold.
    """
    hub = source.removeprefix("hf-hub:") if source.startswith("hf-hub:") else None
    local = Path(source).expanduser()
    if hub is not None or (local / OPEN_CLIP_CONFIG).is_file():
        return load_open_clip(hub, None if hub is not None else local, source)
    from transformers import AutoConfig, AutoImageProcessor, ViTModel

    from edgevqa.train.setup import hub_model_type

    model_type = (
        AutoConfig.from_pretrained(str(local)).model_type if local.is_dir() else hub_model_type(source)
    )
    if model_type in ("clip", "clip_vision_model", "siglip", "siglip_vision_model", "siglip2"):
        why = "a LayerNorm before its layers" if "clip" in model_type else "no class token"
        raise InputError(
            f"{source}: a {model_type} vision model has {why}, which BLIP-2's vision model does not; "
            "edgevqa composes timm ViTs (open_clip, e.g. BiomedCLIP) and transformers ViTs"
        )
    if model_type != "vit":
        raise InputError(f"{source}: a {model_type!r} model is not a vision encoder edgevqa composes (vit)")
    src = str(local) if local.is_dir() else source
    try:
        model = ViTModel.from_pretrained(
            src, use_safetensors=True, add_pooling_layer=False, **hub_kwargs(src)
        )
        ip = AutoImageProcessor.from_pretrained(src, **hub_kwargs(src))
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load vision model {source!r}: {first_line(e)}") from None
    return from_vit(model, image_spec_of(ip, model.config.image_size, source), source)


def load_open_clip(hub: str | None, folder: Path | None, source: str) -> Vision:
    """An open_clip model's vision trunk from its config and weights (safetensors, or a .bin read
    with ``weights_only=True``: tensors only, nothing unpickled beyond them). Its preprocessing's
    mean, std and interpolation carry over; open_clip resizes the short side and center-crops,
    BLIP-2's processor resizes to the square: the same pixels for square images (radiographs
    mostly are), not for others."""
    import torch

    def fetch(name: str) -> Path | None:
        if folder is not None:
            return folder / name if (folder / name).is_file() else None
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(hub, name, **hub_kwargs(hub)))
        except Exception:  # absent from the repo, or no hub and not cached
            return None

    cfg_path = fetch(OPEN_CLIP_CONFIG)
    weights = next((p for p in map(fetch, OPEN_CLIP_WEIGHTS) if p is not None), None)
    if cfg_path is None or weights is None:
        raise InputError(
            f"cannot read open_clip model {source!r}: {OPEN_CLIP_CONFIG} and one of "
            f"{', '.join(OPEN_CLIP_WEIGHTS)} are needed (no hub here? download the repo and pass its folder)"
        )
    cfg = json.loads(cfg_path.read_text("utf-8"))
    vcfg, pre = cfg.get("model_cfg", {}).get("vision_cfg", {}), cfg.get("preprocess_cfg", {})
    name = str(vcfg.get("timm_model_name") or "")
    size_word = re.match(r"vit_([a-z]+)_patch", name)
    if not size_word or size_word.group(1) not in TIMM_HEADS:
        raise InputError(
            f"{source}: its vision tower {name or 'is not timm'!r} is not a timm ViT edgevqa composes"
        )
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(weights)
    else:
        state = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
    trunk = {k.removeprefix("visual.trunk."): v for k, v in state.items() if k.startswith("visual.trunk.")}
    size = int(vcfg.get("image_size", 224))
    resample = str(pre.get("interpolation", "bicubic"))
    if resample not in PIL_CODE:
        raise InputError(f"{source}: its preprocessing's interpolation {resample!r} is not a PIL filter")
    image = ImageSpec(
        height=size,
        width=size,
        mean=tuple(float(x) for x in pre.get("mean", qf.CLIP_MEAN)),
        std=tuple(float(x) for x in pre.get("std", qf.CLIP_STD)),
        resample=resample,
    )
    return from_timm(trunk, TIMM_HEADS[size_word.group(1)], size, image, source)


def compose(
    vision: str,
    lm: str,
    out: Path,
    queries: int = QUERIES,
    qformer: dict | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a BLIP-2 folder: ``vision``'s encoder, a new Q-Former (BLIP-2's sizes unless given,
    BLIP-2's initialisation, query tokens from N(0, 0.02)), a new projection, the causal LM
    ``lm`` with its tokenizer (``<image>`` added), BLIP-2's default prompt. Nothing is written
    unless all of it is (``out`` appears whole or not at all).

    Raises:
        InputError: a part that cannot be loaded or that the family cannot export, or an existing
            ``out`` without ``overwrite`` (one line, before anything is loaded).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Blip2Config, Blip2ForConditionalGeneration

    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} already exists; pass --overwrite to replace it")  # before any loading
    v = load_vision(vision)
    local = resolve_model_dir(lm)
    src = str(local) if local else lm
    try:
        text = AutoModelForCausalLM.from_pretrained(src, use_safetensors=True, **hub_kwargs(src))
        tok = AutoTokenizer.from_pretrained(src, **hub_kwargs(src))
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load causal LM {lm!r}: {first_line(e)}") from None
    if "<image>" not in tok.get_vocab():
        tok.add_tokens(["<image>"], special_tokens=True)
    if len(tok) > text.get_input_embeddings().num_embeddings:
        text.resize_token_embeddings(len(tok))
    config = Blip2Config(
        vision_config=v.config,
        qformer_config={**(qformer or QFORMER), "encoder_hidden_size": v.config["hidden_size"]},
        text_config=text.config.to_dict(),
        num_query_tokens=queries,
        image_token_index=tok.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(seed)
    with torch.device("meta"):  # the LM's weights are the loaded ones: never allocate a second LM
        model = Blip2ForConditionalGeneration(config)
    model.language_model = text
    for part in (model.vision_model, model.qformer, model.language_projection):
        part.to_empty(device="cpu")
        part.apply(model._init_weights)
    model.query_tokens = torch.nn.Parameter(torch.empty(1, queries, config.qformer_config.hidden_size))
    with torch.no_grad():
        model.query_tokens.normal_(0.0, 0.02)
    missing, unexpected = model.vision_model.load_state_dict(
        as_held(v.state, model.vision_model), strict=False
    )
    if missing or unexpected:
        raise InputError(f"{vision}: vision weights do not fit ({(missing or unexpected)[:3]})")
    model = model.to(text.dtype).eval()
    qf.check_language_model(model, lm)
    loaded = Loaded(model, tok, v.image, f"{vision} + {lm}", qf.FAMILY, {"prompt": qf.DEFAULT_PROMPT})
    with atomic.directory(out, overwrite=overwrite) as tmp:
        qf.save_model_dir(loaded, tmp)
    return out
