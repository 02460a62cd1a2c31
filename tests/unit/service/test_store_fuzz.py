"""Whatever text an instance carries, storing it gives an outcome, never a crash (issue #12,
"a fuzz suite that stays"): found this way, a StudyDate of non-ASCII digits ("²०२४…") once raised
ValueError in the index entry and made the request a 500."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from medvault.archive import Archive
from medvault.crypto.fields import BlindIndex, FieldCipher
from medvault.crypto.kek import KeyringKekProvider
from medvault.crypto.keyring import Keyring
from medvault.dicom.matching import parse_criterion, resolve_attribute
from medvault.errors import MedvaultError
from medvault.index.store import Index
from medvault.testing import MemoryBlobStore

TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=24)
DIGITS = st.text(st.characters(categories=("Nd", "No")), min_size=1, max_size=10)
ATTRIBUTES = (
    *("PatientID", "PatientName", "StudyDate", "AccessionNumber", "ReferringPhysicianName"),
    *("InstitutionalDepartmentName", "StudyDescription", "Modality", "SeriesNumber", "InstanceNumber"),
)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    keyring = Keyring.generate()
    index = Index.open_sqlite(
        Path(tmp_path_factory.mktemp("fuzz")) / "index.db",
        cipher=FieldCipher(keyring.index_key),
        blind=BlindIndex(keyring.blind_index_key),
    )
    archive = Archive(index=index, blobs=MemoryBlobStore(), keks=KeyringKekProvider(keyring))
    yield archive
    archive.close()


def _instance(values: dict[str, str], n: int, raw: dict[str, bytes] | None = None) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{n}"
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.8.499.{n}"
    ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.8.500.{n}"
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.Rows = ds.Columns = 2
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = b"\0\1\2\3"
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    placeholders = {}
    for i, (keyword, value) in enumerate((raw or {}).items()):
        placeholders[keyword] = (b"~" + bytes([0x41 + i])) * (len(value) // 2)  # unique, even length
        setattr(ds, keyword, placeholders[keyword].decode())
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    for keyword, value in (raw or {}).items():
        data = data.replace(placeholders[keyword], value[: len(placeholders[keyword])], 1)
    return data


_counter = iter(range(10**9))
STORED: list[bool] = []
RAW = st.dictionaries(
    st.sampled_from(("PatientID", "StudyDate", "AccessionNumber", "StudyDescription", "SeriesNumber")),
    st.one_of(
        st.binary(min_size=2, max_size=16),
        # digits of ISO 8859-1 that str.isdigit accepts and int() refuses, where a date is expected
        st.text("0123456789²³¹", min_size=8, max_size=8).map(lambda t: t.encode("latin-1")),
    ).filter(lambda b: len(b) % 2 == 0),
    max_size=3,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(ATTRIBUTES), st.one_of(TEXT, DIGITS), max_size=6), RAW)
def test_any_text_is_stored_or_refused(
    archive: Archive, values: dict[str, str], raw: dict[str, bytes]
) -> None:
    values = {k: v for k, v in values.items() if k not in raw}
    try:
        data = _instance(values, next(_counter) + 1, raw)
    except (ValueError, TypeError, OverflowError):
        return  # pydicom will not even write it
    outcome = archive.store(data)
    assert outcome.status in ("stored", "failed")
    STORED.append(outcome.status == "stored")
    if outcome.status == "failed":
        assert isinstance(outcome.error, MedvaultError)
    # and searching by any of those values is an answer or a 400, never a crash
    for keyword, value in values.items():
        try:
            tag, vr = resolve_attribute(keyword)
            archive.search("study", [parse_criterion(tag, vr, value)])
        except MedvaultError:
            pass


def test_the_fuzzing_reached_the_index() -> None:
    """The inputs above were instances, not noise: most of them were stored."""
    assert len(STORED) >= 30 and sum(STORED) > len(STORED) // 2, (len(STORED), sum(STORED))
