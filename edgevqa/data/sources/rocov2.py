"""ROCOv2 (``eltorio/ROCOv2-radiology``): radiology image-caption pairs, as parquet shards.

Columns ``image`` (struct ``{bytes, path}``), ``image_id``, ``caption`` and ``cui`` (UMLS concept
ids); splits ``train``, ``validation``, ``test``. Two filters keep what a small VQA model can use:

* the caption's primary modality (the first one it names, :func:`edgevqa.data.terms.primary_modality`)
  is CT, MRI or X-ray; captions naming none fall back on the modality CUIs ROCOv2 assigns;
* the caption has at most ``max_caption_words`` (64) words, counted as whitespace-separated tokens
  (not word pieces: the count must not depend on a tokenizer).

Rows become :class:`~edgevqa.data.captions.CaptionRecord`; turn them into questions with
``edgevqa data qa-from-captions``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgevqa.data.captions import CaptionRecord
from edgevqa.data.sources.common import (
    Item,
    LoadOptions,
    column,
    image_bytes,
    parquet_columns,
    parquet_files,
    parquet_rows,
    split_of,
    text,
)
from edgevqa.data.terms import MODALITIES, primary_modality
from edgevqa.errors import InputError

# ROCOv2's modality concepts (the image-level modality annotations).
CUI_MODALITY = {
    "C0040405": "ct",  # X-Ray Computed Tomography
    "C0024485": "mri",  # Magnetic Resonance Imaging
    "C1306645": "x-ray",  # Plain x-ray
    "C0041618": "ultrasound",  # Ultrasonography
    "C0002978": "angiography",  # angiogram
    "C0032743": "nuclear",  # Positron-Emission Tomography
}


def detect(root: Path) -> bool:
    files = parquet_files(root)
    return bool(files) and column(parquet_columns(files[0]), "caption") is not None


def _cuis(value: Any) -> list[str]:
    if isinstance(value, str):
        if value.strip().startswith("["):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                value = value.strip("[]").replace(",", " ").replace("'", " ").split()
        else:
            value = value.replace(";", " ").replace(",", " ").split()
    return [str(v).strip() for v in value or [] if str(v).strip()]


def modality(caption: str, cuis: list[str]) -> str | None:
    """The caption's primary modality, else the first modality CUI's."""
    return primary_modality(caption) or next((CUI_MODALITY[c] for c in cuis if c in CUI_MODALITY), None)


def read(root: Path, opts: LoadOptions) -> Iterator[Item]:
    files = parquet_files(root)
    if not files:
        raise InputError(f"no parquet files under {root}")
    for path in files:
        split = split_of(path)
        cols = parquet_columns(path)
        img, cap, iid, cui = (column(cols, c) for c in ("image", "caption", "image_id", "cui"))
        if not (img and cap):
            raise InputError(f"{path}: expected the ROCOv2 columns image and caption; found {cols}")
        rel = path.relative_to(root).as_posix()
        for n, row in enumerate(parquet_rows(path), 1):
            caption = text(row[cap])
            cuis = _cuis(row[cui]) if cui else []
            mod = modality(caption, cuis)
            if caption and mod not in MODALITIES:
                yield Item(split, rel, n, filtered="primary modality is not CT, MRI or X-ray")
            elif len(caption.split()) > opts.max_caption_words:
                yield Item(split, rel, n, filtered=f"caption longer than {opts.max_caption_words} words")
            else:
                rid = (text(row[iid]) if iid else "") or f"rocov2-{split}-{n}"
                rec = CaptionRecord("", caption, mod or "", id=rid, meta={"cui": cuis})
                yield Item(split, rel, n, rec, image_bytes(row[img]))
