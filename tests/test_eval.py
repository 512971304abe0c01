"""`edgevqa eval` on a run (PyTorch) and on its bundle (torch-free runtime, torch blocked): the same
table from the same evaluation code; sampling on both sides; one-line errors."""

from __future__ import annotations

import json
import logging
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import edgevqa_cmd

from edgevqa.cli import main
from edgevqa.data.records import load_split
from edgevqa.eval.evaluate import EvalConfig, evaluate

LIMIT = 24
TABLE1 = "| Method | Overall Acc | Closed Acc | Open Acc | Overall Edit | Closed Edit | Open Edit |"


def eval_cli(*args: str, block_torch: bool = False) -> subprocess.CompletedProcess:
    cmd = edgevqa_cmd("eval", *args, "--limit", str(LIMIT), "--threads", "1", block_torch=block_torch)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def table_shape(stdout: str) -> list[str]:
    """Every table line with its first cell (the model's name) and all numbers blanked."""
    rows = [line.split("|", 2)[2] for line in stdout.splitlines() if line.startswith("|")]
    return [re.sub(r"\d+(\.\d+)?", "#", r) for r in rows]


@pytest.fixture(scope="module")
def evals(tmp_path_factory, lora_run, bundle, synth_data):
    out = tmp_path_factory.mktemp("eval")
    run = eval_cli(str(lora_run), "--data", str(synth_data), "--out", str(out / "run"))
    bun = eval_cli(
        str(bundle),
        "--data",
        str(synth_data),
        "--out",
        str(out / "bundle"),
        "--backend",
        "cpu",
        "--precision",
        "fp32",  # what the export's fidelity compares with PyTorch (auto would pick by speed)
        block_torch=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert bun.returncode == 0, bun.stderr[-3000:]
    return out, run.stdout, bun.stdout


def test_run_and_bundle_print_the_same_table(evals):
    out, run, bun = evals
    assert TABLE1 in run.splitlines() and TABLE1 in bun.splitlines()
    assert table_shape(run) == table_shape(bun)
    assert "| lora (PyTorch) |" in run and "| bundle (ONNX fp32, cpu) |" in bun
    for text in (run, bun):
        assert "| majority baseline |" in text
        assert "## Per category" in text and "## Per organ" in text and "## Robustness (paper 003)" in text
    for side, stdout in (("run", run), ("bundle", bun)):
        assert (out / side / "eval.md").read_text().strip() in stdout
        report = json.loads((out / side / "eval.json").read_text())
        assert report["scores"]["n"] == LIMIT
        assert set(report["robustness"]) == {"overall", "closed", "open"}
        sp = report["sampling"]
        assert (sp["samples"], sp["temperature"], sp["top_k"], sp["top_p"], sp["seed"]) == (
            5,
            1.0,
            50,
            1.0,
            0,
        )


def test_reports_are_the_evaluation_of_the_saved_answers(evals, synth_data):
    """eval.json is evaluate() of predictions.jsonl, for the run and the bundle alike; and the
    fp32 bundle answers as PyTorch does (the export's fidelity, seen from eval)."""
    out, _, _ = evals
    records = load_split(synth_data, "test")[:LIMIT]
    train = load_split(synth_data, "train")
    preds = {}
    for side in ("run", "bundle"):
        rows = [json.loads(line) for line in (out / side / "predictions.jsonl").read_text().splitlines()]
        assert [r["question"] for r in rows] == [r.question for r in records]
        assert all(len(r["samples"]) == 5 for r in rows)
        preds[side] = [r["prediction"] for r in rows]
        again = evaluate(records, preds[side], [r["samples"] for r in rows], train)
        report = json.loads((out / side / "eval.json").read_text())
        for key in ("scores", "robustness", "baseline"):
            assert report[key] == json.loads(json.dumps(again[key]))  # floats survive JSON exactly
    same = np.mean([a == b for a, b in zip(preds["run"], preds["bundle"])])
    assert same >= 0.9, same


def test_runtime_sampling_is_seeded_and_greedy_at_temperature_zero(bundle, synth_data):
    from edgevqa.runtime import VQAPipeline
    from edgevqa.runtime.decoding import SamplingOptions

    pipe = VQAPipeline.from_bundle(bundle, threads=1)
    r = load_split(synth_data, "test")[0]
    image = r.image_path(synth_data)
    greedy = pipe.ask(image, r.question).text
    cold = pipe.sample(image, r.question, 3, SamplingOptions(temperature=0.0), np.random.default_rng(0))
    assert [a.text for a in cold] == [greedy] * 3
    hot = SamplingOptions(temperature=5.0, top_k=0)
    draws = [
        [a.text for a in pipe.sample(image, r.question, 6, hot, np.random.default_rng(7))] for _ in range(2)
    ]
    assert draws[0] == draws[1] and len(draws[0]) == 6


def test_runtime_sampling_splits_batches_above_the_engine_limit(bundle, synth_data, monkeypatch):
    from edgevqa.runtime import VQAPipeline
    from edgevqa.runtime.decoding import SamplingOptions

    pipe = VQAPipeline.from_bundle(bundle, threads=1)
    monkeypatch.setattr(VQAPipeline, "max_batch", 4)  # as TensorRT profiles of --trt-max-batch 4
    r = load_split(synth_data, "test")[1]
    image = r.image_path(synth_data)
    greedy = pipe.ask(image, r.question).text
    rows, step = [], pipe.model.step

    def spy(ids, *args, **kw):
        rows.append(ids.shape[0])
        return step(ids, *args, **kw)

    monkeypatch.setattr(pipe.model, "step", spy)
    cold = pipe.sample(image, r.question, 6, SamplingOptions(temperature=0.0), np.random.default_rng(0))
    assert [a.text for a in cold] == [greedy] * 6
    assert max(rows) == 4 and 2 in rows


def test_pytorch_sampling_is_seeded_and_top_k_one_is_greedy(lora_run, synth_data):
    from edgevqa.eval.evaluate import answer_run

    records = load_split(synth_data, "test")[:6]

    def answers(**kw):
        return answer_run(EvalConfig(model=str(lora_run), data=str(synth_data), threads=1, **kw), records)

    top1 = answers(samples=4, top_k=1)
    assert top1.samples == [[g] * 4 for g in top1.greedy]
    hot = [answers(samples=4, temperature=5.0, top_k=0, seed=3) for _ in range(2)]
    assert hot[0].samples == hot[1].samples and all(len(s) == 4 for s in hot[0].samples)


# ---------------------------------------------------------------------------------------------


@pytest.fixture()
def cli(capsys):
    """main() in this process, with the logging set-up it makes undone afterwards."""
    logger = logging.getLogger("edgevqa")
    saved = (logger.handlers[:], logger.level, logger.propagate)

    def call(*args: str) -> tuple[int, str, str]:
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = e.code
        out = capsys.readouterr()
        return code, out.out, out.err

    yield call
    logger.handlers[:], logger.level, logger.propagate = saved


def user_error(cli, *args: str) -> str:
    code, _, err = cli("eval", *args)
    lines = err.strip().splitlines()
    assert code == 2, (code, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_bad_inputs_end_in_one_error_line(cli, tmp_path, lora_run, bundle, synth_data):
    assert "does not exist" in user_error(cli, str(tmp_path / "nope"), "--data", str(synth_data))
    assert "neither" in user_error(cli, str(tmp_path), "--data", str(synth_data))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no test split" in user_error(cli, str(bundle), "--data", str(empty))
    assert "not found" in user_error(cli, str(bundle), "--data", str(tmp_path / "missing"))
    assert "--split" in user_error(cli, str(bundle), "--data", str(synth_data), "--split", "dev")
    assert "--samples" in user_error(cli, str(bundle), "--data", str(synth_data), "--samples", "2")
    assert "top_p" in user_error(cli, str(bundle), "--data", str(synth_data), "--top-p", "0")
    assert "--seed" in user_error(cli, str(bundle), "--data", str(synth_data), "--seed", "-1")
    caps = tmp_path / "caps"
    caps.mkdir()
    (caps / "test.captions.jsonl").write_text(
        '{"image": "a.png", "caption": "a chest x-ray", "modality": "x-ray"}\n'
    )
    assert "answers questions only" in user_error(cli, str(bundle), "--data", str(caps))
    assert "a VQA model" in user_error(cli, str(lora_run), "--data", str(caps))
    assert not list(tmp_path.glob("*-eval-*"))  # nothing written


# ---------------------------------------------------------------------------------------------
# captions


@pytest.fixture(scope="module")
def caption_run(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny caption-recipe run (2 steps) on synthetic images that have questions and captions."""
    from edgevqa.data.synth import SynthConfig, generate
    from edgevqa.train.loop import train
    from edgevqa.train.recipes import config_for

    root = tmp_path_factory.mktemp("captions")
    data = root / "synth-captions"
    generate(data, SynthConfig(n_images=30, seed=3, image_size=64), progress=False, captions=True)
    cfg = config_for(
        "caption", data=str(data), out=str(root / "cap"), max_steps=2, batch_size=4, lr=1e-3, threads=1,
        image_size=32, eval_every=0, checkpoint_every=0, eval_limit=2, seed=0,
    )  # fmt: skip
    return data, train(cfg, progress=False)


def test_caption_run_gets_bleu_rouge_cider(cli, caption_run, tmp_path):
    from edgevqa.data.captions import load_captions
    from edgevqa.eval.caption_metrics import evaluate_captions

    data, run = caption_run
    code, out, err = cli(
        "eval", str(run), "--data", str(data), "--out", str(tmp_path / "ev"), "--threads", "1"
    )
    assert code == 0, err
    assert "| Method | BLEU-1 | BLEU-2 | BLEU-3 | BLEU-4 | ROUGE-L | CIDEr |" in out.splitlines()
    assert f"| {run.name} (PyTorch, caption) |" in out
    report = json.loads((tmp_path / "ev" / "eval.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()]
    captions = load_captions(data, "test")
    assert report["task"] == "captions" and report["n_images"] == len(rows) == len(
        {c.image for c in captions}
    )
    assert sum(len(r["references"]) for r in rows) == len(captions)
    again = evaluate_captions([r["prediction"] for r in rows], [r["references"] for r in rows])
    assert report["scores"] == json.loads(json.dumps(again))
