"""Frames and rendered images for WADO-RS (PS3.18 §10.4 frames, §10.4.1.1.3 rendered).

SPEC: https://dicom.nema.org/medical/dicom/current/output/html/part18.html#sect_8.3.5 (rendered)
SPEC: https://dicom.nema.org/medical/dicom/current/output/html/part03.html#sect_C.11.2.1.2 (window)

Every function takes the instance's metadata data set (for the Image Pixel module), the bytes of
one frame (as located by :class:`medvault.dicom.parse.FrameLocation`) and the transfer syntax the
frame is encoded in. Compressed frames are decoded with pydicom's pixel backends (pylibjpeg,
openjpeg, rle); a transfer syntax with no installed decoder raises :class:`NotAcceptable`.

Colour: YBR_FULL / YBR_FULL_422 (native or compressed) comes back as RGB, samples interleaved.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut
from pydicom.uid import UID

from medvault.dicom.parse import NATIVE_TRANSFER_SYNTAXES
from medvault.errors import InvalidInput, NotAcceptable

__all__ = [
    "DEFAULT_THUMBNAIL_SIZE",
    "RENDERED_MEDIA_TYPES",
    "decode_frame",
    "render_frame",
    "thumbnail",
    "uncompressed_frame",
]

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
_LITTLE_ENDIAN_NATIVE = frozenset({"1.2.840.10008.1.2", EXPLICIT_VR_LITTLE_ENDIAN})
RENDERED_MEDIA_TYPES = {"image/jpeg": "JPEG", "image/png": "PNG"}
DEFAULT_THUMBNAIL_SIZE = (128, 128)

_PIXEL_MODULE = (
    "Rows",
    "Columns",
    "SamplesPerPixel",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PhotometricInterpretation",
    "PlanarConfiguration",
)


def _int(ds: Dataset, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword)
    if value is None or value == "":
        if default is None:
            raise InvalidInput(f"{keyword} is missing: the frame cannot be decoded")
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{keyword} is not a valid integer") from None


def _photometric(ds: Dataset) -> str:
    value = ds.get("PhotometricInterpretation")
    if value:
        return str(value).strip()
    return "MONOCHROME2" if _int(ds, "SamplesPerPixel", 1) == 1 else "RGB"


def _frame_dataset(meta: Dataset, frame_bytes: bytes, ts: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(ts)
    samples = _int(meta, "SamplesPerPixel", 1)
    bits = _int(meta, "BitsAllocated")
    stored = _int(meta, "BitsStored", bits)
    ds.Rows = _int(meta, "Rows")
    ds.Columns = _int(meta, "Columns")
    ds.SamplesPerPixel = samples
    ds.BitsAllocated = bits
    ds.BitsStored = stored
    ds.HighBit = _int(meta, "HighBit", stored - 1)
    ds.PixelRepresentation = _int(meta, "PixelRepresentation", 0)
    ds.PhotometricInterpretation = _photometric(meta)
    if samples > 1:
        ds.PlanarConfiguration = _int(meta, "PlanarConfiguration", 0)
    ds.NumberOfFrames = 1
    if ts in NATIVE_TRANSFER_SYNTAXES:
        original = meta.get_item(0x7FE00010)
        original_vr = str(getattr(original, "VR", "") or "")
        vr = original_vr if original_vr in ("OB", "OW") else ("OW" if bits > 8 else "OB")
        # OW words must be whole (a big-endian 8-bit frame of odd length is swapped in pairs).
        ds.PixelData = frame_bytes + b"\x00" if vr == "OW" and len(frame_bytes) % 2 else frame_bytes
        ds["PixelData"].VR = vr
    else:
        ds.PixelData = encapsulate([frame_bytes])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    return ds


def decode_frame(metadata_ds: Dataset, frame_bytes: bytes, transfer_syntax_uid: str) -> np.ndarray[Any, Any]:
    """Decode one frame: ``(rows, columns)`` or ``(rows, columns, samples)``; YBR comes back RGB."""
    try:
        decoder = get_decoder(transfer_syntax_uid)
    except (NotImplementedError, ValueError, KeyError):
        raise NotAcceptable(f"no pixel data decoder for transfer syntax {transfer_syntax_uid}") from None
    if not decoder.is_available:
        raise NotAcceptable(
            f"no pixel data decoder installed for transfer syntax {transfer_syntax_uid}",
            hint="install the pylibjpeg plugins (pylibjpeg-libjpeg, -openjpeg, -rle)",
        )
    ds = _frame_dataset(metadata_ds, frame_bytes, transfer_syntax_uid)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            options: dict[str, Any] = {"as_rgb": True}
            arr, _ = decoder.as_array(ds, index=0, **options)
        except Exception as exc:  # backends raise many kinds; their text may quote bytes, not values
            raise NotAcceptable(
                f"the frame could not be decoded from transfer syntax {transfer_syntax_uid} "
                f"({type(exc).__name__})"
            ) from None
    return arr


def uncompressed_frame(metadata_ds: Dataset, frame_bytes: bytes, transfer_syntax_uid: str) -> bytes:
    """The frame as Explicit VR Little Endian native pixel bytes.

    Little-endian native frames are returned as they are. Decoded frames are little endian,
    samples interleaved (PlanarConfiguration 0), ``BitsAllocated`` bits per sample; a YBR source
    comes back RGB (the served metadata should then say PhotometricInterpretation RGB).
    """
    if transfer_syntax_uid in _LITTLE_ENDIAN_NATIVE:
        return bytes(frame_bytes)
    arr = decode_frame(metadata_ds, frame_bytes, transfer_syntax_uid)
    bits = _int(metadata_ds, "BitsAllocated")
    if bits == 1:
        return np.packbits(arr.astype(np.uint8).ravel(), bitorder="little").tobytes()
    signed = _int(metadata_ds, "PixelRepresentation", 0) == 1
    kind = "i" if signed and arr.dtype.kind != "f" else ("f" if arr.dtype.kind == "f" else "u")
    dtype = np.dtype(f"<{kind}{bits // 8}")
    return np.ascontiguousarray(arr.astype(dtype, copy=False)).tobytes()


def _first_number(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, list | tuple) or (hasattr(value, "__getitem__") and not isinstance(value, str)):
            return float(value[0])
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None


def _functional(ds: Dataset, sequence: str, keyword: str) -> Any:
    """``keyword`` from the Shared Functional Groups' ``sequence`` (enhanced multi-frame)."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    if not shared:
        return None
    inner = shared[0].get(sequence)
    if not inner:
        return None
    return inner[0].get(keyword)


def _modality(arr: np.ndarray[Any, Any], ds: Dataset) -> np.ndarray[Any, Any]:
    if ds.get("ModalityLUTSequence"):
        try:
            converted: np.ndarray[Any, Any] = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
            return converted
        except Exception:  # noqa: S110 - a broken LUT falls back to the rescale below
            pass
    slope = _first_number(ds.get("RescaleSlope"))
    intercept = _first_number(ds.get("RescaleIntercept"))
    if slope is None and intercept is None:
        slope = _first_number(_functional(ds, "PixelValueTransformationSequence", "RescaleSlope"))
        intercept = _first_number(_functional(ds, "PixelValueTransformationSequence", "RescaleIntercept"))
    out = arr.astype(np.float64)
    if slope is not None and slope != 1.0:
        out *= slope
    if intercept:
        out += intercept
    return out


def _dataset_window(ds: Dataset) -> tuple[float, float] | None:
    center = _first_number(ds.get("WindowCenter"))
    width = _first_number(ds.get("WindowWidth"))
    if center is None or width is None:
        center = _first_number(_functional(ds, "FrameVOILUTSequence", "WindowCenter"))
        width = _first_number(_functional(ds, "FrameVOILUTSequence", "WindowWidth"))
    if center is None or width is None or width < 1:
        return None
    return center, width


def _apply_window(values: np.ndarray[Any, Any], center: float, width: float) -> np.ndarray[Any, Any]:
    """Linear VOI function, PS3.3 C.11.2.1.2.1, to 0..255."""
    if width <= 1:
        return np.where(values > center - 0.5, 255.0, 0.0)
    out = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    return np.clip(out, 0.0, 255.0)


def _to_8bit_color(arr: np.ndarray[Any, Any], bits_stored: int) -> np.ndarray[Any, Any]:
    if arr.dtype == np.uint8:
        return arr
    top = float(arr.max()) if arr.size else 0.0
    depth = bits_stored if 2**bits_stored - 1 >= top else int(np.ceil(np.log2(top + 1)))
    scaled = arr.astype(np.float64) * (255.0 / max(2**depth - 1, 1))
    out: np.ndarray[Any, Any] = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return out


def _to_image(
    metadata_ds: Dataset, frame_bytes: bytes, ts: str, window: tuple[float, float] | None
) -> Image.Image:
    arr = decode_frame(metadata_ds, frame_bytes, ts)
    photometric = _photometric(metadata_ds)
    bits_stored = _int(metadata_ds, "BitsStored", _int(metadata_ds, "BitsAllocated"))
    if arr.ndim == 3:
        if arr.shape[2] == 4:
            arr = arr[:, :, :3]
        return Image.fromarray(_to_8bit_color(arr, bits_stored), mode="RGB")
    if photometric == "PALETTE COLOR":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                rgb = apply_color_lut(arr, metadata_ds)
            except Exception:
                raise NotAcceptable("the palette colour lookup table cannot be applied") from None
        lut_bits = 16 if rgb.dtype.itemsize > 1 else 8
        return Image.fromarray(_to_8bit_color(rgb, lut_bits), mode="RGB")
    values = _modality(arr, metadata_ds)
    if window is not None:
        width = window[1]
        if not width >= 1:
            raise InvalidInput("window width must be at least 1")
    else:
        window = _dataset_window(metadata_ds)
    if window is not None:
        out = _apply_window(values, *window)
    else:
        low = float(values.min()) if values.size else 0.0
        high = float(values.max()) if values.size else 0.0
        out = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
    gray = np.rint(out).astype(np.uint8)
    if photometric == "MONOCHROME1":
        gray = 255 - gray
    return Image.fromarray(gray, mode="L")


def _fit(image: Image.Image, viewport: tuple[int, int]) -> Image.Image:
    width, height = viewport
    if width < 1 or height < 1:
        raise InvalidInput("viewport width and height must be positive")
    scale = min(width / image.width, height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS)


def render_frame(
    metadata_ds: Dataset,
    frame_bytes: bytes,
    transfer_syntax_uid: str,
    *,
    media_type: str = "image/jpeg",
    window: tuple[float, float] | None = None,
    viewport: tuple[int, int] | None = None,
    quality: int = 90,
) -> bytes:
    """Render one frame as an 8-bit JPEG or PNG.

    Grayscale: Modality LUT (or rescale slope/intercept), then the window ``(center, width)``
    given, else the data set's first WindowCenter/WindowWidth, else the frame's min..max; then
    MONOCHROME1 is inverted. Colour: YBR to RGB, more than 8 bits scaled down; PALETTE COLOR
    through its LUT. ``viewport=(width, height)`` scales to fit, keeping the aspect ratio.
    """
    fmt = RENDERED_MEDIA_TYPES.get(media_type.split(";")[0].strip().lower())
    if fmt is None:
        raise NotAcceptable(
            f"rendered media type {media_type!r} is not supported; use one of "
            + ", ".join(sorted(RENDERED_MEDIA_TYPES))
        )
    if not 1 <= quality <= 100:
        raise InvalidInput("quality must be between 1 and 100")
    image = _to_image(metadata_ds, frame_bytes, transfer_syntax_uid, window)
    if viewport is not None:
        image = _fit(image, viewport)
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def thumbnail(
    metadata_ds: Dataset,
    frame_bytes: bytes,
    transfer_syntax_uid: str,
    *,
    media_type: str = "image/jpeg",
    size: tuple[int, int] = DEFAULT_THUMBNAIL_SIZE,
    quality: int = 80,
) -> bytes:
    """:func:`render_frame` fitted into ``size`` (default 128x128), with the data set's window."""
    return render_frame(
        metadata_ds,
        frame_bytes,
        transfer_syntax_uid,
        media_type=media_type,
        viewport=size,
        quality=quality,
    )
