"""Training records as the gate sees them: which courses a person must hold, and until when.

Pure (no I/O, the day is an argument). The store (:mod:`medvault.index.training`) loads courses and
completions and asks :func:`effective_training`; the result becomes the policy subject's
``training_expires``, so the one gate in :func:`medvault.access.policy.decide` applies unchanged.

The rules (docs/compliance.md, "Training records"):

* A course has versions; the one added last is the *current* one, and its ``required_for`` and
  ``valid_days`` are what is asked of people now. ``required_for`` lists roles; ``*`` means
  everyone whose roles reach patient data.
* A completion names a version and is valid through ``completed_on + valid_days`` of *that*
  version (the last day included). Completions of older versions keep counting until their own
  expiry, unless a later version was added with ``requires_renewal``: then only completions of that
  version or a newer one count.
* A person's effective expiry is the earliest expiry among the courses required for their roles;
  a required course without a counting completion means no expiry at all (no access).
* When no course is required for a person's roles, the per-user date (``users add --training``,
  ``users training``) decides, as before courses existed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Final, Literal

__all__ = [
    "EVERYONE",
    "STATES",
    "Completion",
    "CourseState",
    "CourseStatus",
    "CourseVersion",
    "EffectiveTraining",
    "completion_counts",
    "completion_expires",
    "course_expiry",
    "course_statuses",
    "current_versions",
    "effective_training",
    "is_required",
    "state_of",
]

#: ``required_for`` value meaning every person whose roles reach patient data.
EVERYONE: Final = "*"
CourseState = Literal["ok", "expiring", "expired", "missing"]
STATES: Final[tuple[CourseState, ...]] = ("ok", "expiring", "expired", "missing")


@dataclass(frozen=True, kw_only=True)
class CourseVersion:
    """One version of a course. ``seq`` orders the versions of all courses as they were added."""

    name: str
    version: str
    valid_days: int
    required_for: frozenset[str]
    requires_renewal: bool = False
    seq: int

    def __post_init__(self) -> None:
        if self.valid_days < 1:
            raise ValueError("a course is valid for at least one day")


@dataclass(frozen=True, kw_only=True)
class Completion:
    """A person completed ``version`` of ``course`` on ``completed_on``."""

    course: str
    version: str
    completed_on: date


@dataclass(frozen=True, kw_only=True)
class EffectiveTraining:
    """What the gate gets: the expiry (``None``: no access) and the course that decides it."""

    expires: date | None
    course: str | None  # the required course expiring first, or missing; None for the per-user date


@dataclass(frozen=True, kw_only=True)
class CourseStatus:
    course: str
    version: str  # the current version
    required: bool
    completed_on: date | None  # of the completion that counts longest
    completed_version: str | None
    expires: date | None
    state: CourseState


def current_versions(courses: Iterable[CourseVersion]) -> dict[str, CourseVersion]:
    """Each course's current version (the one added last), by name."""
    out: dict[str, CourseVersion] = {}
    for course in sorted(courses, key=lambda c: c.seq):
        out[course.name] = course
    return out


def is_required(course: CourseVersion, roles: Iterable[str], *, reaches_phi: bool) -> bool:
    """Is ``course`` required of someone with ``roles`` (``reaches_phi``: they grant PHI access)?"""
    if EVERYONE in course.required_for and reaches_phi:
        return True
    return not course.required_for.isdisjoint(roles)


def completion_expires(completion: Completion, version: CourseVersion) -> date:
    """The last day a completion is valid (the day of completion plus the version's validity)."""
    return completion.completed_on + timedelta(days=version.valid_days)


def completion_counts(completion: Completion, versions: Sequence[CourseVersion]) -> bool:
    """Does ``completion`` count for its course? ``versions``: that course's versions, any order.
    It counts when it names a known version and no later version requires renewal."""
    ordered = sorted(versions, key=lambda v: v.seq)
    names = [v.version for v in ordered]
    if completion.version not in names:
        return False
    later = ordered[names.index(completion.version) + 1 :]
    return not any(v.requires_renewal for v in later)


def course_expiry(
    versions: Sequence[CourseVersion], completions: Iterable[Completion]
) -> tuple[Completion | None, date | None]:
    """The completion of one course that counts longest and its expiry (``None`` if none counts).
    ``versions``: that course's versions; completions of other courses are ignored."""
    by_version = {v.version: v for v in versions}
    names = {v.name for v in versions}
    best: tuple[Completion | None, date | None] = (None, None)
    for completion in completions:
        version = by_version.get(completion.version)
        if completion.course not in names or version is None or not completion_counts(completion, versions):
            continue
        expires = completion_expires(completion, version)
        if best[1] is None or expires > best[1]:
            best = (completion, expires)
    return best


def _grouped(
    courses: Iterable[CourseVersion], completions: Iterable[Completion]
) -> tuple[dict[str, list[CourseVersion]], dict[str, list[Completion]]]:
    versions: dict[str, list[CourseVersion]] = {}
    for course in courses:
        versions.setdefault(course.name, []).append(course)
    done: dict[str, list[Completion]] = {}
    for completion in completions:
        done.setdefault(completion.course, []).append(completion)
    return versions, done


def effective_training(
    courses: Iterable[CourseVersion],
    completions: Iterable[Completion],
    roles: Iterable[str],
    *,
    reaches_phi: bool = True,
    fallback: date | None = None,
) -> EffectiveTraining:
    """The earliest expiry among the courses required for ``roles`` (``None`` when one of them has
    no counting completion); ``fallback`` (the per-user date) when none is required."""
    roles = frozenset(roles)
    courses = list(courses)
    versions, done = _grouped(courses, completions)
    required = [
        c for c in current_versions(courses).values() if is_required(c, roles, reaches_phi=reaches_phi)
    ]
    if not required:
        return EffectiveTraining(expires=fallback, course=None)
    earliest: EffectiveTraining | None = None
    for course in sorted(required, key=lambda c: c.name):
        _, expires = course_expiry(versions[course.name], done.get(course.name, ()))
        if expires is None:
            return EffectiveTraining(expires=None, course=course.name)
        if earliest is None or earliest.expires is None or expires < earliest.expires:
            earliest = EffectiveTraining(expires=expires, course=course.name)
    assert earliest is not None
    return earliest


def state_of(expires: date | None, *, today: date, within_days: int) -> CourseState:
    """ok; expiring (still valid, but for ``within_days`` days or fewer); expired; or missing."""
    if expires is None:
        return "missing"
    if today > expires:
        return "expired"
    if expires - today <= timedelta(days=within_days):
        return "expiring"
    return "ok"


def course_statuses(
    courses: Iterable[CourseVersion],
    completions: Iterable[Completion],
    roles: Iterable[str],
    *,
    today: date,
    within_days: int,
    reaches_phi: bool = True,
) -> list[CourseStatus]:
    """Per course (by name): required or not, the completion that counts, its expiry and state.
    Courses neither required nor ever completed by this person are left out."""
    roles = frozenset(roles)
    courses = list(courses)
    versions, done = _grouped(courses, completions)
    out: list[CourseStatus] = []
    for name, current in sorted(current_versions(courses).items()):
        required = is_required(current, roles, reaches_phi=reaches_phi)
        if not required and name not in done:
            continue
        best, expires = course_expiry(versions[name], done.get(name, ()))
        out.append(
            CourseStatus(
                course=name,
                version=current.version,
                required=required,
                completed_on=best.completed_on if best else None,
                completed_version=best.version if best else None,
                expires=expires,
                state=state_of(expires, today=today, within_days=within_days),
            )
        )
    return out
