"""``edgevqa eval``: accuracy, edit similarity and robustness of a training run or a bundle.

One evaluation for both: a run is answered by PyTorch's ``generate`` (:func:`answer_run`), a bundle
by the torch-free runtime (:func:`answer_bundle`), and both answer lists go through the same
:func:`evaluate`, so a run's table and its bundle's table differ only where their answers differ.
Evaluating a bundle never imports torch.

Reported (see README, "Evaluation"): normalised exact match and edit similarity, overall / closed /
open, laid out as paper 000's Table 1; both per question category and per organ; the majority-answer
baseline when the dataset has a train split; robustness over sampled answers as in paper 003.

Example:
    >>> cfg = EvalConfig(model="runs/lora", data="data/synth")  # doctest: +SKIP
    >>> print(markdown(run_eval(cfg)))                          # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgevqa import atomic
from edgevqa.data.records import SPLITS, VQARecord, load_optional_split, load_split
from edgevqa.errors import InputError
from edgevqa.eval.captions import is_caption_task, markdown_captions, run_caption_eval
from edgevqa.eval.metrics import majority_predictions, robustness, vqa_scores
from edgevqa.runtime.decoding import SamplingOptions

log = logging.getLogger("edgevqa.eval")

NORMALISATION = (
    "lower case, single spaces, punctuation (except inside words) and the articles a/an/the removed"
)
ROBUSTNESS_RULE = (
    "non-robust: {d} or more of a question's {k} sampled answers differ from their most common answer; "
    "a non-robust question scores 0 in every sampling run (paper 003's one-point penalty)"
)


@dataclass(frozen=True)
class EvalConfig:
    model: str  # a training run (config.json) or a bundle (manifest.json)
    data: str  # dataset folder with {split}.jsonl (or {split}.captions.jsonl for a caption run)
    split: str = "test"
    out: str = ""  # report folder; default "<model>-eval-<split>"
    limit: int = 0  # evaluate the first N questions (caption records) only (0: all)
    samples: int = 5  # sampled answers per question for robustness (0: no robustness)
    temperature: float = 1.0  # sampling settings (paper 003 gives none; transformers' defaults)
    top_k: int = 50
    top_p: float = 1.0
    seed: int = 0  # question i samples from a generator seeded with (seed, i)
    min_differing: int = 3  # paper 003: "three or more out of five"
    precision: str | None = None  # bundle: which shipped precision (default: the bundle's)
    backend: str = "auto"  # bundle: cpu, cuda, tensorrt, trt-engine or auto
    threads: int = 0  # 0: all cores
    sampling: SamplingOptions = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise InputError(f"`--split` must be one of {', '.join(SPLITS)}, got {self.split!r}")
        if self.limit < 0:
            raise InputError(f"`--limit` must be >= 0 (0: all questions), got {self.limit}")
        if self.seed < 0:
            raise InputError(f"`--seed` must be >= 0, got {self.seed}")
        if self.samples < 0 or 0 < self.samples <= self.min_differing:
            raise InputError(
                f"`--samples` must be 0 (no robustness) or more than {self.min_differing}, got "
                f"{self.samples}: a question is non-robust when {self.min_differing} or more samples "
                "differ from the most common one"
            )
        try:
            sampling = SamplingOptions(self.temperature, self.top_k, self.top_p)
        except ValueError as e:
            raise InputError(f"sampling: {e} (`--temperature`, `--top-k`, `--top-p`)") from None
        object.__setattr__(self, "sampling", sampling)

    @property
    def out_dir(self) -> Path:
        return Path(self.out) if self.out else Path(f"{Path(self.model)}-eval-{self.split}")


@dataclass
class Answers:
    """What an answerer returns: greedy answers, sampled answers (or None) and how it ran."""

    greedy: list[str]
    samples: list[list[str]] | None
    engine: dict[str, Any]


def model_kind(model: str | Path) -> str:
    """Which kind of model folder ``model`` is: ``"bundle"`` or ``"run"``.

    Raises:
        InputError: the folder is neither.
    """
    p = Path(model)
    if (p / "manifest.json").is_file():
        return "bundle"
    if (p / "config.json").is_file():
        return "run"
    what = "does not exist" if not p.exists() else "holds neither manifest.json nor config.json"
    raise InputError(f"{p} {what}: expected a training run (`edgevqa train`) or a bundle (`edgevqa export`)")


def load_records(data: str | Path, split: str, limit: int = 0) -> list[VQARecord]:
    """The split's VQA records (the first ``limit``)."""
    records = load_split(data, split)
    records = records[:limit] if limit else records
    if not records:
        raise InputError(f"the {split} split of {data} has no questions")
    return records


def question_seed(seed: int, i: int) -> np.random.SeedSequence:
    """The seed of question i's samples: independent of batching, order and --limit."""
    return np.random.SeedSequence([seed, i])


# ---------------------------------------------------------------------------------------------
# answerers: the only part that differs between a run and a bundle


def answer_bundle(cfg: EvalConfig, records: list[VQARecord], progress: bool = False) -> Answers:
    """Answers from the torch-free runtime: greedy, then ``cfg.samples`` sampled per question."""
    from tqdm.auto import tqdm

    from edgevqa.runtime import VQAPipeline

    pipe = VQAPipeline.from_bundle(cfg.model, cfg.precision, cfg.threads, backend=cfg.backend)
    greedy, samples = [], []
    for i, r in enumerate(tqdm(records, desc="bundle answers", disable=not progress or None, leave=False)):
        image = r.image_path(cfg.data)
        greedy.append(pipe.ask(image, r.question).text)
        if cfg.samples:
            rng = np.random.default_rng(question_seed(cfg.seed, i))
            samples.append([a.text for a in pipe.sample(image, r.question, cfg.samples, cfg.sampling, rng)])
    engine = {"kind": "bundle", "precision": pipe.precision, "backend": pipe.backend}
    return Answers(greedy, samples if cfg.samples else None, engine)


def answer_run(cfg: EvalConfig, records: list[VQARecord], progress: bool = False) -> Answers:
    """Answers from PyTorch: the run with any LoRA merged (what export ships), via ``generate``."""
    import torch
    from tqdm.auto import tqdm

    from edgevqa.export.merge import load_run
    from edgevqa.families import registry
    from edgevqa.train.data import ImageCache

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    merged = load_run(Path(cfg.model))
    model, tok, tcfg = merged.loaded.model.eval(), merged.loaded.tokenizer, merged.train_cfg
    fam = registry.side(tcfg.family, "train")
    enc = fam.encode(merged.loaded, records, cfg.data, tcfg)
    images = ImageCache(merged.loaded.image)
    greedy = fam.generate_answers(model, tok, enc, images, tcfg.max_answer_tokens, progress=progress).texts
    samples = []
    if cfg.samples and cfg.sampling.temperature == 0:  # greedy: every sample is the greedy answer
        samples = [[g] * cfg.samples for g in greedy]
    elif cfg.samples:
        for i in tqdm(range(len(records)), desc="pytorch samples", disable=not progress or None, leave=False):
            torch.manual_seed(int(question_seed(cfg.seed, i).generate_state(1)[0]))
            samples.append(fam.sample_answers(merged.loaded, enc, images, i, cfg.samples, cfg.sampling, tcfg))
    return Answers(greedy, samples if cfg.samples else None, {"kind": "run", "backend": "pytorch"})


# ---------------------------------------------------------------------------------------------
# evaluation and report


def evaluate(
    records: list[VQARecord],
    greedy: list[str],
    samples: list[list[str]] | None = None,
    train: list[VQARecord] | None = None,
    min_differing: int = 3,
) -> dict[str, Any]:
    """Scores of greedy answers (and robustness of sampled ones) against ``records``.

    Args:
        records: the evaluated questions with their reference answers.
        greedy: one answer per record.
        samples: per record, its sampled answers (None: no robustness).
        train: training records for the majority-answer baseline (None: no baseline).
        min_differing: see :func:`edgevqa.eval.metrics.robustness`.
    """
    out: dict[str, Any] = {"task": "vqa", "scores": vqa_scores(greedy, records)}
    if samples is not None:
        golds, types = [r.answer for r in records], [r.answer_type for r in records]
        out["robustness"] = robustness(samples, golds, types, min_differing)
    if train:
        base = majority_predictions(
            [r.answer for r in train], [r.group for r in train], [r.group for r in records]
        )
        out["baseline"] = vqa_scores(base, records)
    return out


def run_eval(cfg: EvalConfig, progress: bool = True) -> dict[str, Any]:
    """Answer ``cfg.split`` of ``cfg.data`` with ``cfg.model``, score it, write the report.

    Writes ``eval.json``, ``eval.md`` and ``predictions.jsonl`` to ``cfg.out_dir`` (each atomically).

    Captions (``{split}.captions.jsonl``) are evaluated by :mod:`edgevqa.eval.captions` when the
    folder has no questions for the split, or the run is a caption model.

    Raises:
        InputError: not a run or bundle, no such split, a caption dataset for a VQA model, bad options.
    """
    kind = model_kind(cfg.model)  # fail on a bad path before any loading
    if not Path(cfg.data).is_dir():
        raise InputError(
            f"dataset folder {cfg.data} not found (make one with `edgevqa data synth --out DIR`)"
        )
    if is_caption_task(cfg.model, kind, cfg.data, cfg.split):
        return run_caption_eval(cfg, kind)
    records = load_records(cfg.data, cfg.split, cfg.limit)
    train = load_optional_split(cfg.data, "train") if cfg.split != "train" else None
    log.info("eval: %d %s questions of %s with the %s %s", len(records), cfg.split, cfg.data, kind, cfg.model)
    answers = (answer_bundle if kind == "bundle" else answer_run)(cfg, records, progress)
    report: dict[str, Any] = {
        "model": str(cfg.model),
        "engine": answers.engine,
        "data": str(cfg.data),
        "split": cfg.split,
        "normalisation": NORMALISATION,
        **evaluate(records, answers.greedy, answers.samples, train, cfg.min_differing),
    }
    if answers.samples is not None:
        report["sampling"] = {
            **asdict(cfg.sampling),
            "samples": cfg.samples,
            "seed": cfg.seed,
            "rule": ROBUSTNESS_RULE.format(d=cfg.min_differing, k=cfg.samples),
        }
    write_report(cfg.out_dir, report, records, answers)
    return report


def write_report(out: Path, report: dict[str, Any], records: list[VQARecord], answers: Answers) -> None:
    rows = []
    for i, r in enumerate(records):
        row = {
            "id": r.id,
            "question": r.question,
            "answer": r.answer,
            "group": r.group,
            "prediction": answers.greedy[i],
        }
        if answers.samples is not None:
            row["samples"] = answers.samples[i]
        rows.append(json.dumps(row))
    atomic.write_json(out / "eval.json", report)
    atomic.write_text(out / "eval.md", markdown(report) + "\n")
    atomic.write_text(out / "predictions.jsonl", "".join(line + "\n" for line in rows))


def method_name(report: dict[str, Any]) -> str:
    e = report["engine"]
    how = "PyTorch" if e["kind"] == "run" else f"ONNX {e['precision']}, {e['backend']}"
    return f"{Path(report['model']).name} ({how})"


def _f(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _table1_row(name: str, s: dict[str, Any]) -> str:
    acc, sim = s["accuracy"], s["edit_similarity"]
    cells = [_f(d.get(k)) for d in (acc, sim) for k in ("overall", "closed", "open")]
    return f"| {name} | " + " | ".join(cells) + " |"


def _groups_table(title: str, groups: dict[str, dict[str, float]]) -> list[str]:
    rows = [f"\n## {title}\n", f"| {title.split()[-1]} | n | Acc | Edit |", "|---|---|---|---|"]
    rows += [
        f"| {g} | {v['n']} | {_f(v['accuracy'])} | {_f(v['edit_similarity'])} |" for g, v in groups.items()
    ]
    return rows


def markdown(report: dict[str, Any]) -> str:
    """eval.md: Table 1 of paper 000 (one row per model), then per category, organ, robustness
    (for a caption report: BLEU, ROUGE-L and CIDEr)."""
    if report.get("task") == "captions":
        return markdown_captions(report)
    s, c = report["scores"], report["scores"]["counts"]
    lines = [
        "# edgevqa eval\n",
        f"`{report['model']}` on {s['n']} questions of the {report['split']} split of "
        f"`{report['data']}` ({c.get('closed', 0)} closed, {c.get('open', 0)} open). "
        f"Acc: normalised exact match ({report['normalisation']}); Edit: normalised edit similarity, "
        "1 - Levenshtein distance / longer length, on the same normalised text.\n",
        "| Method | Overall Acc | Closed Acc | Open Acc | Overall Edit | Closed Edit | Open Edit |",
        "|---|---|---|---|---|---|---|",
        _table1_row(method_name(report), s),
    ]
    if "baseline" in report:
        lines.append(_table1_row("majority baseline", report["baseline"]))
    lines += _groups_table("Per category", s["by_category"])
    if "by_organ" in s:
        lines += _groups_table("Per organ", s["by_organ"])
    if "robustness" in report:
        lines += _robustness_table(report)
    return "\n".join(lines)


def _robustness_table(report: dict[str, Any]) -> list[str]:
    sp = report["sampling"]
    rows = [
        "\n## Robustness (paper 003)\n",
        f"{sp['samples']} sampled answers per question (temperature {sp['temperature']}, "
        f"top-k {sp['top_k']}, top-p {sp['top_p']}, seed {sp['seed']}); {sp['rule']}. "
        f"Acc over the {sp['samples']} sampling runs, mean ± std.\n",
        "| questions | n | non-robust | sampled Acc | penalised Acc |",
        "|---|---|---|---|---|",
    ]
    for g, v in report["robustness"].items():
        rows.append(
            f"| {g} | {v['n']} | {v['non_robust']} ({100 * v['non_robust_rate']:.1f}%) | "
            f"{v['accuracy_mean']:.3f} ± {v['accuracy_std']:.3f} | "
            f"{v['penalised_mean']:.3f} ± {v['penalised_std']:.3f} |"
        )
    return rows
