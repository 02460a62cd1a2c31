"""A step-up hold (a monitor response, medvault.alerting.responses) met over real HTTPS: while it
is in force a refresh token is refused, and a full sign-in with the second factor at /auth/token
lifts it, ledgered as the user's own ``monitor.lift.step_up``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from medvault.access.totp import step_at, totp_at
from medvault.home import open_home
from medvault.ledger.events import ActorKind, parse_event
from tests.conftest import PASSPHRASE, start_server
from tests.integration.test_access_routes import anonymous, quiet_home
from tests.unit.alerting.conftest import burst, worker_for

pytestmark = pytest.mark.integration

NAME = "dr-step-up"
PASSWORD = "a long pass phrase for the step-up test"


def test_a_step_up_hold_refuses_refresh_until_a_full_sign_in_lifts_it(tmp_path: Path) -> None:
    home = quiet_home(tmp_path / "home")
    # The server's own monitor is off: a sign-in right after a burst alerts again and its responses
    # would end the session it just opened (a finding of its own, in the report); here the hold
    # comes from a worker stepped by the test, and the server only meets it.
    home.set_config("monitor", "enabled", "false")
    then = datetime.now(UTC) - timedelta(minutes=2)
    opened = open_home(home.root, PASSPHRASE)
    try:
        created = opened.users.add_user(NAME, roles=["radiologist"], now=then, training_expires=None)
        assert created.password is not None and created.enrolment is not None
        secret = created.enrolment.secret
        opened.users.change_password(
            NAME,
            old_password=created.password,
            new_password=PASSWORD,
            otp=totp_at(secret, step_at(then)),
            client="127.0.0.1",
            now=then,
        )
        worker = worker_for(opened)  # the default responses: high ends sessions and steps up
        burst(opened, NAME)
        worker.step()
        worker.save()
        holds = {h.kind: h for h in opened.alerts.holds(subject=NAME)}
        assert set(holds) == {"step_up", "hold_exports"}  # the burst reached critical
        hold = holds["step_up"]
        # a pair that exists while the hold is in force (issued in a race with the response)
        stepped = opened.users.issue_tokens(opened.users.get(NAME), now=datetime.now(UTC))
    finally:
        opened.close()

    server = start_server(home)
    try:
        with anonymous(server, source="127.0.0.71") as client:
            refused = client.post(
                "/auth/token", data={"grant_type": "refresh_token", "refresh_token": stepped.refresh_token}
            )
            assert refused.status_code == 401, refused.text
            typo = client.post(
                "/auth/token", data={"username": f" {NAME.upper()} ", "password": "not it", "otp": "1"}
            )
            assert typo.status_code == 401, typo.text
            signed_in = client.post(
                "/auth/token",
                data={
                    "grant_type": "password",
                    "username": NAME,
                    "password": PASSWORD,
                    "otp": totp_at(secret, step_at(datetime.now(UTC))),
                },
            )
            assert signed_in.status_code == 200, signed_in.text
            pair = signed_in.json()
            renewed = client.post(
                "/auth/token", data={"grant_type": "refresh_token", "refresh_token": pair["refresh_token"]}
            )
            assert renewed.status_code == 200, renewed.text
    finally:
        server.stop()

    opened = open_home(home.root, PASSPHRASE)
    try:
        # the sign-in met the step-up only: held exports wait for an officer
        assert [h.kind for h in opened.alerts.holds(subject=NAME)] == ["hold_exports"]
        (lifted,) = [h for h in opened.alerts.holds(active=False, subject=NAME) if h.lifted_at]
        assert lifted.id == hold.id and lifted.lifted_by and "sign-in" in lifted.lifted_by
        events = [parse_event(leaf) for leaf in opened.ledger.entries(0, opened.ledger.size)]
    finally:
        opened.close()
    # the refused refresh is ledgered (the monitor sees replayed or held refresh tokens) ...
    (refresh,) = [e for e in events if e.action == "auth.refresh"]
    assert refresh.outcome.value == "denied" and refresh.actor.auth == "refresh_token"
    # ... and a sign-in name is ledgered as the account it means, never as typed
    typed, signed = [e for e in events if e.action == "auth.token"][-2:]  # after the burst's
    assert (typed.outcome.value, signed.outcome.value) == ("denied", "success")
    assert typed.actor.id == signed.actor.id == NAME
    (lift,) = [e for e in events if e.action == "monitor.lift.step_up"]
    assert lift.actor.kind is ActorKind.USER and lift.actor.id == NAME
    assert lift.details["hold_id"] == hold.id
