"""Tables of retention and legal hold (medvault.compliance): legal holds and the tombstones that
deleted studies leave behind.

Registered on the index's one :data:`medvault.index.schema.metadata`. Clear columns are what the
ledger shows anyway: hold kinds, study UIDs, patients by keyed pseudonym (blind-index token in
hex), actor ids, times, rule names. Reasons and query holds' queries (they may name a patient)
are sealed with the index's field cipher.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Integer, LargeBinary, String, Table

from medvault.index.schema import metadata

legal_holds = Table(
    "legal_holds",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),  # patient | study | query
    # patient: the PatientID's token (hex); study: the StudyInstanceUID; query: "" (sealed below)
    Column("target", String(128), nullable=False, index=True),
    Column("query", LargeBinary, nullable=True),  # sealed QIDO-style query of a query hold
    Column("reason", LargeBinary, nullable=False),  # sealed
    Column("placed_by", String(255), nullable=False),
    Column("placed_at", DateTime(timezone=True), nullable=False),
    Column("lifted_by", String(255), nullable=True),
    Column("lifted_at", DateTime(timezone=True), nullable=True, index=True),
    Column("lift_reason", LargeBinary, nullable=True),  # sealed
)

# One row per study whose last instance was deleted (by retention or by hand): the index row's
# tombstone, so that "where did study X go" has an answer without the ledger.
tombstones = Table(
    "study_tombstones",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("study_uid", String(64), nullable=False, index=True),
    Column("patient", String(128), nullable=True),  # keyed pseudonym, as in the ledger
    Column("deleted_at", DateTime(timezone=True), nullable=False),
    Column("deleted_by", String(255), nullable=False),
    Column("cause", String(16), nullable=False),  # retention | delete
    Column("rule", String(64), nullable=True),  # the retention rule that expired it
    Column("instances", Integer, nullable=False),
)

TABLES = [legal_holds, tombstones]
