"""The event model: canonical bytes (checked against the rfc8785 package when installed), PHI refusals."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medvault.errors import InvalidInput
from medvault.ledger.events import (
    Actor,
    ActorKind,
    AuditEvent,
    EventKind,
    ObjectRef,
    Outcome,
    canonical_bytes,
    canonicalize,
    parse_event,
)

from .conftest import PSEUDONYM, T0, make_event

EXPECTED = (
    b'{"action":"wado-rs retrieve instance","actor":{"address":"10.1.2.3","auth":"password+totp",'
    b'"id":"user-3","kind":"user"},"details":{"bytes":1027,"n":3},"kind":"retrieve",'
    b'"object":{"id":"1.2.826.0.1.3680043.8.498.3","type":"instance"},"outcome":"success",'
    b'"patient":"0123456789abcdef0123456789abcdef","time":"2024-05-06T07:08:09.126456Z","v":1}'
)


def test_canonical_bytes_vector() -> None:
    assert canonical_bytes(make_event(3)) == EXPECTED


def test_time_is_normalized_to_utc() -> None:
    local = T0.astimezone(timezone(timedelta(hours=2)))
    assert canonical_bytes(make_event(0)) == canonical_bytes(
        AuditEvent(**{**_fields(make_event(0)), "time": local})
    )


def _fields(e: AuditEvent) -> dict[str, Any]:
    return {f: getattr(e, f) for f in e.__dataclass_fields__}


def test_parse_round_trip() -> None:
    e = make_event(5, EventKind.BREAK_GLASS)
    assert parse_event(canonical_bytes(e)) == e
    with pytest.raises(InvalidInput):
        parse_event(canonical_bytes(e).replace(b'"v":1', b'"v":2'))
    with pytest.raises(InvalidInput):
        parse_event(b'{"kind": "login"}')
    with pytest.raises(InvalidInput):  # valid but not canonical
        parse_event(json.dumps(json.loads(canonical_bytes(e)), indent=1).encode())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_canonicalize_matches_rfc8785(value: Any) -> None:
    rfc8785 = pytest.importorskip("rfc8785")
    try:
        ours = canonicalize(value)
    except InvalidInput:  # lone surrogates
        with pytest.raises(Exception):  # noqa: B017 - the reference refuses them too
            rfc8785.dumps(value)
        return
    assert ours == rfc8785.dumps(value)
    assert json.loads(ours) == value


def test_canonicalize_sorts_by_utf16_code_units() -> None:
    # U+1F600 (surrogates D83D DE00) sorts before U+FB01 in UTF-16, after it in code points.
    assert canonicalize({"\ufb01": 1, "\U0001f600": 2}) == '{"\U0001f600":2,"\ufb01":1}'.encode()
    assert (
        canonicalize({"a": [True, None, "\u2028\x7f\x1f"]})
        == '{"a":[true,null,"\u2028\x7f\\u001f"]}'.encode()
    )
    for bad in (1.5, 2**53, {1: 2}, {"a": object()}):
        with pytest.raises(InvalidInput):
            canonicalize(bad)


@settings(max_examples=100, deadline=None)
@given(
    action=st.text(min_size=1, max_size=40),
    n=st.integers(0, 2**53 - 1),
    reason=st.none() | st.text(min_size=1, max_size=40),
)
def test_event_bytes_are_rfc8785_of_to_json(action: str, n: int, reason: str | None) -> None:
    rfc8785 = pytest.importorskip("rfc8785")
    try:
        e = AuditEvent(**{**_fields(make_event(1)), "action": action, "reason": reason, "details": {"n": n}})
    except InvalidInput:
        return  # lone surrogates are refused
    assert canonical_bytes(e) == rfc8785.dumps(e.to_json()) == canonicalize(e.to_json())


@pytest.mark.parametrize(
    "key",
    [
        "patient_name",
        "PatientName",
        "patient_id",
        "birth_date",
        "dob",
        "ssn",
        "mrn",
        "home_address",
        "email",
        "phone_number",
        "accession_number",
        "name",
    ],
)
def test_phi_looking_details_refused(key: str) -> None:
    with pytest.raises(InvalidInput):
        AuditEvent(**{**_fields(make_event()), "details": {key: "x"}})


def test_other_refusals() -> None:
    base = _fields(make_event())
    for change in (
        {"patient": "DOE^JOHN"},
        {"patient": "John Doe"},
        {"patient": "123-45-6789"},
        {"details": {"note": "DOE^JOHN"}},
        {"details": {"n": 2**53}},
        {"details": {"n": 1.5}},
        {"details": {"n": [1]}},
        {"time": datetime(2024, 1, 1)},
        {"action": ""},
        {"reason": "x" * 5000},
        {"kind": "not-a-kind"},
        {"outcome": "maybe"},
    ):
        with pytest.raises((InvalidInput, ValueError)):
            AuditEvent(**{**base, **change})
    with pytest.raises(TypeError):
        AuditEvent(**base, patient_name="Doe")  # type: ignore[call-arg]
    with pytest.raises(InvalidInput):
        Actor(kind=ActorKind.USER, id="")
    with pytest.raises(InvalidInput):
        ObjectRef(type="study", id="")


def test_event_is_frozen_and_details_immutable() -> None:
    e = make_event()
    with pytest.raises(AttributeError):
        e.action = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        e.details["n"] = 5  # type: ignore[index]


def test_kinds() -> None:
    assert {k for k in EventKind if k.is_read} == {
        EventKind.QUERY,
        EventKind.RETRIEVE,
        EventKind.AUTHZ_DECISION,
        EventKind.LOGIN,
        EventKind.LOGOUT,
        EventKind.ASSOCIATION,
    }
    assert not any(k.is_read for k in (EventKind.STORE, EventKind.DELETE, EventKind.GRANT_CHANGE))
    assert EventKind("break_glass") is EventKind.BREAK_GLASS
    assert Outcome.DENIED.value == "denied"
    minimal = AuditEvent(
        kind=EventKind.LOGIN,
        time=T0,
        actor=Actor(kind=ActorKind.SYSTEM, id="medvault"),
        action="startup",
        outcome=Outcome.SUCCESS,
    )
    assert b"patient" not in canonical_bytes(minimal)
    assert PSEUDONYM.encode() in canonical_bytes(make_event())
