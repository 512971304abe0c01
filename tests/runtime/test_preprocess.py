"""preprocess: the numpy port must match transformers' BlipImageProcessorPil to 1e-5 (it is exact)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgevqa.bundle import ImageSpec
from edgevqa.errors import BundleError, InputError
from edgevqa.runtime.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, RESAMPLE, preprocess

RNG = np.random.default_rng(0)
SIZES = [(96, 96), (384, 384), (64, 80)]  # (height, width)


def _spec(h: int, w: int, resample: str = "bicubic") -> ImageSpec:
    return ImageSpec(height=h, width=w, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD, resample=resample)


def _images() -> dict[str, Image.Image]:
    gradient = np.linspace(0, 255, 500 * 300).reshape(300, 500).astype(np.uint8)  # 500 wide, 300 high
    return {
        "rgb_37x53": Image.fromarray(RNG.integers(0, 256, (53, 37, 3), dtype=np.uint8)),
        "gray_500x300": Image.fromarray(gradient),
        "one_pixel": Image.new("RGB", (1, 1), (200, 10, 99)),
        "rgb_384x384": Image.fromarray(RNG.integers(0, 256, (384, 384, 3), dtype=np.uint8)),
        "rgba_50x40": Image.fromarray(RNG.integers(0, 256, (40, 50, 4), dtype=np.uint8)),
    }


IMAGES = _images()


@pytest.fixture(scope="module")
def blip_pil():
    transformers = pytest.importorskip("transformers")
    return transformers.BlipImageProcessorPil


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", list(IMAGES))
def test_matches_blip_image_processor_pil(blip_pil, name: str, size: tuple[int, int]):
    h, w = size
    img = IMAGES[name]
    ours = preprocess(img, _spec(h, w))
    hf = blip_pil(size={"height": h, "width": w})(img, return_tensors="np")["pixel_values"]
    assert ours.shape == hf.shape == (1, 3, h, w)
    assert ours.dtype == hf.dtype == np.float32
    assert float(np.abs(ours - hf).max()) <= 1e-5


@pytest.mark.parametrize("resample", sorted(RESAMPLE))
def test_every_resample_filter_matches(blip_pil, resample: str):
    img = IMAGES["rgb_37x53"]
    ours = preprocess(img, _spec(64, 80, resample))
    hf = blip_pil(size={"height": 64, "width": 80}, resample=RESAMPLE[resample])(img, return_tensors="np")
    assert float(np.abs(ours - hf["pixel_values"]).max()) <= 1e-5


def test_hand_computed_values():
    x = preprocess(Image.new("RGB", (1, 1), (255, 0, 51)), _spec(2, 3))
    expect = (np.array([1.0, 0.0, 0.2]) - np.array(OPENAI_CLIP_MEAN)) / np.array(OPENAI_CLIP_STD)
    assert x.shape == (1, 3, 2, 3) and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_allclose(x[0, :, 0, 0], expect, atol=1e-6)
    assert np.all(x == x[:, :, :1, :1])


def test_unknown_resample():
    with pytest.raises(BundleError, match="unknown resample filter 'cubic'.*'bicubic'"):
        preprocess(IMAGES["one_pixel"], _spec(4, 4, "cubic"))


def test_no_convert_needs_rgb():
    spec = ImageSpec(4, 4, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, do_convert_rgb=False)
    assert preprocess(IMAGES["one_pixel"], spec).shape == (1, 3, 4, 4)
    with pytest.raises(InputError, match="expected an RGB image, got mode 'L'"):
        preprocess(IMAGES["gray_500x300"], spec)


@pytest.mark.parametrize("resample", ["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"])
def test_grey_images_take_the_one_band_path_with_identical_values(resample, monkeypatch):
    """R = G = B images are resized as one band; PIL resizes bands independently, so the
    result must equal the three-band path bit for bit (down, up and odd sizes)."""
    from edgevqa.runtime import preprocess as pre

    rng = np.random.default_rng(0)
    for h, w in [(37, 53), (300, 700), (16, 16)]:
        g = rng.integers(0, 256, (h, w), dtype=np.uint8)
        rgb = Image.fromarray(np.stack([g, g, g], -1), "RGB")
        assert pre.single_band(rgb) is not None
        for size in [(64, 64), (17, 29)]:
            spec = ImageSpec(size[1], size[0], OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, resample=resample)
            one_band = pre.preprocess(rgb, spec)
            with monkeypatch.context() as m:
                m.setattr(pre, "single_band", lambda image: None)
                three_bands = pre.preprocess(rgb, spec)
            assert np.array_equal(one_band, three_bands)
    colour = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "RGB")
    assert pre.single_band(colour) is None
