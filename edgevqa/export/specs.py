"""One description per model family of what is exported and how. Pure data, no torch.

A FamilySpec lists the family's graphs in the order the runtime calls them; each GraphSpec
names its inputs and outputs with their dynamic axes and the tolerance validation allows.
The torch side (onnx.py) builds the wrapper and dummy inputs for each graph name.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgevqa.errors import InputError

Axes = dict[int, str]  # axis index -> symbolic name


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: dict[str, Axes]
    outputs: dict[str, Axes]
    atol: float  # fp32 max abs diff allowed against PyTorch on every output
    tensorrt_only: bool = False  # exported only for TensorRT bundles (`edgevqa export --trt`)


@dataclass(frozen=True)
class FamilySpec:
    family: str
    graphs: tuple[GraphSpec, ...]
    opset: int = 18

    def exported(self, tensorrt: bool = False) -> tuple[GraphSpec, ...]:
        """The graphs a bundle holds: TensorRT bundles add the tensorrt_only ones."""
        return tuple(g for g in self.graphs if tensorrt or not g.tensorrt_only)

    def graph(self, name: str) -> GraphSpec:
        for g in self.graphs:
            if g.name == name:
                return g
        raise KeyError(name)


_REGISTRY: dict[str, FamilySpec] = {}


def register(spec: FamilySpec) -> FamilySpec:
    _REGISTRY[spec.family] = spec
    return spec


def get(family: str) -> FamilySpec:
    if family not in _REGISTRY:
        raise InputError(f"no export spec for model family {family!r}; available: {sorted(_REGISTRY)}")
    return _REGISTRY[family]


def families() -> list[str]:
    return sorted(_REGISTRY)


_CACHE = {1: "batch", 3: "past"}  # stacked KV cache: [layers, batch, heads, past, head_dim]
_CROSS = {1: "batch", 3: "question"}
_IMAGE = {1: "batch"}  # [layers, batch, heads, image tokens, head_dim]: tokens fixed by image size

BLIP_VQA = register(
    FamilySpec(
        family="blip-vqa",
        graphs=(
            GraphSpec(
                "vision_encoder",
                inputs={"pixel_values": {0: "batch"}},
                outputs={"image_key": _IMAGE, "image_value": _IMAGE},
                atol=1e-4,
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
            ),
        ),
    )
)
