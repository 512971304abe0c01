"""Training: labels as generate() expects them, LoRA trains only adapters, resume is exact."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from edgevqa.config import TrainConfig
from edgevqa.errors import InputError


def test_batch_labels_follow_blip_conventions(base_run, synth_data):
    from transformers import AutoTokenizer

    from edgevqa.data.records import load_split
    from edgevqa.train.data import ImageCache, encode_records, make_batch
    from edgevqa.train.models import image_spec_for

    tok = AutoTokenizer.from_pretrained(base_run / "tokenizer")
    recs = load_split(synth_data, "train")[:6]
    enc = encode_records(recs, synth_data, tok, 32, 8)
    b = make_batch(enc, list(range(6)), ImageCache(image_spec_for(64)), tok.pad_token_id)
    dec, labels = b["decoder_input_ids"].numpy(), b["labels"].numpy()
    assert (dec[:, 0] == tok.bos_token_id).all()  # generate() starts from bos
    for row, lab, r in zip(dec, labels, recs):
        ids = [t for t in row if t != tok.pad_token_id]
        assert ids[-1] == tok.sep_token_id  # generate() stops on [SEP]
        assert tok.decode(ids, skip_special_tokens=True).replace(" - ", "-") == r.answer
        assert ((lab == -100) == (row == tok.pad_token_id)).all()
    assert b["pixel_values"].shape == (6, 3, 64, 64)
    assert (b["attention_mask"].numpy() == (b["input_ids"].numpy() != tok.pad_token_id)).all()


def test_run_folder(base_run, lora_run):
    for f in (
        "config.json",
        "metrics.jsonl",
        "eval.json",
        "model/model.safetensors",
        "model/config.json",
        "tokenizer/tokenizer.json",
        "model/preprocessor_config.json",
    ):
        assert (base_run / f).is_file(), f
    assert (lora_run / "adapter" / "adapter_model.safetensors").is_file()
    assert not (lora_run / "model").exists()
    ev = json.loads((base_run / "eval.json").read_text())
    assert {"accuracy", "baseline", "n"} <= set(ev["test"])
    rows = [json.loads(line) for line in (base_run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 40 and np.isfinite(rows[-1]["loss"])


def test_lora_trains_only_adapters(base_run):
    import torch

    from edgevqa.train import lora, models

    loaded = models.load_pretrained(str(base_run))
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    cfg = TrainConfig(base=str(base_run), lora=True, lora_r=4)
    model = lora.wrap(loaded.model, cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any(".qkv." in n for n in trainable) and any(".query." in n for n in trainable)
    n_train, n_all = lora.count_parameters(model)
    assert 0 < n_train < n_all / 5
    frozen = lora.targets(TrainConfig(base="x", lora=True, freeze_vision=True))
    assert "qkv" not in frozen and "query" in frozen
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    px = torch.randn(2, 3, 64, 64)
    ids = torch.tensor([[2, 7, 8, 3], [2, 9, 10, 3]])
    dec = torch.tensor([[5, 7, 3], [5, 8, 3]])
    model(pixel_values=px, input_ids=ids, decoder_input_ids=dec, labels=dec).loss.backward()
    opt.step()
    base = model.get_base_model()
    for n, p in base.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, before[n.replace(".base_layer", "")]), n


def test_resume_continues_exactly(tmp_path, synth_data, monkeypatch):
    import torch
    from safetensors.torch import load_file

    from edgevqa.train import loop

    def cfg(out):
        return TrainConfig(
            base="tiny-blip",
            data=str(synth_data),
            out=str(out),
            max_steps=12,
            lr=1e-3,
            warmup_steps=2,
            batch_size=8,
            eval_every=0,
            checkpoint_every=6,
            image_size=32,
            threads=1,
        )

    loop.train(cfg(tmp_path / "straight"), progress=False)
    calls = {"n": 0}
    from edgevqa.train.families import blip_vqa

    real = blip_vqa.make_batch

    def crash_at_9(*a, **k):
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(blip_vqa, "make_batch", crash_at_9)
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg(tmp_path / "resumed"), progress=False)
    monkeypatch.setattr(blip_vqa, "make_batch", real)
    assert not (tmp_path / "resumed" / "model").exists()
    with pytest.raises(InputError, match="already exists"):
        loop.train(cfg(tmp_path / "resumed"), progress=False)
    loop.train(cfg(tmp_path / "resumed"), resume=True, progress=False)
    a = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_config_errors_name_the_flag():
    with pytest.raises(InputError, match="--lr"):
        TrainConfig(lr=0)
    with pytest.raises(InputError, match="--batch-size"):
        TrainConfig(batch_size=0)


def test_unloadable_base_leaves_no_run(tmp_path, synth_data, monkeypatch):
    import huggingface_hub.constants

    from edgevqa.train import loop

    # no hub here: fail fast instead of retrying. The env var alone is read once, when
    # huggingface_hub is first imported (earlier tests may have done that), so set the constant too.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "run"
    with pytest.raises(InputError, match="cannot read 'no-such-org/no-such-blip'.*local folder"):
        loop.train(
            TrainConfig(base="no-such-org/no-such-blip", data=str(synth_data), out=str(out)), progress=False
        )
    assert not out.exists()
    with pytest.raises(InputError, match="holds no model"):
        loop.train(TrainConfig(base=str(tmp_path), data=str(synth_data), out=str(out)), progress=False)
    assert not out.exists()


def test_a_short_run_gets_a_warmup_that_fits_it():
    from edgevqa.train.loop import get_lr, warmup_for

    cfg = TrainConfig(
        base="tiny-blip", data="d", out="o", lr=1e-3, min_lr=0.0, warmup_steps=300, max_steps=40
    )
    assert warmup_for(cfg, 40) == 4
    assert get_lr(3, 40, cfg) == pytest.approx(1e-3)  # the peak after the 4th step (before: never)
    assert min(get_lr(s, 40, cfg) for s in range(3, 20)) > 5e-4  # the first half trains
    assert warmup_for(cfg, 1200) == 300  # a quarter of the run or less is left as asked


def test_resume_refuses_flags_that_differ_from_the_run(base_run, tmp_path):
    """--resume continues with the run's own settings; a flag that differs is refused, not ignored."""
    import shutil

    from edgevqa.config import load
    from edgevqa.train import loop

    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    (run / "checkpoints" / "last").mkdir(parents=True, exist_ok=True)
    (run / "checkpoints" / "last" / "state.json").write_text("{}")  # refused before it is read
    saved = load(TrainConfig, run / "config.json")
    with pytest.raises(InputError, match=r"these differ: --lr 0\.5 \(the run has 0\.001\)"):
        loop.train(replace(saved, out=str(run), lr=0.5), resume=True, progress=False)


def test_a_malformed_test_split_is_an_error_before_training_not_a_missing_report(synth_data, tmp_path):
    import shutil

    from edgevqa.train import train

    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    with (data / "test.jsonl").open("a") as f:
        f.write('{"question": "is there a lesion?"\n')  # cut short
    cfg = TrainConfig(base="tiny-blip", data=str(data), out=str(tmp_path / "run"), max_steps=2, image_size=32)
    with pytest.raises(InputError, match=r"test\.jsonl:\d+"):
        train(cfg, progress=False)
    assert not (tmp_path / "run").exists()


def test_off_a_terminal_training_says_its_progress_in_lines_not_a_bar(tmp_path, synth_data, caplog, capsys):
    """With progress on and stderr not a terminal (as under pytest, in a log file or a pipe), the
    bar stays off and a line per tenth of the run (at least every 50 steps) says where it is; a
    warm-up the run is too short for (300 steps asked, 100 run) is cut and said so."""
    import logging

    from edgevqa.train import loop

    cfg = TrainConfig(base="tiny-blip", data=str(synth_data), out=str(tmp_path / "r"), max_steps=100,
                      lr=1e-3, warmup_steps=300, batch_size=4, eval_every=0, checkpoint_every=0,
                      image_size=32, threads=1)  # fmt: skip
    with caplog.at_level(logging.INFO, logger="edgevqa.train"):
        loop.train(cfg, progress=True)
    steps = [r.getMessage().split(":")[0] for r in caplog.records if r.getMessage().startswith("step ")]
    assert steps == ["step 50/100", "step 100/100"]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(w.startswith("warm-up of 300 steps in a 100-step run") for w in warned), warned
    assert "train default" not in capsys.readouterr().err  # (the library's own bars are main()'s)
