"""load_image: one clear InputError per kind of bad input, HF-identical RGB for 8-bit modes."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgevqa.errors import InputError
from edgevqa.runtime.images import load_image, stretch_to_8bit, to_rgb

RNG = np.random.default_rng(0)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but which holds no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def _encoded(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _rgb(h: int = 40, w: int = 30) -> Image.Image:
    return Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _message(source, **kw) -> str:
    with pytest.raises(InputError) as e:
        load_image(source, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------- bad input


def test_missing_path(tmp_path: Path):
    assert _message(tmp_path / "x.png") == f"image not found: {tmp_path / 'x.png'}"


def test_directory(tmp_path: Path):
    assert "is a directory" in _message(str(tmp_path))


def test_not_an_image(tmp_path: Path):
    p = tmp_path / "x.txt"
    p.write_text("hello")
    assert _message(p).startswith(f"{p} is not an image PIL can read (PNG, JPEG")
    (tmp_path / "empty.png").write_bytes(b"")
    assert "is not an image" in _message(tmp_path / "empty.png")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated(tmp_path: Path, fmt: str):
    data = _encoded(_rgb(200, 200), fmt)
    p = tmp_path / f"x.{fmt.lower()}"
    p.write_bytes(data[: len(data) // 2])
    assert _message(p).startswith(f"{p} is truncated or corrupt")


def test_header_larger_than_limit():
    msg = _message(_png_header_only(10_000, 10_000))
    assert msg == "<image bytes> is 10000x10000 = 100 Mpx, larger than the 64 Mpx limit (downscale it first)"


def test_decompression_bomb_beyond_pil_limit(tmp_path: Path):
    # PIL itself refuses this one in Image.open (> 2 * MAX_IMAGE_PIXELS); the message is still ours.
    p = tmp_path / "x.png"
    p.write_bytes(_png_header_only(50_000, 50_000))
    assert _message(p) == f"{p} is 2500 Mpx, larger than the 64 Mpx limit (downscale it first)"


def test_own_max_pixels():
    msg = _message(_encoded(_rgb(30, 40)), max_pixels=1000)
    assert msg == "<image bytes> is 40x30 = 1200 px, larger than the 1000 px limit (downscale it first)"
    assert load_image(_encoded(_rgb(30, 40)), max_pixels=1200).size == (40, 30)


def test_zero_sized():
    # PIL already refuses a 0-pixel header when it identifies the file.
    assert _message(_png_header_only(0, 5))


# ---------------------------------------------------------------- valid but odd images


def test_sources_and_result(tmp_path: Path):
    img = _rgb()
    p = tmp_path / "x.png"
    img.save(p)
    for src in (p, str(p), p.read_bytes()):
        out = load_image(src)
        assert out.mode == "RGB" and out.size == (30, 40)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(img))


def test_one_pixel():
    out = load_image(_encoded(Image.new("L", (1, 1), 77)))
    assert out.size == (1, 1) and out.getpixel((0, 0)) == (77, 77, 77)


def test_alpha_is_composited_on_white():
    a = Image.new("RGBA", (2, 1), (10, 20, 30, 255))
    a.putpixel((1, 0), (10, 20, 30, 0))
    out = np.asarray(load_image(_encoded(a)))
    assert out[0, 0].tolist() == [10, 20, 30] and out[0, 1].tolist() == [255, 255, 255]


def _eight_bit_images() -> dict[str, tuple[Image.Image, str]]:
    rgb = _rgb()
    rgba = Image.fromarray(RNG.integers(0, 256, (40, 30, 4), dtype=np.uint8))
    p_trans = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    p_trans.info["transparency"] = 3
    return {
        "RGB": (rgb, "PNG"),
        "L": (rgb.convert("L"), "PNG"),
        "1": (rgb.convert("1"), "PNG"),
        "P": (rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16), "PNG"),
        "P+transparency": (p_trans, "PNG"),
        "LA": (rgba.convert("LA"), "PNG"),
        "RGBA": (rgba, "PNG"),
        "CMYK": (rgb.convert("CMYK"), "JPEG"),
    }


@pytest.mark.parametrize("kind", list(_eight_bit_images()))
def test_eight_bit_modes_match_hf_convert_to_rgb(kind: str):
    transforms = pytest.importorskip("transformers.image_transforms")
    img, fmt = _eight_bit_images()[kind]
    data = _encoded(img, fmt, **({"transparency": 3} if kind == "P+transparency" else {}))
    ours = np.asarray(load_image(data))
    hf = transforms.convert_to_rgb(Image.open(io.BytesIO(data)), return_numpy=True)
    assert Image.open(io.BytesIO(data)).mode == kind.split("+")[0]
    np.testing.assert_array_equal(ours, hf)


def test_sixteen_bit_is_stretched_not_clipped():
    a = np.array([[0, 1000, 2000], [3000, 4000, 4095]], dtype=np.uint16)  # 12-bit data in a 16-bit PNG
    img = Image.fromarray(a)
    assert img.mode == "I;16"
    out = np.asarray(load_image(_encoded(img)))[..., 0]
    np.testing.assert_array_equal(out, np.rint((a - 0) * 255.0 / 4095).astype(np.uint8))
    # what PIL's convert("RGB") (and so HF) would have given: everything above 255 is white
    assert (np.asarray(img.convert("RGB"))[..., 0] == 255).sum() == 5


def test_high_bit_modes():
    i32 = Image.fromarray(np.array([[-5, 5]], dtype=np.int32))
    assert np.asarray(to_rgb(i32))[0, :, 0].tolist() == [0, 255]
    f = Image.fromarray(np.array([[0.5, np.nan, 1.5, np.inf]], dtype=np.float32))
    assert np.asarray(stretch_to_8bit(f))[0].tolist() == [0, 0, 255, 0]
    flat = Image.fromarray(np.full((2, 2), 700, dtype=np.uint16))
    assert np.asarray(stretch_to_8bit(flat)).max() == 0
    tiff = _encoded(Image.fromarray(np.array([[0.0, 0.25, 1.0]], dtype=np.float32)), "TIFF")
    assert np.asarray(load_image(tiff))[0, :, 0].tolist() == [0, 64, 255]


def test_exif_orientation_is_applied(tmp_path: Path):
    img = Image.new("RGB", (4, 2), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 1, 1))  # mark the top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    p = tmp_path / "rot.jpg"
    img.save(p, quality=100, exif=exif)
    out = load_image(p)
    assert out.size == (2, 4)
    assert np.asarray(out)[0, 1].mean() > 200  # the marked corner is now top-right
    image_utils = pytest.importorskip("transformers.image_utils")
    # HF's own load_image(path) rotates too (its processor does not, given an opened PIL image)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(image_utils.load_image(str(p))))
