"""Open a user's image safely and turn it into the RGB image the BLIP image processor expects.

Everything a user can get wrong (a missing path, a text file, a truncated PNG, a decompression
bomb) becomes one :class:`~edgevqa.errors.InputError` line. Valid but unusual images are answered:

* 8-bit modes (L, P, LA, RGBA, CMYK, 1, ...) go through :func:`to_rgb`, which is exactly what
  transformers' ``convert_to_rgb`` does for ``do_convert_rgb=True``: images with an alpha band or a
  ``transparency`` key are composited onto **white**, everything else is ``convert("RGB")``.
  Matching it keeps runtime pixels identical to the ones the model was trained on.
* 16-bit and 32-bit grayscale (``I;16``, ``I``) and float (``F``) images are min-max stretched to
  8 bits. PIL's ``convert("RGB")`` (and so HF) clips every value above 255 to white, which turns a
  12- or 16-bit radiograph into a blank white square; stretching keeps its contrast. This is the
  one place where we knowingly differ from HF.
* DICOM files (``DICM`` at byte 128, or a ``.dcm`` name) go to :mod:`edgevqa.runtime.dicom`
  (pydicom, the ``dicom`` extra): one frame, modality LUT, window or VOI LUT, MONOCHROME1
  inverted, then the same :func:`to_rgb`.
* EXIF orientation is applied (``ImageOps.exif_transpose``), as HF's own ``load_image`` does for a
  path. HF's image processor does *not* rotate an already opened ``PIL.Image``, so training code
  should load its images with :func:`load_image` too (then both sides see the upright image).

Example:
    >>> img = load_image("chest.png")          # doctest: +SKIP
    >>> img.mode
    'RGB'
"""

from __future__ import annotations

import io
import re
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from edgevqa.errors import InputError
from edgevqa.runtime.dicom import DicomOptions, is_dicom

DEFAULT_MAX_PIXELS = 64_000_000
HIGH_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
# What PIL raises while opening or decoding a damaged file (OSError covers "image file is
# truncated" and I/O errors; struct.error, KeyError, ZeroDivisionError and MemoryError come from
# malformed TIFF tags, palettes and sizes; found by the fuzz in tests/runtime/test_hostile_images.py).
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    struct.error,
    KeyError,
    ZeroDivisionError,
    MemoryError,
)


def load_image(
    source: str | Path | bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    dicom: DicomOptions | None = None,
    name: str | None = None,
) -> Image.Image:
    """Open, check and decode an image file (or its bytes) into an upright RGB image.

    Args:
        source: a path to an image or DICOM file, or the encoded bytes of one.
        max_pixels: refuse images with more pixels than this (checked on the header, before decoding).
        dicom: window and frame for DICOM files (default: the file's own); ignored for other images.
        name: how to call ``source`` in messages, and a ``.dcm`` name marks bytes as DICOM.

    Returns:
        A fully loaded ``PIL.Image.Image`` in mode ``"RGB"``, detached from the file.

    Raises:
        InputError: the file is missing, a directory, unreadable, not an image, truncated or corrupt,
            empty, or larger than ``max_pixels``; a DICOM that cannot be converted.
        MissingDependencyError: a DICOM file, and pydicom is not installed.
    """
    label = name or ("<image bytes>" if isinstance(source, bytes) else str(source))
    fp = io.BytesIO(source) if isinstance(source, bytes) else _check_path(Path(source))
    if is_dicom_source(source, name):
        from edgevqa.runtime.dicom import read_dicom

        return to_rgb(read_dicom(source, dicom, max_pixels=_effective_limit(max_pixels), name=label))
    # PIL's own bomb check warns at MAX_IMAGE_PIXELS and raises at twice that; we apply our limit
    # instead (without touching PIL's global), so its warning is noise and its error is reworded,
    limit = _effective_limit(max_pixels)
    with warnings.catch_warnings():
        # and PIL's warnings about damaged metadata ("Corrupt EXIF data", skipped TIFF tags) are
        # not the user's one line either: the image decodes, or the error says why not
        warnings.simplefilter("ignore")
        try:
            img = Image.open(fp)
        except Image.DecompressionBombError as e:
            raise InputError(_too_large(label, _pixels_in(e), None, limit)) from None
        except UnidentifiedImageError:
            raise InputError(f"{label} is not an image PIL can read (PNG, JPEG, TIFF, BMP, ...)") from None
        except FileNotFoundError:  # removed since _check_path looked
            raise InputError(f"image not found: {label}") from None
        except PermissionError:
            raise InputError(f"cannot read {label}: permission denied") from None
        except _DECODE_ERRORS as e:  # oversized text or ICC chunks, I/O errors, broken headers
            raise InputError(f"{label} is not a readable image ({_reason(e)})") from None
        with img:
            return _decode(img, label, limit)


def read_source(source: str | Path, max_bytes: int) -> bytes | None:
    """The bytes of an image file, or None when it is larger than ``max_bytes``.

    Raises:
        InputError: the path is missing, a directory or unreadable (as ``load_image`` says it).
    """
    path = _check_path(Path(source))
    try:
        if path.stat().st_size > max_bytes:
            return None
        return path.read_bytes()
    except FileNotFoundError:  # removed since _check_path looked
        raise InputError(f"image not found: {path}") from None
    except PermissionError:
        raise InputError(f"cannot read {path}: permission denied") from None
    except OSError as e:
        raise InputError(f"cannot read {path} ({e.strerror or e})") from None


def is_dicom_source(source: str | Path | bytes, name: str | None = None) -> bool:
    """True when ``source`` (a path or bytes) is a DICOM file: ``DICM`` at byte 128, or a ``.dcm`` name."""
    if isinstance(source, bytes):
        return is_dicom(source[:132], name or "")
    try:
        if not Path(source).is_file():  # a FIFO or device would block the read below
            return False  # load_image reports what it is
        with open(source, "rb") as f:
            head = f.read(132)
    except OSError:
        return False  # load_image reports the missing or unreadable file itself
    return is_dicom(head, name or str(source))


def _check_path(path: Path) -> Path:
    if path.is_dir():
        raise InputError(f"{path} is a directory, not an image file")
    if not path.exists():
        raise InputError(f"image not found: {path}")
    if not path.is_file():  # reading a FIFO blocks until a writer comes; a device may never end
        raise InputError(f"{path} is not a regular file (a pipe, socket or device), not an image file")
    return path


def _reason(e: Exception) -> str:
    """An exception's message for one line: its first 200 characters, or its type."""
    text = " ".join(str(e).split())
    return text[:200] or type(e).__name__


def _decode(img: Image.Image, name: str, limit: int) -> Image.Image:
    w, h = img.size
    if w <= 0 or h <= 0:
        raise InputError(f"{name} has no pixels (its header says {w}x{h})")
    if w * h > limit:
        raise InputError(_too_large(name, w * h, (w, h), limit))
    try:
        img.load()  # decode now, so a truncated file fails here and not deep in preprocessing
        upright = ImageOps.exif_transpose(img)
        return to_rgb(upright)
    except Image.DecompressionBombError as e:  # a GIF/TIFF frame bigger than the header said
        raise InputError(_too_large(name, _pixels_in(e), None, limit)) from None
    except _DECODE_ERRORS as e:
        raise InputError(f"{name} is truncated or corrupt ({_reason(e)})") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL image to RGB the way HF's ``convert_to_rgb`` does, except for high bit depths.

    Args:
        img: an image in any PIL mode.

    Returns:
        An RGB image. 8-bit modes match ``transformers.image_transforms.convert_to_rgb`` exactly
        (transparency composited onto white); ``I;16``/``I``/``F`` are min-max stretched to 8 bits.
    """
    if img.mode in HIGH_BIT_MODES:
        return stretch_to_8bit(img).convert("RGB")
    if "A" in img.getbands() or img.info.get("transparency") is not None:
        # Same calls as HF: transparent pixels become white, not whatever colour they stored.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def stretch_to_8bit(img: Image.Image) -> Image.Image:
    """Map a single-band high-bit-depth image linearly from [min, max] onto [0, 255] (mode ``"L"``).

    A flat image has no contrast to stretch and becomes black; NaN and infinite pixels become black.
    """
    # float32 is exact for 16-bit data and far finer than the 256 output levels for 32-bit data.
    a = np.asarray(img, dtype=np.float32)
    finite = np.isfinite(a)
    out = np.zeros(a.shape, dtype=np.uint8)
    if finite.any():
        lo, hi = float(a[finite].min()), float(a[finite].max())
        if hi > lo:
            scaled = (a[finite].astype(np.float64) - lo) * (255.0 / (hi - lo))
            out[finite] = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(out, mode="L")


def _effective_limit(max_pixels: int) -> int:
    # Above twice PIL's MAX_IMAGE_PIXELS, Image.open itself refuses the file, whatever we allow.
    pil = Image.MAX_IMAGE_PIXELS
    return max_pixels if pil is None else min(max_pixels, 2 * pil)


def _pixels_in(e: Exception) -> int | None:
    m = re.search(r"\((\d+) pixels\)", str(e))
    return int(m.group(1)) if m else None


def _count(n: int) -> str:
    return f"{n / 1e6:.1f}".removesuffix(".0") + " Mpx" if n >= 100_000 else f"{n} px"


def _too_large(name: str, pixels: int | None, size: tuple[int, int] | None, limit: int) -> str:
    what = f"{size[0]}x{size[1]} = " if size else ""
    amount = f"{what}{_count(pixels)}" if pixels is not None else "too many pixels"
    return f"{name} is {amount}, larger than the {_count(limit)} limit (downscale it first)"
