"""RUN -> bundle: merge LoRA, export ONNX graphs, quantize, validate against PyTorch, write.

Everything is written into a temporary folder that is renamed to ``--out`` only when every step
passed, so a failed or refused export leaves nothing behind.

Example:
    >>> from edgevqa.config import ExportConfig
    >>> export(ExportConfig(run="runs/lora", out="bundle"))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgevqa import __version__, atomic, bundle
from edgevqa.config import ExportConfig
from edgevqa.data.records import VQARecord, load_split
from edgevqa.errors import InputError, ValidationError
from edgevqa.export import merge, specs, validate
from edgevqa.export import onnx as export_onnx
from edgevqa.export.quantize import QUANTIZERS
from edgevqa.metrics import vqa_accuracy
from edgevqa.train.data import ImageCache, encode_records
from edgevqa.train.infer import generate_answers
from edgevqa.train.models import FAMILY

log = logging.getLogger("edgevqa.export")


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    """Log each export step with its time; re-raise failures with the step's name."""
    t0 = time.perf_counter()
    try:
        yield
    except (InputError, ValidationError):
        raise
    except Exception as e:
        raise RuntimeError(f"export step '{name}' failed: {e}") from e
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
    from transformers import AutoTokenizer

    run, out = Path(cfg.run), Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise InputError(f"{out} already exists; choose another --out or pass --overwrite")
    tcfg = merge.read_run(run)
    data = data or tcfg.data
    records = validation_records(data, cfg.validate_limit)
    tok = AutoTokenizer.from_pretrained(run / "tokenizer")
    enc = encode_records(records, data, tok, tcfg.max_question_tokens, tcfg.max_answer_tokens)
    caches: dict[Any, ImageCache] = {}

    def images_for(spec: bundle.ImageSpec) -> ImageCache:
        return caches.setdefault(spec, ImageCache(spec))

    with step("merge"):
        merged = merge.merge_run(run, enc, images_for)
    model, image_spec = merged.loaded.model, merged.loaded.image
    spec = specs.get(FAMILY)
    with atomic.directory(out, overwrite=cfg.overwrite) as tmp:
        write_graphs(model, spec, tmp, cfg.precisions)
        tok.backend_tokenizer.save(str(tmp / bundle.TOKENIZER))
        manifest = make_manifest(
            model,
            tok,
            image_spec,
            spec,
            cfg.precisions,
            tcfg.max_question_tokens,
            tcfg.max_answer_tokens,
            {"run": str(run.resolve()), "base": tcfg.base, "lora": merged.lora},
        )
        bundle.write_manifest(tmp, manifest)
        with step("validate"):
            fidelity = validate_bundle(
                tmp,
                model,
                tok,
                spec,
                enc,
                records,
                images_for(image_spec),
                cfg,
                tcfg.max_answer_tokens,
                progress,
            )
            fidelity["merge"] = merged.report or {"lora": False}
        atomic.write_json(tmp / bundle.FIDELITY, fidelity)
        gate(fidelity, cfg)
        seal(tmp, manifest)
    log.info("bundle written to %s", out)
    return out


def seal(root: Path, manifest: bundle.Manifest) -> None:
    """Record every file's sha256 in the manifest and write it: the bundle is complete."""
    manifest.files = bundle.record_files(
        root,
        sorted(
            str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != bundle.MANIFEST
        ),
    )
    bundle.write_manifest(root, manifest)


def write_graphs(model: Any, spec: specs.FamilySpec, root: Path, precisions: list[str]) -> None:
    fp32 = root / "fp32"
    fp32.mkdir()
    with step("onnx"):
        for g in spec.graphs:
            export_onnx.export_graph(model, spec, g.name, fp32 / f"{g.name}.onnx")
    for p in precisions:
        if p == "fp32":
            continue
        (root / p).mkdir()
        with step(p):
            for g in spec.graphs:
                QUANTIZERS[p](fp32 / f"{g.name}.onnx", root / p / f"{g.name}.onnx")
    if "fp32" not in precisions:
        shutil.rmtree(fp32)


def make_manifest(
    model: Any,
    tok: Any,
    image: bundle.ImageSpec,
    spec: specs.FamilySpec,
    precisions: list[str],
    max_question_tokens: int,
    max_answer_tokens: int,
    source: dict[str, Any],
) -> bundle.Manifest:
    tc = model.config.text_config
    return bundle.Manifest(
        family=spec.family,
        image=image,
        text=bundle.TextSpec(
            bos_id=tok.bos_token_id,
            sep_id=tok.sep_token_id,
            pad_id=tok.pad_token_id,
            max_question_tokens=max_question_tokens,
            max_answer_tokens=max_answer_tokens,
            clean_up_tokenization_spaces=bool(getattr(tok, "clean_up_tokenization_spaces", True)),
        ),
        decoder=bundle.DecoderSpec(
            num_layers=tc.num_hidden_layers,
            num_heads=tc.num_attention_heads,
            head_dim=tc.hidden_size // tc.num_attention_heads,
            vocab_size=tc.vocab_size,
        ),
        graphs={g.name: bundle.GraphIO(tuple(g.inputs), tuple(g.outputs)) for g in spec.graphs},
        precisions={p: {g.name: f"{p}/{g.name}.onnx" for g in spec.graphs} for p in precisions},
        default_precision=precisions[0],
        source=source,
        versions=versions(),
    )


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"edgevqa": __version__}
    for pkg in ("torch", "transformers", "peft", "onnx", "onnxruntime", "tokenizers"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


def validate_bundle(
    root: Path,
    model: Any,
    tok: Any,
    spec: specs.FamilySpec,
    enc: Any,
    records: list,
    images: ImageCache,
    cfg: ExportConfig,
    max_answer: int,
    progress: bool,
) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from edgevqa.runtime import VQAPipeline

    ref = generate_answers(model, tok, enc, images, max_answer, progress=progress)
    feeds = validate.graph_inputs(model, enc, images, n=8, bos=tok.bos_token_id)
    report: dict[str, Any] = {
        "split": "val",
        "n": len(records),
        "min_agreement": cfg.min_agreement,
        "precisions": {},
    }
    for p in cfg.precisions:
        pipe = VQAPipeline.from_bundle(root, precision=p, verify=False)
        graphs = validate.compare_graphs(model, spec, pipe.sessions, feeds)
        ids, texts = [], []
        for r, path in tqdm(
            list(zip(records, enc.image_paths)), desc=f"onnx {p}", disable=not progress, leave=False
        ):
            a = pipe.ask(path, r.question)
            ids.append(a.token_ids)
            texts.append(a.text)
        report["precisions"][p] = {"graphs": graphs, **validate.compare_answers(ref, ids, texts, records)}
        log.info("%s: answer agreement with PyTorch %.4f", p, report["precisions"][p]["answer_agreement"])
    report["torch_accuracy"] = vqa_accuracy(
        ref.texts,
        [r.answer for r in records],
        [r.answer_type for r in records],
        [r.category for r in records],
    )
    return report


def gate(fidelity: dict[str, Any], cfg: ExportConfig) -> None:
    """Refuse the export when fp32 graphs drift past atol or any precision's answers disagree."""
    problems = []
    for p, rep in fidelity["precisions"].items():
        if p == "fp32":
            problems += [
                f"fp32 {g} differs from PyTorch by {max(r['max_abs_diff'].values()):.2e} > atol {r['atol']}"
                for g, r in rep["graphs"].items()
                if not r["within_atol"]
            ]
        if rep["answer_agreement"] < cfg.min_agreement:
            problems.append(
                f"{p} answers agree with PyTorch on {rep['answer_agreement']:.1%} of validation "
                f"questions (< --min-agreement {cfg.min_agreement:.0%})"
            )
    fidelity["passed"] = not problems
    fidelity["problems"] = problems
    if problems and not cfg.force:
        raise ValidationError(
            "export refused: " + "; ".join(problems) + " (ship other precisions with "
            "--precision, or --force to write it anyway)"
        )
