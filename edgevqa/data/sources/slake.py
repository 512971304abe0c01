"""SLAKE (``BoKelvin/SLAKE``): ``train.json``, ``validation.json``, ``test.json`` and an image folder.

Each JSON file is a list of questions with ``img_name`` (``xmlab1/source.jpg``, under ``imgs/``, or
inside ``imgs.zip`` as the hub ships it), ``question``, ``answer``, ``q_lang`` (``en`` or ``zh``),
``answer_type`` (``CLOSED``/``OPEN``; SLAKE's own label, which also calls "which is bigger, A or B?"
closed), ``content_type`` (our category, lower case), ``location`` and ``modality`` (kept in meta).
Chinese questions are left out unless ``all_languages`` is set: the BLIP tokenizer is English.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgevqa.data.records import ANSWER_TYPES, VQARecord
from edgevqa.data.sources.common import ImageFiles, Item, LoadOptions, text
from edgevqa.errors import InputError
from edgevqa.eval.metrics import normalize_answer

SPLIT_FILES = {"train.json": "train", "validation.json": "val", "test.json": "test"}
_META = ("img_name", "img_id", "qid", "q_lang", "location", "modality", "base_type")


def detect(root: Path) -> bool:
    return any((root / f).is_file() for f in SPLIT_FILES)


def read(root: Path, opts: LoadOptions) -> Iterator[Item]:
    with ImageFiles(root, ["imgs"], ["imgs.zip"]) as images:
        if not images:
            raise InputError(f"SLAKE images not found: expected {root / 'imgs'} (or imgs.zip)")
        for fname, split in SPLIT_FILES.items():
            path = root / fname
            if not path.is_file():
                continue
            try:
                rows = json.loads(path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise InputError(f"{path}: not valid JSON ({e})") from None
            if not isinstance(rows, list):
                raise InputError(f"{path}: expected a JSON list of questions")
            for n, row in enumerate(rows, 1):
                yield _item(row, split, fname, n, images, opts)


def _item(row: Any, split: str, fname: str, n: int, images: ImageFiles, opts: LoadOptions) -> Item:
    if not isinstance(row, dict):
        return Item(split, fname, n, problem="not a JSON object")
    lang = text(row.get("q_lang")).lower()
    if lang != "en" and not opts.all_languages:
        return Item(split, fname, n, filtered=f"q_lang {lang!r}, not English (--all-languages keeps it)")
    atype = text(row.get("answer_type")).lower()
    if atype not in ANSWER_TYPES:
        return Item(split, fname, n, problem=f"answer_type {row.get('answer_type')!r} is not CLOSED or OPEN")
    img_name = text(row.get("img_name"))
    rec = VQARecord(
        image="",
        question=text(row.get("question")),
        answer=normalize_answer(text(row.get("answer"))),
        answer_type=atype,
        category=text(row.get("content_type")).lower() or "unknown",
        id=f"slake-{row['qid']}" if "qid" in row else f"slake-{split}-{n}",
        meta={k: row[k] for k in _META if k in row},
    )
    return Item(split, fname, n, rec, images.read(img_name) if img_name else None)
