"""Helpers for the dicom package tests: a builder for small synthetic Part 10 instances."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

PATIENT_NAME = "Secret^Patient"

FileLoader = Callable[[str], bytes]
Builder = Callable[..., Dataset]


def _path(name: str) -> Path:
    found = get_testdata_file(name, download=False)
    if not found:
        pytest.skip(f"pydicom test file {name} is not bundled here")
    return Path(str(found))


def loader(name: str) -> bytes:
    """Bytes of a bundled pydicom test file (skips when it is not bundled)."""
    return _path(name).read_bytes()


def fixed_loader(name: str) -> bytes:
    """A bundled test file with its file meta made consistent (MediaStorage* = SOP*)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(_path(name))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        return to_bytes(ds)


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def make_dataset(
    *,
    rows: int = 4,
    columns: int = 4,
    frames: int = 1,
    bits: int = 16,
    samples: int = 1,
    pixel_data: bytes | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    **attributes: Any,
) -> Dataset:
    """A small valid Secondary Capture instance with native pixel data (frame i filled with i)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.3"
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.3"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = "PID-4711"
    ds.Modality = "OT"
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if pixel_data is None:
        size = rows * columns * samples * bits // 8
        pixel_data = b"".join(bytes([i % 256]) * size for i in range(frames))
    ds.PixelData = pixel_data
    ds["PixelData"].VR = "OW" if bits > 8 else "OB"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds
