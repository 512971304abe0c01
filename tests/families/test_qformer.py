"""The Q-Former family (paper 001; BLIP-2's shape) end to end on the tiny preset: the three-stage
chain, parity with transformers as a user runs it (Blip2Processor + generate) for the runs and for
a BLIP-2 checkpoint saved with save_pretrained, the graphs, the image-prefix cache, and what is
refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from edgevqa.errors import InputError

PROMPT = "Question: {question} Answer:"


def hf_answer(proc, model, image, question: str, max_new: int = 8) -> list[int]:
    """A BLIP-2 answer as a user of plain transformers gets it: processor, then greedy generate."""
    import torch

    inputs = proc(images=image, text=PROMPT.format(question=question), return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new, do_sample=False)
    seq = out[0, inputs["input_ids"].shape[1] :].tolist()
    eos = model.generation_config.eos_token_id
    return seq[: seq.index(eos) + 1] if eos in seq else seq


def plain(folder):
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    return Blip2Processor.from_pretrained(folder), Blip2ForConditionalGeneration.from_pretrained(
        folder
    ).eval()


def test_the_three_stages_train_what_the_paper_trains_and_chain(qf_base, qf_caption, qf_vqa):
    from safetensors import safe_open

    for run in (qf_caption, qf_vqa):
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["family"] == "qformer" and cfg["lora"] and cfg["freeze_vision"]
        with safe_open(str(run / "adapter" / "adapter_model.safetensors"), "pt") as f:
            keys = list(f.keys())
        assert any(".language_model." in k and "lora_A" in k for k in keys)  # LoRA on the LLM
        assert any(k.startswith("base_model.model.qformer.") for k in keys)  # the Q-Former whole
        assert any("language_projection" in k for k in keys)  # and the projection
        assert not any("vision_model" in k for k in keys)  # the vision encoder frozen
        assert (run / "model" / "config.json").is_file()  # merged: the next stage starts here
    assert json.loads((qf_vqa / "config.json").read_text())["base"] == str(qf_caption)
    assert json.loads((qf_caption / "config.json").read_text())["base"] == str(qf_base)
    # stage 1 validated captions as answers to its question, stage 3 the VQA questions
    assert (
        "open/caption" in json.loads((qf_caption / "eval.json").read_text())["val"]["accuracy"]["by_category"]
    )
    assert (
        "closed/presence" in json.loads((qf_vqa / "eval.json").read_text())["val"]["accuracy"]["by_category"]
    )


def test_the_vision_encoder_stays_as_stage_0_left_it(qf_base, qf_vqa):
    from safetensors.torch import load_file

    before = load_file(str(qf_base / "model" / "model.safetensors"))
    after = load_file(str(qf_vqa / "model" / "model.safetensors"))
    vision = [k for k in before if k.startswith("vision_model.")]
    assert vision and all((before[k] == after[k]).all() for k in vision)
    assert any(not (before[k] == after[k]).all() for k in before if k.startswith("qformer."))


def test_runtime_answers_exactly_as_transformers_generate(qf_bundle, qf_vqa, qf_data):
    from edgevqa.data.records import load_split
    from edgevqa.runtime import VQAPipeline

    proc, model = plain(qf_vqa / "model")  # the merged stage-3 model, loaded by plain transformers
    pipe = VQAPipeline.from_bundle(qf_bundle, precision="fp32")
    for r in load_split(qf_data, "test")[:12]:
        image = Image.open(r.image_path(qf_data))
        assert pipe.ask(r.image_path(qf_data), r.question).token_ids == hf_answer(
            proc, model, image, r.question
        )
    fid = json.loads((qf_bundle / "fidelity.json").read_text())
    fp32 = fid["precisions"]["fp32"]
    assert fp32["answer_agreement"] == 1.0 and fp32["teacher_forced_top1"] == 1.0
    assert all(g["within_atol"] for g in fp32["graphs"].values())
    assert fid["merge"]["lora"] and fid["merge"]["identical_answers"] == fid["merge"]["probe_questions"]
    manifest = json.loads((qf_bundle / "manifest.json").read_text())
    assert manifest["family"] == "qformer" and manifest["family_config"]["prompt"] == PROMPT


OPT = dict(model_type="opt", hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=2,
           word_embed_proj_dim=64, max_position_embeddings=128)  # fmt: skip
BLOOM = dict(model_type="bloom", hidden_size=64, n_layer=2, n_head=4)  # ALiBi over 4 heads' slopes


def tiny_blip2(text: dict, tok):
    """A BLIP-2 with the tiny preset's vision tower and Q-Former and the given text model."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    from edgevqa.train.families import qformer as qf

    sizes = qf.ARCHS["tiny-qformer"]
    ids = {"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2, "vocab_size": len(tok)}
    cfg = Blip2Config(
        vision_config={**sizes["vision"], "image_size": 32},
        qformer_config=sizes["qformer"],
        text_config={**text, **ids},
        num_query_tokens=4,
        image_token_index=4,
    )
    return Blip2ForConditionalGeneration(cfg)


@pytest.mark.parametrize("text", [None, OPT, BLOOM], ids=["llama", "opt", "bloom"])
def test_a_blip2_checkpoint_with_random_weights_answers_token_for_token_like_generate(
    tmp_path, qf_data, text
):
    """A BLIP-2 folder built from a small config and saved with save_pretrained: random weights
    answer with arbitrary tokens, the strictest parity check. OPT is the LM of the published
    BLIP-2 checkpoints (Salesforce/blip2-opt-*), BLOOM paper 001's (RadBloomz)."""
    import torch

    from edgevqa.config import ExportConfig
    from edgevqa.data.records import load_split
    from edgevqa.export import export
    from edgevqa.runtime import VQAPipeline
    from edgevqa.train.families import qformer as qf

    recs = load_split(qf_data, "train")
    tok = qf.arch_tokenizer(
        sorted({w for r in recs for w in (r.question + " " + r.answer).split()}), tmp_path / "t"
    )
    loaded = qf.arch("tiny-qformer", tok)
    if text is not None:
        loaded.model = tiny_blip2(text, tok)
        loaded.image = qf.image_spec(32)
    torch.manual_seed(0)
    for name, p in loaded.model.named_parameters():
        # random biases make every position's state alike: one token repeated, no test
        p.data.normal_(0, 0.3) if "language_model" not in name or "bias" not in name else p.data.zero_()
    qf.save_model_dir(loaded, tmp_path / "model")
    cfg = ExportConfig(
        run=str(tmp_path / "model"), out=str(tmp_path / "b"), precisions=["fp32"], validate_limit=8
    )
    bundle = export(cfg, data=str(qf_data), progress=False)
    proc, model = plain(tmp_path / "model")
    pipe = VQAPipeline.from_bundle(bundle)
    for r in load_split(qf_data, "test")[:6]:
        got = pipe.ask(r.image_path(qf_data), r.question).token_ids
        assert got == hf_answer(proc, model, Image.open(r.image_path(qf_data)), r.question)
        assert len(set(got)) > 1  # not a degenerate answer


def test_prompt_ids_and_pixels_equal_the_processor(qf_bundle, qf_vqa):
    from edgevqa.runtime import VQAPipeline
    from edgevqa.runtime.preprocess import preprocess

    proc, _ = plain(qf_vqa / "model")
    pipe = VQAPipeline.from_bundle(qf_bundle)
    rng = np.random.default_rng(3)
    for size, mode in [((50, 40), "RGB"), ((33, 77), "L"), ((300, 200), "L")]:
        arr = rng.integers(0, 256, (*size, 3) if mode == "RGB" else size, dtype=np.uint8)
        img = Image.fromarray(arr, mode=mode)
        for q in ("is there a lesion?", "Which SIDE is the lesion on", "how many lesions are there ?"):
            ref = proc(images=img, text=PROMPT.format(question=q), return_tensors="np")
            assert pipe.question_ids(q).tolist() == ref["input_ids"].tolist()
        got = preprocess(img, pipe.manifest.image)
        assert got.shape == ref["pixel_values"].shape
        assert np.abs(got - ref["pixel_values"]).max() == 0.0  # bit for bit


def test_the_query_cache_is_the_image_s_and_a_follow_up_prefills_only_its_question(qf_bundle, qf_data):
    """The cached image state is the query tokens' KV cache; a follow-up question answers exactly
    as the same question asked first, and runs no vision graph."""
    from edgevqa.data.records import load_split
    from edgevqa.runtime import VQAPipeline

    r1, r2 = load_split(qf_data, "test")[:2]
    path = r1.image_path(qf_data)
    fresh = VQAPipeline.from_bundle(qf_bundle, precision="fp32")
    alone = fresh.ask(path, r2.question)
    pipe = VQAPipeline.from_bundle(qf_bundle, precision="fp32")
    pipe.ask(path, r1.question)
    calls = []
    vision = pipe.model.sessions["vision_encoder"]
    pipe.model.sessions["vision_encoder"] = type(
        "Spy", (), {"run": lambda s, *a: calls.append(a) or vision.run(*a)}
    )()
    follow = pipe.ask(path, r2.question)
    assert follow.image_cached and calls == []
    assert follow.token_ids == alone.token_ids
    k, v = pipe.encode_image(path).arrays
    q = pipe.manifest.family_config["num_image_tokens"]
    assert k.shape[3] == v.shape[3] == q  # [layers, 1, kv heads, queries, head_dim]


def test_the_split_prefill_equals_the_whole_sequence_in_pytorch(qf_vqa, qf_data):
    """The runtime's order (queries once, then the prompt on their cache) gives the logits the
    whole causal sequence gives in transformers."""
    import torch

    from edgevqa.data.records import load_split
    from edgevqa.export.families import qformer as xq
    from edgevqa.runtime.preprocess import preprocess

    proc, model = plain(qf_vqa / "model")
    r = load_split(qf_data, "test")[0]
    img = Image.open(r.image_path(qf_data))
    inputs = proc(images=img, text=PROMPT.format(question=r.question), return_tensors="pt")
    with torch.inference_mode():
        ref = model(**inputs).logits[0, -1]
    feeds = xq.graph_inputs(model, [inputs["input_ids"][0].tolist()], [preprocess(img, _spec(qf_vqa))])
    step = xq.DecoderStep(model).eval()
    with torch.inference_mode():
        split = step(**feeds["decoder_step"][2])[0][0, -1]  # the prompt on the queries' cache
        whole = step(**feeds["decoder_step"][0])[0][0, -1]
    assert torch.allclose(split, ref, atol=1e-4) and torch.allclose(whole, ref, atol=1e-4)


def _spec(run):
    from edgevqa.train.families import qformer as qf

    return qf.load_pretrained(str(run)).image


def test_rank_scores_and_sampling_run(qf_bundle, qf_data):
    from edgevqa.data.records import load_split
    from edgevqa.runtime import VQAPipeline
    from edgevqa.runtime.decoding import SamplingOptions

    pipe = VQAPipeline.from_bundle(qf_bundle, precision="fp32")
    r = load_split(qf_data, "test")[0]
    ranked = pipe.rank(r.image_path(qf_data), r.question, ("yes", "no"))
    assert ranked.text in ("yes", "no")
    samples = pipe.sample(
        r.image_path(qf_data), r.question, 3, SamplingOptions(temperature=1.0), np.random.default_rng(0)
    )
    assert len(samples) == 3


def test_a_question_over_the_prompt_budget_is_refused(qf_bundle, qf_data):
    from edgevqa.runtime import VQAPipeline

    pipe = VQAPipeline.from_bundle(qf_bundle)
    with pytest.raises(InputError, match="this bundle takes at most"):
        pipe.question_ids("is there a lesion " * 40)
    with pytest.raises(InputError, match="empty"):
        pipe.question_ids("   ")


@pytest.mark.parametrize(
    "text, message",
    [
        ({**OPT, "do_layer_norm_before": False}, "OPT with post-norm layers"),
        (dict(model_type="t5", d_model=64, d_ff=128, num_layers=1, num_heads=2, d_kv=32),
         "encoder-decoder language model"),
    ],
)  # fmt: skip
def test_a_blip2_base_edgevqa_cannot_export_is_refused_before_training(tmp_path, text, message):
    from edgevqa.train.families import qformer as qf

    tok = qf.build_tokenizer(["is there a lesion"], tmp_path / "t")
    loaded = qf.arch("tiny-qformer", tok)
    loaded.model, loaded.image = tiny_blip2(text, tok), qf.image_spec(32)
    qf.save_model_dir(loaded, tmp_path / "m")
    with pytest.raises(InputError, match=message):
        qf.load_pretrained(str(tmp_path / "m"))


def test_training_refuses_another_model_type_as_a_qformer_base(tmp_path):
    from edgevqa.train.families import qformer as qf

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "paligemma"}))
    with pytest.raises(InputError, match="is a paligemma model, not a Q-Former"):
        qf.load_pretrained(str(tmp_path))


@pytest.mark.parametrize("text, wrapped", [
    (None, {"q_proj", "k_proj", "v_proj", "o_proj"}),
    (OPT, {"q_proj", "k_proj", "v_proj", "out_proj"}),
    (BLOOM, {"query_key_value", "dense"}),
], ids=["llama", "opt", "bloom"])  # fmt: skip
def test_lora_lands_on_the_attention_projections_of_each_text_model(tmp_path, text, wrapped):
    """The stages' LoRA targets the LM's attention in every text model the family exports, and
    nothing of the vision encoder or Q-Former (trained whole there, or frozen)."""
    from edgevqa.config import TrainConfig
    from edgevqa.train.families import qformer as qf

    tok = qf.build_tokenizer(["is there a lesion"], tmp_path / "t")
    model = qf.arch("tiny-qformer", tok).model if text is None else tiny_blip2(text, tok)
    peft_model = qf.prepare(model, TrainConfig(base="tiny-qformer", recipe="qformer-vqa", lora=True))
    names = {n for n, _ in peft_model.named_modules() if n.endswith(".lora_A")}
    assert names and all(".language_model." in n for n in names)
    assert {n.split(".")[-2] for n in names} == wrapped
    layers = model.config.text_config.num_hidden_layers
    assert len(names) == layers * len(wrapped)


# -- compose: paper 001's build (a domain ViT + a new Q-Former + a causal LM) -------------------

VIT = dict(
    hidden_size=48,
    num_hidden_layers=2,
    num_attention_heads=3,
    intermediate_size=96,
    image_size=32,
    patch_size=16,
)  # fmt: skip  (3 heads: timm's "tiny" ViT's count)
SMALL_QFORMER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                     cross_attention_frequency=1)  # fmt: skip


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A transformers ViT folder, the same weights as an open_clip folder in BiomedCLIP's format
    (timm names under visual.trunk., a .bin and a .safetensors variant), and a BLOOM folder."""
    import torch
    from safetensors.torch import save_file
    from transformers import BloomConfig, BloomForCausalLM, ViTConfig, ViTImageProcessorPil, ViTModel

    from edgevqa.train.families import qformer as qf

    d = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(**VIT, layer_norm_eps=1e-6), add_pooling_layer=False).eval()
    for p in vit.parameters():
        p.data.normal_(0, 0.2)
    vit.save_pretrained(d / "vit")
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(d / "vit")
    s = vit.state_dict()
    trunk = {"cls_token": s["embeddings.cls_token"], "pos_embed": s["embeddings.position_embeddings"],
             "patch_embed.proj.weight": s["embeddings.patch_embeddings.projection.weight"],
             "patch_embed.proj.bias": s["embeddings.patch_embeddings.projection.bias"],
             "norm.weight": s["layernorm.weight"], "norm.bias": s["layernorm.bias"]}  # fmt: skip
    for i in range(VIT["num_hidden_layers"]):
        a, b = f"layers.{i}.", f"blocks.{i}."
        names = [
            ("norm1", "layernorm_before"),
            ("norm2", "layernorm_after"),
            ("attn.proj", "attention.o_proj"),
            ("mlp.fc1", "mlp.fc1"),
            ("mlp.fc2", "mlp.fc2"),
        ]
        for mine, theirs in names:
            for w in ("weight", "bias"):
                trunk[f"{b}{mine}.{w}"] = s[f"{a}{theirs}.{w}"]
        for w in ("weight", "bias"):
            trunk[f"{b}attn.qkv.{w}"] = torch.cat([s[f"{a}attention.{p}_proj.{w}"] for p in "qkv"])
    state = {f"visual.trunk.{k}": v.contiguous() for k, v in trunk.items()}
    state["text.proj.weight"] = torch.zeros(4, 4)  # the text tower: not read
    config = {
        "model_cfg": {"embed_dim": 16, "vision_cfg": {
            "timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False, "timm_pool": "",
            "timm_proj": "linear", "image_size": 32}},
        "preprocess_cfg": {"mean": list(qf.CLIP_MEAN), "std": list(qf.CLIP_STD)},
    }  # fmt: skip
    for name, save in [("oc-bin", lambda p: torch.save(state, p / "open_clip_pytorch_model.bin")),
                       ("oc-st", lambda p: save_file(state, p / "open_clip_model.safetensors"))]:  # fmt: skip
        (d / name).mkdir()
        (d / name / "open_clip_config.json").write_text(json.dumps(config))
        save(d / name)
    tok = qf.build_tokenizer(["is there a lesion on the left right yes no"], d / "bloom")
    ids = dict(pad_token_id=0, eos_token_id=1, bos_token_id=2, vocab_size=len(tok))
    BloomForCausalLM(BloomConfig(hidden_size=64, n_layer=2, n_head=4, **ids)).save_pretrained(d / "bloom")
    return d, vit


@pytest.mark.parametrize("source", ["vit", "oc-bin", "oc-st"])
def test_a_composed_base_s_vision_model_is_the_encoder_weight_for_weight(tmp_path, parts, source):
    """BLIP-2's vision model after compose gives the encoder's own features (transformers' ViT, and
    the same weights in open_clip's format: BiomedCLIP's), and a plain BLIP-2 folder results."""
    import torch
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    from edgevqa.train.families import qformer as qf
    from edgevqa.train.families.qformer_compose import compose

    d, vit = parts
    compose(str(d / source), str(d / "bloom"), tmp_path / "base", queries=4, qformer=SMALL_QFORMER)
    model = Blip2ForConditionalGeneration.from_pretrained(tmp_path / "base").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want, got = vit(x).last_hidden_state, model.vision_model(x).last_hidden_state
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    proc = Blip2Processor.from_pretrained(tmp_path / "base")
    assert proc.num_query_tokens == model.config.num_query_tokens == 4
    assert model.config.text_config.model_type == "bloom"
    assert 0.01 < model.query_tokens.std().item() < 0.03  # N(0, 0.02), not transformers' zeros
    loaded = qf.load_pretrained(str(tmp_path / "base"))  # what train --base reads
    assert loaded.image.mean == (qf.CLIP_MEAN if source != "vit" else (0.5, 0.5, 0.5))


def test_a_composed_base_trains_stage_1_exports_and_answers_like_generate(tmp_path, parts, qf_data):
    """compose (BiomedCLIP-format ViT + BLOOM) -> train --base (qformer-caption) -> export: the
    bundle answers token for token as the run's model/ does through Blip2Processor + generate."""
    from edgevqa.config import ExportConfig
    from edgevqa.data.records import load_split
    from edgevqa.export import export
    from edgevqa.runtime import VQAPipeline
    from edgevqa.train import train
    from edgevqa.train.families.qformer_compose import compose
    from edgevqa.train.recipes import config_for

    d, _ = parts
    base = compose(str(d / "oc-st"), str(d / "bloom"), tmp_path / "base", queries=4, qformer=SMALL_QFORMER)
    cfg = config_for("qformer-caption", base=str(base), data=str(qf_data), out=str(tmp_path / "run"),
                     max_steps=2, eval_every=0, checkpoint_every=0, threads=1, batch_size=8)  # fmt: skip
    run = train(cfg, progress=False)
    ecfg = ExportConfig(run=str(run), out=str(tmp_path / "b"), precisions=["fp32"], validate_limit=6)
    bundle = export(ecfg, data=str(qf_data), progress=False)
    proc, model = plain(run / "model")
    pipe = VQAPipeline.from_bundle(bundle)
    for r in load_split(qf_data, "test")[:4]:
        got = pipe.ask(r.image_path(qf_data), r.question).token_ids
        assert got == hf_answer(proc, model, Image.open(r.image_path(qf_data)), r.question)


def test_what_compose_cannot_hold_is_refused_in_one_line_and_nothing_is_written(tmp_path, parts):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from edgevqa.cli.main import main
    from edgevqa.train.families.qformer_compose import compose

    d, _ = parts
    clip = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                            image_size=32, patch_size=16)  # fmt: skip
    CLIPVisionModel(clip).save_pretrained(tmp_path / "clip")
    with pytest.raises(InputError, match="LayerNorm before its layers"):
        compose(str(tmp_path / "clip"), str(d / "bloom"), tmp_path / "out")
    (tmp_path / "oc").mkdir()
    (tmp_path / "oc" / "open_clip_config.json").write_text("{}")
    with pytest.raises(InputError, match="open_clip_pytorch_model.bin are needed"):
        compose(str(tmp_path / "oc"), str(d / "bloom"), tmp_path / "out")
    with pytest.raises(InputError, match="cannot load causal LM"):
        compose(str(d / "vit"), str(tmp_path / "nowhere"), tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep").write_text("x")
    with pytest.raises(SystemExit) as e:
        main(
            [
                "compose",
                "--vision",
                str(d / "vit"),
                "--lm",
                str(d / "bloom"),
                "--out",
                str(tmp_path / "taken"),
            ]
        )
    assert e.value.code == 2 and [p.name for p in (tmp_path / "taken").iterdir()] == ["keep"]


def test_compose_from_the_command_line_prints_its_lines_and_no_library_bars(tmp_path, parts):
    import subprocess

    from conftest import edgevqa_cmd

    d, _ = parts
    p = subprocess.run(
        edgevqa_cmd("compose", "--vision", str(d / "oc-bin"), "--lm", str(d / "bloom"), "--out",
                    str(tmp_path / "base"), "--queries", "4", "--qformer-layers", "1"),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == f"BLIP-2 base written to {tmp_path / 'base'}"
    assert "it/s" not in p.stderr and "Traceback" not in p.stderr and "Warning" not in p.stderr
    cfg = json.loads((tmp_path / "base" / "config.json").read_text())
    assert cfg["num_query_tokens"] == 4 and cfg["qformer_config"]["num_hidden_layers"] == 1


def test_the_probe_script_reads_features_and_scores_by_hand_computed_cases(qf_base, qf_data):
    import torch
    from conftest import benchmark_script
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    script = benchmark_script("qformer_probe")
    items = script.images_with(qf_data, "train", "lesion_image_half", 10_000)
    records = [json.loads(line) for line in (qf_data / "train.jsonl").read_text().splitlines()]
    with_lesion = {r["image"] for r in records if r["meta"]["lesion_count"] > 0}
    assert sorted(str(p.relative_to(qf_data)) for p, _ in items) == sorted(with_lesion)  # each once
    assert {v for _, v in items} == {"left", "right"}

    y, yt = torch.tensor([0] * 7 + [1] * 3), torch.tensor([0, 1, 1, 1])
    separable = lambda labels: (2.0 * labels - 1)[:, None].repeat(1, 3)  # noqa: E731
    assert script.probe(separable(y), y, separable(yt), yt) == (1.0, 1.0)
    constant = lambda labels: torch.zeros(len(labels), 3)  # noqa: E731
    # nothing to read: every image gets the train majority, class 0 (7 of 10 train, 1 of 4 test)
    assert script.probe(constant(y), y, constant(yt), yt) == pytest.approx((0.7, 0.25))

    model = Blip2ForConditionalGeneration.from_pretrained(qf_base / "model").eval()
    processor = Blip2Processor.from_pretrained(qf_base / "model")
    f = script.features(model, processor, items[:5])
    tokens = 1 + (model.config.vision_config.image_size // 16) ** 2  # [CLS] + patches
    assert f["vision tokens"].shape == (5, tokens * 128) and f["vision mean"].shape == (5, 128)
    assert torch.allclose(f["vision mean"], f["vision tokens"].view(5, tokens, 128).mean(1), atol=1e-6)
    assert f["queries"].shape == f["projection"].shape == (5, model.config.num_query_tokens * 128)


def test_int4_runs_the_queries_and_the_question_on_int8s_decoder(qf_bundle, qf_data):
    """Both prefills (the query tokens once per image, then the question on their cache) go through
    int8's decoder_step in an int4 bundle; answer tokens through its own 4-bit one."""
    from conftest import record_calls

    from edgevqa.data.records import load_split
    from edgevqa.runtime import VQAPipeline

    r = load_split(qf_data, "test")[0]
    path = r.image_path(qf_data)
    pipe = VQAPipeline.from_bundle(qf_bundle, precision="int4")
    calls = record_calls(pipe)
    pipe.teacher_forced(path, r.question, [5, 6])
    q = pipe.manifest.family_config["num_image_tokens"]
    text = pipe.question_ids(r.question).shape[1] - q
    decoder = [c for c in calls if c[0].startswith("decoder")]
    assert decoder == [("decoder_prefill", q), ("decoder_prefill", text), ("decoder_step", 1)]


def test_the_openvino_path_runs_the_vision_graph_in_openvino_and_the_rest_as_int4(qf_bundle, qf_data):
    """int4+ov: OpenVINO computes the image tokens (encoder, Q-Former, projection); the query
    tokens' prefill, the question's and each answer token run exactly as int4 runs them."""
    pytest.importorskip("openvino")
    from conftest import record_calls

    from edgevqa.data.records import load_split
    from edgevqa.runtime import VQAPipeline
    from edgevqa.runtime.openvino import OpenVinoGraph

    r = load_split(qf_data, "test")[0]
    path = r.image_path(qf_data)
    ov = VQAPipeline.from_bundle(qf_bundle, precision="int4+ov")
    int4 = VQAPipeline.from_bundle(qf_bundle, precision="int4")
    assert isinstance(ov.sessions["vision_encoder"], OpenVinoGraph)
    assert ov.manifest.precisions["int4+ov"]["decoder_prefill"] == "int8/decoder_step.onnx"
    image = ov.encode_image(path).arrays[0]  # image tokens [1, queries, D], near int4's (int8) ones
    ref = int4.encode_image(path).arrays[0]
    assert image.shape == ref.shape and np.linalg.norm(image - ref) / np.linalg.norm(ref) < 0.2
    calls = record_calls(ov)
    ov.teacher_forced(path, r.question, [5, 6])
    q = ov.manifest.family_config["num_image_tokens"]
    text = ov.question_ids(r.question).shape[1] - q
    decoder = [c for c in calls if c[0].startswith("decoder")]
    assert decoder == [("decoder_prefill", text), ("decoder_step", 1)]  # the image's prefix is cached
    assert ov.ask(path, "is there a lesion?").image_cached


def test_the_prefill_weights_benchmark_times_each_decoder_use_at_both_precisions(tmp_path, monkeypatch):
    """benchmarks/prefill_weights.py on the tiny preset: the queries' and the question's prefill and
    the steps, at int8 and int4; an answer's decoder time is each use's p50 times its calls, the
    mixed one (what int4 bundles run) prefills at int8 and steps at int4."""
    from conftest import benchmark_script

    script = benchmark_script("prefill_weights")
    built = script.export_decoder("tiny-qformer", tmp_path)
    uses = built["uses"]
    assert [(u.name, u.rows, u.calls, u.prefill) for u in uses] == [
        ("decoder_image", 8, 1, True), ("decoder_prefill", 13, 1, True), ("decoder_step", 1, 7, False)
    ]  # fmt: skip
    pasts = []
    real = script.np.random.default_rng

    def spy(seed):  # the cache each use sees: what the prefills before it wrote
        rng = real(seed)
        normal = rng.standard_normal

        def draw(shape, dtype=None):
            if len(shape) == 5:
                pasts.append(shape[3])
            return normal(shape, dtype=dtype)

        return type("R", (), {"standard_normal": staticmethod(draw)})()

    monkeypatch.setattr(script.np.random, "default_rng", spy)
    ms = {
        p: script.time_uses(tmp_path / p / "decoder_step.onnx", built["shape"], uses, 2)
        for p in ("int8", "int4")
    }
    assert pasts == [0, 8, 21] * 2
    rep = script.report("tiny-qformer", uses, ms)
    a = rep["answer_decoder_ms"]
    assert a["mixed"] == pytest.approx(ms["int8"][0]["p50"] + ms["int8"][1]["p50"] + 7 * ms["int4"][2]["p50"])
    assert a["int4"] == pytest.approx(sum(m["p50"] * u.calls for m, u in zip(ms["int4"], uses)))
    assert "| decoder_prefill | 13 | 1 |" in script.markdown(rep)
