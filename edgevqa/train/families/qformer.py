"""The Q-Former family on the training side (paper 001; the BLIP-2 / InstructBLIP shape): presets,
loading, the prompt and loss as ``Blip2Processor`` builds them, ``generate`` as the reference,
what each recipe trains.

The model is transformers' ``Blip2ForConditionalGeneration``: a vision encoder, a Q-Former whose
learned query tokens cross-attend to the image features, a linear projection, and any causal LM
``AutoModelForCausalLM`` builds. A folder saved here loads and answers the same in plain
transformers (``Blip2ForConditionalGeneration`` + ``Blip2Processor`` + ``generate``).

``--base`` accepts:
  * ``tiny-qformer``: a tiny ViT + tiny Q-Former (8 queries) + tiny Llama built from configs with
    random weights and a word-level tokenizer made from the training texts (demo, tests);
  * Hugging Face ids of BLIP-2 checkpoints with a decoder-only LM (need hub access or a local
    cache) and local ``save_pretrained`` folders, or a previous RUN (its ``model/``).
Paper 001's own combination (BiomedCLIP's ViT-B/16 in open_clip's format + RadBloomz-7b, a BLOOM)
is not loadable: see the README's Q-Former section for what is and is not supported.

The prompt is the processor's: ``"<image>" * Q`` (no specials), then the tokenizer's encoding of
``template.format(question=q)`` with its special tokens (bos). The answer follows with eos and
only the answer carries the loss. Recipes (paper 001's three stages; trainable parts as the paper
says: the query transformer, the projection and LoRA on the LLM, vision frozen):

  default          every weight (a from-scratch preset stands in for the pretrained encoders)
  qformer-caption  stage 1, concept alignment: image-caption pairs, the caption as the answer to
                   CAPTION_QUESTION in the same template
  qformer-vqa      stages 2 (general medical VQA, e.g. PMC-VQA as multiple choice) and 3
                   (radiology VQA): ``--init`` the previous stage
In the LoRA stages the Q-Former and projection train whole (peft ``modules_to_save``); the query
tokens (a bare parameter peft cannot save) stay as the previous stage left them: ours.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgevqa._deps import hub_kwargs
from edgevqa.bundle import ImageSpec
from edgevqa.config import TrainConfig
from edgevqa.data.records import VQARecord
from edgevqa.demo import Stage
from edgevqa.errors import InputError, first_line
from edgevqa.families import registry
from edgevqa.train import lora, prefix_lm
from edgevqa.train.base import PIL_CODE, Generated, Loaded, image_spec_of, resolve_model_dir
from edgevqa.train.data import ImageCache, pad
from edgevqa.train.prefix_lm import Encoded, cut_at_eos, eos_ids  # noqa: F401 (the family's API)
from edgevqa.train.tokenizer import as_saved

FAMILY = "qformer"
RECIPES = ("default", "qformer-caption", "qformer-vqa")
DEFAULT_PROMPT = "Question: {question} Answer:"  # BLIP-2's documented VQA prompt
CAPTION_QUESTION = "what does the image show?"  # stage 1's question; the caption is its answer
SETTINGS = "edgevqa.json"  # beside the model: the prompt template it was trained with
# LoRA runs also write the merged model/, so the next stage can `--init` them
MERGED_WITH_ADAPTER = True
SPECIAL = ("<pad>", "</s>", "<s>", "<unk>", "<image>")
# the LM's attention projections: Llama-shaped and OPT (self_attn), BLOOM (self_attention)
_LM_ATTN = (
    r".*language_model\..*(self_attn\.(q_proj|k_proj|v_proj|o_proj|out_proj)"
    r"|self_attention\.(query_key_value|dense))"
)
TRAINED_WHOLE = ("qformer", "language_projection")
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
# the demo (edgevqa/demo.py): from scratch (all weights, the stand-in for pretrained encoders),
# then stage 1 on the synthetic captions and stage 3 on the synthetic VQA, both LoRA + Q-Former.
# The base's budget is what the lesion's side needs: at 4000 steps (lr 1e-3 or 5e-4) it stayed at
# chance although a linear probe reads it from what the LM receives (84.8% at 5e-4,
# benchmarks/qformer_probe.py); at 6000 steps and 5e-4 it is learned (the base's test: side 91.5%
# closed / 88.0% open; AMD EPYC Zen 3, README "The Q-Former family"). Tried at 3000 steps (lr 5e-4,
# Zen 4, 2026-12-04), none learned the side (val at chance): the Q-Former's dropout off, 2 key-value
# heads in the LM, 16 queries, the captions mixed into the VQA set. Steps cost what they cost:
# torch.compile 66 vs 72 ms a step after 119 s of compiling; batch 64 costs 1.67x batch 32.
DEMO_STAGES = (
    Stage("base", base="tiny-qformer", steps=6000, fast_steps=40, lr=5e-4, warmup=300),
    Stage("caption", recipe="qformer-caption", steps=150, fast_steps=10, lr=3e-4, warmup=0),
    Stage("vqa", recipe="qformer-vqa", steps=300, fast_steps=10, lr=3e-4, warmup=0),
)

ARCHS = {
    # tiny ViT (2 x 128, 16 px patches), Q-Former (2 x 128, 8 queries, cross-attention in every
    # layer), tiny Llama (2 x 128, 4 query / 1 key-value heads, head_dim 32); vocabulary: its tokenizer's
    "tiny-qformer": dict(
        vision=dict(
            hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
            image_size=64, patch_size=16,
        ),
        qformer=dict(
            hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
            cross_attention_frequency=1, encoder_hidden_size=128,
        ),
        text=dict(
            model_type="llama", hidden_size=128, intermediate_size=512, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=1, head_dim=32, max_position_embeddings=256,
        ),
        queries=8,
    ),
    # paper 001's shapes with an LLM that fits this machine: ViT-B/16 at 224 px (BiomedCLIP's
    # size), BLIP-2's Q-Former (12 x 768, 32 queries, cross-attention every 2nd layer) and a
    # Qwen2-0.5B-sized decoder (896 wide, 24 layers, 14 query / 2 key-value heads, 151,936 tokens)
    "qformer-vitb-0.5b": dict(
        vision=dict(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            image_size=224, patch_size=16,
        ),
        qformer=dict(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            cross_attention_frequency=2, encoder_hidden_size=768,
        ),
        text=dict(
            model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
            num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
            max_position_embeddings=4096,
        ),
        queries=32,
    ),
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# presets


def build_tokenizer(texts: list[str], out: Path) -> Any:
    """A Llama-like word-level tokenizer: <pad>=0 </s>=1 <s>=2 <unk>=3 <image>=4, then the
    lowercased words of ``texts``; encoding with special tokens prepends <s> (as Llama's does)."""
    import re

    from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    vocab = {t: i for i, t in enumerate([*SPECIAL, *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\w+|[^\w\s]"), behavior="removed", invert=True)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 2)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(out)
    return fast


def image_spec(size: int) -> ImageSpec:
    """BLIP-2's preprocessing: bicubic resize, rescale, normalise with CLIP's mean and std."""
    return ImageSpec(height=size, width=size, mean=CLIP_MEAN, std=CLIP_STD, resample="bicubic")


def arch_config(name: str, vocab: int = 0, image_size: int = 0) -> Any:
    """The ``Blip2Config`` of ``name`` (ARCHS) with build_tokenizer's special ids; ``vocab`` sizes
    an arch without a vocabulary of its own, ``image_size`` overrides."""
    from transformers import Blip2Config

    sizes = ARCHS[name]
    ids = {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}
    text = {**sizes["text"], **ids}
    text["vocab_size"] = text.get("vocab_size") or vocab or len(SPECIAL) + 1
    # BLIP-2's vision config initialises with std 1e-10 (its weights always come pretrained): from
    # scratch that leaves the image out of the features, so the presets use BERT's 0.02
    vision = {
        **sizes["vision"],
        "image_size": image_size or sizes["vision"]["image_size"],
        "initializer_range": 0.02,
    }
    return Blip2Config(
        vision_config=vision,
        qformer_config=sizes["qformer"],
        text_config=text,
        num_query_tokens=sizes["queries"],
        image_token_index=SPECIAL.index("<image>"),
    )


def prompt_words(template: str) -> list[str]:
    """Texts the preset's vocabulary must hold besides the data: the template and stage 1's question."""
    return [template.replace("{question}", " "), CAPTION_QUESTION]


def build_preset(name: str, texts: list[str], tok_dir: Path, cfg: TrainConfig) -> Loaded:
    """tiny-qformer with random weights; its tokenizer from ``texts`` (kept when tok_dir has one)."""
    import torch
    from transformers import AutoTokenizer, Blip2ForConditionalGeneration

    prompt = cfg.prompt or DEFAULT_PROMPT
    if (tok_dir / "tokenizer.json").is_file():  # a resumed run keeps its vocabulary
        tok = AutoTokenizer.from_pretrained(tok_dir)
    else:
        tok = build_tokenizer([*texts, *prompt_words(prompt)], tok_dir)
    torch.manual_seed(cfg.seed)
    model = Blip2ForConditionalGeneration(arch_config(name, len(tok), cfg.image_size))
    init_from_scratch(model)
    return Loaded(model, tok, image_spec(cfg.image_size), name, FAMILY, {"prompt": prompt})


def init_from_scratch(model: Any) -> None:
    """What a from-scratch start needs that transformers' init (made for loading pretrained
    weights) does not give. The query tokens: transformers zeroes them; all-zero queries go into
    the Q-Former's LayerNorm, whose gradient there is ~1e13 (eps 1e-12), and gradient clipping then
    scales every other gradient to nothing (measured: the demo's loss stayed at the answer prior
    for 2700 steps). BLIP-2's own pretraining draws them from N(0, 0.02). The ViT's patch
    positions: a 2D sin-cos table (zeros for [CLS]); random positions leave left/right at chance
    for thousands of steps (train/models.py)."""
    import torch

    from edgevqa.train.models import sincos_2d

    pos = model.vision_model.embeddings.position_embedding  # [1, 1 + patches, dim]
    grid = int(round((pos.shape[1] - 1) ** 0.5))
    with torch.no_grad():
        model.query_tokens.normal_(0.0, 0.02)
        pos[0, 0].zero_()
        pos[0, 1:].copy_(sincos_2d(grid, pos.shape[2]).to(pos.dtype))


def arch_tokenizer(words: list[str], out: Path) -> Any:
    """``bench --arch``: the preset's tokenizer over ``words`` and the default prompt."""
    return build_tokenizer([*words, *prompt_words(DEFAULT_PROMPT)], out)


def arch(name: str, tokenizer: Any) -> Loaded:
    """``bench --arch``: the architecture with random weights at its real size."""
    from transformers import Blip2ForConditionalGeneration

    config = arch_config(name, len(tokenizer))
    model = Blip2ForConditionalGeneration(config).eval()
    init_from_scratch(model)
    size = config.vision_config.image_size
    return Loaded(model, tokenizer, image_spec(size), name, FAMILY, {"prompt": DEFAULT_PROMPT})


# ---------------------------------------------------------------------------------------------
# loading and saving


def load_pretrained(base: str) -> Loaded:
    """A BLIP-2 folder or hub id with its processor; another model type, an encoder-decoder LM or a
    text model the decoder graph does not reproduce is refused with one line.

    Raises:
        InputError: not loadable as this family (the message says why).
    """
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    from edgevqa.train.setup import hub_model_type

    local = resolve_model_dir(base)
    src = str(local) if local else base
    family = (
        registry.family_of_folder(local)
        if local
        else registry.family_of_model_type(hub_model_type(base), base)
    )
    if family != FAMILY:
        raise InputError(f"{base} is a {family} model, not a Q-Former (BLIP-2) model")
    try:
        # safetensors only: never unpickle a downloaded or user-supplied .bin
        model = Blip2ForConditionalGeneration.from_pretrained(src, use_safetensors=True, **hub_kwargs(src))
        proc = Blip2Processor.from_pretrained(src, **hub_kwargs(src))
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load BLIP-2 model {base!r}: {first_line(e)}") from None
    check_language_model(model, base)
    settings = Path(src) / SETTINGS
    prompt = json.loads(settings.read_text("utf-8")).get("prompt") if settings.is_file() else None
    spec = image_spec_of(proc.image_processor, int(model.config.vision_config.image_size), base)
    if proc.num_query_tokens not in (None, model.config.num_query_tokens):
        raise InputError(
            f"{base}: the processor adds {proc.num_query_tokens} image tokens, the model has "
            f"{model.config.num_query_tokens} queries (fix num_query_tokens in processor_config.json)"
        )
    return Loaded(model.eval(), proc.tokenizer, spec, src, FAMILY, {"prompt": prompt or DEFAULT_PROMPT})


def check_language_model(model: Any, base: str) -> None:
    """What edgevqa cannot export is refused before any training (export/families/qformer.py)."""
    from edgevqa.export.families.qformer import check_text_model

    try:
        check_text_model(model, model.config.num_query_tokens + 2)
    except InputError as e:
        raise InputError(f"{base}: {e}") from None


def processor(loaded: Loaded) -> Any:
    """The ``Blip2Processor`` of a loaded model: its tokenizer, image settings and query count."""
    from transformers import Blip2Processor, BlipImageProcessorPil

    spec = loaded.image
    ip = BlipImageProcessorPil(
        size={"height": spec.height, "width": spec.width},
        resample=PIL_CODE[spec.resample],
        rescale_factor=spec.rescale_factor,
        image_mean=list(spec.mean),
        image_std=list(spec.std),
        do_convert_rgb=spec.do_convert_rgb,
    )
    base = loaded.model.get_base_model() if hasattr(loaded.model, "get_base_model") else loaded.model
    return Blip2Processor(
        image_processor=ip, tokenizer=loaded.tokenizer, num_query_tokens=base.config.num_query_tokens
    )


def save_model_dir(loaded: Loaded, out: Path) -> None:
    """A folder plain transformers loads (``Blip2ForConditionalGeneration``, ``Blip2Processor``),
    with the prompt template beside it."""
    loaded.model.save_pretrained(out, safe_serialization=True)
    as_saved(loaded.tokenizer)
    processor(loaded).save_pretrained(out)
    (out / SETTINGS).write_text(json.dumps({"prompt": prompt_of(loaded)}, indent=2))


def save_merged(model: Any, loaded: Loaded, out: Path) -> None:
    """A LoRA run's model/ (MERGED_WITH_ADAPTER), after its adapter/ is saved. Merged in place, not
    in a copy (a 7B model twice would not fit where it trained): the run's final report then
    evaluates the merged weights, which answer as the adapted ones (export proves it per run)."""
    merged = model.merge_and_unload()
    save_model_dir(Loaded(merged, loaded.tokenizer, loaded.image, loaded.source, FAMILY, loaded.extra), out)


def prompt_of(loaded: Loaded) -> str:
    return (loaded.extra or {}).get("prompt") or DEFAULT_PROMPT


def num_queries(model: Any) -> int:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return int(base.config.num_query_tokens)


# ---------------------------------------------------------------------------------------------
# tensors


def as_records(items: list) -> list:
    """Caption records (stage 1) as VQA records: the caption answers CAPTION_QUESTION, so stage 1
    trains, validates and reports through the same prompt, loss and exact match as stage 3."""
    return [
        r
        if isinstance(r, VQARecord)
        else VQARecord(r.image, CAPTION_QUESTION, r.caption, "open", "caption", r.id, dict(r.meta))
        for r in items
    ]


def prompt_ids(tok: Any, question: str, template: str, n_image: int, image_id: int) -> list[int]:
    """What ``Blip2Processor`` builds: the image tokens, then the text with the tokenizer's specials."""
    return [image_id] * n_image + tok(template.format(question=question))["input_ids"]


def encode(loaded: Loaded, records: list, root: str | Path, cfg: TrainConfig) -> Encoded:
    """Prompt and answer ids of ``records`` (caption records become stage 1's question); a prompt
    longer than ``--max-question-tokens`` is refused (the runtime refuses it too); answers are cut
    to ``--max-answer-tokens`` (captions: ``--max-caption-tokens``) + eos."""
    tok, n = loaded.tokenizer, num_queries(loaded.model)
    base = loaded.model.get_base_model() if hasattr(loaded.model, "get_base_model") else loaded.model
    image_id = int(base.config.image_token_id)
    captions = any(not isinstance(r, VQARecord) for r in records)
    records = as_records(records)
    template = cfg.prompt or prompt_of(loaded)
    p_ids = [prompt_ids(tok, r.question, template, n, image_id) for r in records]
    for r, ids in zip(records, p_ids):
        if len(ids) - n > cfg.max_question_tokens:
            raise InputError(
                f"record {r.id or r.question!r}: its prompt is {len(ids) - n} tokens, more than "
                f"--max-question-tokens {cfg.max_question_tokens}"
            )
    limit = cfg.max_caption_tokens if captions else cfg.max_answer_tokens
    a_ids = tok([r.answer for r in records], add_special_tokens=False)["input_ids"] if records else []
    answers = [ids[:limit] + [tok.eos_token_id] for ids in a_ids]
    return Encoded(list(records), [r.image_path(root) for r in records], p_ids, answers)


def make_batch(loaded: Loaded, enc: Encoded, idx: Any, images: ImageCache) -> dict[str, Any]:
    """Tensors for ``model(**batch)``: prompt + answer, right-padded; labels on the answer only."""
    import torch

    pad_id = loaded.tokenizer.pad_token_id
    seqs = [enc.prompt_ids[i] + enc.answer_ids[i] for i in idx]
    ids = pad(seqs, pad_id)
    labels = pad([[-100] * len(enc.prompt_ids[i]) + enc.answer_ids[i] for i in idx], -100)
    mask = pad([[1] * len(s) for s in seqs], 0)
    pixels = np.stack([images.get(enc.image_paths[i]) for i in idx])
    return {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(mask),
        "pixel_values": torch.from_numpy(pixels),
        "labels": torch.from_numpy(labels),
    }


def teacher_forced_logits(model: Any, batch: dict[str, Any]) -> Any:
    """Logits of the whole teacher-forced sequence (the merge check)."""
    return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


# ---------------------------------------------------------------------------------------------
# generate: the reference (train/prefix_lm.py)


def generate_answers(
    model: Any,
    tokenizer: Any,
    enc: Encoded,
    images: ImageCache,
    max_answer_tokens: int,
    batch_size: int = 16,
    progress: bool = False,
) -> Generated:
    """Greedy answers from ``model.generate`` as a user runs it."""
    return prefix_lm.generate_answers(model, tokenizer, enc, images, max_answer_tokens, batch_size, progress)


def answer(
    loaded: Loaded, pixels: Any, question: str, spec: dict[str, Any], streamer: Any = None
) -> tuple[str, list[int]]:
    """One greedy answer with ``generate`` (the bench's PyTorch side): text and answer ids."""
    model, tok = loaded.model, loaded.tokenizer
    ids = prompt_ids(tok, question, prompt_of(loaded), num_queries(model), int(model.config.image_token_id))
    return prefix_lm.answer(model, tok, ids, pixels, spec, streamer)


def sample_answers(
    loaded: Loaded, enc: Encoded, images: ImageCache, i: int, n: int, sampling: Any, cfg: TrainConfig
) -> list[str]:
    """``n`` answers to question ``i`` sampled by ``generate`` (temperature / top-k / top-p)."""
    return prefix_lm.sample_answers(
        loaded.model, loaded.tokenizer, enc, images, i, n, sampling, cfg.max_answer_tokens
    )


# ---------------------------------------------------------------------------------------------
# what trains


def prepare(model: Any, cfg: TrainConfig) -> Any:
    """--freeze-vision (the stage recipes' default) keeps the vision encoder fixed; --lora (the
    stage recipes' default) puts LoRA on the LM's attention projections and trains the Q-Former and
    the projection whole; without it every weight not frozen trains."""
    if cfg.freeze_vision:
        for p in model.vision_model.parameters():
            p.requires_grad_(False)
    if cfg.lora:
        return lora.wrap(model, cfg, _LM_ATTN, modules_to_save=list(TRAINED_WHOLE))
    return model
