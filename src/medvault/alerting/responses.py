"""Automatic responses to alerts, per severity (``[monitor] responses`` in medvault.toml), and
their lifting by an officer. Every response and every lifting is ledgered.

    end_sessions   the user's tokens are revoked at once (nothing to lift)
    step_up        tokens revoked and refresh refused until a full sign-in with the second factor
    lock_account   no sign-in and no token works until an officer lifts the hold
    hold_exports   research exports are refused ("held for review") until lifted
    suspend_key    an API key is refused until lifted
    suspend_node   a DICOM node is refused until lifted

A response applies where it means something: the user ones to people, ``suspend_key`` to API keys,
``suspend_node`` to nodes; the others are skipped for that subject (and say so in the ledger).
Defaults are conservative: medium alerts only alert; high ends the user's sessions and requires
a step-up sign-in; critical also holds exports and suspends keys and nodes. Nobody is locked out
unless the site asks for it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal, cast

from medvault.errors import ConfigError
from medvault.index.alerts import AlertRecord, AlertStore, Hold
from medvault.index.users import UserStore
from medvault.ledger.events import Actor, ActorKind, AuditEvent, EventKind, ObjectRef, Outcome

RESPONSES: Final = ("end_sessions", "step_up", "lock_account", "hold_exports", "suspend_key", "suspend_node")
Response = Literal["end_sessions", "step_up", "lock_account", "hold_exports", "suspend_key", "suspend_node"]
_USER_RESPONSES: Final = frozenset({"end_sessions", "step_up", "lock_account", "hold_exports"})
MONITOR = Actor(kind=ActorKind.SYSTEM, id="medvault-monitor")


def parse_responses(entries: Sequence[str]) -> dict[str, tuple[Response, ...]]:
    """``["high=end_sessions,step_up", ...]`` → severity → responses; a typo is a ConfigError."""
    table: dict[str, tuple[Response, ...]] = {}
    for entry in entries:
        severity, sep, names = entry.partition("=")
        severity = severity.strip()
        if not sep or severity not in ("medium", "high", "critical"):
            raise ConfigError(
                f"[monitor] responses: {entry!r} must be SEVERITY=RESPONSE,…",
                hint="Severities: medium, high, critical. Responses: " + ", ".join(RESPONSES) + ".",
            )
        if severity in table:
            raise ConfigError(f"[monitor] responses: {severity} is given twice; list its responses once")
        chosen = [n.strip() for n in names.split(",") if n.strip()]
        unknown = [n for n in chosen if n not in RESPONSES]
        if unknown:
            raise ConfigError(
                f"[monitor] responses: unknown response {unknown[0]!r} for {severity}",
                hint="Known: " + ", ".join(RESPONSES) + ".",
            )
        table[severity] = tuple(cast(Response, n) for n in chosen)
    return table


SubjectKind = Literal["user", "apikey", "node", "system"]
_PREFIXES: Final[tuple[tuple[str, SubjectKind], ...]] = (
    ("apikey:", "apikey"),
    ("node:", "node"),
    ("system:", "system"),
)


def subject_kind(subject: str) -> SubjectKind:
    """Alerts name subjects as the monitor does: users plainly, others as ``apikey:NAME`` etc."""
    for prefix, kind in _PREFIXES:
        if subject.startswith(prefix):
            return kind
    return "user"


def alert_subject(actor: Actor, monitor_user: str) -> str:
    """Whom an alert names. The monitor names keys and nodes ``apikey:NAME``, ``node:NAME`` and
    people plainly; a sign-in name is typed by anyone, and "node:ct1" typed at /auth/token must
    not make the responses suspend node ct1 (or "apikey:…" a key). Account names hold no ':', so
    such a person is named ``user:…``: a user subject, answered with user responses (if any)."""
    if actor.kind is ActorKind.USER and monitor_user.startswith((*(p for p, _ in _PREFIXES), "user:")):
        return "user:" + monitor_user
    return monitor_user


def monitor_user(subject: str) -> str:
    """The monitor's name for an alert's subject (the inverse of :func:`alert_subject`)."""
    return subject.removeprefix("user:")


_DECODE = re.compile(r"%(25|5E)")


def ledger_subject(subject: str) -> str:
    """``subject`` as a ledger event's details can hold it. The ledger refuses "^" in details (a
    DICOM person name); sign-in names are typed by anyone, so "x^y" is escaped (%5E, and % as
    %25), never refused: a refused alert event would stop the monitor at that entry for good."""
    return subject.replace("%", "%25").replace("^", "%5E")


def subject_from_ledger(text: str) -> str:
    """The inverse of :func:`ledger_subject`."""
    return _DECODE.sub(lambda m: "%" if m.group(1) == "25" else "^", text)


def _applies(response: Response, subject: str) -> bool:
    kind = subject_kind(subject)
    if response in _USER_RESPONSES:
        return kind == "user"
    return (response == "suspend_key" and kind == "apikey") or (response == "suspend_node" and kind == "node")


def _account(subject: str) -> str:
    """The account a user subject names. The ledger keeps a sign-in's name as typed, the user
    store folds it (users.authenticate_password): " Dr-X" is dr-x's sign-in, so dr-x is held."""
    if subject_kind(subject) != "user":
        return subject
    return subject.strip().casefold()[:64] or subject  # "   " names no account, but is a subject


@dataclass(frozen=True)
class Applied:
    response: str
    subject: str
    hold: Hold | None
    skipped: str | None = None  # why it did not apply


class Responder:
    def __init__(
        self, *, table: Mapping[str, tuple[Response, ...]], alerts: AlertStore, users: UserStore
    ) -> None:
        self.table = table
        self.alerts = alerts
        self.users = users

    def respond(self, alert: AlertRecord, *, now: datetime) -> list[Applied]:
        """Carry out the responses of ``alert``'s severity on its subject."""
        done: list[Applied] = []
        for response in self.table.get(alert.severity, ()):
            if not _applies(response, alert.subject):
                done.append(Applied(response, alert.subject, None, "not for this kind of subject"))
                continue
            done.append(self._apply(response, alert, now))
        return done

    def _apply(self, response: Response, alert: AlertRecord, now: datetime) -> Applied:
        subject = _account(alert.subject)
        if response in ("end_sessions", "step_up", "lock_account"):
            try:
                self.users.revoke_tokens(subject, now=now)
            except Exception:  # noqa: S110 - not a local account (OIDC-only): the hold still applies
                pass
        if response == "end_sessions":
            return Applied(response, subject, None)
        hold = self.alerts.add_hold(response, subject, alert_id=alert.id, now=now)
        return Applied(response, subject, hold, None if hold else "already in force")


def response_event(alert: AlertRecord, applied: Applied, *, now: datetime) -> AuditEvent:
    details: dict[str, str | int] = {"alert_id": alert.id, "severity": alert.severity}
    if applied.hold is not None:
        details["hold_id"] = applied.hold.id
    return AuditEvent(
        kind=EventKind.ALERT,
        time=now,
        actor=MONITOR,
        action=f"monitor.response.{applied.response}",
        outcome=Outcome.SUCCESS if applied.skipped is None else Outcome.FAILURE,
        object=ObjectRef(type="subject", id=applied.subject[:200]),
        reason=applied.skipped,
        details=details,
    )


def lift_event(hold: Hold, actor: Actor, *, now: datetime) -> AuditEvent:
    return AuditEvent(
        kind=EventKind.ALERT,
        time=now,
        actor=actor,
        action=f"monitor.lift.{hold.kind}",
        outcome=Outcome.SUCCESS,
        object=ObjectRef(type="subject", id=hold.subject[:200]),
        details={"hold_id": hold.id, **({"alert_id": hold.alert_id} if hold.alert_id is not None else {})},
    )
