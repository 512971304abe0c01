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
    captions: Annotated[
        bool, typer.Option(help="Also write {split}.captions.jsonl (one caption per image; dapt/caption).")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder.")] = False,
) -> None:
    """Write the deterministic synthetic radiology VQA set (x-ray / CT / MRI; chest / brain / abdomen)."""
    from edgevqa.data.synth import SynthConfig, generate

    if n < 10:
        raise InputError("--n must be at least 10 images (train/val/test each need some)")
    summary = generate(out, SynthConfig(n_images=n, seed=seed), overwrite=overwrite, captions=captions)
    typer.echo(json.dumps({"out": str(out), "splits": summary.get("splits", summary)}, default=str))


_R = " (default: per --recipe)"
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
    data: Annotated[
        Path,
        typer.Option(
            help="Dataset folder: train.jsonl and val.jsonl, or {split}.captions.jsonl for the dapt, "
            "dapt-sd and caption recipes."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Run folder to write.")],
    recipe: Annotated[
        str,
        typer.Option(
            help="default (a preset from scratch, or all weights), vqa (paper 000 fine-tune), dapt / "
            "dapt-sd (paper 000 pretraining on captions, + self-distillation), caption (paper 002); "
            "PaliGemma: projector (papers 003/004 stage 1), lora (stage 2, --init the stage 1 run). "
            "Explicit flags override the recipe's settings."
        ),
    ] = "default",
    base: Annotated[
        str | None,
        typer.Option(
            help="tiny-blip, tiny-paligemma, a Hugging Face id (Salesforce/blip-vqa-base, "
            "google/paligemma-3b-pt-224), a model folder or a previous RUN (default: tiny-blip). "
            "Its model type picks the family; other types are refused."
        ),
    ] = None,
    init: Annotated[
        Path | None,
        typer.Option(help="Start from a previous RUN of any recipe (dapt -> vqa); replaces --base."),
    ] = None,
    train_part: Annotated[
        str | None, typer.Option("--train", help="caption: full, decoder or encoder (the parts that learn).")
    ] = None,
    lora: Annotated[bool, typer.Option("--lora/--no-lora", help="Train a LoRA adapter (peft).")] = False,
    lora_r: Annotated[int, typer.Option(help="LoRA rank.")] = 8,
    freeze_vision: Annotated[
        bool | None,
        typer.Option("--freeze-vision/--no-freeze-vision", help="Keep the vision encoder fixed." + _R),
    ] = None,
    epochs: Annotated[float | None, typer.Option(help="Passes over the training split." + _R)] = None,
    max_steps: Annotated[int, typer.Option(help="Stop after N optimizer steps (overrides --epochs).")] = 0,
    lr: Annotated[
        float | None, typer.Option(help="Peak learning rate (AdamW, warmup then cosine)." + _R)
    ] = None,
    min_lr: Annotated[float | None, typer.Option(help="Learning rate the cosine ends at." + _R)] = None,
    warmup_steps: Annotated[int | None, typer.Option(help="Linear warmup steps." + _R)] = None,
    weight_decay: Annotated[float | None, typer.Option(help="AdamW weight decay." + _R)] = None,
    batch_size: Annotated[int | None, typer.Option(help="Examples per forward pass." + _R)] = None,
    grad_accum: Annotated[
        int | None, typer.Option(help="Micro-batches per optimizer step (gradient accumulation)." + _R)
    ] = None,
    patience: Annotated[
        int | None, typer.Option(help="Early stopping: epochs without a better val score (0: off)." + _R)
    ] = None,
    max_caption_tokens: Annotated[
        int | None, typer.Option(help="Caption tokens kept (dapt: 64, caption: 128)." + _R)
    ] = None,
    image_size: Annotated[int, typer.Option(help="Input size of the tiny presets.")] = 64,
    prompt_template: Annotated[
        str | None,
        typer.Option(
            help="PaliGemma: the prompt around the question, with {question} "
            "(default: 'answer en {question}')."
        ),
    ] = None,
    lr_schedule: Annotated[
        str | None, typer.Option(help="cosine or constant (after the warm-up)." + _R)
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    eval_every: Annotated[
        int | None, typer.Option(help="Validation every N steps (0: only at the end)." + _R)
    ] = None,
    device: Annotated[
        str, typer.Option(help="auto, cpu or cuda; CUDA runs use mixed precision (--no-amp: fp32).")
    ] = "auto",
    amp: Annotated[bool, typer.Option("--amp/--no-amp", help="Mixed precision on CUDA.")] = True,
    resume: Annotated[
        bool, typer.Option(help="Continue an interrupted run in --out from its last checkpoint.")
    ] = False,
) -> None:
    """Train a VQA model (BLIP or PaliGemma), or pretrain / caption-tune BLIP for a later VQA run.

    Settings, lowest precedence first: the built-in defaults, the recipe's (edgevqa/train/recipes.py),
    then the flags given here. The resolved settings are saved in RUN/config.json.
    """
    _need("torch", "transformers", "peft", "safetensors")
    from edgevqa.train import train as run_train
    from edgevqa.train.recipes import config_for

    cfg = config_for(
        recipe,
        base=base,
        init=str(init) if init else None,
        data=str(data),
        out=str(out),
        train_part=train_part,
        lora=lora,
        lora_r=lora_r,
        lora_alpha=2 * lora_r,
        freeze_vision=freeze_vision,
        epochs=epochs,
        max_steps=max_steps,
        lr=lr,
        min_lr=min_lr,
        warmup_steps=warmup_steps,
        weight_decay=weight_decay,
        batch_size=batch_size,
        grad_accum=grad_accum,
        patience=patience,
        max_caption_tokens=max_caption_tokens,
        image_size=image_size,
        prompt=prompt_template,
        lr_schedule=lr_schedule,
        seed=seed,
        eval_every=eval_every,
        device=device,
        amp=amp,
    )
    run = run_train(cfg, resume=resume)
    for line in _train_summary(run, json.loads((run / "eval.json").read_text())):
        typer.echo(line)


def _train_summary(run: Path, report: dict) -> list[str]:
    """What the run reached, in one line, and the command to run next."""
    nan = float("nan")
    if report.get("recipe") in ("dapt", "dapt-sd", "caption"):
        val = report.get("val", {})
        what = (
            f"val caption loss {val.get('loss', nan):.3f}"
            if report["recipe"] == "caption"
            else f"val itc+itm+lm {val.get('total', nan):.3f}, "
            f"image->text recall@1 {val.get('i2t_recall@1', nan):.3f}"
        )
        return [
            f"run written to {run}; {what}",
            f"next: edgevqa train --recipe vqa --init {run} --data VQA_DIR --out {run}-vqa",
        ]
    test = report.get("test") or report.get("val", {})
    return [
        f"run written to {run}; test exact match {test.get('accuracy', {}).get('overall', nan):.3f} "
        f"(majority baseline {test.get('baseline', {}).get('overall', nan):.3f})",
        f"next: edgevqa export {run} --out {run}-bundle",
    ]


@app.command()
def export(
    run: Annotated[
        Path,
        typer.Argument(help="A training run, a model folder (save_pretrained layout) or a Hugging Face id."),
    ],
    out: Annotated[Path, typer.Option(help="Bundle folder to write.")],
    adapter: Annotated[
        Path | None, typer.Option(help="A peft (LoRA) adapter folder to merge in (one saved elsewhere).")
    ] = None,
    max_question_tokens: Annotated[
        int, typer.Option(help="Model folders and hub ids: longest question (PaliGemma: prompt) in tokens.")
    ] = 32,
    max_answer_tokens: Annotated[
        int, typer.Option(help="Model folders and hub ids: most answer tokens generated.")
    ] = 8,
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
        adapter=str(adapter) if adapter else "",
        max_question_tokens=max_question_tokens,
        max_answer_tokens=max_answer_tokens,
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
    model: Annotated[Path, typer.Option(help="Bundle folder written by `edgevqa export`.")],
    image: Annotated[
        str | None, typer.Argument(help="Image file (PNG, JPEG, DICOM, ...); not with --batch.")
    ] = None,
    question: Annotated[str | None, typer.Argument(help="Question about the image.")] = None,
    more: Annotated[
        list[str],
        typer.Option(
            "-q",
            "--question",
            help="Another question about the same " "image (repeatable); the image is encoded once.",
        ),
    ] = [],  # noqa: B006
    batch: Annotated[
        Path | None,
        typer.Option(help="JSON-lines questions file ({image, question, id?} per line); needs --out."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="With --batch: answers file, appended as answers come; re-run to resume."),
    ] = None,
    window: Annotated[
        str | None,
        typer.Option(help="DICOM: window CENTRE,WIDTH in modality units (e.g. 40,400); default: the file's."),
    ] = None,
    frame: Annotated[
        int | None, typer.Option(help="DICOM: frame of a multi-frame file, from 1 (default: the middle).")
    ] = None,
    rank: Annotated[
        bool, typer.Option(help="Closed questions: score the candidates instead of generating.")
    ] = False,
    candidates: Annotated[str, typer.Option(help="Comma-separated candidate answers for --rank.")] = "yes,no",
    precision: Annotated[str | None, typer.Option(help="Precision to run (default: the bundle's).")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON line per question, with timings.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="With --batch: a progress bar on stderr.")] = True,
    threads: Annotated[int, typer.Option(help="CPU threads (0: all cores).")] = 0,
    backend: Annotated[
        str,
        typer.Option(
            help="auto, cpu, cuda, tensorrt (onnxruntime providers) or trt-engine (the bundle's "
            "TensorRT engines); auto picks the best this machine and bundle allow."
        ),
    ] = "auto",
) -> None:
    """Answer questions about an image (or a JSON-lines batch) from a bundle (torch-free runtime)."""
    from edgevqa.runtime.dicom import DicomOptions, parse_window

    dicom = DicomOptions(window=parse_window(window) if window else None, frame=frame)
    cands = tuple(c.strip() for c in candidates.split(",") if c.strip())
    if batch is not None:
        _ask_batch(
            model,
            image,
            question,
            more,
            batch,
            out,
            dicom,
            rank,
            cands,
            precision,
            progress,
            threads,
            backend,
        )
        return
    if image is None:
        raise InputError('no image: edgevqa ask IMAGE "QUESTION" --model BUNDLE (or --batch FILE --out FILE)')
    if out is not None:
        raise InputError("--out goes with --batch (answers to a single image are printed)")
    from edgevqa.runtime import VQAPipeline
    from edgevqa.runtime.images import is_dicom_source, load_image
    from edgevqa.runtime.session import use_global_pool

    use_global_pool(threads)  # this process is ours: one pool for the three graphs
    questions = ([question] if question is not None else []) + list(more)
    if not questions:
        raise InputError('no question: edgevqa ask IMAGE "QUESTION" (or -q "QUESTION", repeatable)')
    if any(not q.strip() for q in questions):
        raise InputError("the question is empty")
    if (window or frame is not None) and not is_dicom_source(image):
        raise InputError(f"--window and --frame apply to DICOM files; {image} is not one")
    img = load_image(image, dicom=dicom)  # bad images fail before the bundle is loaded
    pipe = VQAPipeline.from_bundle(model, precision=precision, threads=threads, backend=backend)
    answers = [pipe.rank(img, q, cands) for q in questions] if rank else pipe.ask_many(img, questions)
    for q, ans in zip(questions, answers):
        if as_json:
            row = {"question": q, **ans.to_json(), "precision": pipe.precision, "backend": pipe.backend}
            typer.echo(json.dumps(row))
        else:
            typer.echo(ans.text if len(questions) == 1 else f"{q}\t{ans.text}")


def _ask_batch(
    model: Path,
    image: str | None,
    question: str | None,
    more: list[str],
    batch: Path,
    out: Path | None,
    dicom,  # DicomOptions
    rank: bool,
    cands: tuple[str, ...],
    precision: str | None,
    progress: bool,
    threads: int,
    backend: str,
) -> None:
    """`ask --batch`: questions from a JSON-lines file, answers appended to --out as they come."""
    import functools

    from edgevqa.runtime import VQAPipeline
    from edgevqa.runtime.batch import read_questions, run_batch
    from edgevqa.runtime.images import load_image
    from edgevqa.runtime.session import use_global_pool

    if out is None:
        raise InputError("--batch needs --out FILE (the answers, one JSON line per question)")
    if image is not None or question is not None or more:
        raise InputError("--batch takes images and questions from its file; drop IMAGE/QUESTION/-q")
    if out.resolve() == batch.resolve():
        raise InputError("--out must not be the --batch questions file")
    read_questions(batch)  # a missing questions file fails before the bundle is loaded
    use_global_pool(threads)
    pipe = VQAPipeline.from_bundle(model, precision=precision, threads=threads, backend=backend)
    answer = functools.partial(pipe.rank, candidates=cands) if rank else pipe.ask
    summary = run_batch(batch, out, answer, functools.partial(load_image, dicom=dicom), progress=progress)
    typer.echo(json.dumps({"out": str(out), **summary.__dict__}))


@app.command()
def serve(
    model: Annotated[Path, typer.Option(help="Bundle folder written by `edgevqa export`.")],
    host: Annotated[
        str, typer.Option(help="Address to listen on (loopback: only this machine).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="EDGEVQA_TOKEN",
            show_default=False,
            help="Bearer token required by every route but /healthz and the page (prefer the env var).",
        ),
    ] = None,
    precision: Annotated[str | None, typer.Option(help="Precision to run (default: the bundle's).")] = None,
    backend: Annotated[
        str, typer.Option(help="auto, cpu, cuda, tensorrt or trt-engine (as for ask).")
    ] = "auto",
    threads: Annotated[int, typer.Option(help="CPU threads for inference (0: all cores).")] = 0,
    max_queue: Annotated[
        int, typer.Option(help="Requests admitted at once (running + waiting); more get 503 + Retry-After.")
    ] = 8,
    workers: Annotated[
        int, typer.Option(help="Threads decoding uploads (inference runs one at a time).")
    ] = 2,
    max_body_mb: Annotated[
        float, typer.Option(help="Largest request body in MB (image or DICOM file).")
    ] = 32.0,
    max_pixels: Annotated[int, typer.Option(help="Largest image or DICOM frame, in pixels.")] = 40_000_000,
    max_question_chars: Annotated[int, typer.Option(help="Longest question, in characters.")] = 500,
    access_log: Annotated[bool, typer.Option(help="Log one line per request (method, path, status).")] = True,
) -> None:
    """Serve the bundle over HTTP: a page for clinicians at /, POST /v1/ask, /metrics, /healthz."""
    _need("fastapi", "uvicorn", "python_multipart")
    from edgevqa.runtime import VQAPipeline
    from edgevqa.runtime.session import use_global_pool
    from edgevqa.serve.app import ServeSettings, build_app, is_loopback, run

    settings = ServeSettings(
        host=host,
        port=port,
        token=token or None,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        max_pixels=max_pixels,
        max_question_chars=max_question_chars,
        max_queue=max_queue,
        workers=workers,
    )
    if not is_loopback(host) and settings.token is None:
        logging.getLogger("edgevqa").warning(
            "serving on %s without a token: anyone who can reach this port can use the model "
            "(set EDGEVQA_TOKEN)",
            host,
        )
    use_global_pool(threads)  # this process is ours: one pool for the three graphs
    pipe = VQAPipeline.from_bundle(model, precision=precision, threads=threads, backend=backend)
    shown = f"[{host}]" if ":" in host else host
    typer.echo(
        f"serving {pipe.manifest.family} ({pipe.precision}, {pipe.backend}) on http://{shown}:{port}/ "
        f"(queue {max_queue}{', token required' if settings.token else ''})",
        err=True,
    )
    run(build_app(pipe, settings), settings, access_log=access_log)


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
    from edgevqa.bench import runner as bench_mod

    if arch:
        report = bench_mod.bench_arch(arch, Path(out), repeats=repeats, answer_tokens=answer_tokens)
    else:
        if model is None or data is None:
            raise InputError("bench needs --model BUNDLE and --data DIR (or --arch blip-vqa-base)")
        report = bench_mod.bench_bundle(model, data, Path(out), run=run, limit=limit)
    typer.echo(bench_mod.markdown_table(report))
    typer.echo(f"report: {Path(out) / 'report.md'}")


@app.command("eval")
def eval_cmd(
    model: Annotated[str, typer.Argument(help="Training run folder (PyTorch) or bundle folder (runtime).")],
    data: Annotated[
        Path, typer.Option(help="Dataset folder: {split}.jsonl, or {split}.captions.jsonl for a caption run.")
    ],
    split: Annotated[str, typer.Option(help="Split to evaluate: train, val or test.")] = "test",
    out: Annotated[
        Path | None, typer.Option(help="Report folder (eval.json, eval.md, predictions.jsonl).")
    ] = None,
    limit: Annotated[int, typer.Option(help="Evaluate the first N questions only (0: all).")] = 0,
    samples: Annotated[
        int, typer.Option(help="Sampled answers per question for robustness (paper 003: 5; 0: skip).")
    ] = 5,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (0: greedy).")] = 1.0,
    top_k: Annotated[int, typer.Option(help="Sample from the k most likely tokens (0: all).")] = 50,
    top_p: Annotated[float, typer.Option(help="Sample from the smallest set reaching this mass.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Sampling seed (question i uses (seed, i)).")] = 0,
    precision: Annotated[
        str | None, typer.Option(help="Bundle: precision to run (default: its own).")
    ] = None,
    backend: Annotated[str, typer.Option(help="Bundle: auto, cpu, cuda, tensorrt or trt-engine.")] = "auto",
    threads: Annotated[int, typer.Option(help="CPU threads (0: all cores).")] = 0,
) -> None:
    """Exact match, edit similarity and robustness of a run or a bundle on a dataset split
    (BLEU, ROUGE-L and CIDEr of a caption run on captions)."""
    from edgevqa.eval.evaluate import EvalConfig, markdown, model_kind, run_eval

    cfg = EvalConfig(
        model=model,
        data=str(data),
        split=split,
        out=str(out) if out else "",
        limit=limit,
        samples=samples,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        precision=precision,
        backend=backend,
        threads=threads,
    )
    if model_kind(model) == "run":
        _need("torch", "transformers", "peft", "safetensors")
    else:
        from edgevqa.runtime.session import use_global_pool

        use_global_pool(threads)  # this process is ours: one pool for the three graphs
    report = run_eval(cfg)
    typer.echo(markdown(report))
    typer.echo(f"report: {cfg.out_dir / 'eval.md'}")


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where data, runs, bundle and report go.")] = Path(
        "work/demo"
    ),
    fast: Annotated[
        bool, typer.Option(help="A much shorter run (smoke test; accuracy will be low).")
    ] = False,
    family: Annotated[
        str,
        typer.Option(
            help="Model family: blip-vqa (tiny-blip -> LoRA) or paligemma (tiny-paligemma -> "
            "projector stage -> LoRA stage)."
        ),
    ] = "blip-vqa",
) -> None:
    """The whole loop on the embedded default: synth data -> train -> LoRA -> export -> ask -> bench."""
    _need("torch", "transformers", "peft", "onnx", "onnxscript")
    from edgevqa import demo as demo_mod
    from edgevqa.families import registry

    registry.get(family)  # an unknown family: one line, before any work
    typer.echo(demo_mod.run(workdir, fast=fast, family=family))


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
