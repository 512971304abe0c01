"""VQA-RAD and MedPix-ShortQA: Hugging Face parquet shards of (image, question, answer) rows.

``flaviagiammarino/vqa-rad``: ``data/train-00000-of-00001-*.parquet`` and ``data/test-...``, columns
``image`` (the datasets library's struct ``{bytes, path}``), ``question``, ``answer``. It has no val
split (the loader carves one from train) and no answer type, so closed means a yes/no answer. Its
images repeat across rows, and across train and test: the loader groups rows by image content.

``adishourya/MEDPIX-ShortQA``: the same shape, with capitalised split names (``Train``, ``Valid``,
``Test``), which is also how the two are told apart. Any other scalar column (ids, modality, ...)
is kept in ``meta``. Every question gets the category ``general``: neither set labels one.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from edgevqa.data.records import VQARecord
from edgevqa.data.sources.common import (
    Item,
    LoadOptions,
    answer_type,
    column,
    image_bytes,
    parquet_columns,
    parquet_files,
    parquet_rows,
    split_of,
    text,
)
from edgevqa.errors import InputError
from edgevqa.eval.metrics import normalize_answer

_CAPITALISED = re.compile(r"(?:Train|Valid|Validation|Test)(?![a-z])")  # case-sensitive on purpose


def _is_vqa(path: Path) -> bool:
    cols = parquet_columns(path)
    return all(column(cols, c) for c in ("image", "question", "answer"))


def _capitalised(files: list[Path]) -> bool:
    return any(_CAPITALISED.match(p.name) or _CAPITALISED.match(p.parent.name) for p in files)


def detect_vqa_rad(root: Path) -> bool:
    files = parquet_files(root)
    return bool(files) and not _capitalised(files) and _is_vqa(files[0])


def detect_medpix(root: Path) -> bool:
    files = parquet_files(root)
    return bool(files) and _capitalised(files) and _is_vqa(files[0])


def read_vqa_rad(root: Path, opts: LoadOptions) -> Iterator[Item]:
    return _read(root, "vqa-rad")


def read_medpix(root: Path, opts: LoadOptions) -> Iterator[Item]:
    return _read(root, "medpix")


def _read(root: Path, name: str) -> Iterator[Item]:
    files = parquet_files(root)
    if not files:
        raise InputError(f"no parquet files under {root} (expected data/train-00000-of-00001.parquet, ...)")
    counter: Counter[str] = Counter()
    for path in files:
        split = split_of(path)
        cols = parquet_columns(path)
        img, q, a = (column(cols, c) for c in ("image", "question", "answer"))
        if not (img and q and a):
            raise InputError(f"{path}: expected the columns image, question and answer; found {cols}")
        extra = [c for c in cols if c not in (img, q, a)]
        rel = path.relative_to(root).as_posix()
        for n, row in enumerate(parquet_rows(path), 1):
            counter[split] += 1
            answer = text(row[a])
            meta = {c: row[c] for c in extra if isinstance(row[c], str | int | float | bool)}
            if isinstance(row[img], dict) and row[img].get("path"):
                meta["image_name"] = row[img]["path"]
            rec = VQARecord(
                image="",
                question=text(row[q]),
                answer=normalize_answer(answer),
                answer_type=answer_type(answer),
                category="general",
                id=f"{name}-{split}-{counter[split]}",
                meta=meta,
            )
            yield Item(split, rel, n, rec, image_bytes(row[img]))
