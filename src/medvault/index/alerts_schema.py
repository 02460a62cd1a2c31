"""Tables of the continuous monitor: alerts, the monitor's saved state, the imported directory, and
security holds (the automatic responses an officer can lift).

Registered on the index's one :data:`medvault.index.schema.metadata`. Clear columns are limited to
what the ledger shows anyway (subjects, severities, pseudonyms, UIDs); reasons, features, the
officer's notes, the monitor's state and the directory (it names patients) are sealed.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, DateTime, Index, Integer, LargeBinary, String, Table

from medvault.index.schema import metadata

alerts = Table(
    "alerts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source_index", BigInteger, nullable=False, unique=True),  # ledger index of the event
    Column("event_time", DateTime(timezone=True), nullable=False),
    Column("raised_at", DateTime(timezone=True), nullable=False),
    Column("subject", String(255), nullable=False, index=True),  # the user, key or node
    Column("severity", String(16), nullable=False, index=True),
    Column("score_milli", Integer, nullable=False),
    Column("incident_id", String(64), nullable=True, index=True),
    Column("patient", String(128), nullable=True),  # keyed pseudonym, as in the ledger
    Column("study_uid", String(64), nullable=True),
    Column("doc", LargeBinary, nullable=False),  # sealed: reasons, points, features, incident
    Column("status", String(16), nullable=False, index=True),  # open | acknowledged | resolved
    Column("disposition", String(32), nullable=True),
    Column("handled_by", String(255), nullable=True),
    Column("handled_at", DateTime(timezone=True), nullable=True),
    Column("note", LargeBinary, nullable=True),  # sealed: the officer's free text
    Column("responded", Boolean, nullable=False),  # automatic responses applied
    Column("notified", Boolean, nullable=False),  # syslog and webhook delivered
)

monitor_state = Table(
    "monitor_state",
    metadata,
    Column("id", Integer, primary_key=True),  # always 1
    Column("processed", BigInteger, nullable=False),  # ledger entries the snapshot has scored
    Column("snapshot", LargeBinary, nullable=False),  # sealed, compressed OnlineMonitor.snapshot()
    Column("saved_at", DateTime(timezone=True), nullable=False),
    Column("live", BigInteger, nullable=False),  # entries scored by the running worker (lag metric)
    Column("heartbeat", DateTime(timezone=True), nullable=False),  # the running worker's last step
)

monitor_directory = Table(
    "monitor_directory",
    metadata,
    Column("id", Integer, primary_key=True),  # always 1
    Column("doc", LargeBinary, nullable=False),  # sealed DIRECTORY.json, patients by pseudonym
    Column("imported_at", DateTime(timezone=True), nullable=False),
    Column("users", Integer, nullable=False),
    Column("patients", Integer, nullable=False),
)

security_holds = Table(
    "security_holds",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),  # step_up | lock_account | hold_exports | suspend_key | ...
    Column("subject", String(255), nullable=False),  # user name, API key name, node name
    Column("alert_id", Integer, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("lifted_at", DateTime(timezone=True), nullable=True),
    Column("lifted_by", String(255), nullable=True),
)

Index("ix_security_holds_live", security_holds.c.kind, security_holds.c.subject, security_holds.c.lifted_at)
