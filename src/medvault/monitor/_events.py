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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
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
    of file replay), with the same checks as :func:`iter_events`, naming the line."""
    last = -1
    chunk: list[str | bytes] = []
    start = first_line
    for n, text in enumerate(lines, start=first_line):
        if not chunk:
            start = n
        chunk.append(text)
        if len(chunk) >= batch_size:
            batch = read_chunk(chunk, first_line=start, last_us=last)
            if len(batch):
                last = int(batch.ts_us[-1])
                yield batch
            chunk = []
    if chunk:
        batch = read_chunk(chunk, first_line=start, last_us=last)
        if len(batch):
            yield batch


def read_chunk(
    lines: Sequence[str | bytes], *, first_line: int, last_us: int = -1, utf8: bool | None = None
) -> EventBatch:
    """Consecutive JSONL lines (``first_line`` is the number of the first; blank lines are
    skipped) as one :class:`EventBatch`, every event at or after ``last_us``.

    The chunk is first read by :func:`_fast_chunk` (msgspec decodes and type-checks each line in
    C, columns are checked as arrays); whatever that reader does not accept outright, the chunk
    is read again line by line by :func:`_fields`, which either accepts it or raises the precise
    error naming the line. So the fast reader only ever takes a subset of what the line reader
    takes, with the same values (tests/unit/monitor/test_events.py checks both on arbitrary
    lines). ``utf8`` says the caller already knows whether the bytes are valid UTF-8."""
    fast = _fast_chunk(lines, last_us, utf8)
    if fast is None and not all(t.strip() for t in lines):
        fast = _fast_chunk([t for t in lines if t.strip()], last_us, utf8)
    if fast is not None:
        return fast
    cols: list[list[Any]] = [[] for _ in range(13)]
    last = last_us
    for n, text in enumerate(lines, start=first_line):
        if not text.strip():
            continue
        f = _fields(text, n)
        if f[1] < last:
            raise EventOutOfOrder(
                "event is earlier than the event before it", line=n, hint="Sort the log by 'ts'."
            )
        last = f[1]
        for c, v in zip(cols, f, strict=True):
            c.append(v)
    return _batch(cols)


_Text = Annotated[str, msgspec.Meta(min_length=1, max_length=_MAX_TEXT)]
# the names of ACTIONS, spelled out for the type checker (a test pins them to ACTIONS)
_ActionName = Literal[
    "login",
    "logout",
    "query",
    "view",
    "retrieve",
    "download",
    "export",
    "store",
    "report",
    "query_deid",
    "retrieve_deid",
    "admin_config",
    "user_mgmt",
    "audit_query",
]


class _Row(msgspec.Struct, gc=False):
    """One line as the fast reader takes it: types and text lengths are checked by msgspec in C
    (``ts``, ``action`` and ``outcome`` are checked column-wise after decoding)."""

    event_id: _Text
    ts: str
    user: _Text
    action: _ActionName
    outcome: Literal["success", "failure"]
    role: _Text | None = None
    dept: _Text | None = None
    patient_id: _Text | None = None
    study_uid: _Text | None = None
    size: Annotated[int, msgspec.Meta(ge=0, lt=2**62)] | None = msgspec.field(default=None, name="bytes")
    src_ip: _Text | None = None
    user_agent: _Text | None = None
    break_glass: bool = False


_DECODE = msgspec.json.Decoder(_Row).decode
_OUTCOMES = frozenset(("success", "failure"))


def _fast_chunk(lines: Sequence[str | bytes], last: int, utf8: bool | None) -> EventBatch | None:
    """The fast reader; None means "read these lines one by one"."""
    if not lines:
        return None
    try:
        if utf8 is None:
            # msgspec does not check the UTF-8 of keys it skips; json.loads does
            blob = b"".join(t if isinstance(t, bytes) else t.encode("utf-8") for t in lines)
            utf8 = blob.isascii() or _is_utf8(blob)
        if not utf8:
            return None
        rows = list(map(_DECODE, lines))
    except (msgspec.DecodeError, UnicodeError):
        return None
    n = len(rows)
    try:
        codes = np.fromiter(map(ACTION_CODE.get, [r.action for r in rows]), dtype=np.int8, count=n)
    except TypeError:  # not an action (cannot happen past the Literal type; checked anyway)
        return None
    outcome = [r.outcome for r in rows]
    if not _OUTCOMES.issuperset(outcome):
        return None
    ts_us = _ts_column([r.ts for r in rows])
    if ts_us is None or ts_us[0] < last or bool(np.any(ts_us[1:] < ts_us[:-1])):
        return None
    sizes = [r.size for r in rows]
    if None in sizes:
        sizes = [0 if b is None else b for b in sizes]
    return EventBatch(
        event_id=[r.event_id for r in rows],
        ts_us=ts_us,
        user=[r.user for r in rows],
        role=[r.role for r in rows],
        dept=[r.dept for r in rows],
        action=codes,
        patient_id=[r.patient_id for r in rows],
        study_uid=[r.study_uid for r in rows],
        bytes=np.array(sizes, dtype=np.int64),
        src_ip=[r.src_ip for r in rows],
        user_agent=[r.user_agent for r in rows],
        failure=np.fromiter(map("failure".__eq__, outcome), dtype=np.bool_, count=n),
        break_glass=np.array([r.break_glass for r in rows], dtype=np.bool_),
    )


def _is_utf8(blob: bytes) -> bool:
    try:
        blob.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# positions in YYYY-MM-DDTHH:MM:SS[.f{1,6}]Z, the one form of ``ts`` the fast reader takes
_TS_DIGITS = np.array([0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18])
_TS_SEPS = np.array([4, 7, 10, 13, 16]), np.frombuffer(b"--T::", dtype=np.uint8)
_CUM_DAYS = np.array([0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334, 365], dtype=np.int64)


def _ts_column(ts: list[str]) -> npt.NDArray[np.int64] | None:
    """Microseconds since the epoch for UTC stamps ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z`` (1 to 6
    fraction digits), as array arithmetic; None when any stamp has another form (an offset,
    say), which the line reader then parses. Exact integers, the same as :func:`_ts_us`."""
    joined = "".join(ts)
    if not joined.isascii():
        return None
    lengths = np.fromiter(map(len, ts), dtype=np.int64, count=len(ts))
    out = np.empty(len(ts), dtype=np.int64)
    raw = np.frombuffer(joined.encode("ascii"), dtype=np.uint8)
    one_width = int(lengths.min()) == int(lengths.max())
    starts = None if one_width else np.cumsum(lengths) - lengths
    for width in np.unique(lengths).tolist():
        if width != 20 and not 22 <= width <= 27:
            return None
        if starts is None:  # every stamp has the same form (most logs): a plain reshape
            rows: npt.NDArray[np.intp] | slice = slice(None)
            c = raw.reshape(-1, width)
        else:
            rows = np.flatnonzero(lengths == width)
            c = raw[starts[rows, None] + np.arange(width)]  # (k, width) characters
        if width > 20:
            digits = np.concatenate([_TS_DIGITS, np.arange(20, width - 1)])
            frac = c[:, 20 : width - 1].astype(np.int64) - 48
        else:
            digits = _TS_DIGITS
        d8 = c[:, digits] - np.uint8(48)  # a non-digit wraps around to > 9
        d = d8.astype(np.int64)
        if (
            bool(np.any(d8 > 9))
            or bool(np.any(c[:, _TS_SEPS[0]] != _TS_SEPS[1]))
            or bool(np.any(c[:, width - 1] != ord("Z")))
            or (width > 20 and bool(np.any(c[:, 19] != ord("."))))
        ):
            return None
        year = d[:, 0] * 1000 + d[:, 1] * 100 + d[:, 2] * 10 + d[:, 3]
        month, day = d[:, 4] * 10 + d[:, 5], d[:, 6] * 10 + d[:, 7]
        hour, minute, second = d[:, 8] * 10 + d[:, 9], d[:, 10] * 10 + d[:, 11], d[:, 12] * 10 + d[:, 13]
        leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
        if (
            bool(np.any(year < 1))
            or bool(np.any((month < 1) | (month > 12)))
            or bool(np.any((hour > 23) | (minute > 59) | (second > 59)))
        ):
            return None
        month_days = _CUM_DAYS[month] - _CUM_DAYS[month - 1] + ((month == 2) & leap)
        if bool(np.any((day < 1) | (day > month_days))):
            return None
        y = year - 1  # days before 1 January of ``year``, proleptic Gregorian, from 0001-01-01
        days = y * 365 + y // 4 - y // 100 + y // 400 + _CUM_DAYS[month - 1] + ((month > 2) & leap) + day - 1
        micros = np.zeros(len(c), dtype=np.int64)
        if width > 20:
            for k in range(width - 21):
                micros += frac[:, k] * 10 ** (5 - k)
        out[rows] = (
            (((days - _DAYS_TO_EPOCH) * 24 + hour) * 60 + minute) * 60_000_000 + second * 1_000_000 + micros
        )
    return out


_DAYS_TO_EPOCH = 719_162  # days from 0001-01-01 to 1970-01-01


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
