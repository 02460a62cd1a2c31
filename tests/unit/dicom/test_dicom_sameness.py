"""same_instance: a re-sent instance in another envelope is the same; any changed element is not."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from medvault.dicom.sameness import same_instance
from medvault.sample import generate_study


@pytest.fixture
def original(tmp_path: Path) -> bytes:
    (file,) = generate_study(
        tmp_path, seed=611, series=1, instances=1, rows=16, cols=16, patient_name="SAME^AS", patient_id="S1"
    )
    return file.read_bytes()


def rewritten(
    data: bytes, *, syntax: str = ExplicitVRLittleEndian, rle: bool = False, **changes: str
) -> bytes:
    """``data`` as a receiving toolkit writes it: new file meta, maybe another transfer syntax."""
    ds = dcmread(io.BytesIO(data))
    ds.file_meta.ImplementationClassUID = "1.2.826.0.1.3680043.9.9999.1"
    ds.file_meta.SourceApplicationEntityTitle = "CT1"
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    out = io.BytesIO()
    if rle:
        ds.compress(RLELossless, generate_instance_uid=False)
        ds.save_as(out, enforce_file_format=True)
    else:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(
            out, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=True
        )
    return out.getvalue()


def test_the_same_data_set_in_another_envelope_is_the_same(original: bytes) -> None:
    assert dcmread(io.BytesIO(original)).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    for other in (
        rewritten(original),
        rewritten(original, syntax=ImplicitVRLittleEndian),
        rewritten(original, rle=True),
    ):
        assert other != original
        assert same_instance(original, other) and same_instance(other, original)


def test_a_changed_element_or_pixel_is_not_the_same(original: bytes) -> None:
    assert not same_instance(original, rewritten(original, SeriesDescription="another"))
    assert not same_instance(original, rewritten(original, syntax=ImplicitVRLittleEndian, StudyID="9"))
    ds = dcmread(io.BytesIO(original))
    pixels = bytearray(ds.PixelData)
    pixels[0] ^= 1
    ds.PixelData = bytes(pixels)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    assert not same_instance(original, rewritten(out.getvalue(), rle=True))


def test_what_cannot_be_read_is_never_the_same(original: bytes) -> None:
    assert not same_instance(original, b"not dicom at all")
    assert not same_instance(original, original[:-10])
