"""RUN -> bundle: merge LoRA, export ONNX graphs, quantize, validate against PyTorch, write.

Everything is written into a temporary folder that is renamed to ``--out`` only when every step
passed, so a failed or refused export leaves nothing behind.

Example:
    >>> from edgevqa.config import ExportConfig, TrainConfig
    >>> export(ExportConfig(run="runs/lora", out="bundle"))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgevqa import __version__, atomic, bundle
from edgevqa.config import OPENVINO_VISION, ExportConfig, TrainConfig
from edgevqa.data.records import VQARecord, load_split
from edgevqa.errors import EdgeVQAError, InputError, ValidationError
from edgevqa.eval.metrics import record_accuracy
from edgevqa.export import merge, tensorrt, validate
from edgevqa.export import onnx as export_onnx
from edgevqa.export.fallback import quantized_share
from edgevqa.export.quantize import PREFILL_WEIGHTS, QUANTIZERS
from edgevqa.families import registry
from edgevqa.families.spec import PREFILL, FamilySpec
from edgevqa.runtime.backends import probe
from edgevqa.train.base import Loaded
from edgevqa.train.data import ImageCache
from edgevqa.train.tokenizer import as_saved

log = logging.getLogger("edgevqa.export")


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """Log each export step with its time, and the step a failure came from; the failure itself
    goes on with its own type (a BundleError stays one line, a full disk stays an OSError)."""
    t0 = time.perf_counter()
    try:
        yield
    except EdgeVQAError:
        raise  # the user's error: its one line says what to fix
    except BaseException:
        log.error("export step %r failed after %.1fs", name, time.perf_counter() - t0)
        raise
    log.info("%-9s ok  %.1fs", name, time.perf_counter() - t0)


def validation_records(data: str, limit: int) -> list[VQARecord]:
    recs = load_split(data, "val")
    return recs[:limit] if limit else recs


def export(cfg: ExportConfig, data: str | None = None, progress: bool = True) -> Path:
    """Export ``cfg.run`` to the bundle ``cfg.out``; returns the bundle path.

    Raises:
        InputError: no run, no validation data, output exists.
        ValidationError: graphs or answers do not match PyTorch (exit code 3); no bundle is written.
    """
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise InputError(f"{out} already exists; choose another --out or pass --overwrite")
    built_for = tensorrt.device_info() if cfg.trt else None  # no GPU or TensorRT: fail before any work
    precisions = cfg.precisions
    if (ov := [p for p in precisions if p in OPENVINO_VISION]) and not probe().offers("openvino"):
        raise InputError(
            f"--precision {', '.join(ov)} runs the vision graph with OpenVINO, which the export "
            "validates: pip install 'edgevqa[openvino]'"
        )
    tcfg, model_src, adapter = source(cfg, data)
    if cfg.trt and not registry.get(tcfg.family).tensorrt:
        raise InputError(
            f"--trt: TensorRT engines are not built for {tcfg.family} bundles yet; export its ONNX "
            "precisions (onnxruntime's CUDA provider runs them on a GPU: --backend cuda)"
        )
    data = data or tcfg.data
    records = validation_records(data, cfg.validate_limit)
    fam = registry.side(tcfg.family, "train")
    caches: dict[Any, ImageCache] = {}

    def images_for(spec: bundle.ImageSpec) -> ImageCache:
        return caches.setdefault(spec, ImageCache(spec))

    def encode(loaded: Loaded) -> Any:
        return fam.encode(loaded, records, data, tcfg)

    with step("merge"):
        merged, enc = merge.merge_run(tcfg, model_src, adapter, encode, images_for)
    model, image_spec, tok = merged.loaded.model, merged.loaded.image, merged.loaded.tokenizer
    spec = registry.get(tcfg.family)
    xfam = registry.side(tcfg.family, "export")
    with atomic.directory(out, overwrite=cfg.overwrite) as tmp:
        prefill = prefill_weights(cfg)
        write_graphs(model, spec, tmp, precisions, tensorrt=cfg.trt, prefill=prefill)
        as_saved(tok).backend_tokenizer.save(str(tmp / bundle.TOKENIZER))
        manifest = make_manifest(
            merged.loaded,
            spec,
            [*precisions, *([] if "fp32" in precisions else ["fp32"])],  # fp32 exists until sealed
            tcfg.max_question_tokens,
            tcfg.max_answer_tokens,
            {"run": portable(cfg.run, out), "base": portable(tcfg.base, out), "lora": merged.lora},
            tensorrt=cfg.trt,
            prefill=prefill,
        )
        bundle.write_manifest(tmp, manifest)
        quantizers = dict(QUANTIZERS)
        if static := [p for p in precisions if p == "int8-static" or p in OPENVINO_VISION]:
            with step("calibrate"):
                quantize = calibrated_int8(tmp, spec, cfg, cfg.calibrate or data, static)
                quantizers.update(dict.fromkeys(static, quantize))
        engines = None
        if built_for is not None:
            with step("tensorrt"):
                limits = tensorrt.Limits(cfg.trt_max_batch, tcfg.max_question_tokens, tcfg.max_answer_tokens)
                engines = tensorrt.build_engines(tmp, manifest, spec.exported(True), cfg, limits, built_for)
        with step("validate"):
            images = images_for(image_spec)
            ref = fam.generate_answers(model, tok, enc, images, tcfg.max_answer_tokens, progress=progress)
            feeds = xfam.graph_inputs(merged.loaded, enc, images, n=8)
            v = Validator(model, spec, enc, records, ref, feeds, progress)
            fidelity = validate_bundle(tmp, v, cfg, [*precisions, *cfg.trt_precisions], quantizers, engines)
            fidelity["merge"] = merged.report or {"lora": False}
        verdict(fidelity, cfg)  # recorded in fidelity.json, also when --force ships it anyway
        atomic.write_json(tmp / bundle.FIDELITY, fidelity)
        gate(fidelity, cfg)
        if (
            "fp32" not in precisions
        ):  # kept until now: calibration, validation, fallback and TensorRT need them
            shutil.rmtree(tmp / "fp32")
            del manifest.precisions["fp32"]
        seal(tmp, manifest)
    log.info("bundle written to %s", out)
    return out


def source(cfg: ExportConfig, data: str | None) -> tuple[TrainConfig, str, Path | None]:
    """(training config, plain model to load, adapter or None) for a RUN, a model folder or a hub id.

    A RUN exports its model/ or its base with its adapter/; a model folder or hub id needs
    ``--data`` (the fidelity gate's validation questions) and takes ``--adapter`` for a LoRA
    adapter saved elsewhere.
    """
    from edgevqa.train import setup

    run = Path(cfg.run).expanduser()
    adapter = Path(cfg.adapter).expanduser() if cfg.adapter else None
    if adapter is not None and not adapter.is_dir():
        raise InputError(f"--adapter {cfg.adapter}: no such folder")
    is_run = (run / "config.json").is_file() and ((run / "model").is_dir() or (run / "adapter").is_dir())
    if is_run:
        tcfg = merge.read_run(run)
        if adapter is None and (run / "adapter").is_dir():
            return tcfg, tcfg.base, run / "adapter"
        return tcfg, str(run / "model"), adapter
    if (run / "config.json").is_file() and '"recipe"' in (run / "config.json").read_text("utf-8"):
        merge.read_run(run)  # a RUN that did not finish: says so
    if not data:
        raise InputError(
            f"exporting {cfg.run} (a model, not a training run) needs --data DIR: the validation "
            "questions the fidelity gate compares PyTorch and the bundle on"
        )
    family = setup.family_of_base(str(run) if run.exists() else cfg.run)
    base = str(run.resolve()) if run.exists() else cfg.run
    tcfg = TrainConfig(
        base=base,
        family=family,
        data=data,
        max_question_tokens=cfg.max_question_tokens,
        max_answer_tokens=cfg.max_answer_tokens,
    )
    return tcfg, base, adapter


def calibrated_int8(root: Path, spec: FamilySpec, cfg: ExportConfig, data: str, precisions: list[str]) -> Any:
    """The calibrated graphs of ``precisions`` (int8-static, the +ov paths' vision graphs),
    calibrated on ``cfg.calib_size`` questions of the train split of ``data``; returns the
    quantizer for the fallback."""
    recs = load_split(data, "train")
    pick = np.random.default_rng(0).choice(len(recs), min(cfg.calib_size, len(recs)), replace=False)
    items = [(recs[i].image_path(data), recs[i].question) for i in sorted(pick)]
    return static_int8_graphs(root, spec, items, cfg.calib_method, cfg.trt, precisions)


def static_int8_graphs(
    root: Path,
    spec: FamilySpec,
    items: list[tuple[Path, str]],
    method: str = "minmax",
    tensorrt: bool = False,
    precisions: Sequence[str] = ("int8-static",),
) -> Any:
    """Record every graph's inputs while the fp32 graphs in ``root`` (manifest written) answer
    ``items`` (image, question), then write ``root/int8-static`` (every graph) and each OpenVINO
    path's own graphs (``root/int4+ov/vision_encoder.onnx``); returns the quantizer."""
    from edgevqa.export.calibrate import record_feeds, static_int8

    quantize = static_int8(record_feeds(root, items), method)
    done: dict[str, Path] = {}  # a graph calibrated once: the same file for every precision
    for p in precisions:
        (root / p).mkdir()
        for g in spec.exported(tensorrt) if p == "int8-static" else openvino_graphs(spec):
            dst = root / p / f"{g.name}.onnx"
            if (src := done.get(g.name)) is None:
                done[g.name] = quantize(root / "fp32" / f"{g.name}.onnx", dst)
                continue
            for f in (src, Path(f"{src}.data")):  # with its external weights, where it has them
                if f.is_file():
                    shutil.copyfile(f, dst.parent / f.name)
    return quantize


def openvino_graphs(spec: FamilySpec) -> tuple:
    """The graphs an OpenVINO path (config.OPENVINO_VISION) runs in OpenVINO: the vision graph."""
    return tuple(g for g in spec.graphs if g.role == "image")


def seal(root: Path, manifest: bundle.Manifest) -> None:
    """Record every file's sha256 in the manifest and write it: the bundle is complete."""
    manifest.files = bundle.record_files(
        root,
        sorted(
            str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != bundle.MANIFEST
        ),
    )
    bundle.write_manifest(root, manifest)


def write_graphs(
    model: Any,
    spec: FamilySpec,
    root: Path,
    precisions: list[str],
    tensorrt: bool = False,
    prefill: dict[str, str] = PREFILL_WEIGHTS,
) -> None:
    export_graphs(model, spec, root, tensorrt)
    quantize_graphs(spec, root, precisions, tensorrt, prefill)


def export_graphs(model: Any, spec: FamilySpec, root: Path, tensorrt: bool = False) -> None:
    """``root/fp32``: every graph of ``spec`` exported from ``model``."""
    fp32 = root / "fp32"
    fp32.mkdir()
    with step("onnx"):
        for g in spec.exported(tensorrt):
            export_onnx.export_graph(model, spec, g.name, fp32 / f"{g.name}.onnx")


def quantize_graphs(
    spec: FamilySpec,
    root: Path,
    precisions: list[str],
    tensorrt: bool = False,
    prefill: dict[str, str] = PREFILL_WEIGHTS,
) -> None:
    """``root/<precision>`` from ``root/fp32`` for each precision quantized from fp32 alone (the
    model is not needed: a caller short of memory may free it first); ``prefill``: which
    precision's prompts run with which one's weights (prefill_files)."""
    fp32 = root / "fp32"
    prefills = prefill_files(spec, precisions, prefill)
    for p in precisions:
        if p == "fp32" or p not in QUANTIZERS:  # calibrated precisions need the bundle first
            continue
        (root / p).mkdir()
        with step(p):
            for g in spec.exported(tensorrt):
                QUANTIZERS[p](fp32 / f"{g.name}.onnx", root / p / f"{g.name}.onnx")
            if prefills.get(p) == f"{p}/{PREFILL}.onnx":  # the bundle does not ship the other precision
                src = fp32 / f"{spec.prefill.name}.onnx"
                QUANTIZERS[prefill[p]](src, root / p / f"{PREFILL}.onnx")


def prefill_weights(cfg: ExportConfig) -> dict[str, str]:
    """quantize.PREFILL_WEIGHTS, or none where ``--int4-prefill int4`` keeps int4 bundles in 4 bits."""
    return PREFILL_WEIGHTS if cfg.int4_prefill == "int8" else {}


def prefill_files(
    spec: FamilySpec, precisions: list[str], prefill: dict[str, str] = PREFILL_WEIGHTS
) -> dict[str, str]:
    """Precision -> the bundle file its prompts run through (``prefill``: precision -> the one whose
    weights it prefills with): that precision's step graph, shared when the bundle ships it too
    (int4's prefill is int8's decoder_step, stored once), else a copy of its own."""
    if spec.prefill is None:
        return {}
    return {
        p: f"{q}/{spec.prefill.name}.onnx" if q in precisions else f"{p}/{PREFILL}.onnx"
        for p, q in prefill.items()
        if p in precisions
    }


def portable(where: str, bundle_dir: Path) -> str:
    """How the manifest names a run or base: a local folder relative to the bundle (so `bench`
    finds it beside the bundle, and no absolute path of the exporting machine ships), a hub id
    as it is."""
    path = Path(where).expanduser()
    if not path.exists():
        return where
    try:
        return Path(os.path.relpath(path.resolve(), Path(bundle_dir).resolve())).as_posix()
    except ValueError:  # another drive (Windows): the folder's name is all that travels
        return path.resolve().name


def make_manifest(
    loaded: Loaded,
    spec: FamilySpec,
    precisions: list[str],
    max_question_tokens: int,
    max_answer_tokens: int,
    source: dict[str, Any],
    tensorrt: bool = False,
    prefill: dict[str, str] = PREFILL_WEIGHTS,
) -> bundle.Manifest:
    graphs = spec.exported(tensorrt)
    parts = registry.side(spec.family, "export").manifest_parts
    text, decoder, family_config = parts(loaded, max_question_tokens, max_answer_tokens)
    io = {g.name: bundle.GraphIO(tuple(g.inputs), tuple(g.outputs)) for g in graphs}
    files = {p: {g.name: f"{p}/{g.name}.onnx" for g in graphs} for p in precisions}
    for p, f in prefill_files(spec, precisions, prefill).items():
        io[PREFILL] = io[spec.prefill.name]
        files[p][PREFILL] = f
    engines = {}
    for p in precisions:  # an OpenVINO path: its vision graph, and its base's other files
        if base := OPENVINO_VISION.get(p):
            own = {g.name: f"{p}/{g.name}.onnx" for g in openvino_graphs(spec)}
            files[p] = {**files[base], **own}
            engines[p] = dict.fromkeys(own, "openvino-f32")
    return bundle.Manifest(
        family=spec.family,
        image=loaded.image,
        text=text,
        decoder=decoder,
        graphs=io,
        precisions=files,
        default_precision=precisions[0],
        source=source,
        versions=versions(),
        family_config=family_config,
        engines=engines,
        schema_version=bundle.SCHEMA_VERSION if engines else 3,  # schema-3 runtimes read the rest
    )


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"edgevqa": __version__}
    for pkg in ("torch", "transformers", "peft", "onnx", "onnxruntime", "tokenizers"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


@dataclass
class Validator:
    """Everything needed to compare one precision of a bundle with PyTorch, computed once."""

    model: Any
    spec: FamilySpec
    enc: Any
    records: list
    ref: Any  # PyTorch's answers (Generated)
    feeds: dict[str, list[dict]]  # real inputs per graph
    progress: bool

    def precision(self, root: Path, p: str) -> dict[str, Any]:
        from tqdm.auto import tqdm

        from edgevqa.runtime import VQAPipeline

        backend = "trt-engine" if p in tensorrt.SOURCES else "cpu"  # ONNX precisions: validated on CPU
        pipe = VQAPipeline.from_bundle(root, precision=p, verify=False, backend=backend)
        graphs = validate.compare_graphs(self.model, self.spec, pipe.sessions, self.feeds)
        ids, texts, same, total = [], [], 0, 0
        pairs = list(zip(self.records, self.enc.image_paths, self.ref.token_ids))
        for r, path, ref in tqdm(pairs, desc=f"onnx {p}", disable=not self.progress or None, leave=False):
            a = pipe.ask(path, r.question)
            ids.append(a.token_ids)
            texts.append(a.text)
            top1 = pipe.teacher_forced(path, r.question, ref)
            same += sum(x == y for x, y in zip(top1, ref))
            total += len(ref)
        rep = {"graphs": graphs, **validate.compare_answers(self.ref, ids, texts, self.records)}
        if p not in tensorrt.SOURCES:  # engines are not ONNX graphs: their layers are TensorRT's
            m = pipe.manifest
            runs = {
                g.name: m.graph_path(root, p, g.name) for g in self.spec.graphs if g.name in m.precisions[p]
            }
            rep["quantized"] = quantized_share(root / "fp32", root / p, runs, m.borrowed(root, p))
        # PyTorch's answer fed back token by token: how often the graphs pick its next token
        rep["teacher_forced_top1"] = same / max(total, 1)
        log.info("%s: answer agreement with PyTorch %.4f", p, rep["answer_agreement"])
        return rep


def validate_bundle(
    root: Path,
    v: Validator,
    cfg: ExportConfig,
    precisions: list[str],
    quantizers: dict[str, Any],
    engines: tensorrt.EngineBuild | None = None,
) -> dict[str, Any]:
    """fidelity.json: every precision against PyTorch; a failing quantized precision or TensorRT
    engine gets the fallback (its most sensitive MatMuls kept in fp32)."""
    recs = v.records
    report: dict[str, Any] = {
        "split": "val",
        "n": len(recs),
        "min_agreement": cfg.min_agreement,
        "precisions": {},
    }
    fp32 = root / "fp32"
    # a precision that runs another's graph (int4 prefills with int8's decoder_step; int4+ov runs
    # int4's text graphs) after that one, whose fallback may rewrite the graph they share
    for p in sorted(precisions, key=lambda p: (p in OPENVINO_VISION, p in PREFILL_WEIGHTS)):
        rep = v.precision(root, p)
        if rep["answer_agreement"] < cfg.min_agreement and cfg.fallback:
            if p in quantizers:

                def requantize(g: str, nodes: list[str], q: Any = quantizers[p], p: str = p) -> None:
                    q(fp32 / f"{g}.onnx", root / p / f"{g}.onnx", nodes)

                rep = fallback_precision(root, p, v, cfg, rep, root / p, requantize)
            elif engines is not None and p in tensorrt.SOURCES:
                with engine_fallback(root, p, v.spec, engines, quantizers) as (stand_in, rebuild):
                    rep = fallback_precision(root, p, v, cfg, rep, stand_in, rebuild)
                rep["fallback"]["measure"] += f" (engines: measured on {STAND_INS[p]})"
        report["precisions"][p] = rep
    report["torch_accuracy"] = record_accuracy(v.ref.texts, recs)
    return report


# what stands in for an engine on the CPU when the fallback measures which MatMuls to keep in fp32
STAND_INS = {
    "trt-fp16": "the fp16 ONNX graphs as the export makes them",
    "trt-int8": "the int8-static Q/DQ graphs the engines are built from",
}


@contextlib.contextmanager
def engine_fallback(
    root: Path, p: str, spec: FamilySpec, engines: tensorrt.EngineBuild, quantizers: dict[str, Any]
) -> Iterator[tuple[Path, Any]]:
    """For a TensorRT precision: ONNX graphs that stand in for its engines, so that per-MatMul
    errors are measured on the CPU (STAND_INS, made without exclusions: a fallback of the ONNX
    precision must not hide a node), and how to rebuild one graph's engine with nodes in fp32:
    pinned layers in an fp16 engine, nodes left unquantized in the Q/DQ graph of an int8 one."""
    fp32 = root / "fp32"
    make = quantizers[{"trt-fp16": "fp16", "trt-int8": "int8-static"}[p]]
    with tempfile.TemporaryDirectory(prefix=".fallback-", dir=root) as tmp:
        stand_in = Path(tmp) / "stand-in"
        stand_in.mkdir()
        for g in spec.exported(True):
            if (fp32 / f"{g.name}.onnx").exists():
                make(fp32 / f"{g.name}.onnx", stand_in / f"{g.name}.onnx", [])

        def rebuild(g: str, nodes: list[str]) -> None:
            if p == "trt-fp16":
                engines.graph(p, spec.graph(g), fp32 / f"{g}.onnx", keep_fp32=nodes)
            else:
                src = Path(tmp) / f"{g}.onnx"
                make(fp32 / f"{g}.onnx", src, nodes)
                engines.graph(p, spec.graph(g), src)

        yield stand_in, rebuild


def fallback_precision(
    root: Path,
    p: str,
    v: Validator,
    cfg: ExportConfig,
    first: dict[str, Any],
    measured: Path,
    rebuild: Any,
) -> dict:
    """Keep the MatMuls most hurt by ``p`` in fp32 (1, 2, 4, ... of them) until answers agree.

    Args:
        measured: the graphs whose per-MatMul errors rank the nodes (p's own ONNX graphs, or
            stand-ins for engines).
        rebuild: ``rebuild(graph, nodes)`` writes p's graph again with ``nodes`` kept in fp32.
    """
    from edgevqa.export.fallback import exclusion_batches, local_errors

    fp32 = root / "fp32"
    errors = []
    # the graphs p has of its own (an OpenVINO path borrows all but its vision graph)
    graphs = [
        g
        for g in v.spec.graphs
        if (fp32 / f"{g.name}.onnx").exists() and (measured / f"{g.name}.onnx").exists()
    ]
    for g in graphs:
        feeds = [{k: t.numpy() for k, t in f.items()} for f in v.feeds[g.name]]
        errors += local_errors(g.name, fp32 / f"{g.name}.onnx", measured / f"{g.name}.onnx", feeds)
    errors.sort(key=lambda e: -e.rel_error)
    log.info(
        "%s: answer agreement %.4f < %.2f; most sensitive: %s",
        p,
        first["answer_agreement"],
        cfg.min_agreement,
        ", ".join(f"{e.graph}/{e.scope} {e.rel_error:.3f}" for e in errors[:3]),
    )
    excluded = {g.name: [] for g in graphs}

    def build(nodes: list) -> None:  # rebuild only the graphs whose exclusions changed
        for g in graphs:
            names = [e.node for e in nodes if e.graph == g.name]
            if names != excluded[g.name]:
                rebuild(g.name, names)
                excluded[g.name] = names

    def score(rep: dict) -> tuple[float, float]:  # what the gate measures, then its finer grain
        return rep["answer_agreement"], rep.get("teacher_forced_top1", 0.0)

    # Local error orders the candidates; answers decide. A batch is kept only if the answers
    # improve with it (keeping a layer in fp32 can make them worse: its error may have cancelled
    # another's), so what ships is the best set measured, never a later, worse one.
    best, keep, attempts = first, [], []
    for batch in exclusion_batches(errors):
        trial = keep + batch
        build(trial)
        rep = v.precision(root, p)
        better = score(rep) > score(best)
        attempts.append(
            {
                "kept_fp32": len(trial),
                "answer_agreement": rep["answer_agreement"],
                "teacher_forced_top1": rep.get("teacher_forced_top1"),
                "accepted": better,
            }
        )
        if better:
            best, keep = rep, trial
        if best["answer_agreement"] >= cfg.min_agreement:
            break
    build(keep)  # the last trial may have been rejected: the graphs go back to the best set
    rep = best
    rep["fallback"] = {
        "reason": f"answer agreement {first['answer_agreement']:.4f} < --min-agreement {cfg.min_agreement}",
        "measure": "candidates ranked per MatMul by ||Y_q - X W_fp32|| / ||X W_fp32|| on its own input X "
        "(worst over inputs); a batch of them is kept in fp32 only if answer agreement "
        "(then teacher-forced top-1) improves",
        "kept_fp32": [asdict(e) for e in keep],
        "attempts": attempts,
        "most_sensitive": [asdict(e) for e in errors[:10]],
    }
    return rep


def verdict(fidelity: dict[str, Any], cfg: ExportConfig) -> None:
    """Set ``passed`` and ``problems``: fp32 graphs beyond atol, or answers that disagree with PyTorch."""
    problems = []
    for p, rep in fidelity["precisions"].items():
        if p == "fp32":
            problems += [
                f"fp32 {g} differs from PyTorch by {max(r['max_abs_diff'].values()):.2e} > atol {r['atol']}"
                for g, r in rep["graphs"].items()
                if not r["within_atol"]
            ]
        share = rep.get("quantized")
        if p != "fp32" and share and share["of"] and not share["matmuls"]:
            problems.append(
                f"{p} quantizes none of its {share['of']} weight MatMuls (all kept in fp32): it would "
                f"ship fp32 under the name {p}"
            )
        if rep["answer_agreement"] < cfg.min_agreement:
            fb = rep.get("fallback", {})
            kept, tried = (
                len(fb.get("kept_fp32", [])),
                max((a["kept_fp32"] for a in fb.get("attempts", [])), default=0),
            )
            problems.append(
                f"{p} answers agree with PyTorch on {rep['answer_agreement']:.1%} of validation "
                f"questions (< --min-agreement {cfg.min_agreement:.0%})"
                + (f" even with its {kept} most sensitive MatMuls kept in fp32" if kept else "")
                + (
                    f" (keeping up to {tried} of its most sensitive MatMuls in fp32 did not help)"
                    if tried and not kept
                    else ""
                )
            )
    fidelity["passed"] = not problems
    fidelity["problems"] = problems


def summary(fidelity: dict[str, Any]) -> list[str]:
    """One line per precision for people: agreement, how much of it is quantized, its size."""
    lines = []
    for p, rep in fidelity["precisions"].items():
        line = f"{p}: agrees with PyTorch on {rep['answer_agreement']:.1%} of {fidelity['n']} questions"
        share = rep.get("quantized")
        if share and p != "fp32":
            kept = share["of"] - share["matmuls"]
            line += f"; {share['matmuls']} of {share['of']} weight MatMuls quantized"
            line += f" ({kept} kept in fp32)" if kept else ""
        if share:
            line += f"; {share['bytes'] / 1e6:.1f} MB"
        lines.append(line)
    return lines


def gate(fidelity: dict[str, Any], cfg: ExportConfig) -> None:
    """Refuse the export (exit code 3, nothing written) unless it passed or --force."""
    if fidelity["problems"] and not cfg.force:
        raise ValidationError(
            "export refused: "
            + "; ".join(fidelity["problems"])
            + " (ship other precisions with --precision, or --force to write it anyway)"
        )
