"""One GEMM of BLIP's vision encoder (577 tokens x 768 -> 3072, the MLP's first layer), timed in
every implementation this machine has: onnxruntime fp32 and dynamic int8 (the kernels edgevqa's
bundles run), and PyTorch fp32, bf16, dynamic int8 on each quantized engine, and a bare int8 x int8
matmul (``torch._int_mm``, no quantization around it).

Why: it tells whether onnxruntime's int8 kernel leaves throughput on the table on this CPU, and
what int8 can gain over fp32 here at best. The matmul floor of ``edgevqa bench --arch`` builds on it.

    python benchmarks/gemm_peak.py [--out benchmarks/results/gemm-peak] [--repeats 30]

Writes report.json and report.md; prints the Markdown table, then the report as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import warnings
from pathlib import Path

import numpy as np

from edgevqa import atomic
from edgevqa.bench.floor import timed
from edgevqa.bench.runner import cpu_words, latency_stats, machine

M, K, N = 577, 768, 3072


def onnxruntime_gemms(w: np.ndarray, x: np.ndarray, repeats: int, threads: int) -> dict[str, list[float]]:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgevqa.export.quantize import quantize_int8

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [M, K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [M, N])],
        [numpy_helper.from_array(w, "w")],
    )
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "vision_encoder.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(fp32))
        int8 = quantize_int8(fp32, Path(tmp) / "int8.onnx")  # as the bundles' int8 precision
        for name, path in (("onnxruntime fp32", fp32), ("onnxruntime int8 (dynamic, as bundles)", int8)):
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.log_severity_level = 3
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            out[name] = timed(lambda s=sess: s.run(None, {"x": x}), repeats, warmup=5)
    return out


def torch_gemms(w: np.ndarray, x: np.ndarray, repeats: int, threads: int) -> dict[str, list[float]]:
    import torch

    torch.set_num_threads(threads)
    out = {}
    lin = torch.nn.Linear(K, N).eval()
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w.T.copy()))
    xt = torch.from_numpy(x)
    with torch.inference_mode():
        out["torch fp32"] = timed(lambda: lin(xt), repeats, warmup=5)
        lb, xb = torch.nn.Linear(K, N).to(torch.bfloat16).eval(), xt.to(torch.bfloat16)
        out["torch bf16"] = timed(lambda: lb(xb), repeats, warmup=5)
        for engine in torch.backends.quantized.supported_engines:
            if engine in ("none", "qnnpack"):  # qnnpack: the engine for ARM phones
                continue
            torch.backends.quantized.engine = engine
            with warnings.catch_warnings():  # the quantized-tensor API's deprecation notice
                warnings.simplefilter("ignore")
                q = torch.ao.quantization.quantize_dynamic(
                    torch.nn.Sequential(lin), {torch.nn.Linear}, torch.qint8
                )
            out[f"torch int8 dynamic ({engine})"] = timed(lambda q=q: q(xt), repeats, warmup=5)
        a = torch.randint(-128, 128, (M + (-M % 8), K), dtype=torch.int8)  # _int_mm wants rows % 8 == 0
        b = torch.randint(-128, 128, (K, N), dtype=torch.int8)
        out["torch._int_mm (bare int8 x int8)"] = timed(lambda: torch._int_mm(a, b), repeats, warmup=5)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/gemm-peak"))
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=0, help="0: every core")
    args = ap.parse_args()
    from edgevqa.runtime.session import default_threads

    threads = args.threads or default_threads()
    rng = np.random.default_rng(0)
    w = (0.02 * rng.standard_normal((K, N))).astype(np.float32)
    x = rng.standard_normal((M, K)).astype(np.float32)
    raw = onnxruntime_gemms(w, x, args.repeats, threads) | torch_gemms(w, x, args.repeats, threads)
    ops = 2 * M * K * N
    rows = {}
    for name, ms in raw.items():
        st = latency_stats(ms)
        rows[name] = {
            "ms": st,
            "g_ops_per_s_p50": ops / st["p50"] / 1e6,
            "g_ops_per_s_best": ops / min(ms) / 1e6,
        }
    report = {
        "shape": [M, K, N],
        "threads": threads,
        "repeats": args.repeats,
        "results": rows,
        "machine": machine(),
    }
    mach = report["machine"]
    table = "\n".join(
        [
            "| implementation | p50 ms | p95 ms | GOPS (p50) | GOPS (best) |",
            "|---|---|---|---|---|",
            *(
                f"| {n} | {r['ms']['p50']:.2f} | {r['ms']['p95']:.2f} | {r['g_ops_per_s_p50']:.0f} | "
                f"{r['g_ops_per_s_best']:.0f} |"
                for n, r in rows.items()
            ),
        ]
    )
    md = (
        f"# One {M}x{K}x{N} GEMM, every implementation\n\nMachine: {cpu_words(mach)}, {threads} threads, "
        f"torch {mach.get('torch')}, onnxruntime {mach.get('onnxruntime')}. {args.repeats} timed runs each "
        f"after 5 warm-up runs; GOPS = 2*M*K*N / time.\n\n{table}\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    atomic.write_json(args.out / "report.json", report)
    atomic.write_text(args.out / "report.md", md)
    print(table)
    print(json.dumps(report, separators=(",", ":")))


if __name__ == "__main__":
    main()
