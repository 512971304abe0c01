"""PaliGemma on the export side: traceable wrappers over the HF modules' own weights, their dummy
and real inputs, the PyTorch reference, and the manifest's settings. The graph contract is
edgevqa/families/paligemma.py.

The decoder is written out layer by layer (as BLIP's is) instead of tracing transformers' Cache
objects: the KV cache becomes two stacked tensors [layers, batch, kv heads, past, head_dim] that
the runtime passes back in, and the attention mask comes in as an additive bias the runtime builds
(bidirectional over image + prompt in the prefill, causal for the answer). Gemma 2 (PaliGemma 2)
differs by its extra norms around attention and MLP, the query scale and the logit soft-caps; all
are read from the modules and config, never from the family name.

Example:
    >>> from edgevqa.export.families import paligemma as xpg
    >>> xpg.export_graph(model, "decoder_step", Path("decoder_step.onnx"))
    >>> feeds = xpg.graph_inputs(model, [prompt_ids], [pixels])  # real inputs for validation
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgevqa import bundle
from edgevqa.errors import InputError
from edgevqa.export import causal_lm
from edgevqa.export.causal_lm import causal_bias, prefix_bias
from edgevqa.families.paligemma import SPEC
from edgevqa.train.base import Loaded

TEXT_TYPES = ("gemma", "gemma2")  # PaliGemma 1 and 2; Gemma 3's q/k norms are not written out here
# sizes the graphs are traced at: T > 1 and P > 0 keep the mask and the cache general, and no two
# axes share a size, so the tracer cannot tie them (picked is 2 in every dummy)
TRACE_SIZES = {"batch": 3, "question": 6, "past": 5, "new": 4}


def _lm(model: nn.Module) -> nn.Module:
    return model.model.language_model


class VisionEncoder(nn.Module):
    """pixel_values -> image_embeds: SigLIP's last hidden state through the projector, exactly what
    ``get_image_features(...).pooler_output`` splices over the image placeholder tokens (the
    installed transformers does not rescale them; Gemma's embedding scales the text tokens only)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.tower, self.projector = model.model.vision_tower, model.model.multi_modal_projector

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projector(self.tower(pixel_values=pixel_values).last_hidden_state)


class EmbedTokens(nn.Module):
    """input_ids -> inputs_embeds, scaled by sqrt(hidden) as Gemma's embedding module scales them.
    An image token id past the vocabulary embeds as id 0, as PaliGemma does before splicing (the
    runtime never embeds image tokens: it splices the vision graph's output there)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.embed = _lm(model).embed_tokens
        self.vocab = model.config.text_config.vocab_size
        self.oov_image = model.config.image_token_id >= self.vocab  # only then is the remap needed

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.oov_image:
            input_ids = torch.where(input_ids >= self.vocab, torch.zeros_like(input_ids), input_ids)
        return self.embed(input_ids)


class DecoderStep(causal_lm.Decoder):
    """One decoder call over Gemma (or Gemma 2): T new tokens on a cache of P, logits at the
    picked positions only (edgevqa/export/causal_lm.py)."""

    def __init__(self, model: nn.Module):
        s = decoder_shape(model)
        check_text_model(model.config.text_config, s["num_image_tokens"] + 2)  # image, bos, "\n"
        super().__init__(_lm(model), model.config.text_config, model.lm_head.weight)


class DecoderFirst(DecoderStep):
    """The prefill without a cache in (TensorRT cannot build a profile with a zero-length past)."""

    def forward(self, inputs_embeds, attention_bias, position_ids, logit_positions):
        return super().forward(inputs_embeds, attention_bias, position_ids, logit_positions)


WRAPPERS: dict[str, type[nn.Module]] = {
    "vision_encoder": VisionEncoder,
    "embed_tokens": EmbedTokens,
    "decoder_step": DecoderStep,
    "decoder_first": DecoderFirst,
}


def check_text_model(cfg: Any, positions: int) -> None:
    """Refuse a text model the decoder graph does not reproduce (causal_lm.check_text_model)."""
    causal_lm.check_text_model(cfg, positions, TEXT_TYPES, "PaliGemma")


# ---------------------------------------------------------------------------------------------
# inputs


def decoder_shape(model: Any) -> dict[str, int]:
    """The KV-cache and embedding sizes the runtime needs: layers, KV heads, head dim, hidden,
    vocabulary and image tokens per image."""
    tc, vc = model.config.text_config, model.config.vision_config
    return {
        "num_layers": tc.num_hidden_layers,
        "num_kv_heads": tc.num_key_value_heads,
        "head_dim": getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads,
        "hidden_size": tc.hidden_size,
        "vocab_size": tc.vocab_size,
        "num_image_tokens": (vc.image_size // vc.patch_size) ** 2,
    }


def dummy_inputs(
    model: Any, graph: str, batch: int = 2, question: int = 7, past: int = 3, new: int = 1
) -> dict[str, torch.Tensor]:
    """Random inputs of the right dtypes and shapes. decoder_step: ``new`` tokens on a cache of
    ``past`` (causal bias); decoder_first and embed_tokens: a prefix of ``question + new`` tokens
    (bidirectional). The decoders pick 2 positions for logits: the last and the first."""
    s = decoder_shape(model)
    vc = model.config.vision_config
    g = torch.Generator().manual_seed(0)

    def step(t: int, p: int, bias: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "inputs_embeds": torch.randn(batch, t, s["hidden_size"], generator=g),
            "attention_bias": bias,
            "position_ids": (torch.arange(t) + p + 1).expand(batch, t).contiguous(),
            "logit_positions": torch.tensor([[t - 1, 0]] * batch),
        }

    if graph == "vision_encoder":
        return {"pixel_values": torch.randn(batch, 3, vc.image_size, vc.image_size, generator=g)}
    if graph == "embed_tokens":
        return {"input_ids": torch.randint(3, s["vocab_size"], (batch, question + new), generator=g)}
    if graph == "decoder_first":
        return step(question + new, 0, prefix_bias(batch, question + new))
    if graph == "decoder_step":
        cache = (s["num_layers"], batch, s["num_kv_heads"], past, s["head_dim"])
        return {
            **step(new, past, causal_bias(batch, new, past)),
            "past_key": torch.randn(*cache, generator=g),
            "past_value": torch.randn(*cache, generator=g),
        }
    raise KeyError(f"unknown graph {graph!r}; PaliGemma has {', '.join(WRAPPERS)}")


def empty_cache(model: Any, rows: int = 1) -> torch.Tensor:
    s = decoder_shape(model)
    return torch.zeros(s["num_layers"], rows, s["num_kv_heads"], 0, s["head_dim"])


def as_pixels(pixels: Any) -> torch.Tensor:
    """[1, 3, H, W] float32 from one preprocessed image ([3, H, W] or [1, 3, H, W])."""
    arr = np.asarray(pixels, dtype=np.float32)
    return torch.from_numpy(arr.reshape(1, 3, *arr.shape[-2:]).copy())


def splice(model: Any, prompt: list[int], image_embeds: torch.Tensor) -> torch.Tensor:
    """[1, T, D]: the prompt's token embeddings with the image embeddings in place of the image
    placeholders, in order (transformers' masked_scatter)."""
    ids = torch.tensor([prompt])
    is_image = ids[0] == model.config.image_token_id
    if int(is_image.sum()) != image_embeds.shape[1]:
        raise InputError(
            f"the prompt holds {int(is_image.sum())} image tokens, the image gives {image_embeds.shape[1]}"
        )
    x = EmbedTokens(model)(ids)
    x[0, is_image] = image_embeds[0].to(x.dtype)
    return x


def prefill_inputs(model: Any, prompt: list[int], pixels: Any) -> dict[str, torch.Tensor]:
    """decoder_first's feed for one prompt (batch 1): the image spliced in, a bidirectional
    prefix, positions 1..T, logits at the last position."""
    with torch.no_grad():  # plain tensors: usable with or without autograd:
        x = splice(model, list(prompt), VisionEncoder(model).eval()(as_pixels(pixels)))
    t = len(prompt)
    return {
        "inputs_embeds": x,
        "attention_bias": prefix_bias(1, t),
        "position_ids": torch.arange(1, t + 1)[None],
        "logit_positions": torch.tensor([[t - 1]]),
    }


def graph_inputs(
    model: Any, prompts: Any, pixels: Any, n: int = 8
) -> dict[str, list[dict[str, torch.Tensor]]]:
    """Real inputs for each graph from the first ``n`` prompts (batch 1 each): the image, the
    prompt's text ids, the prefill (decoder_first; decoder_step with an empty cache) and one greedy
    decode step on the prefill's cache (decoder_step).

    Args:
        model: a PaliGemmaForConditionalGeneration, or the exporter's ``Loaded`` (then ``prompts``
            is the train side's ``Encoded`` and ``pixels`` its ``ImageCache``).
        prompts: prompt ids with the image placeholders, as the processor builds them.
        pixels: one preprocessed image [3, H, W] per prompt.
        n: how many prompts to use.
    """
    if isinstance(model, Loaded):  # exporter.py: (loaded, encoded questions, image cache)
        enc, images = prompts, pixels
        prompts = enc.prompt_ids[:n]
        pixels = [images.get(p) for p in enc.image_paths[: len(prompts)]]
        model = model.model
    feeds: dict[str, list[dict]] = {g: [] for g in WRAPPERS}
    step, emb = DecoderStep(model).eval(), EmbedTokens(model).eval()
    empty = empty_cache(model)
    with torch.no_grad():
        for prompt, px in list(zip(prompts, pixels))[:n]:
            prefill = prefill_inputs(model, prompt, px)
            logits, k, v = step(**prefill)
            t, nxt = len(prompt), logits[:, -1].argmax(-1, keepdim=True)
            text = [i for i in prompt if i != model.config.image_token_id]
            feeds["vision_encoder"].append({"pixel_values": as_pixels(px)})
            feeds["embed_tokens"].append({"input_ids": torch.tensor([text])})
            feeds["decoder_first"].append(prefill)
            feeds["decoder_step"].append({**prefill, "past_key": empty, "past_value": empty})
            feeds["decoder_step"].append(
                {
                    "inputs_embeds": emb(nxt),
                    "attention_bias": causal_bias(1, 1, t),
                    "position_ids": torch.tensor([[t + 1]]),
                    "logit_positions": torch.tensor([[0]]),
                    "past_key": k,
                    "past_value": v,
                }
            )
    return feeds


def reference_logits(
    model: Any, prompt_ids: list[int], pixel_values: np.ndarray, answer_ids: list[int]
) -> torch.Tensor:
    """[len(answer_ids), V]: the HF model's logits that predict each answer token (row i predicts
    answer_ids[i]), teacher-forced over prompt + answer with token_type_ids 0 on the prompt
    (bidirectional) and 1 on the answer (causal)."""
    ids = torch.tensor([list(prompt_ids) + list(answer_ids)])
    types = torch.tensor([[0] * len(prompt_ids) + [1] * len(answer_ids)])
    with torch.inference_mode():
        out = model(
            input_ids=ids,
            pixel_values=as_pixels(pixel_values),
            attention_mask=torch.ones_like(ids),
            token_type_ids=types,
        )
    start = len(prompt_ids) - 1
    return out.logits[0, start : start + len(answer_ids)]


# ---------------------------------------------------------------------------------------------
# export


def export_graph(model: Any, graph: str, path: Path) -> Path:
    """Export ``graph`` of ``model`` to ``path``: one self-contained .onnx file whose input and
    output names and dynamic axes are the spec's (edgevqa/families/paligemma.py)."""
    from edgevqa.export.onnx import export_graph as export_family_graph

    return export_family_graph(model, SPEC, graph, Path(path))


# ---------------------------------------------------------------------------------------------
# manifest and bench


def manifest_parts(
    loaded: Loaded, max_question_tokens: int, max_answer_tokens: int
) -> tuple[bundle.TextSpec, bundle.DecoderSpec, dict[str, Any]]:
    """Token ids and lengths, the grouped-query KV-cache shape, and the prompt's settings."""
    from edgevqa.train.families import paligemma as train_side

    tok, model = loaded.tokenizer, loaded.model
    s = decoder_shape(model)
    # the image, bos, the prompt, "\n", the answer and its eos: every position sees every key
    check_text_model(
        model.config.text_config, s["num_image_tokens"] + max_question_tokens + max_answer_tokens + 3
    )
    eos = train_side.eos_ids(model, tok)
    text = bundle.TextSpec(
        bos_id=tok.bos_token_id,
        sep_id=eos[0],
        pad_id=tok.pad_token_id,
        max_question_tokens=max_question_tokens,
        max_answer_tokens=max_answer_tokens,
        clean_up_tokenization_spaces=bool(getattr(tok, "clean_up_tokenization_spaces", False)),
        eos_ids=tuple(eos),
    )
    decoder = bundle.DecoderSpec(
        num_layers=s["num_layers"],
        num_heads=s["num_kv_heads"],
        head_dim=s["head_dim"],
        vocab_size=s["vocab_size"],
    )
    family = {
        "image_token_id": int(model.config.image_token_id),
        "image_token": tok.convert_ids_to_tokens(int(model.config.image_token_id)),
        "bos_token": tok.bos_token,
        "num_image_tokens": s["num_image_tokens"],
        "hidden_size": s["hidden_size"],
        "prompt": train_side.prompt_of(loaded),
    }
    return text, decoder, family


def floor_uses(config: Any, question_tokens: int, answer_tokens: int) -> list[Any]:
    """How one answer uses the graphs (bench/floor.py): the vision tower sees the patches; the
    prefill runs the image tokens, bos, the prompt text ("answer en" + the question: the bench's
    ``question_tokens``) and "\n" at once, the LM head on its last position only; then one decoder
    step per further answer token."""
    from edgevqa.bench import floor

    v, t = config.vision_config, config.text_config
    prefix = (v.image_size // v.patch_size) ** 2 + 1 + question_tokens + 1
    vocab = t.vocab_size
    return [
        floor.Use("vision_encoder", (v.image_size // v.patch_size) ** 2, 1),
        floor.Use(
            "decoder_step", prefix, 1, label="decoder_prefill", head_n=vocab, head_rows=1, prefill=True
        ),
        floor.Use("decoder_step", 1, answer_tokens - 1),
    ]
