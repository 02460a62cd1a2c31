"""Training records against a real SQLite index: courses and versions, completions (history kept),
the gate they drive through UserStore's policy subject, reminders once per expiry, and the ledger
events of each change (no evidence text in them)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from sqlalchemy import inspect, text

from medvault.access.policy import Action, Context, decide
from medvault.compliance.training import TrainingRecords
from medvault.crypto.fields import BlindIndex, FieldCipher
from medvault.errors import Conflict, InvalidInput, NotFound
from medvault.index.store import Index
from medvault.index.training import TrainingStore
from medvault.index.users import UserStore
from medvault.ledger.events import Actor, ActorKind, AuditEvent, EventKind

NOW = datetime(2030, 3, 4, 10, 0, tzinfo=UTC)
ADMIN = Actor(kind=ActorKind.USER, id="cli:officer", auth="home-passphrase")


@pytest.fixture
def index(tmp_path: Path) -> Iterator[Index]:
    cipher = FieldCipher(os.urandom(32))
    idx = Index.open_sqlite(tmp_path / "index.sqlite", cipher=cipher, blind=BlindIndex(os.urandom(32)))
    yield idx
    idx.close()


@pytest.fixture
def users(index: Index) -> UserStore:
    hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    return UserStore(index.engine, cipher=FieldCipher(os.urandom(32)), hasher=hasher)


@pytest.fixture
def events() -> list[AuditEvent]:
    return []


@pytest.fixture
def records(users: UserStore, events: list[AuditEvent]) -> TrainingRecords:
    return TrainingRecords(TrainingStore(users.engine, roles=users.roles), events.append)


def can_read(users: UserStore, name: str, now: datetime = NOW) -> tuple[bool, str]:
    subject = users.principal(name, now=now)
    assert subject is not None
    subject = dataclasses.replace(subject, must_change_password=False)  # past the first sign-in
    d = decide(subject, Action.STUDY_READ, None, Context(now=now))
    return d.allowed, d.reason


def add(records: TrainingRecords, name: str = "privacy", **kw: object) -> None:
    args: dict[str, object] = {"version": "2030", "valid_days": 365, "required_for": ["radiologist"]} | kw
    records.add_course(name, actor=ADMIN, now=NOW, **args)  # type: ignore[arg-type]


def test_without_courses_the_per_user_date_decides(users: UserStore, records: TrainingRecords) -> None:
    users.add_user("alice", roles=["radiologist"], now=NOW, training_expires=date(2031, 1, 1))
    assert can_read(users, "alice")[0]
    add(records, required_for=["auditor"])  # required of others only: the date still decides
    assert can_read(users, "alice")[0]


def test_a_required_course_gates_until_completed(
    users: UserStore, records: TrainingRecords, events: list[AuditEvent]
) -> None:
    users.add_user("alice", roles=["radiologist"], now=NOW, training_expires=date(2031, 1, 1))
    users.add_user("olga", roles=["auditor"], now=NOW)
    add(records)
    allowed, reason = can_read(users, "alice")
    assert not allowed and "'privacy'" in reason and "training" in reason
    gate = [e for e in events if e.action == "training.gate"]
    assert [(e.object.id if e.object else None, e.details["access"]) for e in gate] == [("alice", "refused")]
    assert gate[0].actor == ADMIN and gate[0].kind is EventKind.ALERT
    assert events[0].action == "training.course.add" and events[0].details["version"] == "2030"

    events.clear()
    done, changes = records.record(
        "alice", "privacy", completed_on=date(2030, 3, 1), evidence="CERT-77", actor=ADMIN, now=NOW
    )
    assert done.version == "2030" and [c.allowed for c in changes] == [True]
    assert can_read(users, "alice")[0]  # at once
    recorded = events[0]
    assert recorded.action == "training.record" and recorded.kind is EventKind.USER_CHANGE
    assert recorded.details["evidence_sha256"] == hashlib.sha256(b"CERT-77").hexdigest()
    assert "CERT-77" not in repr(recorded.to_json())
    assert events[1].action == "training.gate" and events[1].details == {
        "access": "granted",
        "previous": "refused",
        "expires": "2031-03-01",
        "course": "privacy",
    }
    # valid through completed_on + valid_days, then the gate closes; a sweep ledgers the loss once
    assert can_read(users, "alice", datetime(2031, 3, 1, 23, 0, tzinfo=UTC))[0]
    later = datetime(2031, 3, 2, 8, 0, tzinfo=UTC)
    allowed, reason = can_read(users, "alice", later)
    assert not allowed and "expired on 2031-03-01" in reason
    events.clear()
    records.reminders(actor=ADMIN, now=later)
    records.reminders(actor=ADMIN, now=later + timedelta(hours=1))
    lost = [e for e in events if e.action == "training.gate"]
    assert len(lost) == 1 and lost[0].details["access"] == "refused"


def test_versions_supersede_and_requires_renewal(users: UserStore, records: TrainingRecords) -> None:
    users.add_user("alice", roles=["radiologist"], now=NOW)
    add(records, version="v1")
    records.record("alice", "privacy", completed_on=date(2030, 1, 1), actor=ADMIN, now=NOW)
    add(records, version="v2", valid_days=30)  # completions of v1 keep counting, for v1's 365 days
    assert can_read(users, "alice")[0]
    with pytest.raises(Conflict, match="already has a version 'v2'"):
        add(records, version="v2")
    _, changes = records.add_course(
        "privacy",
        version="v3",
        valid_days=365,
        required_for=["radiologist"],
        requires_renewal=True,
        actor=ADMIN,
        now=NOW,
    )
    assert [(c.username, c.allowed) for c in changes] == [("alice", False)]
    assert not can_read(users, "alice")[0]
    with pytest.raises(NotFound, match=r"version: course 'privacy' has no version 'v9'"):
        records.record("alice", "privacy", completed_on=date(2030, 3, 1), version="v9", actor=ADMIN, now=NOW)
    records.record("alice", "privacy", completed_on=date(2030, 3, 1), actor=ADMIN, now=NOW)
    assert can_read(users, "alice")[0]
    history = records.store.history("alice")
    assert [(h.version, h.completed_on) for h in history] == [
        ("v1", date(2030, 1, 1)),
        ("v3", date(2030, 3, 1)),
    ]
    listed = records.store.courses()
    assert [(r.course.version, r.current) for r in listed] == [("v1", False), ("v2", False), ("v3", True)]


def test_errors_name_the_field(users: UserStore, records: TrainingRecords) -> None:
    users.add_user("alice", roles=["radiologist"], now=NOW)
    add(records)
    with pytest.raises(NotFound, match=r"^user: no user named 'bob'"):
        records.record("bob", "privacy", completed_on=date(2030, 1, 1), actor=ADMIN, now=NOW)
    with pytest.raises(NotFound, match=r"^course: no course named 'fire'") as info:
        records.record("alice", "fire", completed_on=date(2030, 1, 1), actor=ADMIN, now=NOW)
    assert "privacy" in (info.value.hint or "")
    with pytest.raises(InvalidInput, match=r"^completed: 2030-03-05 is in the future"):
        records.record("alice", "privacy", completed_on=date(2030, 3, 5), actor=ADMIN, now=NOW)
    with pytest.raises(InvalidInput, match=r"^evidence"):
        records.record(
            "alice", "privacy", completed_on=date(2030, 1, 1), evidence="x" * 201, actor=ADMIN, now=NOW
        )
    with pytest.raises(InvalidInput, match=r"^required-for: unknown role"):
        add(records, "fire", required_for=["wizard"])
    with pytest.raises(InvalidInput, match=r"^valid-days"):
        add(records, "fire", valid_days=0)
    with pytest.raises(InvalidInput, match=r"^version"):
        add(records, "fire", version="")
    with pytest.raises(InvalidInput, match=r"^course name"):
        add(records, "\x00bad")


def test_reminders_once_per_expiry(
    users: UserStore, records: TrainingRecords, events: list[AuditEvent]
) -> None:
    users.add_user("alice", roles=["radiologist"], now=NOW)
    users.add_user("bob", roles=["technologist"], now=NOW)
    add(records, required_for=["all"])
    records.record("alice", "privacy", completed_on=date(2029, 3, 20), actor=ADMIN, now=NOW)  # to 2030-03-20
    records.record("bob", "privacy", completed_on=date(2030, 3, 1), actor=ADMIN, now=NOW)  # to 2031-03-01
    events.clear()
    due, _ = records.reminders(within_days=30, actor=ADMIN, now=NOW)
    assert [(r.username, r.state, r.new) for r in due] == [("alice", "expiring", True)]
    (reminder,) = [e for e in events if e.action == "training.reminder"]
    assert reminder.kind is EventKind.ALERT and reminder.object is not None and reminder.object.id == "alice"
    assert reminder.details == {
        "course": "privacy",
        "version": "2030",
        "expires": "2030-03-20",
        "state": "expiring",
        "days_left": 16,
    }
    events.clear()
    again, _ = records.reminders(within_days=30, actor=ADMIN, now=NOW + timedelta(days=1))
    assert [r.new for r in again] == [False] and events == []  # no spam
    records.record("alice", "privacy", completed_on=date(2030, 3, 4), actor=ADMIN, now=NOW)
    assert records.reminders(within_days=30, actor=ADMIN, now=NOW)[0] == []
    near = NOW + timedelta(days=350)  # the renewed one expires 2031-03-04: a new reminder
    events.clear()
    due, _ = records.reminders(within_days=30, actor=ADMIN, now=near)
    assert sorted((r.username, r.expires, r.new) for r in due) == [
        ("alice", date(2031, 3, 4), True),
        ("bob", date(2031, 3, 1), True),
    ]
    assert len([e for e in events if e.action == "training.reminder"]) == 2


def test_status_per_user_and_course(users: UserStore, records: TrainingRecords) -> None:
    users.add_user("alice", roles=["radiologist"], now=NOW)
    users.add_user("olga", roles=["auditor"], now=NOW)
    add(records)
    add(records, "fire", required_for=[])
    records.record("olga", "fire", completed_on=date(2020, 1, 1), actor=ADMIN, now=NOW)
    people = {p.username: p for p in records.store.status(today=NOW.date())}
    (alice,) = people["alice"].courses
    assert (alice.course, alice.state, alice.required) == ("privacy", "missing", True)
    assert people["alice"].effective.expires is None and people["alice"].reaches_phi
    (olga,) = people["olga"].courses
    assert (olga.course, olga.state, olga.required) == ("fire", "expired", False)
    assert not people["olga"].reaches_phi


def test_an_existing_home_gets_the_tables_and_keeps_working(index: Index, users: UserStore) -> None:
    users.add_user("alice", roles=["radiologist"], now=NOW, training_expires=date(2031, 1, 1))
    with index.engine.begin() as conn:  # a home from before training records
        for table in ("training_gate", "training_reminders", "training_completions", "training_courses"):
            conn.execute(text(f"DROP TABLE {table}"))
    assert "training_courses" not in inspect(index.engine).get_table_names()
    hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    reopened = UserStore(index.engine, cipher=FieldCipher(os.urandom(32)), hasher=hasher)
    assert "training_courses" in inspect(index.engine).get_table_names()
    assert can_read(reopened, "alice")[0]
