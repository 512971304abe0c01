"""PaliGemma on the export side: traceable wrappers over the HF modules' own weights, their dummy
and real inputs, and the manifest's settings. The graph contract is edgevqa/families/paligemma.py.

The decoder is written out layer by layer (as BLIP's is) instead of tracing transformers' Cache
objects: the KV cache becomes two stacked tensors [layers, batch, kv heads, past, head_dim] that
the runtime passes back in, and the attention mask comes in as an additive bias the runtime builds
(bidirectional over image + prompt in the prefill, causal for the answer). Gemma 2 (PaliGemma 2)
differs by its extra norms around attention and MLP, the query scale and the logit soft-caps; both
are read from the modules and config, never from the family name.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from edgevqa import bundle
from edgevqa.errors import InputError
from edgevqa.train.base import Loaded
from edgevqa.train.data import ImageCache

NEG = torch.finfo(torch.float32).min  # what transformers adds where a query may not attend


def _lm(model: nn.Module) -> nn.Module:
    return model.model.language_model


class VisionEncoder(nn.Module):
    """pixel_values -> image_embeds: SigLIP's last hidden state through the projector, exactly what
    the model splices over the image placeholder tokens."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.tower, self.projector = model.model.vision_tower, model.model.multi_modal_projector

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projector(self.tower(pixel_values=pixel_values).last_hidden_state)


class EmbedTokens(nn.Module):
    """input_ids -> inputs_embeds, scaled by sqrt(hidden) as Gemma's embedding module scales them."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.embed = _lm(model).embed_tokens

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed(input_ids)


class DecoderStep(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        lm, cfg = _lm(model), model.config.text_config
        self.layers, self.norm = lm.layers, lm.norm
        rope = getattr(cfg, "rope_parameters", None) or {}
        if rope.get("rope_type", "default") != "default":
            raise InputError(f"rope type {rope.get('rope_type')!r} is not exported by edgevqa (default only)")
        self.register_buffer("inv_freq", lm.rotary_emb.inv_freq.detach().clone(), persistent=False)
        self.rope_scale = float(getattr(lm.rotary_emb, "attention_scaling", 1.0))
        self.n_heads, self.n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.scaling = self.layers[0].self_attn.scaling
        self.attn_cap = getattr(cfg, "attn_logit_softcapping", None)
        self.final_cap = getattr(cfg, "final_logit_softcapping", None)
        # the LM head is tied to the embedding; as a transposed constant of its own the int8 and
        # int4 quantizers see a plain weight instead of a Transpose of the Gather's table
        head = model.lm_head.weight.detach().t().contiguous()
        self.lm_weight = nn.Parameter(head, requires_grad=False)

    def rotary(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.rope_scale).to(dtype)[:, None], (emb.sin() * self.rope_scale).to(dtype)[
            :, None
        ]

    def attend(self, attn: nn.Module, x: torch.Tensor, cos, sin, past_k, past_v, bias):
        b, t, _ = x.shape
        q = attn.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        if past_k is not None:
            k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
        rep = self.n_heads // self.n_kv
        kk, vv = (k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)) if rep > 1 else (k, v)
        scores = torch.matmul(q, kk.transpose(2, 3)) * self.scaling
        if self.attn_cap is not None:
            scores = torch.tanh(scores / self.attn_cap) * self.attn_cap
        probs = torch.softmax((scores + bias).float(), dim=-1).to(q.dtype)
        ctx = torch.matmul(probs, vv).transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim)
        return attn.o_proj(ctx), k, v

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_bias: torch.Tensor,
        position_ids: torch.Tensor,
        logit_positions: torch.Tensor,
        past_key: torch.Tensor | None = None,
        past_value: torch.Tensor | None = None,
    ):
        x = inputs_embeds
        cos, sin = self.rotary(position_ids, x.dtype)
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            pk = None if past_key is None else past_key[i]
            pv = None if past_value is None else past_value[i]
            h, k, v = self.attend(layer.self_attn, layer.input_layernorm(x), cos, sin, pk, pv, attention_bias)
            keys.append(k)
            values.append(v)
            if hasattr(layer, "pre_feedforward_layernorm"):  # Gemma 2: norms after attention and MLP
                x = x + layer.post_attention_layernorm(h)
                x = x + layer.post_feedforward_layernorm(layer.mlp(layer.pre_feedforward_layernorm(x)))
            else:
                x = x + h
                x = x + layer.mlp(layer.post_attention_layernorm(x))
        picked = torch.gather(x, 1, logit_positions[..., None].expand(-1, -1, x.shape[-1]))
        logits = torch.matmul(self.norm(picked), self.lm_weight)
        if self.final_cap is not None:
            logits = torch.tanh(logits / self.final_cap) * self.final_cap
        return logits, torch.stack(keys), torch.stack(values)


class DecoderFirst(DecoderStep):
    """The prefill without a cache in (TensorRT bundles)."""

    def forward(self, inputs_embeds, attention_bias, position_ids, logit_positions):
        return super().forward(inputs_embeds, attention_bias, position_ids, logit_positions)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


WRAPPERS = {
    "vision_encoder": VisionEncoder,
    "embed_tokens": EmbedTokens,
    "decoder_step": DecoderStep,
    "decoder_first": DecoderFirst,
}


# ---------------------------------------------------------------------------------------------
# inputs


def decoder_shape(model: Any) -> dict[str, int]:
    tc, vc = model.config.text_config, model.config.vision_config
    return {
        "num_layers": tc.num_hidden_layers,
        "num_kv_heads": tc.num_key_value_heads,
        "head_dim": getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads,
        "hidden_size": tc.hidden_size,
        "vocab_size": tc.vocab_size,
        "num_image_tokens": (vc.image_size // vc.patch_size) ** 2,
    }


def prefix_bias(rows: int, t: int) -> torch.Tensor:
    """The prefill's mask: every prefix token sees every other (image + prompt, bidirectional)."""
    return torch.zeros(rows, 1, t, t)


def causal_bias(rows: int, t: int, past: int) -> torch.Tensor:
    """New token i (absolute position past+i) sees the cache and the new tokens up to itself."""
    allowed = torch.arange(past + t)[None, :] <= past + torch.arange(t)[:, None]
    return torch.where(allowed, 0.0, NEG).expand(rows, 1, t, past + t).contiguous()


def dummy_inputs(
    model: Any, graph: str, batch: int = 2, question: int = 7, past: int = 3, new: int = 1
) -> dict[str, torch.Tensor]:
    """Inputs of the right dtypes and shapes; sizes differ per axis so no axis is confused."""
    s = decoder_shape(model)
    vc = model.config.vision_config
    g = torch.Generator().manual_seed(0)
    t = new + question  # the step's new tokens: T > 1 keeps the mask general at trace time
    cache = (s["num_layers"], batch, s["num_kv_heads"], past, s["head_dim"])
    step = {
        "inputs_embeds": torch.randn(batch, t, s["hidden_size"], generator=g),
        "attention_bias": causal_bias(batch, t, past),
        "position_ids": (torch.arange(t) + past + 1).expand(batch, t).contiguous(),
        "logit_positions": torch.tensor([[t - 1, 0]] * batch),
    }
    first = {
        **step,
        "attention_bias": prefix_bias(batch, t),
        "position_ids": (torch.arange(t) + 1).expand(batch, t),
    }
    return {
        "vision_encoder": lambda: {
            "pixel_values": torch.randn(batch, 3, vc.image_size, vc.image_size, generator=g)
        },
        "embed_tokens": lambda: {"input_ids": torch.randint(5, s["vocab_size"], (batch, t), generator=g)},
        "decoder_step": lambda: {
            **step,
            "past_key": torch.randn(*cache, generator=g),
            "past_value": torch.randn(*cache, generator=g),
        },
        "decoder_first": lambda: {**first, "position_ids": first["position_ids"].contiguous()},
    }[graph]()


def prefill_inputs(model: Any, prompt: list[int], pixels: np.ndarray) -> dict[str, torch.Tensor]:
    """The prefill of one prompt: image tokens spliced over their placeholders, as the model does."""
    vis, emb = VisionEncoder(model).eval(), EmbedTokens(model).eval()
    ids = torch.tensor([prompt])
    image = vis(torch.from_numpy(pixels)[None])
    is_image = ids[0] == model.config.image_token_id
    x = emb(torch.where(is_image, torch.zeros_like(ids), ids))
    x[0, is_image] = image[0]
    t = len(prompt)
    return {
        "inputs_embeds": x,
        "attention_bias": prefix_bias(1, t),
        "position_ids": torch.arange(1, t + 1)[None],
        "logit_positions": torch.tensor([[t - 1]]),
    }


def graph_inputs(loaded: Loaded, enc: Any, images: ImageCache, n: int) -> dict[str, list[dict]]:
    """Real inputs for each graph, from the first ``n`` validation questions (batch 1 each): the
    prefill of the prompt, then one step that feeds the first two answer tokens on its cache."""
    model = loaded.model
    feeds: dict[str, list[dict]] = {g: [] for g in WRAPPERS}
    step, emb = DecoderStep(model).eval(), EmbedTokens(model).eval()
    with torch.inference_mode():
        for i in range(min(n, len(enc.records))):
            pixels = images.get(enc.image_paths[i])
            prefill = prefill_inputs(model, enc.prompt_ids[i], pixels)
            _, k, v = step(**prefill)
            nxt = torch.tensor([enc.answer_ids[i][:2]])
            t, past = nxt.shape[1], len(enc.prompt_ids[i])
            feeds["vision_encoder"].append({"pixel_values": torch.from_numpy(pixels)[None]})
            feeds["embed_tokens"].append({"input_ids": torch.tensor([enc.prompt_ids[i][-4:]])})
            feeds["decoder_first"].append(prefill)
            feeds["decoder_step"].append(
                {
                    "inputs_embeds": emb(nxt),
                    "attention_bias": causal_bias(1, t, past),
                    "position_ids": torch.arange(past + 1, past + t + 1)[None],
                    "logit_positions": torch.arange(t)[None],
                    "past_key": k,
                    "past_value": v,
                }
            )
    return feeds


def manifest_parts(
    loaded: Loaded, max_question_tokens: int, max_answer_tokens: int
) -> tuple[bundle.TextSpec, bundle.DecoderSpec, dict[str, Any]]:
    """Token ids and lengths, the grouped-query KV-cache shape, and the prompt's settings."""
    from edgevqa.train.families import paligemma as train_side

    tok, model = loaded.tokenizer, loaded.model
    s = decoder_shape(model)
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
        floor.Use("decoder_step", prefix, 1, label="decoder_prefill", head_n=vocab, head_rows=1),
        floor.Use("decoder_step", 1, answer_tokens - 1),
    ]
