"""BLIP VQA (paper 000, 002): a ViT, a question encoder that cross-attends to the image, and an
answer decoder that cross-attends to the question. Three graphs; the image's keys/values for every
text layer are computed once per image, the question's once per answer.
"""

from __future__ import annotations

from edgevqa.families.spec import FamilySpec, GraphSpec

_CACHE = {1: "batch", 3: "past"}  # stacked KV cache: [layers, batch, heads, past, head_dim]
_CROSS = {1: "batch", 3: "question"}
_IMAGE = {1: "batch"}  # [layers, batch, heads, image tokens, head_dim]: tokens fixed by image size

SPEC = FamilySpec(
    family="blip-vqa",
    description="BLIP VQA: ViT + question encoder + answer decoder with cross-attention",
    model_types=("blip",),
    presets=("tiny-blip",),
    archs=("tiny-blip", "blip-vqa-base"),
    graphs=(
        GraphSpec(
            "vision_encoder",
            inputs={"pixel_values": {0: "batch"}},
            outputs={"image_key": _IMAGE, "image_value": _IMAGE},
            atol=1e-4,
            role="image",
        ),
        GraphSpec(
            "question_encoder",
            inputs={
                "input_ids": {0: "batch", 1: "question"},
                "attention_mask": {0: "batch", 1: "question"},
                "image_key": _IMAGE,
                "image_value": _IMAGE,
            },
            outputs={"cross_key": _CROSS, "cross_value": _CROSS},
            atol=1e-4,
            role="prompt",
        ),
        GraphSpec(
            "decoder_step",
            inputs={
                "input_ids": {0: "batch", 1: "new"},
                "past_key": _CACHE,
                "past_value": _CACHE,
                "cross_key": _CROSS,
                "cross_value": _CROSS,
            },
            outputs={
                "logits": {0: "batch", 1: "new"},
                "present_key": {1: "batch", 3: "total"},
                "present_value": {1: "batch", 3: "total"},
            },
            atol=1e-3,
            role="step",
            streams_weights=True,
        ),
        # the first answer step without a cache: TensorRT builds no engine whose profile
        # admits a zero-length past, so its first step gets an engine of its own
        GraphSpec(
            "decoder_first",
            inputs={"input_ids": {0: "batch", 1: "new"}, "cross_key": _CROSS, "cross_value": _CROSS},
            outputs={
                "logits": {0: "batch", 1: "new"},
                "present_key": {1: "batch", 3: "new"},
                "present_value": {1: "batch", 3: "new"},
            },
            atol=1e-3,
            tensorrt_only=True,
            role="first",
            streams_weights=True,
        ),
    ),
)
