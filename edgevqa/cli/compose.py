"""`edgevqa compose`: a Q-Former base from a vision encoder and a causal LM (paper 001's build)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgevqa.cli.base import app, need


@app.command()
def compose(
    vision: Annotated[
        str,
        typer.Option(
            help="The vision encoder: an open_clip model with a timm ViT trunk (hf-hub:microsoft/"
            "BiomedCLIP-PubMedBERT_256-vit_base_patch16_224, or its downloaded folder) or a "
            "transformers ViT (id or folder). Kept frozen by the qformer-* recipes."
        ),
    ],
    lm: Annotated[
        str,
        typer.Option(
            help="The causal LM (id or folder; safetensors): Llama, Qwen 2, Mistral, Gemma, Gemma 2, "
            "OPT or BLOOM (paper 001: a RadBloomz-7b folder)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="BLIP-2 folder to write (train --base takes it).")],
    queries: Annotated[int, typer.Option(min=1, help="Learned query tokens (BLIP-2: 32).")] = 32,
    qformer_layers: Annotated[int, typer.Option(min=1, help="Q-Former layers (BLIP-2: 12 x 768).")] = 12,
    seed: Annotated[int, typer.Option(help="Seed of the new Q-Former's initialisation.")] = 0,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing OUT.")] = False,
) -> None:
    """Compose a Q-Former base: the vision encoder as BLIP-2's vision model (weight for weight), a
    new Q-Former and projection, the causal LM and its tokenizer, written as a BLIP-2 folder."""
    need("torch", "transformers")
    from edgevqa.train.families.qformer_compose import QFORMER, compose

    folder = compose(
        vision, lm, out, queries, {**QFORMER, "num_hidden_layers": qformer_layers}, seed, overwrite
    )
    typer.echo(f"BLIP-2 base written to {folder}")
    typer.echo(f"next: edgevqa train --base {folder} --recipe qformer-caption --data CAPTIONS_DIR --out RUN")
