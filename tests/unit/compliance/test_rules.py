"""The retention decision (medvault.compliance.rules) and rule parsing (medvault.config): a study
expires iff every rule that matches it has had its time, and no legal hold covers it."""

from __future__ import annotations

import tomllib
from datetime import date, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medvault.compliance.retention import _without_retention, rules_toml
from medvault.compliance.rules import add_years, age_at, evaluate, keep_until
from medvault.config import RetentionRule, RetentionSettings, _settings_from, parse_rules
from medvault.errors import ConfigError
from medvault.index.retention_view import StudyProfile, parse_da
from medvault.index.store import StudyFacts

TODAY = date(2026, 12, 3)
CARDIO = "c" * 32  # the token studies record the department under (Index.pseudonym)


def study(
    *,
    modalities: tuple[str, ...] = ("CT",),
    study_date: date | None = date(2000, 1, 1),
    birth_date: date | None = date(1950, 6, 1),
    department: str | None = None,
    uid: str = "1.2.3",
) -> StudyProfile:
    return StudyProfile(
        facts=StudyFacts(study_id=1, study_uid=uid, patient="p" * 32, referring=None, department=department),
        modalities=frozenset(modalities),
        study_date=study_date,
        birth_date=birth_date,
        instances=1,
    )


CT_10Y = RetentionRule(name="ct-10y", modality="CT", keep_years=10)
PAEDIATRIC = RetentionRule(name="paediatric", max_age_years=17, keep_until_patient_age=25)
CARDIO_20Y = RetentionRule(name="cardio", department="Cardiology", keep_years=20)
DEPARTMENTS = {"Cardiology": CARDIO}


def verdict(
    rules: list[RetentionRule], s: StudyProfile, today: date = TODAY, holds: tuple[int, ...] = ()
) -> str:
    return evaluate(rules, s, today=today, departments=DEPARTMENTS, holds=holds).kind


def test_ct_ten_years_after_the_study_to_the_day() -> None:
    s = study(study_date=date(2015, 3, 10))
    assert keep_until(CT_10Y, s) == date(2025, 3, 10)
    assert verdict([CT_10Y], s, today=date(2025, 3, 10)) == "keep"  # the last day it must be kept
    assert verdict([CT_10Y], s, today=date(2025, 3, 11)) == "expire"


def test_a_study_no_rule_matches_is_kept() -> None:
    assert verdict([CT_10Y], study(modalities=("MR",))) == "keep"
    assert verdict([], study()) == "keep"
    assert verdict([CT_10Y], study(modalities=())) == "keep"


def test_paediatric_until_age_25_outlasts_the_modality_rule() -> None:
    child = study(study_date=date(2005, 1, 1), birth_date=date(2000, 2, 1))  # 4 at the study
    assert verdict([CT_10Y], child) == "expire"  # 2015
    assert verdict([CT_10Y, PAEDIATRIC], child, today=date(2025, 2, 1)) == "keep"  # 25th birthday
    assert verdict([CT_10Y, PAEDIATRIC], child, today=date(2025, 2, 2)) == "expire"
    decided = evaluate([CT_10Y, PAEDIATRIC], child, today=date(2024, 1, 1), departments={})
    assert decided.rule == "paediatric" and decided.keep_until == date(2025, 2, 1)


def test_adults_are_not_paediatric() -> None:
    adult = study(study_date=date(2005, 1, 1), birth_date=date(1987, 1, 1))  # 18 at the study
    assert verdict([PAEDIATRIC], adult) == "keep"  # no rule matches
    just_17 = study(study_date=date(2005, 1, 1), birth_date=date(1987, 1, 2))
    assert verdict([PAEDIATRIC], just_17, today=date(2012, 1, 2)) == "keep"  # 25 on 2012-01-02
    assert verdict([PAEDIATRIC], just_17, today=date(2012, 1, 3)) == "expire"


def test_missing_dates_keep_the_study_and_say_which() -> None:
    no_birth = study(birth_date=None)
    decided = evaluate([CT_10Y, PAEDIATRIC], no_birth, today=TODAY, departments={})
    assert decided.kind == "undetermined" and "PatientBirthDate" in decided.reason
    assert verdict([CT_10Y], study(study_date=None)) == "undetermined"
    assert verdict([CT_10Y], no_birth) == "expire"  # the CT rule needs no birth date
    born_after = study(study_date=date(2000, 1, 1), birth_date=date(2001, 1, 1))
    assert verdict([PAEDIATRIC], born_after) == "undetermined"


def test_department_rules_match_by_token() -> None:
    assert verdict([CARDIO_20Y], study(department=CARDIO, study_date=date(2000, 1, 1))) == "expire"
    assert verdict([CARDIO_20Y], study(department="d" * 32)) == "keep"
    assert verdict([CARDIO_20Y], study(department=None)) == "keep"
    assert verdict([CARDIO_20Y], study(department=CARDIO, study_date=date(2010, 1, 1))) == "keep"


def test_a_hold_keeps_an_expired_study() -> None:
    decided = evaluate([CT_10Y], study(), today=TODAY, departments={}, holds=(3,))
    assert decided.kind == "held" and decided.holds == (3,) and "#3" in decided.reason
    assert verdict([CT_10Y], study(study_date=date(2020, 1, 1)), holds=(3,)) == "keep"


def test_leap_days_and_ages() -> None:
    assert add_years(date(2000, 2, 29), 10) == date(2010, 3, 1)  # later, not earlier
    assert add_years(date(2000, 2, 29), 4) == date(2004, 2, 29)
    assert age_at(date(2000, 6, 1), date(2010, 5, 31)) == 9
    assert age_at(date(2000, 6, 1), date(2010, 6, 1)) == 10
    assert parse_da("20190230") is None and parse_da("2019.02.03") == date(2019, 2, 3)
    assert parse_da("2019") is None and parse_da(None) is None
    assert parse_da("\uff12\uff10\uff11\uff19\uff10\uff12\uff10\uff13") is None  # fullwidth digits


dates = st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 12, 31))
modalities = st.sampled_from(["CT", "MR", "US", "CR"])
rules_st = st.lists(
    st.builds(
        RetentionRule,
        name=st.uuids().map(str),
        modality=st.one_of(st.just(""), modalities),
        keep_years=st.integers(1, 50),
    ),
    max_size=4,
)


@given(
    rules=rules_st,
    mods=st.frozensets(modalities, max_size=3),
    study_date=dates,
    today=dates,
    holds=st.lists(st.integers(1, 9), max_size=2),
)
def test_a_study_expires_iff_every_matching_rule_has_had_its_time_and_no_hold_covers_it(
    rules: list[RetentionRule], mods: frozenset[str], study_date: date, today: date, holds: list[int]
) -> None:
    s = study(modalities=tuple(mods), study_date=study_date)
    matching = [r for r in rules if not r.modality or r.modality in mods]
    decided = evaluate(rules, s, today=today, departments={}, holds=tuple(holds))
    due = bool(matching) and all(today > add_years(study_date, r.keep_years or 0) for r in matching)
    assert (decided.kind == "expire") == (due and not holds)
    assert (decided.kind == "held") == (due and bool(holds))
    if due:
        assert decided.keep_until is not None and today - decided.keep_until >= timedelta(days=1)


# -- rules in medvault.toml -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"name": "ct", "modality": "CT", "keep_yeras": 10}, 'rules[0] ("ct"): unknown key keep_yeras'),
        ({"name": "ct", "modality": "CT"}, 'rules[0] ("ct"): give keep_years or keep_until_patient_age'),
        ({"name": "ct", "keep_years": "10"}, 'rules[0] ("ct"): keep_years must be a whole number'),
        ({"name": "ct", "keep_years": 0}, "keep_years must be a whole number of years from 1"),
        ({"name": "ct", "keep_years": True}, "keep_years must be a whole number"),
        ({"name": "ct", "keep_years": 5, "min_age_years": 9, "max_age_years": 3}, "min_age_years is greater"),
        ({"name": "ct", "keep_years": 5, "modality": 7}, "modality must be a string"),
        ({"modality": "CT", "keep_years": 5}, "rules[0] name must be"),
        ({"name": "a b", "keep_years": 5}, "rules[0] name must be"),
    ],
)
def test_a_malformed_rule_is_an_error_naming_the_rule_and_key(rule: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_rules([rule])
    assert message in info.value.message


def test_duplicate_names_and_non_tables_are_refused() -> None:
    with pytest.raises(ConfigError, match="same name"):
        parse_rules([{"name": "a", "keep_years": 1}, {"name": "a", "keep_years": 2}])
    with pytest.raises(ConfigError, match="must be a list"):
        parse_rules({"name": "a"})
    with pytest.raises(ConfigError, match=r"rules\[0\] must be a table"):
        parse_rules(["ct=10"])


def test_medvault_toml_with_a_bad_rule_names_the_key(tmp_path: Path) -> None:
    text = '[retention]\n\n[[retention.rules]]\nname = "ct"\nmodality = "CT"\nkeep_yaers = 10\n'
    with pytest.raises(ConfigError) as info:
        _settings_from(text, tmp_path / "medvault.toml")
    assert '[retention] rules[0] ("ct"): unknown key keep_yaers' in info.value.message
    with pytest.raises(ConfigError, match="schedule_seconds must be at least 60"):
        _settings_from("[retention]\nschedule_seconds = 5\n", tmp_path / "medvault.toml")
    loaded = _settings_from(text.replace("keep_yaers", "keep_years"), tmp_path / "medvault.toml")
    assert loaded.retention.rules == (RetentionRule(name="ct", modality="CT", keep_years=10),)


rule_st = st.builds(
    RetentionRule,
    name=st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True),
    modality=st.one_of(st.just(""), modalities),
    department=st.text(
        st.characters(codec="utf-8", categories=["L", "N", "P"]) | st.just(" "), max_size=20
    ).map(str.strip),
    min_age_years=st.one_of(st.none(), st.integers(0, 10)),
    max_age_years=st.one_of(st.none(), st.integers(10, 200)),
    keep_years=st.one_of(st.none(), st.integers(1, 200)),
    keep_until_patient_age=st.integers(1, 200),
)


@given(rules=st.lists(rule_st, max_size=4, unique_by=lambda r: r.name))
def test_rules_written_to_medvault_toml_read_back_the_same(rules: list[RetentionRule]) -> None:
    before = (
        "a = 1\n[server]\nport = 8443\n\n[retention]  # old\nrules = []\n"
        '[[retention.rules]]\nname = "x"\n\n[ledger]\ncheckpoint_seconds = 10\n'
    )
    text = "\n".join(_without_retention(before)) + "\n\n" + rules_toml(RetentionSettings(), rules)
    raw = tomllib.loads(text)
    assert raw["server"] == {"port": 8443} and raw["ledger"] == {"checkpoint_seconds": 10}
    assert parse_rules(raw["retention"]["rules"]) == tuple(rules)
