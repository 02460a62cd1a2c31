"""Fixtures for the ledger tests: a fixed signer, an event factory and a ledger on disk."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from medvault.ledger import Actor, ActorKind, AuditEvent, EventKind, Ledger, ObjectRef, Outcome, Signer

ORIGIN = "medvault.test/ledger"
SEED = bytes(range(32))
PSEUDONYM = "0123456789abcdef0123456789abcdef"
T0 = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def make_event(n: int = 0, kind: EventKind = EventKind.RETRIEVE) -> AuditEvent:
    return AuditEvent(
        kind=kind,
        time=T0 + timedelta(milliseconds=n),
        actor=Actor(kind=ActorKind.USER, id=f"user-{n % 7}", address="10.1.2.3", auth="password+totp"),
        action="wado-rs retrieve instance",
        outcome=Outcome.SUCCESS,
        object=ObjectRef(type="instance", id=f"1.2.826.0.1.3680043.8.498.{n}"),
        patient=PSEUDONYM,
        details={"n": n, "bytes": 1024 + n},
    )


@pytest.fixture
def signer() -> Signer:
    return Signer.from_private_bytes(name=ORIGIN, seed=SEED)


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite"


@pytest.fixture
def ledger(ledger_path: Path, signer: Signer) -> Iterator[Ledger]:
    with Ledger.open(ledger_path, signer=signer, origin=ORIGIN) as led:
        yield led
