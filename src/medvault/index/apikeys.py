"""API keys for scripts, viewers and the benchmark: stored as SHA-256 hashes, shown once.

Keys are 256-bit random secrets, so a plain SHA-256 (not a slow password hash) is the right
storage form: it cannot be brute-forced, and lookup stays a constant-cost indexed query.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, bindparam, insert, select, update

from medvault.errors import Conflict, InvalidInput, NotFound
from medvault.index import schema as t
from medvault.index.alerts_schema import security_holds
from medvault.index.holds import held

KEY_PREFIX = "mvk_"
# Checked on every request: built once (see medvault.index.store on prebuilt lookups).
_KEY_BY_HASH = select(t.api_keys).where(t.api_keys.c.key_hash == bindparam("key_hash"))


@dataclass(frozen=True)
class ApiKeyInfo:
    name: str
    role: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeyStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = engine.execution_options(write=True)
        security_holds.create(self._writer, checkfirst=True)

    def create(self, name: str, *, role: str, expires_days: int | None = None) -> str:
        """Create a key and return it; this is the only time the key exists in clear."""
        if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").isalnum():
            raise InvalidInput("an API key name is 1-64 letters, digits, '-' or '_'")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        expires = now + timedelta(days=expires_days) if expires_days else None
        with self._writer.begin() as conn:
            if conn.execute(select(t.api_keys.c.id).where(t.api_keys.c.name == name)).first():
                raise Conflict(f"an API key named {name!r} already exists")
            conn.execute(
                insert(t.api_keys).values(
                    name=name, role=role, key_hash=hash_key(key), created_at=now, expires_at=expires
                )
            )
        return key

    def authenticate(self, key: str, *, now: datetime | None = None) -> ApiKeyInfo | None:
        """The key's record if it is known, not revoked and not expired; otherwise None."""
        now = now or datetime.now(UTC)
        with self.engine.connect() as conn:
            row = conn.execute(_KEY_BY_HASH, {"key_hash": hash_key(key)}).first()
            if row is None or row.revoked_at is not None:
                return None
            if held(conn, "suspend_key", "apikey:" + row.name):  # a monitor response, until lifted
                return None
        info = self._info(row)
        if info.expires_at is not None and info.expires_at <= now:
            return None
        return info

    def revoke(self, name: str) -> None:
        with self._writer.begin() as conn:
            result = conn.execute(
                update(t.api_keys)
                .where(t.api_keys.c.name == name, t.api_keys.c.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
        if result.rowcount == 0:
            raise NotFound(f"no active API key named {name!r}")

    def list(self) -> list[ApiKeyInfo]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.api_keys).order_by(t.api_keys.c.id)).all()
        return [self._info(r) for r in rows]

    @staticmethod
    def _info(row: object) -> ApiKeyInfo:
        def aware(value: datetime | None) -> datetime | None:
            # SQLite returns naive datetimes; they were written in UTC.
            return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value

        created = aware(row.created_at)  # type: ignore[attr-defined]
        assert created is not None
        return ApiKeyInfo(
            name=row.name,  # type: ignore[attr-defined]
            role=row.role,  # type: ignore[attr-defined]
            created_at=created,
            expires_at=aware(row.expires_at),  # type: ignore[attr-defined]
            revoked_at=aware(row.revoked_at),  # type: ignore[attr-defined]
        )
