"""The decoder graph every prefix-LM family exports: a causal LM written out layer by layer over
``inputs_embeds`` (Llama-shaped layers: Gemma, Gemma 2, Llama, Qwen 2, Mistral; OPT, the LM of
the published BLIP-2 checkpoints; BLOOM, paper 001's RadBloomz), instead of
tracing transformers' Cache objects. The KV cache is two stacked tensors [layers, batch, kv heads,
past, head_dim] the runtime passes back in; the attention mask comes in as an additive bias the
runtime builds (edgevqa/families/prefix_lm.py). Gemma 2's extra norms, query scale and soft-caps
are read from the modules and config, never from a model name.

Example:
    >>> step = Decoder(lm.model, lm.config, lm.lm_head.weight)   # doctest: +SKIP
    >>> logits, k, v = step(embeds, causal_bias(1, 4, 0), positions, picked)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from edgevqa.errors import InputError

NEG = torch.finfo(torch.float32).min  # what transformers adds where a query may not attend


class Decoder(nn.Module):
    """One decoder call: T new tokens on a cache of P, logits at the picked positions only.

    Args:
        lm: the decoder stack (``layers``, ``norm``, ``rotary_emb``), e.g. ``LlamaModel``.
        cfg: its text config.
        head: the LM head's weight [V, D] (tied or not).
    """

    def __init__(self, lm: nn.Module, cfg: Any, head: torch.Tensor):
        super().__init__()
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        self.layers, self.norm, self.rotary_emb = lm.layers, fusable_norm(lm.norm), lm.rotary_emb
        self.norms = nn.ModuleList(
            nn.ModuleDict({n: fusable_norm(getattr(layer, n)) for n in LAYER_NORMS if hasattr(layer, n)})
            for layer in lm.layers
        )
        self.apply_rope = apply_rotary_pos_emb
        self.n_heads, self.n_kv = cfg.num_attention_heads, kv_heads(cfg)
        self.head_dim = head_dim(cfg)
        self.final_cap = getattr(cfg, "final_logit_softcapping", None)
        self.lm_weight = head_weight(head)

    def attend(self, attn: nn.Module, x, cos, sin, past: tuple | None, bias: torch.Tensor):
        b, t, _ = x.shape
        q = attn.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = self.apply_rope(q, k, cos, sin)
        k, v = with_past(k, v, past)
        # grouped-query attention without repeat_kv: the ``rep`` query heads of a key-value head
        # (heads g*rep .. g*rep+rep-1, as repeat_kv pairs them) are rows of one product with its
        # keys, so the cache is never copied rep times per layer and step
        rep = self.n_heads // self.n_kv
        grouped = q.reshape(b, self.n_kv, rep * t, self.head_dim)
        scores = torch.matmul(grouped, k.transpose(2, 3)).view(b, self.n_heads, t, -1) * attn.scaling
        cap = getattr(attn, "attn_logit_softcapping", None)  # Gemma 2: capped before the mask
        if cap is not None:
            scores = torch.tanh(scores / cap) * cap
        return attn.o_proj(context(scores, bias, v)), k, v

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_bias: torch.Tensor,
        position_ids: torch.Tensor,
        logit_positions: torch.Tensor,
        past_key: torch.Tensor | None = None,
        past_value: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = inputs_embeds
        cos, sin = self.rotary_emb(x, position_ids)
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            past = None if past_key is None else (past_key[i], past_value[i])
            norm = self.norms[i]
            h, k, v = self.attend(layer.self_attn, norm["input_layernorm"](x), cos, sin, past, attention_bias)
            keys.append(k)
            values.append(v)
            if "pre_feedforward_layernorm" in norm:  # Gemma 2: norms after attention and MLP
                x = x + norm["post_attention_layernorm"](h)
                x = x + norm["post_feedforward_layernorm"](layer.mlp(norm["pre_feedforward_layernorm"](x)))
            else:
                x = x + h
                x = x + layer.mlp(norm["post_attention_layernorm"](x))
        logits = torch.matmul(self.norm(pick(x, logit_positions)), self.lm_weight)
        if self.final_cap is not None:
            logits = torch.tanh(logits / self.final_cap) * self.final_cap
        return logits, torch.stack(keys), torch.stack(values)


LAYER_NORMS = (
    "input_layernorm",
    "post_attention_layernorm",
    "pre_feedforward_layernorm",
    "post_feedforward_layernorm",
)


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * scale``: transformers' RMSNorm written the way onnxruntime
    fuses it into one SimplifiedLayerNormalization kernel (transformers' ``x * rsqrt(...)``
    exports as seven nodes it leaves alone: Pow, ReduceMean, Add, Sqrt, Reciprocal, Mul, Mul)."""

    def __init__(self, scale: torch.Tensor, eps: float):
        super().__init__()
        self.scale = nn.Parameter(scale.detach().clone(), requires_grad=False)
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.scale


def fusable_norm(norm: nn.Module) -> nn.Module:
    """``norm`` as :class:`RMSNorm` when it is one, scaling by its weight (Llama, Qwen 2, Mistral)
    or by 1 + weight (Gemma): told apart by running the module, never by its name. Any other
    module is returned as it is."""
    w = getattr(norm, "weight", None)
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    if (
        not isinstance(w, torch.Tensor)
        or w.dim() != 1
        or eps is None
        or getattr(norm, "bias", None) is not None
    ):
        return norm
    x = torch.randn(4, w.shape[0], generator=torch.Generator().manual_seed(0)) * 3
    with torch.no_grad():
        ref = norm(x.to(w.dtype)).float()
        for scale in (w, 1.0 + w.float()):
            candidate = RMSNorm(scale.to(w.dtype), eps)
            if torch.allclose(candidate(x.to(w.dtype)).float(), ref, rtol=1e-4, atol=1e-5):
                return candidate
    return norm


class OPTDecoder(nn.Module):
    """OPT (the LM of the published BLIP-2 checkpoints) written out like :class:`Decoder`: learned
    positions (OPT's table is offset by 2) added to ``inputs_embeds`` inside the graph, pre-norm
    layers with a fused activation MLP, the query scaled before its product with the keys, a final
    LayerNorm before the head. Same inputs and outputs as :class:`Decoder`."""

    def __init__(self, decoder: nn.Module, cfg: Any, head: torch.Tensor):
        super().__init__()
        self.layers, self.norm, self.positions = (
            decoder.layers,
            decoder.final_layer_norm,
            decoder.embed_positions,
        )
        self.offset = getattr(decoder.embed_positions, "offset", 2)
        self.n_heads, self.head_dim = cfg.num_attention_heads, head_dim(cfg)
        self.lm_weight = head_weight(head)

    @staticmethod
    def refusal(cfg: Any) -> str | None:
        if (
            not cfg.do_layer_norm_before
            or getattr(cfg, "word_embed_proj_dim", cfg.hidden_size) != cfg.hidden_size
        ):
            return (
                "OPT with post-norm layers or a projected embedding (opt-350m's shape) "
                "is not exported by edgevqa"
            )
        return None

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_bias: torch.Tensor,
        position_ids: torch.Tensor,
        logit_positions: torch.Tensor,
        past_key: torch.Tensor | None = None,
        past_value: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = inputs_embeds + nn.functional.embedding(position_ids + self.offset, self.positions.weight)
        b, t, _ = x.shape
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            attn, h = layer.self_attn, layer.self_attn_layer_norm(x)
            q = (attn.q_proj(h) * attn.scaling).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(h).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
            v = attn.v_proj(h).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
            k, v = with_past(k, v, None if past_key is None else (past_key[i], past_value[i]))
            keys.append(k)
            values.append(v)
            x = x + attn.out_proj(context(torch.matmul(q, k.transpose(2, 3)), attention_bias, v))
            x = x + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(x))))
        picked = pick(x, logit_positions)
        if self.norm is not None:
            picked = self.norm(picked)
        return torch.matmul(picked, self.lm_weight), torch.stack(keys), torch.stack(values)


class BloomDecoder(nn.Module):
    """BLOOM (RadBloomz, paper 001's LM) written out like :class:`Decoder`: a LayerNorm on
    ``inputs_embeds`` inside the graph, a fused query_key_value laid out [heads, 3, head_dim], the
    tanh GELU, and ALiBi. ALiBi adds slope_h * (key position) to the scores; transformers counts
    key positions from the attention mask, and every sequence the runtime decodes has its keys at
    0..P+T-1 without gaps, so the key's index is its position. Same inputs and outputs as
    :class:`Decoder`."""

    def __init__(self, transformer: nn.Module, cfg: Any, head: torch.Tensor):
        super().__init__()
        from transformers.models.bloom.modeling_bloom import _get_alibi_slopes

        self.layers, self.embed_norm, self.norm = (
            transformer.h,
            transformer.word_embeddings_layernorm,
            transformer.ln_f,
        )
        self.n_heads, self.head_dim = cfg.num_attention_heads, head_dim(cfg)
        self.post_norm_residual = bool(cfg.apply_residual_connection_post_layernorm)
        self.register_buffer("slopes", _get_alibi_slopes(self.n_heads, torch.device("cpu"))[:, None, None])
        self.lm_weight = head_weight(head)

    @staticmethod
    def refusal(cfg: Any) -> str | None:
        if cfg.pretraining_tp > 1 and cfg.slow_but_exact:
            return "BLOOM with slow_but_exact sliced matmuls is not exported by edgevqa (set it false)"
        return None

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_bias: torch.Tensor,
        position_ids: torch.Tensor,
        logit_positions: torch.Tensor,
        past_key: torch.Tensor | None = None,
        past_value: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.embed_norm(inputs_embeds)
        b, t, _ = x.shape
        alibi = self.slopes * torch.arange(attention_bias.shape[-1], dtype=torch.float32)  # [H, 1, P+T]
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            attn, h = layer.self_attention, layer.input_layernorm(x)
            qkv = attn.query_key_value(h).view(b, t, self.n_heads, 3, self.head_dim)
            q, k, v = (qkv[..., j, :].transpose(1, 2) for j in range(3))
            k, v = with_past(k, v, None if past_key is None else (past_key[i], past_value[i]))
            keys.append(k)
            values.append(v)
            scores = alibi + torch.matmul(q, k.transpose(2, 3)) * attn.inv_norm_factor
            x = (h if self.post_norm_residual else x) + attn.dense(context(scores, attention_bias, v))
            h = layer.post_attention_layernorm(x)
            x = (h if self.post_norm_residual else x) + layer.mlp.dense_4h_to_h(
                layer.mlp.gelu_impl(layer.mlp.dense_h_to_4h(h))
            )
        logits = torch.matmul(self.norm(pick(x, logit_positions)), self.lm_weight)
        return logits, torch.stack(keys), torch.stack(values)


# text models whose layers are not Llama-shaped: their writeout and where it finds their stack
OTHER_SHAPES = {
    "opt": (OPTDecoder, lambda lm: lm.model.decoder),
    "bloom": (BloomDecoder, lambda lm: lm.transformer),
}


def writeout(lm: nn.Module, cfg: Any) -> nn.Module:
    """The decoder graph's module for a ``*ForCausalLM`` ``lm`` with text config ``cfg``."""
    head = lm.get_output_embeddings().weight
    if cfg.model_type in OTHER_SHAPES:
        cls, stack = OTHER_SHAPES[cfg.model_type]
        return cls(stack(lm), cfg, head)
    return Decoder(lm.model, cfg, head)


def head_weight(head: torch.Tensor) -> nn.Parameter:
    """The LM head [V, D] as a transposed constant of its own: the int8 and int4 quantizers then
    see a plain weight instead of a Transpose of the embedding's table (the head is often tied)."""
    return nn.Parameter(head.detach().t().contiguous(), requires_grad=False)


def with_past(k: torch.Tensor, v: torch.Tensor, past: tuple | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The new keys and values after the cached ones (along the sequence axis)."""
    if past is None:
        return k, v
    return torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)


def context(scores: torch.Tensor, bias: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Attention's output with the heads merged [B, T, H*d]: softmax over the masked scores
    [B, H, T, S] in fp32 (as transformers does), then the values [B, KV, S, d] of each head's
    key-value head (KV divides H; grouped as in ``Decoder.attend``)."""
    b, h, t, s = scores.shape
    kv = v.shape[1]
    probs = torch.softmax(scores + bias, dim=-1, dtype=torch.float32).to(v.dtype)
    out = torch.matmul(probs.reshape(b, kv, h // kv * t, s), v).view(b, h, t, -1)
    return out.transpose(1, 2).reshape(b, t, -1)


def pick(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The hidden states at ``positions`` [B, N] only: the LM head runs on those rows."""
    return torch.gather(x, 1, positions[..., None].expand(-1, -1, x.shape[-1]))


def kv_heads(cfg: Any) -> int:
    return getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads


def head_dim(cfg: Any) -> int:
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def check_text_model(cfg: Any, positions: int, types: tuple[str, ...], what: str) -> None:
    """Refuse what the decoder graph does not reproduce: another text model, a RoPE whose tables
    change with the length, or a sliding window shorter than the sequences it must see whole
    (transformers masks keys further back than the window on sliding layers).

    Raises:
        InputError: one line naming the model and what edgevqa exports instead.
    """
    if cfg.model_type not in types:
        raise InputError(
            f"{what} with a {cfg.model_type!r} text model is not exported by edgevqa "
            f"(it exports {', '.join(types)})"
        )
    shape = OTHER_SHAPES.get(cfg.model_type)
    if shape is not None and (why := shape[0].refusal(cfg)):
        raise InputError(why)
    rope = str((getattr(cfg, "rope_parameters", None) or {}).get("rope_type", "default"))
    if "dynamic" in rope or "longrope" in rope:
        raise InputError(f"rope type {rope!r} is not exported by edgevqa (static RoPE only)")
    window = getattr(cfg, "sliding_window", None)
    sliding = "sliding_attention" in (getattr(cfg, "layer_types", None) or ())
    if window is not None and sliding and positions > window:
        raise InputError(
            f"the text model's sliding window ({window} tokens) is shorter than the {positions} "
            "positions of a prompt and its answer; edgevqa's decoder graph attends to all of them"
        )


def prefix_bias(rows: int, t: int) -> torch.Tensor:
    """A bidirectional prefill's mask: every token sees every other."""
    return torch.zeros(rows, 1, t, t)


def causal_bias(rows: int, t: int, past: int) -> torch.Tensor:
    """New token i (absolute position past+i) sees the cache and the new tokens up to itself."""
    allowed = torch.arange(past + t)[None, :] <= past + torch.arange(t)[:, None]
    return torch.where(allowed, 0.0, NEG).expand(rows, 1, t, past + t).contiguous()
