"""DICOM in: one frame of a DICOM file -> the 8-bit image the BLIP preprocessing takes.

``load_image`` sends every file that has the ``DICM`` marker at byte 128 (or a ``.dcm`` name)
here, so ``edgevqa ask``, ``ask --batch`` and ``edgevqa serve`` all read DICOM the same way. Reading
needs pydicom (``pip install 'edgevqa[dicom]'``); nothing here imports it until a DICOM arrives.

The conversion, in order (DICOM PS3.3 C.7.6.3, C.11.1, C.11.2):

1. **Frame.** Multi-frame files give one frame: ``frame`` (1-based, as viewers number them) or by
   default the middle one, frame ``(n + 1) // 2`` of ``n``. Only that frame is decoded.
2. **Colour.** RGB and YBR files (decoded to RGB by pydicom) pass through; PALETTE COLOR goes
   through its palette. Samples wider than 8 bits are scaled by ``255 / (2**BitsStored - 1)``.
3. **Modality LUT** (grayscale): Rescale Slope/Intercept or the Modality LUT Sequence, giving
   modality units (Hounsfield units for CT).
4. **VOI** (grayscale), the first that applies: the ``window=(centre, width)`` given by the user
   (``--window C,W``), the file's VOI LUT Sequence (its first view), the file's first Window
   Centre/Width (LINEAR, LINEAR_EXACT or SIGMOID as its VOI LUT Function says), and otherwise a
   min-max stretch of the frame onto 0..255. A window maps onto 0..255 with the standard's
   formula, e.g. LINEAR: ``((x - (c - 0.5)) / (w - 1) + 0.5) * 255``, clipped, rounded to nearest.
5. **MONOCHROME1** (low values are white) is inverted, ``255 - y``, so bone is white as usual.

Compressed transfer syntaxes are decoded by whichever of pydicom's pixel handlers is installed:
RLE and deflate always; JPEG baseline and JPEG 2000 through Pillow; JPEG-LS, 12-bit and lossless
JPEG need ``pylibjpeg`` + ``pylibjpeg-libjpeg``, HTJ2K ``pylibjpeg-openjpeg``. Without one, the
error names the package to install.

Patient data stays out of edgevqa's output: only pixel-module tags are read, error messages name
the file and technical tags only, pydicom's own warnings are silenced while it reads, and its log
records (which can quote element values) never propagate to edgevqa's log handlers.

Example:
    >>> img = read_dicom("CT_small.dcm", DicomOptions(window=(40, 400)))   # doctest: +SKIP
    >>> img.mode, img.size                                                # doctest: +SKIP
    ('L', (128, 128))
"""

from __future__ import annotations

import io
import logging
import math
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from edgevqa.errors import InputError

log = logging.getLogger("edgevqa.runtime")
_READ_LOCK = threading.Lock()
PREAMBLE_OFFSET = 128
MAGIC = b"DICM"

# transfer syntax UID -> (what a user calls the compression, pip packages that decode it)
_PYLIBJPEG = "pylibjpeg pylibjpeg-libjpeg"
_OPENJPEG = "pylibjpeg pylibjpeg-openjpeg"
_COMPRESSION = {
    "1.2.840.10008.1.2.4.50": ("JPEG baseline", _PYLIBJPEG),
    "1.2.840.10008.1.2.4.51": ("JPEG extended (12-bit)", _PYLIBJPEG),
    "1.2.840.10008.1.2.4.57": ("lossless JPEG", _PYLIBJPEG),
    "1.2.840.10008.1.2.4.70": ("lossless JPEG", _PYLIBJPEG),
    "1.2.840.10008.1.2.4.80": ("JPEG-LS", _PYLIBJPEG),
    "1.2.840.10008.1.2.4.81": ("JPEG-LS", _PYLIBJPEG),
    "1.2.840.10008.1.2.4.90": ("JPEG 2000", _OPENJPEG),
    "1.2.840.10008.1.2.4.91": ("JPEG 2000", _OPENJPEG),
    "1.2.840.10008.1.2.4.92": ("JPEG 2000", _OPENJPEG),
    "1.2.840.10008.1.2.4.93": ("JPEG 2000", _OPENJPEG),
    "1.2.840.10008.1.2.4.201": ("HTJ2K", _OPENJPEG),
    "1.2.840.10008.1.2.4.202": ("HTJ2K", _OPENJPEG),
    "1.2.840.10008.1.2.4.203": ("HTJ2K", _OPENJPEG),
    "1.2.840.10008.1.2.5": ("RLE", "pylibjpeg pylibjpeg-rle"),
}
_VIDEO_PREFIXES = ("1.2.840.10008.1.2.4.10", "1.2.840.10008.1.2.4.11")  # MPEG-2/4, H.264/5


@dataclass(frozen=True)
class DicomOptions:
    """How to turn a DICOM into an image; the defaults follow the file."""

    window: tuple[float, float] | None = None  # (centre, width) in modality units; overrides the file's VOI
    frame: int | None = None  # 1-based frame of a multi-frame file; None: the middle one

    def __post_init__(self) -> None:
        if self.window is not None and not (math.isfinite(self.window[0]) and self.window[1] >= 1):
            raise InputError(f"--window needs a finite centre and a width of at least 1, got {self.window}")
        if self.frame is not None and self.frame < 1:
            raise InputError(f"--frame counts from 1, got {self.frame}")


def parse_window(text: str) -> tuple[float, float]:
    """``"40,400"`` -> (40.0, 400.0): a window centre and width, as for ``--window C,W``."""
    parts = text.replace(" ", "").split(",")
    try:
        centre, width = (float(p) for p in parts)
    except ValueError:
        raise InputError(f"--window takes CENTRE,WIDTH (for example 40,400), got {text!r}") from None
    DicomOptions(window=(centre, width))  # validates
    return centre, width


def is_dicom(head: bytes, name: str = "") -> bool:
    """True for the DICOM file marker (``DICM`` at byte 128) or a ``.dcm`` file name."""
    return head[PREAMBLE_OFFSET : PREAMBLE_OFFSET + 4] == MAGIC or name.lower().endswith(".dcm")


def read_dicom(
    source: str | Path | bytes,
    options: DicomOptions | None = None,
    max_pixels: int = 64_000_000,
    name: str | None = None,
) -> Image.Image:
    """Decode one frame of a DICOM file into an 8-bit PIL image (mode ``"L"`` or ``"RGB"``).

    Args:
        source: the file's path or its bytes.
        options: window and frame choices (default: the file's window, the middle frame).
        max_pixels: refuse frames with more pixels than this (checked before decoding).
        name: how to call the file in messages (default: its path, or ``<DICOM bytes>``).

    Raises:
        InputError: not a readable DICOM, truncated, no pixel data, a frame out of range, too
            large, or compressed with a scheme no installed handler decodes (the message names it).
        MissingDependencyError: pydicom is not installed.
    """
    options = options or DicomOptions()
    name = name or ("<DICOM bytes>" if isinstance(source, bytes) else str(source))
    # pydicom's warnings can quote element values. catch_warnings swaps process-wide state, so
    # reads are serialised: interleaved in threads (the server), the swaps could leave "ignore" set.
    with _READ_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = _read(source, name)
        index = _frame_index(ds, options.frame, name)
        _check_size(ds, name, max_pixels)
        arr = _decode(ds, index, name)
        try:
            return Image.fromarray(_to_8bit(arr, ds, options, name))
        except InputError:
            raise
        except Exception as e:  # a malformed LUT, palette or rescale: pydicom and numpy raise anything
            raise InputError(
                f"{name}: its pixel values cannot be converted for display ({type(e).__name__} in its "
                "palette, modality LUT, rescale or VOI LUT)"
            ) from None


# ---------------------------------------------------------------------------------------------


def _pydicom() -> Any:
    from edgevqa._deps import require

    pydicom = require("pydicom")
    _silence(logging.getLogger("pydicom"))
    return pydicom


def _silence(logger: logging.Logger) -> None:
    """Keep pydicom's records (which may quote patient names) away from every handler but its own."""
    if logger.propagate:
        logger.addHandler(logging.NullHandler())
        logger.propagate = False


def _read(source: str | Path | bytes, name: str) -> Any:
    pydicom = _pydicom()
    from pydicom.errors import InvalidDicomError

    fp = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    try:
        # force: a .dcm without the 128-byte preamble (older files) is still DICOM
        return pydicom.dcmread(fp, force=True)
    except FileNotFoundError:
        raise InputError(f"image not found: {name}") from None
    except PermissionError:
        raise InputError(f"cannot read {name}: permission denied") from None
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"{name} is not a readable DICOM file ({type(e).__name__}); truncated?") from None


def _tag(ds: Any, keyword: str, default: Any = None) -> Any:
    """A technical tag's value; a malformed one reads as ``default`` (it is reported by keyword)."""
    try:
        value = ds.get(keyword, default)
    except Exception:  # pydicom converts values lazily; a malformed IS/DS raises here
        return default
    return default if value is None or value == "" else value


def _frame_index(ds: Any, frame: int | None, name: str) -> int | None:
    try:
        n = int(_tag(ds, "NumberOfFrames", 1))
    except (TypeError, ValueError):
        raise InputError(f"{name}: NumberOfFrames is not a number") from None
    if frame is not None and not 1 <= frame <= max(n, 1):
        raise InputError(f"frame {frame} is out of range: {name} has {n} frame(s) (1-{n})")
    if n <= 1:
        return None
    return (frame if frame is not None else (n + 1) // 2) - 1


def _check_size(ds: Any, name: str, max_pixels: int) -> None:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        sop = _tag(ds, "SOPClassUID")
        what = f" (SOP class: {sop.name})" if sop is not None and hasattr(sop, "name") else ""
        raise InputError(f"{name} has no pixel data{what}: it is not an image, or it is truncated")
    try:
        rows, cols = int(_tag(ds, "Rows", 0)), int(_tag(ds, "Columns", 0))
    except (TypeError, ValueError):
        raise InputError(f"{name}: Rows/Columns are not numbers") from None
    if rows <= 0 or cols <= 0:
        raise InputError(f"{name} has no pixels (Rows {rows}, Columns {cols})")
    if rows * cols > max_pixels:
        raise InputError(
            f"{name} is {cols}x{rows} = {rows * cols / 1e6:.1f} Mpx, larger than the "
            f"{max_pixels / 1e6:.1f} Mpx limit (downscale it first)"
        )


def _decode(ds: Any, index: int | None, name: str) -> np.ndarray:
    from pydicom.pixels import pixel_array

    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    uid = str(ts) if ts is not None else ""
    if uid.startswith(_VIDEO_PREFIXES):
        raise InputError(f"{name} is a video DICOM ({ts.name}); edgevqa reads still images only")
    try:
        return pixel_array(ds, index=index)
    except Exception as e:  # pydicom raises RuntimeError/ValueError/NotImplementedError/AttributeError
        raise InputError(_decode_error(e, uid, ts, name)) from None


def _decode_error(e: Exception, uid: str, ts: Any, name: str) -> str:
    text = str(e)
    if uid in _COMPRESSION:
        kind, pkgs = _COMPRESSION[uid]
        if "missing dependencies" in text or "does not support" in text or "No plugins" in text:
            return f"{name}: this DICOM is {kind} compressed; install {pkgs} to read it (pip install {pkgs})"
        return f"{name}: its {kind} compressed pixel data could not be decoded; the file may be corrupt"
    if "less than expected" in text:
        return f"{name} is truncated or corrupt: its pixel data is shorter than Rows x Columns x frames"
    if not uid:
        return f"{name} is truncated or corrupt: it has no Transfer Syntax UID"
    what = ts.name if hasattr(ts, "name") else uid
    return f"{name}: cannot decode its pixel data ({what}, {type(e).__name__}); the file may be corrupt"


# ---------------------------------------------------------------------------------------------


def _to_8bit(arr: np.ndarray, ds: Any, options: DicomOptions, name: str) -> np.ndarray:
    photometric = str(_tag(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        try:
            rgb = apply_color_lut(arr, ds)
            bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        except Exception as e:
            raise InputError(f"{name}: its palette cannot be applied ({type(e).__name__})") from None
        if not 1 <= bits <= 16:
            raise InputError(f"{name}: its palette descriptor gives {bits} bits per entry (1-16)")
        return _scale_bits(rgb, bits)
    if arr.ndim == 3:  # RGB (pydicom decodes YBR to RGB)
        return _scale_bits(arr, int(_tag(ds, "BitsStored", 8)))
    if not np.issubdtype(arr.dtype, np.number) or arr.ndim != 2:
        raise InputError(f"{name}: unexpected pixel array of shape {arr.shape}")
    y = voi(modality(arr, ds), ds, options.window, name)
    if photometric == "MONOCHROME1":
        y = 255 - y
    return y


def _scale_bits(arr: np.ndarray, bits: int) -> np.ndarray:
    if arr.dtype == np.uint8 and bits <= 8:
        return np.ascontiguousarray(arr)
    top = float(2 ** max(bits, 1) - 1)
    return np.clip(np.rint(arr.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)


def modality(arr: np.ndarray, ds: Any) -> np.ndarray:
    """Stored values -> modality units (Rescale Slope/Intercept or the Modality LUT), float64."""
    from pydicom.pixels import apply_modality_lut

    if not np.issubdtype(arr.dtype, np.integer):  # float pixel data is already in its units
        return arr.astype(np.float64)
    return apply_modality_lut(arr, ds).astype(np.float64)


def voi(
    values: np.ndarray, ds: Any, window: tuple[float, float] | None = None, name: str = "<DICOM>"
) -> np.ndarray:
    """Modality values -> uint8 by ``window``, else the file's VOI LUT, else its window, else min-max.

    A window the file states but that cannot be used (not a number, a width below 1) is replaced by
    the min-max stretch with a warning that says so (never quoting the values)."""
    if window is not None:
        return apply_window(values, *window)
    if _tag(ds, "VOILUTSequence"):
        return _voi_lut(values, ds, name)
    centre, width = _first(_tag(ds, "WindowCenter")), _first(_tag(ds, "WindowWidth"))
    if centre is not None and width is not None and width >= 1:
        function = str(_tag(ds, "VOILUTFunction", "LINEAR")).upper()
        return apply_window(values, centre, width, function)
    if "WindowCenter" in ds or "WindowWidth" in ds:
        log.warning(
            "%s: its Window Center/Width cannot be used (malformed, missing one, or a width below 1); "
            "shown with a min-max stretch instead (pass --window C,W to choose)",
            name,
        )
    return stretch(values)


def _first(value: Any) -> float | None:
    """The first of a multi-valued number (Window Centre may hold several views), or None."""
    if value is None:
        return None
    try:
        if not isinstance(value, str | bytes | int | float):
            value = value[0]
        v = float(value)
    except (TypeError, ValueError, IndexError):
        return None
    return v if math.isfinite(v) else None


def apply_window(values: np.ndarray, centre: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 window onto 0..255 (uint8), rounded to nearest."""
    x = values.astype(np.float64)
    if function == "SIGMOID":
        y = 255.0 / (1.0 + np.exp(-4.0 * (x - centre) / width))
    elif function == "LINEAR_EXACT":
        y = ((x - centre) / width + 0.5) * 255.0
    else:  # LINEAR, and the default for anything unknown
        y = ((x - (centre - 0.5)) / (width - 1.0) + 0.5) * 255.0 if width > 1 else (x > centre - 0.5) * 255.0
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def _voi_lut(values: np.ndarray, ds: Any, name: str = "<DICOM>") -> np.ndarray:
    """The file's first VOI LUT (PS3.3 C.11.2.1.1): values below its first entry take the first
    output, above its last the last; output scaled from its nominal bits to 0..255.

    Written here rather than with pydicom's ``apply_voi``, which (3.0) indexes in the LUT's dtype,
    so with an 8-bit LUT a stored 600 wraps to 88 instead of taking the last entry.
    """
    try:
        item = ds.VOILUTSequence[0]
        entries, first, bits = (int(v) for v in item.LUTDescriptor)
        data = item.LUTData
    except Exception as e:  # a descriptor of another length, text where numbers belong, no data
        raise InputError(f"{name}: its VOI LUT is malformed ({type(e).__name__})") from None
    if isinstance(data, bytes):  # OW: 16-bit words in the file's byte order
        big = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") == "1.2.840.10008.1.2.2"
        lut = np.frombuffer(data, dtype=">u2" if big else "<u2").astype(np.float64)
    else:
        lut = np.atleast_1d(np.asarray(data, dtype=np.float64))  # US: a number or a list of them
    lut = lut[: entries or 65536]
    if not len(lut) or not np.isfinite(lut).all():
        raise InputError(f"{name}: its VOI LUT has no entries, or entries that are not numbers")
    index = np.clip(np.rint(values) - first, 0, len(lut) - 1).astype(np.int64)
    top = float(2 ** min(max(bits, 8), 16) - 1)
    return np.clip(np.rint(lut[index] * (255.0 / top)), 0, 255).astype(np.uint8)


def stretch(values: np.ndarray) -> np.ndarray:
    """Min-max stretch onto 0..255 (a flat frame becomes black), as for 16-bit PNGs."""
    x = values.astype(np.float64)
    finite = np.isfinite(x)
    out = np.zeros(x.shape, dtype=np.uint8)
    if finite.any():
        lo, hi = float(x[finite].min()), float(x[finite].max())
        if hi > lo:
            out[finite] = np.clip(np.rint((x[finite] - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
    return out
