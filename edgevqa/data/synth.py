"""Deterministic synthetic radiology-like VQA: the embedded default dataset (no downloads needed).

Each image is one of 3 modalities ("x-ray", "ct", "mri") x 3 regions ("chest", "brain",
"abdomen"), drawn with numpy from ellipses on a coordinate grid, with 0, 1 or 2 bright round
lesions, all on one side and of one size. Every image gets a few closed (yes/no) and open
questions about presence, modality, region, side, count and size of its findings.

Side convention (radiological, used everywhere here): "left" and "right" are the *patient's*
sides, and the patient faces the viewer, so the patient's left is on the image's right. A
"left" lesion is drawn in the right half of the image; ``meta["lesion_image_half"]`` says which.

Layout written by :func:`generate`::

    out_dir/images/000000.png ...   grayscale ("L") PNGs, image_size x image_size
    out_dir/{train,val,test}.jsonl  VQARecords (image paths relative to out_dir), split 80/10/10 by image
    out_dir/dataset.json            config, generator version and counts (also returned)
    out_dir/{split}.captions.jsonl  with ``captions=True`` (``edgevqa data synth --captions``): one
                                    CaptionRecord per image, e.g. "chest x-ray with two large lesions
                                    on the left", for the dapt and caption training recipes

Example:
    >>> from edgevqa.data.synth import SynthConfig, generate
    >>> summary = generate("data/synth", SynthConfig(n_images=3000, seed=0))  # doctest: +SKIP
    >>> summary["counts"]["questions"]                                        # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from edgevqa import atomic
from edgevqa.data.captions import CaptionRecord, write_captions
from edgevqa.data.records import SPLITS, VQARecord, write_split
from edgevqa.data.splits import assign_splits
from edgevqa.errors import InputError

# Bump when the same config would produce different files (new look, new templates, ...).
GENERATOR_VERSION = 1

MODALITIES = ("x-ray", "ct", "mri")
REGIONS = ("chest", "brain", "abdomen")
SIDES = ("left", "right")  # the patient's side (see the module docstring)
SIZES = ("small", "large")
SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "test": 0.1}
_ARTICLE = {"x-ray": "an", "ct": "a", "mri": "an"}


@dataclass(frozen=True)
class SynthConfig:
    """What to generate. Radii are fractions of the image width, brightness is a grey level in [0, 1]."""

    n_images: int = 3000  # images; each one gets `questions_per_image` questions
    seed: int = 0
    image_size: int = 128  # side of the square grayscale PNGs, in pixels
    questions_per_image: int = 3  # distinct question kinds per image (images without lesions have 6 at most)
    lesion_fraction: float = 0.6  # share of images with at least one lesion
    max_lesions: int = 2  # lesion images get 1..max_lesions lesions (1 makes count/presence coincide)
    # Radii are clearly apart (about 2x) so "small" vs "large" survives resizing to ~96 px:
    # the notes say small, faint lesions were never learned by the tiny model.
    small_radius: tuple[float, float] = (0.045, 0.055)
    large_radius: tuple[float, float] = (0.09, 0.105)
    lesion_brightness: tuple[float, float] = (0.88, 0.97)  # far above every soft tissue (< 0.65)

    def __post_init__(self) -> None:
        if self.n_images < 10:
            raise InputError(f"n_images must be >= 10 (each split needs an image), got {self.n_images}")
        if not 32 <= self.image_size <= 1024:
            raise InputError(f"image_size must be in [32, 1024] pixels, got {self.image_size}")
        if not 1 <= self.questions_per_image <= len(_KINDS):
            raise InputError(
                f"questions_per_image must be in [1, {len(_KINDS)}], got {self.questions_per_image}"
            )
        if not 0.0 <= self.lesion_fraction <= 1.0:
            raise InputError(f"lesion_fraction must be in [0, 1], got {self.lesion_fraction}")
        if self.max_lesions not in (1, 2):
            raise InputError(f"max_lesions must be 1 or 2 (more do not fit one side), got {self.max_lesions}")
        (s0, s1), (l0, l1) = self.small_radius, self.large_radius
        if not 0.02 <= s0 <= s1 < l0 <= l1 <= 0.11:
            raise InputError(
                "radii must satisfy 0.02 <= small_radius[0] <= small_radius[1] < large_radius[0] <= "
                f"large_radius[1] <= 0.11 (two large ones must fit in one lung), got "
                f"small_radius={self.small_radius}, large_radius={self.large_radius}"
            )
        b0, b1 = self.lesion_brightness
        if not 0.0 < b0 <= b1 <= 1.0:
            raise InputError(
                f"lesion_brightness must satisfy 0 < lo <= hi <= 1, got {self.lesion_brightness}"
            )


@dataclass(frozen=True)
class Lesion:
    """One round nodule, in the anatomy frame (fractions of the image; x to the right, y down)."""

    x: float
    y: float
    radius: float
    brightness: float = 0.92


# ---------------------------------------------------------------------------- drawing primitives


@dataclass(frozen=True)
class _Ellipse:
    cx: float
    cy: float
    rx: float
    ry: float

    def mirrored(self) -> _Ellipse:
        return _Ellipse(1.0 - self.cx, self.cy, self.rx, self.ry)


@dataclass(frozen=True)
class _Canvas:
    """Pixel centres in the anatomy frame: a small per-image shift/scale so no two images align."""

    size: int
    x: np.ndarray  # (1, size) anatomy x of each column
    y: np.ndarray  # (size, 1) anatomy y of each row
    scale: float
    dx: float
    dy: float

    @property
    def px(self) -> float:  # one pixel in anatomy units
        return 1.0 / (self.size * self.scale)


def _canvas(size: int, rng: np.random.Generator) -> _Canvas:
    scale, dx, dy = 1.0 + rng.uniform(-0.03, 0.03), rng.uniform(-0.015, 0.015), rng.uniform(-0.015, 0.015)
    centres = (np.arange(size, dtype=np.float32) + 0.5) / size
    x = ((centres - 0.5 - dx) / scale + 0.5)[None, :]
    y = ((centres - 0.5 - dy) / scale + 0.5)[:, None]
    return _Canvas(size, x, y, scale, dx, dy)


def _box(c: _Canvas, cx: float, cy: float, rx: float, ry: float) -> tuple[slice, slice]:
    """Pixel rows/cols that can hold a shape with this anatomy bounding box (painting only there is fast)."""

    def span(centre: float, r: float, shift: float) -> slice:
        lo = ((centre - r - 0.5) * c.scale + 0.5 + shift) * c.size - 2
        hi = ((centre + r - 0.5) * c.scale + 0.5 + shift) * c.size + 3
        return slice(min(max(int(lo), 0), c.size), min(max(int(hi), 0), c.size))

    return span(cy, ry, c.dy), span(cx, rx, c.dx)


def _mask(
    c: _Canvas, e: _Ellipse, angle: float = 0.0, box: tuple[slice, slice] | None = None
) -> tuple[tuple[slice, slice], np.ndarray]:
    """Anti-aliased ellipse coverage (0..1) inside its bounding box, optionally rotated by `angle` radians."""
    if box is None:
        r = max(e.rx, e.ry)
        box = _box(c, e.cx, e.cy, r, r) if angle else _box(c, e.cx, e.cy, e.rx, e.ry)
    ddx, ddy = c.x[:, box[1]] - e.cx, c.y[box[0], :] - e.cy
    if angle:
        cos, sin = np.cos(angle), np.sin(angle)
        ddx, ddy = ddx * cos + ddy * sin, ddy * cos - ddx * sin
    d = np.sqrt((ddx / e.rx) ** 2 + (ddy / e.ry) ** 2)
    # (1 - d) * min radius ~ signed distance to the edge: a one-pixel ramp instead of jaggies.
    return box, np.clip((1.0 - d) * (min(e.rx, e.ry) / c.px) + 0.5, 0.0, 1.0)


def _fill(img: np.ndarray, c: _Canvas, e: _Ellipse, value: float, angle: float = 0.0) -> None:
    box, m = _mask(c, e, angle)
    img[box] += (value - img[box]) * m


def _add(img: np.ndarray, c: _Canvas, e: _Ellipse, value: float, angle: float = 0.0) -> None:
    """Additive, as in a projection radiograph where overlapping structures sum up."""
    box, m = _mask(c, e, angle)
    img[box] += value * m


def _ring(img: np.ndarray, c: _Canvas, e: _Ellipse, width: float, value: float, inner: float) -> None:
    _fill(img, c, e, value)
    _fill(img, c, _Ellipse(e.cx, e.cy, e.rx - width, e.ry - width), inner)


def _arc(img: np.ndarray, c: _Canvas, e: _Ellipse, width: float, value: float, keep: str) -> None:
    """Add an elliptic band, keeping only one half ("top", "bottom", "left" or "right") of it."""
    box, outer = _mask(c, e)
    _, inner = _mask(c, _Ellipse(e.cx, e.cy, e.rx - width, e.ry - width), box=box)
    band = outer - inner
    xs, ys = c.x[:, box[1]], c.y[box[0], :]
    half = {"top": ys < e.cy, "bottom": ys > e.cy, "left": xs < e.cx, "right": xs > e.cx}[keep]
    img[box] += value * band * half


def _texture(rng: np.random.Generator, size: int, cells: int, amp: float) -> np.ndarray:
    """Smooth random mottling (bicubic upsampling of a coarse normal field)."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.BICUBIC)) * amp


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable gaussian blur in numpy (PIL cannot blur float images)."""
    r = max(1, int(3 * sigma + 0.5))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2).astype(np.float32)
    k /= k.sum()
    n = img.shape[0]
    p = np.pad(img, r, mode="edge")
    rows = sum(w * p[:, i : i + n] for i, w in enumerate(k))
    return sum(w * rows[i : i + n, :] for i, w in enumerate(k))


# ---------------------------------------------------------------------------- anatomy
# One geometry per (view, region); CT and MRI share the axial one and differ only in grey levels.
# Lesion zones are built from the same constants, so a lesion always sits inside its organ.

_XR_LUNG = _Ellipse(0.29, 0.45, 0.175, 0.31)  # image-left lung; its mirror is the image-right one
_XR_HEART = _Ellipse(0.55, 0.72, 0.14, 0.10)
_XR_SKULL = _Ellipse(0.5, 0.46, 0.41, 0.44)
_XR_ORBIT = _Ellipse(0.39, 0.72, 0.065, 0.045)
_XR_BRAIN = _Ellipse(0.5, 0.45, 0.36, 0.39)  # inside the skull, a little off the bone
_XR_BELLY = _Ellipse(0.5, 0.47, 0.42, 0.36)  # above the pelvis
_AX_BODY = _Ellipse(0.5, 0.52, 0.47, 0.4)
_AX_BELLY = _Ellipse(0.5, 0.52, 0.42, 0.35)  # inside the fat layer
_AX_LUNG = _Ellipse(0.28, 0.5, 0.18, 0.3)
_AX_HEART = _Ellipse(0.53, 0.37, 0.085, 0.085)
_AX_SPINE = _Ellipse(0.5, 0.77, 0.055, 0.05)
_AX_HEAD = _Ellipse(0.5, 0.5, 0.42, 0.47)
_AX_BRAIN = _Ellipse(0.5, 0.5, 0.35, 0.4)  # inside the skull (CT) and the CSF rim (MRI)
_AX_VENTRICLE = _Ellipse(0.47, 0.48, 0.022, 0.085)  # drawn tilted by 0.3 rad
_AX_VENTRICLE_BOUND = _Ellipse(0.47, 0.48, 0.052, 0.095)  # holds the tilted one: what lesions avoid
_AX_LIVER = _Ellipse(0.33, 0.47, 0.2, 0.22)
_AX_KIDNEY = _Ellipse(0.37, 0.75, 0.04, 0.06)
_AX_AORTA = _Ellipse(0.52, 0.67, 0.028, 0.028)


def _xray_chest(c: _Canvas, rng: np.random.Generator) -> np.ndarray:
    img = np.full((c.size, c.size), 0.06, np.float32)
    _fill(img, c, _Ellipse(0.5, 0.05, 0.1, 0.2), 0.45)  # neck
    _fill(img, c, _Ellipse(0.5, 0.68, 0.5, 0.6), 0.5)  # torso
    img += np.clip(c.y - 0.5, 0, None) * 0.35  # denser (brighter) towards the abdomen
    for lung in (_XR_LUNG, _XR_LUNG.mirrored()):
        _fill(img, c, lung, 0.16)
    _fill(img, c, _XR_HEART, 0.55)
    _add(img, c, _Ellipse(0.5, 0.5, 0.035, 0.6), 0.12)  # spine through the mediastinum
    lift = rng.uniform(-0.02, 0.02)
    for k in range(7):  # posterior ribs: arches from the spine out and down
        _arc(img, c, _Ellipse(0.5, 0.3 + lift + 0.075 * k, 0.36, 0.14), 0.018, 0.11, "top")
    for sign in (-1, 1):  # clavicles
        _add(img, c, _Ellipse(0.5 + sign * 0.17, 0.13, 0.16, 0.014), 0.16, angle=sign * 0.18)
    return img + _texture(rng, c.size, 6, 0.025)


def _xray_brain(c: _Canvas, rng: np.random.Generator) -> np.ndarray:
    img = np.full((c.size, c.size), 0.08, np.float32)
    _fill(img, c, _Ellipse(0.5, 0.47, 0.42, 0.49), 0.22)  # soft tissue
    _ring(img, c, _XR_SKULL, 0.035, 0.78, 0.42)
    img += _texture(rng, c.size, 8, 0.03)
    for orbit in (_XR_ORBIT, _XR_ORBIT.mirrored()):
        _add(img, c, orbit, -0.12)
        _arc(img, c, orbit, 0.012, 0.18, "top")
    _add(img, c, _Ellipse(0.5, 0.76, 0.03, 0.05), -0.08)  # nasal cavity
    _arc(img, c, _Ellipse(0.5, 0.74, 0.27, 0.2), 0.03, 0.45, "bottom")  # mandible
    _add(img, c, _Ellipse(0.5, 0.8, 0.2, 0.02), 0.12)  # teeth
    return img


def _xray_abdomen(c: _Canvas, rng: np.random.Generator) -> np.ndarray:
    img = np.full((c.size, c.size), 0.12, np.float32)
    _fill(img, c, _Ellipse(0.5, 0.5, 0.47, 0.62), 0.42)
    img += _texture(rng, c.size, 6, 0.03)
    for k in range(6):  # lumbar vertebrae stacked down the midline
        _add(img, c, _Ellipse(0.5, 0.1 + 0.12 * k, 0.065, 0.04), 0.14)
    for sign in (-1, 1):
        _add(img, c, _Ellipse(0.5 + sign * 0.09, 0.6, 0.05, 0.3), 0.04, angle=sign * 0.25)  # psoas
        _arc(img, c, _Ellipse(0.5 + sign * 0.22, 0.97, 0.2, 0.14), 0.03, 0.3, "top")  # iliac wings
    for _ in range(int(rng.integers(6, 11))):  # bowel gas
        gx, gy = rng.uniform(0.2, 0.8), rng.uniform(0.25, 0.85)
        _add(img, c, _Ellipse(gx, gy, rng.uniform(0.015, 0.035), rng.uniform(0.012, 0.025)), -0.22)
    return img


def _axial_chest(c: _Canvas, rng: np.random.Generator, mri: bool) -> np.ndarray:
    # Grey levels: MRI (T2-ish) has bright fat and fluid and dark bone; CT has bright bone and dark fat.
    fat, muscle, lung, blood, marrow = (0.78, 0.38, 0.06, 0.55, 0.5) if mri else (0.34, 0.5, 0.03, 0.58, 0.55)
    img = np.zeros((c.size, c.size), np.float32)
    if not mri:
        _arc(img, c, _Ellipse(0.5, 0.91, 0.46, 0.08), 0.012, 0.35, "bottom")  # CT table
    _ring(img, c, _AX_BODY, 0.035, fat, muscle)
    for e in (_AX_LUNG, _AX_LUNG.mirrored()):
        _fill(img, c, e, lung)
    _fill(img, c, _AX_HEART, blood)
    _fill(img, c, _AX_AORTA, blood)
    _ring(img, c, _AX_SPINE, 0.012, 0.15 if mri else 0.95, marrow)
    _fill(img, c, _Ellipse(0.5, 0.845, 0.022, 0.02), 0.85 if mri else 0.15)  # spinal canal (CSF)
    for t in np.linspace(-1.0, 1.2, 5):  # rib cross-sections along the chest wall, both sides
        for sign in (-1, 1):
            rib = _Ellipse(0.5 + sign * 0.4 * np.cos(t), 0.52 + 0.29 * np.sin(t), 0.014, 0.014)
            _fill(img, c, rib, 0.1 if mri else 0.92)
    return img + _texture(rng, c.size, 10, 0.02)


def _axial_brain(c: _Canvas, rng: np.random.Generator, mri: bool) -> np.ndarray:
    img = np.zeros((c.size, c.size), np.float32)
    if mri:  # scalp fat bright, bone dark, CSF bright, grey > white matter, fluid bright (T2)
        _ring(img, c, _AX_HEAD, 0.025, 0.75, 0.08)
        _ring(img, c, _Ellipse(0.5, 0.5, 0.38, 0.435), 0.012, 0.7, 0.5)
        _fill(img, c, _Ellipse(0.5, 0.5, 0.29, 0.35), 0.4)
        fluid, falx = 0.8, 0.15
    else:  # thick bright skull, grey brain, dark CSF
        _ring(img, c, _AX_HEAD, 0.045, 0.97, 0.46)
        _fill(img, c, _Ellipse(0.5, 0.5, 0.3, 0.36), 0.42)
        fluid, falx = 0.2, 0.6
    img += _texture(rng, c.size, 10, 0.02)
    for sign in (-1, 1):
        v = _AX_VENTRICLE if sign < 0 else _AX_VENTRICLE.mirrored()
        _fill(img, c, v, fluid, angle=-sign * 0.3)
    _fill(img, c, _Ellipse(0.5, 0.5, 0.004, 0.42), falx)
    return img


def _axial_abdomen(c: _Canvas, rng: np.random.Generator, mri: bool) -> np.ndarray:
    fat, muscle, liver, spleen, kidney = (
        (0.8, 0.36, 0.3, 0.5, 0.55) if mri else (0.34, 0.48, 0.58, 0.53, 0.62)
    )
    img = np.zeros((c.size, c.size), np.float32)
    if not mri:
        _arc(img, c, _Ellipse(0.5, 0.91, 0.46, 0.08), 0.012, 0.35, "bottom")  # CT table
    _ring(img, c, _AX_BODY, 0.035, fat, muscle)
    _fill(img, c, _AX_LIVER, liver)  # the patient's right, so the image's left
    _fill(img, c, _Ellipse(0.74, 0.45, 0.09, 0.13), spleen)
    for e in (_AX_KIDNEY, _AX_KIDNEY.mirrored()):
        _fill(img, c, e, kidney)
    _ring(img, c, _AX_SPINE, 0.012, 0.15 if mri else 0.95, 0.5)
    _fill(img, c, _AX_AORTA, 0.55)
    img += _texture(rng, c.size, 10, 0.025)
    for _ in range(int(rng.integers(4, 8))):  # bowel gas, anterior
        gx, gy = rng.uniform(0.42, 0.66), rng.uniform(0.28, 0.55)
        _fill(img, c, _Ellipse(gx, gy, rng.uniform(0.012, 0.03), rng.uniform(0.01, 0.022)), 0.02)
    return img


def _painter(modality: str, region: str) -> Callable[[_Canvas, np.random.Generator], np.ndarray]:
    if modality == "x-ray":
        return {"chest": _xray_chest, "brain": _xray_brain, "abdomen": _xray_abdomen}[region]
    axial = {"chest": _axial_chest, "brain": _axial_brain, "abdomen": _axial_abdomen}[region]
    return lambda c, rng: axial(c, rng, modality == "mri")


@dataclass(frozen=True)
class _Zone:
    """Where lesions may go in one (view, region).

    Inside `organ` (one per image half, 0 = image-left), `midline` or more away from the midline,
    and clear of the structures in `avoid`.
    """

    organ: tuple[_Ellipse, _Ellipse]
    avoid: tuple[_Ellipse, ...] = ()
    midline: float = 0.03


_ZONES: dict[tuple[str, str], _Zone] = {
    ("x-ray", "chest"): _Zone((_XR_LUNG, _XR_LUNG.mirrored()), (_XR_HEART,)),
    ("x-ray", "brain"): _Zone((_XR_BRAIN, _XR_BRAIN), (_XR_ORBIT, _XR_ORBIT.mirrored())),
    ("x-ray", "abdomen"): _Zone((_XR_BELLY, _XR_BELLY), midline=0.075),  # clear of the vertebrae
    ("axial", "chest"): _Zone((_AX_LUNG, _AX_LUNG.mirrored()), (_AX_HEART, _AX_AORTA)),
    ("axial", "brain"): _Zone((_AX_BRAIN, _AX_BRAIN), (_AX_VENTRICLE_BOUND, _AX_VENTRICLE_BOUND.mirrored())),
    ("axial", "abdomen"): _Zone(
        (_AX_BELLY, _AX_BELLY), (_AX_KIDNEY, _AX_KIDNEY.mirrored(), _AX_SPINE, _AX_AORTA)
    ),
}


def render_image(
    modality: str, region: str, lesions: list[Lesion], rng: np.random.Generator, size: int
) -> Image.Image:
    """Draw one grayscale image.

    The random draws do not depend on ``lesions`` (they are painted last, without randomness), so
    the same ``rng`` state with and without lesions gives images that differ only at the lesions.

    Args:
        modality: one of :data:`MODALITIES`.
        region: one of :data:`REGIONS`.
        lesions: nodules to paint, in the anatomy frame (see :class:`Lesion`).
        rng: source of all randomness (pose jitter, texture, noise).
        size: side of the square image in pixels.

    Returns:
        A ``size`` x ``size`` PIL image in mode "L".
    """
    c = _canvas(size, rng)
    img = _painter(modality, region)(c, rng)
    for les in lesions:
        _fill(img, c, _Ellipse(les.x, les.y, les.radius, les.radius), les.brightness)
    # Scale blur and noise with the image so that a 64 px and a 256 px image look alike.
    px = size / 128
    noise = rng.standard_normal((2, size, size), dtype=np.float32)
    if modality == "x-ray":
        img = _blur(img, 1.1 * px) + 0.018 * noise[0]
    elif modality == "ct":
        img = _blur(img, 0.6 * px) + 0.02 * noise[0]
    else:  # MRI magnitude images: Rician noise lifts the air to a grey, grainy background
        img = _blur(img, 0.8 * px) * (1.0 + _texture(rng, size, 3, 0.08))  # coil bias field
        img = np.sqrt((img + 0.05 * noise[0]) ** 2 + (0.05 * noise[1]) ** 2)
    return Image.fromarray(np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")


# ---------------------------------------------------------------------------- findings


def _inside(e: _Ellipse, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    return ((px - e.cx) / e.rx) ** 2 + ((py - e.cy) / e.ry) ** 2 <= 1.0


_RIM = np.linspace(0.0, 2.0 * np.pi, 24, endpoint=False)
_GAP = 0.015  # lesions never touch each other or an avoided structure, so they stay countable


def _fits(zone: _Zone, half: int, placed: list[Lesion], x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Which candidate centres (x, y) give a circle of radius `r` that `zone` allows in image half `half`."""
    rim_x, rim_y = np.cos(_RIM) * (r + _GAP), np.sin(_RIM) * (r + _GAP)
    ok = _inside(zone.organ[half], x[:, None] + rim_x, y[:, None] + rim_y).all(axis=1)
    ok &= (0.5 - zone.midline - (x + r) >= 0) if half == 0 else (x - r - 0.5 - zone.midline >= 0)
    for e in zone.avoid:  # rim points clear of e, and e's own rim clear of the circle
        ok &= ~_inside(e, x[:, None] + rim_x, y[:, None] + rim_y).any(axis=1)
        ex, ey = e.cx + e.rx * np.cos(_RIM), e.cy + e.ry * np.sin(_RIM)
        ok &= (np.hypot(x[:, None] - ex, y[:, None] - ey) >= r + _GAP).all(axis=1)
    for les in placed:
        ok &= np.hypot(x - les.x, y - les.y) >= r + les.radius + _GAP
    return ok


def sample_lesions(
    modality: str,
    region: str,
    side: str,
    radii: list[float],
    brightness: list[float],
    rng: np.random.Generator,
) -> list[Lesion]:
    """Place non-overlapping lesions inside the organ on the patient's `side` (rejection sampling).

    Args:
        modality: one of :data:`MODALITIES` (x-ray and the axial CT/MRI have different anatomy).
        region: one of :data:`REGIONS`.
        side: the patient's side, "left" or "right" (drawn in the image's right or left half).
        radii: one radius per lesion, as a fraction of the image width.
        brightness: one grey level per lesion.
        rng: the generator to draw positions from.

    Returns:
        The lesions, sorted top to bottom.

    Raises:
        RuntimeError: no room for them after many tries (a bug in the anatomy tables, not user input).
    """
    zone = _ZONES[("x-ray" if modality == "x-ray" else "axial", region)]
    half = 1 if side == "left" else 0  # radiological convention: the patient's left is the image's right
    organ = zone.organ[half]
    x_lo = max(organ.cx - organ.rx, 0.5) if half else organ.cx - organ.rx
    x_hi = organ.cx + organ.rx if half else min(organ.cx + organ.rx, 0.5)
    for _ in range(50):  # restart when an early lesion leaves no room for a later one
        placed: list[Lesion] = []
        for r, b in zip(radii, brightness, strict=True):
            x = rng.uniform(x_lo, x_hi, 256)
            y = rng.uniform(organ.cy - organ.ry, organ.cy + organ.ry, 256)
            ok = np.flatnonzero(_fits(zone, half, placed, x, y, r))
            if not len(ok):
                break
            placed.append(Lesion(float(x[ok[0]]), float(y[ok[0]]), float(r), float(b)))
        if len(placed) == len(radii):
            return sorted(placed, key=lambda les: les.y)
    raise RuntimeError(f"could not place lesions {radii} in {modality} {region} ({side}): no room")


# ---------------------------------------------------------------------------- questions
# Paraphrases per (answer_type, category), lower case, ending in "?".
# Fields: {am} the modality with its article ("an x-ray"), {m} modality, {r} region, {s} side.

_TEMPLATES: dict[tuple[str, str], tuple[str, ...]] = {
    ("closed", "presence"): (
        "is there a lesion?",
        "are there any nodules?",
        "is a lesion present?",
        "are there any lesions in this image?",
        "do you see a nodule?",
        "is there an abnormality?",
    ),
    ("closed", "modality"): (
        "is this {am} scan?",
        "is this {am} image?",
        "was this image taken with {m}?",
        "is the modality {m}?",
    ),
    ("closed", "region"): (
        "is this an image of the {r}?",
        "does this image show the {r}?",
        "is the {r} shown?",
        "is this a scan of the {r}?",
    ),
    ("closed", "side"): (
        "is the lesion on the {s} side?",
        "are the lesions on the {s}?",
        "is the {s} side affected?",
        "is the nodule on the patient's {s}?",
    ),
    ("open", "modality"): (
        "what modality is this?",
        "what imaging modality was used?",
        "what kind of scan is this?",
        "which imaging technique is shown?",
    ),
    ("open", "region"): (
        "which organ is shown?",
        "what part of the body is this?",
        "which body region is imaged?",
        "what region is shown in this image?",
    ),
    ("open", "side"): (
        "which side is the lesion on?",
        "on which side are the lesions?",
        "which side is affected?",
        "where is the nodule, left or right?",
    ),
    ("open", "count"): (
        "how many lesions are there?",
        "how many nodules can you see?",
        "what is the number of lesions?",
        "how many lesions are present?",
    ),
    ("open", "size"): (
        "how large is the lesion?",
        "what size are the nodules?",
        "how big is the lesion?",
        "are the lesions small or large?",
    ),
}
_KINDS = tuple(_TEMPLATES)
_NEEDS_LESION = ("side", "size")
# Sampling weights. The lesion kinds are slow to learn (see the notes), so they are asked more;
# modality and region have two kinds each (closed + open) and are easy, so each kind gets less;
# size exists only for lesion images, hence its large weight. Categories come out at 14-18% each.
_WEIGHTS = {
    ("closed", "modality"): 0.5,
    ("closed", "region"): 0.5,
    ("closed", "side"): 1.8,
    ("open", "modality"): 0.5,
    ("open", "region"): 0.5,
    ("open", "side"): 1.8,
    ("open", "count"): 2.4,
    ("open", "size"): 4.0,
}
_ZERO_COUNT_DAMPING = 0.2  # see _questions: keeps "0" from being the majority count answer
_P_PRESENCE = 0.7  # chance of a presence question, before rebalancing its yes/no


@dataclass(frozen=True)
class _Image:
    """Everything decided about one image before it is drawn."""

    index: int
    modality: str
    region: str
    side: str | None  # patient's side, None without lesions
    size: str | None
    lesions: tuple[Lesion, ...]
    qas: tuple[tuple[str, str, str, str, str | None], ...] = ()  # (answer_type, category, q, a, asked)

    @property
    def meta(self) -> dict[str, Any]:
        half = None if self.side is None else ("right" if self.side == "left" else "left")
        return {
            "image_index": self.index,
            "modality": self.modality,
            "region": self.region,
            "lesion_count": len(self.lesions),
            "lesion_side": self.side,
            "lesion_size": self.size,
            "lesion_image_half": half,
        }


def _closed_pick(truth: str, options: tuple[str, ...], rng: np.random.Generator) -> tuple[str, str]:
    """Ask about the true value or another one with equal odds, so yes and no are balanced."""
    if rng.random() < 0.5:
        return truth, "yes"
    others = [o for o in options if o != truth]
    return others[int(rng.integers(len(others)))], "no"


def _ask(kind: tuple[str, str], im: _Image, rng: np.random.Generator) -> tuple[str, str, str | None]:
    """One (question, answer, asked value) for `kind` about image `im`."""
    templates = _TEMPLATES[kind]
    text = templates[int(rng.integers(len(templates)))]
    atype, cat = kind
    truth = {"presence": None, "modality": im.modality, "region": im.region, "side": im.side, "size": im.size}
    if kind == ("closed", "presence"):
        return text, "yes" if im.lesions else "no", None
    if atype == "closed":
        options = {"modality": MODALITIES, "region": REGIONS, "side": SIDES}[cat]
        asked, answer = _closed_pick(str(truth[cat]), options, rng)
        question = text.format(am=f"{_ARTICLE.get(asked, 'a')} {asked}", m=asked, r=asked, s=asked)
        return question, answer, asked
    if cat == "count":
        return text, str(len(im.lesions)), None
    return text, str(truth[cat]), None


def _questions(im: _Image, cfg: SynthConfig, rng: np.random.Generator) -> _Image:
    kinds: list[tuple[str, str]] = []
    # Ask "is there a lesion?" less often on the more common answer so that yes/no come out even.
    f = cfg.lesion_fraction
    balance = min(1.0, (1 - f) / f) if im.lesions else min(1.0, f / (1 - f)) if f < 1 else 1.0
    if rng.random() < _P_PRESENCE * balance:
        kinds.append(("closed", "presence"))
    pool = [k for k in _WEIGHTS if im.lesions or k[1] not in _NEEDS_LESION]
    n = min(cfg.questions_per_image - len(kinds), len(pool))
    if n > 0:
        # Without lesions, count is one of only 5 kinds and would be asked nearly always, making "0"
        # the majority count answer; damp it so that 0, 1 and 2 come out closer to even.
        damp = {("open", "count"): _ZERO_COUNT_DAMPING} if not im.lesions else {}
        w = np.array([_WEIGHTS[k] * damp.get(k, 1.0) for k in pool])
        picks = rng.choice(len(pool), size=n, replace=False, p=w / w.sum())
        kinds += [pool[i] for i in sorted(picks)]
    qas = tuple((k[0], k[1], *_ask(k, im, rng)) for k in kinds)
    return _Image(im.index, im.modality, im.region, im.side, im.size, im.lesions, qas)


def _plan_image(index: int, cfg: SynthConfig) -> _Image:
    # One generator per image (and a separate one for drawing it): image i is the same whatever
    # n_images is, and planning never shifts the random stream of the pixels.
    rng = np.random.default_rng([cfg.seed, index, 0])
    modality = MODALITIES[int(rng.integers(len(MODALITIES)))]
    region = REGIONS[int(rng.integers(len(REGIONS)))]
    side = size = None
    lesions: list[Lesion] = []
    if rng.random() < cfg.lesion_fraction:
        count = int(rng.integers(1, cfg.max_lesions + 1))
        side, size = SIDES[int(rng.integers(2))], SIZES[int(rng.integers(2))]
        lo, hi = cfg.small_radius if size == "small" else cfg.large_radius
        radii = sorted(rng.uniform(lo, hi, count).tolist(), reverse=True)  # biggest first packs best
        brightness = rng.uniform(*cfg.lesion_brightness, count).tolist()
        lesions = sample_lesions(modality, region, side, radii, brightness, rng)
    return _questions(_Image(index, modality, region, side, size, tuple(lesions)), cfg, rng)


# ---------------------------------------------------------------------------- splits


def _cells(im: _Image) -> Counter[tuple[str, ...]]:
    """What a split should hold in proportion: images, question kinds and their answers."""
    cells: Counter[tuple[str, ...]] = Counter({("image",): 1})
    for atype, cat, _, answer, _ in im.qas:
        cells[(atype, cat)] += 1
        cells[(atype, cat, answer)] += 1
    return cells


def _assign_splits(images: list[_Image], seed: int) -> list[str]:
    """Split by image, greedily stratified over question kinds and answers (80/10/10 images)."""
    return assign_splits([_cells(im) for im in images], SPLIT_FRACTIONS, seed)


# ---------------------------------------------------------------------------- dataset


def _records(im: _Image) -> list[VQARecord]:
    return [
        VQARecord(
            image=f"images/{im.index:06d}.png",
            question=q,
            answer=a,
            answer_type=atype,
            category=cat,
            id=f"synth-{im.index:06d}-{j}",
            meta={**im.meta, **({"asked": asked} if asked is not None else {})},
        )
        for j, (atype, cat, q, a, asked) in enumerate(im.qas)
    ]


def _summary(cfg: SynthConfig, images: list[_Image], splits: list[str]) -> dict[str, Any]:
    counts: dict[str, dict[str, Any]] = {k: {} for k in ("images", "questions", "answer_type", "category")}
    counts["answer_type_category"] = {}
    answers: dict[str, Counter[str]] = {f"{a}/{c}": Counter() for a, c in _KINDS}
    for s in SPLITS:
        qas = [qa for im, sp in zip(images, splits, strict=True) if sp == s for qa in im.qas]
        counts["images"][s] = splits.count(s)
        counts["questions"][s] = len(qas)
        counts["answer_type"][s] = dict(sorted(Counter(q[0] for q in qas).items()))
        counts["category"][s] = dict(sorted(Counter(q[1] for q in qas).items()))
        counts["answer_type_category"][s] = dict(sorted(Counter(f"{q[0]}/{q[1]}" for q in qas).items()))
        for atype, cat, _, answer, _ in qas:
            answers[f"{atype}/{cat}"][answer] += 1
    findings = {
        "modality": dict(sorted(Counter(im.modality for im in images).items())),
        "region": dict(sorted(Counter(im.region for im in images).items())),
        "lesion_count": dict(sorted(Counter(str(len(im.lesions)) for im in images).items())),
        "lesion_size": dict(sorted(Counter(str(im.size) for im in images).items())),
        "lesion_side": dict(sorted(Counter(str(im.side) for im in images).items())),
    }
    return {
        "generator": "edgevqa.data.synth",
        "generator_version": GENERATOR_VERSION,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},  # as in JSON
        "side_convention": "radiological: lesion_side is the patient's side, whose left is the image's right",
        "splits": {s: {"images": counts["images"][s], "questions": counts["questions"][s]} for s in SPLITS},
        "counts": counts,
        "answers": {k: dict(sorted(v.items())) for k, v in answers.items()},
        "findings": findings,
    }


def caption_of(im: _Image) -> str:
    """A one-line report of the image's findings: "brain ct with one small lesion on the right"."""
    head = f"{im.region} {im.modality}"
    if not im.lesions:
        return f"{head} with no lesion"
    n = len(im.lesions)
    return f"{head} with {('one', 'two')[n - 1]} {im.size} lesion{'s' if n > 1 else ''} on the {im.side}"


def _caption_record(im: _Image) -> CaptionRecord:
    return CaptionRecord(
        image=f"images/{im.index:06d}.png",
        caption=caption_of(im),
        modality=im.modality,
        id=f"synth-{im.index:06d}",
        meta=im.meta,
    )


def generate(
    out_dir: str | Path,
    cfg: SynthConfig,
    overwrite: bool = False,
    progress: bool = True,
    captions: bool = False,
) -> dict[str, Any]:
    """Write the synthetic dataset to `out_dir` (all of it or, on any error, nothing).

    Same config => byte-identical files: every random draw comes from numpy generators seeded by
    ``(cfg.seed, image index)``.

    Args:
        out_dir: dataset directory to create (see the module docstring for its layout).
        cfg: what to generate.
        overwrite: replace an existing non-empty `out_dir`.
        progress: show a tqdm progress bar (on stderr) while drawing images.
        captions: also write ``{split}.captions.jsonl``, one caption per image (same splits).

    Returns:
        The summary also written to ``out_dir/dataset.json``: config, generator version, images and
        questions per split (``splits``), counts per split / answer type / category (``counts``),
        answer distributions (``answers``) and finding counts (``findings``).

    Raises:
        InputError: `out_dir` exists, is not empty and `overwrite` is False.
    """
    out = Path(out_dir)
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} already exists and is not empty; pass --overwrite to replace it")
    images = [_plan_image(i, cfg) for i in range(cfg.n_images)]
    splits = _assign_splits(images, cfg.seed)
    with atomic.directory(out, overwrite=overwrite) as tmp:
        (tmp / "images").mkdir()
        for im in tqdm(images, desc="synth images", unit="img", disable=not progress):
            rng = np.random.default_rng([cfg.seed, im.index, 1])
            img = render_image(im.modality, im.region, list(im.lesions), rng, cfg.image_size)
            img.save(tmp / "images" / f"{im.index:06d}.png", format="PNG")
        for s in SPLITS:
            write_split(
                tmp, s, [r for im, sp in zip(images, splits, strict=True) if sp == s for r in _records(im)]
            )
            if captions:
                write_captions(tmp, s, [_caption_record(im) for im, sp in zip(images, splits) if sp == s])
        summary = _summary(cfg, images, splits)
        atomic.write_json(tmp / "dataset.json", summary)
    return summary


# ---------------------------------------------------------------------------- vocabulary

_TOKEN = re.compile(r"\w+|[^\w\s]")  # what a BERT basic tokenizer does to lower-case ASCII text


def vocabulary() -> list[str]:
    """Every token that can appear in a generated question or answer, sorted.

    Tokens are split like a BERT basic tokenizer: lower case, each punctuation character on its own
    ("x-ray" -> "x", "-", "ray"; "?" separate).

    Returns:
        The sorted unique tokens.
    """
    texts: list[str] = ["yes", "no", *MODALITIES, *REGIONS, *SIDES, *SIZES, "0", "1", "2"]
    for templates in _TEMPLATES.values():
        for t in templates:
            for m in MODALITIES:
                texts += [t.format(am=f"{_ARTICLE[m]} {m}", m=m, r=r, s=s) for r in REGIONS for s in SIDES]
    return sorted({tok for text in texts for tok in _TOKEN.findall(text.lower())})
