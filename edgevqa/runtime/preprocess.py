"""PIL image -> ``pixel_values``: a numpy port of transformers' ``BlipImageProcessorPil``.

The steps and dtypes follow transformers 5.x ``PilBackend`` exactly, so the result is bit-identical:

1. ``convert_to_rgb`` (see :func:`edgevqa.runtime.images.to_rgb`), giving a uint8 HWC array.
2. resize with PIL **on the uint8 image** (HF turns the uint8 array back into a PIL image and calls
   ``Image.resize((w, h), resample)``), so PIL rounds the resampled values to integers here too.
3. rescale: ``(x.astype(float64) * rescale_factor).astype(float32)``.
4. normalize in float32: ``(x - mean) / std`` with ``mean``/``std`` cast to float32.

Example:
    >>> spec = ImageSpec(384, 384, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)  # doctest: +SKIP
    >>> preprocess(load_image("chest.png"), spec).shape                  # doctest: +SKIP
    (1, 3, 384, 384)
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from edgevqa.bundle import ImageSpec
from edgevqa.errors import BundleError, InputError
from edgevqa.runtime.images import to_rgb

# transformers.image_utils.OPENAI_CLIP_MEAN / _STD: what BLIP was pretrained with.
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "hamming": Image.Resampling.HAMMING,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


def resample_filter(name: str) -> Image.Resampling:
    """The PIL filter for a resample name from the image spec (``"bicubic"``, ``"bilinear"``, ...).

    Raises:
        BundleError: the name is not one of :data:`RESAMPLE`.
    """
    try:
        return RESAMPLE[name.lower()]
    except KeyError:
        raise BundleError(
            f"unknown resample filter {name!r} in the image spec; expected one of {sorted(RESAMPLE)}"
        ) from None


def preprocess(image: Image.Image, spec: ImageSpec) -> np.ndarray:
    """Turn one image into the vision encoder's ``pixel_values``.

    Args:
        image: any PIL image (use :func:`edgevqa.runtime.images.load_image` to open a file).
        spec: the bundle's image settings (size, mean, std, resample, rescale factor).

    Returns:
        float32 array of shape ``[1, 3, spec.height, spec.width]``, C-contiguous.

    Raises:
        InputError: ``spec.do_convert_rgb`` is off and the image is not RGB.
        BundleError: ``spec.resample`` is not a known filter name.
    """
    resample = resample_filter(spec.resample)
    if spec.do_convert_rgb:
        image = to_rgb(image)
    elif image.mode != "RGB":
        raise InputError(
            f"expected an RGB image, got mode {image.mode!r} (this bundle does not convert images)"
        )
    # Resize the uint8 image, as HF does; resizing floats would skip PIL's rounding to integers.
    # PIL resizes each band on its own with the same kernel, so a grey image (R = G = B, most
    # radiographs) is resized once as one band: the same values, a third of the work.
    size = (spec.width, spec.height)
    grey = single_band(image)
    if grey is not None:
        x = np.asarray(grey.resize(size, resample=resample))
        bands = (x, x, x)
    else:
        x = np.asarray(image.resize(size, resample=resample))  # HWC uint8
        bands = (x[..., 0], x[..., 1], x[..., 2])
    # a uint8 band has 256 values: each is looked up in a table made with HF's own operations
    lut = value_table(spec)
    out = np.empty((1, 3, spec.height, spec.width), dtype=np.float32)
    for c in range(3):  # uint8 indices never leave the table: "clip" is exact, and 6x faster than
        np.take(lut[c], bands[c], out=out[0, c], mode="clip")  # "raise", which buffers the result
    return out


def single_band(image: Image.Image) -> Image.Image | None:
    """The one band of an RGB image whose three bands are equal, else None."""
    a = np.asarray(image)
    if a.ndim != 3 or not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])):
        return None
    return Image.fromarray(np.ascontiguousarray(a[..., 0]), mode="L")


def value_table(spec: ImageSpec) -> np.ndarray:
    """[3, 256] float32: what rescale + normalize make of each uint8 value, per channel."""
    v = np.arange(256, dtype=np.uint8)[:, None]
    # HF upcasts to float64 before scaling and only then casts to float32; the order changes the last bit.
    x = (v.astype(np.float64) * spec.rescale_factor).astype(np.float32)
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(((x - mean) / std).T)  # float32 throughout, as HF's CHW version
