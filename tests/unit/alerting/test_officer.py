"""What an officer does with an alert (medvault.alerting.officer, behind /api/alerts and the CLI):
acknowledge, resolve with a disposition once, and the resolution fed back to the monitor through
the ledger, so the same pattern scores lower after a false positive."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tests.unit.alerting.conftest import alerts_of, burst, ledger_events, worker_for

from medvault.alerting.officer import handle_alert
from medvault.alerting.worker import RESOLVE_ACTION, MonitorWorker
from medvault.errors import Conflict, InvalidInput, MedvaultError, NotFound
from medvault.home import OpenHome
from medvault.index.alerts import AlertRecord
from medvault.ledger.events import Actor, ActorKind, AuditEvent, EventKind, ObjectRef, Outcome

OFFICER = Actor(kind=ActorKind.USER, id="privacy-officer", address="10.0.0.2", auth="password+totp")
NOTE = "Called dr-noted: she was covering the ward; NOTE-MARKER-5521"


def _handle(opened: OpenHome, alert_id: int, status: Any, **kw: Any) -> AlertRecord:
    return handle_alert(
        alerts=opened.alerts,
        index=opened.archive.index,
        ledger=opened.ledger,
        alert_id=alert_id,
        status=status,
        actor=OFFICER,
        now=datetime.now(UTC),
        **kw,
    )


def _alerted(opened: OpenHome, name: str, **kw: Any) -> tuple[MonitorWorker, list[AlertRecord]]:
    worker = worker_for(opened, responses=())
    burst(opened, name, **kw)
    worker.step()
    return worker, alerts_of(opened, name)


@pytest.mark.parametrize(
    ("status", "kw", "message"),
    [
        ("resolved", {"disposition": "maybe"}, "disposition: one of true_positive"),
        ("resolved", {}, "needs a disposition"),
        ("resolved", {"disposition": "TRUE_POSITIVE"}, "needs a disposition"),
        ("acknowledged", {"disposition": "false_positive"}, "takes no disposition"),
        ("resolved", {"disposition": "true_positive", "note": "x" * 4001}, "longer than 4,000"),
    ],
)
def test_a_bad_handling_is_refused_with_a_clear_error_and_ledgers_nothing(
    opened: OpenHome, status: str, kw: dict[str, Any], message: str
) -> None:
    _, (alert, *_) = _alerted(opened, "dr-refused")
    size = opened.ledger.size
    with pytest.raises(InvalidInput, match=message):
        _handle(opened, alert.id, status, **kw)
    assert opened.ledger.size == size
    assert opened.alerts.get(alert.id).status == "open"


def test_an_unknown_alert_is_not_found(opened: OpenHome) -> None:
    with pytest.raises(NotFound, match="no alert 424242"):
        _handle(opened, 424242, "acknowledged")


def test_acknowledge_then_resolve_once_each_ledgered_and_the_note_stays_sealed(opened: OpenHome) -> None:
    _, (alert, *_) = _alerted(opened, "dr-noted")
    acked = _handle(opened, alert.id, "acknowledged")
    assert (acked.status, acked.disposition, acked.handled_by) == ("acknowledged", None, OFFICER.id)
    done = _handle(opened, alert.id, "resolved", disposition="benign_explained", note=NOTE)
    assert (done.status, done.disposition, done.note) == ("resolved", "benign_explained", NOTE)
    size = opened.ledger.size
    for status, kw in [("resolved", {"disposition": "false_positive"}), ("acknowledged", {})]:
        with pytest.raises(Conflict, match="resolved already"):
            _handle(opened, alert.id, status, **kw)
    assert opened.ledger.size == size
    assert opened.alerts.get(alert.id).disposition == "benign_explained"

    events = [e for e in ledger_events(opened) if e.action.startswith("alert.")]
    assert [e.action for e in events] == ["alert.acknowledge", RESOLVE_ACTION]
    assert all(e.object == ObjectRef(type="alert", id=str(alert.id)) and e.actor == OFFICER for e in events)
    assert events[1].details["disposition"] == "benign_explained"
    assert events[1].details["ledger_index"] == alert.source_index
    leaves = b"".join(opened.ledger.entries(0, opened.ledger.size))
    assert b"NOTE-MARKER" not in leaves  # the officer's note is not ledgered
    files = [p for p in opened.root.rglob("*") if p.is_file()]  # the index, its WAL, the ledger...
    assert not any(b"NOTE-MARKER" in p.read_bytes() for p in files)  # nor stored in clear


def test_two_officers_resolving_at_once_resolve_it_once(opened: OpenHome) -> None:
    _, (alert, *_) = _alerted(opened, "dr-raced")
    outcomes: list[str] = []
    gate = threading.Barrier(4)

    def resolve(disposition: str) -> None:
        gate.wait()
        try:
            _handle(opened, alert.id, "resolved", disposition=disposition)
            outcomes.append("resolved")
        except MedvaultError as exc:
            outcomes.append(type(exc).__name__)

    threads = [
        threading.Thread(target=resolve, args=(d,))
        for d in ("false_positive", "true_positive", "false_positive", "benign_explained")
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["Conflict", "Conflict", "Conflict", "resolved"]
    assert len([e for e in ledger_events(opened) if e.action == RESOLVE_ACTION]) == 1


def _scores(alerts: list[AlertRecord]) -> list[float]:
    return [a.score for a in alerts]


def test_a_false_positive_makes_the_same_pattern_score_lower_for_that_user(opened: OpenHome) -> None:
    start = datetime.now(UTC)
    worker, first = _alerted(opened, "dr-typo", start=start, address="10.9.0.1")
    assert _scores(first) == [6.0, 8.0, 12.0, 14.0, 16.0]
    _handle(opened, first[-1].id, "resolved", disposition="false_positive")
    # the resolution reaches the monitor through the ledger, like every other event
    later = start + timedelta(hours=2)  # outside the burst window: the same pattern again
    burst(opened, "dr-typo", start=later, address="10.9.1.1")
    burst(opened, "dr-control", start=later, address="10.9.2.1")
    worker.step()
    again = [a for a in alerts_of(opened, "dr-typo") if a.event_time >= later]
    control = alerts_of(opened, "dr-control")
    assert max(_scores(again), default=0.0) < max(_scores(control))
    assert len(again) < len(control) <= len(first)
    assert max(_scores(control)) <= max(_scores(first))  # site-wide: mildly lower, if at all

    # a worker that starts over replays the resolution at the same point: nothing new raised
    known = [(a.source_index, a.score) for a in alerts_of(opened)]
    fresh = worker_for(opened, responses=())
    assert fresh.processed == 0 and fresh.step().alerts == 0
    assert [(a.source_index, a.score) for a in alerts_of(opened)] == known


def test_a_true_positive_keeps_the_pattern_alerting(opened: OpenHome) -> None:
    start = datetime.now(UTC)
    worker, first = _alerted(opened, "dr-thief", start=start, address="10.8.0.1")
    _handle(opened, first[-1].id, "resolved", disposition="true_positive")
    later = start + timedelta(hours=2)
    burst(opened, "dr-thief", start=later, address="10.8.1.1")
    worker.step()
    again = [a for a in alerts_of(opened, "dr-thief") if a.event_time >= later]
    assert _scores(again) == _scores(first)


@pytest.mark.parametrize(
    "details",
    [
        {"disposition": "nonsense", "subject": "dr-forged", "points": "failed_login_user:10000"},
        {"disposition": "false_positive", "subject": "dr-forged", "points": "garbage,,:x,a:b:c"},
        {"disposition": "false_positive"},
        {},
    ],
    ids=["disposition", "points", "no-subject", "empty"],
)
def test_a_malformed_resolution_in_the_ledger_changes_nothing_and_stops_nothing(
    opened: OpenHome, details: dict[str, Any]
) -> None:
    worker = worker_for(opened, responses=())
    opened.ledger.append(
        AuditEvent(
            kind=EventKind.ALERT,
            time=datetime.now(UTC),
            actor=OFFICER,
            action=RESOLVE_ACTION,
            outcome=Outcome.SUCCESS,
            object=ObjectRef(type="alert", id="1"),
            details=details,
        )
    )
    burst(opened, "dr-forged")
    worker.step()
    assert _scores(alerts_of(opened, "dr-forged")) == [6.0, 8.0, 12.0, 14.0, 16.0]
