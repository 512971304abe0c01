"""Findings: where lesions may go in each view and region, and :func:`sample_lesions`."""

from __future__ import annotations

import numpy as np

from edgevqa.data.synth.config import Lesion
from edgevqa.data.synth.draw import _ZONES, _Ellipse, _Zone

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
