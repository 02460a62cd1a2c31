"""Measure an opened archive for the safeguards report: configuration as it takes effect (the
server's TLS context is built and read back), stored objects sampled on disk, the ledger verified
and read once for sign-ins, key use, break-glass and backups. No PHI is gathered: accounts, keys
and nodes by name, studies not at all."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from medvault import __version__
from medvault.access.lockout import DEFAULT_LOCKOUT
from medvault.access.passwords import MIN_LENGTH
from medvault.access.policy import ROLE_PERMISSIONS, Action
from medvault.access.tokens import ACCESS_TTL, SESSION_TTL
from medvault.compliance.safeguards import ApiKeyFacts, BreakGlassUse, Evidence, NodeFacts, UserFacts
from medvault.crypto.envelope import MAGIC
from medvault.crypto.tls import certificate_expiry
from medvault.fsck import reconcile
from medvault.home import OpenHome
from medvault.index.nodes import NodeStore
from medvault.index.training import TrainingStore
from medvault.ledger.verify import verify_ledger
from medvault.reports import ledger_events

__all__ = ["SAMPLE_OBJECTS", "gather"]

SAMPLE_OBJECTS = 200
"""Objects whose first bytes are checked on disk (every object is checked by `ledger verify`)."""

_IMAGE_ROLES = frozenset(r for r, acts in ROLE_PERMISSIONS.items() if Action.STUDY_READ in acts)


@dataclass
class _Trail:
    """What one pass over the ledger tells the report."""

    first: datetime | None = None
    last_rotation: datetime | None = None
    failed_sign_ins: int = 0
    backup_at: datetime | None = None
    backup_ok: bool | None = None

    def __post_init__(self) -> None:
        self.sign_ins: dict[str, datetime] = {}
        self.key_use: dict[str, datetime] = {}
        self.break_glass: list[tuple[int, str, datetime]] = []


def _time(event: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(event["time"]).replace("Z", "+00:00"))


def _read_trail(opened: OpenHome, now: datetime, progress: Callable[[int], None] | None) -> _Trail:
    trail = _Trail()
    month, quarter = now - timedelta(days=30), now - timedelta(days=90)
    for n, (index, event) in enumerate(ledger_events(opened.archive)):
        if progress is not None and n % 10_000 == 0 and n:
            progress(10_000)
        when = _time(event)
        trail.first = trail.first or when
        kind, action, outcome = event.get("kind"), event.get("action"), event.get("outcome")
        actor = event.get("actor") or {}
        if actor.get("kind") == "apikey":
            trail.key_use[str(actor.get("id"))] = when
        if kind == "login" and action == "auth.token":
            if outcome == "success":
                trail.sign_ins[str(actor.get("id"))] = when
            elif when >= month:
                trail.failed_sign_ins += 1
        elif kind == "key_rotation":
            trail.last_rotation = when
        elif kind == "break_glass" and when >= quarter and outcome == "success":
            trail.break_glass.append((index, str(actor.get("id")), when))
        elif action == "backup.verify":
            trail.backup_at, trail.backup_ok = when, outcome == "success"
    return trail


def _weak(suite: Mapping[str, Any]) -> bool:
    """Not AEAD, no forward secrecy (static RSA), or no authentication (anonymous DH)."""
    return (
        not suite.get("aead")
        or suite.get("kea") not in ("kx-ecdhe", "kx-dhe")
        or suite.get("auth") == "auth-null"
    )


def _tls(opened: OpenHome) -> tuple[str, tuple[str, ...], tuple[str, ...], datetime | None]:
    """The server's TLS context as ``serve`` builds it, read back: minimum version and suites."""
    if opened.settings.server.plain_http:
        return "none", (), (), None
    context = opened.ssl_context()
    minimum = context.minimum_version
    name = {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}.get(minimum, minimum.name)
    suites = [c for c in context.get_ciphers() if c.get("protocol") == "TLSv1.2"]
    expires = certificate_expiry(opened.path(opened.settings.tls.certificate).read_bytes())
    return name, tuple(c["name"] for c in suites), tuple(c["name"] for c in suites if _weak(c)), expires


def _sample_objects(opened: OpenHome) -> tuple[int, int]:
    blobs = opened.archive.blobs
    sampled = encrypted = 0
    for info in blobs.list_objects():
        if sampled >= SAMPLE_OBJECTS:
            break
        sampled += 1
        encrypted += blobs.read_range(info.key, 0, len(MAGIC)) == MAGIC
    return sampled, encrypted


def _reviewed(opened: OpenHome, since: datetime) -> dict[int, bool]:
    """Ledger index of an event → whether the alert it raised is resolved."""
    seen: dict[int, bool] = {}
    offset = 0
    while True:
        page = opened.alerts.find(since=since, limit=1000, offset=offset)
        for alert in page:
            seen[alert.source_index] = seen.get(alert.source_index, False) or alert.status == "resolved"
        if len(page) < 1000:
            return seen
        offset += 1000


def gather(
    opened: OpenHome, *, now: datetime | None = None, progress: Callable[[int], None] | None = None
) -> Evidence:
    """Measure ``opened`` now. ``progress`` is told how many ledger entries were read, in steps."""
    now = now or datetime.now(UTC)
    settings = opened.settings
    ledger = opened.ledger
    ledger.flush()
    verified = verify_ledger(opened.path(settings.ledger.database), verifier_key=ledger.verifier_key_text())
    trail = _read_trail(opened, now, progress)
    storage = reconcile(opened.archive, repair=False)
    tls_minimum, suites, weak, expires = _tls(opened)
    sampled, encrypted = _sample_objects(opened)
    status = opened.archive.key_status()
    reviewed = _reviewed(opened, now - timedelta(days=91))
    open_alerts = opened.alerts.open_counts()
    unresolved = [
        a for state in ("open", "acknowledged") for a in opened.alerts.find(status=state, limit=1000)
    ]
    # training as the gate sees it: the required courses, else the per-user date
    training = {t.username: t for t in TrainingStore(opened.archive.index.engine).status(today=now.date())}
    users = tuple(
        UserFacts(
            name=u.name,
            roles=u.roles,
            disabled=u.disabled,
            external=u.external,
            mfa_required=u.mfa_required,
            mfa_enrolled=u.mfa_enrolled,
            must_change_password=u.must_change_password,
            created_at=u.created_at,
            training_expires=training[u.name].effective.expires if u.name in training else u.training_expires,
            last_sign_in=trail.sign_ins.get(u.name),
            image_access=training[u.name].reaches_phi if u.name in training else bool(u.roles & _IMAGE_ROLES),
        )
        for u in opened.users.list()
    )
    notifications = tuple(
        name
        for name, value in (("syslog", settings.monitor.syslog), ("webhook", settings.monitor.webhook_url))
        if value
    )
    return Evidence(
        generated_at=now,
        medvault_version=__version__,
        https=not settings.server.plain_http,
        tls_minimum=tls_minimum,
        tls_ciphers=suites,
        tls_weak_ciphers=weak,
        server_certificate_expires=expires,
        dimse_enabled=settings.dimse.enabled,
        dimse_plain=settings.dimse.enabled and settings.dimse.allow_plain,
        objects_sampled=sampled,
        objects_encrypted=encrypted,
        kek_versions=len(status.known_keks),
        kek_created=trail.last_rotation or trail.first,
        objects_on_old_keks=sum(n for kek, n in status.objects_per_kek.items() if kek != status.current_kek),
        users=users,
        api_keys=tuple(
            ApiKeyFacts(
                name=k.name,
                role=k.role,
                created_at=k.created_at,
                expires_at=k.expires_at,
                revoked=k.revoked_at is not None or (k.expires_at is not None and k.expires_at <= now),
                last_used=trail.key_use.get(k.name),
            )
            for k in opened.api_keys.list()
        ),
        nodes=tuple(
            NodeFacts(name=n.name, not_after=n.not_after, revoked=n.revoked, suspended=n.suspended)
            for n in NodeStore(opened.archive.index.engine).list()
        ),
        lockout_threshold=DEFAULT_LOCKOUT.threshold,
        lockout_minutes=DEFAULT_LOCKOUT.base.total_seconds() / 60,
        access_token_minutes=ACCESS_TTL.total_seconds() / 60,
        session_hours=SESSION_TTL.total_seconds() / 3600,
        password_min_length=MIN_LENGTH,
        ledger_size=verified.size,
        ledger_verified=verified.ok,
        ledger_problems=tuple(p.message for p in verified.problems),
        checkpoints_verified=verified.checkpoints_verified,
        latest_checkpoint_size=None
        if verified.latest_checkpoint is None
        else verified.latest_checkpoint.size,
        storage_orphans=len(storage.orphans) + len(storage.partial_writes),
        storage_missing=len(storage.missing),
        monitor_enabled=settings.monitor.enabled,
        notifications=notifications,
        failed_sign_ins_30d=trail.failed_sign_ins,
        open_alerts={k: v for k, v in open_alerts.items() if v},
        oldest_open_alert=min((a.raised_at for a in unresolved), default=None),
        break_glass=tuple(
            BreakGlassUse(user=user, time=when, reviewed=reviewed.get(index, False))
            for index, user, when in trail.break_glass
        ),
        last_verified_backup=trail.backup_at,
        last_backup_ok=trail.backup_ok,
    )
