"""The de-identification configuration: which PS3.15 Annex E options apply, and the pixel masks.

``DeidConfig`` is a frozen dataclass with one named field per option; ``DeidConfig.from_options``
builds it from the option names a user types (``retain-uids``, ``clean-descriptors``,
``modified-dates`` ...), which are the ``cli`` names of the option columns of Table E.1-1.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from medvault.errors import InvalidInput


class DatePolicy(enum.Enum):
    """What happens to dates and times (Retain Longitudinal Temporal Information options)."""

    REMOVE = "remove"  # Basic Profile: dates removed or emptied (temporal information REMOVED)
    FULL = "full-dates"  # Retain Longitudinal Temporal Information with Full Dates (UNMODIFIED)
    MODIFIED = "modified-dates"  # ... with Modified Dates: shifted per patient (MODIFIED)


@dataclass(frozen=True)
class MaskRegion:
    """A rectangle of the image, in pixels: ``x``/``y`` of the top-left corner (0-based)."""

    x: int
    y: int
    width: int
    height: int

    def __post_init__(self) -> None:
        if min(self.x, self.y) < 0 or min(self.width, self.height) < 1:
            raise InvalidInput("pixel mask region needs x, y >= 0 and width, height >= 1")


@dataclass(frozen=True)
class PixelMaskRule:
    """Regions to blank in the pixel data of images from one device and image size.

    ``manufacturer`` and ``model`` match Manufacturer (0008,0070) and ManufacturerModelName
    (0008,1090) case-insensitively after trimming; ``"*"`` matches anything. ``rows``/``columns``
    of ``None`` match any size.
    """

    name: str
    manufacturer: str
    model: str
    rows: int | None
    columns: int | None
    regions: tuple[MaskRegion, ...]
    fill: int = 0

    def __post_init__(self) -> None:
        if not self.regions:
            raise InvalidInput(f"pixel mask rule {self.name!r} has no regions")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> PixelMaskRule:
        """One rule from a JSON / TOML table (see docs/deidentification.md for the format)."""
        try:
            regions = tuple(
                MaskRegion(int(r["x"]), int(r["y"]), int(r["width"]), int(r["height"]))
                for r in data["regions"]
            )
            rows, columns = data.get("rows"), data.get("columns")
            return cls(
                name=str(data.get("name", "")),
                manufacturer=str(data.get("manufacturer", "*")),
                model=str(data.get("model", "*")),
                rows=None if rows is None else int(rows),
                columns=None if columns is None else int(columns),
                regions=regions,
                fill=int(data.get("fill", 0)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInput(f"pixel mask rule is malformed: {exc.__class__.__name__} {exc}") from None

    def matches(self, manufacturer: str, model: str, rows: int, columns: int) -> bool:
        def same(pattern: str, value: str) -> bool:
            return pattern.strip() == "*" or pattern.strip().upper() == value.strip().upper()

        return (
            same(self.manufacturer, manufacturer)
            and same(self.model, model)
            and (self.rows is None or self.rows == rows)
            and (self.columns is None or self.columns == columns)
        )


def parse_pixel_masks(source: str | Mapping[str, Any]) -> tuple[PixelMaskRule, ...]:
    """Pixel mask rules from JSON text or an already parsed mapping ``{"rules": [...]}``."""
    if isinstance(source, str):
        try:
            data = json.loads(source)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"pixel mask configuration is not valid JSON (line {exc.lineno})") from None
    else:
        data = source
    if not isinstance(data, Mapping) or not isinstance(data.get("rules"), list):
        raise InvalidInput('pixel mask configuration needs a "rules" list')
    return tuple(PixelMaskRule.from_mapping(rule) for rule in data["rules"])


# option name -> DeidConfig field; the long names are the Table E.1-1 ``cli`` names
_OPTION_FIELDS: dict[str, str] = {
    "retain-safe-private": "retain_safe_private",
    "retain-uids": "retain_uids",
    "retain-device-identity": "retain_device_identity",
    "retain-institution-identity": "retain_institution_identity",
    "retain-patient-characteristics": "retain_patient_characteristics",
    "clean-descriptors": "clean_descriptors",
    "clean-structured-content": "clean_structured_content",
    "clean-graphics": "clean_graphics",
    "clean-pixel-data": "clean_pixel_data",
}
_DATE_OPTIONS: dict[str, DatePolicy] = {
    "retain-longitudinal-full-dates": DatePolicy.FULL,
    "full-dates": DatePolicy.FULL,
    "retain-longitudinal-modified-dates": DatePolicy.MODIFIED,
    "modified-dates": DatePolicy.MODIFIED,
}
OPTION_NAMES: tuple[str, ...] = (*_OPTION_FIELDS, *_DATE_OPTIONS)


@dataclass(frozen=True)
class DeidConfig:
    """Which options of the Basic Application Level Confidentiality Profile apply.

    The default (all off) is the Basic Profile alone: the most removal. ``record_mapping`` makes
    the engine return the re-identification map (original -> new UIDs, patient pseudonyms, date
    offsets); it is off by default, and the map is PHI: store it encrypted.
    """

    retain_safe_private: bool = False
    retain_uids: bool = False
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    retain_patient_characteristics: bool = False
    dates: DatePolicy = DatePolicy.REMOVE
    clean_descriptors: bool = False
    clean_structured_content: bool = False
    clean_graphics: bool = False
    clean_pixel_data: bool = False
    pixel_masks: tuple[PixelMaskRule, ...] = field(default=())
    record_mapping: bool = False

    @classmethod
    def from_options(
        cls,
        names: Iterable[str],
        *,
        pixel_masks: Iterable[PixelMaskRule] = (),
        record_mapping: bool = False,
    ) -> DeidConfig:
        """A config from option names (``--option`` strings); unknown names are refused."""
        flags: dict[str, bool] = {}
        dates = DatePolicy.REMOVE
        for raw in names:
            name = raw.strip().lower().replace("_", "-")
            if name in _OPTION_FIELDS:
                flags[_OPTION_FIELDS[name]] = True
            elif name in _DATE_OPTIONS:
                wanted = _DATE_OPTIONS[name]
                if dates is not DatePolicy.REMOVE and dates is not wanted:
                    raise InvalidInput("full-dates and modified-dates exclude each other: choose one")
                dates = wanted
            else:
                raise InvalidInput(
                    f"unknown de-identification option {raw!r}",
                    hint="Known options: " + ", ".join(OPTION_NAMES),
                )
        return cls(dates=dates, pixel_masks=tuple(pixel_masks), record_mapping=record_mapping, **flags)

    def option_names(self) -> tuple[str, ...]:
        """The option names this config has on (the inverse of :meth:`from_options`)."""
        on = [name for name, attr in _OPTION_FIELDS.items() if getattr(self, attr)]
        if self.dates is not DatePolicy.REMOVE:
            on.append(self.dates.value)
        return tuple(on)

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.type == "bool" and not isinstance(getattr(self, f.name), bool):
                raise InvalidInput(f"de-identification option {f.name} must be true or false")
        if not isinstance(self.dates, DatePolicy):
            raise InvalidInput("dates must be a DatePolicy")
