"""The online worker over a real home: alerts stored once per source entry with their ``alert``
ledger event, restarts that neither lose nor repeat, and a ledger or a step that goes wrong."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from tests.unit.alerting.conftest import BURST, Clock, alerts_of, burst, ledger_events, worker_for

from medvault.alerting.worker import MonitorWorker
from medvault.home import OpenHome
from medvault.index.schema import ledger_outbox

ALERTING = BURST - 4 - 1  # failures beyond the 4-failure burst, minus the first (6 points: alert)


def _outbox_rows(opened: OpenHome) -> int:
    with opened.archive.index.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(ledger_outbox)).scalar_one())


def test_a_failed_sign_in_burst_raises_one_alert_per_source_entry_each_ledgered(opened: OpenHome) -> None:
    indices = burst(opened, "dr-burst")
    worker = worker_for(opened)
    result = worker.step()
    assert result.scored == BURST + 1  # the burst and the home's own first entry
    alerts = alerts_of(opened, "dr-burst")
    assert [a.source_index for a in alerts] == indices[-ALERTING:]
    assert all(any("failed sign-in" in r for r in a.reasons) for a in alerts)
    assert [a.severity for a in alerts] == ["medium", "medium", "high", "critical", "critical"]
    assert len({a.incident_id for a in alerts}) == 1 and alerts[0].incident_id
    assert all(a.event_time.tzinfo is not None for a in alerts)

    ledgered = ledger_events(opened, prefix="monitor.alert")
    assert sorted(str(e.details["source_event_id"]) for e in ledgered) == sorted(
        f"ledger:{i}" for i in indices[-ALERTING:]
    )
    assert [e.details["score_milli"] for e in ledgered] == [round(a.score * 1000) for a in alerts]
    assert _outbox_rows(opened) == 0  # published from the outbox, none left behind

    size = opened.ledger.size
    assert worker.step().alerts == 0  # nothing new: nothing raised, nothing ledgered
    assert opened.ledger.size == size
    assert len(alerts_of(opened)) == ALERTING


def test_a_worker_that_died_without_saving_rescores_and_raises_nothing_twice(opened: OpenHome) -> None:
    burst(opened, "dr-first")
    first = worker_for(opened)
    first.step()
    before = alerts_of(opened)
    ledgered = len(ledger_events(opened))
    del first  # killed: its state was never saved after the first (empty) save

    second = worker_for(opened)
    assert second.processed == 0
    result = second.step()
    assert result.scored == BURST + 1 and result.alerts == 0
    assert alerts_of(opened) == before
    assert len(ledger_events(opened)) == ledgered  # no second alert event, no second response
    # and it goes on raising what is new
    burst(opened, "dr-second", address="10.20.31.1")
    assert second.step().alerts == ALERTING
    assert len(alerts_of(opened, "dr-second")) == ALERTING


def test_a_saved_worker_resumes_with_its_state_where_it_stopped(opened: OpenHome) -> None:
    start = datetime.now(UTC)
    burst(opened, "dr-resume", count=5, start=start)  # not yet an alert: 5 failures
    first = worker_for(opened)
    assert first.step().alerts == 0
    first.save()
    saved = first.processed
    del first

    burst(opened, "dr-resume", count=5, start=start + timedelta(seconds=5))
    second = worker_for(opened)
    assert second.processed == saved
    result = second.step()
    assert result.scored == 5  # only what came after the save
    # the five failures before the save are remembered: the 6th..10th alert
    assert result.alerts == ALERTING
    assert [a.score for a in alerts_of(opened, "dr-resume")] == [6.0, 8.0, 12.0, 14.0, 16.0]


def test_the_state_is_saved_every_snapshot_seconds_and_beats_in_between(
    opened: OpenHome, clock: Clock
) -> None:
    worker = worker_for(opened, clock, snapshot_seconds=30)
    burst(opened, "dr-beat")
    worker.step()
    processed, _ = opened.alerts.load_state()
    live, beat = opened.alerts.progress()
    assert processed == 0 and live == worker.processed and beat == clock.wall  # a beat, no snapshot
    clock.advance(31)
    worker.step()
    processed, snapshot = opened.alerts.load_state()
    assert processed == worker.processed and snapshot is not None


@pytest.mark.parametrize(
    "leaf",
    [
        b"not json at all",
        b"\xff\xfe\x00",
        b"[]",
        b'{"v": 1, "kind": "login"}',
        b'{"v":1,"kind":"login","time":"2026-01-01T00:00:00.000000Z","actor":[],"action":"a"}',
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the JSON decoder can recurse
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    ],
    ids=["text", "binary", "list", "fields-missing", "actor-list", "deep-list", "deep-object"],
)
def test_a_ledger_entry_the_monitor_cannot_read_is_skipped_and_logged(
    opened: OpenHome, leaf: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    worker = worker_for(opened)
    (bad,) = opened.ledger.append_leaves([leaf])
    indices = burst(opened, "dr-after-garbage")
    with caplog.at_level(logging.ERROR, logger="medvault.server"):
        result = worker.step()
    assert f"ledger entry {bad} cannot be read by the monitor; skipped" in caplog.text
    assert worker.processed >= indices[-1] + 1
    assert result.alerts == ALERTING  # the worker went on


def test_run_keeps_going_after_a_step_that_raises_and_saves_on_the_way_out(
    opened: OpenHome, caplog: pytest.LogCaptureFixture
) -> None:
    worker = worker_for(opened, poll_ms=20)
    real_step = worker.step
    failures = []

    def step_failing_twice() -> object:
        if len(failures) < 2:
            failures.append(1)
            raise RuntimeError("index unavailable")
        return real_step()

    worker.step = step_failing_twice  # type: ignore[method-assign]
    burst(opened, "dr-run")
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    with caplog.at_level(logging.ERROR, logger="medvault.server"):
        thread.start()
        deadline = datetime.now(UTC) + timedelta(seconds=30)
        while len(alerts_of(opened, "dr-run")) < ALERTING and datetime.now(UTC) < deadline:
            stop.wait(0.05)
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert len(failures) == 2 and caplog.text.count("monitor step failed: RuntimeError") == 2
    assert "index unavailable" not in caplog.text  # the type only: messages may name people
    assert len(alerts_of(opened, "dr-run")) == ALERTING
    processed, snapshot = opened.alerts.load_state()
    assert processed == worker.processed and snapshot is not None  # saved at stop


def test_events_out_of_time_order_are_scored_not_refused(opened: OpenHome) -> None:
    """Group-committed reads can reach the ledger after later changes: the worker clamps them."""
    now = datetime.now(UTC)
    burst(opened, "dr-late", count=3, start=now)
    burst(opened, "dr-late", count=3, start=now - timedelta(minutes=5))
    worker = worker_for(opened)
    assert worker.step().scored == 7
    burst(opened, "dr-late", count=4, start=now - timedelta(hours=1))
    assert worker.step().alerts > 0  # still counted within the window


def test_a_worker_needs_a_valid_configuration_before_it_starts(opened: OpenHome) -> None:
    from medvault.errors import ConfigError

    with pytest.raises(ConfigError, match="responses"):
        worker_for(opened, responses=("high=end_session",))
    with pytest.raises(ConfigError, match="rules"):
        worker_for(opened, rules=("alert_scor=5",))
    assert isinstance(worker_for(opened), MonitorWorker)


@pytest.mark.parametrize("name", ["x^y", "Doe^John", "100%^", "%5E"])
def test_a_sign_in_name_the_ledger_refuses_in_details_does_not_stop_the_monitor(
    opened: OpenHome, name: str
) -> None:
    """Anyone can type "x^y" as a user name: its alerts must still be ledgered (the name
    escaped) and the monitor must go on, for that burst and for everyone after it."""
    worker = worker_for(opened, responses=())
    burst(opened, name)
    assert worker.step().alerts == ALERTING
    assert {a.subject for a in alerts_of(opened)} == {name}  # the store keeps it as typed
    ledgered = ledger_events(opened, prefix="monitor.alert")
    assert len(ledgered) == ALERTING and "^" not in str(ledgered[0].details["subject"])
    burst(opened, "dr-next", address="10.20.99.1")
    assert worker.step().alerts == ALERTING


@pytest.mark.parametrize("name", ["x^y", "node:ct1", "user:x"])
def test_a_resolution_of_an_escaped_subject_reaches_that_user(opened: OpenHome, name: str) -> None:
    from medvault.alerting.officer import handle_alert
    from medvault.ledger.events import Actor, ActorKind

    start = datetime.now(UTC)
    worker = worker_for(opened, responses=())
    burst(opened, name, start=start, address="10.5.0.1")
    worker.step()
    subject = "user:" + name if ":" in name else name  # as the alert names a typed "node:…"
    last = alerts_of(opened, subject)[-1]
    officer = Actor(kind=ActorKind.USER, id="officer", address="10.0.0.2")
    handle_alert(
        alerts=opened.alerts,
        index=opened.archive.index,
        ledger=opened.ledger,
        alert_id=last.id,
        status="resolved",
        actor=officer,
        now=start,
        disposition="false_positive",
    )
    later = start + timedelta(hours=2)
    burst(opened, name, start=later, address="10.5.1.1")
    burst(opened, "x-control", start=later, address="10.5.2.1")
    worker.step()
    again = [a.score for a in alerts_of(opened, subject) if a.event_time >= later]
    control = [a.score for a in alerts_of(opened, "x-control")]
    assert max(again, default=0.0) < max(control)  # the feedback found the user it was about


def test_a_step_that_fails_after_scoring_does_not_count_the_events_twice(
    opened: OpenHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The index busy when the alerts are stored: the monitor had learned the batch already.
    The next step must not learn it a second time (20 failures where there were 10)."""
    from sqlalchemy.exc import OperationalError

    worker = worker_for(opened, responses=())
    real = opened.alerts.add_alerts
    calls = []

    def busy_once(*args: object, **kw: object) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("INSERT INTO alerts", {}, Exception("database is locked"))
        return real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(opened.alerts, "add_alerts", busy_once)
    indices = burst(opened, "dr-twice")
    with pytest.raises(OperationalError):
        worker.step()
    worker.save()  # as run() does on the way out: must not save the half-learned state
    assert opened.alerts.load_state()[0] == 0
    worker.step()
    alerts = alerts_of(opened, "dr-twice")
    assert [a.source_index for a in alerts] == indices[-ALERTING:]
    assert [a.score for a in alerts] == [6.0, 8.0, 12.0, 14.0, 16.0]
