"""Tables for users, grants, break-glass sessions, session tokens and sign-in failure counters.

Registered on the index's one :data:`medvault.index.schema.metadata`, so ``create_all`` makes them.
Secrets are never stored in clear: password hashes are argon2id, token and recovery-code columns
are SHA-256 hashes, the TOTP secret and break-glass reasons are ``FieldCipher`` ciphertexts.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
)

from medvault.index.schema import metadata

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("roles", String(512), nullable=False),  # space-separated role names
    Column("disabled", Boolean, nullable=False, default=False),
    Column("external", Boolean, nullable=False, default=False),  # signs in through OIDC only
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("training_expires", Date, nullable=True),
    Column("password_hash", String(256), nullable=True),
    Column("must_change_password", Boolean, nullable=False, default=False),
    Column("mfa_required", Boolean, nullable=False, default=True),
    Column("totp_secret", LargeBinary, nullable=True),  # FieldCipher, context "user-totp/<name>"
    Column("totp_last_step", BigInteger, nullable=True),
    Column("referring_id", String(256), nullable=True),
)

user_recovery_codes = Table(
    "user_recovery_codes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("code_hash", LargeBinary(32), nullable=False),
)

user_grants = Table(
    "user_grants",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("kind", String(16), nullable=False),  # patient | study | department | site
    Column("value", String(128), nullable=False),  # patient pseudonym, study UID, department code, "*"
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
)

break_glass_sessions = Table(
    "break_glass_sessions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("study_uid", String(64), nullable=False),
    Column("reason", LargeBinary, nullable=False),  # FieldCipher, context "break-glass"
    Column("opened_at", DateTime(timezone=True), nullable=False, index=True),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

auth_tokens = Table(
    "auth_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("token_hash", LargeBinary(32), nullable=False, unique=True),
    Column("kind", String(8), nullable=False),  # access | refresh
    Column("family", String(32), nullable=False, index=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("session_expires_at", DateTime(timezone=True), nullable=False),
    Column("used_at", DateTime(timezone=True), nullable=True),  # a refresh token that was rotated
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

auth_failures = Table(
    "auth_failures",
    metadata,
    Column("key", String(300), primary_key=True),  # "user:<name>" or "client:<address>"
    Column("failures", Integer, nullable=False),
    Column("last_failure", DateTime(timezone=True), nullable=False, index=True),
)

Index("ix_break_glass_user_study", break_glass_sessions.c.user_id, break_glass_sessions.c.study_uid)
