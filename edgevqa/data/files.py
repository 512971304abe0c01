"""Carry a dataset's images into a derived dataset (QA from captions, mixtures) without copying bytes."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from edgevqa.errors import InputError

R = TypeVar("R", bound=Any)  # VQARecord or CaptionRecord: anything with `image` and `image_path()`


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (no extra disk; images are never edited in place), else copy it."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another filesystem, or links not supported
        shutil.copy2(src, dst)


def carry_images(records: Sequence[R], src_root: Path, dst_root: Path, prefix: str = "") -> list[R]:
    """Put the images of ``records`` under ``dst_root/prefix`` and return records that point there.

    Absolute image paths are left as they are.

    Raises:
        InputError: an image is missing, or its relative path leaves its dataset folder.
    """
    placed: set[str] = set()
    out = []
    for r in records:
        if Path(r.image).is_absolute():
            out.append(r)
            continue
        if ".." in PurePosixPath(r.image).parts:
            raise InputError(f"{src_root}: record {r.id} has an image path outside the folder: {r.image}")
        new = f"{prefix}{r.image}"
        if new not in placed:
            src = r.image_path(src_root)
            if not src.is_file():
                raise InputError(f"{src}: the image of record {r.id} is missing")
            link_or_copy(src, dst_root / new)
            placed.add(new)
        out.append(replace(r, image=new) if new != r.image else r)
    return out
