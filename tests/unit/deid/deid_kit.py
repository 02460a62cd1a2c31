"""Helpers for the de-identification tests: small data sets carrying known PHI."""

from __future__ import annotations

import io

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from medvault.dicom.deid import DeidConfig, Deidentifier

KEY = b"project-one-key-0123456789abcdef"
OTHER_KEY = b"project-two-key-0123456789abcdef"
CT = "1.2.840.10008.5.1.4.1.1.2"
SR = "1.2.840.10008.5.1.4.1.1.88.33"

PATIENT_NAME = "DOE^JOHNATHAN"
PATIENT_ID = "PID12345"
BIRTH = "19610402"
STUDY_DATE = "20200115"
STUDY_UID = "1.2.826.0.1.3680043.99.1.1"
SERIES_UID = "1.2.826.0.1.3680043.99.1.2"
SOP_UID = "1.2.826.0.1.3680043.99.1.3"
FOR_UID = "1.2.826.0.1.3680043.99.1.4"
ACCESSION = "ACC99887766"
INSTITUTION = "SAINT ELSEWHERE HOSPITAL"
REFERRING = "HOUSE^GREGORY"
PHI = [PATIENT_NAME.split("^")[0], "JOHNATHAN", PATIENT_ID, BIRTH, ACCESSION, "ELSEWHERE", "GREGORY"]
UIDS = [STUDY_UID, SERIES_UID, SOP_UID, FOR_UID]


def code_item(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def make_ct(**overrides: object) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = SOP_UID
    ds.StudyInstanceUID = STUDY_UID
    ds.SeriesInstanceUID = SERIES_UID
    ds.FrameOfReferenceUID = FOR_UID
    ds.Modality = "CT"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = BIRTH
    ds.PatientSex = "M"
    ds.StudyDate = STUDY_DATE
    ds.SeriesDate = STUDY_DATE
    ds.StudyTime = "101500"
    ds.AccessionNumber = ACCESSION
    ds.InstitutionName = INSTITUTION
    ds.ReferringPhysicianName = REFERRING
    ds.Manufacturer = "ACME"
    ds.ManufacturerModelName = "SCANNER 9"
    ds.Rows = 4
    ds.Columns = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(32))
    for k, v in overrides.items():
        setattr(ds, k, v)
    return ds


def with_meta(ds: Dataset) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def leaks(data: bytes, needles: list[str]) -> list[str]:
    upper = data.upper()
    return [n for n in needles if n.upper().encode() in upper]


def sequence(*items: Dataset) -> Sequence:
    return Sequence(list(items))


def make_sr() -> Dataset:
    ds = make_ct(SOPClassUID=SR, Modality="SR")
    for k in (
        "Rows",
        "Columns",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "BitsAllocated",
        "PixelData",
    ):
        delattr(ds, k)
    ds.ContentDate = "20200115"
    ds.ContentTime = "101500"
    text = Dataset()
    text.RelationshipType = "CONTAINS"
    text.ValueType = "TEXT"
    text.ConceptNameCodeSequence = sequence(code_item("121071", "DCM", "Finding"))
    text.TextValue = f"Patient DOE JOHNATHAN, MRN {PATIENT_ID}, seen 2020-01-15 by Dr. Kildare; see {SOP_UID}"
    person = Dataset()
    person.RelationshipType = "HAS OBS CONTEXT"
    person.ValueType = "PNAME"
    person.PersonName = "KILDARE^JAMES"
    image = Dataset()
    image.RelationshipType = "CONTAINS"
    image.ValueType = "IMAGE"
    ref = Dataset()
    ref.ReferencedSOPClassUID = CT
    ref.ReferencedSOPInstanceUID = SOP_UID
    image.ReferencedSOPSequence = sequence(ref)
    container = Dataset()
    container.RelationshipType = "CONTAINS"
    container.ValueType = "CONTAINER"
    container.ContentSequence = sequence(text, person, image)  # nested two levels deep
    ds.ContentSequence = sequence(container)
    return ds


def assert_paths_agree(ds: Dataset, config: DeidConfig, key: bytes = KEY) -> bool:
    """The fast path and the pydicom path give the same file for ``ds`` written as explicit VR
    little endian; False when the fast path declined it (see :func:`assert_files_agree`)."""
    source = Dataset(ds)
    source.file_meta = FileMetaDataset()
    source.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if "SOPClassUID" in ds and "SOPInstanceUID" in ds:
        with_meta(source)
    try:
        data = to_bytes(source)
    except Exception:  # not encodable as a file (a test of the engine's in-memory input only)
        return False
    return assert_files_agree(data, config, key)


def assert_files_agree(data: bytes, config: DeidConfig, key: bytes = KEY) -> bool:
    """``Deidentifier.deidentify_bytes`` (the fast path) gives byte for byte the file that
    the pydicom path (dcmread, ``deidentify``, dcmwrite) gives; False when it declined."""
    engine = Deidentifier(config=config, project_key=key)
    fast = engine.deidentify_bytes(data)
    if fast is None:
        return False
    slow = engine.deidentify(dcmread(io.BytesIO(data)))
    assert slow.dataset is not None, slow.excluded
    expected = to_bytes(slow.dataset)
    if fast.data != expected:  # show which element differs before failing
        got, want = dcmread(io.BytesIO(fast.data)), dcmread(io.BytesIO(expected))
        assert got.file_meta == want.file_meta
        assert [(e.tag, e.VR, e.value) for e in got] == [(e.tag, e.VR, e.value) for e in want]
        assert fast.data == expected
    assert fast.sop_instance_uid == str(slow.dataset.SOPInstanceUID)
    assert fast.mapping == slow.mapping
    return True
