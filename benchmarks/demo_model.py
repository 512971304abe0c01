"""The demo model's test split: PyTorch vs every ONNX precision of a bundle, in one run.

Accuracy (exact match overall / closed / open / per category), agreement with PyTorch's answers,
latency per whole answer (p50 / p95 / mean / std), peak RSS per backend process, bytes on disk,
and the majority-answer baseline.

    edgevqa demo --workdir work/demo          # makes the bundle (or use your own)
    python benchmarks/demo_model.py --bundle work/demo/bundle --data work/demo/data

Prints the Markdown table; the very last line of stdout is the report as one compact JSON document.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgevqa.bench.runner import bench_bundle, markdown_table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=Path("work/demo/bundle"))
    ap.add_argument("--data", type=Path, default=Path("work/demo/data"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/demo"))
    args = ap.parse_args()
    report = bench_bundle(args.bundle, args.data, args.out)
    print(markdown_table(report))
    print(json.dumps(report, separators=(",", ":")))


if __name__ == "__main__":
    main()
