"""The generator's settings, its vocabulary of modalities, regions, sides and sizes, and a lesion."""

from __future__ import annotations

from dataclasses import dataclass

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
        from edgevqa.data.synth.questions import _KINDS  # the question kinds (a cycle at import)

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
