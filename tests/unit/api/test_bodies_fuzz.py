"""Request bodies and query parameters, fuzzed (issue #12, item 7 and "a fuzz suite that stays"):
whatever arrives, the answer is a value or a MedvaultError that becomes a 4xx, never a crash."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from medvault.access.totp import verify_totp
from medvault.api.bodies import date_field, days_field, decode_form, decode_json
from medvault.dicom.query import parse_query
from medvault.errors import InvalidInput, MedvaultError

KEYS = st.sampled_from(
    ["PatientID", "PatientName", "StudyDate", "StudyInstanceUID", "00100020", "limit", "offset",
     "includefield", "fuzzymatching", "ModalitiesInStudy", "NotAnAttribute", "0008103E", "x" * 70]
)  # fmt: skip
TEXT = st.text(max_size=40)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_json_and_form_bodies(body: bytes) -> None:
    for decode in (decode_json, decode_form):
        try:
            decode(body)
        except InvalidInput:
            pass


def test_deeply_nested_json_is_a_400() -> None:
    for depth in (5_000, 100_000):
        try:
            decode_json(b"[" * depth)
        except InvalidInput as exc:
            assert "nested too deeply" in exc.message or "not valid JSON" in exc.message
        else:
            raise AssertionError("accepted")


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(KEYS, st.one_of(TEXT, st.text("0123456789²³¹", max_size=12))), max_size=8))
def test_qido_parameters(params: list[tuple[str, str]]) -> None:
    try:
        parse_query(params)
    except MedvaultError as exc:
        assert exc.http_status == 400


def test_qido_refuses_what_once_made_500s() -> None:
    for params in ([("limit", "²")], [("offset", "¹")], [("PatientID", str(i)) for i in range(1000)]):
        try:
            parse_query(params)
        except InvalidInput:
            continue
        raise AssertionError(params)
    try:
        parse_query([("StudyInstanceUID", "\\".join(f"1.2.{i}" for i in range(5000)))])
    except InvalidInput as exc:
        assert "UID list" in exc.message
    else:
        raise AssertionError("accepted")


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["days", "expires"]), st.text(max_size=12)))
def test_day_and_date_fields(fields: dict[str, str]) -> None:
    for read in (lambda: days_field(fields, "days"), lambda: date_field(fields, "expires")):
        try:
            read()
        except InvalidInput:
            pass


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12))
def test_totp_codes_of_any_text(code: str) -> None:
    """A one-time code of non-ASCII digits ("¹²³⁴⁵⁶") once reached hmac.compare_digest, which
    raises TypeError for non-ASCII str: an unauthenticated 500 at /auth/token."""
    now = datetime(2026, 1, 1, tzinfo=UTC)
    step = verify_totp("JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP", code, now=now, last_step=None)
    assert step is None or isinstance(step, int)
    assert verify_totp("JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP", "¹²³⁴⁵⁶", now=now, last_step=None) is None


def test_json_bodies_must_be_objects_of_strings() -> None:
    assert decode_json(json.dumps({"a": "b"}).encode()) == {"a": "b"}
