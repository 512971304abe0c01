"""torch.onnx export of one family graph from its spec (wrappers.py makes each traceable)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from edgevqa.export import wrappers
from edgevqa.export.specs import FamilySpec, GraphSpec

log = logging.getLogger("edgevqa.export")

_WRAPPERS = {
    ("blip-vqa", "vision_encoder"): wrappers.VisionEncoder,
    ("blip-vqa", "question_encoder"): wrappers.QuestionEncoder,
    ("blip-vqa", "decoder_step"): wrappers.DecoderStep,
    ("blip-vqa", "decoder_first"): wrappers.DecoderFirst,
}


def wrapper(family: str, graph: str, model: Any) -> torch.nn.Module:
    return _WRAPPERS[(family, graph)](model).eval()


def dummy_inputs(
    model: Any, graph: str, batch: int = 2, question: int = 7, past: int = 3, new: int = 1
) -> dict[str, torch.Tensor]:
    """Inputs of the right dtypes and shapes; sizes differ per axis so no axis is confused."""
    vc, tc = model.config.vision_config, model.config.text_config
    n_img = (vc.image_size // vc.patch_size) ** 2 + 1
    heads, layers = tc.num_attention_heads, tc.num_hidden_layers
    d = tc.hidden_size // heads
    g = torch.Generator().manual_seed(0)
    cross = torch.randn(layers, batch, heads, question, d, generator=g)
    image = torch.randn(layers, batch, heads, n_img, d, generator=g)
    ids = torch.randint(5, tc.vocab_size, (batch, question), generator=g)
    return {
        "vision_encoder": lambda: {
            "pixel_values": torch.randn(batch, 3, vc.image_size, vc.image_size, generator=g)
        },
        "question_encoder": lambda: {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "image_key": image,
            "image_value": image.flip(-1).contiguous(),
        },
        "decoder_step": lambda: {
            "input_ids": ids[:, :new],
            "past_key": torch.randn(layers, batch, heads, past, d, generator=g),
            "past_value": torch.randn(layers, batch, heads, past, d, generator=g),
            "cross_key": cross,
            "cross_value": cross.flip(-1).contiguous(),
        },
        "decoder_first": lambda: {
            "input_ids": ids[:, :new],
            "cross_key": cross,
            "cross_value": cross.flip(-1).contiguous(),
        },
    }[graph]()


def dynamic_shapes(g: GraphSpec) -> dict[str, dict[int, Any]]:
    dims: dict[str, Any] = {}
    out = {}
    for name, axes in g.inputs.items():
        out[name] = {ax: dims.setdefault(sym, torch.export.Dim.DYNAMIC) for ax, sym in axes.items()}
    return out


def export_graph(model: Any, spec: FamilySpec, graph: str, path: Path) -> Path:
    """Export ``graph`` of ``model`` to ``path`` (one self-contained .onnx file)."""
    g = spec.graph(graph)
    module = wrapper(spec.family, graph, model)
    args = dummy_inputs(model, graph, new=2)  # T>1 at trace time: the causal mask stays in the graph
    # torch.onnx warns per export that torchvision ops are not registered: noise for BLIP
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    quiet = io.StringIO()
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(quiet):
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            module,
            (),
            kwargs=args,
            dynamo=True,
            dynamic_shapes=dynamic_shapes(g),
            input_names=list(g.inputs),
            output_names=list(g.outputs),
            opset_version=spec.opset,
            external_data=False,
            verbose=False,
            optimize=True,
        )
        prog.save(str(path))
    strip_stack_traces(path)
    return path


def strip_stack_traces(path: Path) -> None:
    """Drop the exporter's per-node stack traces: they hold file paths of the exporting machine,
    which have no business in a bundle shipped to hospitals. Module scopes stay (the fallback
    report names layers with them)."""
    import onnx

    m = onnx.load(str(path))
    for node in m.graph.node:
        keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    onnx.save(m, str(path))
