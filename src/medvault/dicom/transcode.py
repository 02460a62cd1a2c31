"""Transfer-syntax conversion for WADO-RS when a client asks for one other than the stored one."""

from __future__ import annotations

import io

from pydicom import dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medvault.errors import NotAcceptable

NATIVE_SYNTAXES = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian, "1.2.840.10008.1.2.2"})


def transcode_to_explicit_little_endian(data: bytes) -> bytes:
    """Return a Part 10 file in Explicit VR Little Endian, decompressing pixel data if needed."""
    ds = dcmread(io.BytesIO(data))
    stored = UID(ds.file_meta.TransferSyntaxUID)
    if stored == ExplicitVRLittleEndian:
        return data
    if stored.is_compressed:
        try:
            ds.decompress(generate_instance_uid=False)
        except Exception as exc:  # the decoder plugins raise many types; name none of the data
            raise NotAcceptable(
                f"the instance is stored as {stored} and cannot be decompressed here "
                f"({type(exc).__name__}); ask for transfer-syntax=*"
            ) from None
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, little_endian=True, implicit_vr=False)
    return out.getvalue()
