"""Tables of training records: courses (every version kept), completions (never overwritten),
reminders sent (one per person, course and expiry) and the last gate state ledgered per person.

Registered on the index's one :data:`medvault.index.schema.metadata`; ``create_all`` adds them to an
existing home (new tables only, no column of an older table changes). Nothing here is PHI: course
names, versions, dates and evidence references (a certificate number, an LMS record id) about staff.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    UniqueConstraint,
)

from medvault.index.schema import metadata

training_courses = Table(
    "training_courses",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),  # the order versions were added in
    Column("name", String(64), nullable=False, index=True),
    Column("version", String(32), nullable=False),
    Column("valid_days", Integer, nullable=False),
    Column("required_for", String(512), nullable=False),  # space-separated roles, "*" = everyone
    Column("requires_renewal", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("created_by", String(255), nullable=False),
    UniqueConstraint("name", "version", name="uq_training_course_version"),
)

training_completions = Table(
    "training_completions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("course", String(64), nullable=False),
    Column("version", String(32), nullable=False),
    Column("completed_on", Date, nullable=False),
    Column("evidence", String(200), nullable=True),  # certificate number, LMS record id
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Column("recorded_by", String(255), nullable=False),
)

training_reminders = Table(
    "training_reminders",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("course", String(64), nullable=False),
    Column("expires", Date, nullable=False),
    Column("state", String(16), nullable=False),  # expiring | expired, when it was sent
    Column("sent_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("user_id", "course", "expires", name="uq_training_reminder"),
)

training_gate = Table(
    "training_gate",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id"), primary_key=True),
    Column("allowed", Boolean, nullable=False),
    Column("expires", Date, nullable=True),
    Column("course", String(64), nullable=True),
    Column("changed_at", DateTime(timezone=True), nullable=False),
)

Index("ix_training_completions_user_course", training_completions.c.user_id, training_completions.c.course)
