"""WADO-RS content negotiation (PS3.18 §8.7): Accept parsing, q-values, transfer syntax choices."""

from __future__ import annotations

import pytest

from medvault.api.negotiation import (
    ANY_SYNTAX,
    EXPLICIT_VR_LE,
    DicomChoice,
    FrameChoice,
    negotiate_dicom,
    negotiate_frames,
    negotiate_rendered,
)
from medvault.errors import InvalidInput, NotAcceptable

RLE = "1.2.840.10008.1.2.5"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
IMPLICIT_LE = "1.2.840.10008.1.2"
MP_DICOM = 'multipart/related; type="application/dicom"'
MP_OCTET = 'multipart/related; type="application/octet-stream"'


# -- instances -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "single", "expected"),
    [
        (None, False, DicomChoice(ANY_SYNTAX, single_part=False)),
        ("", True, DicomChoice(ANY_SYNTAX, single_part=False)),
        ("*/*", True, DicomChoice(ANY_SYNTAX, single_part=False)),
        (MP_DICOM, False, DicomChoice(EXPLICIT_VR_LE, single_part=False)),
        (f"{MP_DICOM}; transfer-syntax=*", False, DicomChoice(ANY_SYNTAX, single_part=False)),
        (f'{MP_DICOM}; transfer-syntax="{RLE}"', False, DicomChoice(RLE, single_part=False)),
        ("multipart/related", False, DicomChoice(EXPLICIT_VR_LE, single_part=False)),
        (
            'Multipart/Related; TYPE="Application/Dicom"; transfer-syntax=*',
            False,
            DicomChoice(ANY_SYNTAX, single_part=False),
        ),
        ("multipart/*", False, DicomChoice(EXPLICIT_VR_LE, single_part=False)),
        ("application/dicom", True, DicomChoice(EXPLICIT_VR_LE, single_part=True)),
        ("application/dicom; transfer-syntax=*", True, DicomChoice(ANY_SYNTAX, single_part=True)),
        # q-values decide between acceptable entries
        (
            f"application/dicom;q=0.4, {MP_DICOM}; transfer-syntax=*;q=0.8",
            True,
            DicomChoice(ANY_SYNTAX, single_part=False),
        ),
        (
            f"application/dicom;q=0.9, {MP_DICOM}; transfer-syntax=*;q=0.8",
            True,
            DicomChoice(EXPLICIT_VR_LE, single_part=True),
        ),
        # unacceptable entries are skipped
        (
            f"text/html, application/dicom+json, {MP_DICOM}; transfer-syntax=*",
            False,
            DicomChoice(ANY_SYNTAX, single_part=False),
        ),
        # single part only for one instance
        (f"application/dicom, {MP_DICOM}", False, DicomChoice(EXPLICIT_VR_LE, single_part=False)),
    ],
)
def test_negotiate_dicom(accept: str | None, single: bool, expected: DicomChoice) -> None:
    assert negotiate_dicom(accept, single_instance=single) == expected


@pytest.mark.parametrize(
    ("accept", "single"),
    [
        ("text/html", True),
        ("application/dicom", False),
        ('multipart/related; type="application/dicom+json"', False),
        ('multipart/related; type="image/jpeg"', False),
        (f"{MP_DICOM};q=0", False),
        ("*/*;q=0, text/html", True),
    ],
)
def test_negotiate_dicom_not_acceptable(accept: str, single: bool) -> None:
    with pytest.raises(NotAcceptable):
        negotiate_dicom(accept, single_instance=single)


def test_malformed_accept_is_invalid_input() -> None:
    with pytest.raises(InvalidInput):
        negotiate_dicom("application/dicom;q=abc", single_instance=True)
    with pytest.raises(InvalidInput):
        negotiate_rendered("image")


# -- frames ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "stored", "expected"),
    [
        (None, RLE, FrameChoice(True, "image/dicom-rle")),
        (None, EXPLICIT_VR_LE, FrameChoice(False, "application/octet-stream")),
        ("*/*", J2K_LOSSLESS, FrameChoice(True, "image/jp2")),
        ("multipart/*", JPEG_BASELINE, FrameChoice(True, "image/jpeg")),
        (f"{MP_OCTET}; transfer-syntax=*", RLE, FrameChoice(True, "image/dicom-rle")),
        (f"{MP_OCTET}; transfer-syntax=*", EXPLICIT_VR_LE, FrameChoice(True, "application/octet-stream")),
        (MP_OCTET, RLE, FrameChoice(False, "application/octet-stream")),
        (
            f"{MP_OCTET}; transfer-syntax={EXPLICIT_VR_LE}",
            RLE,
            FrameChoice(False, "application/octet-stream"),
        ),
        (
            f"{MP_OCTET}; transfer-syntax={IMPLICIT_LE}",
            IMPLICIT_LE,
            FrameChoice(False, "application/octet-stream"),
        ),
        ('multipart/related; type="image/dicom-rle"', RLE, FrameChoice(True, "image/dicom-rle")),
        (
            f'multipart/related; type="image/jp2"; transfer-syntax={J2K_LOSSLESS}',
            J2K_LOSSLESS,
            FrameChoice(True, "image/jp2"),
        ),
        ('multipart/related; type="image/jpeg"', JPEG_BASELINE, FrameChoice(True, "image/jpeg")),
        # first acceptable entry by preference
        (
            f'multipart/related; type="image/jpeg", {MP_OCTET}',
            RLE,
            FrameChoice(False, "application/octet-stream"),
        ),
        (
            f'{MP_OCTET};q=0.5, multipart/related; type="image/dicom-rle"',
            RLE,
            FrameChoice(True, "image/dicom-rle"),
        ),
    ],
)
def test_negotiate_frames(accept: str | None, stored: str, expected: FrameChoice) -> None:
    assert negotiate_frames(accept, stored) == expected


@pytest.mark.parametrize(
    ("accept", "stored"),
    [
        ('multipart/related; type="image/jpeg"', RLE),
        ('multipart/related; type="image/jpeg"', EXPLICIT_VR_LE),  # no re-encoding of native frames
        (f"{MP_OCTET}; transfer-syntax={JPEG_BASELINE}", RLE),
        (f'multipart/related; type="image/jp2"; transfer-syntax={RLE}', J2K_LOSSLESS),
        ("application/octet-stream", RLE),  # frames are always multipart
        (f"{MP_OCTET};q=0", RLE),
    ],
)
def test_negotiate_frames_not_acceptable(accept: str, stored: str) -> None:
    with pytest.raises(NotAcceptable):
        negotiate_frames(accept, stored)


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        (EXPLICIT_VR_LE, FrameChoice(False, "application/octet-stream")),
        (RLE, FrameChoice(True, "image/dicom-rle")),
    ],
)
def test_negotiate_frames_wildcard_part_type(stored: str, expected: FrameChoice) -> None:
    """`multipart/related; type="*/*"` (dicomweb-client's default for frames) accepts any part type."""
    assert negotiate_frames('multipart/related; type="*/*"', stored) == expected


# -- rendered --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "image/jpeg"),
        ("*/*", "image/jpeg"),
        ("image/*", "image/jpeg"),
        ("image/png", "image/png"),
        ("image/jpeg", "image/jpeg"),
        ("image/png;q=0.9, image/jpeg;q=0.1", "image/png"),
        ("image/jpeg;q=0.5, image/png", "image/png"),
        ("image/gif, image/png", "image/png"),
        ("text/html, image/*;q=0.1", "image/jpeg"),
    ],
)
def test_negotiate_rendered(accept: str | None, expected: str) -> None:
    assert negotiate_rendered(accept) == expected


@pytest.mark.parametrize("accept", ["image/gif", "image/png;q=0", "application/dicom", "text/*"])
def test_negotiate_rendered_not_acceptable(accept: str) -> None:
    with pytest.raises(NotAcceptable):
        negotiate_rendered(accept)
