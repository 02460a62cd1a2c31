"""Every automatic response has its real effect on the stores that authenticate (users, API keys,
nodes, the policy) and is undone by lifting it; responses and liftings are ledger events."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import pytest
from tests.unit.alerting.conftest import Clock, alerts_of, burst, ledger_events, worker_for

from medvault.access import tokens as tk
from medvault.access.policy import Action, decide
from medvault.access.totp import step_at, totp_at
from medvault.alerting.officer import lift_hold
from medvault.alerting.responses import RESPONSES
from medvault.crypto.tls import create_ca, issue_client_certificate
from medvault.dimse.home import node_store
from medvault.dimse.permissions import decide_node
from medvault.errors import Conflict, NotFound
from medvault.home import OpenHome
from medvault.index.alerts import Hold
from medvault.index.users import AccountLocked
from medvault.ledger.events import Actor, ActorKind, Outcome

OFFICER = Actor(kind=ActorKind.USER, id="privacy-officer", address="10.0.0.2", auth="password+totp")
TRAINED = date.today() + timedelta(days=365)


PASSWORD = "correct horse battery staple 42"


@dataclass
class Person:
    name: str
    secret: str


def _person(opened: OpenHome, name: str, role: str = "radiologist") -> Person:
    """A user who changed the one-time password (with a one-time code two minutes ago)."""
    then = datetime.now(UTC) - timedelta(minutes=2)
    created = opened.users.add_user(name, roles=[role], now=then, training_expires=TRAINED)
    assert created.password is not None and created.enrolment is not None
    secret = created.enrolment.secret
    opened.users.change_password(
        name,
        old_password=created.password,
        new_password=PASSWORD,
        otp=totp_at(secret, step_at(then)),
        client="10.0.0.9",
        now=then,
    )
    return Person(name, secret)


def _sign_in(opened: OpenHome, person: Person, now: datetime) -> tk.TokenPair:
    """Password and second factor, as /auth/token checks them; a new token pair. A code is
    accepted once: successive sign-ins of a person are given times 31 s apart."""
    user = opened.users.authenticate_password(
        person.name, PASSWORD, totp_at(person.secret, step_at(now)), "10.0.0.9", now
    )
    return opened.users.issue_tokens(user, now=now)


def _respond(opened: OpenHome, subject: str, response: str, **burst_args: object) -> list[Hold]:
    """A failed sign-in burst about ``subject`` scored by a worker whose every severity answers
    with ``response``; the holds in force on the subject afterwards."""
    worker = worker_for(opened, responses=tuple(f"{s}={response}" for s in ("medium", "high", "critical")))
    burst(opened, subject, **burst_args)  # type: ignore[arg-type]
    assert worker.step().alerts > 0
    return opened.alerts.holds(subject=subject)


def _lift(opened: OpenHome, hold: Hold) -> Hold:
    return lift_hold(
        alerts=opened.alerts,
        index=opened.archive.index,
        ledger=opened.ledger,
        hold_id=hold.id,
        actor=OFFICER,
        now=datetime.now(UTC),
    )


def test_end_sessions_revokes_every_token_at_once_and_leaves_nothing_to_lift(opened: OpenHome) -> None:
    person = _person(opened, "dr-ended")
    now = datetime.now(UTC)
    pair = _sign_in(opened, person, now)
    assert opened.users.authenticate_token(pair.access_token, now=now) is not None
    assert _respond(opened, person.name, "end_sessions") == []
    assert opened.users.authenticate_token(pair.access_token, now=now) is None
    with pytest.raises(tk.InvalidToken):
        opened.users.refresh(pair.refresh_token, now=now)
    later = now + timedelta(seconds=31)
    assert (
        opened.users.authenticate_token(_sign_in(opened, person, later).access_token, now=later) is not None
    )
    events = ledger_events(opened, prefix="monitor.response.end_sessions")
    assert len(events) == len(alerts_of(opened, person.name))
    assert all(e.outcome is Outcome.SUCCESS and e.object and e.object.id == person.name for e in events)


def test_step_up_refuses_refresh_until_a_full_sign_in_lifts_it(opened: OpenHome) -> None:
    person = _person(opened, "dr-stepped")
    now = datetime.now(UTC)
    before = _sign_in(opened, person, now)
    (hold,) = _respond(opened, person.name, "step_up")
    assert hold.kind == "step_up" and hold.alert_id is not None
    assert opened.users.authenticate_token(before.access_token, now=now) is None  # sessions ended too
    # a pair that exists while the hold is in force (issued in a race with the alert) cannot be
    # refreshed: only a sign-in with both factors continues
    racing = opened.users.issue_tokens(opened.users.get(person.name), now=now)
    with pytest.raises(tk.InvalidToken):
        opened.users.refresh(racing.refresh_token, now=now)
    assert opened.alerts.is_held("step_up", person.name)
    # what /auth/token does after a full sign-in (api/account.py::_meet_step_up)
    lifted = opened.alerts.lift_all("step_up", person.name, by="sign-in", now=now)
    assert [h.id for h in lifted] == [hold.id]
    fresh = _sign_in(opened, person, now + timedelta(seconds=31))
    assert opened.users.refresh(fresh.refresh_token, now=now + timedelta(seconds=32))
    assert opened.alerts.lift_all("step_up", person.name, by="sign-in", now=now) == []


def test_lock_account_refuses_sign_in_and_every_token_until_an_officer_lifts_it(opened: OpenHome) -> None:
    person = _person(opened, "dr-locked")
    now = datetime.now(UTC)
    pair = _sign_in(opened, person, now)
    (hold,) = _respond(opened, person.name, "lock_account")
    assert opened.users.authenticate_token(pair.access_token, now=now) is None
    assert opened.users.principal(person.name, now=now) is None
    later = now + timedelta(seconds=31)
    with pytest.raises(AccountLocked):  # told only to someone who holds both factors
        _sign_in(opened, person, later)
    racing = opened.users.issue_tokens(opened.users.get(person.name), now=now)
    assert opened.users.authenticate_token(racing.access_token, now=now) is None
    with pytest.raises(tk.InvalidToken):
        opened.users.refresh(racing.refresh_token, now=now)

    lifted = _lift(opened, hold)
    assert lifted.lifted_by == OFFICER.id and lifted.lifted_at is not None
    even_later = later + timedelta(seconds=31)
    assert opened.users.authenticate_token(_sign_in(opened, person, even_later).access_token, now=even_later)
    assert opened.users.principal(person.name, now=even_later) is not None


def test_hold_exports_makes_the_policy_deny_de_identified_exports_for_that_principal(
    opened: OpenHome,
) -> None:
    held, free = _person(opened, "dr-held", "researcher"), _person(opened, "dr-free", "researcher")
    now = datetime.now(UTC)
    (hold,) = _respond(opened, held.name, "hold_exports")
    principal = opened.users.principal(held.name, now=now)
    assert principal is not None and principal.exports_held
    decision = decide(principal, Action.DEID_EXPORT)
    assert not decision.allowed and "held for review" in decision.reason
    other = opened.users.principal(free.name, now=now)
    assert other is not None and decide(other, Action.DEID_EXPORT).allowed
    # sign-in and tokens are untouched: only exports wait for the review
    assert opened.users.authenticate_token(_sign_in(opened, held, now).access_token, now=now) is not None

    _lift(opened, hold)
    principal = opened.users.principal(held.name, now=now)
    assert principal is not None and not principal.exports_held
    assert decide(principal, Action.DEID_EXPORT).allowed


def test_suspend_key_refuses_that_api_key_only(opened: OpenHome) -> None:
    key = opened.api_keys.create("nightly-export", role="viewer")
    other = opened.api_keys.create("viewer-2", role="viewer")
    (hold,) = _respond(opened, "apikey:nightly-export", "suspend_key", kind=ActorKind.APIKEY)
    assert hold.subject == "apikey:nightly-export"
    assert opened.api_keys.authenticate(key) is None
    assert opened.api_keys.authenticate(other) is not None
    _lift(opened, hold)
    assert opened.api_keys.authenticate(key) is not None


def test_suspend_node_refuses_that_node_until_lifted(opened: OpenHome) -> None:
    from medvault.dimse.permissions import DimseOperation

    nodes = node_store(opened)
    ca, ca_key = create_ca("site CA")
    cert, _ = issue_client_certificate(ca, ca_key, common_name="ct1")
    nodes.add("ct1", ae_title="CT1", host="10.1.1.1", port=104, permissions={"store"}, certificate_pem=cert)
    (hold,) = _respond(opened, "node:ct1", "suspend_node", kind=ActorKind.NODE)
    node = nodes.get("ct1")
    assert node.suspended
    refused = decide_node(node, DimseOperation.STORE, now=datetime.now(UTC))
    assert not refused.allowed and "suspended" in refused.reason
    _lift(opened, hold)
    node = nodes.get("ct1")
    assert not node.suspended and decide_node(node, DimseOperation.STORE, now=datetime.now(UTC)).allowed


@pytest.mark.parametrize(
    ("subject", "kind", "applies"),
    [
        ("dr-kinds", ActorKind.USER, {"end_sessions", "step_up", "lock_account", "hold_exports"}),
        ("apikey:kinds", ActorKind.APIKEY, {"suspend_key"}),
        ("node:kinds", ActorKind.NODE, {"suspend_node"}),
    ],
)
def test_responses_that_do_not_fit_the_subject_are_skipped_and_say_so(
    opened: OpenHome, subject: str, kind: ActorKind, applies: set[str]
) -> None:
    every = ",".join(RESPONSES)
    worker = worker_for(opened, responses=(f"medium={every}", f"high={every}", f"critical={every}"))
    burst(opened, subject, kind=kind)
    worker.step()
    first = alerts_of(opened, subject)[0]
    events = [
        e for e in ledger_events(opened, prefix="monitor.response.") if e.details["alert_id"] == first.id
    ]
    assert [e.action.removeprefix("monitor.response.") for e in events] == list(RESPONSES)
    done = {e.action.removeprefix("monitor.response.") for e in events if e.outcome is Outcome.SUCCESS}
    assert done == applies
    skipped = [e for e in events if e.outcome is not Outcome.SUCCESS]
    assert all(e.reason == "not for this kind of subject" for e in skipped)
    assert {h.kind for h in opened.alerts.holds(subject=subject)} == applies - {"end_sessions"}
    # a later alert finds its holds in force already: said, not doubled
    later = [
        e for e in ledger_events(opened, prefix="monitor.response.") if e.details["alert_id"] != first.id
    ]
    assert later and all("hold_id" not in e.details for e in later)
    assert len(opened.alerts.holds(subject=subject)) == len(applies - {"end_sessions"})


def test_each_response_and_each_lifting_is_a_ledger_event_and_lifting_twice_is_a_conflict(
    opened: OpenHome,
) -> None:
    _person(opened, "dr-ledgered")
    (hold,) = _respond(opened, "dr-ledgered", "lock_account")
    (response,) = [e for e in ledger_events(opened, prefix="monitor.response.") if "hold_id" in e.details]
    assert response.action == "monitor.response.lock_account"
    assert response.details["hold_id"] == hold.id and response.details["alert_id"] == hold.alert_id
    assert response.actor.id == "medvault-monitor"

    _lift(opened, hold)
    (lift,) = ledger_events(opened, prefix="monitor.lift.")
    assert lift.action == "monitor.lift.lock_account" and lift.actor == OFFICER
    assert lift.details == {"hold_id": hold.id, "alert_id": hold.alert_id}
    size = opened.ledger.size
    with pytest.raises(Conflict, match="lifted already"):
        _lift(opened, hold)
    with pytest.raises(NotFound):
        _lift(opened, Hold(987654, "lock_account", "x", None, datetime.now(UTC), None, None))
    assert opened.ledger.size == size  # a refused lifting ledgers nothing
    assert opened.alerts.holds(subject="dr-ledgered") == []
    assert [h.id for h in opened.alerts.holds(active=False, subject="dr-ledgered")] == [hold.id]


def test_responses_are_carried_out_once_even_by_a_restarted_worker(opened: OpenHome) -> None:
    _respond(opened, "dr-once", "lock_account")
    count = len(ledger_events(opened, prefix="monitor.response."))
    worker = worker_for(opened, responses=("medium=lock_account",))
    worker.step()  # re-scores from the start (never saved): alerts are known, responses done
    assert len(ledger_events(opened, prefix="monitor.response.")) == count
    assert all(a.responded for a in alerts_of(opened))


def test_a_sign_in_typed_in_other_letter_case_holds_the_account_it_names(opened: OpenHome) -> None:
    """Sign-in folds the name's case (users.authenticate_password); so must the responses, or a
    burst against "Dr-Case" leaves the account dr-case untouched."""
    person = _person(opened, "dr-case")
    now = datetime.now(UTC)
    pair = _sign_in(opened, person, now)
    _respond(opened, " Dr-Case", "lock_account")
    assert opened.users.authenticate_token(pair.access_token, now=now) is None
    assert opened.alerts.is_held("lock_account", "dr-case")
    with pytest.raises(AccountLocked):
        _sign_in(opened, person, now + timedelta(seconds=31))


@pytest.mark.parametrize("name", ["   ", "\t", "\u200b"])
def test_a_blank_sign_in_name_does_not_hold_up_the_responses_to_everyone_else(
    opened: OpenHome, name: str
) -> None:
    """/auth/token ledgers the name as typed, blanks included: its response events must still be
    writable, or every later alert would wait for ever behind it."""
    person = _person(opened, "dr-after-blank")
    now = datetime.now(UTC)
    pair = _sign_in(opened, person, now)
    worker = worker_for(
        opened, responses=("medium=end_sessions", "high=end_sessions", "critical=end_sessions")
    )
    burst(opened, name)
    burst(opened, person.name, address="10.44.0.1")
    worker.step()
    assert all(a.responded for a in alerts_of(opened))
    assert opened.users.authenticate_token(pair.access_token, now=now) is None


def test_one_alert_whose_responses_fail_does_not_hold_up_the_others(
    opened: OpenHome, clock: Clock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from medvault.errors import InvalidInput

    person = _person(opened, "dr-not-held-up")
    worker = worker_for(
        opened, clock, responses=("medium=lock_account", "high=lock_account", "critical=lock_account")
    )
    burst(opened, "dr-poison")
    burst(opened, person.name, address="10.45.0.1")
    real = worker.responder.respond
    broken = {"dr-poison"}

    def respond(alert: object, *, now: datetime) -> object:
        if getattr(alert, "subject", None) in broken:
            raise InvalidInput("event object id must be a non-empty string")
        return real(alert, now=now)  # type: ignore[arg-type]

    monkeypatch.setattr(worker.responder, "respond", respond)
    with caplog.at_level(logging.ERROR, logger="medvault.server"):
        worker.step()
    assert "responses failed (retried): InvalidInput" in caplog.text
    assert opened.alerts.is_held("lock_account", person.name)
    assert not any(a.responded for a in alerts_of(opened, "dr-poison"))
    broken.clear()
    clock.advance(6)  # unfinished responses are swept every 5 s
    worker.step()
    assert all(a.responded for a in alerts_of(opened)) and opened.alerts.is_held("lock_account", "dr-poison")


def test_a_password_spray_is_answered_in_one_step_each_response_ledgered_once(opened: OpenHome) -> None:
    """Fifty accounts, ten failures each, in one step: every alert's responses carried out and
    ledgered once, every hold once per account."""
    worker = worker_for(opened)
    start = datetime.now(UTC)
    for j in range(50):
        burst(opened, f"dr-spray-{j}", start=start, address=f"10.66.{j}.1")
    worker.step()
    alerts = alerts_of(opened)
    assert len(alerts) == 250 and all(a.responded for a in alerts)
    responses = ledger_events(opened, prefix="monitor.response.")
    per_alert = {(e.details["alert_id"], e.action) for e in responses}
    assert len(per_alert) == len(responses)  # none twice
    assert {a.id for a in alerts if a.severity != "medium"} == {int(e.details["alert_id"]) for e in responses}
    holds = opened.alerts.holds()
    assert len({(h.kind, h.subject) for h in holds}) == len(holds) == 100  # step_up, hold_exports each


def test_a_sign_in_name_that_looks_like_a_key_or_a_node_suspends_neither(opened: OpenHome) -> None:
    """Anyone can type "node:ct1" or "apikey:nightly" as a user name at /auth/token: the default
    critical responses must not suspend that node or that key."""
    nodes = node_store(opened)
    ca, ca_key = create_ca("site CA")
    cert, _ = issue_client_certificate(ca, ca_key, common_name="ct1")
    nodes.add("ct1", ae_title="CT1", host="10.1.1.1", port=104, permissions={"store"}, certificate_pem=cert)
    key = opened.api_keys.create("nightly", role="viewer")
    worker = worker_for(opened)  # the defaults: critical suspends keys and nodes
    burst(opened, "node:ct1")  # a person's failed sign-ins, as /auth/token ledgers them
    burst(opened, "apikey:nightly", address="10.3.3.3")
    worker.step()
    assert {a.subject for a in alerts_of(opened)} == {"user:node:ct1", "user:apikey:nightly"}
    assert not nodes.get("ct1").suspended
    assert opened.api_keys.authenticate(key) is not None
    assert {h.subject for h in opened.alerts.holds()} <= {"user:node:ct1", "user:apikey:nightly"}
    # the node's own refused associations still suspend it
    burst(opened, "node:ct1", kind=ActorKind.NODE, address="10.3.4.4")
    worker.step()
    assert nodes.get("ct1").suspended
