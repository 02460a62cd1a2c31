"""The monitor's access event (one line of EVENTS.jsonl) and its strict reader.

One event says who (``user``, ``role``, ``dept``) did what (``action``) to which patient and study,
from where (``src_ip``, ``user_agent``), when (``ts``, UTC) and whether it worked (``outcome``).
Events are read strictly: a malformed line, an unknown action or an event earlier than the one
before it raises an :class:`~medvault.errors.EventInvalid` naming the line. Messages name fields,
never their values (a patient id may be PHI in a hospital's own export).

:class:`EventBatch` is the same events column by column: the detector scores a batch at a time
(numpy), and one event is a batch of one, so online and offline scoring are one code path.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from medvault.errors import EventInvalid, EventOutOfOrder, UnknownAction

__all__ = ["Action", "EventBatch", "MonitorEvent", "iter_events", "parse_event_line", "read_batches"]

_MAX_TEXT = 512
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Action(enum.StrEnum):
    """The monitor's action vocabulary (issue #13), in this fixed order (codes are positions)."""

    LOGIN = "login"
    LOGOUT = "logout"
    QUERY = "query"
    VIEW = "view"
    RETRIEVE = "retrieve"
    DOWNLOAD = "download"
    EXPORT = "export"
    STORE = "store"
    REPORT = "report"
    QUERY_DEID = "query_deid"
    RETRIEVE_DEID = "retrieve_deid"
    ADMIN_CONFIG = "admin_config"
    USER_MGMT = "user_mgmt"
    AUDIT_QUERY = "audit_query"


ACTIONS: tuple[Action, ...] = tuple(Action)
ACTION_CODE: dict[str, int] = {a.value: i for i, a in enumerate(ACTIONS)}

_REQUIRED = ("event_id", "ts", "user", "action", "outcome")
_OPTIONAL_TEXT = ("role", "dept", "patient_id", "study_uid", "src_ip", "user_agent")


def _ts_us(ts: datetime) -> int:
    delta = ts - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitorEvent:
    """One access event. ``ts`` is timezone-aware (kept in UTC); optional text fields are ``None``
    when unknown (ledger events have no user agent or department, for instance). ``break_glass``
    is an optional extension field: the access was made under break-glass (emergency) rights."""

    event_id: str
    ts: datetime
    user: str
    action: Action
    outcome: str = "success"
    role: str | None = None
    dept: str | None = None
    patient_id: str | None = None
    study_uid: str | None = None
    bytes: int = 0
    src_ip: str | None = None
    user_agent: str | None = None
    break_glass: bool = False

    def __post_init__(self) -> None:
        for name in ("event_id", "user"):
            _check_text(getattr(self, name), name, None)
        for name in _OPTIONAL_TEXT:
            value = getattr(self, name)
            if value is not None:
                _check_text(value, name, None)
        if self.ts.tzinfo is None or self.ts.utcoffset() is None:
            raise EventInvalid("field 'ts' must carry a time zone (RFC 3339, UTC)")
        object.__setattr__(self, "ts", self.ts.astimezone(UTC))
        if self.action not in ACTION_CODE:
            raise UnknownAction(f"field 'action' is not one of {', '.join(ACTION_CODE)}")
        object.__setattr__(self, "action", Action(self.action))
        if self.outcome not in ("success", "failure"):
            raise EventInvalid('field \'outcome\' must be "success" or "failure"')
        if isinstance(self.bytes, bool) or not isinstance(self.bytes, int) or self.bytes < 0:
            raise EventInvalid("field 'bytes' must be a non-negative integer")
        if not isinstance(self.break_glass, bool):
            raise EventInvalid("field 'break_glass' must be true or false")

    @property
    def ts_us(self) -> int:
        """Microseconds since 1970-01-01 UTC (exact integer arithmetic, no float rounding)."""
        return _ts_us(self.ts)

    def to_json(self) -> dict[str, Any]:
        """The EVENTS.jsonl object (``break_glass`` only when true)."""
        out: dict[str, Any] = {
            "event_id": self.event_id,
            "ts": self.ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "user": self.user,
            "role": self.role,
            "dept": self.dept,
            "action": self.action.value,
            "patient_id": self.patient_id,
            "study_uid": self.study_uid,
            "bytes": self.bytes,
            "src_ip": self.src_ip,
            "user_agent": self.user_agent,
            "outcome": self.outcome,
        }
        if self.break_glass:
            out["break_glass"] = True
        return out


def _check_text(value: object, name: str, line: int | None) -> None:
    if not isinstance(value, str) or not value or len(value) > _MAX_TEXT:
        raise EventInvalid(
            f"field {name!r} must be a non-empty string of at most {_MAX_TEXT} characters", line=line
        )


def _parse_ts(value: object, line: int | None) -> datetime:
    if not isinstance(value, str):
        raise EventInvalid("field 'ts' must be an RFC 3339 string", line=line)
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise EventInvalid("field 'ts' is not an RFC 3339 time", line=line) from None
    if ts.tzinfo is None or ts.utcoffset() is None or "T" not in value:
        raise EventInvalid("field 'ts' must be RFC 3339 with a time zone (e.g. ...Z)", line=line)
    return ts.astimezone(UTC)


def _text_field(raw: dict[str, Any], name: str, line: int | None) -> str | None:
    value = raw.get(name)
    if value is not None:
        _check_text(value, name, line)
    return value


def _fields(text: str | bytes, line: int | None) -> tuple[Any, ...]:
    """The validated fields of one line, in EventBatch column order (one checker for both paths)."""
    try:
        raw = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        raise EventInvalid("not a JSON object", line=line) from None
    if not isinstance(raw, dict):
        raise EventInvalid("not a JSON object", line=line)
    for name in _REQUIRED:
        if raw.get(name) is None:
            raise EventInvalid(f"missing field {name!r}", line=line)
    code = ACTION_CODE.get(raw["action"]) if isinstance(raw["action"], str) else None
    if code is None:
        raise UnknownAction("unknown action", line=line, hint=f"Known actions: {', '.join(ACTION_CODE)}.")
    outcome = raw["outcome"]
    if outcome not in ("success", "failure"):
        raise EventInvalid('field \'outcome\' must be "success" or "failure"', line=line)
    size = raw.get("bytes")
    if size is None:
        size = 0
    elif isinstance(size, bool) or not isinstance(size, int) or not 0 <= size < 2**62:
        raise EventInvalid("field 'bytes' must be a non-negative integer", line=line)
    glass = raw.get("break_glass", False)
    if not isinstance(glass, bool):
        raise EventInvalid("field 'break_glass' must be true or false", line=line)
    event_id, user = raw["event_id"], raw["user"]
    _check_text(event_id, "event_id", line)
    _check_text(user, "user", line)
    return (
        event_id,
        _ts_us(_parse_ts(raw["ts"], line)),
        user,
        _text_field(raw, "role", line),
        _text_field(raw, "dept", line),
        code,
        _text_field(raw, "patient_id", line),
        _text_field(raw, "study_uid", line),
        size,
        _text_field(raw, "src_ip", line),
        _text_field(raw, "user_agent", line),
        outcome == "failure",
        glass,
    )


def parse_event_line(text: str | bytes, *, line: int | None = None) -> MonitorEvent:
    """One EVENTS.jsonl line into a :class:`MonitorEvent`. Required: event_id, ts, user, action,
    outcome; the other fields may be null or absent; unknown keys are ignored (a site's export may
    carry more columns). Raises EventInvalid/UnknownAction naming ``line``."""
    f = _fields(text, line)
    return MonitorEvent(
        event_id=f[0],
        ts=_EPOCH + timedelta(microseconds=f[1]),
        user=f[2],
        role=f[3],
        dept=f[4],
        action=ACTIONS[f[5]],
        patient_id=f[6],
        study_uid=f[7],
        bytes=f[8],
        src_ip=f[9],
        user_agent=f[10],
        outcome="failure" if f[11] else "success",
        break_glass=f[12],
    )


def read_batches(
    lines: Iterable[str | bytes], *, batch_size: int = 32_768, first_line: int = 1
) -> Iterator[EventBatch]:
    """JSONL lines straight into :class:`EventBatch` columns (no per-event objects: the fast path
    of file replay), with the same checks as :func:`iter_events`, naming the line.

    Each chunk is first read column-wise (one ``json.loads`` for the chunk, checks per column);
    whatever that fast reader does not accept outright, the chunk is read again line by line by
    :func:`_fields`, which either accepts it or raises the precise error. So the fast reader only
    ever takes a subset of what the line reader takes, with the same values."""
    last = -1
    chunk: list[tuple[int, str | bytes]] = []

    def flush() -> EventBatch:
        nonlocal last
        fast = _fast_chunk([t for _, t in chunk], last)
        if fast is None:
            cols: list[list[Any]] = [[] for _ in range(13)]
            for n, text in chunk:
                f = _fields(text, n)
                if f[1] < last:
                    raise EventOutOfOrder(
                        "event is earlier than the event before it", line=n, hint="Sort the log by 'ts'."
                    )
                last = f[1]
                for c, v in zip(cols, f, strict=True):
                    c.append(v)
            return _batch(cols)
        last = int(fast.ts_us[-1])
        return fast

    for n, text in enumerate(lines, start=first_line):
        if not text.strip():
            continue
        chunk.append((n, text))
        if len(chunk) >= batch_size:
            yield flush()
            chunk = []
    if chunk:
        yield flush()


_TS_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?Z\Z")


def _ok_text(col: list[Any]) -> bool:
    return all(type(x) is str and 0 < len(x) <= _MAX_TEXT for x in col)


def _ok_opt_text(col: list[Any]) -> bool:
    return all(x is None or (type(x) is str and 0 < len(x) <= _MAX_TEXT) for x in col)


def _fast_chunk(texts: list[str | bytes], last: int) -> EventBatch | None:
    """The column-wise reader; None means "read these lines one by one"."""
    try:
        joined = b",".join(t if isinstance(t, bytes) else t.encode("utf-8") for t in texts)
        raws = json.loads(b"[" + joined + b"]")
    except (ValueError, UnicodeError):
        return None
    if len(raws) != len(texts) or not all(type(r) is dict for r in raws):
        return None
    cols = {k: [r.get(k) for r in raws] for k in (*_REQUIRED, *_OPTIONAL_TEXT, "bytes")}
    glass = [r.get("break_glass", False) for r in raws]
    try:
        codes = [ACTION_CODE.get(a) for a in cols["action"]]
        outcomes = set(cols["outcome"])
    except TypeError:  # unhashable JSON values
        return None
    ts = cols["ts"]
    sizes = [0 if b is None else b for b in cols["bytes"]]
    if (
        None in codes
        or not outcomes <= {"success", "failure"}
        or not _ok_text(cols["event_id"])
        or not _ok_text(cols["user"])
        or not all(_ok_opt_text(cols[k]) for k in _OPTIONAL_TEXT)
        or not all(type(b) is int and 0 <= b < 2**62 for b in sizes)
        or not all(g is True or g is False for g in glass)
        or not all(type(t) is str and _TS_RE.match(t) for t in ts)
    ):
        return None
    try:
        ts_us = np.array([t[:-1] for t in ts], dtype="datetime64[us]").astype(np.int64)
    except ValueError:
        return None
    if ts_us[0] < last or bool(np.any(ts_us[1:] < ts_us[:-1])):
        return None
    return EventBatch(
        event_id=cols["event_id"],
        ts_us=ts_us,
        user=cols["user"],
        role=cols["role"],
        dept=cols["dept"],
        action=np.array(codes, dtype=np.int8),
        patient_id=cols["patient_id"],
        study_uid=cols["study_uid"],
        bytes=np.array(sizes, dtype=np.int64),
        src_ip=cols["src_ip"],
        user_agent=cols["user_agent"],
        failure=np.array([o == "failure" for o in cols["outcome"]], dtype=np.bool_),
        break_glass=np.array(glass, dtype=np.bool_),
    )


def _batch(cols: list[list[Any]]) -> EventBatch:
    return EventBatch(
        event_id=cols[0],
        ts_us=np.array(cols[1], dtype=np.int64),
        user=cols[2],
        role=cols[3],
        dept=cols[4],
        action=np.array(cols[5], dtype=np.int8),
        patient_id=cols[6],
        study_uid=cols[7],
        bytes=np.array(cols[8], dtype=np.int64),
        src_ip=cols[9],
        user_agent=cols[10],
        failure=np.array(cols[11], dtype=np.bool_),
        break_glass=np.array(cols[12], dtype=np.bool_),
    )


def iter_events(lines: Iterable[str | bytes], *, first_line: int = 1) -> Iterator[MonitorEvent]:
    """Parse JSONL lines in order; blank lines are skipped. Raises EventOutOfOrder (naming the
    line) when an event is earlier than the one before it: the detector is causal, so the log must
    be in time order (equal times are fine and keep their order)."""
    last = -1
    for n, text in enumerate(lines, start=first_line):
        if not text.strip():
            continue
        event = parse_event_line(text, line=n)
        t = event.ts_us
        if t < last:
            raise EventOutOfOrder(
                "event is earlier than the event before it", line=n, hint="Sort the log by 'ts'."
            )
        last = t
        yield event


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Events column by column (same order). Text columns are lists (``None`` = unknown)."""

    event_id: list[str]
    ts_us: npt.NDArray[np.int64]
    user: list[str]
    role: list[str | None]
    dept: list[str | None]
    action: npt.NDArray[np.int8]
    patient_id: list[str | None]
    study_uid: list[str | None]
    bytes: npt.NDArray[np.int64]
    src_ip: list[str | None]
    user_agent: list[str | None]
    failure: npt.NDArray[np.bool_]
    break_glass: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.event_id)

    @classmethod
    def of(cls, events: Sequence[MonitorEvent]) -> EventBatch:
        return cls(
            event_id=[e.event_id for e in events],
            ts_us=np.fromiter((e.ts_us for e in events), dtype=np.int64, count=len(events)),
            user=[e.user for e in events],
            role=[e.role for e in events],
            dept=[e.dept for e in events],
            action=np.fromiter((ACTION_CODE[e.action] for e in events), dtype=np.int8, count=len(events)),
            patient_id=[e.patient_id for e in events],
            study_uid=[e.study_uid for e in events],
            bytes=np.fromiter((e.bytes for e in events), dtype=np.int64, count=len(events)),
            src_ip=[e.src_ip for e in events],
            user_agent=[e.user_agent for e in events],
            failure=np.fromiter((e.outcome == "failure" for e in events), dtype=np.bool_, count=len(events)),
            break_glass=np.fromiter((e.break_glass for e in events), dtype=np.bool_, count=len(events)),
        )

    def slice(self, start: int, stop: int) -> EventBatch:
        return EventBatch(
            event_id=self.event_id[start:stop],
            ts_us=self.ts_us[start:stop],
            user=self.user[start:stop],
            role=self.role[start:stop],
            dept=self.dept[start:stop],
            action=self.action[start:stop],
            patient_id=self.patient_id[start:stop],
            study_uid=self.study_uid[start:stop],
            bytes=self.bytes[start:stop],
            src_ip=self.src_ip[start:stop],
            user_agent=self.user_agent[start:stop],
            failure=self.failure[start:stop],
            break_glass=self.break_glass[start:stop],
        )
