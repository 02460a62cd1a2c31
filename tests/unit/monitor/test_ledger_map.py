"""The mapping between ledger events and monitor events, both ways, on the shapes medvault emits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medvault.errors import EventInvalid
from medvault.ledger.events import (
    Actor,
    ActorKind,
    AuditEvent,
    EventKind,
    ObjectRef,
    Outcome,
    canonical_bytes,
    parse_event,
)
from medvault.monitor import Action, MonitorEvent, alert_event, from_ledger, to_ledger

T = datetime(2026, 3, 2, 8, tzinfo=UTC)
PSEUDO = "ab" * 16
USER = Actor(kind=ActorKind.USER, id="ana", address="10.0.0.7", auth="password+totp")


def ledger(kind: EventKind, action: str, outcome: Outcome = Outcome.SUCCESS, **kw: object) -> AuditEvent:
    return AuditEvent(kind=kind, time=T, actor=kw.pop("actor", USER), action=action, outcome=outcome, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("event", "action", "outcome"),
    [
        # api/account.py: sign-in, denied
        (
            ledger(EventKind.LOGIN, "auth.token", Outcome.DENIED, reason="bad password"),
            Action.LOGIN,
            "failure",
        ),
        # archive.audit_disclosure: QIDO (query) and WADO (retrieve) of one study
        (
            ledger(
                EventKind.QUERY,
                "study.read",
                object=ObjectRef(type="study", id="1.2.3"),
                patient=PSEUDO,
                details={"level": "studies", "results": 1},
            ),
            Action.QUERY,
            "success",
        ),
        (
            ledger(
                EventKind.RETRIEVE, "study.read", object=ObjectRef(type="study", id="1.2.3"), patient=PSEUDO
            ),
            Action.RETRIEVE,
            "success",
        ),
        # archive._store_event
        (
            ledger(
                EventKind.STORE,
                "study.store",
                object=ObjectRef(type="instance", id="1.2.3.4"),
                patient=PSEUDO,
                details={"size": 1234, "study_uid": "1.2.3", "sha256": "00" * 32},
            ),
            Action.STORE,
            "success",
        ),
        # export.py: de-identified export (no PHI leaves) and re-identification map read
        (ledger(EventKind.EXPORT, "deid.export", patient=PSEUDO), Action.RETRIEVE_DEID, "success"),
        (ledger(EventKind.DEIDENTIFY, "deid.reid-map.read"), Action.RETRIEVE, "success"),
        (ledger(EventKind.EXPORT, "ledger.export"), Action.AUDIT_QUERY, "success"),
        # audit.LedgerAudit.record: a denied decision, and a break-glass permit
        (
            ledger(EventKind.AUTHZ_DECISION, "study.read", Outcome.DENIED, patient=PSEUDO),
            Action.RETRIEVE,
            "failure",
        ),
        (ledger(EventKind.BREAK_GLASS, "study.read", patient=PSEUDO), Action.VIEW, "success"),
        # api/admin.py
        (
            ledger(EventKind.USER_CHANGE, "user.add", object=ObjectRef(type="user", id="bob")),
            Action.USER_MGMT,
            "success",
        ),
        (ledger(EventKind.DELETE, "study.delete", patient=PSEUDO), Action.ADMIN_CONFIG, "success"),
        # compliance/backup.py: a whole-archive copy is an administrator's act
        (ledger(EventKind.BACKUP, "backup.create"), Action.ADMIN_CONFIG, "success"),
        # audit.LedgerAudit.dimse: a node's C-GET and a refused TLS handshake
        (
            ledger(
                EventKind.ASSOCIATION,
                "dimse.get",
                actor=Actor(kind=ActorKind.NODE, id="pacs", address="10.9.9.9", auth="mtls"),
            ),
            Action.RETRIEVE,
            "success",
        ),
        (
            ledger(
                EventKind.ASSOCIATION,
                "dimse.tls",
                Outcome.DENIED,
                actor=Actor(kind=ActorKind.NODE, id="unknown"),
            ),
            Action.LOGIN,
            "failure",
        ),
    ],
)
def test_from_ledger_on_medvaults_own_events(event: AuditEvent, action: Action, outcome: str) -> None:
    m = from_ledger(event, index=41)
    assert m is not None
    assert (m.action, m.outcome) == (action, outcome)
    assert m.event_id == "ledger:41" and m.ts == T
    assert m.patient_id == event.patient
    assert m.src_ip == event.actor.address
    assert m.user_agent is None and m.dept is None  # the ledger does not carry them
    assert m.break_glass == (event.kind is EventKind.BREAK_GLASS)
    if event.kind is EventKind.STORE:
        assert m.bytes == 1234 and m.study_uid == "1.2.3"
    if event.actor.kind is ActorKind.NODE:
        assert m.user.startswith("node:") and m.role == "node"


@pytest.mark.parametrize(
    "event",
    [
        ledger(EventKind.ALERT, "monitor.alert"),  # the monitor's own output is never fed back
        ledger(EventKind.AUTHZ_DECISION, "study.read", patient=PSEUDO),  # the permit; the read follows
        ledger(EventKind.ASSOCIATION, "dimse.store"),  # the archive's store event carries the patient
        ledger(EventKind.ASSOCIATION, "dimse.echo"),
    ],
)
def test_non_accesses_map_to_none(event: AuditEvent) -> None:
    assert from_ledger(event) is None


def test_without_index_the_id_is_a_digest_of_the_leaf() -> None:
    e = ledger(EventKind.LOGIN, "auth.token")
    a, b = from_ledger(e), from_ledger(ledger(EventKind.LOGIN, "auth.token", reason="x"))
    assert a is not None and b is not None and a.event_id.startswith("ledger:") and a.event_id != b.event_id


ident = st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=1, max_size=12)


@given(
    action=st.sampled_from(list(Action)),
    user=ident,
    role=st.none() | ident,
    dept=st.none() | ident,
    patient=st.none() | st.text("0123456789abcdef", min_size=32, max_size=32),
    size=st.integers(0, 2**40),
    failure=st.booleans(),
    glass=st.booleans(),
    ua=st.none() | ident,
    micros=st.integers(0, 10**14),
)
def test_round_trip_through_ledger_leaf_bytes(
    action: Action,
    user: str,
    role: str | None,
    dept: str | None,
    patient: str | None,
    size: int,
    failure: bool,
    glass: bool,
    ua: str | None,
    micros: int,
) -> None:
    e = MonitorEvent(
        event_id="src-1",
        ts=T + timedelta(microseconds=micros),
        user=user,
        role=role,
        dept=dept,
        action=action,
        patient_id=patient,
        study_uid="1.2.3",
        bytes=size,
        src_ip="10.1.2.3",
        user_agent=ua,
        outcome="failure" if failure else "success",
        break_glass=glass,
    )
    leaf = canonical_bytes(to_ledger(e))
    assert from_ledger(parse_event(leaf)) == e


def test_to_ledger_pseudonymizes_or_refuses_raw_patient_ids() -> None:
    e = MonitorEvent(event_id="x", ts=T, user="ana", action=Action.VIEW, patient_id="MRN-123")
    with pytest.raises(EventInvalid, match="pseudonym"):
        to_ledger(e)
    out = to_ledger(e, pseudonymize=lambda raw: "cd" * 16)
    assert out.patient == "cd" * 16 and b"MRN-123" not in canonical_bytes(out)
    assert out.kind is EventKind.RETRIEVE


def test_monitor_node_users_map_back_to_node_actors() -> None:
    e = MonitorEvent(event_id="x", ts=T, user="node:pacs", action=Action.RETRIEVE)
    assert to_ledger(e).actor.kind is ActorKind.NODE and to_ledger(e).actor.id == "pacs"


def test_alert_event_is_a_valid_ledger_event_and_never_fed_back() -> None:
    from medvault.monitor import OnlineMonitor

    m = OnlineMonitor()
    fails = [
        MonitorEvent(event_id=f"f{i}", ts=T + timedelta(seconds=i), user="ana", action=Action.LOGIN,
                     outcome="failure", patient_id=None)
        for i in range(8)
    ]  # fmt: skip
    scored = [m.observe(e) for e in fails][-1]
    assert scored.alert and scored.user == "ana"
    alert = alert_event(scored, time=T)
    leaf = canonical_bytes(alert)
    back = parse_event(leaf)
    assert back.kind is EventKind.ALERT and back.object is not None and back.object.id == scored.incident_id
    assert back.details["subject"] == "ana" and back.details["severity"] == scored.severity
    assert back.details["score_milli"] == round(scored.score * 1000)
    assert back.reason and "failed sign-ins" in back.reason
    assert from_ledger(back) is None


def test_alert_event_keeps_only_pseudonymous_patients() -> None:
    from medvault.monitor import ScoredEvent

    s = ScoredEvent(
        "e", 7.0, True, "medium", "inc-000001", ("VIP patient",), {"vip": 7.0}, {}, None, "ana", "MRN1"
    )
    assert alert_event(s, time=T).patient is None
    s2 = ScoredEvent("e", 7.0, True, "medium", None, (), {"vip": 7.0}, {}, None, "ana", PSEUDO)
    assert alert_event(s2, time=T).patient == PSEUDO
