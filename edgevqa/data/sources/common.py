"""What every reader shares: the item it yields, image lookup in folders and zips, parquet rows."""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

from edgevqa.data.captions import CaptionRecord
from edgevqa.data.records import VQARecord
from edgevqa.errors import InputError, MissingDependencyError
from edgevqa.eval.metrics import normalize_answer


@dataclass(frozen=True)
class LoadOptions:
    seed: int = 0  # splits made here (val from train, or 70/10/20) are seeded
    all_languages: bool = False  # SLAKE: keep the Chinese questions too (default: English only)
    max_caption_words: int = 64  # ROCOv2: longer captions are filtered out (whitespace-separated words)


@dataclass
class Item:
    """One source row, as a reader sees it. The loader checks, hashes and places it."""

    split: str  # "train", "val", "test", or "all" when the dataset has no official split
    file: str  # relative to the dataset root, for messages
    row: int  # 1-based record number in `file` (a CSV header is not counted)
    record: VQARecord | CaptionRecord | None = None  # its `image` is filled in by the loader
    image: bytes | None = None  # the encoded image; None: missing
    problem: str = ""  # a malformed row: reported with file and row, then skipped
    filtered: str = ""  # a row left out on purpose (a filter), counted by this reason


def text(value: Any) -> str:
    """A cell as one line of text: None -> "", runs of whitespace -> one space."""
    return "" if value is None else " ".join(str(value).split())


def answer_type(answer: str) -> str:
    """For datasets without an answer-type column: closed means a yes/no answer."""
    return "closed" if normalize_answer(answer) in ("yes", "no") else "open"


# Hugging Face split names (file names like data/Valid-00000-of-00001-abc.parquet) -> ours.
_SPLITS = {"train": "train", "training": "train", "validation": "val", "valid": "val", "val": "val"}
_SPLITS |= {"dev": "val", "test": "test", "testing": "test"}


def split_of(path: Path) -> str:
    """Our split name for a data file, from its name (``Train-0000...``) or else its folder.

    Raises:
        InputError: neither names a split.
    """
    for name in (path.name, path.parent.name):
        m = re.match(r"[A-Za-z]+", name)
        if m and m.group(0).lower() in _SPLITS:
            return _SPLITS[m.group(0).lower()]
    raise InputError(f"{path}: cannot tell its split from its name (expected train-, validation-, test-)")


class ImageFiles:
    """Finds an image by the relative name a dataset gives it, in folders or zip archives.

    ``ImageFiles(root, ["imgs"], ["imgs.zip"]).read("xmlab1/source.jpg")`` looks at
    ``root/imgs/xmlab1/source.jpg``, then at ``imgs/xmlab1/source.jpg`` or ``xmlab1/source.jpg``
    inside ``root/imgs.zip``: the hub ships zips, and people unpack them, or not.
    """

    def __init__(self, root: Path, dirs: Sequence[str], zips: Sequence[str]):
        self.prefixes = list(dirs)
        self.dirs = [root / d for d in dirs if (root / d).is_dir()]
        self.zips = [zipfile.ZipFile(root / z) for z in zips if (root / z).is_file()]
        self.members = [set(z.namelist()) for z in self.zips]

    def __bool__(self) -> bool:
        return bool(self.dirs or self.zips)

    def __enter__(self) -> ImageFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        for z in self.zips:
            z.close()

    def read(self, name: str) -> bytes | None:
        rel = PurePosixPath(name.strip().replace("\\", "/").lstrip("/"))
        if not rel.parts or ".." in rel.parts:  # no reading outside the dataset
            return None
        for d in self.dirs:
            if (d / rel).is_file():
                return (d / rel).read_bytes()
        for z, members in zip(self.zips, self.members):
            for cand in [f"{p}/{rel}" for p in self.prefixes] + [str(rel)]:
                if cand in members:
                    return z.read(cand)
        return None


# ---------------------------------------------------------------------------- parquet


def pyarrow_parquet() -> ModuleType:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise MissingDependencyError(
            "reading parquet datasets needs pyarrow: pip install pyarrow (or pip install 'edgevqa[datasets]')"
        ) from None
    return pq


def parquet_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.parquet") if not any(s.startswith(".") for s in p.parts))


def parquet_columns(path: Path) -> list[str]:
    pq = pyarrow_parquet()
    import pyarrow as pa

    try:
        return list(pq.read_schema(path).names)
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"{path}: not a readable parquet file ({e})") from None


def parquet_rows(path: Path, batch_size: int = 256) -> Iterator[dict[str, Any]]:
    """The rows of a parquet file as dicts, a batch at a time (image shards can be large)."""
    pq = pyarrow_parquet()
    import pyarrow as pa

    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
            yield from batch.to_pylist()
    except (OSError, pa.ArrowException) as e:
        raise InputError(f"{path}: not a readable parquet file ({e})") from None


def image_bytes(value: Any) -> bytes | None:
    """An image cell: the datasets library's struct ``{bytes, path}``, or raw bytes."""
    if isinstance(value, dict):
        value = value.get("bytes")
    return bytes(value) if isinstance(value, bytes | bytearray) and value else None


def column(columns: Sequence[str], *names: str) -> str | None:
    """The first of ``names`` present in ``columns``, matched without regard to case."""
    lower = {c.lower(): c for c in columns}
    return next((lower[n.lower()] for n in names if n.lower() in lower), None)
