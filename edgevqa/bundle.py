"""The bundle: the only contract between export (torch side) and runtime (torch-free side).

A bundle is a directory::

    bundle/
      manifest.json          # this module's Manifest, schema_version 2
      tokenizer.json         # a `tokenizers` tokenizer (HF fast-tokenizer format)
      fidelity.json          # the export's validation against PyTorch
      fp32/vision_encoder.onnx, fp32/question_encoder.onnx, fp32/decoder_step.onnx
      fp32/decoder_step.onnx.data  # a graph's weights when they pass 2 GB (export/onnxfile.py)
      int8/...               # one folder per shipped precision
      trt-fp16/*.plan        # TensorRT engines (`edgevqa export --trt`), for one GPU model

Every file is listed in ``manifest.files`` with its sha256 and size; ``load_manifest`` verifies
them, so a truncated copy or a tampered graph is refused before it is run.

Example:
    >>> m = load_manifest("bundle")           # doctest: +SKIP
    >>> m.graph_path("bundle", "int8", "vision_encoder")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from edgevqa.errors import BundleError

# 2: the vision graph outputs the image's cross-attention keys/values (was: image embeddings)
# 3: model families: text.eos_ids, family_config (a 2 is a BLIP bundle and still loads)
# 4: ``engines``: graphs of a precision that another engine than onnxruntime runs (a bundle without
#    them is still written as 3, so that earlier runtimes keep reading it)
SCHEMA_VERSION = 4
READABLE_SCHEMAS = (2, 3, 4)
# how a graph listed in ``Manifest.engines`` runs: OpenVINO's CPU plugin at f32 inference precision
ENGINES = ("openvino-f32",)
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
FIDELITY = "fidelity.json"
_MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # a manifest is a few KB; refuse to parse a huge file


@dataclass(frozen=True)
class ImageSpec:
    """How an image becomes ``pixel_values`` (the HF BLIP image processor's settings)."""

    height: int
    width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resample: str = "bicubic"  # PIL filter name
    rescale_factor: float = 1 / 255
    do_convert_rgb: bool = True


@dataclass(frozen=True)
class TextSpec:
    """Token ids and lengths the runtime needs; decoding stops at any of ``eos``."""

    bos_id: int  # first decoder token ([DEC] for BLIP, <bos> for Gemma)
    sep_id: int  # end of answer ([SEP], <eos>); what generate() stops on
    pad_id: int
    max_question_tokens: int  # BLIP: question ids with specials; prefix LMs: the prompt text's ids
    max_answer_tokens: int
    clean_up_tokenization_spaces: bool = True
    eos_ids: tuple[int, ...] = ()  # every id generate() stops on (Gemma may list several)

    @property
    def eos(self) -> tuple[int, ...]:
        return tuple(self.eos_ids) or (self.sep_id,)


@dataclass(frozen=True)
class DecoderSpec:
    """Shape of the stacked KV cache: past_key/past_value are [layers, batch, heads, past, head_dim]
    (``num_heads``: the key/value heads, fewer than the query heads with grouped-query attention)."""

    num_layers: int
    num_heads: int
    head_dim: int
    vocab_size: int


@dataclass(frozen=True)
class GraphIO:
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass
class Manifest:
    family: str
    image: ImageSpec
    text: TextSpec
    decoder: DecoderSpec
    graphs: dict[str, GraphIO]  # graph name -> io names (same for every precision)
    precisions: dict[str, dict[str, str]]  # precision -> graph name -> relative file path
    files: dict[str, dict[str, Any]] = field(default_factory=dict)  # rel path -> {sha256, bytes}
    default_precision: str = "fp32"
    source: dict[str, Any] = field(default_factory=dict)  # run dir, base model, lora
    versions: dict[str, str] = field(default_factory=dict)
    # TensorRT precisions (trt-fp16, trt-int8; their engines are listed in ``precisions``) ->
    # {"built_for": {gpu, compute_capability, tensorrt}, "source": ONNX precision, "profiles": ...}
    trt: dict[str, dict[str, Any]] = field(default_factory=dict)
    family_config: dict[str, Any] = field(default_factory=dict)  # what one family's runtime needs
    # precision -> graph -> one of ENGINES, for the graphs onnxruntime does not run (int4+ov:
    # {"vision_encoder": "openvino-f32"}); the fidelity gate validated them on that engine
    engines: dict[str, dict[str, str]] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def graph_path(self, bundle: str | Path, precision: str, graph: str) -> Path:
        return inside(Path(bundle), self.precisions[precision][graph])

    def borrowed(self, bundle: str | Path, precision: str) -> list[Path]:
        """The files ``precision`` runs from other precisions' folders (an int4 bundle's prompts:
        int8's decoder_step), with their external weights (NAME.onnx.data) where they have them."""
        rels = [f for f in self.precisions[precision].values() if not f.startswith(f"{precision}/")]
        graphs = [inside(Path(bundle), f) for f in rels]
        return [p for g in graphs for p in (g, Path(f"{g}.data")) if p.is_file()]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["graphs"] = {
            k: {"inputs": list(v.inputs), "outputs": list(v.outputs)} for k, v in self.graphs.items()
        }
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Manifest:
        try:
            return cls(
                family=d["family"],
                image=ImageSpec(
                    **{**d["image"], "mean": tuple(d["image"]["mean"]), "std": tuple(d["image"]["std"])}
                ),
                text=TextSpec(**{**d["text"], "eos_ids": tuple(d["text"].get("eos_ids", ()))}),
                decoder=DecoderSpec(**d["decoder"]),
                graphs={k: GraphIO(tuple(v["inputs"]), tuple(v["outputs"])) for k, v in d["graphs"].items()},
                precisions=d["precisions"],
                files=d.get("files", {}),
                default_precision=d.get("default_precision", "fp32"),
                source=d.get("source", {}),
                versions=d.get("versions", {}),
                trt=d.get("trt", {}),
                family_config=d.get("family_config", {}),
                engines=d.get("engines", {}),
                schema_version=d["schema_version"],
            )
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise BundleError(f"manifest.json is malformed ({type(e).__name__}: {e})") from None


RESAMPLE_NAMES = ("nearest", "lanczos", "bilinear", "bicubic", "box", "hamming")  # PIL filters


def relative(rel: Any) -> bool:
    """``rel`` names a file in the bundle: a relative POSIX path, never absolute, never through
    ``..``, no drive letters or backslashes."""
    if not isinstance(rel, str) or not rel:
        return False
    path = PurePosixPath(rel)
    return not path.is_absolute() and not any(
        p in ("..", ".") or "\\" in p or ":" in p or "\0" in p for p in path.parts
    )


def inside(bundle: Path, rel: str) -> Path:
    """``bundle / rel``, refused unless it stays in the bundle (``relative``, and no symlink on
    the way that leads out)."""
    if not relative(rel):
        raise BundleError(f"manifest.json names a file outside the bundle: {str(rel)[:120]!r}")
    path = bundle / rel
    if os.path.lexists(path) and not path.resolve().is_relative_to(bundle.resolve()):
        raise BundleError(f"bundle file {rel} is a link that leads outside the bundle")
    return path


def check(m: Manifest) -> None:
    """Types and ranges of what the runtime will use, so an edited manifest is one BundleError
    line here and not a crash deep in numpy or onnxruntime.

    Raises:
        BundleError: the first value that is wrong, named by its place in manifest.json.
    """

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise BundleError(f"manifest.json: {what}")

    def count(v: Any, lo: int, hi: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi

    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

    need(isinstance(m.family, str), f"family must be a name, got {m.family!r}")
    im, t, d = m.image, m.text, m.decoder
    need(
        count(im.height, 1, 8192) and count(im.width, 1, 8192),
        f"image size {im.height!r}x{im.width!r} is not 1..8192 px",
    )
    need(
        len(im.mean) == 3
        and len(im.std) == 3
        and all(number(x) for x in (*im.mean, *im.std))
        and min(im.std) > 0,
        "image.mean and image.std must be 3 finite numbers each (std > 0)",
    )
    need(
        im.resample in RESAMPLE_NAMES,
        f"image.resample {im.resample!r} is not one of {', '.join(RESAMPLE_NAMES)}",
    )
    need(
        number(im.rescale_factor) and 0 < im.rescale_factor <= 1,
        f"image.rescale_factor {im.rescale_factor!r} is not in (0, 1]",
    )
    for name in ("num_layers", "num_heads", "head_dim"):
        need(count(getattr(d, name), 1, 65536), f"decoder.{name} {getattr(d, name)!r} is not a positive size")
    need(count(d.vocab_size, 1, 1 << 24), f"decoder.vocab_size {d.vocab_size!r} is not a positive size")
    for name, v in [
        ("bos_id", t.bos_id),
        ("sep_id", t.sep_id),
        ("pad_id", t.pad_id),
        *(("eos_ids", e) for e in t.eos_ids),
    ]:
        need(
            count(v, 0, d.vocab_size - 1),
            f"text.{name} {v!r} is not a token id of the {d.vocab_size}-token vocabulary",
        )
    need(
        count(t.max_question_tokens, 1, 1 << 16),
        f"text.max_question_tokens {t.max_question_tokens!r} is not 1..65536",
    )
    need(
        count(t.max_answer_tokens, 1, 4096), f"text.max_answer_tokens {t.max_answer_tokens!r} is not 1..4096"
    )
    need(
        isinstance(t.clean_up_tokenization_spaces, bool),
        "text.clean_up_tokenization_spaces must be true or false",
    )
    names = lambda xs: all(isinstance(x, str) for x in xs)  # noqa: E731
    need(
        all(isinstance(k, str) and names(v.inputs) and names(v.outputs) for k, v in m.graphs.items()),
        "graphs must map names to lists of input and output names",
    )
    need(
        isinstance(m.precisions, dict) and m.precisions,
        "precisions must map each precision to its graph files",
    )
    for p, graphs in m.precisions.items():
        need(
            isinstance(graphs, dict) and all(g in m.graphs for g in graphs),
            f"precisions.{p} must map graphs of `graphs` to files",
        )
        for f in graphs.values():
            need(relative(f), f"precisions.{p} names a file outside the bundle: {str(f)[:120]!r}")
    need(
        m.default_precision in m.precisions,
        f"default_precision {m.default_precision!r} is not one of {sorted(m.precisions)}",
    )
    need(isinstance(m.files, dict), "files must map paths to their sha256 and bytes")
    for rel, info in m.files.items():
        need(relative(rel), f"files names a file outside the bundle: {str(rel)[:120]!r}")
        ok = isinstance(info, dict) and isinstance(info.get("sha256"), str) and len(info["sha256"]) == 64
        need(
            ok and count(info.get("bytes"), 0, 1 << 50),
            f"files.{str(rel)[:80]} needs a sha256 (64 hex digits) and bytes",
        )
    need(
        isinstance(m.family_config, dict) and isinstance(m.trt, dict), "family_config and trt must be objects"
    )
    need(isinstance(m.engines, dict), "engines must map precisions to {graph: engine}")
    for p, graphs in m.engines.items():
        need(
            p in m.precisions and isinstance(graphs, dict) and all(g in m.precisions[p] for g in graphs),
            f"engines.{str(p)[:40]} must map graphs of precision {str(p)[:40]} to engines",
        )
        need(
            all(e in ENGINES for e in graphs.values()),
            f"engines.{p}: unknown engine in {sorted(map(str, graphs.values()))} "
            f"(known: {', '.join(ENGINES)})",
        )


def check_graph(m: Manifest, name: str, graph: Any) -> None:
    """A loaded graph has the inputs and outputs the manifest names, with the sizes it states
    (a manifest edited to other sizes would otherwise fail inside onnxruntime, or worse, not)."""
    io = m.graphs[name]
    for kind, expected, got in (
        ("inputs", io.inputs, graph.get_inputs()),
        ("outputs", io.outputs, graph.get_outputs()),
    ):
        if set(expected) != {x.name for x in got}:
            raise BundleError(
                f"{name} graph {kind} {tuple(x.name for x in got)} do not match manifest {tuple(expected)}"
            )
    d, im = m.decoder, m.image
    wanted = {
        "pixel_values": {1: 3, 2: im.height, 3: im.width},
        "past_key": {0: d.num_layers, 2: d.num_heads, 4: d.head_dim},
        "past_value": {0: d.num_layers, 2: d.num_heads, 4: d.head_dim},
        "logits": {-1: d.vocab_size},
    }
    for x in (*graph.get_inputs(), *graph.get_outputs()):
        shape = getattr(x, "shape", None) or []
        for axis, size in wanted.get(x.name, {}).items():
            if -len(shape) <= axis < len(shape) and isinstance(shape[axis], int) and shape[axis] != size:
                raise BundleError(
                    f"{name} graph's {x.name} has size {shape[axis]} on axis {axis}, the manifest says {size}"
                )


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def record_files(bundle: str | Path, rel_paths: list[str]) -> dict[str, dict[str, Any]]:
    """sha256 and size of each file, for ``Manifest.files``."""
    bundle = Path(bundle)
    return {p: {"sha256": sha256_file(bundle / p), "bytes": (bundle / p).stat().st_size} for p in rel_paths}


def write_manifest(bundle: str | Path, manifest: Manifest) -> None:
    from edgevqa import atomic

    atomic.write_json(Path(bundle) / MANIFEST, manifest.to_dict())


def load_manifest(bundle: str | Path, precision: str | None = None, verify: bool = True) -> Manifest:
    """Read and check a bundle's manifest.

    Args:
        bundle: the bundle directory.
        precision: verify only this precision's graphs (plus the shared files); None verifies all.
        verify: check every file's sha256 against the manifest.

    Raises:
        BundleError: missing, malformed, other schema, missing or tampered files.
    """
    bundle = Path(bundle)
    path = bundle / MANIFEST
    if not bundle.exists():
        raise BundleError(f"bundle not found: {bundle} (create one with `edgevqa export RUN --out {bundle}`)")
    if not path.is_file():
        raise BundleError(f"{bundle} is not an edgevqa bundle: no {MANIFEST} in it")
    if path.stat().st_size > _MAX_MANIFEST_BYTES:
        raise BundleError(f"{path} is too large to be a manifest")
    try:
        raw = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON ({e})") from None
    except RecursionError:
        raise BundleError(f"{path} is nested too deeply to be a manifest") from None
    if not isinstance(raw, dict):
        raise BundleError(f"{path} is not an edgevqa manifest")
    if raw.get("schema_version") not in READABLE_SCHEMAS:
        raise BundleError(
            f"bundle schema_version {raw.get('schema_version')!r} is not supported by this edgevqa "
            f"(reads {', '.join(map(str, READABLE_SCHEMAS))}); re-export it with this version"
        )
    m = Manifest.from_dict(raw)
    check(m)
    if precision is not None and precision not in m.precisions:
        raise BundleError(f"precision {precision!r} is not in this bundle; it has {sorted(m.precisions)}")
    if verify:
        verify_files(bundle, m, precision)
    return m


def verify_files(bundle: Path, m: Manifest, precision: str | None = None, origin: bool = True) -> None:
    """Every file the manifest lists (of ``precision``, and the shared ones) against its sha256;
    with ``origin``, first the manifest's signature when trusted keys are configured (signing.py).

    Raises:
        BundleError: a path outside the bundle, a missing or changed file, no trusted signature.
    """
    if origin:
        from edgevqa import signing

        signing.check(bundle, signing.trusted_keys())
    wanted = set(m.files)
    if precision is not None:
        mine = set(m.precisions[precision].values())
        others = {p for prec, g in m.precisions.items() if prec != precision for p in g.values()}
        # a graph's external weights (graph.onnx.data, export/onnxfile.py) go with the graph
        others |= {f for f in m.files for p in others if f.startswith(f"{p}.")}
        wanted -= others - mine - {f for f in m.files for p in mine if f.startswith(f"{p}.")}
    needed = {TOKENIZER} | {
        p for prec in ([precision] if precision else m.precisions) for p in m.precisions[prec].values()
    }
    if missing := sorted(needed - set(m.files)):
        raise BundleError(f"manifest lists no checksum for {missing}; the bundle is incomplete")
    for rel in sorted(wanted):
        f = inside(bundle, rel)
        if not f.is_file():
            raise BundleError(f"bundle file missing: {f}")
        info = m.files[rel]
        if f.stat().st_size != info["bytes"] or sha256_file(f) != info["sha256"]:
            raise BundleError(
                f"bundle file {rel} does not match its sha256 in manifest.json (corrupt or modified)"
            )
