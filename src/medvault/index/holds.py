"""Is a security hold in force? Asked by the user, API-key and node stores on every
authentication (holds are the monitor's automatic responses; see medvault.index.alerts)."""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, func, select

from medvault.index.alerts_schema import security_holds

_HELD = select(func.count()).where(
    security_holds.c.kind == bindparam("kind"),
    security_holds.c.subject == bindparam("subject"),
    security_holds.c.lifted_at.is_(None),
)
#: ``_HELD`` as a column of another query (bind ``kind`` and ``subject``): one round trip.
HELD_COLUMN = _HELD.scalar_subquery()
_HELD_KINDS = select(security_holds.c.kind).where(
    security_holds.c.subject == bindparam("subject"), security_holds.c.lifted_at.is_(None)
)


def held(conn: Connection, kind: str, subject: str) -> bool:
    """Is a hold of ``kind`` in force on ``subject`` (inside the caller's own connection)?"""
    return bool(conn.execute(_HELD, {"kind": kind, "subject": subject}).scalar_one())


def holds_on(conn: Connection, subject: str) -> frozenset[str]:
    """The kinds of hold in force on ``subject``."""
    return frozenset(str(r[0]) for r in conn.execute(_HELD_KINDS, {"subject": subject}))
