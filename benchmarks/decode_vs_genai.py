"""edgevqa's decode loop against onnxruntime-genai's generator on the same Gemma decoder weights and
precision, in one run: milliseconds per generated token after the same prefill.

Why: the decoder loop at one token per step is memory- and overhead-bound; onnxruntime-genai is
the reference implementation of such a loop on onnxruntime (its own graphs, a fused
GroupQueryAttention kernel, the KV cache kept in place). This measures how far edgevqa's loop
(two numpy-fed onnxruntime calls per token: the token embedding and the decoder step with the
stacked cache) is from it.

What runs: a PaliGemma architecture with random weights (``--arch``, default paligemma-small: a
Gemma decoder of Gemma-3-270M's size, 640 wide, 18 layers, grouped-query attention, 262k tokens);
its language model saved as a ``GemmaForCausalLM`` folder and built by
``python -m onnxruntime_genai.models.builder -p {fp32|int4} -e cpu``; the same weights exported by
edgevqa (decoder_step, embed_tokens; int4 = edgevqa's own quantizer). Both get the same prompt of
``--prompt`` token ids (PaliGemma 224 px: 256 image tokens + about 24 of text) and generate
``--tokens`` tokens greedily, EOS suppressed; each token's time is measured around one generator
step (genai: ``generate_next_token``; edgevqa: embed + decoder step + argmax), in separate
processes one after the other, ``--repeats`` answers each.

    pip install onnxruntime-genai     # not an edgevqa dependency
    python benchmarks/decode_vs_genai.py [--arch paligemma-small] [--precision int4]

Prints a Markdown table; the very last line of stdout is the report as one compact JSON document.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgevqa.bench.runner import cpu_words, latency_stats, machine


def build(arch: str, precision: str, work: Path) -> None:
    """The random-weight model, its LM as a GemmaForCausalLM folder, genai's build and ours."""
    build_ours(arch, precision, work)
    genai = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(work / "gemma")]
    genai += ["-o", str(work / "genai"), "-p", precision, "-e", "cpu", "-c", str(work / "genai-cache")]
    subprocess.run(genai, check=True, stdout=subprocess.DEVNULL)


def build_ours(arch: str, precision: str, work: Path, model: Any = None) -> None:
    """The random-weight PaliGemma ``arch`` (or ``model``, a PaliGemma given whole): its language
    model saved as a GemmaForCausalLM folder (``work/gemma``, what genai builds from) and exported
    by edgevqa (``work/ours``: embed_tokens and decoder_step at ``precision``), with the cache
    shape in ``work/shape.json``."""
    import torch
    from transformers import GemmaForCausalLM

    from edgevqa.export.families import paligemma as xpg
    from edgevqa.export.onnx import export_graph
    from edgevqa.export.quantize import QUANTIZERS
    from edgevqa.families import registry
    from edgevqa.train.families import paligemma as pg

    torch.manual_seed(0)
    tok = pg.build_tokenizer(["yes", "no", "left", "right"], work / "tokenizer")
    model = model if model is not None else pg.arch(arch, tok).model
    text = copy.deepcopy(model.config.text_config)
    # PaliGemma's Gemma attends bidirectionally over the prefix (transformers sets the flag on
    # its text config); the folder genai builds from is a plain causal LM, as genai runs it
    text.use_bidirectional_attention = False
    lm = GemmaForCausalLM(text).eval()
    lm.model.load_state_dict(model.model.language_model.state_dict())
    lm.lm_head.weight = lm.model.embed_tokens.weight
    lm.save_pretrained(work / "gemma", safe_serialization=True)
    tok.save_pretrained(work / "gemma")
    spec = registry.get("paligemma")
    fp32, ours = work / "fp32", work / "ours"
    fp32.mkdir()
    ours.mkdir()
    for g in ("embed_tokens", "decoder_step"):
        path = export_graph(model, spec, g, fp32 / f"{g}.onnx")
        if precision == "fp32":
            path.replace(ours / f"{g}.onnx")
        else:
            QUANTIZERS[precision](path, ours / f"{g}.onnx")
    (work / "shape.json").write_text(json.dumps(xpg.decoder_shape(model)))


def run_genai(work: Path, prompt: list[int], tokens: int, repeats: int) -> dict:
    import onnxruntime_genai as og

    model = og.Model(str(work / "genai"))
    times, ids = [], []
    for r in range(repeats + 1):  # the first answer warms up
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt) + tokens, min_length=len(prompt) + tokens)
        gen = og.Generator(model, params)
        gen.append_tokens(np.asarray(prompt, dtype=np.int32))  # the prefill
        out, ms = [], []
        for _ in range(tokens - 1):
            t = time.perf_counter()
            gen.generate_next_token()
            ms.append(1e3 * (time.perf_counter() - t))
            out.append(int(gen.get_next_tokens()[0]))
        if r:
            times += ms
            ids = out
    return {"ms_per_token": times, "token_ids": ids}


def run_ours(work: Path, prompt: list[int], tokens: int, repeats: int) -> dict:
    """edgevqa's decode step as the PaliGemma runtime runs it (runtime/families/prefix_lm.py:
    ``causal_bias``, ``run_step``), after a causal prefill of ``prompt`` (a text prompt, as genai's)."""
    import onnxruntime as ort

    from edgevqa.runtime.families.prefix_lm import causal_bias, run_step
    from edgevqa.runtime.session import session_options

    shape = json.loads((work / "shape.json").read_text())
    so = session_options(0, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, spin=True)
    sessions = {
        g: ort.InferenceSession(str(work / "ours" / f"{g}.onnx"), so, providers=["CPUExecutionProvider"])
        for g in ("embed_tokens", "decoder_step")
    }
    empty = np.zeros((shape["num_layers"], 1, shape["num_kv_heads"], 0, shape["head_dim"]), np.float32)

    def embed(ids: list[int]) -> np.ndarray:
        return sessions["embed_tokens"].run(None, {"input_ids": np.asarray([ids], np.int64)})[0]

    times, ids = [], []
    for r in range(repeats + 1):  # the first answer warms up
        t0 = len(prompt)
        pos = np.arange(1, t0 + 1)  # PaliGemma counts positions from 1
        logits, k, v = run_step(
            sessions, embed(prompt), causal_bias(1, t0, 0), pos, np.array([t0 - 1]), None, empty
        )
        nxt = int(logits[0, -1].argmax())
        out, ms = [nxt], []
        for _ in range(tokens - 1):
            t = time.perf_counter()
            past = k.shape[3]
            bias, pos = causal_bias(1, 1, past), np.array([past + 1])
            logits, k, v = run_step(sessions, embed([nxt]), bias, pos, np.zeros(1), (k, v), empty)
            nxt = int(logits[0, -1].argmax())
            ms.append(1e3 * (time.perf_counter() - t))
            out.append(nxt)
        if r:
            times += ms
            ids = out[1:]
    return {"ms_per_token": times, "token_ids": ids}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="paligemma-small")
    ap.add_argument("--precision", default="int4", choices=["fp32", "int4"])
    ap.add_argument("--prompt", type=int, default=280)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/decode-vs-genai"))
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)  # internal: WHICH WORK
    args = ap.parse_args()
    prompt = np.random.default_rng(0).integers(1200, 20000, args.prompt).tolist()
    if args.worker:
        which, work = args.worker
        fn = run_genai if which == "genai" else run_ours
        print(json.dumps(fn(Path(work), prompt, args.tokens, args.repeats)))
        return
    with tempfile.TemporaryDirectory(prefix="genai-") as tmp:
        work = Path(tmp)
        build(args.arch, args.precision, work)
        raw = {}
        for which in ("genai", "edgevqa"):  # each in its own process, one after the other
            cmd = [sys.executable, __file__, "--worker", which, str(work), "--prompt", str(args.prompt)]
            cmd += ["--tokens", str(args.tokens), "--repeats", str(args.repeats)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{which} worker failed:\n{done.stderr[-3000:]}")
            raw[which] = json.loads(done.stdout.strip().splitlines()[-1])
    stats = {k: latency_stats(v["ms_per_token"]) for k, v in raw.items()}
    same = np.mean([a == b for a, b in zip(raw["genai"]["token_ids"], raw["edgevqa"]["token_ids"])])
    report = {
        "arch": args.arch,
        "precision": args.precision,
        "prompt_tokens": args.prompt,
        "generated_tokens": args.tokens,
        "repeats": args.repeats,
        "ms_per_token": stats,
        "edgevqa_vs_genai_p50": stats["edgevqa"]["p50"] / stats["genai"]["p50"],
        "same_greedy_tokens": float(same),
        # random weights at full size tend to repeat one token: then "same" says little (the
        # loop's tokens are tested against transformers on a tiny model whose answers vary)
        "distinct_greedy_tokens": len(set(raw["edgevqa"]["token_ids"])),
        "machine": machine(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"decode ms per token, {args.arch} {args.precision}, prompt {args.prompt} tokens, "
        f"{args.tokens} generated, {args.repeats} answers ({cpu_words(report['machine'])})",
        "",
        "| loop | p50 | p95 | mean | std |",
        "|---|---|---|---|---|",
        *(
            f"| {k} | {s['p50']:.2f} | {s['p95']:.2f} | {s['mean']:.2f} | {s['std']:.2f} |"
            for k, s in stats.items()
        ),
        "",
        f"edgevqa / genai (p50): {report['edgevqa_vs_genai_p50']:.2f}x; same greedy tokens: {same:.0%} "
        f"({report['distinct_greedy_tokens']} distinct)",
    ]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps(report, separators=(",", ":")))


if __name__ == "__main__":
    main()
