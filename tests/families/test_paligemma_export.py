"""PaliGemma's export side on tiny random models built from configs (no download): each wrapper
against the HF model (image features, spliced embeddings, teacher-forced logits, greedy answers
of ``generate``), the bidirectional prefix, and the exported graphs against the wrappers."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from edgevqa.errors import InputError
from edgevqa.export.families import paligemma as xpg
from edgevqa.families.paligemma import SPEC

IMAGE, EOS, BOS = 299, 1, 2
TEXT = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, head_dim=16,
    vocab_size=300, max_position_embeddings=128, pad_token_id=0, eos_token_id=EOS, bos_token_id=BOS,
)  # fmt: skip
GEMMA2 = dict(
    num_key_value_heads=2, query_pre_attn_scalar=24, attn_logit_softcapping=10.0,
    final_logit_softcapping=3.0, sliding_window=64,
)  # fmt: skip


def tiny(text_type: str = "gemma", **text: object):
    """A tiny PaliGemma: 4 image tokens, grouped-query attention; every weight random (Gemma's
    norms start at zero, which would hide a misplaced norm). Small token embeddings keep the
    residual stream from echoing the last token, so greedy answers vary."""
    from transformers import Gemma2Config, GemmaConfig, PaliGemmaConfig, SiglipVisionConfig
    from transformers import PaliGemmaForConditionalGeneration as PaliGemma

    vc = SiglipVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=16, vision_use_head=False,
    )  # fmt: skip
    if text_type == "gemma":
        tc = GemmaConfig(**{**TEXT, "num_key_value_heads": 1, **text})
    else:
        tc = Gemma2Config(**{**TEXT, **GEMMA2, **text})
    cfg = PaliGemmaConfig(vision_config=vc, text_config=tc, image_token_index=IMAGE, projection_dim=64)
    torch.manual_seed(0)
    model = PaliGemma(cfg).eval()
    for name, p in model.named_parameters():
        p.data.normal_(0, 0.05 if "embed_tokens" in name else 0.2)
    return model


@pytest.fixture(scope="module", params=["gemma", "gemma2"])
def model(request):
    return tiny(request.param)


@pytest.fixture(scope="module")
def gemma():
    return tiny("gemma")


def prompt(rng: np.random.Generator, words: int) -> list[int]:
    """The processor's layout: image placeholders, bos, the prompt text, "\\n" (here id 108)."""
    return [IMAGE] * 4 + [BOS] + rng.integers(3, 290, words).tolist() + [108]


def pixels(rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal((3, 32, 32)).astype(np.float32)


def steps(model, ids: list[int], t: int, k: torch.Tensor, v: torch.Tensor):
    """Feed ``ids`` one token per call on a cache of ``t`` positions: the logits of each call."""
    step, emb = xpg.DecoderStep(model).eval(), xpg.EmbedTokens(model)
    out = []
    for i, tok in enumerate(ids):
        past = t + i
        logits, k, v = step(
            emb(torch.tensor([[tok]])), xpg.causal_bias(1, 1, past), torch.tensor([[past + 1]]),
            torch.tensor([[0]]), k, v,
        )  # fmt: skip
        out.append(logits[0, 0])
    return torch.stack(out), k, v


# ---------------------------------------------------------------------------------------------
# wrappers vs the HF model


def test_image_features_and_spliced_embeddings_are_what_the_model_builds(model):
    rng = np.random.default_rng(0)
    ids, px = prompt(rng, 5), pixels(rng)
    seen = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True
    )
    try:
        with torch.inference_mode():
            image = xpg.VisionEncoder(model).eval()(torch.from_numpy(px)[None])
            ref = model.model.get_image_features(torch.from_numpy(px)[None]).pooler_output
            model(input_ids=torch.tensor([ids]), pixel_values=torch.from_numpy(px)[None])
    finally:
        hook.remove()
    assert image.shape == (1, 4, 64) and torch.equal(image, ref)
    got = xpg.prefill_inputs(model, ids, px)["inputs_embeds"]
    assert (got - seen["embeds"]).abs().max() < 1e-6
    scale = model.config.text_config.hidden_size**0.5  # Gemma scales text embeddings, not the image's
    text = xpg.EmbedTokens(model)(torch.tensor([ids[4:]]))
    assert torch.allclose(text, model.model.language_model.embed_tokens.weight[ids[4:]][None] * scale)


def test_prefill_and_steps_match_the_teacher_forced_forward(model):
    """Prefill logits at the last prompt position, then one cached step per answer token, against
    the HF forward over the whole sequence with token_type_ids (prompt 0, answer 1)."""
    rng = np.random.default_rng(1)
    for words in (3, 8):
        ids, px, answer = prompt(rng, words), pixels(rng), rng.integers(3, 290, 4).tolist()
        ref = xpg.reference_logits(model, ids, px, answer)
        pre = xpg.prefill_inputs(model, ids, px)
        with torch.inference_mode():
            first, k, v = xpg.DecoderStep(model).eval()(**pre)
            rest, k, _ = steps(model, answer[:-1], len(ids), k, v)
            # all of the answer in one call (rank mode): logits at every new position
            t, a = len(ids), len(answer) - 1
            emb = xpg.EmbedTokens(model)(torch.tensor([answer[:-1]]))
            block, _, _ = xpg.DecoderStep(model).eval()(
                emb, xpg.causal_bias(1, a, t), torch.arange(t + 1, t + a + 1)[None], torch.arange(a)[None],
                *xpg.DecoderStep(model).eval()(**pre)[1:],
            )  # fmt: skip
        assert ref.shape == (4, 300)
        assert (first[0, 0] - ref[0]).abs().max() < 1e-4
        assert (rest - ref[1:]).abs().max() < 1e-4
        assert (block[0] - ref[1:]).abs().max() < 1e-4
        assert k.shape == (2, 1, model.config.text_config.num_key_value_heads, t + a, 16)


def test_greedy_answers_from_the_wrappers_equal_generate(model):
    rng, answers = np.random.default_rng(2), []
    for words in (2, 5, 9):
        ids, px = prompt(rng, words), pixels(rng)
        x = torch.tensor([ids])
        with torch.inference_mode():
            out = model.generate(
                input_ids=x, pixel_values=torch.from_numpy(px)[None], attention_mask=torch.ones_like(x),
                token_type_ids=torch.zeros_like(x), max_new_tokens=6, do_sample=False,
            )  # fmt: skip
            ref = out[0, len(ids) :].tolist()
            pre = xpg.prefill_inputs(model, ids, px)
            logits, k, v = xpg.DecoderStep(model).eval()(**pre)
            got = [int(logits[0, -1].argmax())]
            while len(got) < 6 and got[-1] != EOS:
                logits, k, v = steps(model, got[-1:], len(ids) + len(got) - 1, k, v)
                got.append(int(logits[-1].argmax()))
        assert got == ref[: len(got)] and (len(got) == 6 or ref[len(got) - 1] == EOS)
        answers.append(got)
    assert len({tuple(a) for a in answers}) == 3 and max(len(set(a)) for a in answers) >= 4  # not degenerate


def test_the_prefix_attends_bidirectionally(model):
    """A causal-only prefill answers differently. The same causal bias reproduces HF with
    token_type_ids 1 everywhere (all of it a causal suffix), so the difference is the mask and
    nothing else. (Without token_type_ids transformers 5.24 attends bidirectionally over the whole
    sequence: PaliGemmaConfig sets use_bidirectional_attention; references must pass them.)"""
    rng = np.random.default_rng(3)
    ids, px = prompt(rng, 6), pixels(rng)
    pre = xpg.prefill_inputs(model, ids, px)
    causal = {**pre, "attention_bias": xpg.causal_bias(1, len(ids), 0)}
    x, image = torch.tensor([ids]), torch.from_numpy(px)[None]
    with torch.inference_mode():
        bidi = xpg.DecoderStep(model).eval()(**pre)[0][0, 0]
        cau = xpg.DecoderStep(model).eval()(**causal)[0][0, 0]
        hf_causal = model(input_ids=x, pixel_values=image, token_type_ids=torch.ones_like(x)).logits[0, -1]
    assert (bidi - cau).abs().max() > 1e-2
    assert (cau - hf_causal).abs().max() < 1e-4


def test_gemma2_soft_caps_and_scale_are_in_play():
    """The Gemma 2 parity above would hold by chance if the caps never bit: without either one
    (or with Gemma's 1/sqrt(head_dim) query scale) the logits move."""
    model = tiny("gemma2")
    rng = np.random.default_rng(6)
    pre = xpg.prefill_inputs(model, prompt(rng, 5), pixels(rng))
    step = xpg.DecoderStep(model).eval()
    attn = [layer.self_attn for layer in model.model.language_model.layers]
    with torch.inference_mode():
        ref = step(**pre)[0]
        step.final_cap = None
        assert (step(**pre)[0] - ref).abs().max() > 1e-2
        step.final_cap = model.config.text_config.final_logit_softcapping
        for a in attn:
            a.attn_logit_softcapping = None
        assert (step(**pre)[0] - ref).abs().max() > 1e-3
        for a in attn:
            a.attn_logit_softcapping, a.scaling = 10.0, 16**-0.5
        assert (step(**pre)[0] - ref).abs().max() > 1e-3


def test_an_image_token_past_the_vocabulary_embeds_as_id_0():
    """PaliGemma's checkpoints put <image> inside the vocabulary, but the model also handles one past
    it (as id 0): the spliced embeddings still equal the model's."""
    model = tiny("gemma", vocab_size=IMAGE)  # ids 0..298: 299 is out of range
    rng = np.random.default_rng(7)
    ids, px = prompt(rng, 4), pixels(rng)
    seen = {}
    hook = model.model.language_model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.update(embeds=kwargs["inputs_embeds"]), with_kwargs=True
    )
    with torch.inference_mode():
        model(input_ids=torch.tensor([ids]), pixel_values=torch.from_numpy(px)[None])
    hook.remove()
    embed = xpg.EmbedTokens(model)
    assert torch.equal(embed(torch.tensor([[IMAGE, 5]])), embed(torch.tensor([[0, 5]])))
    assert (xpg.prefill_inputs(model, ids, px)["inputs_embeds"] - seen["embeds"]).abs().max() < 1e-6


def test_graph_inputs_are_a_prefill_and_a_step_on_its_cache(gemma):
    rng = np.random.default_rng(4)
    prompts, images = [prompt(rng, 3), prompt(rng, 5), prompt(rng, 4)], [pixels(rng) for _ in range(3)]
    feeds = xpg.graph_inputs(gemma, prompts, images, n=2)
    assert {g: len(f) for g, f in feeds.items()} == {
        "vision_encoder": 2, "embed_tokens": 2, "decoder_first": 2, "decoder_step": 4,
    }  # fmt: skip
    for name, feed in [*((g, f[0]) for g, f in feeds.items()), ("decoder_step", feeds["decoder_step"][1])]:
        assert set(feed) == set(SPEC.graph(name).inputs)
    prefill, step = feeds["decoder_step"][:2]
    assert prefill["past_key"].shape[3] == 0 and prefill["position_ids"].tolist() == [list(range(1, 10))]
    assert step["past_key"].shape[3] == 9 and step["position_ids"].tolist() == [[10]]
    assert (prefill["attention_bias"] == 0).all()
    assert IMAGE not in feeds["embed_tokens"][0]["input_ids"][0].tolist()
    # the step continues the prefill: its logits are HF's for the greedy token
    nxt = int(xpg.DecoderStep(gemma).eval()(**prefill)[0][0, 0].argmax())
    ref = xpg.reference_logits(gemma, prompts[0], images[0], [nxt, 5])
    assert (xpg.DecoderStep(gemma).eval()(**step)[0][0, 0] - ref[1]).abs().max() < 1e-4
    # the exporter's call: (loaded, encoded questions, image cache) gives the same feeds
    from edgevqa.train.base import Loaded

    enc = SimpleNamespace(prompt_ids=prompts, image_paths=[0, 1, 2])
    cache = SimpleNamespace(get=lambda i: images[i])
    again = xpg.graph_inputs(Loaded(gemma, None, None, "tiny", "paligemma"), enc, cache, n=2)
    assert torch.equal(again["decoder_step"][1]["past_key"], step["past_key"])


def test_unsupported_text_models_are_refused():
    cfg = SimpleNamespace(model_type="gemma3_text")
    with pytest.raises(InputError, match="'gemma3_text' text model is not exported"):
        xpg.check_text_model(cfg, 10)
    short = tiny("gemma2", sliding_window=16)  # sliding layers would hide keys of a 22-token answer
    xpg.DecoderStep(short)  # the image and bos fit
    with pytest.raises(InputError, match="sliding window \\(16 tokens\\) is shorter than the 22"):
        xpg.check_text_model(short.config.text_config, 22)
    xpg.check_text_model(short.config.text_config, 16)


def test_decoder_shape(gemma):
    assert xpg.decoder_shape(gemma) == {
        "num_layers": 2, "num_kv_heads": 1, "head_dim": 16, "hidden_size": 64, "vocab_size": 300,
        "num_image_tokens": 4,
    }  # fmt: skip


# ---------------------------------------------------------------------------------------------
# ONNX


def onnx_dims(value) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


@pytest.fixture(scope="module")
def exported(gemma, tmp_path_factory):
    out = tmp_path_factory.mktemp("pg-onnx")
    return {g.name: xpg.export_graph(gemma, g.name, out / f"{g.name}.onnx") for g in SPEC.graphs}


SIZES = [(1, 5, 0, 1), (2, 3, 2, 3), (4, 9, 7, 1)]  # none is the traced size (3, 6, 5, 4)


@pytest.mark.parametrize("graph", [g.name for g in SPEC.graphs])
def test_exported_graph_matches_its_wrapper_and_the_spec(gemma, exported, graph):
    import onnx
    import onnxruntime as ort

    g = SPEC.graph(graph)
    m = onnx.load(str(exported[graph]))
    assert [i.name for i in m.graph.input] == list(g.inputs)
    assert [o.name for o in m.graph.output] == list(g.outputs)
    axes = {**g.inputs, **g.outputs}
    for value in [*m.graph.input, *m.graph.output]:  # symbolic wherever the spec's axes are dynamic
        dims = onnx_dims(value)
        assert all(isinstance(dims[ax], str) for ax in axes[value.name]), (value.name, dims)
    assert not any(p.key == "pkg.torch.onnx.stack_trace" for n in m.graph.node for p in n.metadata_props)
    if graph.startswith("decoder"):  # grouped-query cache: 1 KV head of 4; logits over the vocabulary
        outs = {o.name: onnx_dims(o) for o in m.graph.output}
        assert outs["present_key"][0] == 2 and outs["present_key"][2] == 1 and outs["present_key"][4] == 16
        assert outs["logits"][2] == 300
    sess = ort.InferenceSession(str(exported[graph]), providers=["CPUExecutionProvider"])
    module = xpg.WRAPPERS[graph](gemma).eval()
    for batch, question, past, new in SIZES:
        feed = xpg.dummy_inputs(gemma, graph, batch=batch, question=question, past=past, new=new)
        with torch.inference_mode():
            ref = module(**feed)
        ref = ref if isinstance(ref, tuple) else (ref,)
        got = sess.run(list(g.outputs), {k: v.numpy() for k, v in feed.items()})
        for r, o in zip(ref, got):
            assert r.shape == o.shape
            assert np.abs(r.numpy() - o).max() <= g.atol
    if graph == "decoder_step":
        assert got[1].shape == (2, 4, 1, 8, 16)  # [layers, batch, kv heads, past + new, head_dim]


def test_exported_graphs_on_the_real_validation_inputs(gemma, exported):
    """What the exporter's gate feeds: the prefill with an empty cache (P = 0) and a step on it."""
    import onnxruntime as ort

    rng = np.random.default_rng(5)
    feeds = xpg.graph_inputs(gemma, [prompt(rng, 4), prompt(rng, 7)], [pixels(rng), pixels(rng)])
    for name, path in exported.items():
        g, sess = SPEC.graph(name), ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        module = xpg.WRAPPERS[name](gemma).eval()
        for feed in feeds[name]:
            with torch.inference_mode():
                ref = module(**feed)
            ref = ref if isinstance(ref, tuple) else (ref,)
            got = sess.run(list(g.outputs), {k: v.numpy() for k, v in feed.items()})
            assert max(np.abs(r.numpy() - o).max() for r, o in zip(ref, got)) <= g.atol


def test_the_decoder_graph_is_onnxruntimes_fused_kernels(gemma, exported, tmp_path):
    """A decode step on a CPU costs its node count and its copies of the cache: after
    onnxruntime's optimizer every RMSNorm is one SimplifiedLayerNormalization, the tanh GELU one
    Gelu node (opset 20), and the one key-value head is never expanded to the 4 query heads."""
    from collections import Counter

    import onnx
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(exported["decoder_step"]), so, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)
    layers = gemma.config.text_config.num_hidden_layers
    assert ops["SimplifiedLayerNormalization"] == 2 * layers + 1  # two per layer and the final one
    assert ops["Gelu"] == layers and ops["Tanh"] == 0 and ops["Pow"] == 0
    assert ops["Expand"] <= 1  # the picked positions' gather index, not the cache


def test_rms_norms_are_rewritten_as_the_fusable_form_by_what_they_compute():
    from transformers.models.gemma.modeling_gemma import GemmaRMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from edgevqa.export.causal_lm import RMSNorm, fusable_norm

    x = torch.randn(3, 5, 16)
    for norm, scale in (
        (GemmaRMSNorm(16, eps=1e-6), lambda w: 1 + w),
        (LlamaRMSNorm(16, eps=1e-5), lambda w: w),
    ):
        torch.nn.init.normal_(norm.weight)
        got = fusable_norm(norm)
        assert isinstance(got, RMSNorm) and torch.equal(got.scale, scale(norm.weight.detach()))
        assert got.eps == (getattr(norm, "eps", None) or norm.variance_epsilon)
        torch.testing.assert_close(got(x), norm(x), rtol=1e-5, atol=1e-6)
    layer_norm = torch.nn.LayerNorm(16)
    assert fusable_norm(layer_norm) is layer_norm  # not an RMSNorm: left as it is


def test_gemma2_decoder_exports(tmp_path):
    """Soft-caps and the extra norms survive the export (one graph: the others are Gemma's)."""
    import onnxruntime as ort

    model = tiny("gemma2")
    path = xpg.export_graph(model, "decoder_step", tmp_path / "step.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = xpg.dummy_inputs(model, "decoder_step", batch=1, past=6, new=2)
    with torch.inference_mode():
        ref = xpg.DecoderStep(model).eval()(**feed)
    got = sess.run(None, {k: v.numpy() for k, v in feed.items()})
    assert got[1].shape == (2, 1, 2, 8, 16)
    assert max(np.abs(r.numpy() - o).max() for r, o in zip(ref, got)) <= SPEC.graph("decoder_step").atol


def test_fp16_keeps_gemmas_residual_stream_in_fp32(gemma, exported, tmp_path):
    """Gemma's residual stream grows past fp16's 65504: the fp16 graph keeps it, its additions and
    its readers (the norms' square and x * rsqrt) in fp32, and answers a stream of 1e5 as fp32
    does. Without the export's mark the same conversion overflows: the test can fail."""
    import onnx
    import onnxruntime as ort

    from edgevqa.export.quantize import RESIDUAL_KEY, convert_fp16

    src = exported["decoder_step"]
    assert {p.key: p.value for p in onnx.load(str(src)).metadata_props}[RESIDUAL_KEY] == "inputs_embeds"
    feed = {
        k: v.numpy()
        for k, v in xpg.dummy_inputs(gemma, "decoder_step", batch=1, question=4, past=2, new=3).items()
    }
    feed["inputs_embeds"] = feed["inputs_embeds"] / np.abs(feed["inputs_embeds"]).max() * 1e5

    def logits(path) -> np.ndarray:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], feed)[0]

    ref = logits(src)
    (tmp_path / "kept").mkdir()
    got = logits(convert_fp16(src, tmp_path / "kept" / "decoder_step.onnx"))
    assert np.isfinite(got).all()
    assert np.abs(got - ref).max() <= 0.02 * np.abs(ref).max()
    unmarked = onnx.load(str(src))
    del unmarked.metadata_props[:]
    (tmp_path / "unmarked").mkdir()
    onnx.save(unmarked, str(tmp_path / "unmarked" / "decoder_step.onnx"))
    bad = logits(convert_fp16(tmp_path / "unmarked" / "decoder_step.onnx", tmp_path / "bad.onnx"))
    assert not np.isfinite(bad).all() or np.abs(bad - ref).max() > 0.1 * np.abs(ref).max()


def test_the_decode_benchmark_runs_the_runtimes_step_and_decodes_as_the_saved_gemma(tmp_path):
    """benchmarks/decode_vs_genai.py's edgevqa side (genai itself is not installed here): the
    folder it hands genai is a GemmaForCausalLM with the model's weights, and the runtime's step
    on the exported graphs picks that folder's greedy tokens after the same prompt."""
    from conftest import benchmark_script
    from transformers import GemmaForCausalLM

    script = benchmark_script("decode_vs_genai")
    script.build_ours("tiny-paligemma", "fp32", tmp_path, model=tiny("gemma"))  # greedy answers vary
    lm = GemmaForCausalLM.from_pretrained(tmp_path / "gemma").eval()
    prompt = np.random.default_rng(1).integers(3, 290, 9).tolist()
    ours = script.run_ours(tmp_path, prompt, tokens=6, repeats=1)
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(6):  # greedy, no EOS suppression: as the benchmark's loops
            ids.append(int(lm(torch.tensor([ids])).logits[0, -1].argmax()))
    assert ours["token_ids"] == ids[len(prompt) + 1 :]  # the benchmark times the steps after the prefill's
    assert len(set(ours["token_ids"])) > 1  # not an echo of one token, which any loop would match
    assert len(ours["ms_per_token"]) == 5 and all(ms > 0 for ms in ours["ms_per_token"])
