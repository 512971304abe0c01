"""The one record type every dataset is read into, and its on-disk form.

A dataset directory holds one JSONL file per split (``train.jsonl``, ``val.jsonl``,
``test.jsonl``); each line is a :class:`VQARecord` whose ``image`` path is relative to the
directory. Loaders for public datasets (VQA-RAD, SLAKE, ...) produce the same records.

Example:
    >>> recs = load_split("data/synth", "test")  # doctest: +SKIP
    >>> recs[0].question, recs[0].answer          # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from edgevqa.errors import InputError

SPLITS = ("train", "val", "test")
ANSWER_TYPES = ("closed", "open")


@dataclass(frozen=True)
class VQARecord:
    image: str  # path relative to the dataset directory (or absolute)
    question: str
    answer: str
    answer_type: str  # "closed" (yes/no) or "open"
    category: str  # question category, e.g. "presence", "side", "modality"
    id: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def group(self) -> str:
        """The reporting group: answer type and category, e.g. ``closed/presence``."""
        return f"{self.answer_type}/{self.category}"

    def image_path(self, root: str | Path) -> Path:
        p = Path(self.image)
        return p if p.is_absolute() else Path(root) / p


def write_split(root: str | Path, split: str, records: list[VQARecord]) -> Path:
    """Write ``records`` to ``root/split.jsonl`` atomically."""
    from edgevqa import atomic

    path = Path(root) / f"{split}.jsonl"
    atomic.write_text(path, "".join(json.dumps(asdict(r), sort_keys=True) + "\n" for r in records))
    return path


def load_split(root: str | Path, split: str) -> list[VQARecord]:
    """Read ``root/split.jsonl``.

    Raises:
        InputError: the file is missing, or a line is not a valid record (the message cites the line).
    """
    path = Path(root) / f"{split}.jsonl"
    if not path.is_file():
        raise InputError(
            f"no {split} split in {root}: {path} not found (make one with `edgevqa data synth --out {root}`)"
        )
    records = []
    for n, rec in read_jsonl(path, lambda d: VQARecord(**d), "VQA record"):
        if not rec.question.strip() or not rec.answer.strip():
            raise InputError(f"{path}:{n}: empty question or answer")
        if rec.answer_type not in ANSWER_TYPES:
            raise InputError(
                f"{path}:{n}: answer_type must be one of {ANSWER_TYPES}, got {rec.answer_type!r}"
            )
        records.append(rec)
    return records


def load_optional_split(root: str | Path, split: str) -> list[VQARecord] | None:
    """``load_split``, or None when the folder has no such split. A split that is there but
    malformed is an error, never taken for absent (its report would silently disappear)."""
    return load_split(root, split) if (Path(root) / f"{split}.jsonl").is_file() else None


T = TypeVar("T")


def read_jsonl(path: Path, make: Callable[[dict[str, Any]], T], what: str) -> Iterator[tuple[int, T]]:
    """(line number, record) for every non-blank line of a JSONL file of records.

    Raises:
        InputError: a line is not JSON or not a ``what`` (the message cites the line).
    """
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = make(json.loads(line))
            except (json.JSONDecodeError, TypeError) as e:
                raise InputError(f"{path}:{n}: not a {what} ({e})") from None
            yield n, rec
