"""edgevqa command line. Each command: flags -> config dataclass -> lazy import -> call.

Heavy modules (torch, transformers, onnxruntime) are imported inside the commands, so
``edgevqa --help`` answers at once. A user error (EdgeVQAError) ends as one line on stderr and
a non-zero exit; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

from edgevqa.errors import EdgeVQAError, InputError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Adapt a small VLM to radiology VQA and ship it as a verified, torch-free ONNX bundle.",
)
data_app = typer.Typer(
    no_args_is_help=True,
    help="Datasets: the synthetic default, public radiology sets, QA from captions, mixtures.",
)
app.add_typer(data_app, name="data")


def _setup_logging(verbose: bool = True) -> None:
    """edgevqa's own progress at INFO on stderr; other libraries only from WARNING up."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    ours = logging.getLogger("edgevqa")
    ours.handlers[:] = [handler]
    ours.setLevel(logging.INFO if verbose else logging.WARNING)
    ours.propagate = False
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("torch", "transformers", "peft", "onnxscript", "onnx_ir", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _need(*modules: str) -> None:
    """Fail with the pip command to run when a torch-side extra is missing (torch-free installs)."""
    from edgevqa._deps import require

    for m in modules:
        require(m)


def _precisions(values: list[str]) -> list[str]:
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


# ---------------------------------------------------------------------------------------------


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option(help="Folder to write (images/, train/val/test.jsonl, dataset.json).")],
    n: Annotated[int, typer.Option(help="Number of images (each gets several questions).")] = 3000,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed writes the same files.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
) -> None:
    """Write the deterministic synthetic radiology VQA set (x-ray / CT / MRI; chest / brain / abdomen)."""
    from edgevqa.data.synth import SynthConfig, generate

    if n < 10:
        raise InputError("--n must be at least 10 images (train/val/test each need some)")
    summary = generate(out, SynthConfig(n_images=n, seed=seed), overwrite=overwrite)
    typer.echo(json.dumps({"out": str(out), "splits": summary.get("splits", summary)}, default=str))


_SOURCE_HELP = "Dataset folder, or a Hugging Face dataset id (flaviagiammarino/vqa-rad, BoKelvin/SLAKE, ...)."
_FORMAT_HELP = "vqa-rad, slake, pmc-vqa, rocov2, medpix, edgevqa or edgevqa-captions (default: detected)."
_SPLIT_SEED_HELP = "Seed of the splits made here (val from train, or 70/10/20)."


def _load_options(seed: int, all_languages: bool, max_caption_words: int):  # -> LoadOptions
    from edgevqa.data.sources.common import LoadOptions

    if max_caption_words < 1:
        raise InputError(f"--max-caption-words must be at least 1, got {max_caption_words}")
    return LoadOptions(seed=seed, all_languages=all_languages, max_caption_words=max_caption_words)


@data_app.command("inspect")
def data_inspect(
    source: Annotated[str, typer.Argument(help=_SOURCE_HELP)],
    format: Annotated[str | None, typer.Option("--format", help=_FORMAT_HELP)] = None,
    seed: Annotated[int, typer.Option(help=_SPLIT_SEED_HELP)] = 0,
    all_languages: Annotated[bool, typer.Option(help="SLAKE: keep the Chinese questions too.")] = False,
    max_caption_words: Annotated[int, typer.Option(help="ROCOv2: longest caption kept, in words.")] = 64,
) -> None:
    """Counts per split, answer type and category, and the rows that would be skipped (and why)."""
    from edgevqa.data.loaders import describe, load_dataset

    typer.echo(describe(load_dataset(source, format, _load_options(seed, all_languages, max_caption_words))))


@data_app.command("convert")
def data_convert(
    source: Annotated[str, typer.Argument(help=_SOURCE_HELP)],
    out: Annotated[Path, typer.Option(help="Folder to write (images/, train/val/test.jsonl, dataset.json).")],
    format: Annotated[str | None, typer.Option("--format", help=_FORMAT_HELP)] = None,
    seed: Annotated[int, typer.Option(help=_SPLIT_SEED_HELP)] = 0,
    all_languages: Annotated[bool, typer.Option(help="SLAKE: keep the Chinese questions too.")] = False,
    max_caption_words: Annotated[int, typer.Option(help="ROCOv2: longest caption kept, in words.")] = 64,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
) -> None:
    """Convert a public dataset to edgevqa's layout (images stored once, split by image)."""
    from edgevqa.data.loaders import convert, describe

    opts = _load_options(seed, all_languages, max_caption_words)
    loaded = convert(source, out, format, opts, overwrite=overwrite)
    typer.echo(describe(loaded))
    if loaded.kind == "captions":
        typer.echo(f"next: edgevqa data qa-from-captions {out} --out {out}-qa")
    else:
        typer.echo(f"next: edgevqa train --data {out} --out runs/{out.name}")


@data_app.command("qa-from-captions")
def data_qa_from_captions(
    captions: Annotated[Path, typer.Argument(help="Caption folder (`edgevqa data convert` of ROCOv2).")],
    out: Annotated[Path, typer.Option(help="VQA folder to write.")],
    seed: Annotated[int, typer.Option(help="Seed of the question templates and negatives.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
) -> None:
    """Derive closed (balanced yes/no) and open questions from image captions by rules."""
    from edgevqa.data.qa_from_captions import generate

    summary = generate(captions, out, seed=seed, overwrite=overwrite)
    typer.echo(json.dumps({"out": str(out), "splits": summary["splits"]}))
    typer.echo(f"next: edgevqa data inspect {out}")


@data_app.command("mix")
def data_mix(
    parts: Annotated[list[str], typer.Argument(help="DIR:RATIO pairs, ratios summing to 1: a:0.8 b:0.2.")],
    out: Annotated[Path, typer.Option(help="Folder to write.")],
    size: Annotated[
        int | None, typer.Option(help="Train records (default: the most without repeating any).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed; the same seed writes the same files.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
) -> None:
    """Mix dataset folders by ratio, per split, recording each record's source in meta["source"]."""
    from edgevqa.data.mix import mix, parse_parts

    summary = mix(parse_parts(parts), out, size=size, seed=seed, overwrite=overwrite)
    typer.echo(json.dumps({"out": str(out), "splits": summary["splits"]}))


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="Dataset folder with train.jsonl and val.jsonl.")],
    out: Annotated[Path, typer.Option(help="Run folder to write.")],
    base: Annotated[
        str,
        typer.Option(
            help="tiny-blip, a Hugging Face id (Salesforce/blip-vqa-base), a model "
            "folder or a previous RUN."
        ),
    ] = "tiny-blip",
    lora: Annotated[bool, typer.Option("--lora/--no-lora", help="Train a LoRA adapter (peft).")] = False,
    lora_r: Annotated[int, typer.Option(help="LoRA rank.")] = 8,
    freeze_vision: Annotated[bool, typer.Option(help="Keep the vision encoder fixed.")] = False,
    epochs: Annotated[float, typer.Option(help="Passes over the training split.")] = 10.0,
    max_steps: Annotated[int, typer.Option(help="Stop after N optimizer steps (overrides --epochs).")] = 0,
    lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, warmup then cosine).")] = 5e-4,
    warmup_steps: Annotated[int, typer.Option(help="Linear warmup steps.")] = 300,
    batch_size: Annotated[int, typer.Option(help="Questions per step.")] = 32,
    image_size: Annotated[int, typer.Option(help="Input size of the tiny-blip preset.")] = 64,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    eval_every: Annotated[int, typer.Option(help="Validation every N steps (0: only at the end).")] = 500,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted run in --out from its last checkpoint.")
    ] = False,
) -> None:
    """Train BLIP VQA on a dataset folder (full weights, or LoRA with --lora)."""
    _need("torch", "transformers", "peft", "safetensors")
    from edgevqa.config import TrainConfig
    from edgevqa.train import train as run_train

    cfg = TrainConfig(
        base=base,
        data=str(data),
        out=str(out),
        lora=lora,
        lora_r=lora_r,
        lora_alpha=2 * lora_r,
        freeze_vision=freeze_vision,
        epochs=epochs,
        max_steps=max_steps,
        lr=lr,
        warmup_steps=warmup_steps,
        batch_size=batch_size,
        image_size=image_size,
        seed=seed,
        eval_every=eval_every,
    )
    run = run_train(cfg, resume=resume)
    report = json.loads((run / "eval.json").read_text())
    test = report.get("test") or report.get("val", {})
    typer.echo(
        f"run written to {run}; test exact match {test.get('accuracy', {}).get('overall', float('nan')):.3f} "
        f"(majority baseline {test.get('baseline', {}).get('overall', float('nan')):.3f})"
    )
    typer.echo(f"next: edgevqa export {run} --out {run}-bundle")


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Training run folder.")],
    out: Annotated[Path, typer.Option(help="Bundle folder to write.")],
    precision: Annotated[
        list[str],
        typer.Option(
            help="fp32, int8 (CPU), fp16 (GPU), int8-static (calibrated QDQ); repeat or comma-separate; "
            "the first is the default."
        ),
    ] = ["fp32", "int8"],  # noqa: B006
    data: Annotated[Path | None, typer.Option(help="Dataset for validation (default: the run's).")] = None,
    validate_limit: Annotated[
        int, typer.Option(help="Validation questions compared with PyTorch (0: all).")
    ] = 200,
    min_agreement: Annotated[
        float, typer.Option(help="Refuse the export below this answer agreement.")
    ] = 0.99,
    calibrate: Annotated[
        Path | None,
        typer.Option(help="Dataset whose train split calibrates int8-static (default: the run's)."),
    ] = None,
    calib_size: Annotated[int, typer.Option(help="Calibration questions for int8-static.")] = 64,
    calib_method: Annotated[
        str, typer.Option(help="Activation ranges for int8-static: minmax, entropy or percentile.")
    ] = "minmax",
    fallback: Annotated[
        bool,
        typer.Option(
            help="If a quantized precision fails, keep its most sensitive " "MatMuls in fp32 and retry."
        ),
    ] = True,
    force: Annotated[bool, typer.Option(help="Write the bundle even if validation fails.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing bundle.")] = False,
    trt: Annotated[
        bool,
        typer.Option(
            "--trt",
            help="Also build TensorRT engines for this GPU (fp16 and/or int8 of --precision; "
            "needs tensorrt and a CUDA GPU).",
        ),
    ] = False,
    trt_max_batch: Annotated[int, typer.Option(help="Largest batch the TensorRT profiles admit.")] = 4,
    trt_timing_cache: Annotated[
        Path | None, typer.Option(help="TensorRT timing cache file (default: in the edgevqa cache).")
    ] = None,
) -> None:
    """Merge LoRA, export ONNX graphs, quantize, validate against PyTorch and write a bundle."""
    _need("torch", "transformers", "peft", "onnx", "onnxscript")
    from edgevqa.config import ExportConfig
    from edgevqa.export import export as run_export

    cfg = ExportConfig(
        run=str(run),
        out=str(out),
        precisions=_precisions(precision),
        validate_limit=validate_limit,
        min_agreement=min_agreement,
        fallback=fallback,
        calibrate=str(calibrate) if calibrate else "",
        calib_size=calib_size,
        calib_method=calib_method,
        force=force,
        overwrite=overwrite,
        trt=trt,
        trt_max_batch=trt_max_batch,
        trt_timing_cache=str(trt_timing_cache) if trt_timing_cache else "",
    )
    bundle = run_export(cfg, data=str(data) if data else None)
    typer.echo(f'next: edgevqa ask IMAGE "QUESTION" --model {bundle}')


@app.command()
def ask(
    image: Annotated[str, typer.Argument(help="Image file (PNG, JPEG, ...).")],
    model: Annotated[Path, typer.Option(help="Bundle folder written by `edgevqa export`.")],
    question: Annotated[str | None, typer.Argument(help="Question about the image.")] = None,
    more: Annotated[
        list[str],
        typer.Option(
            "-q",
            "--question",
            help="Another question about the same " "image (repeatable); the image is encoded once.",
        ),
    ] = [],  # noqa: B006
    rank: Annotated[
        bool, typer.Option(help="Closed questions: score the candidates instead of generating.")
    ] = False,
    candidates: Annotated[str, typer.Option(help="Comma-separated candidate answers for --rank.")] = "yes,no",
    precision: Annotated[str | None, typer.Option(help="Precision to run (default: the bundle's).")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON line per question, with timings.")
    ] = False,
    threads: Annotated[int, typer.Option(help="CPU threads (0: all cores).")] = 0,
    backend: Annotated[
        str,
        typer.Option(
            help="auto, cpu, cuda, tensorrt (onnxruntime providers) or trt-engine (the bundle's "
            "TensorRT engines); auto picks the best this machine and bundle allow."
        ),
    ] = "auto",
) -> None:
    """Answer questions about an image from a bundle (torch-free runtime)."""
    from edgevqa.runtime import VQAPipeline
    from edgevqa.runtime.images import load_image
    from edgevqa.runtime.session import use_global_pool

    use_global_pool(threads)  # this process is ours: one pool for the three graphs
    questions = ([question] if question is not None else []) + list(more)
    if not questions:
        raise InputError('no question: edgevqa ask IMAGE "QUESTION" (or -q "QUESTION", repeatable)')
    if any(not q.strip() for q in questions):
        raise InputError("the question is empty")
    cands = tuple(c.strip() for c in candidates.split(",") if c.strip())
    img = load_image(image)  # bad images fail before the bundle is loaded
    pipe = VQAPipeline.from_bundle(model, precision=precision, threads=threads, backend=backend)
    answers = [pipe.rank(img, q, cands) for q in questions] if rank else pipe.ask_many(img, questions)
    for q, ans in zip(questions, answers):
        if as_json:
            row = {
                "question": q,
                "answer": ans.text,
                "token_ids": ans.token_ids,
                "precision": pipe.precision,
                "backend": pipe.backend,
                "image_cached": ans.image_cached,
                "timings_ms": ans.timings_ms,
            }
            if ans.scores is not None:
                row["scores"] = ans.scores
            typer.echo(json.dumps(row))
        else:
            typer.echo(ans.text if len(questions) == 1 else f"{q}\t{ans.text}")


@app.command()
def bench(
    out: Annotated[Path, typer.Option(help="Report folder (report.json, report.md, plot).")],
    model: Annotated[Path | None, typer.Option(help="Bundle to benchmark on --data.")] = None,
    data: Annotated[Path | None, typer.Option(help="Dataset folder; its test split is answered.")] = None,
    run: Annotated[
        Path | None,
        typer.Option(help="Training run for the PyTorch side (default: the " "bundle's source run)."),
    ] = None,
    arch: Annotated[
        str | None,
        typer.Option(
            help="Benchmark a random-weight architecture instead " "(blip-vqa-base: the full-size model)."
        ),
    ] = None,
    limit: Annotated[int, typer.Option(help="Test questions to answer (0: all).")] = 0,
    repeats: Annotated[int, typer.Option(help="Timed answers per backend with --arch.")] = 10,
    answer_tokens: Annotated[int, typer.Option(help="Answer length in tokens with --arch.")] = 8,
) -> None:
    """Latency, memory and fidelity: PyTorch vs every ONNX precision, in one run."""
    _need("torch", "transformers")
    from edgevqa import bench as bench_mod

    if arch:
        report = bench_mod.bench_arch(arch, Path(out), repeats=repeats, answer_tokens=answer_tokens)
    else:
        if model is None or data is None:
            raise InputError("bench needs --model BUNDLE and --data DIR (or --arch blip-vqa-base)")
        report = bench_mod.bench_bundle(model, data, Path(out), run=run, limit=limit)
    typer.echo(bench_mod.markdown_table(report))
    typer.echo(f"report: {Path(out) / 'report.md'}")


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where data, runs, bundle and report go.")] = Path(
        "work/demo"
    ),
    fast: Annotated[
        bool, typer.Option(help="A much shorter run (smoke test; accuracy will be low).")
    ] = False,
) -> None:
    """The whole loop on the embedded default: synth data -> train -> LoRA -> export -> ask -> bench."""
    _need("torch", "transformers", "peft", "onnx", "onnxscript")
    from edgevqa import demo as demo_mod

    typer.echo(demo_mod.run(workdir, fast=fast))


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the app and turns EdgeVQAError into one line and an exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    _setup_logging()
    try:
        app(args=argv, prog_name="edgevqa", standalone_mode=False)
    except EdgeVQAError as e:
        if debug:
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:
        # typer vendors click (typer._click): recognise its usage errors by shape, not by import
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            typer.echo(f"error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        if type(e).__name__ == "Exit":
            sys.exit(getattr(e, "exit_code", 0))
        if type(e).__name__ == "Abort":
            sys.exit(1)
        raise
