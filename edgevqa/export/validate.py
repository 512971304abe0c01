"""Exported graphs vs PyTorch: per-graph max abs diff on real inputs, then whole answers.

``compare_graphs`` feeds the same validation inputs (the family's ``graph_inputs``) to each torch
wrapper and its onnxruntime session (fp32 must stay within the spec's atol; lower precisions are
recorded). ``compare_answers`` runs the torch-free runtime on validation questions and compares
with transformers' generate.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from edgevqa.eval.metrics import agreement, record_accuracy
from edgevqa.export import onnx as export_onnx
from edgevqa.families.spec import PREFILL, FamilySpec
from edgevqa.train.base import Generated

log = logging.getLogger("edgevqa.export")


def compare_graphs(
    model: Any,
    spec: FamilySpec,
    sessions: dict[str, Any],
    feeds: dict[str, list[dict]],
) -> dict[str, dict[str, Any]]:
    """Max abs diff per graph output (worst over the inputs), torch wrapper vs onnxruntime."""
    report = {}
    # (name in the bundle, the graph it computes): a prompt copy (spec.PREFILL) is its step graph
    pairs = [(g.name, g) for g in spec.graphs] + [(PREFILL, g) for g in spec.graphs if g.prefills]
    for name, g in pairs:
        if name not in sessions:  # a graph this precision does not ship (decoder_first: TensorRT)
            continue
        module = export_onnx.wrapper(spec.family, g.name, model)
        worst = dict.fromkeys(g.outputs, 0.0)
        for feed in feeds[g.name]:
            with torch.inference_mode():
                ref = module(**feed)
            ref = ref if isinstance(ref, tuple) else (ref,)
            got = sessions[name].run(list(g.outputs), {k: v.numpy() for k, v in feed.items()})
            for out, r, o in zip(g.outputs, ref, got):
                if r.shape != o.shape:
                    raise AssertionError(f"{name}.{out}: shape {o.shape} != torch {tuple(r.shape)}")
                worst[out] = max(worst[out], float(np.abs(r.numpy() - o).max()))
        report[name] = {
            "max_abs_diff": worst,
            "atol": g.atol,
            "within_atol": all(v <= g.atol for v in worst.values()),
        }
    return report


def compare_answers(
    torch_out: Generated, runtime_ids: list[list[int]], runtime_texts: list[str], records: list[Any]
) -> dict[str, Any]:
    seq = sum(a == b for a, b in zip(torch_out.token_ids, runtime_ids)) / max(len(records), 1)
    return {
        "n": len(records),
        "answer_agreement": agreement(torch_out.texts, runtime_texts),
        "sequence_agreement": seq,
        "token_agreement": token_agreement(torch_out.token_ids, runtime_ids),
        "accuracy": record_accuracy(runtime_texts, records),
    }


def token_agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Fraction of generated positions (over the longer of each pair) with the same token."""
    same = total = 0
    for x, y in zip(a, b):
        n = max(len(x), len(y))
        same += sum(i < len(x) and i < len(y) and x[i] == y[i] for i in range(n))
        total += n
    return same / max(total, 1)
