"""Content negotiation for WADO-RS (PS3.18 §8.7): which representation a client gets.

Each ``negotiate_*`` takes the Accept header field and the values of the ``accept`` query
parameter (PS3.18 §8.3.3.1: media types, comma-separated, each with an optional q weight, no
wildcards; meant for links where no header can be set, as viewers use for thumbnails). Per
§8.7.8.1 the query parameter's media types are tried first, in their priority order; only when
none of them is supported do the header's media ranges decide (and a wildcard there, the default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.uid import UID

from medvault.dicom.multipart import MediaType, split_accept
from medvault.errors import InvalidInput, NotAcceptable

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
ANY_SYNTAX = "*"

# Media types of frames stored in a compressed transfer syntax (PS3.18 Table 8.7.3-2).
_FRAME_MEDIA: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}


#: The name of the Accept Query Parameter (PS3.18 §8.3.3.1, case-sensitive).
ACCEPT_PARAMETER = "accept"


def _accepted(accept: str | None, query: Sequence[str] = ()) -> list[MediaType]:
    """The media types to try, in order (PS3.18 §8.7.8.1): the Accept Query Parameter's, then the
    Accept header field's (absent or empty: ``*/*``)."""
    # Several parameters count as one list, prioritized as one (q weights, then order).
    from_query = split_accept(",".join(query)) if query else []
    if any("*" in media.type for media in from_query):
        raise InvalidInput("the accept query parameter takes media types without wildcards (PS3.18 §8.3.3.1)")
    header = split_accept(accept) if accept and accept.strip() else [MediaType("*/*")]
    return from_query + header


@dataclass(frozen=True)
class DicomChoice:
    transfer_syntax: str  # "*" for as stored
    single_part: bool  # Accept: application/dicom on an instance


def negotiate_dicom(accept: str | None, *, single_instance: bool, query: Sequence[str] = ()) -> DicomChoice:
    for media in _accepted(accept, query):
        ts = media.params.get("transfer-syntax", EXPLICIT_VR_LE)
        if media.type in ("*/*", "multipart/*"):
            return DicomChoice(ANY_SYNTAX if media.type == "*/*" else ts, single_part=False)
        if media.type == "multipart/related" and media.params.get("type", "application/dicom").lower() in (
            "application/dicom",
        ):
            return DicomChoice(ts, single_part=False)
        if media.type == "application/dicom" and single_instance:
            return DicomChoice(ts, single_part=True)
    raise NotAcceptable(
        'no acceptable representation; ask for multipart/related; type="application/dicom"; transfer-syntax=*'
    )


@dataclass(frozen=True)
class FrameChoice:
    as_stored: bool  # False: decode to Explicit VR Little Endian native bytes
    media_type: str  # of each part


def negotiate_frames(accept: str | None, stored_syntax: str, *, query: Sequence[str] = ()) -> FrameChoice:
    stored_compressed = UID(stored_syntax).is_compressed
    stored_media = _FRAME_MEDIA.get(stored_syntax, "application/octet-stream")
    for media in _accepted(accept, query):
        if media.type in ("*/*", "multipart/*"):
            return (
                FrameChoice(True, stored_media)
                if stored_compressed
                else FrameChoice(False, "application/octet-stream")
            )
        if media.type != "multipart/related":
            continue
        part_type = media.params.get("type", "application/octet-stream").lower()
        ts = media.params.get("transfer-syntax")
        if part_type in ("*/*", "image/*") and ts in (None, ANY_SYNTAX):
            # dicomweb-client's default: whatever the frames are stored as.
            if stored_compressed:
                return FrameChoice(True, stored_media)
            if part_type == "*/*":
                return FrameChoice(False, "application/octet-stream")
            continue
        if part_type == "application/octet-stream":
            if ts == ANY_SYNTAX:
                return FrameChoice(True, stored_media if stored_compressed else part_type)
            if ts in (None, EXPLICIT_VR_LE) or (ts == stored_syntax and not stored_compressed):
                return FrameChoice(False, part_type)
            continue
        if stored_compressed and part_type == stored_media and ts in (None, ANY_SYNTAX, stored_syntax):
            return FrameChoice(True, stored_media)
    raise NotAcceptable(
        'no acceptable frame representation; ask for multipart/related; type="application/octet-stream"; '
        "transfer-syntax=* (as stored) or transfer-syntax=1.2.840.10008.1.2.1 (uncompressed)"
    )


def negotiate_rendered(accept: str | None, *, query: Sequence[str] = ()) -> str:
    for media in _accepted(accept, query):
        if media.type in ("*/*", "image/*", "image/jpeg"):
            return "image/jpeg"
        if media.type == "image/png":
            return "image/png"
    raise NotAcceptable("rendered images are available as image/jpeg or image/png")
