"""Image-caption pairs (ROCOv2), the input of :mod:`edgevqa.data.qa_from_captions`.

A caption directory mirrors a VQA one, with ``{split}.captions.jsonl`` instead of ``{split}.jsonl``
(so neither is mistaken for the other) and images relative to the directory.

Example:
    >>> recs = load_captions("data/rocov2", "train")  # doctest: +SKIP
    >>> recs[0].modality, recs[0].caption              # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgevqa.data.records import read_jsonl
from edgevqa.errors import InputError

SUFFIX = ".captions.jsonl"


@dataclass(frozen=True)
class CaptionRecord:
    image: str  # path relative to the dataset directory (or absolute)
    caption: str
    modality: str  # "ct", "mri" or "x-ray" (the caption's primary modality)
    id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def image_path(self, root: str | Path) -> Path:
        p = Path(self.image)
        return p if p.is_absolute() else Path(root) / p


def captions_path(root: str | Path, split: str) -> Path:
    return Path(root) / f"{split}{SUFFIX}"


def write_captions(root: str | Path, split: str, records: list[CaptionRecord]) -> Path:
    """Write ``records`` to ``root/{split}.captions.jsonl`` atomically."""
    from edgevqa import atomic

    path = captions_path(root, split)
    atomic.write_text(path, "".join(json.dumps(asdict(r), sort_keys=True) + "\n" for r in records))
    return path


def load_captions(root: str | Path, split: str) -> list[CaptionRecord]:
    """Read ``root/{split}.captions.jsonl``.

    Raises:
        InputError: the file is missing, or a line is not a caption record (the message cites the line).
    """
    path = captions_path(root, split)
    if not path.is_file():
        raise InputError(
            f"no {split} captions in {root}: {path} not found "
            f"(make them with `edgevqa data convert eltorio/ROCOv2-radiology --out {root}`)"
        )
    records = []
    for n, rec in read_jsonl(path, lambda d: CaptionRecord(**d), "caption record"):
        if not rec.caption.strip():
            raise InputError(f"{path}:{n}: empty caption")
        records.append(rec)
    return records


def load_optional_captions(root: str | Path, split: str) -> list[CaptionRecord] | None:
    """``load_captions``, or None when the folder has no such split; a malformed one is an error."""
    return load_captions(root, split) if captions_path(root, split).is_file() else None
