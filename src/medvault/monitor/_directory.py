"""The directory: what the site tells the monitor about its users and patients (DIRECTORY.json).

Every key is optional except the shapes of what is given; extra keys are ignored (a site exports
what its HR and ADT systems have). A bad value raises DirectoryInvalid naming the field path
(``users[3].shift``), never the value. Patients are keyed as the events key them (in medvault's
own ledger: the keyed pseudonym), so the directory holds no more PHI than the events do.

Without a directory (``Directory.empty()``), detection runs from behaviour alone: no shifts, no
care teams, no VIP flags; the learned baselines and the observed relations still work.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from medvault.errors import DirectoryInvalid

__all__ = ["Directory", "PatientInfo", "UserInfo", "parse_directory"]


@dataclass(frozen=True, slots=True, kw_only=True)
class UserInfo:
    user: str
    role: str | None = None
    dept: str | None = None
    team: str | None = None
    shift: str | None = None
    home_ip: str | None = None
    remote: bool = False
    irb_identified: bool = False  # a researcher approved (IRB) to see identified data


@dataclass(frozen=True, slots=True, kw_only=True)
class PatientInfo:
    patient_id: str
    dept: str | None = None
    team: str | None = None
    vip: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Directory:
    epoch: datetime | None = None  # as-of time of the export (informational)
    departments: tuple[str, ...] = ()
    care_teams: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    shift_hours: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    users: Mapping[str, UserInfo] = field(default_factory=dict)
    patients: Mapping[str, PatientInfo] = field(default_factory=dict)
    utc_offset_minutes: int = 0  # local time = UTC + offset (shifts are in local hours)

    @classmethod
    def empty(cls) -> Directory:
        return cls()

    def in_shift(self, shift: str | None, hour: int) -> bool | None:
        """Whether local ``hour`` lies in the named shift; None when the shift is unknown."""
        if shift is None or shift not in self.shift_hours:
            return None
        start, end = self.shift_hours[shift]
        if start == end:
            return True
        return start <= hour < end if start < end else (hour >= start or hour < end)


def _fail(path: str, what: str) -> DirectoryInvalid:
    return DirectoryInvalid(f"directory field {path!r}: {what}")


def _opt_text(obj: Mapping[str, Any], key: str, path: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 512:
        raise _fail(f"{path}.{key}", "must be a non-empty string (at most 512 characters) or null")
    return value


def _opt_bool(obj: Mapping[str, Any], key: str, path: str) -> bool:
    value = obj.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _fail(f"{path}.{key}", "must be true or false")
    return value


def _hour(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 24:
        raise _fail(path, "must be an hour 0..24")
    return value % 24


def _list(raw: Mapping[str, Any], key: str) -> list[Any]:
    value = raw.get(key, [])
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(key, "must be a list")
    return value


def parse_directory(raw: object) -> Directory:
    """Validate a parsed DIRECTORY.json object into a :class:`Directory`."""
    if not isinstance(raw, Mapping):
        raise DirectoryInvalid("the directory must be a JSON object")
    epoch: datetime | None = None
    if raw.get("epoch") is not None:
        value = raw["epoch"]
        try:
            if isinstance(value, bool):
                raise TypeError
            if isinstance(value, int | float):
                epoch = datetime.fromtimestamp(value, tz=UTC)
            elif isinstance(value, str):
                epoch = datetime.fromisoformat(value)
                if epoch.tzinfo is None:
                    raise ValueError
                epoch = epoch.astimezone(UTC)
            else:
                raise TypeError
        except (TypeError, ValueError, OverflowError, OSError):
            raise _fail("epoch", "must be an RFC 3339 time with a zone or seconds since 1970") from None
    departments = []
    for i, d in enumerate(_list(raw, "departments")):
        if not isinstance(d, str) or not d:
            raise _fail(f"departments[{i}]", "must be a non-empty string")
        departments.append(d)
    care_teams: dict[str, tuple[str, ...]] = {}
    teams_raw = raw.get("care_teams") or {}
    if not isinstance(teams_raw, Mapping):
        raise _fail("care_teams", "must be an object {dept: [team, ...]}")
    for dept, teams in teams_raw.items():
        if not isinstance(teams, list) or not all(isinstance(t, str) and t for t in teams):
            raise _fail(f"care_teams.{dept}", "must be a list of team names")
        care_teams[str(dept)] = tuple(teams)
    shifts: dict[str, tuple[int, int]] = {}
    shifts_raw = raw.get("shift_hours") or {}
    if not isinstance(shifts_raw, Mapping):
        raise _fail("shift_hours", "must be an object {shift: [start_hour, end_hour]}")
    for name, span in shifts_raw.items():
        if not isinstance(span, list) or len(span) != 2:
            raise _fail(f"shift_hours.{name}", "must be [start_hour, end_hour]")
        shifts[str(name)] = (
            _hour(span[0], f"shift_hours.{name}[0]"),
            _hour(span[1], f"shift_hours.{name}[1]"),
        )
    offset = raw.get("utc_offset_minutes", 0)
    if isinstance(offset, bool) or not isinstance(offset, int) or not -900 <= offset <= 900:
        raise _fail("utc_offset_minutes", "must be an integer number of minutes, -900..900")
    users: dict[str, UserInfo] = {}
    for i, u in enumerate(_list(raw, "users")):
        path = f"users[{i}]"
        if not isinstance(u, Mapping):
            raise _fail(path, "must be an object")
        name = _opt_text(u, "user", path)
        if name is None:
            raise _fail(f"{path}.user", "is required")
        if name in users:
            raise _fail(f"{path}.user", "appears twice")
        shift = _opt_text(u, "shift", path)
        if shift is not None and shifts and shift not in shifts:
            raise _fail(f"{path}.shift", "names a shift missing from shift_hours")
        users[name] = UserInfo(
            user=name,
            role=_opt_text(u, "role", path),
            dept=_opt_text(u, "dept", path),
            team=_opt_text(u, "team", path),
            shift=shift,
            home_ip=_opt_text(u, "home_ip", path),
            remote=_opt_bool(u, "remote", path),
            irb_identified=_opt_bool(u, "irb_identified", path),
        )
    patients: dict[str, PatientInfo] = {}
    for i, p in enumerate(_list(raw, "patients")):
        path = f"patients[{i}]"
        if not isinstance(p, Mapping):
            raise _fail(path, "must be an object")
        pid = _opt_text(p, "patient_id", path)
        if pid is None:
            raise _fail(f"{path}.patient_id", "is required")
        if pid in patients:
            raise _fail(f"{path}.patient_id", "appears twice")
        patients[pid] = PatientInfo(
            patient_id=pid,
            dept=_opt_text(p, "dept", path),
            team=_opt_text(p, "team", path),
            vip=_opt_bool(p, "vip", path),
        )
    return Directory(
        epoch=epoch,
        departments=tuple(departments),
        care_teams=care_teams,
        shift_hours=shifts,
        users=users,
        patients=patients,
        utc_offset_minutes=offset,
    )
