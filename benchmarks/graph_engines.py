"""One graph of a full-size architecture in each engine this machine has: onnxruntime running the
bundle's fp32, dynamic int8 and static int8 (Q/DQ) graphs, and OpenVINO compiling the fp32 and the
Q/DQ graphs at its default inference precision and at f32. Same inputs, same threads, one process.

Why: ``bench --arch`` shows whole answers; this shows which engine runs the graph that dominates
them (blip-vqa-base's vision encoder: 577 tokens through 12 layers) fastest on this CPU, and how
far each moves the output from onnxruntime's fp32 (max |diff| / max |fp32|). OpenVINO runs
onnxruntime's dynamic int8 graphs (DynamicQuantizeLinear + MatMulInteger) without int8 kernels
(measured slower than fp32 on Zen 4), so it is given the Q/DQ graphs, which it runs with int8
matmuls.

What runs: ``--arch`` built with random weights and exported as ``bench --arch`` does; the
int8-static graphs calibrated on 8 random images asked the bench's question (bench/runner.py:
static_graphs); ``--graph``'s inputs recorded from the fp32 bundle answering the first of them.
Each engine: 2 warm-up runs, then ``--repeats`` timed ones; p50 and min.

    python benchmarks/graph_engines.py [--arch blip-vqa-base] [--graph vision_encoder] [--out DIR]

Writes ``report.json`` and ``report.md`` to ``--out`` (default
benchmarks/results/graph-engines-ARCH) and prints the Markdown.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgevqa.bench import floor
from edgevqa.bench.runner import cores_words, cpu_words, machine


def build(arch: str, work: Path, graph: str) -> tuple[Path, dict[str, np.ndarray]]:
    """The random-weight bundle (fp32, int8, int8-static) of ``arch``; one recorded feed of ``graph``."""
    from edgevqa.bench.runner import build_arch_bundle
    from edgevqa.data.synth import vocabulary
    from edgevqa.export.calibrate import record_feeds

    bundle = work / "bundle"
    image, question = build_arch_bundle(
        arch, work, work / "model", bundle, ("fp32", "int8", "int8-static"), list(vocabulary()), 12, 8
    )
    return bundle, record_feeds(bundle, [(image, question)])[graph][0]


def timed(run: Any, repeats: int) -> dict[str, float]:
    ms = floor.timed(run, repeats, warmup=2)
    return {"p50": float(np.median(ms)), "min": float(np.min(ms)), "n": repeats}


def engines(bundle: Path, graph_name: str, feed: dict[str, np.ndarray], repeats: int, threads: int) -> dict:
    import onnxruntime as ort

    from edgevqa.runtime.session import session_options

    rows: dict[str, dict[str, Any]] = {}
    outs: dict[str, np.ndarray] = {}
    so = session_options(threads, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    for p in ("fp32", "int8", "int8-static"):
        path = bundle / p / f"{graph_name}.onnx"
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        outs[f"onnxruntime {p}"] = sess.run(None, feed)[0]
        rows[f"onnxruntime {p}"] = timed(lambda s=sess: s.run(None, feed), repeats)
    if importlib.util.find_spec("openvino") is not None:
        from edgevqa.runtime.openvino import PRECISION_ENV, OpenVinoGraph

        for p in ("fp32", "int8-static"):
            for hint in ("default", "f32"):  # the runtime's own wrapper, as --backend openvino runs it
                os.environ.pop(PRECISION_ENV, None)
                if hint != "default":
                    os.environ[PRECISION_ENV] = hint
                graph = OpenVinoGraph(bundle / p / f"{graph_name}.onnx", threads)
                name = f"openvino {p} ({hint}: {graph.precision})"
                outs[name] = graph.run(None, feed)[0]
                rows[name] = timed(lambda g=graph: g.run(None, feed), repeats)
        os.environ.pop(PRECISION_ENV, None)
    ref = outs["onnxruntime fp32"]
    for name, r in rows.items():
        r["rel_diff_vs_fp32"] = float(np.abs(outs[name] - ref).max() / np.abs(ref).max())
    return rows


def markdown(report: dict[str, Any]) -> str:
    mach = report["machine"]
    lines = [
        f"{report['graph']} of {report['arch']} (random weights), one input, {report['threads']} threads; "
        f"{cpu_words(mach)}, {cores_words(mach)}, onnxruntime {mach['onnxruntime']}, "
        f"OpenVINO {report['openvino'] or 'not installed'}",
        "",
        "| engine and graph | p50 ms | min ms | vs onnxruntime int8 (p50) | max diff vs fp32 (relative) |",
        "|---|---|---|---|---|",
    ]
    base = report["rows"]["onnxruntime int8"]["p50"]
    for name, r in report["rows"].items():
        ratio, diff = base / r["p50"], r["rel_diff_vs_fp32"]
        lines.append(f"| {name} | {r['p50']:.1f} | {r['min']:.1f} | {ratio:.2f}x | {diff:.4f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="blip-vqa-base")
    ap.add_argument("--graph", default="vision_encoder")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=0, help="0: this process's cores")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    out = args.out or Path("benchmarks/results") / f"graph-engines-{args.arch}"
    mach = machine()
    threads = args.threads or mach["cores"]
    with tempfile.TemporaryDirectory(prefix=".graph-engines-") as tmp:
        bundle, feed = build(args.arch, Path(tmp), args.graph)
        rows = engines(bundle, args.graph, feed, args.repeats, threads)
    ov_version = None
    if importlib.util.find_spec("openvino") is not None:
        import openvino

        ov_version = openvino.__version__.split("-")[0]
    report = {
        "arch": args.arch,
        "graph": args.graph,
        "threads": threads,
        "repeats": args.repeats,
        "rows": rows,
        "machine": mach,
        "openvino": ov_version,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "report.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
