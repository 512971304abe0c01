"""nn.Module wrappers that make BLIP VQA's three components traceable with plain tensors.

The graphs these produce are the bundle's contract (see specs.py):

* VisionEncoder:   pixel_values [B,3,H,W] -> image_embeds [B,N,Dv]
* QuestionEncoder: input_ids, attention_mask [B,Q], image_embeds -> cross_key, cross_value
                   [L,B,H,Q,d]: the decoder's cross-attention keys/values, computed once per answer
* DecoderStep:     input_ids [B,T], past_key/past_value [L,B,H,P,d], cross_key/cross_value
                   -> logits [B,T,V], present_key/present_value [L,B,H,P+T,d]

The decoder step is written out over the HF modules' own Linear/LayerNorm weights instead of
tracing transformers' Cache objects: the KV cache becomes two stacked tensors the runtime can
pass back in, and nothing re-runs the answer prefix. Like ``generate()``, the decoder attends to
every question position (no question mask in cross-attention; shared/notes pitfall 5).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    b, t, _ = x.shape
    return x.view(b, t, n_heads, -1).transpose(1, 2)  # [B,H,T,d]


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    # the same op order as BlipTextSelfAttention (eager): (q k^T) / sqrt(d) + mask, softmax, @ v
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if bias is not None:
        scores = scores + bias
    ctx = torch.matmul(torch.softmax(scores, dim=-1), v)
    b, h, t, d = ctx.shape
    return ctx.transpose(1, 2).reshape(b, t, h * d)


class VisionEncoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.vision = model.vision_model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision(pixel_values=pixel_values).last_hidden_state


class QuestionEncoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.text = model.text_encoder
        self.layers = model.text_decoder.bert.encoder.layer
        self.n_heads = model.config.text_config.num_attention_heads

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_embeds: torch.Tensor):
        image_mask = torch.ones(image_embeds.shape[:2], dtype=torch.long, device=image_embeds.device)
        q = self.text(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=image_mask,
        ).last_hidden_state
        keys = [_heads(layer.crossattention.self.key(q), self.n_heads) for layer in self.layers]
        values = [_heads(layer.crossattention.self.value(q), self.n_heads) for layer in self.layers]
        return torch.stack(keys), torch.stack(values)


class DecoderStep(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        bert = model.text_decoder.bert
        self.emb = bert.embeddings
        self.layers = bert.encoder.layer
        self.head = model.text_decoder.cls
        self.n_heads = model.config.text_config.num_attention_heads

    def causal_bias(self, t: int, past: int, dtype: torch.dtype) -> torch.Tensor:
        # new token i (absolute position past+i) sees keys 0..past+i; finfo.min as transformers does
        q_pos = torch.arange(t).unsqueeze(1) + past
        k_pos = torch.arange(past + t).unsqueeze(0)
        zero = torch.zeros((), dtype=dtype)
        return torch.where(k_pos <= q_pos, zero, torch.finfo(dtype).min)

    def forward(
        self,
        input_ids: torch.Tensor,
        past_key: torch.Tensor,
        past_value: torch.Tensor,
        cross_key: torch.Tensor,
        cross_value: torch.Tensor,
    ):
        past, t = past_key.shape[3], input_ids.shape[1]
        positions = torch.arange(t, device=input_ids.device).unsqueeze(0) + past
        x = self.emb.LayerNorm(self.emb.word_embeddings(input_ids) + self.emb.position_embeddings(positions))
        bias = self.causal_bias(t, past, x.dtype)
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            sa = layer.attention.self
            k = torch.cat([past_key[i], _heads(sa.key(x), self.n_heads)], dim=2)
            v = torch.cat([past_value[i], _heads(sa.value(x), self.n_heads)], dim=2)
            keys.append(k)
            values.append(v)
            ctx = _attend(_heads(sa.query(x), self.n_heads), k, v, bias)
            x = layer.attention.output(ctx, x)
            ca = layer.crossattention.self
            ctx = _attend(_heads(ca.query(x), self.n_heads), cross_key[i], cross_value[i], None)
            x = layer.crossattention.output(ctx, x)
            x = layer.output(layer.intermediate(x), x)
        return self.head(x), torch.stack(keys), torch.stack(values)
