"""`edgevqa demo`: the whole loop on the embedded default, for one model family."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgevqa.cli.base import app, need


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
            help="Model family: blip-vqa (tiny-blip -> LoRA), paligemma (tiny-paligemma -> "
            "projector stage -> LoRA stage) or qformer (tiny-qformer -> caption stage -> VQA stage)."
        ),
    ] = "blip-vqa",
) -> None:
    """The whole loop on the embedded default: synth data -> train -> LoRA -> export -> ask -> bench."""
    need("torch", "transformers", "peft", "onnx", "onnxscript")
    from edgevqa import demo as demo_mod
    from edgevqa.families import registry

    registry.get(family)  # an unknown family: one line, before any work
    typer.echo(demo_mod.run(workdir, fast=fast, family=family))
