"""Which studies retention may delete: a pure decision from the rules, a study's profile, the
day and the legal holds on it (no I/O, the day passed in).

The rules are minimums (docs/compliance.md): each rule a study matches says until when it must be
kept, and a study may go only when the latest of those days has passed. A study no rule matches
is kept; so is one a rule might match but whose dates are missing or malformed (a paediatric rule
cannot tell a child without a birth date): nothing is deleted on a guess. A held study is never
deleted, whatever the rules say.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Literal

from medvault.config import RetentionRule
from medvault.index.retention_view import StudyProfile

__all__ = ["Verdict", "add_years", "age_at", "evaluate", "keep_until", "rules_digest"]

VerdictKind = Literal["expire", "keep", "held", "undetermined"]


class _Match(enum.Enum):
    NO = "no"
    YES = "yes"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Verdict:
    study_uid: str
    kind: VerdictKind
    reason: str  # in words, without PHI (no dates of birth; the keep-until day only)
    rule: str | None = None  # the rule whose keep-until day is the latest
    keep_until: date | None = None  # the last day the study must be kept
    holds: tuple[int, ...] = ()


def add_years(day: date, years: int) -> date:
    """``years`` after ``day``; 29 February goes to 1 March (the later day: keep longer)."""
    try:
        return day.replace(year=day.year + years)
    except ValueError:
        return date(day.year + years, 3, 1)


def age_at(birth: date, on: date) -> int:
    """Age in whole years on a day (negative when the birth date is after it: bad data)."""
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def _matches(rule: RetentionRule, study: StudyProfile, departments: Mapping[str, str]) -> _Match:
    if rule.modality and rule.modality not in study.modalities:
        return _Match.NO
    if rule.department and study.facts.department != departments.get(rule.department):
        return _Match.NO
    if rule.min_age_years is not None or rule.max_age_years is not None:
        if study.study_date is None or study.birth_date is None:
            return _Match.UNKNOWN
        age = age_at(study.birth_date, study.study_date)
        if age < 0:
            return _Match.UNKNOWN
        if rule.min_age_years is not None and age < rule.min_age_years:
            return _Match.NO
        if rule.max_age_years is not None and age > rule.max_age_years:
            return _Match.NO
    return _Match.YES


def keep_until(rule: RetentionRule, study: StudyProfile) -> date | None:
    """The last day ``rule`` keeps the study (the later of its two limits), None if a date it
    needs is missing."""
    days: list[date] = []
    if rule.keep_years is not None:
        if study.study_date is None:
            return None
        days.append(add_years(study.study_date, rule.keep_years))
    if rule.keep_until_patient_age is not None:
        if study.birth_date is None:
            return None
        days.append(add_years(study.birth_date, rule.keep_until_patient_age))
    return max(days) if days else None


def evaluate(
    rules: Sequence[RetentionRule],
    study: StudyProfile,
    *,
    today: date,
    departments: Mapping[str, str],
    holds: Sequence[int] = (),
) -> Verdict:
    """The verdict on one study. ``departments``: each rule's department name -> the token
    studies record it under (``Index.pseudonym``); ``holds``: ids of the holds in force on it."""
    uid = study.facts.study_uid
    latest: tuple[date, str] | None = None
    for rule in rules:
        match = _matches(rule, study, departments)
        if match is _Match.NO:
            continue
        until = keep_until(rule, study) if match is _Match.YES else None
        if until is None:
            needs = [
                name
                for name, value in (("StudyDate", study.study_date), ("PatientBirthDate", study.birth_date))
                if value is None
            ] or ["PatientBirthDate before StudyDate"]
            return Verdict(
                uid, "undetermined", f"kept: rule {rule.name} needs a valid {' and '.join(needs)}", rule.name
            )
        if latest is None or until > latest[0]:
            latest = (until, rule.name)
    if latest is None:
        return Verdict(uid, "keep", "kept: no rule matches")
    until, name = latest
    if today <= until:
        return Verdict(uid, "keep", f"kept until {until.isoformat()} by rule {name}", name, until)
    if holds:
        held = ", ".join(f"#{h}" for h in holds)
        return Verdict(
            uid, "held", f"expired under rule {name} but under legal hold {held}", name, until, tuple(holds)
        )
    return Verdict(uid, "expire", f"expired under rule {name} (kept until {until.isoformat()})", name, until)


def rules_digest(rules: Sequence[RetentionRule]) -> str:
    """SHA-256 of the rules in a canonical form: the ledger names the rule set each run used."""
    text = json.dumps([r.to_toml() for r in rules], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
