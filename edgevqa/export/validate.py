"""Exported graphs vs PyTorch: per-graph max abs diff on real inputs, then whole answers.

``compare_graphs`` feeds the same validation inputs to each torch wrapper and its onnxruntime
session (fp32 must stay within the spec's atol; lower precisions are recorded). ``compare_answers``
runs the torch-free runtime on validation questions and compares with transformers' generate.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from edgevqa.export import onnx as export_onnx
from edgevqa.export.specs import FamilySpec
from edgevqa.metrics import agreement, record_accuracy
from edgevqa.train.data import Encoded, ImageCache
from edgevqa.train.infer import Generated

log = logging.getLogger("edgevqa.export")


def graph_inputs(model: Any, enc: Encoded, images: ImageCache, n: int, bos: int) -> dict[str, list[dict]]:
    """Real inputs for each graph, from the first ``n`` validation questions (batch 1 each)."""
    feeds: dict[str, list[dict]] = {
        "vision_encoder": [],
        "question_encoder": [],
        "decoder_step": [],
        "decoder_first": [],
    }
    vis, qen, dec = (
        export_onnx.wrapper("blip-vqa", g, model)
        for g in ("vision_encoder", "question_encoder", "decoder_step")
    )
    with torch.inference_mode():
        for i in range(min(n, len(enc.records))):
            px = torch.from_numpy(images.get(enc.image_paths[i]))[None]
            ids = torch.tensor([enc.question_ids[i]])
            ik, iv = vis(px)
            ck, cv = qen(ids, torch.ones_like(ids), ik, iv)
            first = torch.tensor([[bos]])
            empty = ck.new_zeros((*ck.shape[:3], 0, ck.shape[4]))
            _, pk, pv = dec(first, empty, empty, ck, cv)
            nxt = torch.tensor([enc.answer_ids[i][1:3] or [bos]])  # two teacher-forced tokens, past = 1
            feeds["vision_encoder"].append({"pixel_values": px})
            feeds["question_encoder"].append(
                {"input_ids": ids, "attention_mask": torch.ones_like(ids), "image_key": ik, "image_value": iv}
            )
            feeds["decoder_step"].append(
                {"input_ids": nxt, "past_key": pk, "past_value": pv, "cross_key": ck, "cross_value": cv}
            )
            feeds["decoder_first"].append({"input_ids": first, "cross_key": ck, "cross_value": cv})
    return feeds


def compare_graphs(
    model: Any,
    spec: FamilySpec,
    sessions: dict[str, Any],
    feeds: dict[str, list[dict]],
) -> dict[str, dict[str, Any]]:
    """Max abs diff per graph output (worst over the inputs), torch wrapper vs onnxruntime."""
    report = {}
    for g in spec.graphs:
        if g.name not in sessions:  # a graph this precision does not ship (decoder_first: TensorRT)
            continue
        module = export_onnx.wrapper(spec.family, g.name, model)
        worst = dict.fromkeys(g.outputs, 0.0)
        for feed in feeds[g.name]:
            with torch.inference_mode():
                ref = module(**feed)
            ref = ref if isinstance(ref, tuple) else (ref,)
            got = sessions[g.name].run(list(g.outputs), {k: v.numpy() for k, v in feed.items()})
            for name, r, o in zip(g.outputs, ref, got):
                if r.shape != o.shape:
                    raise AssertionError(f"{g.name}.{name}: shape {o.shape} != torch {tuple(r.shape)}")
                worst[name] = max(worst[name], float(np.abs(r.numpy() - o).max()))
        report[g.name] = {
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
