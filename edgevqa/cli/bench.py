"""`edgevqa bench`: PyTorch against every ONNX precision of a bundle or an architecture, in one run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgevqa.cli.base import app, need
from edgevqa.errors import InputError


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
    compare: Annotated[
        str,
        typer.Option(
            help="With --arch, also: torch-bf16 (PyTorch bf16 autocast), openvino (OpenVINO on the "
            "bundle's fp32 graphs at its default precision and at f32, where installed); '' for none."
        ),
    ] = "torch-bf16,openvino",
) -> None:
    """Latency, memory and fidelity: PyTorch vs every ONNX precision, in one run."""
    need("torch", "transformers")
    from edgevqa.bench import runner as bench_mod

    if arch:
        wanted = tuple(c for c in compare.split(",") if c)
        if unknown := set(wanted) - set(bench_mod.COMPARE):
            raise InputError(
                f"--compare takes {', '.join(bench_mod.COMPARE)}; not {', '.join(sorted(unknown))}"
            )
        report = bench_mod.bench_arch(
            arch, Path(out), repeats=repeats, answer_tokens=answer_tokens, compare=wanted
        )
    else:
        if model is None or data is None:
            raise InputError("bench needs --model BUNDLE and --data DIR (or --arch blip-vqa-base)")
        report = bench_mod.bench_bundle(model, data, Path(out), run=run, limit=limit)
    typer.echo(bench_mod.markdown_table(report))
    typer.echo(f"report: {Path(out) / 'report.md'}")
