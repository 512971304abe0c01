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
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgevqa.bench.runner import latency_stats, machine


def build(arch: str, precision: str, work: Path) -> None:
    """The random-weight model, its LM as a GemmaForCausalLM folder, genai's build and ours."""
    import torch
    from transformers import GemmaForCausalLM

    from edgevqa.export.families import paligemma as xpg
    from edgevqa.export.quantize import QUANTIZERS
    from edgevqa.families import registry
    from edgevqa.train.families import paligemma as pg

    torch.manual_seed(0)
    tok = pg.build_tokenizer(["yes", "no", "left", "right"], work / "tokenizer")
    model = pg.arch(arch, tok).model
    lm = GemmaForCausalLM(model.config.text_config).eval()
    lm.model.load_state_dict(model.model.language_model.state_dict())
    lm.lm_head.weight = lm.model.embed_tokens.weight
    lm.save_pretrained(work / "gemma", safe_serialization=True)
    tok.save_pretrained(work / "gemma")
    genai = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(work / "gemma")]
    genai += ["-o", str(work / "genai"), "-p", precision, "-e", "cpu", "-c", str(work / "genai-cache")]
    subprocess.run(genai, check=True, stdout=subprocess.DEVNULL)
    spec = registry.get("paligemma")
    fp32, ours = work / "fp32", work / "ours"
    fp32.mkdir()
    ours.mkdir()
    for g in ("embed_tokens", "decoder_step"):
        xpg_path = fp32 / f"{g}.onnx"
        from edgevqa.export.onnx import export_graph

        export_graph(model, spec, g, xpg_path)
        if precision == "fp32":
            xpg_path.replace(ours / f"{g}.onnx")
        else:
            QUANTIZERS[precision](xpg_path, ours / f"{g}.onnx")
    shape = xpg.decoder_shape(model)
    (work / "shape.json").write_text(json.dumps(shape))


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
    import onnxruntime as ort

    from edgevqa.runtime.families.paligemma import NEG
    from edgevqa.runtime.session import session_options

    shape = json.loads((work / "shape.json").read_text())
    so = session_options(0, ort.GraphOptimizationLevel.ORT_ENABLE_ALL, spin=True)
    embed, step = (
        ort.InferenceSession(str(work / "ours" / f"{g}.onnx"), so, providers=["CPUExecutionProvider"])
        for g in ("embed_tokens", "decoder_step")
    )
    empty = np.zeros((shape["num_layers"], 1, shape["num_kv_heads"], 0, shape["head_dim"]), np.float32)
    times, ids = [], []
    for r in range(repeats + 1):
        t0 = len(prompt)
        feed = {
            "inputs_embeds": embed.run(None, {"input_ids": np.asarray([prompt], np.int64)})[0],
            "attention_bias": np.where(np.tril(np.ones((t0, t0))) > 0, 0.0, NEG).astype(np.float32)[
                None, None
            ],
            "position_ids": np.arange(1, t0 + 1, dtype=np.int64)[None],
            "logit_positions": np.array([[t0 - 1]], np.int64),
            "past_key": empty,
            "past_value": empty,
        }
        logits, k, v = step.run(None, feed)  # the prefill (causal: a text prompt, as genai's)
        nxt = int(logits[0, -1].argmax())
        out, ms = [nxt], []
        for _ in range(tokens - 1):
            t = time.perf_counter()
            past = k.shape[3]
            feed = {
                "inputs_embeds": embed.run(None, {"input_ids": np.array([[nxt]], np.int64)})[0],
                "attention_bias": np.zeros((1, 1, 1, past + 1), np.float32),
                "position_ids": np.array([[past + 1]], np.int64),
                "logit_positions": np.zeros((1, 1), np.int64),
                "past_key": k,
                "past_value": v,
            }
            logits, k, v = step.run(None, feed)
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
        "machine": machine(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"decode ms per token, {args.arch} {args.precision}, prompt {args.prompt} tokens, "
        f"{args.tokens} generated, {args.repeats} answers ({report['machine'].get('cpu', '')})",
        "",
        "| loop | p50 | p95 | mean | std |",
        "|---|---|---|---|---|",
        *(
            f"| {k} | {s['p50']:.2f} | {s['p95']:.2f} | {s['mean']:.2f} | {s['std']:.2f} |"
            for k, s in stats.items()
        ),
        "",
        f"edgevqa / genai (p50): {report['edgevqa_vs_genai_p50']:.2f}x; same greedy tokens: {same:.0%}",
    ]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps(report, separators=(",", ":")))


if __name__ == "__main__":
    main()
