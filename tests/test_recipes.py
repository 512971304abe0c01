"""The papers' recipes: defaults and precedence, DAPT objectives, captioning parts, resume, and the
chain dapt-sd -> vqa -> export -> ask. Tiny random BLIPs and synthetic captions; no downloads."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from edgevqa.config import RECIPES, TrainConfig
from edgevqa.errors import InputError
from edgevqa.train.recipes import DEFAULTS, config_for

FAST = dict(threads=1, image_size=32, eval_every=0, checkpoint_every=0, eval_limit=8, seed=0)


@pytest.fixture(scope="module")
def caption_data(tmp_path_factory) -> Path:
    """40 synthetic images with their VQA questions and one caption each (same splits)."""
    from edgevqa.data.synth import SynthConfig, generate

    out = tmp_path_factory.mktemp("data") / "synth-captions"
    generate(out, SynthConfig(n_images=40, seed=3, image_size=64), progress=False, captions=True)
    return out


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


# ---------------------------------------------------------------------------------------------
# settings


def test_recipe_defaults_follow_the_papers():
    assert set(DEFAULTS) == set(RECIPES)
    vqa = config_for("vqa", data="d", out="o")
    assert (vqa.lr, vqa.min_lr, vqa.weight_decay, vqa.grad_clip) == (1e-5, 1e-6, 0.01, 1.0)
    assert (vqa.epochs, vqa.patience, vqa.batch_size, vqa.freeze_vision, vqa.warmup_steps) == (
        15,
        4,
        8,
        True,
        0,
    )
    sd = config_for("dapt-sd")
    assert (sd.warmup_start_lr, sd.lr, sd.min_lr, sd.grad_accum, sd.max_caption_tokens) == (
        5e-9,
        4e-7,
        1e-9,
        8,
        64,
    )
    assert config_for("dapt").lr == sd.lr and config_for("dapt").grad_accum == 8
    cap = config_for("caption")
    assert (cap.lr, cap.grad_accum, cap.max_caption_tokens, cap.train_part) == (5e-5, 4, 128, "full")
    assert config_for("default") == TrainConfig()  # the demo's behaviour is unchanged


def test_explicit_values_override_the_recipe():
    cfg = config_for("vqa", lr=3e-5, freeze_vision=False, batch_size=None)  # None: not given
    assert (cfg.lr, cfg.freeze_vision, cfg.batch_size, cfg.weight_decay) == (3e-5, False, 8, 0.01)
    with pytest.raises(InputError, match="unknown recipe 'dapt-xx'"):
        config_for("dapt-xx")
    with pytest.raises(InputError, match="--train"):
        config_for("vqa", train_part="decoder")
    with pytest.raises(InputError, match="--lora"):
        config_for("dapt", lora=True)
    with pytest.raises(InputError, match="Can't provide both `--base` and `--init`"):
        config_for("vqa", base="Salesforce/blip-vqa-base", init="runs/dapt")


def test_dapt_sd_learning_rate_schedule():
    from edgevqa.train.loop import get_lr

    cfg = config_for("dapt-sd", warmup_steps=100)
    assert get_lr(0, 1100, cfg) == pytest.approx(5e-9, rel=1e-12)  # warm-up starts at 5e-9 ...
    assert get_lr(50, 1100, cfg) == pytest.approx(2.025e-7)  # 5e-9 + (4e-7 - 5e-9) / 2
    assert get_lr(100, 1100, cfg) == pytest.approx(4e-7)  # ... reaches 4e-7, then cosine:
    assert get_lr(600, 1100, cfg) == pytest.approx(2.005e-7)  # 1e-9 + (4e-7 - 1e-9) / 2 halfway
    assert get_lr(1100, 1100, cfg) == pytest.approx(1e-9)  # ... down to 1e-9


def test_cli_flags_take_precedence_over_the_recipe(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import edgevqa.train
    from edgevqa.cli import app

    seen = []

    def capture(cfg, resume=False, progress=True):  # records the resolved config, trains nothing
        seen.append(cfg)
        run = Path(cfg.out)
        run.mkdir(parents=True, exist_ok=True)
        (run / "eval.json").write_text(json.dumps({"recipe": cfg.recipe, "val": {"total": 1.0}}))
        return run

    monkeypatch.setattr(edgevqa.train, "train", capture)
    base = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "r")]
    res = CliRunner().invoke(app, [*base, "--recipe", "vqa", "--lr", "3e-5", "--no-freeze-vision"])
    assert res.exit_code == 0, res.output
    assert (seen[-1].lr, seen[-1].freeze_vision, seen[-1].weight_decay, seen[-1].patience) == (
        3e-5,
        False,
        0.01,
        4,
    )
    res = CliRunner().invoke(app, [*base, "--recipe", "vqa"])
    assert (seen[-1].lr, seen[-1].freeze_vision) == (1e-5, True)
    res = CliRunner().invoke(app, [*base, "--recipe", "dapt-sd", "--grad-accum", "2"])
    assert (seen[-1].grad_accum, seen[-1].lr, seen[-1].warmup_start_lr) == (2, 4e-7, 5e-9)
    assert "next: edgevqa train --recipe vqa --init" in res.output
    res = CliRunner().invoke(app, [*base])
    assert seen[-1] == config_for("default", data=str(tmp_path), out=str(tmp_path / "r"))
    # recipes that train an adapter get one without --lora (before: the flag's False overrode
    # them, and a `--recipe lora` run saved its adapter where model/ belongs)
    for recipe in ("lora", "qformer-caption", "qformer-vqa"):
        res = CliRunner().invoke(app, [*base, "--recipe", recipe])
        assert res.exit_code == 0, res.output
        assert seen[-1].lora and seen[-1].recipe == recipe
    res = CliRunner().invoke(app, [*base, "--recipe", "qformer-vqa", "--no-lora"])
    assert not seen[-1].lora
    res = CliRunner().invoke(app, [*base, "--recipe", "lora", "--no-lora"])  # (main() prints it, exit 2)
    assert isinstance(res.exception, InputError)
    assert "--recipe lora trains a LoRA adapter" in str(res.exception)


def test_early_stopping_by_hand():
    from edgevqa.train.loop import EarlyStopping

    es = EarlyStopping(patience=2)
    assert [es.update(s, e) for e, s in enumerate([0.5, 0.6, 0.6, 0.55], 1)] == [True, True, False, False]
    assert es.stop and (es.best, es.best_epoch, es.evaluated) == (0.6, 2, 4)
    off = EarlyStopping(patience=0)
    for e in range(5):
        off.update(0.1, e)
    assert not off.stop


def test_synth_captions_describe_each_image(caption_data):
    from edgevqa.data.captions import load_captions
    from edgevqa.data.records import load_split
    from edgevqa.data.synth import Lesion, _Image, caption_of

    two = (Lesion(0.7, 0.5, 0.1), Lesion(0.7, 0.3, 0.09))
    assert (
        caption_of(_Image(0, "x-ray", "chest", "left", "large", two))
        == "chest x-ray with two large lesions on the left"
    )
    assert (
        caption_of(_Image(1, "ct", "brain", "right", "small", two[:1]))
        == "brain ct with one small lesion on the right"
    )
    assert caption_of(_Image(2, "mri", "abdomen", None, None, ())) == "abdomen mri with no lesion"
    for split in ("train", "val", "test"):
        caps = load_captions(caption_data, split)
        assert sorted(c.image for c in caps) == sorted({r.image for r in load_split(caption_data, split)})
        assert all(c.caption.startswith(f"{c.meta['region']} {c.modality} with ") for c in caps)


# ---------------------------------------------------------------------------------------------
# objectives


def test_itc_loss_and_hard_negatives():
    import torch
    import torch.nn.functional as F

    from edgevqa.train.dapt import itc_loss, sample_negatives

    sim = torch.tensor([[10.0, 0.0], [0.0, 10.0]])
    # each direction: cross-entropy of logits (10, 0) at the diagonal = log(1 + e^-10) = 4.5399e-5
    assert itc_loss(sim, torch.eye(2, dtype=torch.bool)).item() == pytest.approx(4.5399e-5, rel=1e-3)
    s = torch.tensor([[2.0, 1.0, 0.0], [0.5, 1.5, -1.0], [0.0, 3.0, 1.0]])
    sym = (F.cross_entropy(s, torch.arange(3)) + F.cross_entropy(s.t(), torch.arange(3))) / 2
    assert itc_loss(s, torch.eye(3, dtype=torch.bool)).item() == pytest.approx(sym.item())
    # a caption shared by items 0 and 1: image 0's target is split between texts 0 and 1
    pos = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    i2t = (
        -(F.log_softmax(s, 1)[0, :2].mean() + F.log_softmax(s, 1)[1, :2].mean() + F.log_softmax(s, 1)[2, 2])
        / 3
    )
    t2i = -(F.log_softmax(s.t(), 1)[0, :2].mean() + F.log_softmax(s.t(), 1)[1, :2].mean()) / 3
    t2i = t2i - F.log_softmax(s.t(), 1)[2, 2] / 3
    assert itc_loss(s, pos).item() == pytest.approx(((i2t + t2i) / 2).item())

    rng = np.random.default_rng(0)
    sim = np.array([[0.0, 8.0, -8.0, 0.0], [1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0], [5.0, 5.0, 5.0, 5.0]])
    positive = np.eye(4, dtype=bool)
    positive[2] = True  # row 2: everything is a positive -> uniform over the other columns
    draws = np.stack([sample_negatives(sim, positive, rng) for _ in range(300)])
    assert (draws[:, 0] == 1).mean() > 0.97  # softmax(8, -8, 0) over the negatives: 0.99966
    assert not (draws[:, 0] == 0).any() and not (draws[:, 3] == 3).any()  # never the positive
    assert set(draws[:, 2]) == {0, 1, 3}


def test_caption_trainable_parameter_sets(tmp_path):
    from edgevqa.train import caption, lora, models
    from edgevqa.train.tokenizer import build_wordpiece_tokenizer

    tok = build_wordpiece_tokenizer(["chest x-ray with one small lesion"], tmp_path / "tok")
    sizes = {}
    for part, expected in [
        ("full", {"vision_model", "text_decoder"}),
        ("decoder", {"text_decoder"}),
        ("encoder", {"vision_model"}),
    ]:
        model = models.build_tiny(tok, 32, 0)
        caption.set_trainable(model, part)
        assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == expected, part
        sizes[part] = lora.count_parameters(model)[0]
    m = models.build_tiny(tok, 32, 0)
    assert sizes["encoder"] == sum(p.numel() for p in m.vision_model.parameters())
    assert sizes["decoder"] == sum(p.numel() for p in m.text_decoder.parameters())  # tied LM head once
    assert sizes["full"] == sizes["encoder"] + sizes["decoder"]


# ---------------------------------------------------------------------------------------------
# runs


def test_caption_decoder_recipe_runs_and_keeps_the_vision_encoder(tmp_path, caption_data):
    import inspect

    from transformers import AutoTokenizer

    from edgevqa.train import caption, models
    from edgevqa.train.loop import train

    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("edgevqa.train")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        cfg = config_for(
            "caption",
            data=str(caption_data),
            out=str(tmp_path / "cap"),
            train_part="decoder",
            max_steps=3,
            batch_size=4,
            lr=1e-3,
            **FAST,
        )
        run = train(cfg, progress=False)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    tok = AutoTokenizer.from_pretrained(run / "tokenizer")
    fresh = dict(models.build_tiny(tok, 32, 0).named_parameters())  # what the run started from
    trained = weights(run / "model")
    n_decoder = sum(p.numel() for n, p in fresh.items() if n.startswith("text_decoder."))
    assert any(m.startswith(f"trainable parameters: {n_decoder:,} of") for m in messages), messages
    assert [r["step"] for r in rows(run) if "loss" in r] == [3] and np.isfinite(rows(run)[-1]["loss"])
    ev = json.loads((run / "eval.json").read_text())
    assert ev["recipe"] == "caption" and np.isfinite(ev["val"]["loss"]) and ev["val"]["generated"] == 4
    assert all(isinstance(e["generated"], str) for e in ev["val"]["examples"])
    vocab = json.loads((run / "tokenizer" / "tokenizer.json").read_text())["model"]["vocab"]
    assert {"lesion", "large", "modality"} <= set(vocab)  # captions' words and the folder's questions'

    def same(name: str) -> bool:
        return np.array_equal(trained[name].numpy(), fresh[name].detach().numpy())

    assert all(same(n) for n in fresh if n.startswith(("vision_model.", "text_encoder.")))  # frozen
    assert not all(same(n) for n in fresh if n.startswith("text_decoder."))  # trained
    params = inspect.signature(caption.generate_captions).parameters
    assert (params["num_beams"].default, params["max_new_tokens"].default) == (4, 128)


def test_dapt_weights_carry_over_into_vqa(tmp_path, caption_data):
    from edgevqa.train import loop, models, setup

    cfg = config_for(
        "dapt",
        data=str(caption_data),
        out=str(tmp_path / "dapt"),
        max_steps=3,
        batch_size=4,
        grad_accum=1,
        lr=1e-3,
        warmup_steps=1,
        min_lr=1e-4,
        **FAST,
    )
    run = loop.train(cfg, progress=False)
    assert (run / "dapt_heads.safetensors").is_file() and not (run / "teacher").exists()
    last = [r for r in rows(run) if "loss" in r][-1]
    assert last["step"] == 3 and all(np.isfinite(last[k]) for k in ("itc", "itm", "lm"))
    assert last["loss"] == pytest.approx(last["itc"] + last["itm"] + last["lm"], rel=1e-5)
    ev = json.loads((run / "eval.json").read_text())["val"]
    assert ev["n"] == 4 and 0 <= ev["i2t_recall@1"] <= 1 and np.isfinite(ev["total"])

    dapt = weights(run / "model")
    vqa_cfg = setup.absolute_paths(config_for("vqa", init=str(run), data=str(caption_data), out="unused"))
    assert vqa_cfg.base == str(run.resolve())
    loaded = setup.load_model(vqa_cfg, tmp_path / "vqa-run", [])
    got = {n: p.detach() for n, p in loaded.model.named_parameters()}
    fresh = models.build_tiny(loaded.tokenizer, 32, 0)  # what DAPT started from
    start = dict(fresh.named_parameters())
    for part in ("vision_model", "text_encoder", "text_decoder"):
        names = [n for n in got if n.startswith(part + ".")]
        assert names and all(np.array_equal(got[n].numpy(), dapt[n].numpy()) for n in names), part
        assert any(not np.array_equal(got[n].numpy(), start[n].detach().numpy()) for n in names), part
    assert not any(k.startswith(("vision_proj", "text_proj", "itm_head")) for k in dapt)  # heads stay apart


def test_dapt_sd_resume_continues_exactly(tmp_path, caption_data, monkeypatch):
    import torch

    from edgevqa.train import dapt, loop

    def cfg(out):
        return config_for(
            "dapt-sd",
            data=str(caption_data),
            out=str(out),
            max_steps=4,
            batch_size=4,
            grad_accum=2,
            lr=1e-3,
            warmup_steps=2,
            **{**FAST, "checkpoint_every": 2},
        )

    straight = loop.train(cfg(tmp_path / "straight"), progress=False)
    calls = {"n": 0}
    real = dapt.make_caption_batch

    def crash_at_7(*a, **k):  # 2 micro-batches per step: call 7 is step 4, after the step-2 checkpoint
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(dapt, "make_caption_batch", crash_at_7)
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg(tmp_path / "resumed"), progress=False)
    monkeypatch.setattr(dapt, "make_caption_batch", real)
    assert not (tmp_path / "resumed" / "model").exists()
    resumed = loop.train(cfg(tmp_path / "resumed"), resume=True, progress=False)
    for sub in ("model", "teacher"):
        a, b = weights(straight / sub), weights(resumed / sub)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    ra, rb = (
        json.loads((r / "eval.json").read_text())["distill"]["smoothed_ratios"] for r in (straight, resumed)
    )
    assert ra == pytest.approx(rb, rel=1e-5)
    last = [r for r in rows(straight) if "loss" in r][-1]
    assert last["w_itc"] + last["w_itm"] + last["w_lm"] == pytest.approx(1.0)
    assert last["loss"] == pytest.approx(last["itc"] + last["itm"] + last["lm"] + last["distill"], rel=1e-5)
    # the teacher moved towards the student but is not the student
    t, s = weights(straight / "teacher"), weights(straight / "model")
    assert any(not torch.equal(t[k], s[k]) for k in t)


def test_chain_dapt_sd_vqa_export_ask(tmp_path, caption_data):
    """dapt-sd -> vqa (--init) -> export -> the torch-free runtime answers as PyTorch does."""
    from safetensors.torch import load_file

    from edgevqa.config import ExportConfig
    from edgevqa.data.records import load_split
    from edgevqa.export import export
    from edgevqa.runtime import VQAPipeline
    from edgevqa.train import loop, models
    from edgevqa.train.data import ImageCache, encode_records
    from edgevqa.train.infer import generate_answers

    sd = loop.train(
        config_for(
            "dapt-sd",
            data=str(caption_data),
            out=str(tmp_path / "sd"),
            max_steps=2,
            batch_size=4,
            grad_accum=2,
            lr=1e-3,
            warmup_steps=1,
            **FAST,
        ),
        progress=False,
    )
    vqa = loop.train(
        config_for("vqa", init=str(sd), data=str(caption_data), out=str(tmp_path / "vqa"), epochs=2, **FAST),
        progress=False,
    )
    ev = json.loads((vqa / "eval.json").read_text())
    assert ev["recipe"] == "vqa" and ev["early_stopping"]["epochs_evaluated"] == 2
    assert [r["epoch"] for r in rows(vqa) if "val_exact_match" in r] == [1, 2]
    assert json.loads((vqa / "config.json").read_text())["base"] == str(sd.resolve())
    a, b = weights(sd / "model"), weights(vqa / "model")
    assert all(
        np.array_equal(a[k].numpy(), b[k].numpy()) for k in a if k.startswith("vision_model.")
    )  # eq. 10
    assert any(not np.array_equal(a[k].numpy(), b[k].numpy()) for k in a if k.startswith("text_decoder."))
    # early stopping keeps the best epoch: model/ holds the weights of checkpoints/best
    best = load_file(str(vqa / "checkpoints" / "best" / "trainable.safetensors"))
    assert set(best) <= set(b) and not any(k.startswith("vision_model.") for k in best)
    assert all(np.array_equal(best[k].numpy(), b[k].numpy()) for k in best)

    bundle = export(
        ExportConfig(
            run=str(vqa), out=str(tmp_path / "bundle"), precisions=["fp32"], validate_limit=8, force=True
        ),
        progress=False,
    )
    recs = load_split(caption_data, "test")[:6]
    loaded = models.load_pretrained(str(vqa))
    enc = encode_records(recs, caption_data, loaded.tokenizer, 32, 8)
    ref = generate_answers(loaded.model, loaded.tokenizer, enc, ImageCache(loaded.image), 8)
    pipe = VQAPipeline.from_bundle(bundle, precision="fp32")
    got = [pipe.ask(r.image_path(caption_data), r.question) for r in recs]
    assert [g.token_ids for g in got] == ref.token_ids and [g.text for g in got] == ref.texts


def test_mixed_precision_plumbing(tmp_path, caption_data, monkeypatch):
    """CPU runs are fp32; the autocast + loss-scaling path CUDA takes runs here with CPU bf16 autocast."""
    import contextlib
    import functools

    import torch

    from edgevqa.train import loop, setup

    assert setup.mixed_precision(torch.device("cpu"), TrainConfig()) == (contextlib.nullcontext, None, "fp32")
    scaler = torch.amp.GradScaler("cpu")
    bf16 = functools.partial(torch.autocast, device_type="cpu", dtype=torch.bfloat16)
    monkeypatch.setattr(setup, "mixed_precision", lambda device, cfg: (bf16, scaler, "bf16 autocast (test)"))
    cfg = config_for(
        "caption",
        data=str(caption_data),
        out=str(tmp_path / "amp"),
        max_steps=3,
        batch_size=4,
        lr=1e-3,
        **{**FAST, "checkpoint_every": 2},
    )
    run = loop.train(cfg, progress=False)
    assert np.isfinite(rows(run)[-1]["loss"]) and (run / "model" / "model.safetensors").is_file()
    state = json.loads((run / "checkpoints" / "last" / "state.json").read_text())
    assert state["scaler"]["scale"] == 65536.0 and state["step"] == 2  # the scaler's state is checkpointed
