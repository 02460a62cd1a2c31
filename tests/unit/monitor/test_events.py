"""The strict EVENTS.jsonl reader: every bad line is named; both readers agree."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import get_args

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from medvault.errors import EventInvalid, EventOutOfOrder, UnknownAction
from medvault.monitor import Action, EventBatch, MonitorEvent, iter_events, parse_event_line, read_batches
from medvault.monitor._events import (
    _MAX_TEXT,
    ACTION_CODE,
    _ActionName,
    _fast_chunk,
    _parse_ts,
    _ts_column,
    _ts_us,
    read_chunk,
)

from .conftest import make_log

LINE = {
    "event_id": "e1",
    "ts": "2026-03-02T08:15:00Z",
    "user": "ana",
    "role": "nurse",
    "dept": "icu",
    "action": "view",
    "patient_id": "abc",
    "study_uid": "1.2.3",
    "bytes": 10,
    "src_ip": "10.0.0.1",
    "user_agent": "Chrome/120",
    "outcome": "success",
}


def test_parse_valid_line_and_extra_keys_ignored() -> None:
    e = parse_event_line(json.dumps({**LINE, "ward": "5B"}))
    assert e.action is Action.VIEW and e.user == "ana" and e.bytes == 10
    assert e.ts == datetime(2026, 3, 2, 8, 15, tzinfo=UTC)


def test_offsets_are_converted_to_utc() -> None:
    e = parse_event_line(json.dumps({**LINE, "ts": "2026-03-02T09:15:00+01:00"}))
    assert e.ts == datetime(2026, 3, 2, 8, 15, tzinfo=UTC)


@pytest.mark.parametrize(
    ("change", "error", "words"),
    [
        ({"action": "peek"}, UnknownAction, "unknown action"),
        ({"ts": "2026-03-02 08:15:00"}, EventInvalid, "'ts'"),
        ({"ts": "2026-03-02T08:15:00"}, EventInvalid, "'ts'"),
        ({"outcome": "ok"}, EventInvalid, "'outcome'"),
        ({"bytes": -1}, EventInvalid, "'bytes'"),
        ({"bytes": True}, EventInvalid, "'bytes'"),
        ({"user": ""}, EventInvalid, "'user'"),
        ({"event_id": None}, EventInvalid, "'event_id'"),
        ({"role": 5}, EventInvalid, "'role'"),
        ({"break_glass": "yes"}, EventInvalid, "'break_glass'"),
    ],
)
def test_bad_fields_name_line_and_field(
    change: dict[str, object], error: type[Exception], words: str
) -> None:
    lines = [json.dumps(LINE), json.dumps({**LINE, **change})]
    with pytest.raises(error) as info:
        list(iter_events(lines))
    assert "line 2" in str(info.value) and words in str(info.value)
    assert getattr(info.value, "line", None) == 2
    with pytest.raises(error, match="line 2"):
        list(read_batches(lines))


def test_malformed_json_and_non_objects() -> None:
    for bad in ("{not json", "[1, 2]", '"text"'):
        with pytest.raises(EventInvalid, match="line 3: not a JSON object"):
            list(iter_events([json.dumps(LINE), "", bad]))


def test_out_of_order_names_the_line_and_equal_times_are_fine() -> None:
    later = json.dumps({**LINE, "event_id": "e2", "ts": "2026-03-02T09:00:00Z"})
    same = json.dumps({**LINE, "event_id": "e3", "ts": "2026-03-02T09:00:00Z"})
    assert len(list(iter_events([json.dumps(LINE), later, same]))) == 3
    with pytest.raises(EventOutOfOrder, match="line 2"):
        list(iter_events([later, json.dumps(LINE)]))
    with pytest.raises(EventOutOfOrder, match="line 2"):
        list(read_batches([later, json.dumps(LINE)]))


def test_messages_carry_no_field_values() -> None:
    secret = "DOE^JANE-MRN-123"
    with pytest.raises(EventInvalid) as info:
        parse_event_line(json.dumps({**LINE, "patient_id": secret, "outcome": secret}))
    assert secret not in info.value.diagnostics()


def _same(a: EventBatch, b: EventBatch) -> None:
    for name in EventBatch.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray):
            assert np.array_equal(x, y), name
        else:
            assert list(x) == list(y), name


def test_columnar_reader_equals_object_reader() -> None:
    events = make_log(seed=3, days=2)
    lines = [json.dumps(e.to_json()) for e in events]
    batches = list(read_batches(lines, batch_size=17))
    assert sum(len(b) for b in batches) == len(events)
    whole = next(read_batches(lines, batch_size=10**6))
    _same(whole, EventBatch.of(list(iter_events(lines))))
    _same(whole.slice(17, 34), batches[1])


text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=20)


@given(
    event_id=text,
    user=text,
    action=st.sampled_from(list(Action)),
    micros=st.integers(0, 10**15),
    patient=st.none() | text,
    size=st.integers(0, 2**40),
    failure=st.booleans(),
    glass=st.booleans(),
)
def test_json_round_trip(
    event_id: str,
    user: str,
    action: Action,
    micros: int,
    patient: str | None,
    size: int,
    failure: bool,
    glass: bool,
) -> None:
    e = MonitorEvent(
        event_id=event_id,
        ts=datetime(2000, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros),
        user=user,
        action=action,
        patient_id=patient,
        bytes=size,
        outcome="failure" if failure else "success",
        break_glass=glass,
    )
    assert parse_event_line(json.dumps(e.to_json())) == e


ACTION_NAMES = list(ACTION_CODE)
value = st.none() | st.booleans() | st.integers(-5, 2**63) | text | st.lists(st.integers(), max_size=2)
stamp = st.sampled_from(
    [
        "2026-03-02T08:15:00Z",
        "2026-03-02T08:15:00.5Z",
        "2026-03-02T09:00:00+01:00",
        "2026-02-30T08:00:00Z",
        "2026-03-02T08:15:00.1234567Z",
        "2026-03-02 08:15:00Z",
        "2026-03-02T08:15:00",
        "2026-03-02T08Z",
        "x",
    ]
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {"event_id": text, "ts": stamp, "user": text, "action": st.sampled_from([*ACTION_NAMES, "peek"])},
            optional=dict.fromkeys(("role", "dept", "patient_id", "bytes", "outcome", "break_glass"), value),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_fast_and_line_readers_agree(rows: list[dict[str, object]]) -> None:
    for r in rows:
        r.setdefault("outcome", "success")
    lines = [json.dumps(r) for r in rows]
    try:
        expected = EventBatch.of(list(iter_events(lines)))
    except EventInvalid as exc:
        with pytest.raises(type(exc)) as info:
            list(read_batches(lines))
        assert info.value.line == exc.line and info.value.message == exc.message
        return
    got = list(read_batches(lines))
    assert len(got) == 1
    _same(got[0], expected)


# -- the fast reader (msgspec) against the line reader ----------------------------------------------


def _reference(lines: list[bytes]) -> EventBatch | EventInvalid:
    """The line reader alone: what every line means, or the error naming the bad one."""
    try:
        return EventBatch.of(list(iter_events(lines)))
    except EventInvalid as exc:
        return exc


def test_action_names_are_the_actions() -> None:
    assert get_args(_ActionName) == tuple(ACTION_CODE)


def test_fast_reader_takes_an_ordinary_log() -> None:
    # the speed depends on this path being taken: a reader that always fell back would be correct
    lines = [json.dumps(e.to_json()).encode() for e in make_log(seed=2, days=3)]
    fast = _fast_chunk(lines, -1, None)
    assert fast is not None
    expected = _reference(lines)
    assert isinstance(expected, EventBatch)
    _same(fast, expected)


ts_text = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)).flatmap(
        lambda d: st.sampled_from(
            [
                d.strftime("%Y-%m-%dT%H:%M:%SZ"),
                d.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                d.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
                d.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-5] + "Z",
                d.strftime("%Y-%m-%dT%H:%M:%S.%f") + "7Z",
                d.strftime("%Y-%m-%dT%H:%M:%S+02:00"),
                d.strftime("%Y-%m-%dT%H:%M:%S.Z"),
                d.strftime("%Y-%m-%d %H:%M:%SZ"),
                d.strftime("%Y-%m-%dt%H:%M:%Sz"),
                d.strftime("%Y-%m-%dT%H:%M:%S"),
            ]
        )
    ),
    st.from_regex(r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,7})?Z\Z"),
    st.sampled_from(["0000-01-01T00:00:00Z", "2024-02-29T00:00:00Z", "2023-02-29T00:00:00Z", "x", ""]),
    st.text(max_size=30),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(ts_text, min_size=1, max_size=5))
def test_ts_column_equals_the_line_reader(stamps: list[str]) -> None:
    got = _ts_column(stamps)
    expected: list[int] = []
    for s in stamps:
        try:
            expected.append(_ts_us(_parse_ts(s, None)))
        except EventInvalid:
            assert got is None  # the fast reader never takes a stamp the line reader refuses
            return
    if got is not None:
        assert got.tolist() == expected


long = st.integers(_MAX_TEXT - 1, _MAX_TEXT + 1).map(lambda k: "é" * k)
any_text = st.text(max_size=12) | long | st.sampled_from(["", '"', "\\", "\x00", "\u2028", "\ud800"])
any_value = (
    st.none()
    | st.booleans()
    | st.integers(-5, 2**64)
    | st.floats(allow_nan=True, allow_infinity=True)
    | any_text
    | st.lists(st.integers(), max_size=2)
    | st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)
)
SEQ = "<next stamp>"  # replaced by a stamp later than the one before (most logs are in order)


def often(good: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """Mostly a good value, sometimes anything (so whole rows are often valid)."""
    return st.integers(0, 9).flatmap(lambda k: any_value if k == 9 else good)


text_ok = st.text(min_size=1, max_size=8)
row = st.fixed_dictionaries(
    {
        "event_id": often(text_ok),
        "ts": st.integers(0, 9).flatmap(
            lambda k: ts_text if k == 8 else any_value if k == 9 else st.just(SEQ)
        ),
        "user": often(text_ok),
        "action": often(st.sampled_from([*ACTION_NAMES, "peek", "LOGIN"])),
        "outcome": often(st.sampled_from(["success", "failure"])),
    },
    optional={
        **dict.fromkeys(
            ("role", "dept", "patient_id", "study_uid", "src_ip", "user_agent"), often(st.none() | text_ok)
        ),
        "bytes": often(st.none() | st.integers(0, 2**63)),
        "break_glass": often(st.booleans()),
        "extra": any_value,
    },
)


def _encode(r: dict[str, object], style: int) -> bytes:
    """One JSON line in one of several spellings a site's export might use."""
    if style == 0:
        return json.dumps(r).encode()  # ASCII with \\u escapes
    if style == 1:
        return json.dumps(r, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if style == 2:
        return (" " + json.dumps(r, indent=None, separators=(" , ", " : ")) + " \r").encode()
    if style == 3:  # a duplicate key: the last one counts, in both readers
        return (json.dumps(r)[:-1] + ', "action": "view"}').encode() if r else b"{}"
    return json.dumps(r).encode() + b"\xff"  # not UTF-8


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(row, st.sampled_from([0, 0, 0, 1, 1, 2, 3, 4])), min_size=1, max_size=4),
    st.lists(st.sampled_from([b"", b"  ", b"{", b"[]", b'{"a": 1} {"b": 2}', b"\xef\xbb\xbf{}"]), max_size=1)
    | st.just([]),
    st.integers(0, 5),
)
def test_fast_reader_is_a_subset_of_the_line_reader(
    rows: list[tuple[dict[str, object], int]], junk: list[bytes], at: int
) -> None:
    for k, (r, _) in enumerate(rows):
        if r["ts"] == SEQ:
            r["ts"] = f"2026-03-02T08:{k:02d}:00.{k:06d}Z" if k % 2 else f"2026-03-02T08:{k:02d}:00Z"
    lines = [_encode(r, style if style != 4 or at % 2 else 0) for r, style in rows]
    lines[at % len(lines) : at % len(lines)] = junk
    expected = _reference(lines)
    fast = _fast_chunk(lines, -1, None)
    event(f"fast reader {'took' if fast is not None else 'declined'}, line reader: {type(expected).__name__}")
    if fast is not None:  # whatever the fast reader takes, the line reader takes, with the same values
        assert isinstance(expected, EventBatch)
        _same(fast, expected)
    try:
        got = read_chunk(lines, first_line=1)
    except EventInvalid as exc:
        assert isinstance(expected, EventInvalid)
        assert (type(exc), exc.line, exc.message) == (type(expected), expected.line, expected.message)
    else:
        assert isinstance(expected, EventBatch)
        _same(got, expected)
