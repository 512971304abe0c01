"""`edgevqa data ...`: the synthetic set, public datasets, QA from captions, mixtures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from edgevqa.cli.base import data_app
from edgevqa.cli.options import (
    AllLanguages,
    DatasetOut,
    Format,
    MaxCaptionWords,
    Overwrite,
    Source,
    SplitSeed,
)
from edgevqa.errors import InputError


@data_app.command("synth")
def data_synth(
    out: DatasetOut,
    n: Annotated[int, typer.Option(help="Number of images (each gets several questions).")] = 3000,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed writes the same files.")] = 0,
    captions: Annotated[
        bool, typer.Option(help="Also write {split}.captions.jsonl (one caption per image; dapt/caption).")
    ] = False,
    overwrite: Overwrite = False,
) -> None:
    """Write the deterministic synthetic radiology VQA set (x-ray / CT / MRI; chest / brain / abdomen)."""
    from edgevqa.data.synth import SynthConfig, generate

    if n < 10:
        raise InputError("--n must be at least 10 images (train/val/test each need some)")
    summary = generate(out, SynthConfig(n_images=n, seed=seed), overwrite=overwrite, captions=captions)
    typer.echo(json.dumps({"out": str(out), "splits": summary.get("splits", summary)}, default=str))


def _load_options(seed: int, all_languages: bool, max_caption_words: int):  # -> LoadOptions
    from edgevqa.data.sources.common import LoadOptions

    if max_caption_words < 1:
        raise InputError(f"--max-caption-words must be at least 1, got {max_caption_words}")
    return LoadOptions(seed=seed, all_languages=all_languages, max_caption_words=max_caption_words)


@data_app.command("inspect")
def data_inspect(
    source: Source,
    format: Format = None,
    seed: SplitSeed = 0,
    all_languages: AllLanguages = False,
    max_caption_words: MaxCaptionWords = 64,
) -> None:
    """Counts per split, answer type and category, and the rows that would be skipped (and why)."""
    from edgevqa.data.loaders import describe, load_dataset

    typer.echo(describe(load_dataset(source, format, _load_options(seed, all_languages, max_caption_words))))


@data_app.command("convert")
def data_convert(
    source: Source,
    out: DatasetOut,
    format: Format = None,
    seed: SplitSeed = 0,
    all_languages: AllLanguages = False,
    max_caption_words: MaxCaptionWords = 64,
    overwrite: Overwrite = False,
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
    overwrite: Overwrite = False,
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
    overwrite: Overwrite = False,
) -> None:
    """Mix dataset folders by ratio, per split, recording each record's source in meta["source"]."""
    from edgevqa.data.mix import mix, parse_parts

    summary = mix(parse_parts(parts), out, size=size, seed=seed, overwrite=overwrite)
    typer.echo(json.dumps({"out": str(out), "splits": summary["splits"]}))
