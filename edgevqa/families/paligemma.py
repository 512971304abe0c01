"""PaliGemma (papers 003, 004): a SigLIP vision tower and a linear projector whose image tokens
are spliced in front of the prompt of a Gemma decoder (a prefix LM).

Graphs:
  vision_encoder  pixel_values [B,3,H,W] -> image_embeds [B,N,D]: the projected image tokens, as
                  the model splices them into the text embeddings (once per image, cached)
  embed_tokens    input_ids [B,T] -> inputs_embeds [B,T,D]: Gemma's scaled token embedding
  decoder_step    inputs_embeds [B,T,D], attention_bias [B,1,T,P+T] (0 where a query may attend,
                  finfo.min where not: bidirectional over image + prompt, causal over the answer),
                  position_ids [B,T] (1-based, as PaliGemma counts), logit_positions [B,K] (which
                  of the T positions get logits: the last one for a prefill, all for rank mode),
                  past_key/past_value [L,B,KV,P,d] (grouped-query: KV heads)
                  -> logits [B,K,V], present_key/present_value [L,B,KV,P+T,d]
  decoder_first   the same without a cache in (TensorRT bundles only)
"""

from __future__ import annotations

from edgevqa.families.spec import FamilySpec, GraphSpec

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

SPEC = FamilySpec(
    family="paligemma",
    description="PaliGemma: SigLIP + linear projector + Gemma decoder (prefix LM)",
    model_types=("paligemma",),
    presets=("tiny-paligemma",),
    archs=("tiny-paligemma", "paligemma-3b-224", "paligemma-small"),
    # not yet: the prefill's length, the total and picked axes have no profile rules, and the
    # step engine cannot take the empty cache its validation feeds start from
    tensorrt=False,
    graphs=(
        GraphSpec(
            "vision_encoder",
            inputs={"pixel_values": {0: "batch"}},
            outputs={"image_embeds": {0: "batch"}},
            atol=1e-4,
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
    ),
)
