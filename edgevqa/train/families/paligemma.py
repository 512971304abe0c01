"""PaliGemma on the training side (papers 003/004): presets, loading, the prompt and loss as
``PaliGemmaProcessor`` builds them, ``generate`` as the reference, LoRA targets, the two stages.

``--base`` accepts:
  * ``tiny-paligemma``: a tiny SigLIP + tiny Gemma built from configs with random weights and a
    word-level tokenizer made from the training texts (demo, tests);
  * Hugging Face ids (``google/paligemma-3b-pt-224``, ``google/paligemma-3b-mix-448``,
    ``google/paligemma2-3b-pt-224``; need hub access or a local HF cache);
  * a local ``save_pretrained`` folder (model + processor), or a previous RUN (its ``model/``).

The prompt is the processor's: ``"<image>" * N + "<bos>" + template.format(question=q) + "\\n"``,
with the papers' template ``"answer en {question}"``; the answer follows with ``<eos>``, and only
the answer tokens carry the loss (token_type_ids 1, as the processor's ``suffix``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgevqa._deps import hub_kwargs
from edgevqa.bundle import ImageSpec
from edgevqa.config import TrainConfig
from edgevqa.demo import Stage
from edgevqa.errors import InputError, first_line
from edgevqa.families import registry
from edgevqa.train import lora, prefix_lm
from edgevqa.train.base import PIL_CODE, Generated, Loaded, image_spec_of, resolve_model_dir
from edgevqa.train.data import ImageCache, pad
from edgevqa.train.prefix_lm import Encoded, cut_at_eos, eos_ids  # noqa: F401 (the family's API)
from edgevqa.train.tokenizer import as_saved

FAMILY = "paligemma"
RECIPES = ("default", "projector", "lora")
DEFAULT_PROMPT = "answer en {question}"  # papers 003/004 and PaliGemma's own VQA prefix
# the demo (edgevqa/demo.py): from scratch, then the papers' two stages on the same data. Measured
# on 2 cores (3000 images, batch 32, lr 1e-3, cosine over 4000 steps): val exact match 0.74 at step
# 1000, 0.89 at 2000, 0.94 at 3000 and 4000 (test 0.938; where a lesion lies is learned after
# step 2000). With the cosine ending at step 3000 instead, the side was never learned (test 0.84).
DEMO_STAGES = (
    Stage("base", base="tiny-paligemma", steps=4000, fast_steps=40, lr=1e-3, warmup=300),
    Stage("projector", recipe="projector", steps=100, fast_steps=10, lr=1e-3, warmup=0),
    Stage("lora", recipe="lora", steps=200, fast_steps=10, lr=1e-3, warmup=0),
)
SETTINGS = "edgevqa.json"  # beside the model: the prompt template it was trained with
SPECIAL = ("<pad>", "<eos>", "<bos>", "<unk>", "<image>")
# PaliGemmaProcessor adds these when it is built; in the vocabulary already, they add nothing
EXTRA = tuple(f"<loc{i:04d}>" for i in range(1024)) + tuple(f"<seg{i:03d}>" for i in range(128))
# attention projections of the vision tower (SigLIP: out_proj) and of the LM (Gemma: o_proj)
_VISION_ATTN = r".*vision_tower\..*self_attn\.(q_proj|k_proj|v_proj|out_proj)"
_LM_ATTN = r".*language_model\..*self_attn\.(q_proj|k_proj|v_proj|o_proj)"


# ---------------------------------------------------------------------------------------------
# presets


def build_tokenizer(texts: list[str], out: Path) -> Any:
    """A Gemma-like word-level tokenizer: <pad>=0 <eos>=1 <bos>=2 <unk>=3 <image>=4, the processor's
    location and segmentation tokens, "\\n" (ends the prompt) and the lowercased words of ``texts``."""
    import re

    from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    vocab = {t: i for i, t in enumerate([*SPECIAL, *EXTRA, "\n", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    # words, single punctuation marks and newlines are tokens; other whitespace separates them
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\w+|[^\w\s]|\n"), behavior="removed", invert=True)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    tok.add_tokens([AddedToken(t, normalized=False) for t in EXTRA])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(out)
    return fast


ARCHS = {
    # tiny SigLIP (2 x 128) with 16 px patches; tiny Gemma (2 x 128) with grouped-query attention
    # (4 query heads, 1 key/value head, head_dim 32: a multiple of 8, as onnxruntime-genai's
    # attention kernel needs); the vocabulary is its tokenizer's
    "tiny-paligemma": dict(
        vision=dict(
            hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
            image_size=64, patch_size=16,
        ),
        text=dict(
            hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=1, head_dim=32, max_position_embeddings=512,
        ),
    ),
    # the real sizes (random weights): SigLIP So400m/14 at 224 px + Gemma 2B (257,152 tokens)
    "paligemma-3b-224": dict(
        vision=dict(
            hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
            image_size=224, patch_size=14,
        ),
        text=dict(
            hidden_size=2048, intermediate_size=16384, num_hidden_layers=18, num_attention_heads=8,
            num_key_value_heads=1, head_dim=256, vocab_size=257152,
        ),
    ),
    # a full-size shape that fits this machine's export: SigLIP B/16 at 224 px + a decoder of
    # Gemma-3-270M's size (640 wide, 18 layers, 4 query / 1 key-value heads, 262k tokens)
    "paligemma-small": dict(
        vision=dict(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            image_size=224, patch_size=16,
        ),
        text=dict(
            hidden_size=640, intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4,
            num_key_value_heads=1, head_dim=256, vocab_size=262144,
        ),
    ),
}  # fmt: skip


def image_spec(size: int) -> ImageSpec:
    """SigLIP's preprocessing: bicubic resize, rescale, normalise to [-1, 1]."""
    return ImageSpec(height=size, width=size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resample="bicubic")


def build_preset(name: str, texts: list[str], tok_dir: Path, cfg: TrainConfig) -> Loaded:
    """tiny-paligemma with random weights; its tokenizer from ``texts`` (kept when tok_dir has one)."""
    import torch
    from transformers import AutoTokenizer, PaliGemmaForConditionalGeneration

    if (tok_dir / "tokenizer.json").is_file():  # a resumed run keeps its vocabulary
        tok = AutoTokenizer.from_pretrained(tok_dir)
    else:
        tok = build_tokenizer(texts, tok_dir)
    torch.manual_seed(cfg.seed)
    model = PaliGemmaForConditionalGeneration(arch_config(name, len(tok), cfg.image_size))
    init_sincos_positions(model)
    prompt = cfg.prompt or DEFAULT_PROMPT
    return Loaded(model, tok, image_spec(cfg.image_size), name, FAMILY, {"prompt": prompt})


def init_sincos_positions(model: Any) -> None:
    """Start the from-scratch SigLIP with a 2D sin-cos table of patch positions (train/models.py:
    random positions leave left/right at chance for thousands of steps)."""
    import torch

    from edgevqa.train.models import sincos_2d

    tower = model.model.vision_tower
    tower = getattr(tower, "vision_model", tower)  # SiglipVisionModel wraps it in some versions
    pos = tower.embeddings.position_embedding.weight  # [patches, dim]
    grid = int(round(pos.shape[0] ** 0.5))
    with torch.no_grad():
        pos.copy_(sincos_2d(grid, pos.shape[1]).to(pos.dtype))


def arch_tokenizer(words: list[str], out: Path) -> Any:
    """``bench --arch``: the preset's tokenizer over ``words`` (its special ids are arch_config's)."""
    return build_tokenizer(words, out)


def arch_config(name: str, vocab: int = 0, image_size: int = 0) -> Any:
    """The config of ``name`` (ARCHS) with build_tokenizer's special-token ids; ``vocab`` sizes an
    arch without a vocabulary of its own (the tiny preset: its tokenizer's), ``image_size`` overrides."""
    from transformers import PaliGemmaConfig

    ids = {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}
    sizes = ARCHS[name]
    vision = {"model_type": "siglip_vision_model", "vision_use_head": False, **sizes["vision"]}
    text = {"model_type": "gemma", "max_position_embeddings": 8192, **sizes["text"], **ids}
    # a full-size arch keeps its own vocabulary (its LM head is a large part of a step's cost)
    text["vocab_size"] = text.get("vocab_size") or vocab or len(SPECIAL) + len(EXTRA) + 1
    vision["image_size"] = image_size or vision["image_size"]
    return PaliGemmaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=SPECIAL.index("<image>"),
        projection_dim=text["hidden_size"],
        vocab_size=text["vocab_size"],
        **ids,
    )


def arch(name: str, tokenizer: Any) -> Loaded:
    """``bench --arch``: the architecture with random weights at its real size."""
    from transformers import PaliGemmaForConditionalGeneration

    config = arch_config(name, len(tokenizer))
    model = PaliGemmaForConditionalGeneration(config).eval()
    size = config.vision_config.image_size
    return Loaded(model, tokenizer, image_spec(size), name, FAMILY, {"prompt": DEFAULT_PROMPT})


# ---------------------------------------------------------------------------------------------
# loading and saving


def load_pretrained(base: str) -> Loaded:
    """A PaliGemma folder or hub id with its processor; a model of another type is refused.

    Raises:
        InputError: not PaliGemma, not loadable (no network, no safetensors, ...).
    """
    from transformers import PaliGemmaForConditionalGeneration, PaliGemmaProcessor

    from edgevqa.train.setup import hub_model_type

    local = resolve_model_dir(base)
    src = str(local) if local else base
    family = (
        registry.family_of_folder(local)
        if local
        else registry.family_of_model_type(hub_model_type(base), base)
    )
    if family != FAMILY:
        raise InputError(f"{base} is a {family} model, not PaliGemma")
    try:
        # safetensors only: never unpickle a downloaded or user-supplied .bin
        model = PaliGemmaForConditionalGeneration.from_pretrained(
            src, use_safetensors=True, **hub_kwargs(src)
        )
        proc = PaliGemmaProcessor.from_pretrained(src, **hub_kwargs(src))
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load PaliGemma model {base!r}: {first_line(e)}") from None
    settings = Path(src) / SETTINGS
    prompt = json.loads(settings.read_text("utf-8")).get("prompt") if settings.is_file() else None
    extra = {"prompt": prompt or DEFAULT_PROMPT}
    spec = image_spec_of(proc.image_processor, int(model.config.vision_config.image_size), base)
    return Loaded(model.eval(), proc.tokenizer, spec, src, FAMILY, extra)


def processor(loaded: Loaded) -> Any:
    """The ``PaliGemmaProcessor`` of a loaded model: its tokenizer and the image settings."""
    from transformers import PaliGemmaProcessor, SiglipImageProcessorPil

    spec = loaded.image
    ip = SiglipImageProcessorPil(
        size={"height": spec.height, "width": spec.width},
        resample=PIL_CODE[spec.resample],
        rescale_factor=spec.rescale_factor,
        image_mean=list(spec.mean),
        image_std=list(spec.std),
        do_convert_rgb=spec.do_convert_rgb,
    )
    ip.image_seq_length = image_tokens(loaded.model)
    return PaliGemmaProcessor(image_processor=ip, tokenizer=loaded.tokenizer)


def save_model_dir(loaded: Loaded, out: Path) -> None:
    """A folder that plain transformers loads (``PaliGemmaForConditionalGeneration`` and
    ``PaliGemmaProcessor``), with the prompt template beside it."""
    loaded.model.save_pretrained(out, safe_serialization=True)
    as_saved(loaded.tokenizer)
    processor(loaded).save_pretrained(out)
    (out / SETTINGS).write_text(json.dumps({"prompt": prompt_of(loaded)}, indent=2))


def prompt_of(loaded: Loaded) -> str:
    return (loaded.extra or {}).get("prompt") or DEFAULT_PROMPT


def image_tokens(model: Any) -> int:
    """How many image placeholder tokens the prompt holds: one per SigLIP patch."""
    v = (model.get_base_model() if hasattr(model, "get_base_model") else model).config.vision_config
    return (v.image_size // v.patch_size) ** 2


# ---------------------------------------------------------------------------------------------
# tensors


def prompt_string(question: str, template: str, n_image: int, tokenizer: Any) -> str:
    return "<image>" * n_image + tokenizer.bos_token + template.format(question=question) + "\n"


def encode(loaded: Loaded, records: list, root: str | Path, cfg: TrainConfig) -> Encoded:
    """Prompt and answer ids of ``records``; a prompt longer than ``--max-question-tokens`` is
    refused (the runtime refuses it too), answers are cut to ``--max-answer-tokens`` + eos."""
    tok, n = loaded.tokenizer, image_tokens(loaded.model)
    template = cfg.prompt or prompt_of(loaded)
    prompts = [prompt_string(r.question, template, n, tok) for r in records]
    p_ids = tok(prompts, add_special_tokens=False)["input_ids"] if records else []
    for r, ids in zip(records, p_ids):
        if len(ids) - n - 1 > cfg.max_question_tokens:
            raise InputError(
                f"record {r.id or r.question!r}: its prompt is {len(ids) - n - 1} tokens, more than "
                f"--max-question-tokens {cfg.max_question_tokens}"
            )
    a_ids = tok([r.answer for r in records], add_special_tokens=False)["input_ids"] if records else []
    eos = tok.eos_token_id
    answers = [ids[: cfg.max_answer_tokens] + [eos] for ids in a_ids]
    return Encoded(list(records), [r.image_path(root) for r in records], p_ids, answers)


def make_batch(loaded: Loaded, enc: Encoded, idx: Any, images: ImageCache) -> dict[str, Any]:
    """Tensors for ``model(**batch)``: prompt + answer, right-padded; token_type_ids 0 on the prompt
    (bidirectional prefix) and 1 on the answer; labels only on the answer (the processor's suffix)."""
    import torch

    pad_id = loaded.tokenizer.pad_token_id
    seqs = [enc.prompt_ids[i] + enc.answer_ids[i] for i in idx]
    ids = pad(seqs, pad_id)
    types = pad([[0] * len(enc.prompt_ids[i]) + [1] * len(enc.answer_ids[i]) for i in idx], 0)
    labels = pad([[-100] * len(enc.prompt_ids[i]) + enc.answer_ids[i] for i in idx], -100)
    mask = pad([[1] * len(s) for s in seqs], 0)
    pixels = np.stack([images.get(enc.image_paths[i]) for i in idx])
    return {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(mask),
        "token_type_ids": torch.from_numpy(types),
        "pixel_values": torch.from_numpy(pixels),
        "labels": torch.from_numpy(labels),
    }


def teacher_forced_logits(model: Any, batch: dict[str, Any]) -> Any:
    """Logits of the whole teacher-forced sequence (the merge check)."""
    return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


# ---------------------------------------------------------------------------------------------
# generate: the reference


def _types(prompt: Any) -> dict[str, Any]:
    """generate() as a user runs it: the prompt's token_type_ids all 0 (the bidirectional prefix)."""
    import torch

    return {"token_type_ids": torch.zeros_like(prompt)}


def generate_answers(
    model: Any,
    tokenizer: Any,
    enc: Encoded,
    images: ImageCache,
    max_answer_tokens: int,
    batch_size: int = 16,
    progress: bool = False,
) -> Generated:
    """Greedy answers from ``model.generate`` as a user runs it (train/prefix_lm.py)."""
    return prefix_lm.generate_answers(
        model, tokenizer, enc, images, max_answer_tokens, batch_size, progress, extra=_types
    )


def answer(
    loaded: Loaded, pixels: Any, question: str, spec: dict[str, Any], streamer: Any = None
) -> tuple[str, list[int]]:
    """One greedy answer with ``generate`` (the bench's PyTorch side): text and answer ids."""
    model, tok = loaded.model, loaded.tokenizer
    prompt = prompt_string(question, prompt_of(loaded), image_tokens(model), tok)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    return prefix_lm.answer(model, tok, ids, pixels, spec, streamer, extra=_types)


def sample_answers(
    loaded: Loaded, enc: Encoded, images: ImageCache, i: int, n: int, sampling: Any, cfg: TrainConfig
) -> list[str]:
    """``n`` answers to question ``i`` sampled by ``generate`` (temperature / top-k / top-p)."""
    return prefix_lm.sample_answers(
        loaded.model, loaded.tokenizer, enc, images, i, n, sampling, cfg.max_answer_tokens, extra=_types
    )


# ---------------------------------------------------------------------------------------------
# what trains


def lora_targets(freeze_vision: bool) -> str:
    """Papers 003/004 stage 2: LoRA on the attention projections of the vision tower and the
    language model (only the LM's with --freeze-vision); a regex peft matches on module names."""
    return _LM_ATTN if freeze_vision else f"({_VISION_ATTN})|({_LM_ATTN})"


def freeze_all_but_projector(model: Any) -> None:
    """Papers 003/004 stage 1: only the multimodal projector (one linear layer) trains."""
    for name, p in model.named_parameters():
        p.requires_grad_(".multi_modal_projector." in f".{name}")


def prepare(model: Any, cfg: TrainConfig) -> Any:
    """default: every weight (or all but the vision tower with --freeze-vision); projector: stage
    1; lora (or --lora): stage 2's LoRA adapters."""
    if cfg.recipe == "projector":
        freeze_all_but_projector(model)
        return model
    if cfg.freeze_vision:
        for p in model.model.vision_tower.parameters():
            p.requires_grad_(False)
    if cfg.lora or cfg.recipe == "lora":
        return lora.wrap(model, cfg, lora_targets(cfg.freeze_vision))
    return model
