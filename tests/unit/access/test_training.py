"""The training rules (pure): a completion's expiry, which versions count, and the effective
expiry the gate gets (the earliest among required courses; a missing one means no access)."""

from __future__ import annotations

from datetime import date, timedelta

from hypothesis import given
from hypothesis import strategies as st

from medvault.access.training import (
    EVERYONE,
    Completion,
    CourseVersion,
    completion_counts,
    course_expiry,
    course_statuses,
    effective_training,
    state_of,
)

TODAY = date(2030, 3, 4)


def course(
    name: str,
    version: str,
    seq: int,
    *,
    days: int = 365,
    roles: tuple[str, ...] = ("radiologist",),
    renewal: bool = False,
) -> CourseVersion:
    return CourseVersion(
        name=name,
        version=version,
        valid_days=days,
        required_for=frozenset(roles),
        requires_renewal=renewal,
        seq=seq,
    )


def done(name: str, version: str, on: date) -> Completion:
    return Completion(course=name, version=version, completed_on=on)


def test_a_completion_is_valid_through_its_versions_validity() -> None:
    privacy = [course("privacy", "2029", 1, days=365)]
    _, expires = course_expiry(privacy, [done("privacy", "2029", date(2029, 3, 1))])
    assert expires == date(2030, 3, 1)
    assert state_of(expires, today=date(2030, 3, 1), within_days=0) == "expiring"  # its last day
    assert state_of(expires, today=date(2030, 3, 2), within_days=0) == "expired"


def test_older_versions_count_until_a_version_requires_renewal() -> None:
    v1 = course("privacy", "v1", 1, days=100)
    v2 = course("privacy", "v2", 2, days=400)
    v3 = course("privacy", "v3", 3, days=400, renewal=True)
    old = done("privacy", "v1", date(2030, 1, 1))
    assert completion_counts(old, [v1, v2])
    _, expires = course_expiry([v1, v2], [old])
    assert expires == date(2030, 1, 1) + timedelta(days=100)  # the validity of the version it names
    assert not completion_counts(old, [v1, v2, v3])
    assert not completion_counts(done("privacy", "v2", date(2030, 1, 1)), [v1, v2, v3])
    assert completion_counts(done("privacy", "v3", date(2030, 1, 1)), [v1, v2, v3])
    assert course_expiry([v1, v2, v3], [old]) == (None, None)
    assert not completion_counts(done("privacy", "v9", date(2030, 1, 1)), [v1, v2])  # unknown version


def test_effective_expiry_is_the_earliest_required_course() -> None:
    courses = [
        course("privacy", "1", 1, days=365),
        course("radiation safety", "1", 2, days=100, roles=("radiologist", "technologist")),
        course("gdpr", "1", 3, days=10, roles=("auditor",)),  # not required of a radiologist
    ]
    completions = [
        done("privacy", "1", date(2030, 1, 1)),
        done("radiation safety", "1", date(2030, 1, 1)),
        done("gdpr", "1", date(2020, 1, 1)),
    ]
    got = effective_training(courses, completions, {"radiologist"}, fallback=date(2099, 1, 1))
    assert got.expires == date(2030, 1, 1) + timedelta(days=100) and got.course == "radiation safety"
    missing = effective_training(courses, completions[:1], {"radiologist"})
    assert missing.expires is None and missing.course == "radiation safety"


def test_the_per_user_date_decides_when_no_course_is_required() -> None:
    courses = [course("gdpr", "1", 1, roles=("auditor",))]
    got = effective_training(courses, [], {"radiologist"}, fallback=date(2031, 1, 1))
    assert got.expires == date(2031, 1, 1) and got.course is None
    assert effective_training([], [], {"radiologist"}, fallback=None).expires is None


def test_everyone_means_everyone_who_reaches_patient_data() -> None:
    courses = [course("privacy", "1", 1, roles=(EVERYONE,))]
    assert effective_training(courses, [], {"viewer"}, reaches_phi=True).course == "privacy"
    assert effective_training(courses, [], {"auditor"}, reaches_phi=False, fallback=TODAY).expires == TODAY


def test_statuses_name_every_required_course_and_completed_optional_ones() -> None:
    courses = [
        course("privacy", "1", 1, days=365),
        course("fire", "1", 2, roles=()),  # tracked only
        course("unused", "1", 3, roles=()),
        course("radiation", "1", 4, days=30),
    ]
    completions = [done("privacy", "1", date(2029, 3, 20)), done("fire", "1", date(2020, 1, 1))]
    got = {
        s.course: s
        for s in course_statuses(courses, completions, {"radiologist"}, today=TODAY, within_days=30)
    }
    assert set(got) == {"privacy", "fire", "radiation"}
    assert got["privacy"].state == "expiring" and got["privacy"].expires == date(2030, 3, 20)
    assert got["fire"].state == "expired" and not got["fire"].required
    assert got["radiation"].state == "missing" and got["radiation"].completed_on is None


# -- properties -------------------------------------------------------------------------------------

ROLES = ["radiologist", "technologist", "auditor"]
names = st.sampled_from(["a", "b", "c", "d"])
versions = st.lists(
    st.tuples(
        names,
        st.sampled_from(["1", "2", "3"]),
        st.integers(1, 800),
        st.frozensets(st.sampled_from([*ROLES, EVERYONE])),
        st.booleans(),
    ),
    max_size=8,
    unique_by=lambda v: (v[0], v[1]),
)
completions_st = st.lists(
    st.builds(done, names, st.sampled_from(["1", "2", "3"]), st.dates(date(2027, 1, 1), date(2030, 3, 4))),
    max_size=10,
)


@given(versions, completions_st, st.frozensets(st.sampled_from(ROLES), min_size=1), st.none() | st.dates())
def test_effective_expiry_is_the_min_over_required_courses(
    raw: list[tuple[str, str, int, frozenset[str], bool]],
    completions: list[Completion],
    roles: frozenset[str],
    fallback: date | None,
) -> None:
    courses = [
        CourseVersion(name=n, version=v, valid_days=d, required_for=r, requires_renewal=b, seq=i)
        for i, (n, v, d, r, b) in enumerate(raw)
    ]
    got = effective_training(courses, completions, roles, fallback=fallback)
    current = {}
    for c in courses:
        current[c.name] = c  # the last added
    required = [c for c in current.values() if EVERYONE in c.required_for or c.required_for & roles]
    if not required:
        assert got.expires == fallback and got.course is None
        return
    expiries = {}
    for c in required:
        of_course = [v for v in courses if v.name == c.name]
        _, expiries[c.name] = course_expiry(of_course, completions)
    if any(e is None for e in expiries.values()):
        # a required course never completed (or only superseded versions): no access
        assert got.expires is None and got.course is not None and expiries[got.course] is None
    else:
        assert got.expires == min(e for e in expiries.values() if e is not None)
        assert got.course is not None and expiries[got.course] == got.expires
    # adding a completion never shortens anyone's access
    if completions and got.expires is not None:
        later = [*completions, done(completions[0].course, completions[0].version, date(2030, 3, 4))]
        more = effective_training(courses, later, roles, fallback=fallback).expires
        assert more is not None and more >= got.expires
