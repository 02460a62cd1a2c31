from __future__ import annotations

import io
import time
import warnings

import pydicom
import pytest
from dicom_testkit import PATIENT_NAME, Builder, FileLoader, make_dataset, to_bytes
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.uid import JPEGBaseline8Bit, RLELossless

from medvault.dicom import FrameLocation, ParsedInstance, is_valid_uid, parse_instance
from medvault.errors import InvalidInput, MissingAttribute, NotDicom, TooLarge, UnsupportedMedia


def _pydicom_frames(data: bytes, frames: int) -> list[bytes]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(io.BytesIO(data))
        pixel = ds["PixelData"]
        if pixel.is_undefined_length:
            return list(generate_frames(pixel.value, number_of_frames=frames))
        value = bytes(pixel.value)
    size = len(value) // frames
    return [value[i * size : (i + 1) * size] for i in range(frames)]


def _assert_frames_match(data: bytes, parsed: ParsedInstance) -> None:
    expected = _pydicom_frames(data, parsed.number_of_frames)
    assert len(parsed.frames) == parsed.number_of_frames == len(expected)
    for location, frame in zip(parsed.frames, expected, strict=True):
        assert b"".join(data[o : o + n] for o, n in location.fragments) == frame[: location.length]
        assert location.read(data) == frame[: location.length]
        assert location.length == len(frame) or frame[location.length :] in (b"", b"\x00")


BUNDLED = [
    ("CT_small.dcm", 1),
    ("MR_small.dcm", 1),
    ("MR_small_implicit.dcm", 1),
    ("MR_small_bigendian.dcm", 1),
    ("MR_small_RLE.dcm", 1),
    ("MR_small_jp2klossless.dcm", 1),
    ("MR_small_jpeg_ls_lossless.dcm", 1),
    ("JPEG2000.dcm", 1),
    ("SC_rgb_rle_2frame.dcm", 2),
    ("SC_rgb_small_odd.dcm", 1),
    ("SC_rgb_jpeg.dcm", 1),  # implicit VR data set under an explicit transfer syntax
    ("rtdose_rle.dcm", 15),
    ("examples_ybr_color.dcm", 30),
    ("examples_palette.dcm", 1),
]


@pytest.mark.parametrize(("name", "frames"), BUNDLED)
def test_bundled_files_parse_and_frames_match_pydicom(name: str, frames: int, testfile: FileLoader) -> None:
    data = testfile(name)
    parsed = parse_instance(data)
    assert parsed.number_of_frames == frames
    _assert_frames_match(data, parsed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = pydicom.dcmread(io.BytesIO(data))
    assert parsed.sop_instance_uid == ref.SOPInstanceUID
    assert parsed.study_instance_uid == ref.StudyInstanceUID
    assert parsed.series_instance_uid == ref.SeriesInstanceUID
    assert parsed.sop_class_uid == ref.SOPClassUID
    assert parsed.transfer_syntax_uid == ref.file_meta.TransferSyntaxUID
    assert parsed.dataset.PixelData == b""  # kept empty, with its VR
    assert parsed.metadata["7FE00010"]["BulkDataURI"] == "7FE00010"
    assert parsed.metadata["0020000D"]["Value"] == [parsed.study_instance_uid]


def test_native_multiframe_rtdose(fixed_testfile: FileLoader) -> None:
    data = fixed_testfile("rtdose.dcm")
    parsed = parse_instance(data)
    assert parsed.number_of_frames == 15
    _assert_frames_match(data, parsed)
    offsets = [f.fragments[0][0] for f in parsed.frames]
    step = parsed.frames[0].length
    assert offsets == [offsets[0] + i * step for i in range(15)]


def test_synthetic_native_multiframe(build: Builder) -> None:
    data = to_bytes(build(frames=3))
    parsed = parse_instance(data)
    assert [f.read(data) for f in parsed.frames] == [bytes([i]) * 32 for i in range(3)]


def _encapsulated(frames: list[bytes], *, ts: str = RLELossless, **kwargs: object) -> pydicom.Dataset:
    ds = make_dataset(frames=len(frames), bits=8)
    ds.file_meta.TransferSyntaxUID = ts
    ds.PixelData = encapsulate(frames, **kwargs)  # type: ignore[arg-type]
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


FRAMES = [b"\xff\xd8" + bytes([i]) * 40 + b"\xff\xd9" for i in range(3)]


@pytest.mark.parametrize("has_bot", [True, False])
def test_encapsulated_one_fragment_per_frame(has_bot: bool) -> None:
    data = to_bytes(_encapsulated(FRAMES, has_bot=has_bot))
    parsed = parse_instance(data)
    assert [f.read(data) for f in parsed.frames] == FRAMES
    assert all(len(f.fragments) == 1 for f in parsed.frames)


def test_encapsulated_several_fragments_with_basic_offset_table() -> None:
    data = to_bytes(_encapsulated(FRAMES, fragments_per_frame=3, has_bot=True))
    parsed = parse_instance(data)
    assert [len(f.fragments) for f in parsed.frames] == [3, 3, 3]
    assert [f.read(data) for f in parsed.frames] == FRAMES


def test_encapsulated_several_fragments_without_table_uses_markers() -> None:
    data = to_bytes(_encapsulated(FRAMES, ts=JPEGBaseline8Bit, fragments_per_frame=2, has_bot=False))
    parsed = parse_instance(data)
    assert [f.read(data) for f in parsed.frames] == FRAMES


def test_encapsulated_without_table_and_no_markers_is_refused() -> None:
    frames = [bytes([i]) * 40 for i in range(3)]
    data = to_bytes(_encapsulated(frames, fragments_per_frame=2, has_bot=False))
    with pytest.raises(InvalidInput, match="cannot locate 3 frames"):
        parse_instance(data)


def test_single_frame_in_several_fragments() -> None:
    data = to_bytes(_encapsulated(FRAMES[:1], fragments_per_frame=4, has_bot=False))
    (frame,) = parse_instance(data).frames
    assert len(frame.fragments) == 4
    assert frame.read(data) == FRAMES[0]


def test_extended_offset_table() -> None:
    ds = _encapsulated(FRAMES)
    ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(FRAMES)
    data = to_bytes(ds)
    parsed = parse_instance(data)
    assert [f.read(data) for f in parsed.frames] == FRAMES


def test_frame_location_helpers() -> None:
    loc = FrameLocation(((2, 3), (8, 2)))
    assert loc.length == 5
    assert loc.read(b"0123456789") == b"23489"


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"hello", b"\x00" * 200, b"\x00" * 128 + b"DICX" + b"\x00" * 64])
def test_not_dicom(data: bytes) -> None:
    with pytest.raises(NotDicom):
        parse_instance(data)


@pytest.mark.parametrize("name", ["no_meta.dcm", "ExplVR_LitEndNoMeta.dcm"])
def test_files_without_part10_header_are_not_dicom(name: str, testfile: FileLoader) -> None:
    with pytest.raises(NotDicom):
        parse_instance(testfile(name))


@pytest.mark.parametrize("name", ["MR_truncated.dcm", "rtplan_truncated.dcm"])
def test_truncated_bundled_files(name: str, testfile: FileLoader) -> None:
    with pytest.raises(InvalidInput, match="truncated"):
        parse_instance(testfile(name))


def test_every_truncation_is_refused(testfile: FileLoader) -> None:
    data = testfile("MR_small.dcm")
    parse_instance(data)
    for cut in [*range(0, 400, 7), *range(400, len(data) - 1, 97), len(data) - 1]:
        with pytest.raises(InvalidInput):  # NotDicom is an InvalidInput
            parse_instance(data[:cut])


def test_truncated_encapsulated_pixel_data(testfile: FileLoader) -> None:
    data = testfile("MR_small_RLE.dcm")
    for cut in (len(data) - 4, len(data) - 9, len(data) - 100):
        with pytest.raises(InvalidInput, match="truncated"):
            parse_instance(data[:cut])


@pytest.mark.parametrize(
    "keyword", ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"]
)
def test_missing_required_attribute(keyword: str, build: Builder) -> None:
    ds = build()
    delattr(ds, keyword)
    with pytest.raises(MissingAttribute, match=keyword):
        parse_instance(to_bytes(ds))


def test_empty_required_attribute(build: Builder) -> None:
    ds = build()
    ds.StudyInstanceUID = ""
    with pytest.raises(MissingAttribute, match="StudyInstanceUID"):
        parse_instance(to_bytes(ds))


@pytest.mark.parametrize("uid", ["1.2.abc", "1..2", "1.2.", "1." + "2" * 70, "1.2.3 4"])
def test_invalid_uid_syntax(uid: str, build: Builder) -> None:
    ds = build()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.SeriesInstanceUID = uid
        data = to_bytes(ds)
    with pytest.raises(InvalidInput, match=r"SeriesInstanceUID .* not a valid UID"):
        parse_instance(data)


def test_meta_uid_disagreement_is_tolerated_and_the_data_set_decides(
    build: Builder, testfile: FileLoader
) -> None:
    data = to_bytes(build())
    uid = b"1.2.826.0.1.3680043.8.498.3"
    assert data.count(uid) == 2  # file meta first, then the data set
    parsed = parse_instance(data.replace(uid, uid[:-1] + b"9", 1))
    assert parsed.sop_instance_uid == uid.decode()
    assert parsed.meta_disagreements == ("MediaStorageSOPInstanceUID",)
    assert parse_instance(data).meta_disagreements == ()
    rtdose = parse_instance(testfile("rtdose.dcm"))
    assert "MediaStorageSOPInstanceUID" in rtdose.meta_disagreements


def test_too_large(build: Builder) -> None:
    data = to_bytes(build())
    assert parse_instance(data, max_bytes=len(data)).number_of_frames == 1
    with pytest.raises(TooLarge):
        parse_instance(data, max_bytes=len(data) - 1)


def test_deflated_is_refused(testfile: FileLoader) -> None:
    with pytest.raises(UnsupportedMedia, match="deflated"):
        parse_instance(testfile("image_dfl.dcm"))


def test_pixel_data_shorter_than_frames(build: Builder) -> None:
    ds = build(frames=2)
    ds.NumberOfFrames = 3
    with pytest.raises(InvalidInput, match="shorter"):
        parse_instance(to_bytes(ds))


def test_errors_never_quote_patient_values(build: Builder) -> None:
    ds = build()
    ds.StudyInstanceUID = PATIENT_NAME
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = to_bytes(ds)
    with pytest.raises(InvalidInput) as caught:
        parse_instance(data)
    assert PATIENT_NAME not in caught.value.diagnostics()


def test_no_pixel_data(testfile: FileLoader) -> None:
    parsed = parse_instance(testfile("reportsi.dcm"))
    assert parsed.number_of_frames == 0
    assert parsed.frames == ()


def test_uid_syntax() -> None:
    assert is_valid_uid("1.2.840.10008.1.2")
    assert not is_valid_uid("1.02.3")  # a leading zero (PS3.5 §9.1)
    assert is_valid_uid("1.02.3", strict=False)
    assert is_valid_uid("1.0.3") and is_valid_uid("0")
    assert not is_valid_uid("")
    assert not is_valid_uid("1.2.3a")


@pytest.mark.parametrize("keyword", ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
def test_a_uid_with_a_leading_zero_is_refused(build: Builder, keyword: str) -> None:
    """Issue #12, item 10: "1.02.3" is not a UID; the refusal names the attribute."""
    ds = build()
    setattr(ds, keyword, "1.02.3")
    if keyword == "SOPInstanceUID":
        ds.file_meta.MediaStorageSOPInstanceUID = "1.02.3"
    with pytest.raises(InvalidInput, match=keyword):
        parse_instance(to_bytes(ds))


def test_parse_is_fast_for_a_512x512_ct(build: Builder) -> None:
    data = to_bytes(build(rows=512, columns=512, Modality="CT", RescaleSlope="1", RescaleIntercept="-1024"))
    parse_instance(data)
    start = time.perf_counter()
    for _ in range(20):
        parse_instance(data)
    per_call = (time.perf_counter() - start) / 20
    assert per_call < 0.02  # about 0.3 ms here: pixels are never decoded or copied
