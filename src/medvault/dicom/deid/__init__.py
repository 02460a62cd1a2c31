"""De-identification of DICOM instances: PS3.15 Annex E, Basic Application Level Confidentiality
Profile and its options, driven by the machine-readable Table E.1-1 shipped in ``data/``.

Public surface::

    DeidConfig.from_options(["retain-uids", "modified-dates"])   # or DeidConfig(retain_uids=True, ...)
    deidentify_dataset(ds, config=..., project_key=...) -> Result  # pure, in memory
    Deidentifier(config=..., project_key=...).deidentify(ds)        # the same, reusable
    deidentify_tree(src, dst, config=..., project_key=..., workers=2, progress=None) -> Summary

See docs/deidentification.md for what every option does and the choices made where the
standard leaves one.
"""

from medvault.dicom.deid._batch import FileOutcome, Summary, deidentify_tree
from medvault.dicom.deid._config import (
    OPTION_NAMES,
    DatePolicy,
    DeidConfig,
    MaskRegion,
    PixelMaskRule,
    parse_pixel_masks,
)
from medvault.dicom.deid._engine import (
    CID7050,
    Deidentifier,
    PatientEntry,
    ReidentificationMap,
    Result,
    deidentify_dataset,
)
from medvault.dicom.deid._pixels import burned_in_reason

__all__ = [
    "CID7050",
    "OPTION_NAMES",
    "DatePolicy",
    "DeidConfig",
    "Deidentifier",
    "FileOutcome",
    "MaskRegion",
    "PatientEntry",
    "PixelMaskRule",
    "ReidentificationMap",
    "Result",
    "Summary",
    "burned_in_reason",
    "deidentify_dataset",
    "deidentify_tree",
    "parse_pixel_masks",
]
