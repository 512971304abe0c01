"""Hostile image files, made here: whatever the bytes, load_image returns an RGB image or raises
one InputError; special files never block; the CLI ends in one line and exit 2."""

from __future__ import annotations

import io
import os
import random
import struct
import subprocess
import threading
import zlib

import numpy as np
import pytest
from conftest import edgevqa_cmd
from PIL import Image

from edgevqa.errors import InputError
from edgevqa.runtime.images import load_image


def seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray((rng.random((24, 20, 3)) * 255).astype(np.uint8))
    deep = Image.fromarray((rng.random((24, 20)) * 65535).astype(np.uint16))
    out = []
    for im, fmt in [
        (rgb, "PNG"),
        (rgb.convert("P"), "PNG"),
        (rgb, "JPEG"),
        (rgb, "TIFF"),
        (deep, "TIFF"),
        (rgb.convert("P"), "GIF"),
        (rgb, "BMP"),
        (rgb, "WEBP"),
        (deep, "PNG"),
    ]:
        buf = io.BytesIO()
        im.save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


def mutate(data: bytes, r: random.Random) -> bytes:
    d = bytearray(data)
    for _ in range(r.randint(1, 8)):
        k, op = r.randrange(len(d)), r.random()
        if op < 0.6:
            d[k] = r.randrange(256)
        elif op < 0.8:
            del d[k : k + r.randint(1, 16)]
        else:
            d[k:k] = bytes(r.randrange(256) for _ in range(r.randint(1, 16)))
    return bytes(d)


def test_mutated_files_decode_or_fail_with_one_input_error():
    r = random.Random(0)
    corpus = seeds()
    refused = 0
    for _ in range(1500):
        try:
            assert load_image(mutate(r.choice(corpus), r)).mode == "RGB"
        except InputError as e:
            assert "\n" not in str(e)
            refused += 1
    assert refused > 100  # the corpus does hit the error paths


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_a_png_with_an_oversized_text_chunk_is_refused():
    buf = io.BytesIO()
    Image.new("L", (8, 8), 100).save(buf, format="PNG")
    png = buf.getvalue()
    bomb = png_chunk(b"zTXt", b"comment\0\0" + zlib.compress(b"\0" * 50_000_000))  # 50 MB unpacked
    with pytest.raises(InputError, match="not a readable image"):
        load_image(png[:33] + bomb + png[33:])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this OS")
def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "image.png"
    os.mkfifo(fifo)
    got = []
    t = threading.Thread(target=lambda: got.append(pytest.raises(InputError, load_image, fifo)), daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "load_image blocked on a FIFO"
    assert "not a regular file" in str(got[0].value)


def test_the_cli_ends_hostile_images_in_one_line(tmp_path, bundle):
    os.mkfifo(tmp_path / "pipe.png")
    r = random.Random(1)
    (tmp_path / "mutated.tif").write_bytes(b"II*\0" + mutate(seeds()[3][4:], r)[:60])
    for name, fragment in [("pipe.png", "not a regular file"), ("mutated.tif", "")]:
        p = subprocess.run(
            edgevqa_cmd("ask", name, "is there a lesion?", "--model", str(bundle)),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), p.stderr
        assert fragment in lines[0]


@pytest.mark.parametrize("when", ["open", "decode"])
def test_an_io_error_while_reading_an_image_is_one_input_error(tmp_path, monkeypatch, when):
    """A disk or network share failing under PIL (EIO) while it opens or decodes the file."""
    import errno

    from PIL import ImageFile

    path = tmp_path / "scan.png"
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(path)

    def fail(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(*((Image, "open", fail) if when == "open" else (ImageFile.ImageFile, "load", fail)))
    with pytest.raises(InputError, match=r"scan\.png .*Input/output error"):
        load_image(path)
