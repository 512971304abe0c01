"""Full-size BLIP VQA base (random weights) on this machine: PyTorch eager fp32 vs ONNX fp32 vs
ONNX int8, one image, a 12-token question, answers of exactly 8 tokens, each backend in its own
process, 10 timed answers after warm-up.

Why: accuracy needs trained weights, but speed and memory do not; this shows a user what the real
model costs on their own workstation before they train anything.

    python benchmarks/blip_base_cpu.py [--out benchmarks/results/blip-vqa-base] [--repeats 10]

Prints the Markdown table; the very last line of stdout is the report as one compact JSON document.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgevqa.bench.runner import bench_arch, markdown_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/blip-vqa-base"))
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--answer-tokens", type=int, default=8)
    args = ap.parse_args()
    report = bench_arch("blip-vqa-base", args.out, repeats=args.repeats, answer_tokens=args.answer_tokens)
    print(markdown_table(report))
    print(json.dumps(report, separators=(",", ":")))


if __name__ == "__main__":
    main()
