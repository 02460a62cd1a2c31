"""DICOM parsing, DICOM JSON, query matching and rendering. Pure: no I/O, no global state.

- :mod:`.parse`: validate a Part 10 instance at ingest and locate its frames in the file bytes.
- :mod:`.dicomjson`: the DICOM JSON Model (PS3.18 F.2) and the QIDO-RS level attribute sets.
- :mod:`.matching`: QIDO-RS / C-FIND attribute matching (PS3.4 C.2.2.2) over DICOM JSON.
- :mod:`.render`: decode, transcode to native and render frames (WADO-RS frames / rendered).
"""

from medvault.dicom.dicomjson import (
    DEFAULT_RETURN_TAGS,
    INSTANCE_LEVEL_TAGS,
    SERIES_LEVEL_TAGS,
    STUDY_LEVEL_TAGS,
    Level,
    dataset_to_json,
    json_to_dataset,
    level_attributes,
    with_bulk_data_base,
)
from medvault.dicom.matching import (
    Criterion,
    MatchKind,
    normalize_for_exact,
    parse_criterion,
    resolve_attribute,
)
from medvault.dicom.parse import FrameLocation, ParsedInstance, is_valid_uid, parse_instance
from medvault.dicom.render import decode_frame, render_frame, thumbnail, uncompressed_frame

__all__ = [
    "DEFAULT_RETURN_TAGS",
    "INSTANCE_LEVEL_TAGS",
    "SERIES_LEVEL_TAGS",
    "STUDY_LEVEL_TAGS",
    "Criterion",
    "FrameLocation",
    "Level",
    "MatchKind",
    "ParsedInstance",
    "dataset_to_json",
    "decode_frame",
    "is_valid_uid",
    "json_to_dataset",
    "level_attributes",
    "normalize_for_exact",
    "parse_criterion",
    "parse_instance",
    "render_frame",
    "resolve_attribute",
    "thumbnail",
    "uncompressed_frame",
    "with_bulk_data_base",
]
