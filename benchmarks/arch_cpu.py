"""A full-size architecture (random weights) on this machine: PyTorch eager fp32 vs ONNX fp32 /
int8 / int4, one image, a 12-token question, answers of exactly 8 tokens, each backend in its own
process, 10 timed answers after warm-up; a further question about the same image; the matmul
floor of each precision beside each answer's own stages; and, with --compare (default both),
PyTorch bf16 autocast and OpenVINO compiling the bundle's fp32 graphs at its default precision
and at f32 (where OpenVINO is installed), with edgevqa's decode loop.

Why: accuracy needs trained weights, but speed and memory do not; this shows a user what the real
model costs on their own workstation before they train anything.

    python benchmarks/arch_cpu.py --arch blip-vqa-base [--out benchmarks/results/blip-vqa-base]
    python benchmarks/arch_cpu.py --arch paligemma-small [--out benchmarks/results/paligemma-small]
    python benchmarks/arch_cpu.py --arch qformer-vitb-0.5b [--out benchmarks/results/qformer-vitb-0.5b]

Prints the Markdown table; the very last line of stdout is the report as one compact JSON document.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgevqa.bench.runner import COMPARE, bench_arch, markdown_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--arch",
        default="blip-vqa-base",
        help="blip-vqa-base, paligemma-small, paligemma-3b-224, qformer-vitb-0.5b",
    )
    ap.add_argument("--out", type=Path, help="default: benchmarks/results/ARCH")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--answer-tokens", type=int, default=8)
    ap.add_argument(
        "--compare",
        default=",".join(COMPARE),
        help="torch-bf16,openvino (or '' for none); single OpenVINO rows by name: openvino-fp32 "
        "(its default precision), openvino-fp32-f32, openvino-int8-static",
    )
    ap.add_argument(
        "--precisions",
        default="fp32,int8,int4",
        help="edgevqa's precisions (fp32 always: the floors and calibration read its graphs; with "
        "OpenVINO installed, their +ov paths are added)",
    )
    args = ap.parse_args()
    out = args.out or Path("benchmarks/results") / args.arch
    compare = tuple(c for c in args.compare.split(",") if c)
    precisions = tuple(p for p in args.precisions.split(",") if p)
    report = bench_arch(
        args.arch,
        out,
        repeats=args.repeats,
        answer_tokens=args.answer_tokens,
        precisions=precisions,
        compare=compare,
    )
    print(markdown_table(report))
    print(json.dumps(report, separators=(",", ":")))


if __name__ == "__main__":
    main()
