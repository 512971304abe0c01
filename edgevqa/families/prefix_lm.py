"""The graph contract every prefix-LM family shares (PaliGemma, the Q-Former family): image tokens
from a vision graph are spliced in front of a causal LM's prompt, then one decoder graph runs the
prefill and each new token with a grouped-query KV cache. Pure data, no torch.

Graphs:
  vision_encoder  pixel_values [B,3,H,W] -> image_embeds [B,N,D]: the image tokens as the model
                  splices them into the text embeddings (once per image, cached)
  embed_tokens    input_ids [B,T] -> inputs_embeds [B,T,D]: the LM's (scaled) token embedding
  decoder_step    inputs_embeds [B,T,D], attention_bias [B,1,T,P+T] (0 where a query may attend,
                  finfo.min where not), position_ids [B,T], logit_positions [B,K] (which of the T
                  positions get logits: the last one for a prefill, all for rank mode),
                  past_key/past_value [L,B,KV,P,d] (grouped-query: KV heads)
                  -> logits [B,K,V], present_key/present_value [L,B,KV,P+T,d]
  decoder_first   the same without a cache in (TensorRT bundles only)
  decoder_prefill (int4 bundles) decoder_step with int8 weights: the runtime runs every prompt
                  through it and each answer token through decoder_step (spec.PREFILL)
"""

from __future__ import annotations

from edgevqa.families.spec import GraphSpec

_CACHE = {1: "batch", 3: "past"}  # [layers, batch, kv heads, past, head_dim]
_NEW = {0: "batch", 1: "new"}
_STEP_IN = {
    "inputs_embeds": _NEW,
    "attention_bias": {0: "batch", 2: "new", 3: "total"},
    "position_ids": _NEW,
    "logit_positions": {0: "batch", 1: "picked"},
}
_STEP_OUT = {
    "logits": {0: "batch", 1: "picked"},
    "present_key": {1: "batch", 3: "total"},
    "present_value": {1: "batch", 3: "total"},
}


def graphs(vision_atol: float = 1e-4) -> tuple[GraphSpec, ...]:
    """The four graphs; ``vision_atol`` is the vision graph's fp32 tolerance against PyTorch."""
    return (
        GraphSpec(
            "vision_encoder",
            inputs={"pixel_values": {0: "batch"}},
            outputs={"image_embeds": {0: "batch"}},
            atol=vision_atol,
            role="image",
        ),
        GraphSpec(
            "embed_tokens",
            inputs={"input_ids": _NEW},
            outputs={"inputs_embeds": _NEW},
            atol=1e-5,
            role="embed",
        ),
        GraphSpec(
            "decoder_step",
            inputs={**_STEP_IN, "past_key": _CACHE, "past_value": _CACHE},
            outputs=_STEP_OUT,
            atol=1e-3,
            role="step",
            streams_weights=True,
            residual="inputs_embeds",
            prefills=True,
        ),
        GraphSpec(
            "decoder_first",
            inputs=_STEP_IN,
            outputs=_STEP_OUT,
            atol=1e-3,
            tensorrt_only=True,
            role="first",
            streams_weights=True,
            residual="inputs_embeds",
        ),
    )
