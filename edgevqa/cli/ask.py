"""`edgevqa ask`: questions about an image, or a JSON-lines batch, from a bundle (torch-free)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from edgevqa.cli.base import app
from edgevqa.cli.options import Backend, Bundle, Precision, Threads
from edgevqa.errors import InputError


@app.command()
def ask(
    model: Bundle,
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
    precision: Precision = "auto",
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON line per question, with timings.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="With --batch: a progress bar on stderr.")] = True,
    threads: Threads = 0,
    backend: Backend = "auto",
) -> None:
    """Answer questions about an image (or a JSON-lines batch) from a bundle (torch-free runtime)."""
    from edgevqa.runtime.dicom import DicomOptions, parse_window

    dicom = DicomOptions(window=parse_window(window) if window else None, frame=frame)
    cands = tuple(c.strip() for c in candidates.split(",") if c.strip())
    if batch is not None:
        if image is not None or question is not None or more:
            raise InputError("--batch takes images and questions from its file; drop IMAGE/QUESTION/-q")
        run = BatchRun(model, batch, out, dicom, rank, cands, precision, progress, threads, backend)
        ask_batch(run)
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
            if engines := pipe.manifest.engines.get(pipe.precision):  # an OpenVINO path's vision graph
                row["engines"] = engines
            if pipe.auto is not None:  # how --precision auto chose, on this machine
                row["precision_auto"] = pipe.auto
            typer.echo(json.dumps(row))
        else:
            typer.echo(ans.text if len(questions) == 1 else f"{q}\t{ans.text}")


@dataclass(frozen=True)
class BatchRun:
    """What `ask --batch` runs: the bundle, the questions file, where answers go and how."""

    model: Path
    batch: Path
    out: Path | None
    dicom: Any  # DicomOptions
    rank: bool
    candidates: tuple[str, ...]
    precision: str | None
    progress: bool
    threads: int
    backend: str


def ask_batch(r: BatchRun) -> None:
    """`ask --batch`: questions from a JSON-lines file, answers appended to --out as they come."""
    import functools

    from edgevqa.runtime import VQAPipeline
    from edgevqa.runtime.batch import read_questions, run_batch
    from edgevqa.runtime.images import load_image
    from edgevqa.runtime.session import use_global_pool

    if r.out is None:
        raise InputError("--batch needs --out FILE (the answers, one JSON line per question)")
    if r.out.resolve() == r.batch.resolve():
        raise InputError("--out must not be the --batch questions file")
    read_questions(r.batch)  # a missing questions file fails before the bundle is loaded
    use_global_pool(r.threads)
    pipe = VQAPipeline.from_bundle(r.model, precision=r.precision, threads=r.threads, backend=r.backend)
    answer = functools.partial(pipe.rank, candidates=r.candidates) if r.rank else pipe.ask
    load = functools.partial(load_image, dicom=r.dicom)
    summary = run_batch(r.batch, r.out, answer, load, progress=r.progress)
    typer.echo(json.dumps({"out": str(r.out), **summary.__dict__}))
