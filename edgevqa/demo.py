"""``edgevqa demo``: the whole loop on the embedded default, end to end, honestly measured.

1. synthesise the radiology VQA set          -> WORKDIR/data
2. train tiny-blip from scratch (all weights) -> WORKDIR/runs/base
3. adapt it with LoRA (peft)                  -> WORKDIR/runs/lora
4. merge + export + validate (fp32, int8)     -> WORKDIR/bundle
5. answer one test question, torch-free       (the runtime)
6. bench PyTorch vs ONNX on the test split    -> WORKDIR/report

A step whose output is already complete is skipped, so an interrupted demo continues.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from edgevqa.config import ExportConfig, TrainConfig

log = logging.getLogger("edgevqa.demo")


@dataclass(frozen=True)
class DemoPlan:
    n_images: int = 3000
    # measured on 2 cores: 4000 steps at 64 px learn every category, side and count included
    base_steps: int = 4000
    base_lr: float = 1e-3
    lora_steps: int = 300
    lora_lr: float = 1e-3
    batch_size: int = 32


FAST = DemoPlan(n_images=300, base_steps=60, lora_steps=20)


def run(workdir: Path, fast: bool = False) -> str:
    from edgevqa.bench import runner as bench
    from edgevqa.data.records import load_split
    from edgevqa.data.synth import SynthConfig, generate
    from edgevqa.export import export
    from edgevqa.runtime import VQAPipeline
    from edgevqa.train import train

    plan = FAST if fast else DemoPlan()
    workdir = Path(workdir)
    data, base, lora = workdir / "data", workdir / "runs" / "base", workdir / "runs" / "lora"
    bundle, report_dir = workdir / "bundle", workdir / "report"
    t0 = time.perf_counter()

    if not (data / "dataset.json").is_file():
        log.info("[1/6] synthesising %d images -> %s", plan.n_images, data)
        generate(data, SynthConfig(n_images=plan.n_images, seed=0), overwrite=True)
    if not (base / "eval.json").is_file():
        log.info("[2/6] training tiny-blip from scratch -> %s", base)
        train(
            TrainConfig(
                base="tiny-blip",
                data=str(data),
                out=str(base),
                max_steps=plan.base_steps,
                lr=plan.base_lr,
                batch_size=plan.batch_size,
                eval_every=0,
            ),
            resume=_resumable(base),
        )
    if not (lora / "eval.json").is_file():
        log.info("[3/6] LoRA adaptation -> %s", lora)
        train(
            TrainConfig(
                base=str(base),
                data=str(data),
                out=str(lora),
                lora=True,
                max_steps=plan.lora_steps,
                lr=plan.lora_lr,
                warmup_steps=min(50, plan.lora_steps // 4),
                batch_size=plan.batch_size,
                eval_every=0,
            ),
            resume=_resumable(lora),
        )
    if not (bundle / "manifest.json").is_file():
        log.info("[4/6] export -> %s", bundle)
        export(
            ExportConfig(
                run=str(lora),
                out=str(bundle),
                precisions=["fp32", "int8", "int4"],
                overwrite=True,
                force=fast,
            )
        )
    rec = load_split(data, "test")[0]
    answer = VQAPipeline.from_bundle(bundle, precision="int8").ask(rec.image_path(data), rec.question)
    log.info(
        "[5/6] torch-free answer: %r -> %r (truth %r), %.1f ms",
        rec.question,
        answer.text,
        rec.answer,
        answer.timings_ms["total_ms"],
    )
    log.info("[6/6] bench -> %s", report_dir)
    report = bench.bench_bundle(bundle, data, report_dir)
    train_report = json.loads((lora / "eval.json").read_text())
    return summary(report, train_report, time.perf_counter() - t0, workdir, rec, answer.text)


def _resumable(run: Path) -> bool:
    return (run / "checkpoints" / "last" / "state.json").is_file()


def edgevqa_command() -> str:
    """How to call edgevqa from the user's shell (the venv's script when it is not on PATH)."""
    script = Path(sys.executable).parent / "edgevqa"
    if shutil.which("edgevqa") == str(script) or not script.exists():
        return "edgevqa"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


def summary(report: dict, train_report: dict, seconds: float, workdir: Path, rec, answer: str) -> str:
    from edgevqa.bench.runner import markdown_table

    lines = [
        "",
        f"edgevqa demo: {report['n']} test questions, whole loop in {seconds / 60:.1f} min",
        f'example: {rec.image}  "{rec.question}" -> {answer!r} (truth {rec.answer!r})',
        "",
        markdown_table(report),
        "",
        f"report: {workdir / 'report' / 'report.md'}   bundle: {workdir / 'bundle'}",
        f"ask it yourself: {edgevqa_command()} ask {workdir / 'data' / rec.image} \"{rec.question}\" "
        f"--model {workdir / 'bundle'}",
    ]
    return "\n".join(lines)
