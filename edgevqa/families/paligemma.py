"""PaliGemma (papers 003, 004): a SigLIP vision tower and a linear projector whose image tokens
are spliced in front of the prompt of a Gemma decoder (a prefix LM). Its graphs are the prefix-LM
contract of edgevqa/families/prefix_lm.py: the decoder's mask is bidirectional over image +
prompt and causal over the answer, and positions count from 1 as PaliGemma counts them.
"""

from __future__ import annotations

from edgevqa.families import prefix_lm
from edgevqa.families.spec import FamilySpec

SPEC = FamilySpec(
    family="paligemma",
    description="PaliGemma: SigLIP + linear projector + Gemma decoder (prefix LM)",
    model_types=("paligemma",),
    presets=("tiny-paligemma",),
    archs=("tiny-paligemma", "paligemma-3b-224", "paligemma-small"),
    # not yet: the prefill's length, the total and picked axes have no profile rules, and the
    # step engine cannot take the empty cache its validation feeds start from
    tensorrt=False,
    graphs=prefix_lm.graphs(vision_atol=1e-4),
)
