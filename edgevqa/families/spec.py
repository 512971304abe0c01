"""What a model family is, as data: its graphs (inputs, outputs, dynamic axes, tolerance, role),
the Hugging Face model types it loads, its presets and benchmark architectures, and the module
that serves it on each side (train, export, runtime). Pure data, no torch.

Example:
    >>> from edgevqa.families import registry
    >>> registry.get("blip-vqa").graph("vision_encoder").role
    'image'
"""

from __future__ import annotations

from dataclasses import dataclass

Axes = dict[int, str]  # axis index -> symbolic name

ROLES = ("image", "prompt", "embed", "step", "first")
SIDES = ("train", "export", "runtime")


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: dict[str, Axes]
    outputs: dict[str, Axes]
    atol: float  # fp32 max abs diff allowed against PyTorch on every output
    tensorrt_only: bool = False  # exported only for TensorRT bundles (`edgevqa export --trt`)
    # image: runs once per image (cached); prompt: once per question; embed: token embedding;
    # step: one decoder call (prefill or one new token, with a KV cache); first: a step without a
    # cache (TensorRT cannot build a profile that admits a zero-length past)
    role: str = "step"
    # the graph streams its weights for every generated token (memory-bound at batch 1): the
    # candidates for 4-bit weights
    streams_weights: bool = False
    # the input that carries the residual stream (a decoder-only LM's hidden states): fp16 keeps it,
    # its additions and whatever reads it in fp32 (Gemma's residual stream passes fp16's 65504)
    residual: str = ""
    # the step graph also runs whole prompts (hundreds of rows at once, compute-bound), where 4-bit
    # weights are slower than 8-bit ones on CPUs: an int4 bundle runs its prompts through an int8
    # copy of it (PREFILL; export/quantize.py: PREFILL_WEIGHTS) and its answer tokens through int4
    prefills: bool = False


# the graph name of a step graph's prompt copy in a bundle (same inputs and outputs as that graph)
PREFILL = "decoder_prefill"


@dataclass(frozen=True)
class FamilySpec:
    family: str
    graphs: tuple[GraphSpec, ...]
    model_types: tuple[str, ...]  # Hugging Face config.model_type values this family loads
    presets: tuple[str, ...]  # `--base` names built from a config with random weights
    archs: tuple[str, ...]  # `bench --arch` names (random weights, real sizes)
    description: str = ""
    opset: int = 20
    # `export --trt` builds engines for it (its axes have TensorRT profile rules in export/tensorrt.py)
    tensorrt: bool = True

    def exported(self, tensorrt: bool = False) -> tuple[GraphSpec, ...]:
        """The graphs a bundle holds: TensorRT bundles add the tensorrt_only ones."""
        return tuple(g for g in self.graphs if tensorrt or not g.tensorrt_only)

    def graph(self, name: str) -> GraphSpec:
        for g in self.graphs:
            if g.name == name:
                return g
        raise KeyError(name)

    def module(self, side: str) -> str:
        """The dotted name of this family's module on ``side`` (train, export or runtime)."""
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        return f"edgevqa.{side}.families.{self.family.replace('-', '_')}"

    @property
    def prefill(self) -> GraphSpec | None:
        """The step graph whose prompts int4 bundles run at int8 (None: no prompt prefill)."""
        return next((g for g in self.graphs if g.prefills), None)

    @property
    def streamed(self) -> tuple[str, ...]:
        """Graphs whose weights are streamed per token (int4 candidates)."""
        return tuple(g.name for g in self.graphs if g.streams_weights)
