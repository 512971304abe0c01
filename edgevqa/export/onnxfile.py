"""ONNX files over protobuf's 2 GB limit: weights in one external-data file beside the graph.

A graph whose weights pass ``LIMIT`` (Gemma 2B's decoder: 10 GB in fp32) is written as
``name.onnx`` (the graph, a few MB) plus ``name.onnx.data`` (every weight, one file), the layout
torch.onnx and onnxruntime's quantizers write. onnxruntime reads the data file from the graph's
folder; the bundle's manifest checksums it like any other file. Small graphs stay one file.

Example:
    >>> save(model, Path("bundle/fp32/decoder_step.onnx"))  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# protobuf refuses to serialize a message of 2 GiB or more; leave room for the graph itself
LIMIT = 1800 * 1024 * 1024
# smaller tensors stay in the graph file (shapes, scales, constants the optimizer looks at)
INLINE_BYTES = 1024


def data_file(path: str | Path) -> Path:
    """Where ``path``'s external weights live when it has them."""
    return Path(f"{path}.data")


def weight_bytes(model: Any) -> int:
    """Bytes of ``model``'s initializers, loaded or external."""
    from onnx.external_data_helper import uses_external_data

    total = 0
    for t in model.graph.initializer:
        if uses_external_data(t):
            total += int({e.key: e.value for e in t.external_data}.get("length", 0))
        else:
            total += len(t.raw_data) or t.ByteSize()
    return total


def is_external(path: str | Path) -> bool:
    """Whether the graph at ``path`` keeps its weights in an external-data file."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    m = onnx.load(str(path), load_external_data=False)
    return any(uses_external_data(t) for t in m.graph.initializer)


def save(model: Any, path: str | Path, external: bool | None = None) -> Path:
    """Write ``model`` to ``path``; its weights go to ``data_file(path)`` when ``external`` (None:
    when they pass LIMIT). A stale data file of an earlier write is removed first, so the two files
    never disagree."""
    import onnx

    path = Path(path)
    data = data_file(path)
    if external is None:
        external = weight_bytes(model) > LIMIT
    if data.exists():
        data.unlink()
    if external:
        onnx.save_model(
            model,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=INLINE_BYTES,
            convert_attribute=True,
        )
    else:
        onnx.save_model(model, str(path))
    return path


def copy_data(src: str | Path, dst: str | Path) -> None:
    """Make ``src``'s external data readable beside ``dst`` (a graph written with the same tensor
    references in another folder). A copy: onnx refuses a data file with several hard links."""
    import shutil

    have, want = data_file(src), Path(dst).parent / data_file(src).name
    if have.exists() and not want.exists():
        shutil.copyfile(have, want)


def move(src: str | Path, dst: str | Path) -> Path:
    """Rename the graph at ``src`` to ``dst``, its external data with it (its tensors name the
    data file, so it keeps its name, in ``dst``'s folder)."""
    src, dst = Path(src), Path(dst)
    if data_file(src).exists():
        data_file(src).replace(dst.parent / data_file(src).name)
    return src.replace(dst)


def remove(path: str | Path) -> None:
    """Delete the graph at ``path`` and its external data."""
    Path(path).unlink(missing_ok=True)
    data_file(path).unlink(missing_ok=True)
