"""DICOM in: hand-checked pixel values on the real files that ship inside pydicom.

Only files in pydicom's own wheel are used (``pydicom/data/test_files``): ``get_testdata_file``
would try to download the others. Expected values are worked out by hand from the raw values:

* CT_small.dcm: stored 1064 at (33, 37), Rescale 1 / -1024 -> 40 HU. No window in the file, so a
  min-max stretch over -896..1167 HU: (40 + 896) * 255 / 2063 = 115.7 -> 116. With --window 40,400:
  ((40 - 39.5) / 399 + 0.5) * 255 = 127.8 -> 128; stored 1013 at (60, 60) = -11 HU -> 95.2 -> 95.
* MR_small.dcm: window 600/1600 in the file; stored 600 at (48, 48) -> 127.6 -> 128, stored 169 at
  (30, 30) -> ((169 - 599.5) / 1599 + 0.5) * 255 = 58.85 -> 59.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import edgevqa_cmd
from PIL import Image
from test_cli import assert_user_error

from edgevqa.errors import InputError
from edgevqa.runtime.dicom import DicomOptions, apply_window, parse_window, read_dicom
from edgevqa.runtime.images import is_dicom_source, load_image

pydicom = pytest.importorskip("pydicom")
FILES = Path(pydicom.__file__).parent / "data" / "test_files"
PATIENT = {"PatientName": "Doe^Jane", "PatientID": "MRN-4711", "PatientBirthDate": "19700101"}


def shipped(name: str) -> Path:
    path = FILES / name
    if not path.exists():
        pytest.skip(f"{name} is not in this pydicom's wheel")
    return path


def px(name_or_path, **options) -> np.ndarray:
    return np.asarray(
        read_dicom(
            shipped(name_or_path) if isinstance(name_or_path, str) else name_or_path, DicomOptions(**options)
        )
    )


def raw(name: str, index: int | None = None) -> np.ndarray:
    from pydicom.pixels import pixel_array

    return pixel_array(str(shipped(name)), index=index)


def message(source, **kw) -> str:
    with pytest.raises(InputError) as e:
        load_image(source, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


def variant(tmp_path: Path, name: str, out: str, **tags) -> Path:
    ds = pydicom.dcmread(shipped(name))
    for k, v in tags.items():
        setattr(ds, k, v)
    path = tmp_path / out
    ds.save_as(path)
    return path


# ---------------------------------------------------------------- grayscale: modality LUT, VOI


def test_ct_rescale_then_min_max_stretch():
    assert raw("CT_small.dcm")[33, 37] == 1064
    y = px("CT_small.dcm")
    assert y.dtype == np.uint8 and y.shape == (128, 128)
    assert y[33, 37] == 116
    assert (y.min(), y.max()) == (0, 255)


def test_window_from_the_command_line_overrides():
    y = px("CT_small.dcm", window=(40, 400))
    assert y[33, 37] == 128  # 40 HU, the window's centre
    assert y[60, 60] == 95  # stored 1013 = -11 HU
    hu = raw("CT_small.dcm").astype(int) - 1024
    assert (y[hu <= -160] == 0).all() and (y[hu > 239] == 255).all()


def test_window_from_the_file():
    assert raw("MR_small.dcm")[48, 48] == 600 and raw("MR_small.dcm")[30, 30] == 169
    y = px("MR_small.dcm")
    assert (y[48, 48], y[30, 30]) == (128, 59)


def test_window_functions_by_hand():
    x = np.array([0.0, 39.5, 40.0, 240.0, 1000.0])
    # LINEAR: 0 -> ((0 - 39.5) / 399 + 0.5) * 255 = 102.3; 39.5 -> 127.5 exactly, rounded to even 128
    assert apply_window(x, 40, 400).tolist() == [102, 128, 128, 255, 255]
    # LINEAR_EXACT: ((x - 40) / 400 + 0.5) * 255: 0 -> 102.0, 39.5 -> 127.2, 40 -> 127.5 -> 128
    assert apply_window(x, 40, 400, "LINEAR_EXACT").tolist() == [102, 127, 128, 255, 255]
    assert apply_window(np.array([40.0]), 40, 400, "SIGMOID").tolist() == [128]  # 255 / 2 = 127.5 -> 128
    assert parse_window("40, 400") == (40.0, 400.0)
    for bad in ("40", "a,b", "40,0"):
        with pytest.raises(InputError, match="--window"):
            parse_window(bad)


def test_monochrome1_is_inverted(tmp_path):
    # no MONOCHROME1 file ships in pydicom's wheel: MR_small with its photometric tag flipped
    path = variant(tmp_path, "MR_small.dcm", "mono1.dcm", PhotometricInterpretation="MONOCHROME1")
    y = px(path)
    assert (y[48, 48], y[30, 30]) == (127, 196)
    np.testing.assert_array_equal(y, 255 - px("MR_small.dcm"))


def test_voi_lut_sequence_applies_and_window_flag_wins(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    ds = pydicom.dcmread(shipped("MR_small.dcm"))
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]  # 256 entries, the first for stored value 0, 8 bits
    item.add_new("LUTData", "US", [255 - i for i in range(256)])  # inverting ramp: v -> 255 - v, 0 above
    ds.VOILUTSequence = Sequence([item])
    ds.save_as(tmp_path / "lut.dcm")
    y = px(tmp_path / "lut.dcm")
    assert (y[30, 30], y[48, 48]) == (86, 0)  # 255 - 169; 600 is past the table: its last entry
    assert px(tmp_path / "lut.dcm", window=(600, 1600))[48, 48] == 128


def test_compressed_and_big_endian_copies_give_the_same_pixels():
    expected = px("MR_small.dcm")
    for name in (
        "MR_small_RLE.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
        "MR_small_jp2klossless.dcm",
    ):
        try:
            got = px(name)
        except InputError as e:  # no JPEG 2000 handler here: the message names one
            assert "pylibjpeg-openjpeg" in str(e), name
            continue
        np.testing.assert_array_equal(got, expected, err_msg=name)


# ---------------------------------------------------------------- frames and colour


def test_multi_frame_middle_by_default_and_chosen():
    dose = raw("rtdose.dcm")  # 15 frames of 32-bit dose, no rescale: min-max stretched
    assert dose.shape == (15, 10, 10)

    def stretched(frame: np.ndarray) -> np.ndarray:
        f = frame.astype(np.float64)
        return np.rint((f - f.min()) * (255.0 / (f.max() - f.min()))).astype(np.uint8)

    np.testing.assert_array_equal(px("rtdose.dcm"), stretched(dose[7]))  # frame 8 of 15
    np.testing.assert_array_equal(px("rtdose.dcm", frame=1), stretched(dose[0]))
    assert not np.array_equal(stretched(dose[7]), stretched(dose[0]))
    # two RGB frames, the second the inverse of the first: frame 1 of 2 is the middle one
    assert px("SC_rgb_rle_2frame.dcm")[0, 0].tolist() == [255, 0, 0]
    assert px("SC_rgb_rle_2frame.dcm", frame=2)[0, 0].tolist() == [0, 255, 255]
    with pytest.raises(
        InputError, match=r"frame 16 is out of range: .*rtdose.dcm has 15 frame\(s\) \(1-15\)"
    ):
        px("rtdose.dcm", frame=16)
    with pytest.raises(InputError, match="has 1 frame"):
        px("CT_small.dcm", frame=2)


def test_rgb_passes_through_and_wide_samples_are_scaled():
    y = px("SC_rgb_rle.dcm")
    np.testing.assert_array_equal(y, raw("SC_rgb_rle.dcm"))
    assert y.dtype == np.uint8 and y.shape == (100, 100, 3)
    np.testing.assert_array_equal(px("ExplVR_BigEnd.dcm"), raw("ExplVR_BigEnd.dcm"))
    wide = raw("SC_rgb_rle_16bit.dcm")  # 16 bits per sample
    np.testing.assert_array_equal(px("SC_rgb_rle_16bit.dcm"), np.rint(wide / 65535 * 255).astype(np.uint8))
    assert load_image(shipped("SC_rgb_rle.dcm")).mode == "RGB"


def test_palette_colour_goes_through_its_palette():
    from pydicom.pixels import apply_color_lut

    ds = pydicom.dcmread(shipped("examples_palette.dcm"))
    expected = np.rint(apply_color_lut(ds.pixel_array, ds) / 65535 * 255).astype(np.uint8)  # 16-bit palette
    np.testing.assert_array_equal(px("examples_palette.dcm"), expected)


# ---------------------------------------------------------------- compression and bad files


def test_jpeg2000_decodes_or_names_its_handler():
    try:
        img = load_image(shipped("JPEG2000.dcm"))
    except InputError as e:
        assert str(e).endswith(
            "this DICOM is JPEG 2000 compressed; install pylibjpeg pylibjpeg-openjpeg to read it "
            "(pip install pylibjpeg pylibjpeg-openjpeg)"
        )
        return
    assert img.size == (256, 1024) and img.mode == "RGB"


def test_missing_handler_is_named():
    from pydicom.pixels.decoders import JPEGLSLosslessDecoder

    path = shipped("MR_small_jpeg_ls_lossless.dcm")
    if JPEGLSLosslessDecoder.is_available:
        np.testing.assert_array_equal(px(path), px("MR_small.dcm"))
        return
    assert message(path) == (
        f"{path}: this DICOM is JPEG-LS compressed; install pylibjpeg pylibjpeg-libjpeg to read it "
        "(pip install pylibjpeg pylibjpeg-libjpeg)"
    )


def test_bad_dicoms_give_one_clear_line(tmp_path):
    data = shipped("CT_small.dcm").read_bytes()
    (tmp_path / "half.dcm").write_bytes(data[: len(data) // 2])
    (tmp_path / "header.dcm").write_bytes(data[:132])
    (tmp_path / "notes.dcm").write_text("not a dicom at all\n")
    assert message(tmp_path / "half.dcm") == (
        f"{tmp_path / 'half.dcm'} is truncated or corrupt: "
        "its pixel data is shorter than Rows x Columns x frames"
    )
    assert message(tmp_path / "header.dcm").endswith(
        "has no pixel data: it is not an image, or it is truncated"
    )
    assert "no pixel data" in message(tmp_path / "notes.dcm") or "not a readable DICOM" in message(
        tmp_path / "notes.dcm"
    )
    rtplan = shipped("rtplan.dcm")
    assert (
        message(rtplan)
        == f"{rtplan} has no pixel data (SOP class: RT Plan Storage): it is not an image, or it is truncated"
    )
    assert "larger than the 0.0 Mpx limit" in message(shipped("CT_small.dcm"), max_pixels=100)


def test_detection_by_marker_or_name(tmp_path):
    data = shipped("MR_small.dcm").read_bytes()
    assert data[128:132] == b"DICM" and is_dicom_source(data)
    assert not is_dicom_source(tmp_path / "missing.dcm")
    assert message(tmp_path / "missing.dcm") == f"image not found: {tmp_path / 'missing.dcm'}"
    ds = pydicom.dcmread(shipped("MR_small.dcm"))
    ds.preamble = None
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=False)  # no preamble, no DICM marker
    bare = buf.getvalue()
    assert bare[128:132] != b"DICM" and not is_dicom_source(bare)
    (tmp_path / "bare.dcm").write_bytes(bare)
    (tmp_path / "bare.bin").write_bytes(bare)
    np.testing.assert_array_equal(np.asarray(load_image(tmp_path / "bare.dcm"))[..., 0], px("MR_small.dcm"))
    np.testing.assert_array_equal(np.asarray(load_image(bare, name="upload.dcm"))[..., 0], px("MR_small.dcm"))
    assert "not an image PIL can read" in message(tmp_path / "bare.bin")


def test_patient_data_stays_out_of_messages_and_logs(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    ok = variant(tmp_path, "CT_small.dcm", "ok.dcm", **PATIENT)
    jls = variant(tmp_path, "MR_small_jpeg_ls_lossless.dcm", "jls.dcm", **PATIENT)
    data = ok.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) // 2])
    texts = []
    load_image(ok)
    for bad in (tmp_path / "cut.dcm", jls):
        try:
            load_image(bad)
        except InputError as e:
            texts.append(str(e))
    texts += [r.getMessage() for r in caplog.records]
    assert texts  # the failures did say something
    for secret in ("Doe", "Jane", "MRN-4711", "19700101"):
        assert all(secret not in t for t in texts), secret


# ---------------------------------------------------------------- through the CLI


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        edgevqa_cmd(*args, block_torch=True), capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_ask_answers_a_ct_dicom_without_torch(bundle, tmp_path):
    from edgevqa.runtime import VQAPipeline

    ct = variant(tmp_path, "CT_small.dcm", "CT_small.dcm", **PATIENT)
    pipe = VQAPipeline.from_bundle(bundle)
    q = "what modality is this?"
    for extra, options in (([], DicomOptions()), (["--window", "40,400"], DicomOptions(window=(40, 400)))):
        p = run_cli("ask", str(ct), q, "--model", str(bundle), "--json", *extra)
        assert p.returncode == 0, p.stderr
        row = json.loads(p.stdout)
        expected = pipe.ask(load_image(ct, dicom=options), q)
        assert (row["answer"], row["token_ids"]) == (expected.text, expected.token_ids)
        for secret in PATIENT.values():
            assert secret.split("^")[0] not in p.stdout + p.stderr


def test_bad_dicoms_end_in_one_line_and_exit_2(tmp_path, bundle):
    from pydicom.pixels.decoders import JPEGLSLosslessDecoder

    ct = variant(tmp_path, "CT_small.dcm", "ct.dcm", **PATIENT)
    data = ct.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) // 2])
    Image.new("L", (8, 8)).save(tmp_path / "plain.png")
    cases = [
        (["cut.dcm"], "is truncated or corrupt"),
        ([str(shipped("rtplan.dcm"))], "has no pixel data (SOP class: RT Plan Storage)"),
        (["ct.dcm", "--window", "40"], "--window takes CENTRE,WIDTH"),
        (["ct.dcm", "--frame", "2"], "frame 2 is out of range"),
        (["plain.png", "--window", "40,400"], "apply to DICOM files"),
    ]
    if not JPEGLSLosslessDecoder.is_available:
        jls = variant(tmp_path, "MR_small_jpeg_ls_lossless.dcm", "jls.dcm", **PATIENT)
        cases.append(([jls.name], "this DICOM is JPEG-LS compressed; install pylibjpeg pylibjpeg-libjpeg"))
    for args, fragment in cases:
        p = run_cli("ask", args[0], "what modality is this?", "--model", str(bundle), *args[1:], cwd=tmp_path)
        assert_user_error(p, fragment)
        for secret in ("Doe", "Jane", "MRN-4711", "19700101"):
            assert secret not in p.stderr + p.stdout


def test_missing_pydicom_names_the_extra(tmp_path):
    block = (
        "import sys\n"
        "class _Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'pydicom':\n"
        "            raise ImportError('blocked for this test')\n"
        "sys.meta_path.insert(0, _Block())\n"
        "from edgevqa.cli import main; main(sys.argv[1:])\n"
    )
    cmd = [
        sys.executable,
        "-c",
        block,
        "ask",
        str(shipped("CT_small.dcm")),
        "what?",
        "--model",
        str(tmp_path),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert_user_error(p, "pydicom is not installed", "pip install 'edgevqa[dicom]'")


# ---------------------------------------------------------------- hostile DICOMs, generated here


def _lut_item(descriptor, data):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.LUTDescriptor = descriptor
    if data is not None:
        item.add_new("LUTData", "US", data)
    return item


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (
            lambda ds: setattr(ds, "VOILUTSequence", [_lut_item([256, 0], list(range(256)))]),
            "VOI LUT is malformed",
        ),
        (lambda ds: setattr(ds, "VOILUTSequence", [_lut_item([256, 0, 8], None)]), "VOI LUT is malformed"),
        (lambda ds: setattr(ds, "VOILUTSequence", [_lut_item([0, 0, 8], [])]), "VOI LUT"),
        (
            lambda ds: ds.add_new("ModalityLUTSequence", "SQ", [_lut_item([3, 0, 16], [1, 2])]),
            "cannot be converted",
        ),
    ],
)
def test_malformed_luts_are_one_input_error(tmp_path, edit, fragment):
    ds = pydicom.dcmread(shipped("MR_small.dcm"))
    edit(ds)
    ds.save_as(tmp_path / "bad.dcm")
    with pytest.raises(InputError) as e:
        read_dicom(tmp_path / "bad.dcm")
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_malformed_palettes_are_one_input_error(tmp_path):
    for descriptor in ([256, 0], [256, 0, 40], [256, 0, 0]):
        ds = pydicom.dcmread(shipped("examples_palette.dcm"))
        for colour in ("Red", "Green", "Blue"):
            setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", descriptor)
        ds.save_as(tmp_path / "pal.dcm")
        with pytest.raises(InputError, match="palette"):
            read_dicom(tmp_path / "pal.dcm")


def test_a_malformed_window_is_replaced_by_a_stretch_and_said_so_without_values(tmp_path, caplog):
    path = variant(tmp_path, "MR_small.dcm", "w.dcm", WindowWidth="0.25")  # a width below 1
    with caplog.at_level("WARNING", logger="edgevqa.runtime"):
        y = px(path)
    assert "Window Center/Width cannot be used" in caplog.text and "0.25" not in caplog.text
    ds = pydicom.dcmread(path)
    np.testing.assert_array_equal(y, np.asarray(read_dicom(path, DicomOptions())))
    from edgevqa.runtime.dicom import modality, stretch

    np.testing.assert_array_equal(y, stretch(modality(ds.pixel_array, ds)))
