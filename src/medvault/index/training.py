"""Training records in the index: courses, completions, reminders sent and the gate state.

The rules are :mod:`medvault.access.training` (pure); this module keeps the records and answers the
questions the gate, the CLI and the API ask. History is kept: a course's versions and a person's
completions are only ever added, never changed or removed. :func:`training_of` is what
:class:`medvault.index.users.UserStore` asks when it builds a policy subject (on every request).

Ledgering is the caller's (``medvault.compliance.training``): the methods that change something
return what changed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final

from sqlalchemy import Engine, bindparam, func, insert, select, update
from sqlalchemy.engine import Connection

from medvault.access.policy import PHI_ACTIONS, ROLE_PERMISSIONS, Action
from medvault.access.training import (
    EVERYONE,
    Completion,
    CourseState,
    CourseStatus,
    CourseVersion,
    EffectiveTraining,
    course_statuses,
    current_versions,
    effective_training,
    state_of,
)
from medvault.errors import Conflict, InvalidInput, NotFound
from medvault.index import training_schema as t
from medvault.index import users_schema as u
from medvault.index.schema import metadata

__all__ = [
    "MAX_VALID_DAYS",
    "TABLES",
    "CompletionRecord",
    "CourseRecord",
    "GateChange",
    "Reminder",
    "TrainingStore",
    "UserTraining",
    "reaches_phi",
    "training_of",
]

TABLES: Final = [t.training_courses, t.training_completions, t.training_reminders, t.training_gate]
MAX_VALID_DAYS: Final = 36500
MAX_EVIDENCE: Final = 200
_COURSE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._()/-]{0,63}\Z")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}\Z")
_PRINTABLE = re.compile(r"[^\x00-\x1f\x7f-\x9f]*\Z")

# Asked on every request of a signed-in person: built once (see medvault.index.store).
_ALL_COURSES = select(t.training_courses).order_by(t.training_courses.c.id)
# The latest completion per course and version is all the gate needs (a later day expires later).
_LATEST_OF_USER = (
    select(
        t.training_completions.c.course,
        t.training_completions.c.version,
        func.max(t.training_completions.c.completed_on).label("completed_on"),
    )
    .where(t.training_completions.c.user_id == bindparam("user_id"))
    .group_by(t.training_completions.c.course, t.training_completions.c.version)
)


@dataclass(frozen=True)
class CourseRecord:
    course: CourseVersion
    created_at: datetime
    created_by: str
    current: bool


@dataclass(frozen=True)
class CompletionRecord:
    id: int
    username: str
    course: str
    version: str
    completed_on: date
    evidence: str | None
    recorded_at: datetime
    recorded_by: str


@dataclass(frozen=True)
class UserTraining:
    """One person's training as the gate sees it, and per course."""

    username: str
    roles: frozenset[str]
    disabled: bool
    reaches_phi: bool  # their roles grant access to patient data (the gate applies)
    legacy_expires: date | None  # the per-user date (users add --training)
    effective: EffectiveTraining
    courses: tuple[CourseStatus, ...]


@dataclass(frozen=True)
class GateChange:
    """A person's access to patient data changed because of training (``previous`` None: first
    evaluation)."""

    username: str
    allowed: bool
    previous: bool | None
    expires: date | None
    course: str | None


@dataclass(frozen=True)
class Reminder:
    username: str
    course: str
    version: str
    expires: date
    state: CourseState
    new: bool  # not reminded before for this expiry: ledger it now


def _aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise InvalidInput("times must be timezone-aware")
    return now.astimezone(UTC)


def reaches_phi(roles: Iterable[str], table: Mapping[str, frozenset[Action]]) -> bool:
    """Do these roles grant any action on patient data (the actions the training gate guards)?"""
    return any(not table.get(r, frozenset()).isdisjoint(PHI_ACTIONS) for r in roles)


def _course(row: Any) -> CourseVersion:
    return CourseVersion(
        name=row.name,
        version=row.version,
        valid_days=int(row.valid_days),
        required_for=frozenset(row.required_for.split()),
        requires_renewal=bool(row.requires_renewal),
        seq=int(row.id),
    )


def _completion(row: Any) -> Completion:
    return Completion(course=row.course, version=row.version, completed_on=row.completed_on)


def training_of(
    conn: Connection,
    user_id: int,
    roles: Iterable[str],
    *,
    table: Mapping[str, frozenset[Action]],
    fallback: date | None,
) -> EffectiveTraining:
    """The effective training of one person (inside the caller's connection)."""
    courses = [_course(r) for r in conn.execute(_ALL_COURSES)]
    if not courses:
        return EffectiveTraining(expires=fallback, course=None)
    completions = [_completion(r) for r in conn.execute(_LATEST_OF_USER, {"user_id": user_id})]
    roles = frozenset(roles)
    return effective_training(
        courses, completions, roles, reaches_phi=reaches_phi(roles, table), fallback=fallback
    )


def check_course_name(name: str) -> str:
    if not isinstance(name, str) or not _COURSE_NAME.match(name):
        raise InvalidInput(
            "course name must be 1-64 letters, digits, spaces or . _ ( ) / -, starting with a letter or digit"
        )
    return name


def check_version(version: str) -> str:
    if not isinstance(version, str) or not _VERSION.match(version):
        raise InvalidInput("version must be 1-32 letters, digits, '.', '_' or '-', e.g. 2026 or v2.1")
    return version


def check_valid_days(days: int) -> int:
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_VALID_DAYS:
        raise InvalidInput(f"valid-days must be a whole number of days from 1 to {MAX_VALID_DAYS}")
    return days


def check_evidence(evidence: str | None) -> str | None:
    if evidence is None or evidence == "":
        return None
    if len(evidence) > MAX_EVIDENCE or not _PRINTABLE.match(evidence) or not evidence.strip():
        raise InvalidInput(
            f"evidence must be a reference of at most {MAX_EVIDENCE} printable characters "
            "(a certificate number, an LMS record id; no patient data)"
        )
    return evidence.strip()


class TrainingStore:
    """Courses and completions, and the questions asked of them. ``roles``: the role table in force
    (``[access] roles``), to know whose roles reach patient data and which roles exist."""

    def __init__(self, engine: Engine, *, roles: Mapping[str, frozenset[Action]] = ROLE_PERMISSIONS) -> None:
        self.engine = engine
        self._writer = engine.execution_options(write=True)
        self._roles = roles
        metadata.create_all(self._writer, tables=[u.users, *TABLES])

    # -- courses ---------------------------------------------------------------------------------

    def _required_for(self, roles: Iterable[str]) -> frozenset[str]:
        chosen = frozenset(EVERYONE if r in ("all", EVERYONE) else r for r in roles)
        unknown = sorted(chosen - set(self._roles) - {EVERYONE})
        if unknown:
            raise InvalidInput(
                f"required-for: unknown role(s) {', '.join(unknown)}; "
                f"known: {', '.join(self._roles)}, or 'all' (everyone with image access)"
            )
        return chosen

    def add_course(
        self,
        name: str,
        *,
        version: str,
        valid_days: int,
        required_for: Iterable[str] = (),
        requires_renewal: bool = False,
        now: datetime,
        by: str,
    ) -> CourseRecord:
        """Add a course, or a new version of one (it becomes the current version; older versions and
        their completions are kept). The same name and version twice is a :class:`Conflict`."""
        check_course_name(name)
        check_version(version)
        check_valid_days(valid_days)
        roles = self._required_for(required_for)
        now = _utc(now)
        with self._writer.begin() as conn:
            c = t.training_courses.c
            if conn.execute(select(c.id).where(c.name == name, c.version == version)).first():
                raise Conflict(
                    f"course {name!r} already has a version {version!r}",
                    hint="Versions are kept as history: add the change as a new version.",
                )
            conn.execute(
                insert(t.training_courses).values(
                    name=name,
                    version=version,
                    valid_days=valid_days,
                    required_for=" ".join(sorted(roles)),
                    requires_renewal=requires_renewal,
                    created_at=now,
                    created_by=by[:255],
                )
            )
            return next(r for r in self._course_records(conn) if r.current and r.course.name == name)

    def _course_records(self, conn: Connection) -> list[CourseRecord]:
        rows = list(conn.execute(_ALL_COURSES))
        current = {v.seq for v in current_versions(_course(r) for r in rows).values()}
        return [
            CourseRecord(_course(r), _aware(r.created_at), r.created_by, int(r.id) in current) for r in rows
        ]

    def courses(self) -> list[CourseRecord]:
        """Every version of every course, in the order they were added."""
        with self.engine.connect() as conn:
            return self._course_records(conn)

    # -- completions -----------------------------------------------------------------------------

    def _user(self, conn: Connection, username: str) -> Any:
        row = conn.execute(select(u.users).where(u.users.c.name == username)).first()
        if row is None:
            raise NotFound(f"user: no user named {username!r}")
        return row

    def record(
        self,
        username: str,
        course: str,
        *,
        completed_on: date,
        evidence: str | None = None,
        version: str | None = None,
        now: datetime,
        by: str,
    ) -> CompletionRecord:
        """Record that ``username`` completed ``course`` (its current version unless ``version``)
        on ``completed_on`` (not in the future). Earlier completions stay as they are."""
        now = _utc(now)
        evidence = check_evidence(evidence)
        if completed_on > now.date():
            raise InvalidInput(f"completed: {completed_on.isoformat()} is in the future")
        with self._writer.begin() as conn:
            user = self._user(conn, username)
            versions = [r.course for r in self._course_records(conn) if r.course.name == course]
            if not versions:
                known = sorted({r.course.name for r in self._course_records(conn)})
                raise NotFound(
                    f"course: no course named {course!r}",
                    hint=f"Known: {', '.join(known)}."
                    if known
                    else "Add one: `medvault training courses add`.",
                )
            chosen = (
                versions[-1] if version is None else next((v for v in versions if v.version == version), None)
            )
            if chosen is None:
                raise NotFound(
                    f"version: course {course!r} has no version {version!r}",
                    hint=f"Its versions: {', '.join(v.version for v in versions)}.",
                )
            new_id = conn.execute(
                insert(t.training_completions).values(
                    user_id=user.id,
                    course=course,
                    version=chosen.version,
                    completed_on=completed_on,
                    evidence=evidence,
                    recorded_at=now,
                    recorded_by=by[:255],
                )
            ).inserted_primary_key[0]  # type: ignore[index]
        return CompletionRecord(
            int(new_id), username, course, chosen.version, completed_on, evidence, now, by[:255]
        )

    def history(self, username: str) -> list[CompletionRecord]:
        """Every completion recorded for ``username``, oldest first (nothing is ever overwritten)."""
        c = t.training_completions.c
        with self.engine.connect() as conn:
            user = self._user(conn, username)
            rows = conn.execute(
                select(t.training_completions).where(c.user_id == user.id).order_by(c.completed_on, c.id)
            )
            return [
                CompletionRecord(
                    int(r.id),
                    username,
                    r.course,
                    r.version,
                    r.completed_on,
                    r.evidence,
                    _aware(r.recorded_at),
                    r.recorded_by,
                )
                for r in rows
            ]

    # -- status, gate and reminders --------------------------------------------------------------

    def _status(
        self, conn: Connection, users: Sequence[Any], *, today: date, within_days: int
    ) -> list[UserTraining]:
        courses = [r.course for r in self._course_records(conn)]
        ids = [int(r.id) for r in users]
        done: dict[int, list[Completion]] = {i: [] for i in ids}
        c = t.training_completions.c
        for row in conn.execute(select(t.training_completions).where(c.user_id.in_(ids))):
            done[int(row.user_id)].append(_completion(row))
        out = []
        for row in users:
            roles = frozenset(row.roles.split())
            phi = reaches_phi(roles, self._roles)
            completions = done[int(row.id)]
            if courses:
                effective = effective_training(
                    courses, completions, roles, reaches_phi=phi, fallback=row.training_expires
                )
            else:
                effective = EffectiveTraining(expires=row.training_expires, course=None)
            statuses = course_statuses(
                courses, completions, roles, today=today, within_days=within_days, reaches_phi=phi
            )
            out.append(
                UserTraining(
                    username=row.name,
                    roles=roles,
                    disabled=bool(row.disabled),
                    reaches_phi=phi,
                    legacy_expires=row.training_expires,
                    effective=effective,
                    courses=tuple(statuses),
                )
            )
        return out

    def _users(self, conn: Connection, username: str | None) -> list[Any]:
        if username is not None:
            return [self._user(conn, username)]
        return list(conn.execute(select(u.users).order_by(u.users.c.name)))

    def status(
        self, username: str | None = None, *, today: date, within_days: int = 30
    ) -> list[UserTraining]:
        """Training per person (one, or everyone by name), each course ok/expiring/expired/missing."""
        with self.engine.connect() as conn:
            return self._status(conn, self._users(conn, username), today=today, within_days=within_days)

    def sync_gate(self, *, now: datetime, username: str | None = None) -> list[GateChange]:
        """Compare each enabled person's access to patient data (as training decides it) with the
        state last recorded, store the new state, and return the changes (to be ledgered). A person
        seen for the first time is returned with ``previous=None``."""
        now = _utc(now)
        changes: list[GateChange] = []
        g = t.training_gate.c
        with self._writer.begin() as conn:
            users = [r for r in self._users(conn, username) if not r.disabled]
            known = {
                int(r.user_id): r
                for r in conn.execute(
                    select(t.training_gate).where(g.user_id.in_([int(r.id) for r in users]))
                )
            }
            for row, status in zip(
                users, self._status(conn, users, today=now.date(), within_days=0), strict=True
            ):
                if not status.reaches_phi:
                    continue
                expires = status.effective.expires
                allowed = expires is not None and now.date() <= expires
                values = {"allowed": allowed, "expires": expires, "course": status.effective.course}
                before = known.get(int(row.id))
                if before is None:
                    conn.execute(insert(t.training_gate).values(user_id=row.id, changed_at=now, **values))
                elif bool(before.allowed) != allowed:
                    conn.execute(
                        update(t.training_gate).where(g.user_id == row.id).values(changed_at=now, **values)
                    )
                else:
                    if before.expires != expires or before.course != values["course"]:
                        conn.execute(update(t.training_gate).where(g.user_id == row.id).values(**values))
                    continue
                changes.append(
                    GateChange(
                        username=row.name,
                        allowed=allowed,
                        previous=None if before is None else bool(before.allowed),
                        expires=expires,
                        course=status.effective.course,
                    )
                )
        return changes

    def reminders(self, *, now: datetime, within_days: int = 30) -> list[Reminder]:
        """Required courses of enabled people that expire within ``within_days`` days or have
        expired. Each (person, course, expiry) is marked reminded once: ``new`` says it was not
        before, so the caller ledgers it once, however often this runs."""
        if isinstance(within_days, bool) or not 0 <= within_days <= MAX_VALID_DAYS:
            raise InvalidInput(f"within-days must be a whole number from 0 to {MAX_VALID_DAYS}")
        now = _utc(now)
        today = now.date()
        out: list[Reminder] = []
        r = t.training_reminders.c
        with self._writer.begin() as conn:
            users = [row for row in self._users(conn, None) if not row.disabled]
            sent = {
                (int(x.user_id), x.course, x.expires)
                for x in conn.execute(select(r.user_id, r.course, r.expires))
            }
            for row, status in zip(
                users, self._status(conn, users, today=today, within_days=within_days), strict=True
            ):
                for course in status.courses:
                    if not course.required or course.expires is None:
                        continue
                    state = state_of(course.expires, today=today, within_days=within_days)
                    if state not in ("expiring", "expired"):
                        continue
                    key = (int(row.id), course.course, course.expires)
                    new = key not in sent
                    if new:
                        conn.execute(
                            insert(t.training_reminders).values(
                                user_id=row.id,
                                course=course.course,
                                expires=course.expires,
                                state=state,
                                sent_at=now,
                            )
                        )
                    out.append(Reminder(row.name, course.course, course.version, course.expires, state, new))
        return out
