"""Burned-in annotation: which instances may carry it, and masking configured regions.

An instance is *suspect* when BurnedInAnnotation (0028,0301) is YES or when it is of a kind
known to carry identifying text in its pixels: ultrasound, secondary capture (incl. multi-frame
SC and screen captures), ophthalmic/visible-light photographs with a capture device, or any
image whose ImageType says SCREEN SAVE / SECONDARY CAPTURE. Suspect instances are left out of
an export unless the Clean Pixel Data option is on and a :class:`PixelMaskRule` matches the
device and image size; then its regions are blanked in every frame (and in overlay planes).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from medvault.dicom.deid._config import PixelMaskRule
from medvault.dicom.deid._raw import RawDataset

# SOP classes whose pixels commonly carry burned-in text
_SUSPECT_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.6.1": "ultrasound image",
    "1.2.840.10008.5.1.4.1.1.6.2": "enhanced ultrasound volume",
    "1.2.840.10008.5.1.4.1.1.3.1": "ultrasound multi-frame image",
    "1.2.840.10008.5.1.4.1.1.6": "ultrasound image (retired)",
    "1.2.840.10008.5.1.4.1.1.3": "ultrasound multi-frame image (retired)",
    "1.2.840.10008.5.1.4.1.1.7": "secondary capture",
    "1.2.840.10008.5.1.4.1.1.7.1": "secondary capture (multi-frame)",
    "1.2.840.10008.5.1.4.1.1.7.2": "secondary capture (multi-frame)",
    "1.2.840.10008.5.1.4.1.1.7.3": "secondary capture (multi-frame)",
    "1.2.840.10008.5.1.4.1.1.7.4": "secondary capture (multi-frame)",
    "1.2.840.10008.5.1.4.1.1.77.1.1.1": "video endoscopic image",
    "1.2.840.10008.5.1.4.1.1.77.1.4": "visible light photograph",
    "1.2.840.10008.5.1.4.1.1.77.1.4.1": "video photographic image",
}
_SUSPECT_MODALITIES = {"US": "ultrasound", "XC": "external camera photograph", "DOC": "scanned document"}
_SUSPECT_IMAGE_TYPES = {"SCREEN SAVE": "screen capture", "SCREENSHOT": "screen capture"}


def burned_in_reason(ds: Dataset | RawDataset) -> str | None:
    """Why ``ds`` may carry burned-in text, or None (a generic reason: never a patient value)."""
    if str(ds.get("BurnedInAnnotation", "")).strip().upper() == "YES":
        return "BurnedInAnnotation is YES"
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class in _SUSPECT_CLASSES:
        return _SUSPECT_CLASSES[sop_class]
    modality = str(ds.get("Modality", "")).strip().upper()
    if modality in _SUSPECT_MODALITIES:
        return _SUSPECT_MODALITIES[modality]
    image_type = ds.get("ImageType")
    if image_type is not None:
        values = [image_type] if isinstance(image_type, str) else list(image_type)
        for v in (str(x).strip().upper() for x in values):
            if v in _SUSPECT_IMAGE_TYPES:
                return _SUSPECT_IMAGE_TYPES[v]
    if "ConversionType" in ds and "PixelData" in ds:
        return "secondary capture (ConversionType present)"
    return None


def find_rule(ds: Dataset, rules: tuple[PixelMaskRule, ...]) -> PixelMaskRule | None:
    manufacturer = str(ds.get("Manufacturer", "") or "")
    model = str(ds.get("ManufacturerModelName", "") or "")
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    for rule in rules:
        if rule.matches(manufacturer, model, rows, cols):
            return rule
    return None


def _blank(arr: np.ndarray[Any, Any], rule: PixelMaskRule, rows: int, cols: int, frames_first: bool) -> None:
    for r in rule.regions:
        y0, y1 = min(r.y, rows), min(r.y + r.height, rows)
        x0, x1 = min(r.x, cols), min(r.x + r.width, cols)
        if frames_first:
            arr[:, y0:y1, x0:x1, ...] = rule.fill
        else:
            arr[y0:y1, x0:x1, ...] = rule.fill


def mask_pixels(ds: Dataset, rule: PixelMaskRule) -> None:
    """Blank the rule's regions in ``ds``'s pixel data (in place, on the engine's own copy).

    Compressed pixel data is decoded and stored back uncompressed (Explicit VR Little Endian).
    """
    if "PixelData" not in ds:
        return
    rows, cols = int(ds.Rows), int(ds.Columns)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    ts = UID(ds.file_meta.TransferSyntaxUID)
    arr = np.array(ds.pixel_array, copy=True)
    _blank(arr, rule, rows, cols, frames_first=frames > 1)
    if ts.is_compressed:
        photometric = "RGB" if samples == 3 else str(ds.PhotometricInterpretation)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.set_pixel_data(arr, photometric, int(ds.BitsStored))
    else:
        planar = int(ds.get("PlanarConfiguration", 0) or 0)
        if samples > 1 and planar == 1:  # pixel_array is (.., rows, cols, samples): back to planes
            arr = np.moveaxis(arr, -1, -3)
        data = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
        if int(ds.BitsAllocated) == 1:
            data = np.packbits(arr.astype(np.uint8).ravel(), bitorder="little").tobytes()
        ds.PixelData = data + (b"\0" if len(data) % 2 else b"")


def mask_overlays(ds: Dataset, rule: PixelMaskRule) -> None:
    """Blank the rule's regions in every overlay plane (they share the image's coordinates)."""
    for group in range(0x6000, 0x6020, 2):
        tag = (group << 16) | 0x3000
        if tag in ds and (group << 16 | 0x0010) in ds:
            _mask_overlay(ds, group, rule)


def _mask_overlay(ds: Dataset, group: int, rule: PixelMaskRule) -> None:
    rows = int(ds[(group << 16) | 0x0010].value)
    cols = int(ds[(group << 16) | 0x0011].value)
    origin = ds.get((group << 16) | 0x0050)
    oy, ox = (int(origin.value[0]) - 1, int(origin.value[1]) - 1) if origin is not None else (0, 0)
    elem = ds[(group << 16) | 0x3000]
    bits = np.unpackbits(np.frombuffer(elem.value, dtype=np.uint8), bitorder="little")
    n = rows * cols
    if bits.size < n:
        return
    plane = bits[:n].reshape(rows, cols)
    for r in rule.regions:  # region in image coordinates -> overlay coordinates
        y0, y1 = max(r.y - oy, 0), max(min(r.y + r.height - oy, rows), 0)
        x0, x1 = max(r.x - ox, 0), max(min(r.x + r.width - ox, cols), 0)
        plane[y0:y1, x0:x1] = 0
    bits[:n] = plane.ravel()
    packed = np.packbits(bits, bitorder="little").tobytes()
    elem.value = packed + (b"\0" if len(packed) % 2 else b"")
