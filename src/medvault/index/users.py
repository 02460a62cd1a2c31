"""People who sign in: accounts, MFA, grants, break-glass sessions, tokens and lockout counters.

The rules live in :mod:`medvault.access` (pure); this module keeps the state in the index database
(SQLAlchemy Core; writers take ``BEGIN IMMEDIATE`` on SQLite) and runs the sign-in flows:

* :meth:`UserStore.authenticate_password` -> :class:`User` (password + TOTP or recovery code);
  one error, :class:`BadCredentials`, for an unknown user, a disabled one, a wrong password and a
  wrong code, and an argon2 verify runs in every case; :class:`TooManyAttempts` while locked.
* :meth:`UserStore.issue_tokens` / :meth:`refresh` / :meth:`authenticate_token` / :meth:`logout`.

Every attempt is counted *before* the password is checked (then undone on success), so parallel
guesses cannot slip past the lockout.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, Protocol

from argon2 import PasswordHasher
from sqlalchemy import Engine, bindparam, delete, insert, or_, select, update
from sqlalchemy.engine import Connection

from medvault.access import passwords as pw
from medvault.access import tokens as tk
from medvault.access import totp
from medvault.access.lockout import DEFAULT_LOCKOUT, Counter, LockoutPolicy, TooManyAttempts
from medvault.access.oidc import OidcIdentity
from medvault.access.policy import (
    GRANT_KINDS,
    ROLE_PERMISSIONS,
    Action,
    BreakGlassGrant,
    Context,
    DecisionPoint,
    Grant,
    GrantKind,
    Principal,
    Resource,
    enforce,
)
from medvault.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthenticated
from medvault.index import users_schema as u
from medvault.index.alerts_schema import security_holds
from medvault.index.holds import held
from medvault.index.schema import metadata
from medvault.index.training import TABLES as TRAINING_TABLES
from medvault.index.training import training_of

__all__ = [
    "BREAK_GLASS_TTL",
    "BadCredentials",
    "BreakGlassSession",
    "FieldCipherLike",
    "GrantRecord",
    "NewUser",
    "User",
    "UserStore",
]

BREAK_GLASS_TTL: Final = timedelta(hours=4)
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def account_name(typed: str) -> str:
    """The account a typed sign-in name means: names are stored folded, at most 64 characters.
    Used for the lookup and for what is ledgered, so the ledger never holds a name as typed."""
    return typed.strip().casefold()[:64]


_TABLES = [
    u.users,
    u.user_recovery_codes,
    u.user_grants,
    u.break_glass_sessions,
    u.auth_tokens,
    u.auth_failures,
    security_holds,  # consulted on every authentication (medvault.index.holds)
    *TRAINING_TABLES,  # the training gate, on every authentication (medvault.index.training)
]
# Every request from a signed-in user runs these: built once (see medvault.index.store).
_TOKEN_BY_HASH = select(u.auth_tokens).where(u.auth_tokens.c.token_hash == bindparam("token_hash"))
_USER_BY_ID = select(u.users).where(u.users.c.id == bindparam("user_id"))
_GRANTS_OF_USER = select(u.user_grants).where(u.user_grants.c.user_id == bindparam("user_id"))
_LIVE_BREAK_GLASS_OF_USER = select(
    u.break_glass_sessions.c.study_uid, u.break_glass_sessions.c.expires_at
).where(
    u.break_glass_sessions.c.user_id == bindparam("user_id"),
    u.break_glass_sessions.c.expires_at > bindparam("now"),
)


class FieldCipherLike(Protocol):
    def encrypt(self, plaintext: bytes, *, context: bytes) -> bytes: ...
    def decrypt(self, blob: bytes, *, context: bytes) -> bytes: ...


class AccountLocked(Forbidden):
    def __init__(self) -> None:
        super().__init__(
            "this account is locked after a security alert",
            hint="A privacy officer must review the alert and lift the hold (`medvault alerts holds`).",
        )


class BadCredentials(Unauthenticated):
    """The one answer to every failed sign-in (no hint which part was wrong)."""

    def __init__(self) -> None:
        super().__init__("the user name, password or one-time code is wrong")


@dataclass(frozen=True)
class User:
    id: int
    name: str
    roles: frozenset[str]
    disabled: bool
    external: bool
    created_at: datetime
    training_expires: date | None
    must_change_password: bool
    mfa_required: bool
    mfa_enrolled: bool
    referring_id: str | None


@dataclass(frozen=True, repr=False)
class NewUser:
    """What ``add_user`` hands back once: the one-time password and the TOTP enrolment."""

    user: User
    password: str | None  # None for an external (OIDC-only) account
    enrolment: totp.Enrolment | None

    def __repr__(self) -> str:
        return f"NewUser({self.user.name!r}, <secrets redacted>)"


@dataclass(frozen=True)
class GrantRecord:
    id: int
    username: str
    kind: str
    value: str
    created_at: datetime
    expires_at: datetime | None


@dataclass(frozen=True)
class BreakGlassSession:
    id: int
    username: str
    study_uid: str
    reason: str
    opened_at: datetime
    expires_at: datetime


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise InvalidInput("times must be timezone-aware")
    return value.astimezone(UTC)


def _aware(value: datetime | None) -> datetime | None:
    # SQLite returns naive datetimes; they were written in UTC.
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _must(value: datetime | None) -> datetime:
    out = _aware(value)
    assert out is not None
    return out


class UserStore:
    def __init__(
        self,
        engine: Engine,
        *,
        cipher: FieldCipherLike,
        hasher: PasswordHasher | None = None,
        lockout: LockoutPolicy = DEFAULT_LOCKOUT,
        roles: Mapping[str, frozenset[Action]] = ROLE_PERMISSIONS,
        issuer: str = totp.ISSUER,
        break_glass_ttl: timedelta = BREAK_GLASS_TTL,
    ) -> None:
        self.engine = engine
        self._writer = engine.execution_options(write=True)
        self._cipher = cipher
        self._hasher = hasher or pw.default_hasher()
        self._lockout = lockout
        self._roles = roles
        self._issuer = issuer
        self._break_glass_ttl = break_glass_ttl
        self._dummy: str | None = None
        metadata.create_all(self._writer, tables=_TABLES)

    @property
    def roles(self) -> Mapping[str, frozenset[Action]]:
        """The role table in force (built-in, or ``[access] roles``)."""
        return self._roles

    # -- helpers ---------------------------------------------------------------------------------

    def _dummy_hash(self) -> str:
        if self._dummy is None:
            self._dummy = self._hasher.hash(secrets.token_urlsafe(16))
        return self._dummy

    def _check_roles(self, roles: Iterable[str]) -> frozenset[str]:
        chosen = frozenset(roles)
        if not chosen:
            raise InvalidInput("a user needs at least one role")
        unknown = sorted(chosen - set(self._roles))
        if unknown:
            raise InvalidInput(f"unknown role(s): {', '.join(unknown)}; known: {', '.join(self._roles)}")
        return chosen

    def _totp_context(self, name: str) -> bytes:
        return b"user-totp/" + name.encode()

    @staticmethod
    def _user(row: Any) -> User:
        return User(
            id=row.id,
            name=row.name,
            roles=frozenset(row.roles.split()),
            disabled=bool(row.disabled),
            external=bool(row.external),
            created_at=_must(row.created_at),
            training_expires=row.training_expires,
            must_change_password=bool(row.must_change_password),
            mfa_required=bool(row.mfa_required),
            mfa_enrolled=row.totp_secret is not None,
            referring_id=row.referring_id,
        )

    def _row(self, conn: Connection, name: str) -> Any:
        row = conn.execute(select(u.users).where(u.users.c.name == name)).first()
        if row is None:
            raise NotFound(f"no user named {name!r}")
        return row

    def _new_mfa(self, conn: Connection, user_id: int, name: str) -> totp.Enrolment:
        enrolment = totp.enrol(name, issuer=self._issuer)
        secret = self._cipher.encrypt(enrolment.secret.encode(), context=self._totp_context(name))
        conn.execute(
            update(u.users).where(u.users.c.id == user_id).values(totp_secret=secret, totp_last_step=None)
        )
        conn.execute(delete(u.user_recovery_codes).where(u.user_recovery_codes.c.user_id == user_id))
        conn.execute(
            insert(u.user_recovery_codes),
            [{"user_id": user_id, "code_hash": totp.hash_recovery_code(c)} for c in enrolment.recovery_codes],
        )
        return enrolment

    @staticmethod
    def _revoke_user_tokens(conn: Connection, user_id: int, now: datetime) -> int:
        result = conn.execute(
            update(u.auth_tokens)
            .where(u.auth_tokens.c.user_id == user_id, u.auth_tokens.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        return result.rowcount

    # -- administration (the CLI's `medvault users ...`) ----------------------------------------

    def add_user(
        self,
        name: str,
        *,
        roles: Iterable[str],
        now: datetime,
        training_expires: date | None = None,
        referring_id: str | None = None,
        external: bool = False,
        mfa_required: bool = True,
    ) -> NewUser:
        """Create an account. A local account gets a generated one-time password (to change at first
        sign-in) and, unless ``mfa_required=False``, a TOTP enrolment with recovery codes. An
        ``external`` account signs in through OIDC only (no password, MFA is the IdP's)."""
        if not _NAME.match(name):
            raise InvalidInput("a user name is 1-64 lowercase letters, digits, '.', '_' or '-'")
        chosen = self._check_roles(roles)
        now = _utc(now)
        password = None if external else pw.generate_password()
        hashed = None if password is None else pw.hash_password(self._hasher, password)
        enrolment = None
        with self._writer.begin() as conn:
            if conn.execute(select(u.users.c.id).where(u.users.c.name == name)).first():
                raise Conflict(f"a user named {name!r} already exists")
            user_id = conn.execute(
                insert(u.users).values(
                    name=name,
                    roles=" ".join(sorted(chosen)),
                    disabled=False,
                    external=external,
                    created_at=now,
                    training_expires=training_expires,
                    password_hash=hashed,
                    must_change_password=not external,
                    mfa_required=mfa_required and not external,
                    referring_id=referring_id,
                )
            ).inserted_primary_key[0]  # type: ignore[index]
            if mfa_required and not external:
                enrolment = self._new_mfa(conn, int(user_id), name)
            user = self._user(self._row(conn, name))
        return NewUser(user=user, password=password, enrolment=enrolment)

    def get(self, name: str) -> User:
        with self.engine.connect() as conn:
            return self._user(self._row(conn, name))

    def _set(self, name: str, now: datetime | None = None, *, revoke: bool = False, **values: Any) -> User:
        with self._writer.begin() as conn:
            row = self._row(conn, name)
            conn.execute(update(u.users).where(u.users.c.id == row.id).values(**values))
            if revoke:
                assert now is not None
                self._revoke_user_tokens(conn, row.id, _utc(now))
            return self._user(self._row(conn, name))

    def disable(self, name: str, *, now: datetime) -> User:
        """Disable the account and revoke all its tokens at once."""
        return self._set(name, now, revoke=True, disabled=True)

    def enable(self, name: str) -> User:
        return self._set(name, disabled=False)

    def set_roles(self, name: str, roles: Iterable[str]) -> User:
        return self._set(name, roles=" ".join(sorted(self._check_roles(roles))))

    def set_training(self, name: str, expires: date) -> User:
        """Record (renewed) privacy training, valid through ``expires``."""
        return self._set(name, training_expires=expires)

    def set_referring_id(self, name: str, referring_id: str | None) -> User:
        return self._set(name, referring_id=referring_id)

    def reset_mfa(self, name: str, *, now: datetime) -> totp.Enrolment:
        """A new TOTP secret and recovery codes (the old ones stop working); revokes all tokens."""
        with self._writer.begin() as conn:
            row = self._row(conn, name)
            if row.external:
                raise InvalidInput(f"{name!r} signs in through OIDC: MFA is the identity provider's")
            enrolment = self._new_mfa(conn, row.id, name)
            conn.execute(update(u.users).where(u.users.c.id == row.id).values(mfa_required=True))
            self._revoke_user_tokens(conn, row.id, _utc(now))
        return enrolment

    def reset_password(self, name: str, *, now: datetime) -> str:
        """A new generated one-time password (to be changed at next sign-in); revokes all tokens."""
        password = pw.generate_password()
        self._set(
            name,
            now,
            revoke=True,
            password_hash=pw.hash_password(self._hasher, password),
            must_change_password=True,
        )
        return password

    def recovery_codes_left(self, name: str) -> int:
        with self.engine.connect() as conn:
            row = self._row(conn, name)
            return len(
                conn.execute(
                    select(u.user_recovery_codes.c.id).where(u.user_recovery_codes.c.user_id == row.id)
                ).all()
            )

    # -- grants and break-glass ------------------------------------------------------------------

    def grant(
        self, name: str, *, kind: GrantKind, value: str, now: datetime, expires_at: datetime | None = None
    ) -> GrantRecord:
        if kind not in GRANT_KINDS:
            raise InvalidInput(f"a grant kind is one of {', '.join(GRANT_KINDS)}")
        if kind == "site":
            value = "*"
        if not value or len(value) > 128:
            raise InvalidInput("a grant value is 1-128 characters")
        now = _utc(now)
        with self._writer.begin() as conn:
            row = self._row(conn, name)
            grant_id = conn.execute(
                insert(u.user_grants).values(
                    user_id=row.id,
                    kind=kind,
                    value=value,
                    created_at=now,
                    expires_at=_utc(expires_at) if expires_at else None,
                )
            ).inserted_primary_key[0]  # type: ignore[index]
        return GrantRecord(int(grant_id), name, kind, value, now, _utc(expires_at) if expires_at else None)

    def revoke_grant(self, name: str, *, kind: str, value: str) -> int:
        """Remove the user's grants of that kind and value; returns how many."""
        with self._writer.begin() as conn:
            row = self._row(conn, name)
            result = conn.execute(
                delete(u.user_grants).where(
                    u.user_grants.c.user_id == row.id,
                    u.user_grants.c.kind == kind,
                    u.user_grants.c.value == value,
                )
            )
        if result.rowcount == 0:
            raise NotFound(f"{name!r} holds no {kind} grant {value!r}")
        return result.rowcount

    def list_grants(self, name: str | None = None) -> list[GrantRecord]:
        query = select(u.user_grants, u.users.c.name).join(u.users, u.users.c.id == u.user_grants.c.user_id)
        if name is not None:
            query = query.where(u.users.c.name == name)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(u.user_grants.c.id)).all()
        return [
            GrantRecord(r.id, r.name, r.kind, r.value, _must(r.created_at), _aware(r.expires_at))
            for r in rows
        ]

    def open_break_glass(
        self,
        principal: Principal,
        *,
        study_uid: str,
        reason: str,
        now: datetime,
        pdp: DecisionPoint,
        client: str | None = None,
    ) -> BreakGlassSession:
        """Open ``study_uid`` outside the principal's scope for :data:`BREAK_GLASS_TTL`, with a reason.
        Asks ``pdp`` (so the decision is audited); raises :class:`Forbidden` when refused."""
        now = _utc(now)
        decision = pdp.decide(
            principal,
            Action.BREAKGLASS_USE,
            Resource(study_uid=study_uid),
            Context(now=now, reason=reason, client=client),
        )
        enforce(decision)
        expires = now + self._break_glass_ttl
        with self._writer.begin() as conn:
            row = self._row(conn, principal.name)
            session_id = conn.execute(
                insert(u.break_glass_sessions).values(
                    user_id=row.id,
                    study_uid=study_uid,
                    reason=self._cipher.encrypt(reason.strip().encode(), context=b"break-glass"),
                    opened_at=now,
                    expires_at=expires,
                )
            ).inserted_primary_key[0]  # type: ignore[index]
        return BreakGlassSession(int(session_id), principal.name, study_uid, reason.strip(), now, expires)

    def list_break_glass(
        self, *, since: datetime | None = None, until: datetime | None = None
    ) -> list[BreakGlassSession]:
        """Break-glass sessions (newest first) with their reasons, for auditors (breakglass.review)."""
        query = select(u.break_glass_sessions, u.users.c.name).join(
            u.users, u.users.c.id == u.break_glass_sessions.c.user_id
        )
        if since is not None:
            query = query.where(u.break_glass_sessions.c.opened_at >= _utc(since))
        if until is not None:
            query = query.where(u.break_glass_sessions.c.opened_at < _utc(until))
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(u.break_glass_sessions.c.id.desc())).all()
        return [
            BreakGlassSession(
                r.id,
                r.name,
                r.study_uid,
                self._cipher.decrypt(r.reason, context=b"break-glass").decode(),
                _must(r.opened_at),
                _must(r.expires_at),
            )
            for r in rows
        ]

    # -- principals ------------------------------------------------------------------------------

    def _principal(
        self, conn: Connection, row: Any, *, method: str, now: datetime, roles: frozenset[str] | None = None
    ) -> Principal:
        grants = tuple(
            Grant(kind=g.kind, value=g.value, expires_at=_aware(g.expires_at))
            for g in conn.execute(_GRANTS_OF_USER, {"user_id": row.id})
        )
        sessions = tuple(
            BreakGlassGrant(study_uid=s.study_uid, expires_at=_must(s.expires_at))
            for s in conn.execute(_LIVE_BREAK_GLASS_OF_USER, {"user_id": row.id, "now": now})
        )
        roles = frozenset(row.roles.split()) if roles is None else roles
        training = training_of(conn, row.id, roles, table=self._roles, fallback=row.training_expires)
        return Principal(
            name=row.name,
            method=method,
            roles=roles,
            grants=tuple(g for g in grants if g.active(now)),
            break_glass=tuple(s for s in sessions if now < s.expires_at),
            human=True,
            training_expires=training.expires,
            training_course=training.course,
            referring_id=row.referring_id,
            must_change_password=bool(row.must_change_password),
            exports_held=held(conn, "hold_exports", row.name),
        )

    def principal(self, name: str, *, now: datetime, method: str = "token") -> Principal | None:
        """The principal of an enabled user (roles, grants, training, open break-glass sessions)."""
        now = _utc(now)
        with self.engine.connect() as conn:
            row = conn.execute(select(u.users).where(u.users.c.name == name)).first()
            if row is None or row.disabled or held(conn, "lock_account", row.name):
                return None
            return self._principal(conn, row, method=method, now=now)

    def principal_for_oidc(self, identity: OidcIdentity, *, now: datetime) -> Principal | None:
        """Roles from the IdP token; grants, training and referring identity from the local account
        of the same name when there is one (without one: a human with no scope and no training, so
        no PHI). None when that local account is disabled."""
        now = _utc(now)
        with self.engine.connect() as conn:
            row = conn.execute(select(u.users).where(u.users.c.name == identity.username)).first()
            if row is None:
                return Principal(name=identity.username, method="oidc", roles=identity.roles, human=True)
            if row.disabled or held(conn, "lock_account", row.name):
                return None
            principal = self._principal(conn, row, method="oidc", now=now, roles=identity.roles)
        return Principal(
            name=principal.name,
            method="oidc",
            roles=principal.roles,
            grants=principal.grants,
            break_glass=principal.break_glass,
            human=True,
            training_expires=principal.training_expires,
            training_course=principal.training_course,
            referring_id=principal.referring_id,
            exports_held=principal.exports_held,
        )

    # -- sign-in ---------------------------------------------------------------------------------

    def _begin_attempt(self, keys: list[str], now: datetime) -> None:
        """Refuse while any key is locked; otherwise count this attempt as a failure up front."""
        with self._writer.begin() as conn:
            rows = {
                r.key: Counter(r.failures, _must(r.last_failure))
                for r in conn.execute(select(u.auth_failures).where(u.auth_failures.c.key.in_(keys)))
            }
            wait = max(self._lockout.locked_for(rows.get(k), now) for k in keys)
            if wait > 0:
                raise TooManyAttempts(wait)
            for key in keys:
                counter = self._lockout.after_failure(rows.get(key), now)
                values = {"failures": counter.failures, "last_failure": counter.last_failure}
                if key in rows:
                    conn.execute(update(u.auth_failures).where(u.auth_failures.c.key == key).values(**values))
                else:
                    conn.execute(insert(u.auth_failures).values(key=key, **values))

    def _attempt_succeeded(self, account_key: str, client_key: str) -> None:
        with self._writer.begin() as conn:
            conn.execute(delete(u.auth_failures).where(u.auth_failures.c.key == account_key))
            conn.execute(
                update(u.auth_failures)
                .where(u.auth_failures.c.key == client_key, u.auth_failures.c.failures > 0)
                .values(failures=u.auth_failures.c.failures - 1)
            )

    def prune_failures(self, *, now: datetime) -> int:
        """Forget counters older than the lockout's ``forget_after`` (run now and then)."""
        cutoff = _utc(now) - self._lockout.forget_after
        with self._writer.begin() as conn:
            return conn.execute(
                delete(u.auth_failures).where(u.auth_failures.c.last_failure < cutoff)
            ).rowcount

    def _second_factor(self, row: Any, otp: str | None, now: datetime) -> bool:
        if not row.mfa_required:
            return True
        if row.totp_secret is None or not otp:
            return False
        if totp.looks_like_recovery_code(otp):
            with self._writer.begin() as conn:
                used = conn.execute(
                    delete(u.user_recovery_codes).where(
                        u.user_recovery_codes.c.user_id == row.id,
                        u.user_recovery_codes.c.code_hash == totp.hash_recovery_code(otp),
                    )
                ).rowcount
            return used == 1
        secret = self._cipher.decrypt(row.totp_secret, context=self._totp_context(row.name)).decode()
        step = totp.verify_totp(secret, otp, now=now, last_step=row.totp_last_step)
        if step is None:
            return False
        with self._writer.begin() as conn:  # compare-and-set: a code is accepted once, even in a race
            updated = conn.execute(
                update(u.users)
                .where(
                    u.users.c.id == row.id,
                    or_(u.users.c.totp_last_step.is_(None), u.users.c.totp_last_step < step),
                )
                .values(totp_last_step=step)
            ).rowcount
        return updated == 1

    def authenticate_password(
        self, username: str, password: str, otp: str | None, client: str, now: datetime
    ) -> User:
        """Check password and second factor. :class:`BadCredentials` for every failure, whatever
        its cause; :class:`TooManyAttempts` while the account name or the client is locked."""
        now = _utc(now)
        name = account_name(username)
        account_key, client_key = f"user:{name}", f"client:{client[:200]}"
        self._begin_attempt([account_key, client_key], now)
        with self.engine.connect() as conn:
            row = conn.execute(select(u.users).where(u.users.c.name == name)).first()
        if row is None or row.password_hash is None:
            pw.verify_password(self._hasher, self._dummy_hash(), password)  # same work as a real check
            raise BadCredentials
        ok = pw.verify_password(self._hasher, row.password_hash, password)
        if not ok or row.disabled or not self._second_factor(row, otp, now):
            raise BadCredentials
        self._attempt_succeeded(account_key, client_key)
        with self.engine.connect() as conn:
            if held(conn, "lock_account", row.name):  # told only to someone who holds both factors
                raise AccountLocked
        if pw.needs_rehash(self._hasher, row.password_hash):
            with self._writer.begin() as conn:
                conn.execute(
                    update(u.users)
                    .where(u.users.c.id == row.id)
                    .values(password_hash=pw.hash_password(self._hasher, password))
                )
        return self._user(row)

    def change_password(
        self,
        name: str,
        *,
        old_password: str,
        new_password: str,
        otp: str | None,
        client: str,
        now: datetime,
    ) -> None:
        """Self-service change (also the way out of a one-time password). Checks the old password
        and the second factor (TOTP or a recovery code, counted for lockout like a sign-in), applies
        the policy, and revokes all the user's tokens. A stolen password alone changes nothing."""
        now = _utc(now)
        name = account_name(name)
        account_key, client_key = f"user:{name}", f"client:{client[:200]}"
        self._begin_attempt([account_key, client_key], now)
        with self.engine.connect() as conn:
            row = conn.execute(select(u.users).where(u.users.c.name == name)).first()
        if row is None or row.password_hash is None or row.disabled:
            pw.verify_password(self._hasher, self._dummy_hash(), old_password)
            raise BadCredentials
        if not pw.verify_password(self._hasher, row.password_hash, old_password):
            raise BadCredentials
        if not self._second_factor(row, otp, now):
            raise BadCredentials
        self._attempt_succeeded(account_key, client_key)
        pw.check_password(new_password, username=name)
        if pw.verify_password(self._hasher, row.password_hash, new_password):
            raise pw.WeakPassword("the new password must differ from the old one")
        with self._writer.begin() as conn:
            conn.execute(
                update(u.users)
                .where(u.users.c.id == row.id)
                .values(
                    password_hash=pw.hash_password(self._hasher, new_password), must_change_password=False
                )
            )
            self._revoke_user_tokens(conn, row.id, now)

    # -- tokens ----------------------------------------------------------------------------------

    def _insert_pair(
        self, conn: Connection, user_id: int, family: str, now: datetime, session_expires: datetime
    ) -> tk.TokenPair:
        access, refresh = tk.new_token("access"), tk.new_token("refresh")
        common = {
            "family": family,
            "user_id": user_id,
            "issued_at": now,
            "session_expires_at": session_expires,
        }
        conn.execute(
            insert(u.auth_tokens),
            [
                {
                    "token_hash": tk.hash_token(access),
                    "kind": "access",
                    "expires_at": min(now + tk.ACCESS_TTL, session_expires),
                    **common,
                },
                {
                    "token_hash": tk.hash_token(refresh),
                    "kind": "refresh",
                    "expires_at": min(now + tk.REFRESH_TTL, session_expires),
                    **common,
                },
            ],
        )
        return tk.TokenPair(access, refresh)

    def issue_tokens(self, user: User, *, now: datetime) -> tk.TokenPair:
        """A new session (token family) for a user who just signed in."""
        now = _utc(now)
        with self._writer.begin() as conn:
            row = conn.execute(select(u.users.c.disabled).where(u.users.c.id == user.id)).first()
            if row is None or row.disabled:
                raise tk.InvalidToken
            return self._insert_pair(conn, user.id, tk.new_family(), now, now + tk.SESSION_TTL)

    def _lookup(self, conn: Connection, token: str) -> Any:
        return conn.execute(_TOKEN_BY_HASH, {"token_hash": tk.hash_token(token)}).first()

    def authenticate_token(self, token: str, *, now: datetime) -> Principal | None:
        """The principal behind a live access token; None if unknown, expired, revoked or disabled."""
        now = _utc(now)
        if not token.startswith(tk.ACCESS_PREFIX):
            return None
        with self.engine.connect() as conn:
            row = self._lookup(conn, token)
            if (
                row is None
                or row.kind != "access"
                or row.revoked_at is not None
                or now >= _must(row.expires_at)
            ):
                return None
            user = conn.execute(_USER_BY_ID, {"user_id": row.user_id}).first()
            if user is None or user.disabled or held(conn, "lock_account", user.name):
                return None
            return self._principal(conn, user, method="token", now=now)

    def refresh(self, refresh_token: str, *, now: datetime) -> tk.TokenPair:
        """Rotate: the old refresh token dies, a new pair is issued in the same family. Presenting a
        refresh token that was already rotated revokes the whole family (it was stolen or replayed)."""
        now = _utc(now)
        with self._writer.begin() as conn:
            row = self._lookup(conn, refresh_token)
            if row is None or row.kind != "refresh":
                raise tk.InvalidToken
            if row.used_at is not None:
                conn.execute(
                    update(u.auth_tokens)
                    .where(u.auth_tokens.c.family == row.family, u.auth_tokens.c.revoked_at.is_(None))
                    .values(revoked_at=now)
                )
            elif row.revoked_at is None and now < _must(row.expires_at):
                user = conn.execute(
                    select(u.users.c.disabled, u.users.c.name).where(u.users.c.id == row.user_id)
                ).first()
                # A step-up (or a lock) after a security alert: only a full sign-in continues.
                stepped = user is not None and (
                    held(conn, "step_up", user.name) or held(conn, "lock_account", user.name)
                )
                if user is not None and not user.disabled and not stepped:
                    conn.execute(
                        update(u.auth_tokens)
                        .where(u.auth_tokens.c.id == row.id)
                        .values(used_at=now, revoked_at=now)
                    )
                    return self._insert_pair(
                        conn, row.user_id, row.family, now, _must(row.session_expires_at)
                    )
        # Commit the family revocation (reuse) before refusing.
        raise tk.InvalidToken

    def logout(self, token: str, *, now: datetime) -> int:
        """Revoke every token of the user behind ``token`` (access or refresh); returns how many."""
        now = _utc(now)
        with self._writer.begin() as conn:
            row = self._lookup(conn, token)
            if row is None:
                return 0
            return self._revoke_user_tokens(conn, row.user_id, now)

    def revoke_tokens(self, name: str, *, now: datetime) -> int:
        with self._writer.begin() as conn:
            return self._revoke_user_tokens(conn, self._row(conn, name).id, _utc(now))

    # Last in the class body, so ``list`` still means the built-in in the annotations above.
    def list(self) -> list[User]:
        """All users, by name."""
        with self.engine.connect() as conn:
            return [self._user(r) for r in conn.execute(select(u.users).order_by(u.users.c.name))]
