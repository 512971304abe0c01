"""PaliGemma end to end on the tiny preset: parity of prompts, pixels, graphs and answers with
transformers as a user runs it (PaliGemmaProcessor + generate), the prefix mask, the two stages,
the adapter merge, rank mode, the image cache, and what is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import hf_answer
from PIL import Image

from edgevqa.errors import BundleError, InputError


@pytest.fixture(scope="module")
def hf(pg_lora):
    """What a user gets from the folder and the adapter with plain transformers + peft."""
    import torch
    from peft import PeftModel
    from transformers import PaliGemmaForConditionalGeneration, PaliGemmaProcessor

    from edgevqa.export.merge import read_run

    folder = read_run(pg_lora).base + "/model"
    proc = PaliGemmaProcessor.from_pretrained(folder)
    base = PaliGemmaForConditionalGeneration.from_pretrained(folder)
    model = PeftModel.from_pretrained(base, str(pg_lora / "adapter")).merge_and_unload().eval()
    torch.manual_seed(0)
    return proc, model


def test_runtime_answers_exactly_as_transformers_generate_on_the_merged_model(pg_bundle, hf, synth_data):
    from edgevqa.data.records import load_split
    from edgevqa.runtime import VQAPipeline

    proc, model = hf
    pipe = VQAPipeline.from_bundle(pg_bundle, precision="fp32")
    recs = load_split(synth_data, "test")[:12]
    for r in recs:
        image = Image.open(r.image_path(synth_data))
        assert pipe.ask(r.image_path(synth_data), r.question).token_ids == hf_answer(
            proc, model, image, r.question
        )
    fid = json.loads((pg_bundle / "fidelity.json").read_text())
    fp32 = fid["precisions"]["fp32"]
    assert fp32["answer_agreement"] == 1.0 and fp32["teacher_forced_top1"] == 1.0
    assert all(g["within_atol"] for g in fp32["graphs"].values())
    assert fid["merge"]["lora"] and fid["merge"]["identical_answers"] == fid["merge"]["probe_questions"]


def test_random_weights_answer_token_for_token_like_generate(tmp_path, synth_data):
    """A model with random weights answers with arbitrary tokens: the strictest parity check."""
    import torch
    from transformers import PaliGemmaForConditionalGeneration, PaliGemmaProcessor

    from edgevqa.config import ExportConfig
    from edgevqa.data.records import load_split
    from edgevqa.export import export
    from edgevqa.runtime import VQAPipeline
    from edgevqa.train.base import Loaded
    from edgevqa.train.families import paligemma as pg

    recs = load_split(synth_data, "train")
    tok = pg.build_tokenizer([r.question for r in recs] + [r.answer for r in recs], tmp_path / "tok")
    loaded = pg.arch("tiny-paligemma", tok)
    torch.manual_seed(0)
    for p in loaded.model.parameters():  # Gemma's norms start at zero: make every weight matter
        p.data.normal_(0, 0.5)
    pg.save_model_dir(loaded, tmp_path / "model")
    bundle = export(
        ExportConfig(
            run=str(tmp_path / "model"), out=str(tmp_path / "b"), precisions=["fp32"], validate_limit=8
        ),
        data=str(synth_data),
        progress=False,
    )
    proc = PaliGemmaProcessor.from_pretrained(tmp_path / "model")
    model = PaliGemmaForConditionalGeneration.from_pretrained(tmp_path / "model").eval()
    pipe = VQAPipeline.from_bundle(bundle)
    for r in load_split(synth_data, "test")[:6]:
        got = pipe.ask(r.image_path(synth_data), r.question).token_ids
        assert got == hf_answer(proc, model, Image.open(r.image_path(synth_data)), r.question)
        assert len(set(got)) > 1  # not a degenerate answer
    assert isinstance(loaded, Loaded)


def test_prompt_ids_and_pixels_equal_the_processor(pg_bundle, hf, tmp_path):
    from edgevqa.runtime import VQAPipeline
    from edgevqa.runtime.preprocess import preprocess

    proc, _ = hf
    pipe = VQAPipeline.from_bundle(pg_bundle)
    rng = np.random.default_rng(3)
    for size, mode in [((50, 40), "RGB"), ((33, 77), "L"), ((32, 32), "RGB"), ((300, 200), "L")]:
        arr = rng.integers(0, 256, (*size, 3) if mode == "RGB" else size, dtype=np.uint8)
        img = Image.fromarray(arr, mode=mode)
        for q in ("is there a lesion?", "Which SIDE is the lesion on", "how many lesions are there ?"):
            ref = proc(images=img, text="<image>answer en " + q, return_tensors="np")
            assert pipe.question_ids(q).tolist() == ref["input_ids"].tolist()
        got = preprocess(img, pipe.manifest.image)
        assert got.shape == ref["pixel_values"].shape
        assert np.abs(got - ref["pixel_values"]).max() == 0.0  # bit for bit


def test_the_prefix_attends_bidirectionally(pg_lora):
    """The prefill's mask is part of parity: a causal-only prefix gives other logits."""
    import torch

    from edgevqa.export.families import paligemma as xpg
    from edgevqa.export.merge import load_run

    loaded = load_run(pg_lora).loaded
    feeds = xpg.dummy_inputs(loaded.model, "decoder_first", batch=1, question=6, new=1)
    step = xpg.DecoderFirst(loaded.model).eval()
    with torch.inference_mode():
        bidi = step(**feeds)[0]
        causal = step(**{**feeds, "attention_bias": xpg.causal_bias(1, 7, 0)})[0]
    assert (bidi - causal).abs().max() > 1e-3


def test_gemma2_decoder_matches_transformers():
    """PaliGemma 2 (a Gemma 2 decoder: extra norms, query scale, soft-caps) through the same wrapper."""
    import torch
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration

    from edgevqa.export.families import paligemma as xpg

    cfg = PaliGemmaConfig(
        vision_config=dict(
            model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, image_size=32, patch_size=16, vision_use_head=False,
        ),
        text_config=dict(
            model_type="gemma2", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, vocab_size=64, query_pre_attn_scalar=16,
            attn_logit_softcapping=5.0, final_logit_softcapping=3.0, sliding_window=64,
            max_position_embeddings=64,
        ),
        image_token_index=63, projection_dim=32, vocab_size=64,
    )  # fmt: skip
    torch.manual_seed(0)
    model = PaliGemmaForConditionalGeneration(cfg).eval()
    for p in model.parameters():  # Gemma's norms start at zero: make every weight matter
        p.data.normal_(0, 0.2)
    ids = torch.tensor([[63] * 4 + [2, 10, 11, 12, 5, 7]])
    pixels = torch.randn(1, 3, 32, 32)
    types = torch.tensor([[0] * 8 + [1, 1]])
    with torch.inference_mode():
        ref = model(input_ids=ids, pixel_values=pixels, token_type_ids=types).logits
        prefill = xpg.prefill_inputs(model, ids[0, :8].tolist(), pixels[0].numpy())
        step = xpg.DecoderStep(model).eval()
        first, k, v = step(**prefill)
        emb = xpg.EmbedTokens(model)(ids[:, 8:])
        rest, _, _ = step(
            emb, xpg.causal_bias(1, 2, 8), torch.tensor([[9, 10]]), torch.tensor([[0, 1]]), k, v
        )
    assert (first[0, 0] - ref[0, 7]).abs().max() < 1e-4
    assert (rest[0] - ref[0, 8:]).abs().max() < 1e-4


def test_manifest_says_the_family_its_prompt_and_grouped_query_cache(pg_bundle):
    from edgevqa.bundle import load_manifest

    m = load_manifest(pg_bundle)
    assert m.family == "paligemma" and m.schema_version == 3
    assert m.family_config["prompt"] == "answer en {question}" and m.family_config["num_image_tokens"] == 4
    assert m.decoder.num_heads == 1  # key/value heads: the cache holds 1 of the 4 query heads
    assert m.text.eos == (1,)
    assert set(m.precisions) == {"fp32", "int8", "int4"}
    fid = json.loads((pg_bundle / "fidelity.json").read_text())
    for p in ("int8", "int4"):
        assert fid["precisions"][p]["teacher_forced_top1"] >= 0.9
        # the token-embedding table is stored in int8: a quarter of its fp32 bytes, rows dequantized
        table = pg_bundle / p / "embed_tokens.onnx"
        assert table.stat().st_size < 0.3 * (pg_bundle / "fp32" / "embed_tokens.onnx").stat().st_size
        import onnx

        assert "DequantizeLinear" in {n.op_type for n in onnx.load(str(table)).graph.node}


def test_follow_up_questions_reuse_the_image_and_rank_matches_pytorch(pg_bundle, hf, synth_data):
    import torch

    from edgevqa.data.records import load_split
    from edgevqa.runtime import VQAPipeline

    proc, model = hf
    pipe = VQAPipeline.from_bundle(pg_bundle, precision="fp32")
    r = load_split(synth_data, "test")[0]
    path = r.image_path(synth_data)
    first, second = pipe.ask_many(path, ["is there a lesion?", "which side is the lesion on?"])
    assert not first.image_cached and second.image_cached
    assert second.timings_ms["vision_ms"] == 0.0
    ranked = pipe.rank(path, "is there a lesion?", ("yes", "no"))
    for cand, score in ranked.scores.items():
        inputs = proc(images=Image.open(path), text="<image>answer en is there a lesion?", suffix=cand,
                      return_tensors="pt")  # fmt: skip
        with torch.inference_mode():
            logits = model(**{k: v for k, v in inputs.items() if k != "labels"}).logits[0, :-1]
        labels = inputs["labels"][0, 1:]
        keep = labels != -100
        logp = torch.log_softmax(logits[keep].double(), -1).gather(1, labels[keep][:, None]).sum().item()
        assert score == pytest.approx(logp, abs=1e-3)


def test_stages_train_what_the_papers_train(pg_base, pg_projector, pg_lora):
    from safetensors.torch import load_file

    a = load_file(str(pg_base / "model" / "model.safetensors"))
    b = load_file(str(pg_projector / "model" / "model.safetensors"))
    changed = {k for k in a if not np.array_equal(a[k].numpy(), b[k].numpy())}
    assert changed and all("multi_modal_projector" in k for k in changed)  # stage 1: projector only
    adapted = load_file(str(pg_lora / "adapter" / "adapter_model.safetensors"))
    assert any("vision_tower" in k for k in adapted) and any("language_model" in k for k in adapted)
    assert all(".self_attn." in k for k in adapted)  # stage 2: attention of both towers
    cfg = json.loads((pg_lora / "config.json").read_text())
    assert cfg["family"] == "paligemma" and cfg["lr_schedule"] == "constant" and cfg["weight_decay"] == 0.0


def test_refusals_are_one_line(pg_bundle, pg_lora, base_run, tmp_path, synth_data):
    from edgevqa.config import ExportConfig
    from edgevqa.export import export
    from edgevqa.runtime import VQAPipeline
    from edgevqa.train.families import paligemma as pg

    pipe = VQAPipeline.from_bundle(pg_bundle)
    with pytest.raises(InputError, match="takes at most 32"):
        pipe.ask(np.zeros((8, 8), np.uint8).tobytes(), "is " * 40)  # the prompt budget, before the image
    with pytest.raises(InputError, match="is a blip-vqa model, not PaliGemma"):
        pg.load_pretrained(str(base_run))
    with pytest.raises(InputError, match="made for another model"):  # a PaliGemma adapter on BLIP
        export(
            ExportConfig(
                run=str(base_run / "model"), adapter=str(pg_lora / "adapter"), out=str(tmp_path / "x")
            ),
            data=str(synth_data),
            progress=False,
        )
    assert not (tmp_path / "x").exists()
    from edgevqa.export import tensorrt

    with pytest.MonkeyPatch.context() as mp:  # a GPU machine: PaliGemma engines are refused, not built
        mp.setattr(tensorrt, "device_info", lambda: {"gpu": "stand-in"})
        with pytest.raises(InputError, match="TensorRT engines are not built for paligemma"):
            export(ExportConfig(run=str(pg_lora), out=str(tmp_path / "t"), trt=True), progress=False)
    assert not (tmp_path / "t").exists()
    m = json.loads((pg_bundle / "manifest.json").read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text(json.dumps({**m, "family": "llava"}))
    with pytest.raises(BundleError, match="'llava' is not supported"):
        VQAPipeline.from_bundle(bad, verify=False)


def test_full_size_archs_keep_their_own_vocabulary():
    """bench --arch builds a small tokenizer; the 257k/262k-token LM head must stay full size."""
    from edgevqa.train.families import paligemma as pg

    assert pg.arch_config("paligemma-small", vocab=1162).text_config.vocab_size == 262144
    assert pg.arch_config("paligemma-3b-224", vocab=1162).text_config.vocab_size == 257152
    assert pg.arch_config("tiny-paligemma", vocab=1162).text_config.vocab_size == 1162
    cfg = pg.arch_config("paligemma-small")
    assert (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2 == 196


def test_eval_of_a_run_and_its_bundle_sample_the_same_family(pg_lora, pg_bundle, synth_data, tmp_path):
    """`edgevqa eval` with sampling on a PaliGemma run (PyTorch generate) and bundle (runtime):
    top-k 1 sampling is greedy on both sides, so every sample is the greedy answer."""
    from edgevqa.eval.evaluate import EvalConfig, run_eval

    reports = {}
    for name, model in (("run", pg_lora), ("bundle", pg_bundle)):
        precision = "fp32" if name == "bundle" else None
        cfg = EvalConfig(
            model=str(model), data=str(synth_data), limit=6, samples=4, top_k=1, out=str(tmp_path / name),
            precision=precision,
        )  # fmt: skip
        reports[name] = run_eval(cfg, progress=False)
        preds = [json.loads(x) for x in (tmp_path / name / "predictions.jsonl").read_text().splitlines()]
        assert all(p["samples"] == [p["prediction"]] * 4 for p in preds), preds[:2]
    assert reports["run"]["scores"] == reports["bundle"]["scores"]


def test_int4_runs_prompts_on_int8s_decoder_and_answer_tokens_in_4_bits(pg_bundle, synth_data, tmp_path):
    """An int4 bundle's prefill is int8's decoder_step (stored once, checked by its sha256 for
    int4 too); its answer tokens go through its own 4-bit decoder_step."""
    import shutil

    from conftest import record_calls

    from edgevqa.bundle import load_manifest
    from edgevqa.data.records import load_split
    from edgevqa.runtime import VQAPipeline

    m = load_manifest(pg_bundle)
    assert m.precisions["int4"]["decoder_prefill"] == "int8/decoder_step.onnx"
    assert "decoder_prefill" not in m.precisions["int8"] and "decoder_prefill" not in m.precisions["fp32"]
    assert not (pg_bundle / "int4" / "decoder_prefill.onnx").exists()
    assert m.graphs["decoder_prefill"] == m.graphs["decoder_step"]
    fid = json.loads((pg_bundle / "fidelity.json").read_text())
    assert "decoder_prefill" in fid["precisions"]["int4"]["graphs"]  # compared with PyTorch's step

    r = load_split(synth_data, "test")[0]
    path = r.image_path(synth_data)
    pipe4, pipe8 = (VQAPipeline.from_bundle(pg_bundle, precision=p) for p in ("int4", "int8"))
    calls = record_calls(pipe4)
    pipe4.teacher_forced(path, r.question, [5, 6, 7])
    prompt = pipe4.question_ids(r.question).shape[1]
    decoder = [c for c in calls if c[0].startswith("decoder")]
    assert decoder == [("decoder_prefill", prompt), ("decoder_step", 2)]  # the ids before the last
    # the prompt's logits are int8's exactly (same image, table and prefill graph)
    logits = []
    for pipe in (pipe4, pipe8):
        first, state = pipe.model.start(pipe.encode_image(path).arrays, pipe.question_ids(r.question))
        logits.append(pipe.model.step(first, state)[0])
    np.testing.assert_array_equal(logits[0], logits[1])

    copy = tmp_path / "bundle"
    shutil.copytree(pg_bundle, copy)
    with open(copy / "int8" / "decoder_step.onnx", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(BundleError, match="int8/decoder_step.onnx"):
        VQAPipeline.from_bundle(copy, precision="int4")


def test_an_int4_bundle_without_int8_holds_its_own_int8_prefill_copy(pg_bundle, tmp_path):
    import shutil

    import onnx

    from edgevqa.export.exporter import prefill_files, quantize_graphs
    from edgevqa.families import registry

    spec = registry.get("paligemma")
    shutil.copytree(pg_bundle / "fp32", tmp_path / "fp32")
    quantize_graphs(spec, tmp_path, ["int4"])
    ops = {g: {n.op_type for n in onnx.load(str(tmp_path / "int4" / f"{g}.onnx")).graph.node}
           for g in ("decoder_step", "decoder_prefill")}  # fmt: skip
    assert "MatMulNBits" in ops["decoder_step"] and "MatMulInteger" not in ops["decoder_step"]
    assert "MatMulInteger" in ops["decoder_prefill"] and "MatMulNBits" not in ops["decoder_prefill"]
    assert prefill_files(spec, ["fp32", "int4"]) == {"int4": "int4/decoder_prefill.onnx"}
    assert prefill_files(spec, ["fp32", "int8", "int4"]) == {"int4": "int8/decoder_step.onnx"}
    assert prefill_files(spec, ["fp32", "int8"]) == {}
    assert prefill_files(registry.get("blip-vqa"), ["int8", "int4"]) == {}  # no prompt prefill there
    assert prefill_files(spec, ["fp32", "int8", "int4"], {}) == {}  # --int4-prefill int4


def test_int4_prefill_int4_keeps_the_bundle_in_4_bits(pg_lora, tmp_path):
    """`export --int4-prefill int4`: no int8 decoder in the bundle, prompts through the 4-bit one."""
    from conftest import record_calls

    from edgevqa.bundle import load_manifest
    from edgevqa.config import ExportConfig
    from edgevqa.data.records import load_split
    from edgevqa.export import export
    from edgevqa.export.merge import read_run
    from edgevqa.runtime import VQAPipeline

    out = tmp_path / "b"
    cfg = ExportConfig(run=str(pg_lora), out=str(out), precisions=["int4"], int4_prefill="int4",
                       validate_limit=4, force=True)  # fmt: skip
    export(cfg, progress=False)
    m = load_manifest(out)
    assert set(m.precisions["int4"]) == {"vision_encoder", "embed_tokens", "decoder_step"}
    assert "decoder_prefill" not in m.graphs and not (out / "int4" / "decoder_prefill.onnx").exists()
    pipe = VQAPipeline.from_bundle(out, precision="int4")
    calls = record_calls(pipe)
    data = Path(read_run(pg_lora).data)
    r = load_split(data, "test")[0]
    pipe.teacher_forced(r.image_path(data), r.question, [5, 6])
    assert [c[0] for c in calls if c[0].startswith("decoder")] == ["decoder_step", "decoder_step"]
    with pytest.raises(InputError, match="--int4-prefill"):
        ExportConfig(run="r", out="o", int4_prefill="int2")
