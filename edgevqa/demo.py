"""``edgevqa demo``: the whole loop on the embedded default, end to end, honestly measured.

1. synthesise the radiology VQA set              -> WORKDIR/data
2. train the family's stages (its DEMO_STAGES)   -> WORKDIR/runs/<stage>
   blip-vqa:  tiny-blip from scratch (all weights), then LoRA (peft)
   paligemma: tiny-paligemma from scratch, then stage 1 (projector only), then stage 2 (LoRA on the
              attention of the vision tower and the LM), as papers 003/004 chain them
   qformer:   tiny-qformer from scratch, then paper 001's stage 1 (captions) and stage 3 (VQA):
              LoRA on the LLM, the Q-Former and projection whole, the vision encoder frozen
3. merge + export + validate (fp32, int8, int4; int4+ov where OpenVINO is installed) -> WORKDIR/bundle
4. answer one test question, torch-free           (the runtime)
5. bench PyTorch vs ONNX on the test split        -> WORKDIR/report

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

from edgevqa.config import CAPTION_RECIPES, ExportConfig

log = logging.getLogger("edgevqa.demo")


@dataclass(frozen=True)
class Stage:
    """One training run of a family's demo chain; each stage starts from the one before."""

    name: str  # the run folder under WORKDIR/runs
    recipe: str = "default"
    base: str = ""  # a preset for the first stage; later stages --init the previous run
    steps: int = 300
    fast_steps: int = 20  # --fast (a smoke test)
    lr: float = 1e-3
    warmup: int = 50
    lora: bool = False


def run(workdir: Path, fast: bool = False, family: str = "blip-vqa") -> str:
    from edgevqa.bench import runner as bench
    from edgevqa.data.records import load_split
    from edgevqa.data.synth import SynthConfig, generate
    from edgevqa.export import export
    from edgevqa.families import registry
    from edgevqa.runtime import VQAPipeline

    stages = registry.side(family, "train").DEMO_STAGES
    workdir = Path(workdir)
    data, bundle, report_dir = workdir / "data", workdir / "bundle", workdir / "report"
    t0 = time.perf_counter()
    n_images = 300 if fast else 3000
    captions = any(s.recipe in CAPTION_RECIPES for s in stages)  # a captioning stage reads them
    if not (data / "dataset.json").is_file() or (captions and not (data / "train.captions.jsonl").is_file()):
        log.info("[1/5] synthesising %d images -> %s", n_images, data)
        generate(data, SynthConfig(n_images=n_images, seed=0), overwrite=True, captions=captions)
    previous = None
    for i, stage in enumerate(stages, 1):
        check_family(workdir / "runs" / stage.name, family)
        previous = train_stage(workdir / "runs" / stage.name, stage, data, previous, fast)
        log.info("[2/5] stage %d/%d (%s) done -> %s", i, len(stages), stage.name, previous)
    if not (bundle / "manifest.json").is_file():
        log.info("[3/5] export -> %s", bundle)
        from edgevqa.runtime.backends import probe

        # the int4 path with OpenVINO's vision graph, gated and benched as every precision is
        ov = ["int4+ov"] if probe().offers("openvino") else []
        export(
            ExportConfig(
                run=str(previous),
                out=str(bundle),
                precisions=["fp32", "int8", "int4", *ov],
                overwrite=True,
                force=fast,
            )
        )
    rec = load_split(data, "test")[0]
    answer = VQAPipeline.from_bundle(bundle, precision="int8").ask(rec.image_path(data), rec.question)
    log.info(
        "[4/5] torch-free answer: %r -> %r (truth %r), %.1f ms",
        rec.question,
        answer.text,
        rec.answer,
        answer.timings_ms["total_ms"],
    )
    log.info("[5/5] bench -> %s", report_dir)
    report = bench.bench_bundle(bundle, data, report_dir)
    train_report = json.loads((previous / "eval.json").read_text())
    return summary(report, train_report, time.perf_counter() - t0, workdir, rec, answer.text)


def check_family(run: Path, family: str) -> None:
    """A demo folder continues only its own family's runs."""
    from edgevqa.errors import InputError

    cfg = run / "config.json"
    if cfg.is_file() and (had := json.loads(cfg.read_text("utf-8")).get("family", "blip-vqa")) != family:
        raise InputError(f"{run.parent.parent} holds a {had} demo; pass another --workdir for {family}")


def train_stage(out: Path, stage: Stage, data: Path, previous: Path | None, fast: bool) -> Path:
    """Train one stage unless its run is complete (an interrupted one resumes)."""
    from edgevqa.train import train
    from edgevqa.train.recipes import config_for

    if (out / "eval.json").is_file():
        return out
    steps = stage.fast_steps if fast else stage.steps
    start = {"base": stage.base} if previous is None else {"init": str(previous)}
    cfg = config_for(
        stage.recipe,
        **start,
        data=str(data),
        out=str(out),
        lora=stage.lora or None,
        max_steps=steps,
        lr=stage.lr,
        warmup_steps=min(stage.warmup, steps // 4),
        batch_size=32,
        grad_accum=1,
        eval_every=0,
    )
    train(cfg, resume=_resumable(out))
    return out


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
