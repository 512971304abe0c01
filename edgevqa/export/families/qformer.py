"""The Q-Former family on the export side: traceable wrappers over a ``Blip2ForConditionalGeneration``'s
own weights, their dummy and real inputs, and the manifest's settings. The graph contract is
edgevqa/families/prefix_lm.py; the decoder is edgevqa/export/causal_lm.py over the BLIP-2 model's
causal LM (Llama, Qwen 2, Gemma, Gemma 2, Mistral, OPT and BLOOM layers).

The LM is causal over the whole sequence (query tokens, then the prompt, then the answer), so every
mask here is causal and positions count from 0, as ``generate`` counts them.

Example:
    >>> from edgevqa.export.families import qformer as xq
    >>> xq.export_graph(model, "vision_encoder", Path("vision_encoder.onnx"))  # doctest: +SKIP
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
from edgevqa.export.causal_lm import causal_bias
from edgevqa.families.qformer import SPEC
from edgevqa.train.base import Loaded

TEXT_TYPES = ("llama", "qwen2", "mistral", "gemma", "gemma2", "opt", "bloom")
# no two axes share a size, so the tracer cannot tie them (picked is 2 in every dummy)
TRACE_SIZES = {"batch": 3, "question": 6, "past": 5, "new": 4}


def check_text_model(model: Any, positions: int) -> None:
    """Refuse what the graphs do not reproduce: an encoder-decoder LM (BLIP-2 with Flan-T5), a text
    model other than TEXT_TYPES, OPT of opt-350m's shape, a length-dependent RoPE, a short window."""
    if not model.config.use_decoder_only_language_model:
        raise InputError(
            f"BLIP-2 with an encoder-decoder language model ({model.config.text_config.model_type}) "
            f"is not exported by edgevqa (it exports causal LMs: {', '.join(TEXT_TYPES)})"
        )
    causal_lm.check_text_model(model.config.text_config, positions, TEXT_TYPES, "BLIP-2")


class VisionEncoder(nn.Module):
    """pixel_values -> image_embeds [B, Q, D]: the vision encoder, the Q-Former's learned queries
    cross-attending to its features, and the projection into the LM's width; exactly what
    ``get_image_features(...).pooler_output`` splices over the image placeholder tokens."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.vision, self.qformer = model.vision_model, model.qformer
        self.query_tokens, self.projection = model.query_tokens, model.language_projection

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        feats = self.vision(pixel_values=pixel_values).last_hidden_state
        queries = self.query_tokens.expand(feats.shape[0], -1, -1)
        mask = torch.ones(feats.shape[:-1], dtype=torch.long)
        out = self.qformer(query_embeds=queries, encoder_hidden_states=feats, encoder_attention_mask=mask)
        return self.projection(out.last_hidden_state)


class EmbedTokens(nn.Module):
    """input_ids -> inputs_embeds: the LM's own embedding module (Gemma's scales by sqrt(hidden))."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.embed = model.language_model.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids)


def DecoderStep(model: nn.Module) -> nn.Module:  # noqa: N802 (a wrapper like the classes beside it)
    """One decoder call of the BLIP-2 model's causal LM: T new tokens on a cache of P
    (export/causal_lm.py writes out its layers)."""
    check_text_model(model, model.config.num_query_tokens + 2)
    return causal_lm.writeout(model.language_model, model.config.text_config)


class DecoderFirst(nn.Module):
    """The prefill without a cache in (TensorRT cannot build a profile with a zero-length past)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.step = DecoderStep(model)

    def forward(self, inputs_embeds, attention_bias, position_ids, logit_positions):
        return self.step(inputs_embeds, attention_bias, position_ids, logit_positions)


WRAPPERS: dict[str, type[nn.Module]] = {
    "vision_encoder": VisionEncoder,
    "embed_tokens": EmbedTokens,
    "decoder_step": DecoderStep,
    "decoder_first": DecoderFirst,
}


# ---------------------------------------------------------------------------------------------
# inputs


def decoder_shape(model: Any) -> dict[str, int]:
    """The KV-cache and embedding sizes the runtime needs."""
    tc = model.config.text_config
    return {
        "num_layers": tc.num_hidden_layers,
        "num_kv_heads": causal_lm.kv_heads(tc),
        "head_dim": causal_lm.head_dim(tc),
        "hidden_size": tc.hidden_size,
        "vocab_size": tc.vocab_size,
        "num_image_tokens": model.config.num_query_tokens,
    }


def dummy_inputs(
    model: Any, graph: str, batch: int = 2, question: int = 7, past: int = 3, new: int = 1
) -> dict[str, torch.Tensor]:
    """Random inputs of the right dtypes and shapes; every decoder mask is causal, and the
    decoders pick 2 positions for logits (the last and the first)."""
    s = decoder_shape(model)
    size = model.config.vision_config.image_size
    g = torch.Generator().manual_seed(0)

    def step(t: int, p: int) -> dict[str, torch.Tensor]:
        return {
            "inputs_embeds": torch.randn(batch, t, s["hidden_size"], generator=g),
            "attention_bias": causal_bias(batch, t, p),
            "position_ids": (torch.arange(t) + p).expand(batch, t).contiguous(),
            "logit_positions": torch.tensor([[t - 1, 0]] * batch),
        }

    if graph == "vision_encoder":
        return {"pixel_values": torch.randn(batch, 3, size, size, generator=g)}
    if graph == "embed_tokens":
        return {"input_ids": torch.randint(0, s["vocab_size"], (batch, question + new), generator=g)}
    if graph == "decoder_first":
        return step(question + new, 0)
    if graph == "decoder_step":
        cache = (s["num_layers"], batch, s["num_kv_heads"], past, s["head_dim"])
        return {
            **step(new, past),
            "past_key": torch.randn(*cache, generator=g),
            "past_value": torch.randn(*cache, generator=g),
        }
    raise KeyError(f"unknown graph {graph!r}; the Q-Former family has {', '.join(WRAPPERS)}")


def as_pixels(pixels: Any) -> torch.Tensor:
    """[1, 3, H, W] float32 from one preprocessed image ([3, H, W] or [1, 3, H, W])."""
    arr = np.asarray(pixels, dtype=np.float32)
    return torch.from_numpy(arr.reshape(1, 3, *arr.shape[-2:]).copy())


def prefill_inputs(model: Any, prompt: list[int], pixels: Any) -> dict[str, torch.Tensor]:
    """The whole prompt at once (batch 1): the query tokens spliced over the image placeholders,
    a causal mask, positions 0..T-1, logits at the last position."""
    ids = torch.tensor([list(prompt)])
    is_image = ids[0] == model.config.image_token_id
    with torch.no_grad():
        image = VisionEncoder(model).eval()(as_pixels(pixels))
        if int(is_image.sum()) != image.shape[1]:
            n_img = int(is_image.sum())
            raise InputError(f"the prompt holds {n_img} image tokens, the image gives {image.shape[1]}")
        x = EmbedTokens(model)(ids)
        x[0, is_image] = image[0].to(x.dtype)
    t = len(prompt)
    return {
        "inputs_embeds": x,
        "attention_bias": causal_bias(1, t, 0),
        "position_ids": torch.arange(t)[None],
        "logit_positions": torch.tensor([[t - 1]]),
    }


def graph_inputs(
    model: Any, prompts: Any, pixels: Any, n: int = 8
) -> dict[str, list[dict[str, torch.Tensor]]]:
    """Real inputs for each graph from the first ``n`` prompts (batch 1 each): the image, the
    prompt's text ids, the prefill (decoder_first; decoder_step with an empty cache), the query
    tokens alone and the prompt on their cache (as the runtime runs them), and one greedy step.

    Args:
        model: a Blip2ForConditionalGeneration, or the exporter's ``Loaded`` (then ``prompts`` is
            the train side's ``Encoded`` and ``pixels`` its ``ImageCache``).
    """
    if isinstance(model, Loaded):  # exporter.py: (loaded, encoded questions, image cache)
        enc, images = prompts, pixels
        prompts = enc.prompt_ids[:n]
        pixels = [images.get(p) for p in enc.image_paths[: len(prompts)]]
        model = model.model
    feeds: dict[str, list[dict]] = {g: [] for g in WRAPPERS}
    step, emb = DecoderStep(model).eval(), EmbedTokens(model).eval()
    s = decoder_shape(model)
    empty = torch.zeros(s["num_layers"], 1, s["num_kv_heads"], 0, s["head_dim"])
    q = s["num_image_tokens"]
    with torch.no_grad():
        for prompt, px in list(zip(prompts, pixels))[:n]:
            pre = prefill_inputs(model, prompt, px)
            t = len(prompt)
            logits, k, v = step(**pre)
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            x = pre["inputs_embeds"]
            image_part = {  # the query tokens alone: the cache the runtime keeps with the image
                "inputs_embeds": x[:, :q],
                "attention_bias": causal_bias(1, q, 0),
                "position_ids": torch.arange(q)[None],
                "logit_positions": torch.tensor([[q - 1]]),
            }
            _, qk, qv = step(**image_part)
            feeds["vision_encoder"].append({"pixel_values": as_pixels(px)})
            feeds["embed_tokens"].append({"input_ids": torch.tensor([[i for i in prompt][q:]])})
            feeds["decoder_first"].append(pre)
            feeds["decoder_step"] += [
                {**pre, "past_key": empty, "past_value": empty},
                {**image_part, "past_key": empty, "past_value": empty},
                {
                    "inputs_embeds": x[:, q:],
                    "attention_bias": causal_bias(1, t - q, q),
                    "position_ids": torch.arange(q, t)[None],
                    "logit_positions": torch.tensor([[t - q - 1]]),
                    "past_key": qk,
                    "past_value": qv,
                },
                {
                    "inputs_embeds": emb(nxt),
                    "attention_bias": causal_bias(1, 1, t),
                    "position_ids": torch.tensor([[t]]),
                    "logit_positions": torch.tensor([[0]]),
                    "past_key": k,
                    "past_value": v,
                },
            ]
    return feeds


def export_graph(model: Any, graph: str, path: Path) -> Path:
    """Export ``graph`` of ``model`` to ``path`` with the spec's names and dynamic axes."""
    from edgevqa.export.onnx import export_graph as export_family_graph

    return export_family_graph(model, SPEC, graph, Path(path))


# ---------------------------------------------------------------------------------------------
# manifest and bench


def manifest_parts(
    loaded: Loaded, max_question_tokens: int, max_answer_tokens: int
) -> tuple[bundle.TextSpec, bundle.DecoderSpec, dict[str, Any]]:
    """Token ids and lengths, the grouped-query KV-cache shape, and the prompt's settings."""
    from edgevqa.train.families import qformer as train_side

    tok, model = loaded.tokenizer, loaded.model
    s = decoder_shape(model)
    check_text_model(model, s["num_image_tokens"] + max_question_tokens + max_answer_tokens + 2)
    eos = train_side.eos_ids(model, tok)
    text = bundle.TextSpec(
        bos_id=tok.bos_token_id if tok.bos_token_id is not None else eos[0],
        sep_id=eos[0],
        pad_id=tok.pad_token_id if tok.pad_token_id is not None else eos[0],
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
    image_id = int(model.config.image_token_id)
    family = {
        "image_token_id": image_id,
        "image_token": tok.convert_ids_to_tokens(image_id),
        "num_image_tokens": s["num_image_tokens"],
        "hidden_size": s["hidden_size"],
        "prompt": train_side.prompt_of(loaded),
    }
    return text, decoder, family


def floor_uses(config: Any, question_tokens: int, answer_tokens: int) -> list[Any]:
    """How one answer uses the graphs (bench/floor.py): the vision encoder sees the patches (the
    Q-Former's few queries are a small part of it); the query tokens' prefill runs once per image;
    the prompt's prefill (bos + the template's text) on their cache, the LM head on its last
    position only; then one decoder step per further answer token."""
    from edgevqa.bench import floor

    v, t = config.vision_config, config.text_config
    patches = (v.image_size // v.patch_size) ** 2 + 1
    return [
        floor.Use("vision_encoder", patches, 1),
        floor.Use(
            "decoder_step",
            config.num_query_tokens,
            1,
            label="decoder_image",
            head_n=t.vocab_size,
            head_rows=1,
            prefill=True,
        ),
        floor.Use(
            "decoder_step",
            1 + question_tokens,
            1,
            label="decoder_prefill",
            head_n=t.vocab_size,
            head_rows=1,
            prefill=True,
        ),
        floor.Use("decoder_step", 1, answer_tokens - 1),
    ]
