"""`edgevqa eval`: exact match, edit similarity, robustness (and caption metrics) of a run or a bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgevqa.cli.base import app, need
from edgevqa.cli.options import Backend, Precision, Threads


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
    precision: Precision = "auto",
    backend: Backend = "auto",
    threads: Threads = 0,
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
        need("torch", "transformers", "peft", "safetensors")
    else:
        from edgevqa.runtime.session import use_global_pool

        use_global_pool(threads)  # this process is ours: one pool for the three graphs
    report = run_eval(cfg)
    typer.echo(markdown(report))
    typer.echo(f"report: {cfg.out_dir / 'eval.md'}")
