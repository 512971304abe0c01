"""BLIP VQA on the training side: the family interface the loop, the exporter's merge check and
the bench use. BLIP's own code lives beside the loop (train/models.py: presets, loading, saving;
train/data.py: tensors; train/infer.py: generate; train/lora.py; dapt.py and caption.py: the
paper 000 / 002 recipes that only BLIP has).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgevqa.config import TrainConfig
from edgevqa.demo import Stage
from edgevqa.errors import InputError
from edgevqa.families import registry
from edgevqa.train import data, infer, lora, models
from edgevqa.train.base import Generated, Loaded

FAMILY = "blip-vqa"
RECIPES = ("default", "vqa", "dapt", "dapt-sd", "caption")
# the demo (edgevqa/demo.py), measured on 2 cores: 4000 steps at 64 px learn every category,
# side and count included; a peak lr of 2e-3 was worse than 1e-3
DEMO_STAGES = (
    Stage("base", base="tiny-blip", steps=4000, fast_steps=60, lr=1e-3, warmup=300),
    Stage("lora", lora=True, steps=300, fast_steps=20, lr=1e-3, warmup=50),
)


def build_preset(name: str, texts: list[str], tok_dir: Path, cfg: TrainConfig) -> Loaded:
    """tiny-blip: a WordPiece tokenizer from the training texts and a BLIP with random weights."""
    from edgevqa.train.tokenizer import build_wordpiece_tokenizer

    if (tok_dir / "tokenizer.json").is_file():  # a resumed run keeps its vocabulary
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tok_dir)
    else:
        tok = build_wordpiece_tokenizer(set(texts), tok_dir)
    model = models.build_tiny(tok, cfg.image_size, cfg.seed)
    return Loaded(model, tok, models.image_spec_for(cfg.image_size), name, FAMILY)


def load_pretrained(base: str) -> Loaded:
    """A BLIP VQA folder or hub id; a model of another type is refused with one line."""
    local = models.resolve_model_dir(base)
    if local is not None:
        family = registry.family_of_folder(local)
        if family != FAMILY:
            raise InputError(f"{base} is a {family} model, not BLIP VQA")
    return models.load_pretrained(base)


save_model_dir = models.save_model_dir


def encode(loaded: Loaded, records: list, root: str | Path, cfg: TrainConfig) -> data.Encoded:
    return data.encode_records(
        records, root, loaded.tokenizer, cfg.max_question_tokens, cfg.max_answer_tokens
    )


def make_batch(loaded: Loaded, enc: data.Encoded, idx: Any, images: data.ImageCache) -> dict[str, Any]:
    return data.make_batch(enc, idx, images, loaded.tokenizer.pad_token_id)


def generate_answers(
    model: Any,
    tok: Any,
    enc: data.Encoded,
    images: data.ImageCache,
    max_answer_tokens: int,
    progress: bool = False,
) -> Generated:
    return infer.generate_answers(model, tok, enc, images, max_answer_tokens, progress=progress)


def prepare(model: Any, cfg: TrainConfig) -> Any:
    """VQA recipes: freeze the vision encoder (paper 000 eq. 10) and/or wrap with LoRA."""
    if cfg.freeze_vision:
        for p in model.vision_model.parameters():
            p.requires_grad_(False)
    return lora.wrap(model, cfg, lora.targets(cfg)) if cfg.lora else model


def teacher_forced_logits(model: Any, batch: dict[str, Any]) -> Any:
    """Decoder logits for teacher-forced answers (the full forward pass): the merge check."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    image = base.vision_model(pixel_values=batch["pixel_values"]).last_hidden_state
    q = base.text_encoder(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], encoder_hidden_states=image
    ).last_hidden_state
    return base.text_decoder(
        input_ids=batch["decoder_input_ids"],
        encoder_hidden_states=q,
        encoder_attention_mask=batch["attention_mask"],
    ).logits


def arch_tokenizer(words: list[str], out: Path) -> Any:
    """``bench --arch``: a WordPiece tokenizer of ``words``."""
    from edgevqa.train.tokenizer import build_wordpiece_tokenizer

    return build_wordpiece_tokenizer(words, out)


def arch_config(name: str) -> Any:
    """``bench --arch``: the architecture's config (default special-token ids)."""
    return models.blip_config(name)


def arch(name: str, tokenizer: Any) -> Loaded:
    """``bench --arch``: the architecture with random weights at its real size."""
    from transformers import BlipForQuestionAnswering

    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "sep_token_id": tokenizer.sep_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    cfg = models.blip_config(name, vocab_size=len(tokenizer), token_ids=ids)
    model = BlipForQuestionAnswering(cfg).eval()
    return Loaded(model, tokenizer, models.image_spec_for(cfg.vision_config.image_size), name, FAMILY)


def sample_answers(
    loaded: Loaded,
    enc: data.Encoded,
    images: data.ImageCache,
    i: int,
    n: int,
    sampling: Any,
    cfg: TrainConfig,
) -> list[str]:
    """``n`` answers to question ``i`` sampled by ``generate`` (temperature / top-k / top-p)."""
    import torch

    model, tok = loaded.model, loaded.tokenizer
    q = torch.tensor([enc.question_ids[i]], dtype=torch.long)
    with torch.inference_mode():
        out = model.generate(
            input_ids=q,
            pixel_values=torch.from_numpy(images.get(enc.image_paths[i]))[None],
            attention_mask=torch.ones_like(q),
            max_new_tokens=cfg.max_answer_tokens,
            **infer.sampling_kwargs(sampling, n),
        )
    ids = [infer.strip_answer(seq, tok.sep_token_id, tok.pad_token_id) for seq in out.tolist()]
    return [tok.decode(x, skip_special_tokens=True) for x in ids]


def answer(
    loaded: Loaded, pixels: Any, question: str, spec: dict[str, Any], streamer: Any = None
) -> tuple[str, list[int]]:
    """One greedy answer with ``generate`` (the bench's PyTorch side): text and answer ids;
    ``streamer`` (a transformers streamer) sees each token as it is generated."""
    import torch

    model, tok = loaded.model, loaded.tokenizer
    ids = tok(question, truncation=True, max_length=spec.get("max_question_tokens", 32), return_tensors="pt")[
        "input_ids"
    ]
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            pixel_values=torch.from_numpy(pixels),
            attention_mask=torch.ones_like(ids),
            max_new_tokens=spec["max_new_tokens"],
            min_new_tokens=spec.get("min_new_tokens", 0),
            do_sample=False,
            num_beams=1,
            streamer=streamer,
        )
    seq = infer.strip_answer(out[0].tolist(), tok.sep_token_id, tok.pad_token_id)
    return tok.decode(seq, skip_special_tokens=True), seq
