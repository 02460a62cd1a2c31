from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import pydicom
import pytest
from dicom_testkit import Builder, FileLoader, to_bytes
from PIL import Image

from medvault.dicom import (
    ParsedInstance,
    decode_frame,
    parse_instance,
    render_frame,
    thumbnail,
    uncompressed_frame,
)
from medvault.errors import InvalidInput, NotAcceptable

EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _frames(data: bytes) -> tuple[ParsedInstance, list[bytes]]:
    parsed = parse_instance(data)
    return parsed, [f.read(data) for f in parsed.frames]


def _decode_all(data: bytes) -> list[np.ndarray]:  # type: ignore[type-arg]
    parsed, frames = _frames(data)
    return [decode_frame(parsed.dataset, f, parsed.transfer_syntax_uid) for f in frames]


@pytest.mark.parametrize(
    "twin",
    [
        "MR_small_RLE.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_bigendian.dcm",
        "MR_small_implicit.dcm",
    ],
)
def test_compressed_and_uncompressed_twins_decode_equal(twin: str, testfile: FileLoader) -> None:
    (reference,) = _decode_all(testfile("MR_small.dcm"))
    (other,) = _decode_all(testfile(twin))
    assert other.shape == reference.shape == (64, 64)
    np.testing.assert_array_equal(other, reference)
    parsed, (frame,) = _frames(testfile(twin))
    native = uncompressed_frame(parsed.dataset, frame, parsed.transfer_syntax_uid)
    assert native == _frames(testfile("MR_small.dcm"))[1][0]


def test_multiframe_twins(fixed_testfile: FileLoader, testfile: FileLoader) -> None:
    native = _decode_all(fixed_testfile("rtdose.dcm"))
    rle = _decode_all(testfile("rtdose_rle.dcm"))
    assert len(native) == len(rle) == 15
    for a, b in zip(native, rle, strict=True):
        np.testing.assert_array_equal(a, b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = pydicom.dcmread(io.BytesIO(testfile("rtdose_rle.dcm"))).pixel_array
    np.testing.assert_array_equal(np.stack(rle), expected)


def test_color_twins(testfile: FileLoader) -> None:
    (a,) = _decode_all(testfile("SC_rgb_small_odd.dcm"))
    (b,) = _decode_all(testfile("SC_rgb_small_odd_big_endian.dcm"))
    np.testing.assert_array_equal(a, b)
    assert a.shape[2] == 3


def test_uncompressed_color_rle_matches_pydicom(testfile: FileLoader) -> None:
    data = testfile("SC_rgb_rle_2frame.dcm")
    parsed, frames = _frames(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = pydicom.dcmread(io.BytesIO(data)).pixel_array
    for i, frame in enumerate(frames):
        native = uncompressed_frame(parsed.dataset, frame, parsed.transfer_syntax_uid)
        assert native == np.ascontiguousarray(expected[i]).astype("<u1").tobytes()


def _png(data: bytes, **kwargs: object) -> Image.Image:
    parsed, frames = _frames(data)
    out = render_frame(
        parsed.dataset, frames[0], parsed.transfer_syntax_uid, media_type="image/png", **kwargs
    )  # type: ignore[arg-type]
    image = Image.open(io.BytesIO(out))
    image.load()
    return image


@pytest.mark.parametrize(
    ("name", "mode", "size"),
    [
        ("CT_small.dcm", "L", (128, 128)),
        ("MR_small_RLE.dcm", "L", (64, 64)),
        ("JPEG2000.dcm", "L", (256, 1024)),
        ("SC_rgb_rle.dcm", "RGB", (100, 100)),
        ("examples_ybr_color.dcm", "RGB", (320, 240)),
        ("examples_palette.dcm", "RGB", (800, 350)),
    ],
)
def test_png_has_right_size_and_mode(
    name: str, mode: str, size: tuple[int, int], testfile: FileLoader
) -> None:
    image = _png(testfile(name))
    assert image.format == "PNG"
    assert image.mode == mode
    assert image.size == size


def test_ybr_is_converted_to_rgb(testfile: FileLoader) -> None:
    image = np.asarray(_png(testfile("SC_rgb_dcmtk_+eb+cy+np.dcm")))
    assert image[0, 0].tolist() == pytest.approx([255, 0, 0], abs=3)  # top band is red


def test_jpeg_and_viewport(testfile: FileLoader) -> None:
    parsed, frames = _frames(testfile("CT_small.dcm"))
    out = render_frame(parsed.dataset, frames[0], parsed.transfer_syntax_uid, viewport=(64, 32), quality=70)
    image = Image.open(io.BytesIO(out))
    assert image.format == "JPEG"
    assert image.size == (32, 32)  # fits in 64x32, keeps the square aspect
    wide = _png(testfile("JPEG2000.dcm"), viewport=(256, 256))
    assert wide.size == (64, 256)


def test_window_changes_output(testfile: FileLoader) -> None:
    data = testfile("CT_small.dcm")
    default = np.asarray(_png(data))
    narrow = np.asarray(_png(data, window=(40.0, 80.0)))
    wide = np.asarray(_png(data, window=(500.0, 4000.0)))
    assert not np.array_equal(default, narrow)
    assert not np.array_equal(narrow, wide)
    assert narrow.std() > wide.std()
    with pytest.raises(InvalidInput):
        _png(data, window=(40.0, 0.0))


def test_monochrome1_is_inverted(testfile: FileLoader) -> None:
    parsed, frames = _frames(testfile("MR_small.dcm"))
    mono1 = copy.deepcopy(parsed.dataset)
    mono1.PhotometricInterpretation = "MONOCHROME1"
    ts = parsed.transfer_syntax_uid
    a = np.asarray(
        Image.open(io.BytesIO(render_frame(parsed.dataset, frames[0], ts, media_type="image/png")))
    )
    b = np.asarray(Image.open(io.BytesIO(render_frame(mono1, frames[0], ts, media_type="image/png"))))
    np.testing.assert_array_equal(a.astype(int), 255 - b.astype(int))


def test_min_max_when_no_window(build: Builder) -> None:
    values = np.arange(16, dtype="<u2") * 100
    ds = build(pixel_data=values.tobytes())
    parsed, frames = _frames(to_bytes(ds))
    out = np.asarray(
        Image.open(io.BytesIO(render_frame(parsed.dataset, frames[0], EXPLICIT_LE, media_type="image/png")))
    )
    assert out.min() == 0 and out.max() == 255


def test_thumbnail(testfile: FileLoader) -> None:
    parsed, frames = _frames(testfile("examples_ybr_color.dcm"))
    image = Image.open(io.BytesIO(thumbnail(parsed.dataset, frames[3], parsed.transfer_syntax_uid)))
    assert image.size == (128, 96)


def test_refusals(testfile: FileLoader) -> None:
    parsed, frames = _frames(testfile("MR_small.dcm"))
    with pytest.raises(NotAcceptable, match="media type"):
        render_frame(parsed.dataset, frames[0], parsed.transfer_syntax_uid, media_type="image/gif")
    with pytest.raises(NotAcceptable, match=r"1\.2\.3\.4"):
        decode_frame(parsed.dataset, frames[0], "1.2.3.4")
    with pytest.raises(InvalidInput):
        render_frame(parsed.dataset, frames[0], parsed.transfer_syntax_uid, quality=0)
    broken, broken_frames = _frames(testfile("JPEG-lossy.dcm"))  # pydicom cannot decode it either
    with pytest.raises(NotAcceptable, match="could not be decoded"):
        decode_frame(broken.dataset, broken_frames[0], broken.transfer_syntax_uid)
