"""Table definitions (SQLAlchemy Core), portable between SQLite and PostgreSQL.

Clear columns are limited to what is not PHI: UIDs, modality, numbers, sizes, hashes, the year of
the study date and opaque storage keys. ``doc`` columns are ``FieldCipher`` ciphertexts; ``*_tok``
columns are 16-byte blind-index tokens.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
)

metadata = MetaData()

# Exact-match fields that get a blind-index token column on the study table (keyword -> column).
STUDY_TOKEN_FIELDS: dict[str, str] = {
    "00100020": "patient_id_tok",  # PatientID
    "00100010": "patient_name_tok",  # PatientName
    "00080050": "accession_tok",  # AccessionNumber
    "00200010": "study_id_tok",  # StudyID
    "00080090": "referring_tok",  # ReferringPhysicianName
    "00100030": "birth_date_tok",  # PatientBirthDate
    "00081040": "department_tok",  # InstitutionalDepartmentName (department / care-team grants)
}

studies = Table(
    "studies",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("study_uid", String(64), nullable=False, unique=True),
    Column("study_year", Integer, nullable=True),
    Column("doc", LargeBinary, nullable=False),
    *(Column(col, LargeBinary(16), nullable=True, index=True) for col in STUDY_TOKEN_FIELDS.values()),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

series = Table(
    "series",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("series_uid", String(64), nullable=False, unique=True),
    Column("study_id", Integer, ForeignKey("studies.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("modality", String(16), nullable=True, index=True),
    Column("series_number", Integer, nullable=True),
    Column("doc", LargeBinary, nullable=False),
)

instances = Table(
    "instances",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("sop_uid", String(64), nullable=False, unique=True),
    Column("series_id", Integer, ForeignKey("series.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("study_id", Integer, ForeignKey("studies.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("sop_class_uid", String(64), nullable=False),
    Column("instance_number", Integer, nullable=True),
    Column("transfer_syntax", String(64), nullable=False),
    Column("number_of_frames", Integer, nullable=False),
    Column("frames", LargeBinary, nullable=False),  # JSON of byte ranges; not PHI
    Column("blob_key", String(64), nullable=False, unique=True),
    Column("size", BigInteger, nullable=False),
    Column("sha256", LargeBinary(32), nullable=False),
    Column("doc", LargeBinary, nullable=False),  # instance-level attributes (encrypted)
    Column("metadata", LargeBinary, nullable=False),  # full DICOM JSON without bulk data (encrypted)
    Column("kek_id", String(64), nullable=False, index=True),
    Column("wrapped_key", LargeBinary, nullable=False),
    Column("stored_at", DateTime(timezone=True), nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", String(32), nullable=False),
    Column("key_hash", LargeBinary(32), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

# Ledger events of index changes, written in the same transaction as the change and removed once
# appended to the ledger (a transactional outbox: medvault.index.outbox). Pseudonymous, like the ledger.
ledger_outbox = Table(
    "ledger_outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("owner", String(64), nullable=False),  # the writing process (medvault.index.outbox)
    Column("after_size", BigInteger, nullable=False),  # the ledger's size before they were appended
    Column("leaf", LargeBinary, nullable=False),
)

Index("ix_instances_series_number", instances.c.series_id, instances.c.instance_number)
