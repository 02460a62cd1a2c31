"""UserStore against a real SQLite file: accounts, sign-in, MFA, lockout, tokens, break-glass."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from tests.unit.access.conftest import NOW, TRAINED, SpyHasher

from medvault.access import totp
from medvault.access.lockout import TooManyAttempts
from medvault.access.passwords import WeakPassword
from medvault.access.policy import (
    OBLIGATION_BREAK_GLASS,
    Action,
    Context,
    DecisionPoint,
    MemoryAuditSink,
    Resource,
    decide,
)
from medvault.access.tokens import InvalidToken
from medvault.crypto.fields import FieldCipher
from medvault.errors import Conflict, Forbidden, InvalidInput, NotFound
from medvault.index.users import BadCredentials, NewUser, UserStore
from medvault.index.users_schema import users as users_table

NEWPW = "glacier-violet-teapot-42"
CLIENT = "192.0.2.7"


def code(new: NewUser, at=NOW) -> str:  # type: ignore[no-untyped-def]
    assert new.enrolment is not None
    return totp.totp_at(new.enrolment.secret, totp.step_at(at))


def earlier_code(new: NewUser) -> str:
    """The code of the step before NOW: accepted at NOW (±1 step), and leaves NOW's code unused."""
    return code(new, NOW - timedelta(seconds=30))


def signed_up(store: UserStore, name: str = "alice", roles: tuple[str, ...] = ("radiologist",)) -> NewUser:
    """A user who has replaced the one-time password."""
    new = store.add_user(name, roles=roles, now=NOW, training_expires=TRAINED)
    assert new.password is not None
    store.change_password(
        name, old_password=new.password, new_password=NEWPW, otp=earlier_code(new), client=CLIENT, now=NOW
    )
    return new


def test_add_user_returns_one_time_password_and_enrolment(store: UserStore, index) -> None:  # type: ignore[no-untyped-def]
    new = store.add_user("alice", roles=["radiologist"], now=NOW)
    assert new.password and len(new.password) >= 20 and new.enrolment is not None
    assert new.user.must_change_password and new.user.mfa_enrolled and new.user.mfa_required
    assert new.password not in repr(new)
    with index.engine.connect() as conn:
        row = conn.execute(users_table.select()).one()
    assert row.password_hash.startswith("$argon2id$")
    assert new.enrolment.secret.encode() not in row.totp_secret  # encrypted
    assert store.recovery_codes_left("alice") == 10
    with pytest.raises(Conflict):
        store.add_user("alice", roles=["radiologist"], now=NOW)
    with pytest.raises(InvalidInput, match="unknown role"):
        store.add_user("bob", roles=["wizard"], now=NOW)
    with pytest.raises(InvalidInput, match="user name"):
        store.add_user("Bob Smith", roles=["radiologist"], now=NOW)
    with pytest.raises(InvalidInput, match="at least one role"):
        store.add_user("bob", roles=[], now=NOW)


def test_first_sign_in_must_change_password(store: UserStore) -> None:
    new = store.add_user("alice", roles=["radiologist"], now=NOW, training_expires=TRAINED)
    assert new.password is not None
    user = store.authenticate_password("alice", new.password, code(new), CLIENT, NOW)
    pair = store.issue_tokens(user, now=NOW)
    principal = store.authenticate_token(pair.access_token, now=NOW)
    assert principal is not None and principal.must_change_password
    assert not decide(principal, Action.STUDY_READ, None, Context(now=NOW)).allowed
    # Each attempt uses (and so spends) a fresh TOTP step, also the one refused for a weak password.
    with pytest.raises(WeakPassword, match="common"):
        store.change_password(
            "alice",
            old_password=new.password,
            new_password="password1234",
            otp=code(new, NOW + timedelta(seconds=30)),
            client=CLIENT,
            now=NOW,
        )
    with pytest.raises(BadCredentials):  # the right old password alone changes nothing
        store.change_password(
            "alice", old_password=new.password, new_password=NEWPW, otp="", client=CLIENT, now=NOW
        )
    store.change_password(
        "alice",
        old_password=new.password,
        new_password=NEWPW,
        otp=code(new, NOW + timedelta(seconds=60)),
        client=CLIENT,
        now=NOW + timedelta(seconds=30),
    )
    assert store.authenticate_token(pair.access_token, now=NOW) is None  # password change revokes
    later = NOW + timedelta(seconds=90)
    user = store.authenticate_password("alice", NEWPW, code(new, later), CLIENT, later)
    principal = store.authenticate_token(store.issue_tokens(user, now=later).access_token, now=later)
    assert principal is not None and not principal.must_change_password
    assert principal.human and principal.method == "token" and principal.roles == {"radiologist"}


def test_totp_code_accepted_once(store: UserStore) -> None:
    new = signed_up(store)
    store.authenticate_password("alice", NEWPW, code(new), CLIENT, NOW)
    with pytest.raises(BadCredentials):
        store.authenticate_password("alice", NEWPW, code(new), CLIENT, NOW + timedelta(seconds=5))
    assert new.enrolment is not None
    previous = totp.totp_at(new.enrolment.secret, totp.step_at(NOW) - 1)
    with pytest.raises(BadCredentials):  # an older step than the last used one
        store.authenticate_password("alice", NEWPW, previous, CLIENT, NOW)
    later = NOW + timedelta(seconds=60)
    ahead = totp.totp_at(new.enrolment.secret, totp.step_at(later) + 1)  # clock skew: one step ahead
    store.authenticate_password("alice", NEWPW, ahead, CLIENT, later)
    with pytest.raises(BadCredentials):
        store.authenticate_password("alice", NEWPW, None, CLIENT, later + timedelta(minutes=5))


def test_recovery_codes_single_use(store: UserStore) -> None:
    new = signed_up(store)
    assert new.enrolment is not None
    rc = new.enrolment.recovery_codes[3]
    store.authenticate_password("alice", NEWPW, rc.upper(), CLIENT, NOW)
    assert store.recovery_codes_left("alice") == 9
    with pytest.raises(BadCredentials):
        store.authenticate_password("alice", NEWPW, rc, CLIENT, NOW)
    enrolment = store.reset_mfa("alice", now=NOW)
    with pytest.raises(BadCredentials):  # old codes die with a reset
        store.authenticate_password("alice", NEWPW, new.enrolment.recovery_codes[4], CLIENT, NOW)
    store.authenticate_password("alice", NEWPW, enrolment.recovery_codes[0], CLIENT, NOW)


def test_no_user_enumeration(store: UserStore, hasher: SpyHasher) -> None:
    signed_up(store)
    errors: list[tuple[type, str, int]] = []
    for name, password in [
        ("nobody", NEWPW),
        ("alice", "wrong-password-123"),
        ("ALICE ", "wrong-password-123"),
    ]:
        hasher.verified.clear()
        with pytest.raises(BadCredentials) as info:
            store.authenticate_password(name, password, "000000", f"198.51.100.{len(errors)}", NOW)
        errors.append((type(info.value), str(info.value), info.value.http_status))
        assert len(hasher.verified) == 1, "an argon2 verify runs for every attempt"
        assert hasher.verified[0].startswith("$argon2id$")
    assert len(set(errors)) == 1
    # a disabled account answers the same
    store.disable("alice", now=NOW)
    with pytest.raises(BadCredentials) as info:
        store.authenticate_password("alice", NEWPW, "000000", "198.51.100.9", NOW)
    assert str(info.value) == errors[0][1]


def test_lockout_per_account_with_backoff(store: UserStore) -> None:
    new = signed_up(store)
    t = NOW
    for i in range(5):
        with pytest.raises(BadCredentials):
            store.authenticate_password("alice", "wrong-password-123", None, f"203.0.113.{i}", t)
    with pytest.raises(TooManyAttempts) as info:  # even the right password is refused now
        store.authenticate_password("alice", NEWPW, code(new), "203.0.113.99", t + timedelta(seconds=10))
    assert info.value.retry_after == 50 and info.value.http_status == 429
    t += timedelta(seconds=61)
    with pytest.raises(BadCredentials):  # 6th failure -> 2 minutes
        store.authenticate_password("alice", "wrong-password-123", None, "203.0.113.50", t)
    with pytest.raises(TooManyAttempts) as info:
        store.authenticate_password("alice", NEWPW, code(new, t), "203.0.113.99", t + timedelta(seconds=61))
    assert info.value.retry_after == 59
    t += timedelta(seconds=121)
    store.authenticate_password("alice", NEWPW, code(new, t), "203.0.113.99", t)  # success resets the account
    with pytest.raises(BadCredentials):
        store.authenticate_password("alice", "wrong-password-123", None, "203.0.113.50", t)


def test_lockout_per_client_and_unknown_names(store: UserStore) -> None:
    new = signed_up(store)
    for i in range(5):  # password spraying from one address over made-up names
        with pytest.raises(BadCredentials):
            store.authenticate_password(f"ghost{i}", "wrong-password-123", None, "203.0.113.1", NOW)
    with pytest.raises(TooManyAttempts):
        store.authenticate_password("alice", NEWPW, code(new), "203.0.113.1", NOW)
    store.authenticate_password("alice", NEWPW, code(new), "203.0.113.2", NOW)  # another address is fine
    for _ in range(5):
        with pytest.raises(BadCredentials):
            store.authenticate_password(
                "ghost9", "wrong-password-123", None, "203.0.113.3", NOW + timedelta(hours=1)
            )
    with pytest.raises(TooManyAttempts):  # unknown names lock exactly like real ones
        store.authenticate_password("ghost9", "x", None, "203.0.113.4", NOW + timedelta(hours=1))
    assert store.prune_failures(now=NOW + timedelta(days=3)) >= 1


def test_tokens_refresh_rotation_and_reuse(store: UserStore) -> None:
    new = signed_up(store)
    user = store.authenticate_password("alice", NEWPW, code(new), CLIENT, NOW)
    pair = store.issue_tokens(user, now=NOW)
    assert pair.access_token.startswith("mva_") and pair.expires_in == 900
    assert store.authenticate_token(pair.refresh_token, now=NOW) is None  # wrong kind
    assert store.authenticate_token(pair.access_token, now=NOW + timedelta(minutes=15)) is None  # expired
    second = store.refresh(pair.refresh_token, now=NOW + timedelta(minutes=10))
    assert store.authenticate_token(second.access_token, now=NOW + timedelta(minutes=11)) is not None
    with pytest.raises(InvalidToken):  # reuse of the rotated token ...
        store.refresh(pair.refresh_token, now=NOW + timedelta(minutes=12))
    # ... revokes the whole family
    assert store.authenticate_token(second.access_token, now=NOW + timedelta(minutes=12)) is None
    with pytest.raises(InvalidToken):
        store.refresh(second.refresh_token, now=NOW + timedelta(minutes=12))
    with pytest.raises(InvalidToken):
        store.refresh("mvr_made-up", now=NOW)
    with pytest.raises(InvalidToken):
        store.refresh(pair.access_token, now=NOW)


def test_session_ends_after_twelve_hours(store: UserStore) -> None:
    new = signed_up(store)
    pair = store.issue_tokens(store.authenticate_password("alice", NEWPW, code(new), CLIENT, NOW), now=NOW)
    t = NOW
    for _ in range(5):
        t += timedelta(hours=2)
        pair = store.refresh(pair.refresh_token, now=t)
    with pytest.raises(InvalidToken):
        store.refresh(pair.refresh_token, now=NOW + timedelta(hours=12))


@pytest.mark.parametrize("how", ["logout", "disable", "change_password", "reset_mfa", "reset_password"])
def test_revocation_of_all_tokens(store: UserStore, how: str) -> None:
    new = signed_up(store)
    user = store.authenticate_password("alice", NEWPW, code(new), CLIENT, NOW)
    a = store.issue_tokens(user, now=NOW)
    b = store.issue_tokens(user, now=NOW)  # a second session (another device)
    match how:
        case "logout":
            assert store.logout(a.access_token, now=NOW) == 4
        case "disable":
            store.disable("alice", now=NOW)
        case "change_password":
            store.change_password(
                "alice",
                old_password=NEWPW,
                new_password=NEWPW + "!",
                otp=code(new, NOW + timedelta(seconds=30)),
                client=CLIENT,
                now=NOW,
            )
        case "reset_mfa":
            store.reset_mfa("alice", now=NOW)
        case _:
            store.reset_password("alice", now=NOW)
    for pair in (a, b):
        assert store.authenticate_token(pair.access_token, now=NOW) is None
        with pytest.raises(InvalidToken):
            store.refresh(pair.refresh_token, now=NOW)
    if how == "disable":
        store.enable("alice")
        assert store.authenticate_token(a.access_token, now=NOW) is None  # stays revoked


def test_admin_operations(store: UserStore) -> None:
    signed_up(store)
    store.add_user("bob", roles=["auditor"], now=NOW)
    assert [u.name for u in store.list()] == ["alice", "bob"]
    assert store.set_roles("bob", ["auditor", "researcher"]).roles == {"auditor", "researcher"}
    assert store.set_training("bob", date(2030, 12, 31)).training_expires == date(2030, 12, 31)
    g = store.grant("alice", kind="department", value="cardio", now=NOW, expires_at=NOW + timedelta(days=1))
    store.grant("alice", kind="study", value="1.2.3", now=NOW)
    assert [(r.kind, r.value) for r in store.list_grants("alice")] == [
        ("department", "cardio"),
        ("study", "1.2.3"),
    ]
    assert g.expires_at == NOW + timedelta(days=1)
    principal = store.principal("alice", now=NOW)
    assert principal is not None and len(principal.grants) == 2
    assert decide(
        principal,
        Action.STUDY_READ,
        Resource(study_uid="9", departments=frozenset({"cardio"})),
        Context(now=NOW),
    ).allowed
    later = store.principal("alice", now=NOW + timedelta(days=2))
    assert later is not None and [gr.kind for gr in later.grants] == ["study"]  # expired grant dropped
    assert store.revoke_grant("alice", kind="study", value="1.2.3") == 1
    with pytest.raises(NotFound):
        store.revoke_grant("alice", kind="study", value="1.2.3")
    with pytest.raises(NotFound):
        store.get("carol")
    store.disable("bob", now=NOW)
    assert store.principal("bob", now=NOW) is None
    with pytest.raises(InvalidInput):
        store.grant("alice", kind="planet", value="x", now=NOW)  # type: ignore[arg-type]


def test_training_gate_through_the_store(store: UserStore) -> None:
    new = store.add_user("carol", roles=["radiologist"], now=NOW, training_expires=date(2030, 3, 1))
    store.grant("carol", kind="site", value="*", now=NOW)
    assert new.password is not None
    store.change_password(
        "carol", old_password=new.password, new_password=NEWPW, otp=earlier_code(new), client=CLIENT, now=NOW
    )
    principal = store.principal("carol", now=NOW)
    d = decide(principal, Action.STUDY_READ, Resource(study_uid="1"), Context(now=NOW))
    assert not d.allowed and "training expired on 2030-03-01" in d.reason
    store.set_training("carol", date(2031, 3, 1))
    assert decide(
        store.principal("carol", now=NOW), Action.STUDY_READ, Resource(study_uid="1"), Context(now=NOW)
    ).allowed


def test_break_glass_sessions(store: UserStore) -> None:
    signed_up(store)
    signed_up(store, "tech", ("technologist",))
    sink = MemoryAuditSink()
    pdp = DecisionPoint(sink=sink)
    alice = store.principal("alice", now=NOW)
    assert alice is not None
    study = Resource(study_uid="1.2.840.99")
    assert decide(alice, Action.STUDY_READ, study, Context(now=NOW)).conceal
    with pytest.raises(Forbidden, match="reason"):
        store.open_break_glass(alice, study_uid="1.2.840.99", reason="x", now=NOW, pdp=pdp)
    session = store.open_break_glass(
        alice, study_uid="1.2.840.99", reason="trauma patient, unconscious", now=NOW, pdp=pdp, client=CLIENT
    )
    assert session.expires_at == NOW + timedelta(hours=4)
    assert [e.allowed for e in sink.events] == [False, True]
    assert sink.events[1].obligations == (OBLIGATION_BREAK_GLASS,) and sink.events[1].client == CLIENT
    alice = store.principal("alice", now=NOW + timedelta(hours=1))
    assert alice is not None
    d = decide(alice, Action.STUDY_READ, study, Context(now=NOW + timedelta(hours=1)))
    assert d.allowed and OBLIGATION_BREAK_GLASS in d.obligations
    expired = store.principal("alice", now=NOW + timedelta(hours=4))
    assert (
        expired is not None
        and decide(expired, Action.STUDY_READ, study, Context(now=NOW + timedelta(hours=4))).conceal
    )
    tech = store.principal("tech", now=NOW)
    assert tech is not None
    with pytest.raises(Forbidden, match=r"do not grant breakglass\.use"):
        store.open_break_glass(
            tech, study_uid="1.2.840.99", reason="trauma patient, unconscious", now=NOW, pdp=pdp
        )
    listed = store.list_break_glass(since=NOW - timedelta(days=1))
    assert [(s.username, s.study_uid, s.reason) for s in listed] == [
        ("alice", "1.2.840.99", "trauma patient, unconscious")
    ]
    assert store.list_break_glass(since=NOW + timedelta(minutes=1)) == []


def test_external_accounts_have_no_password(store: UserStore) -> None:
    new = store.add_user("dana", roles=["auditor"], now=NOW, external=True)
    assert new.password is None and new.enrolment is None
    with pytest.raises(BadCredentials):
        store.authenticate_password("dana", "anything-at-all-1", None, CLIENT, NOW)
    with pytest.raises(InvalidInput):
        store.reset_mfa("dana", now=NOW)


def test_totp_secret_is_bound_to_the_key(index, store: UserStore) -> None:  # type: ignore[no-untyped-def]
    new = signed_up(store)
    other = UserStore(index.engine, cipher=FieldCipher(b"\x01" * 32), hasher=SpyHasher())
    from medvault.errors import IntegrityError

    with pytest.raises(IntegrityError):
        other.authenticate_password("alice", NEWPW, code(new), CLIENT, NOW)


def test_times_must_be_aware(store: UserStore) -> None:
    with pytest.raises(InvalidInput, match="timezone"):
        store.add_user("erin", roles=["auditor"], now=NOW.replace(tzinfo=None))
