"""Option types shared by several commands, declared once (typer's ``Annotated`` style)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Bundle = Annotated[Path, typer.Option(help="Bundle folder written by `edgevqa export`.")]
Precision = Annotated[
    str,
    typer.Option(
        help="Precision to run: one the bundle ships, or auto: the gated one that answers fastest on "
        "this machine (measured once, cached per bundle, CPU and versions; TensorRT engines first "
        "where they run)."
    ),
]
Backend = Annotated[
    str,
    typer.Option(
        help="auto, cpu, cuda, tensorrt (onnxruntime providers) or trt-engine (the bundle's "
        "TensorRT engines); auto picks the best this machine and bundle allow."
    ),
]
Threads = Annotated[int, typer.Option(help="CPU threads (0: all cores).")]
Overwrite = Annotated[bool, typer.Option(help="Replace an existing folder.")]
DatasetOut = Annotated[
    Path, typer.Option(help="Folder to write (images/, train/val/test.jsonl, dataset.json).")
]
Source = Annotated[
    str,
    typer.Argument(
        help="Dataset folder, or a Hugging Face dataset id (flaviagiammarino/vqa-rad, BoKelvin/SLAKE, ...)."
    ),
]
Format = Annotated[
    str | None,
    typer.Option(
        "--format",
        help="vqa-rad, slake, pmc-vqa, rocov2, medpix, edgevqa or edgevqa-captions (default: detected).",
    ),
]
SplitSeed = Annotated[int, typer.Option(help="Seed of the splits made here (val from train, or 70/10/20).")]
AllLanguages = Annotated[bool, typer.Option(help="SLAKE: keep the Chinese questions too.")]
MaxCaptionWords = Annotated[int, typer.Option(help="ROCOv2: longest caption kept, in words.")]
BY_RECIPE = " (default: per --recipe)"  # appended to the help of train options a recipe sets
