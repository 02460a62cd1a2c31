"""Whether two Part 10 files hold the same instance, whatever the way each one was encoded.

A modality that retries a C-STORE, or sends what ``medvault import`` already read from disk, sends
the same data set in a new envelope: the file meta information (group 0002) is rewritten by the
receiving side, and the transfer syntax may be another one negotiated for the association. Such a
re-send is the same instance and must succeed; a data set that differs in any element is not.
"""

from __future__ import annotations

import io

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import UID

__all__ = ["same_instance"]


def _decoded(data: bytes) -> bytes:
    """The data set without its file meta, pixel data decompressed, written as Explicit VR Little
    Endian: one encoding for every way the same content can arrive."""
    ds = dcmread(io.BytesIO(data))
    if UID(ds.file_meta.TransferSyntaxUID).is_compressed:
        ds.decompress(generate_instance_uid=False)
    bare = Dataset(ds)  # the elements only, without the file meta and preamble
    bare.file_meta = FileMetaDataset()
    out = io.BytesIO()
    dcmwrite(out, bare, implicit_vr=False, little_endian=True)
    return out.getvalue()


def same_instance(first: bytes, second: bytes) -> bool:
    """True when both Part 10 files carry equal data sets after transfer-syntax decoding (their
    file meta information may differ). False when they differ, or when either cannot be decoded
    here (an unknown codec is never taken for sameness)."""
    if first == second:
        return True
    try:
        return _decoded(first) == _decoded(second)
    except Exception:  # pydicom and its decoder plugins raise many types; any of them means "not shown equal"
        return False
