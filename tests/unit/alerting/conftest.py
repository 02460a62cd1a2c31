"""A real home and a MonitorWorker built as ``serve`` builds it (api/server.py::_start_monitor),
stepped by hand: ledger events go in with ``ledger.append_many``, alerts come out of the store."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import PASSPHRASE, make_home

from medvault.alerting.worker import MonitorWorker
from medvault.home import OpenHome, open_home
from medvault.index.alerts import AlertRecord
from medvault.ledger.events import Actor, ActorKind, AuditEvent, EventKind, Outcome, parse_event

#: Failed sign-ins in one burst: the default rules alert from the 6th (medium), rate the 8th high
#: and the 9th critical (failed_login_user_burst 4, 2 points per failure beyond it).
BURST = 10


@dataclass
class Clock:
    """The worker's two clocks, moved by the test (no sleeping): wall time and monotonic time."""

    wall: datetime = field(default_factory=lambda: datetime.now(UTC))
    mono: float = 1_000.0

    def now(self) -> datetime:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += timedelta(seconds=seconds)
        self.mono += seconds


def opened_home(tmp_path: Path) -> Iterator[OpenHome]:
    """A new home, opened (the ``opened`` fixture; other test packages make it theirs too)."""
    make_home(tmp_path / "home")
    home = open_home(tmp_path / "home", PASSPHRASE)
    try:
        yield home
    finally:
        home.close()


opened = pytest.fixture(opened_home, name="opened")
clock = pytest.fixture(lambda: Clock(), name="clock")


def worker_for(opened: OpenHome, clock: Clock | None = None, **settings: Any) -> MonitorWorker:
    """A worker as ``serve`` starts one, with ``[monitor]`` settings overridden by ``settings``."""
    chosen = dataclasses.replace(opened.settings.monitor, **settings)
    extra: dict[str, Any] = {}
    if clock is not None:
        extra = {"clock": clock.now, "monotonic": clock.monotonic}
    return MonitorWorker(
        ledger=opened.ledger,
        index=opened.archive.index,
        alerts=opened.alerts,
        users=opened.users,
        settings=chosen,
        root=opened.root,
        **extra,
    )


def failed_login(
    name: str, *, at: datetime, address: str = "10.20.30.40", kind: ActorKind = ActorKind.USER
) -> AuditEvent:
    """A refused sign-in as api/account.py::_login_event ledgers it (nodes: a refused association).
    ``name`` as the monitor names subjects: ``apikey:NAME`` and ``node:NAME`` for those kinds."""
    if kind is not ActorKind.USER:
        prefix = f"{kind.value}:"
        assert name.startswith(prefix), name
        name = name.removeprefix(prefix)
    if kind is ActorKind.NODE:
        return AuditEvent(
            kind=EventKind.ASSOCIATION,
            time=at,
            actor=Actor(kind=kind, id=name, address=f"{address}:40000", auth="mtls"),
            action="dimse.association",
            outcome=Outcome.DENIED,
            reason="calling AE title is not the node's",
        )
    return AuditEvent(
        kind=EventKind.LOGIN,
        time=at,
        actor=Actor(kind=kind, id=name, address=address, auth="password+totp"),
        action="auth.token",
        outcome=Outcome.DENIED,
        reason="the user name, password or one-time code is wrong",
    )


def burst(
    opened: OpenHome,
    name: str,
    *,
    count: int = BURST,
    start: datetime | None = None,
    address: str = "10.20.30.40",
    kind: ActorKind = ActorKind.USER,
) -> list[int]:
    """``count`` failed sign-ins a second apart, in one ledger transaction; their indices."""
    first = start or datetime.now(UTC)
    return opened.ledger.append_many(
        failed_login(name, at=first + timedelta(seconds=i), address=address, kind=kind) for i in range(count)
    )


def ledger_events(opened: OpenHome, *, prefix: str = "") -> list[AuditEvent]:
    """Every ``alert``-kind ledger event whose action starts with ``prefix``."""
    events = [parse_event(leaf) for leaf in opened.ledger.entries(0, opened.ledger.size)]
    return [e for e in events if e.kind is EventKind.ALERT and e.action.startswith(prefix)]


def alerts_of(opened: OpenHome, subject: str | None = None) -> list[AlertRecord]:
    """Oldest first."""
    return sorted(opened.alerts.find(subject=subject, limit=1000), key=lambda a: a.id)
