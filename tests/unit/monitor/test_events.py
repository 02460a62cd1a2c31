"""The strict EVENTS.jsonl reader: every bad line is named; both readers agree."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medvault.errors import EventInvalid, EventOutOfOrder, UnknownAction
from medvault.monitor import Action, EventBatch, MonitorEvent, iter_events, parse_event_line, read_batches
from medvault.monitor._events import ACTION_CODE

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
