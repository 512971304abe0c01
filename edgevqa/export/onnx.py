"""torch.onnx export of one family graph from its spec (export/families/<family>.py makes it traceable)."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from edgevqa.export import onnxfile
from edgevqa.export.quantize import RESIDUAL_KEY
from edgevqa.families import registry
from edgevqa.families.spec import FamilySpec, GraphSpec

log = logging.getLogger("edgevqa.export")


def wrapper(family: str, graph: str, model: Any) -> torch.nn.Module:
    """The family's traceable module for ``graph`` (export/families/<family>.py: WRAPPERS)."""
    return registry.side(family, "export").WRAPPERS[graph](model).eval()


def dummy_inputs(family: str, model: Any, graph: str, **sizes: int) -> dict[str, torch.Tensor]:
    """The family's dummy inputs for ``graph`` (sizes: batch, question, past, new)."""
    return registry.side(family, "export").dummy_inputs(model, graph, **sizes)


def dynamic_shapes(g: GraphSpec) -> dict[str, dict[int, Any]]:
    dims: dict[str, Any] = {}
    out = {}
    for name, axes in g.inputs.items():
        out[name] = {ax: dims.setdefault(sym, torch.export.Dim.DYNAMIC) for ax, sym in axes.items()}
    return out


def export_graph(model: Any, spec: FamilySpec, graph: str, path: Path) -> Path:
    """Export ``graph`` of ``model`` to ``path`` (one .onnx file; its weights in ``path.data``
    beside it when they pass protobuf's 2 GB limit: export/onnxfile.py)."""
    g = spec.graph(graph)
    module = wrapper(spec.family, graph, model)
    # T>1 at trace time: the causal mask stays general; a family may trace at sizes of its own
    sizes = getattr(registry.side(spec.family, "export"), "TRACE_SIZES", {"new": 2})
    args = dummy_inputs(spec.family, model, graph, **sizes)
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
            verbose=False,
            optimize=True,
        )
        weights = prog.model.graph.initializers.values()
        big = sum(v.const_value.nbytes for v in weights if v.const_value is not None) > onnxfile.LIMIT
        prog.save(str(path), external_data=big)
    finish(path, {RESIDUAL_KEY: g.residual} if g.residual else {})
    return path


def finish(path: Path, metadata: dict[str, str]) -> None:
    """Drop the exporter's per-node stack traces: they hold file paths of the exporting machine,
    which have no business in a bundle shipped to hospitals. Module scopes stay (the fallback
    report names layers with them). Record ``metadata`` in the graph."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)  # external weights stay where they are
    for node in m.graph.node:
        keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    onnx.helper.set_model_props(m, {**{p.key: p.value for p in m.metadata_props}, **metadata})
    onnx.save(m, str(path))
