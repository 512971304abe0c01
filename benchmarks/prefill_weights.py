"""Which weights should a prompt's prefill run with on this CPU: int8 or int4? One decoder graph of a
full-size architecture (random weights) at both precisions, each of its uses in one answer timed.

Why: an int4 bundle runs its prompts through int8's decoder_step and its answer tokens through its
own 4-bit one (export/quantize.py: PREFILL_WEIGHTS), because a prefill multiplies hundreds of rows
by each weight (compute-bound: onnxruntime's int8 MatMulInteger beat its 4-bit MatMulNBits there on
the CPUs measured) while an answer token is one row (memory-bound: fewer bits win). This script
measures that trade on the machine it runs on, so the choice can be checked on any CPU.

What runs: ``--arch``'s decoder_step exported from the random-weight model, quantized by edgevqa's
int8 and int4 quantizers; for each decoder use of one answer (the family's ``floor_uses``: the
prefill of the image tokens and prompt, then one row per further token; PaliGemma's image tokens
are part of the prompt, the Q-Former family's queries a prefill of their own), the graph is run on
random inputs with the KV cache that use sees, ``--repeats`` times after a warm-up, on all cores.
The answer's decoder time per precision: each use's p50 times its calls, summed; "mixed" is the
prefills at int8 and the steps at int4 (what int4 bundles run).

    python benchmarks/prefill_weights.py [--arch paligemma-small] [--out DIR]

Writes ``report.json`` and ``report.md`` to ``--out`` (default
benchmarks/results/prefill-weights-ARCH) and prints the Markdown.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgevqa.bench.runner import cores_words, cpu_words, machine


def export_decoder(arch: str, work: Path) -> dict[str, Any]:
    """``work/{int8,int4}/decoder_step.onnx`` of the random-weight ``arch``; its decoder uses."""
    import torch

    from edgevqa.export.onnx import export_graph
    from edgevqa.export.quantize import QUANTIZERS
    from edgevqa.families import registry

    family = registry.family_of_arch(arch)
    train, export = registry.side(family, "train"), registry.side(family, "export")
    torch.manual_seed(0)
    loaded = train.arch(arch, train.arch_tokenizer(["yes", "no", "left", "right"], work / "tokenizer"))
    (work / "fp32").mkdir()
    fp32 = export_graph(
        loaded.model, registry.get(family), "decoder_step", work / "fp32" / "decoder_step.onnx"
    )
    for p in ("int8", "int4"):
        (work / p).mkdir()
        QUANTIZERS[p](fp32, work / p / "decoder_step.onnx")
    shape = export.decoder_shape(loaded.model)
    uses = [u for u in export.floor_uses(loaded.model.config, 12, 8) if u.graph == "decoder_step"]
    return {"shape": shape, "uses": uses}


def time_uses(path: Path, shape: dict[str, int], uses: list[Any], repeats: int) -> list[dict[str, float]]:
    """ms per call of each use: random embeddings of its rows on a cache of what came before it."""
    import onnxruntime as ort

    from edgevqa.runtime.families.prefix_lm import causal_bias
    from edgevqa.runtime.session import session_options

    so = session_options(0, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    layers, kv, hd = shape["num_layers"], shape["num_kv_heads"], shape["head_dim"]
    out, past = [], 0
    for u in uses:
        cache = rng.standard_normal((layers, 1, kv, past, hd), dtype=np.float32) * 0.1
        feed = {
            "inputs_embeds": rng.standard_normal((1, u.rows, shape["hidden_size"]), dtype=np.float32),
            "attention_bias": causal_bias(1, u.rows, past),
            "position_ids": np.arange(past, past + u.rows, dtype=np.int64)[None],
            "logit_positions": np.array([[u.rows - 1]], np.int64),
            "past_key": cache,
            "past_value": cache.copy(),
        }
        sess.run(None, feed)
        ms = []
        for _ in range(repeats):
            t = time.perf_counter()
            sess.run(None, feed)
            ms.append(1e3 * (time.perf_counter() - t))
        out.append({"p50": float(np.median(ms)), "min": float(np.min(ms)), "max": float(np.max(ms))})
        past += u.rows if u.prefill else 0
    return out


def report(arch: str, uses: list[Any], ms: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    rows = [
        {"use": u.name, "rows": u.rows, "calls": u.calls, "prefill": u.prefill, **{p: ms[p][i] for p in ms}}
        for i, u in enumerate(uses)
    ]

    def total(pick: Any) -> float:
        return sum(r[pick(r)]["p50"] * r["calls"] for r in rows)

    answer = {
        "int8": total(lambda r: "int8"),
        "int4": total(lambda r: "int4"),
        "mixed": total(lambda r: "int8" if r["prefill"] else "int4"),
    }
    return {"arch": arch, "machine": machine(), "uses": rows, "answer_decoder_ms": answer}


def markdown(rep: dict[str, Any]) -> str:
    lines = [
        f"# Prefill weights: {rep['arch']} on {cpu_words(rep['machine'])}, {cores_words(rep['machine'])}",
        "",
        f"onnxruntime {rep['machine']['onnxruntime']}; each use's p50 over the timed runs.",
        "",
        "| decoder use | rows | calls | int8 p50 ms | int4 p50 ms | int4 / int8 |",
        "|---|---|---|---|---|---|",
    ]
    for r in rep["uses"]:
        ratio = r["int4"]["p50"] / r["int8"]["p50"]
        lines.append(
            f"| {r['use']} | {r['rows']} | {r['calls']} | {r['int8']['p50']:.2f} | {r['int4']['p50']:.2f} | "
            f"{ratio:.2f} |"
        )
    a = rep["answer_decoder_ms"]
    lines += [
        "",
        f"One answer's decoder time (each use's p50 x calls): int8 {a['int8']:.1f} ms, "
        f"int4 {a['int4']:.1f} ms, prefills at int8 and steps at int4 (what an int4 bundle runs) "
        f"{a['mixed']:.1f} ms.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--arch", default="paligemma-small", help="paligemma-small, paligemma-3b-224, qformer-vitb-0.5b"
    )
    ap.add_argument("--out", default="")
    ap.add_argument("--repeats", type=int, default=10)
    args = ap.parse_args()
    out = Path(args.out or f"benchmarks/results/prefill-weights-{args.arch}")
    with tempfile.TemporaryDirectory(prefix="edgevqa-prefill-") as tmp:
        built = export_decoder(args.arch, Path(tmp))
        ms = {p: time_uses(Path(tmp) / p / "decoder_step.onnx", built["shape"], built["uses"], args.repeats)
              for p in ("int8", "int4")}  # fmt: skip
    rep = report(args.arch, built["uses"], ms)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(rep, indent=1))
    (out / "report.md").write_text(markdown(rep))
    print(markdown(rep))


if __name__ == "__main__":
    main()
