"""Drawing: ellipses on a coordinate grid, the anatomy of each modality and region, and
:func:`render_image`, which paints one grayscale image with its lesions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from edgevqa.data.synth.config import Lesion

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
