"""TensorRT engines from a bundle's ONNX graphs (`edgevqa export --trt`), with the tensorrt
Python API (TensorRT 10).

One engine per graph, one optimization profile each. The profiles come from the family spec's
symbolic axes and the bundle's limits, so they are plain data (``profile``) and unit-tested
without a GPU; only ``build_engine`` needs tensorrt and a CUDA device.

* ``trt-fp16``: the fp32 ONNX graphs with the FP16 builder flag; LayerNormalization, Softmax and
  reductions are pinned to fp32 (``FP32_LAYERS``) as in the onnxruntime fp16 export.
* ``trt-int8``: explicit quantization from the int8-static (QDQ) graphs: TensorRT takes the
  scales from the Q/DQ nodes, no calibrator; layers without Q/DQ run in fp16.

When an engine fails the fidelity gate, the export rebuilds it with its most sensitive MatMuls
kept in fp32 (``EngineBuild.graph``): pinned layers in an fp16 engine, nodes left unquantized in
the Q/DQ graph of an int8 one.

The decoder is two engines: ``decoder_first`` (no cache in) and ``decoder_step`` (past >= 1),
as an engine's profile cannot admit a zero-length past. A timing cache next to the bundle
(``--trt-timing-cache``) makes rebuilds for the same GPU fast.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgevqa import atomic
from edgevqa.errors import InputError, MissingDependencyError
from edgevqa.families.spec import GraphSpec

log = logging.getLogger("edgevqa.export")

# engine precision -> the ONNX precision it is built from
SOURCES = {"trt-fp16": "fp32", "trt-int8": "int8-static"}
FP32_LAYERS = ("NORMALIZATION", "SOFTMAX", "REDUCE")  # trt.LayerType names kept in fp32 for fp16
INSTALL = "pip install tensorrt cuda-python (and an NVIDIA driver with a CUDA GPU)"

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Limits:
    """Largest inputs an engine must take; what the profiles' max shapes are made of."""

    max_batch: int  # questions answered together (rank mode: candidates)
    max_question: int  # question tokens, [CLS] and [SEP] included
    max_answer: int  # generated tokens
    opt_question: int = 16  # the shape TensorRT tunes for

    def axis(self, name: str) -> tuple[int, int, int]:
        """(min, opt, max) of one symbolic axis of the family spec."""
        q = self.max_question
        table = {
            "batch": (1, 1, self.max_batch),
            "question": (1, min(self.opt_question, q), q),
            # decoder_step runs from the second answer token on: past 1 .. max_answer - 1
            "past": (1, max(1, self.max_answer // 2), max(1, self.max_answer - 1)),
            # one new token per step; rank mode feeds a whole candidate to decoder_first
            "new": (1, 1, self.max_answer + 1),
        }
        if name not in table:
            raise KeyError(f"no TensorRT profile rule for axis {name!r}")
        return table[name]


@dataclass(frozen=True)
class Profile:
    """min/opt/max shape of every input of one engine."""

    shapes: dict[str, tuple[Shape, Shape, Shape]]

    def to_json(self) -> dict[str, list[list[int]]]:
        return {k: [list(s) for s in v] for k, v in self.shapes.items()}


def fixed_dims(onnx_path: Path) -> dict[str, dict[int, int]]:
    """The concrete sizes of every graph input's non-symbolic axes, read from the ONNX file."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return {
        i.name: {n: d.dim_value for n, d in enumerate(i.type.tensor_type.shape.dim) if d.dim_value > 0}
        for i in model.graph.input
    }


def profile(g: GraphSpec, fixed: dict[str, dict[int, int]], limits: Limits) -> Profile:
    """The optimization profile of one graph, from its symbolic axes and its inputs' fixed sizes."""
    shapes = {}
    for name, axes in g.inputs.items():
        known = fixed.get(name, {})
        mins, opts, maxs = [], [], []
        for i in range(max([*axes, *known]) + 1):
            if i in axes:
                lo, mid, hi = limits.axis(axes[i])
            elif i in known:
                lo = mid = hi = known[i]
            else:
                raise ValueError(f"{g.name}.{name}: axis {i} is neither symbolic nor fixed in the graph")
            mins.append(lo)
            opts.append(mid)
            maxs.append(hi)
        shapes[name] = (tuple(mins), tuple(opts), tuple(maxs))
    return Profile(shapes)


def builder_flags(precision: str) -> list[str]:
    """trt.BuilderFlag names for an engine precision."""
    flags = {
        # PREFER: a pinned layer TensorRT cannot run in fp32 warns instead of failing the build
        "trt-fp16": ["FP16", "PREFER_PRECISION_CONSTRAINTS"],
        "trt-int8": ["INT8", "FP16"],  # explicit quantization: Q/DQ layers in int8, the rest fp16
    }
    if precision not in flags:
        raise InputError(f"TensorRT precision must be one of {sorted(flags)}, got {precision!r}")
    return flags[precision]


def require() -> Any:
    """The tensorrt module, or one clear line saying how to get it (checked before any work)."""
    try:
        import tensorrt
    except ImportError:
        raise MissingDependencyError(f"`edgevqa export --trt` needs TensorRT: {INSTALL}") from None
    return tensorrt


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    profile: Profile,
    precision: str,
    timing_cache: Path | None = None,
    workspace_gib: float = 4.0,
    keep_fp32: Collection[str] = (),
) -> Path:
    """Parse ``onnx_path``, build a serialized engine for this GPU and write it atomically.
    ``keep_fp32``: ONNX node names whose layers stay fp32 in an fp16 engine (the gate's fallback)."""
    trt = require()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    for flag in builder_flags(precision):
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if precision == "trt-fp16":
        pin_fp32(trt, network, keep_fp32)
    elif keep_fp32:  # int8 engines keep nodes in fp32 by leaving them unquantized in the Q/DQ graph
        raise ValueError(f"{precision} keeps nodes in fp32 through its ONNX graph, not by pinning layers")
    opt = builder.create_optimization_profile()
    for name, (lo, mid, hi) in profile.shapes.items():
        opt.set_shape(name, lo, mid, hi)
    config.add_optimization_profile(opt)
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT could not build an engine for {onnx_path.name} (see its log above)")
    atomic.write_bytes(engine_path, bytes(plan))
    if timing_cache is not None:
        atomic.write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    return engine_path


def pin_fp32(trt: Any, network: Any, nodes: Collection[str] = ()) -> None:
    """Keep the numerically fragile layers (FP32_LAYERS), and the layers of ``nodes`` (ONNX node
    names), in fp32 inside an fp16 engine."""
    kinds = {getattr(trt.LayerType, k) for k in FP32_LAYERS if hasattr(trt.LayerType, k)}
    floats = (trt.float32, trt.float16)
    nodes = set(nodes)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        chosen = layer.type in kinds or from_node(layer.name, nodes)
        # only float computations: reductions over shapes (int64) stay as they are
        if chosen and layer.num_outputs and layer.get_output(0).dtype in floats:
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)


def from_node(layer: str, nodes: Collection[str]) -> bool:
    """Whether a layer came from one of these ONNX nodes. TensorRT's ONNX parser names a node's
    layer after the node, and further layers of it (or a name already taken) "<node>_<n>"."""
    base, _, n = layer.rpartition("_")
    return layer in nodes or (n.isdigit() and base in nodes)


def device_info() -> dict[str, str]:
    """GPU name, compute capability and TensorRT version an engine is built for / runs on."""
    from edgevqa.runtime.backends import probe

    require()
    m = probe()
    if m.gpu is None or m.tensorrt_version is None:
        raise MissingDependencyError(f"`edgevqa export --trt` needs a CUDA GPU and TensorRT: {INSTALL}")
    return {
        "gpu": m.gpu.name,
        "compute_capability": m.gpu.compute_capability,
        "tensorrt": m.tensorrt_version,
    }


@dataclass(frozen=True)
class EngineBuild:
    """How this export builds engines; kept so that the fidelity fallback can rebuild one."""

    root: Path  # the bundle being written
    limits: Limits
    timing_cache: Path | None

    def graph(self, precision: str, g: GraphSpec, onnx_path: Path, keep_fp32: Collection[str] = ()) -> dict:
        """Build ``precision``'s engine of graph ``g`` from ``onnx_path``; returns its profile."""
        prof = profile(g, fixed_dims(onnx_path), self.limits)
        engine = self.root / precision / f"{g.name}.plan"
        build_engine(onnx_path, engine, prof, precision, self.timing_cache, keep_fp32=keep_fp32)
        return prof.to_json()


def build_engines(
    root: Path, manifest: Any, graphs: tuple[GraphSpec, ...], cfg: Any, limits: Limits, built_for: dict
) -> EngineBuild:
    """Engines for every TensorRT precision of ``cfg``, from the bundle's ONNX graphs in ``root``;
    records them (files, profiles, the GPU they are for) in ``manifest`` and rewrites it."""
    from edgevqa import bundle
    from edgevqa.runtime import optcache

    cache = Path(cfg.trt_timing_cache) if cfg.trt_timing_cache else None
    if cache is None and (base := optcache.cache_root()) is not None:
        cache = base / "tensorrt-timing.cache"
    build = EngineBuild(root, limits, cache)
    for p in cfg.trt_precisions:
        src = SOURCES[p]
        (root / p).mkdir()
        shapes = {g.name: build.graph(p, g, root / src / f"{g.name}.onnx") for g in graphs}
        manifest.precisions[p] = {g.name: f"{p}/{g.name}.plan" for g in graphs}
        manifest.trt[p] = {"built_for": built_for, "source": src, "profiles": shapes}
    bundle.write_manifest(root, manifest)
    return build
