"""The Q-Former family (paper 001; BLIP-2 / InstructBLIP shape): a frozen vision encoder, a query
transformer whose learned query tokens cross-attend to the image features, a linear projection,
and a causal LM (LoRA-adapted) that reads the projected queries in front of its prompt.

Its graphs are the prefix-LM contract of edgevqa/families/prefix_lm.py; the vision graph is
encoder + Q-Former + projection. The LM is causal over everything, so the query tokens' KV cache
depends on the image alone: the runtime computes it once per image (with decoder_step) and keeps
it with the image, and a follow-up question prefills only its own tokens. Positions count from 0.
"""

from __future__ import annotations

from edgevqa.families import prefix_lm
from edgevqa.families.spec import FamilySpec

SPEC = FamilySpec(
    family="qformer",
    description="Q-Former: vision encoder + query transformer + projection + causal LM (BLIP-2 shape)",
    model_types=("blip-2",),
    presets=("tiny-qformer",),
    archs=("tiny-qformer", "qformer-vitb-0.5b"),
    tensorrt=False,  # as PaliGemma: the prefix-LM axes have no TensorRT profile rules yet
    graphs=prefix_lm.graphs(vision_atol=1e-4),
)
