from __future__ import annotations

from datetime import date
from functools import cache
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medvault.dicom import Criterion, MatchKind, normalize_for_exact, parse_criterion, resolve_attribute
from medvault.errors import InvalidInput


def el(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)} if values else {"vr": vr}


def pn(*names: str) -> dict[str, Any]:
    return el("PN", *({"Alphabetic": n} for n in names))


def test_resolve_attribute() -> None:
    assert resolve_attribute("PatientName") == ("00100010", "PN")
    assert resolve_attribute("0020000d") == ("0020000D", "UI")
    assert resolve_attribute("StudyDate") == ("00080020", "DA")
    for bad in ("NoSuchKeyword", "00081250.00081150", "0009ABCD", "1234"):
        with pytest.raises(InvalidInput, match="attribute"):
            resolve_attribute(bad)


@pytest.mark.parametrize(
    ("vr", "raw", "kind"),
    [
        ("PN", "", MatchKind.UNIVERSAL),
        ("LO", "*", MatchKind.UNIVERSAL),
        ("UI", "1.2.3\\1.2.4", MatchKind.UID_LIST),
        ("UI", "1.2.3", MatchKind.SINGLE),
        ("DA", "20200101-20201231", MatchKind.RANGE),
        ("DA", "-20201231", MatchKind.RANGE),
        ("DA", "20200101-", MatchKind.RANGE),
        ("TM", "0930-1000", MatchKind.RANGE),
        ("DT", "20200101-20200102", MatchKind.RANGE),
        ("DA", "20200101", MatchKind.SINGLE),
        ("PN", "Do*", MatchKind.WILDCARD),
        ("LO", "a?c", MatchKind.WILDCARD),
        ("LO", "abc", MatchKind.SINGLE),
        ("IS", "12", MatchKind.SINGLE),
    ],
)
def test_kinds(vr: str, raw: str, kind: MatchKind) -> None:
    assert parse_criterion("00000000", vr, raw).kind is kind


@pytest.mark.parametrize(
    ("vr", "raw"),
    [
        ("DA", "2020-01-01"),
        ("DA", "-"),
        ("DA", "2020010"),
        ("DA", "20201231-20200101"),
        ("TM", "25x"),
        ("DA", "2020*"),
        ("UI", "1.2.*"),
        ("UI", "abc"),
        ("IS", "twelve"),
        ("DT", "2020-2019"),
    ],
)
def test_malformed_values_are_refused(vr: str, raw: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_criterion("00080020", vr, raw)
    assert "00080020" in str(caught.value)


def test_person_name_matching() -> None:
    c = parse_criterion("00100010", "PN", "doe^john")
    assert c.matches(pn("DOE^JOHN"))
    assert c.matches(pn("Doe^John^^"))
    assert not c.matches(pn("Doe^Johnny"))
    assert c.matches(pn("Smith^Ann", "Doe^John"))  # any value of a multi-valued element
    assert parse_criterion("00100010", "PN", "müller").matches(pn("MULLER"))  # accent-insensitive
    assert parse_criterion("00100010", "PN", "muller").matches(pn("Müller"))
    assert parse_criterion("00100010", "PN", "山田^太郎").matches(
        el("PN", {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎"})
    )
    wild = parse_criterion("00100010", "PN", "DOE^J*")
    assert wild.kind is MatchKind.WILDCARD
    assert wild.matches(pn("Doe^Jane")) and not wild.matches(pn("Dow^Jane"))
    assert c.exact_value == "doe^john"


def test_fuzzy_person_name() -> None:
    fuzzy = parse_criterion("00100010", "PN", "jo", fuzzy=True)
    assert fuzzy.matches(pn("Doe^John"))
    assert fuzzy.matches(pn("Jones^Ann"))
    assert not fuzzy.matches(pn("Doe^Ann"))
    assert not parse_criterion("00100010", "PN", "jo").matches(pn("Doe^John"))
    assert parse_criterion("00100010", "PN", "j*n", fuzzy=True).matches(pn("Doe^Johnny"))


def test_other_strings_are_case_sensitive() -> None:
    c = parse_criterion("00080060", "CS", "CT")
    assert c.matches(el("CS", "CT")) and c.matches(el("CS", "MR", "CT"))
    assert not c.matches(el("CS", "ct"))
    assert parse_criterion("00100020", "LO", "ID1 ").matches(el("LO", " ID1"))


def test_empty_and_absent_elements() -> None:
    universal = parse_criterion("00100010", "PN", "")
    assert universal.matches(None) and universal.matches(el("PN"))
    single = parse_criterion("00100020", "LO", "x")
    assert not single.matches(None)
    assert not single.matches(el("LO"))
    assert not parse_criterion("00100020", "LO", "*x*").matches(el("LO"))
    assert not parse_criterion("00080020", "DA", "-20991231").matches(el("DA"))


def test_time_ranges_compare_padded() -> None:
    assert parse_criterion("00080030", "TM", "0930-1000").matches(el("TM", "093000.123"))
    assert parse_criterion("00080030", "TM", "0930-").matches(el("TM", "093000.123"))
    assert parse_criterion("00080030", "TM", "-0930").matches(el("TM", "093059.999"))
    assert not parse_criterion("00080030", "TM", "-0930").matches(el("TM", "093100"))
    assert not parse_criterion("00080030", "TM", "0931-").matches(el("TM", "093059"))
    assert parse_criterion("00080030", "TM", "0930").matches(el("TM", "093000.123"))
    assert parse_criterion("00080030", "TM", "09:30-10:00").matches(el("TM", "0945"))


def test_datetime_ranges() -> None:
    c = parse_criterion("0008002A", "DT", "20200101-20200131")
    assert c.matches(el("DT", "20200131235959.5"))
    assert not c.matches(el("DT", "20200201000000"))
    assert parse_criterion("0008002A", "DT", "2020-").matches(el("DT", "20200101120000+0100"))


def test_uid_lists_and_numbers() -> None:
    c = parse_criterion("0020000D", "UI", "1.2.3\\1.2.4")
    assert c.uids == ("1.2.3", "1.2.4")
    assert c.matches(el("UI", "1.2.4")) and not c.matches(el("UI", "1.2.5"))
    assert c.exact_value is None
    assert parse_criterion("00200013", "IS", "7").matches(el("IS", 7))
    assert parse_criterion("00200013", "IS", "7").matches(el("IS", "7"))
    assert not parse_criterion("00200013", "IS", "7").matches(el("IS", 8))


def test_normalize_for_exact() -> None:
    assert normalize_for_exact("PN", "Doe^John^^ ") == "doe^john"
    assert normalize_for_exact("PN", "Müller") == "muller"
    assert normalize_for_exact("UI", "1.2.3\x00") == "1.2.3"
    assert normalize_for_exact("LO", " ID1 ") == "ID1"
    assert normalize_for_exact("DA", "20200101 ") == "20200101"


# --- properties -------------------------------------------------------------------------------


def oracle(pattern: str, text: str) -> bool:
    """Reference wildcard matcher: '*' any run, '?' one character, everything else literal."""

    @cache
    def go(i: int, j: int) -> bool:
        if i == len(pattern):
            return j == len(text)
        if pattern[i] == "*":
            return go(i + 1, j) or (j < len(text) and go(i, j + 1))
        if j < len(text) and (pattern[i] == "?" or pattern[i] == text[j]):
            return go(i + 1, j + 1)
        return False

    return go(0, 0)


ALPHABET = st.sampled_from([*"ab[]^.*?\\", "c"])
TEXT = st.text(alphabet=st.sampled_from(list("ab[]^.\\c")), min_size=1, max_size=8)


@given(pattern=st.text(alphabet=ALPHABET, min_size=1, max_size=8), text=TEXT)
def test_wildcard_equals_reference(pattern: str, text: str) -> None:
    c = parse_criterion("00100020", "LO", pattern)
    if c.kind is MatchKind.UNIVERSAL:
        assert pattern.strip(" ") in ("", "*")
        return
    if "\\" in text:
        return  # a backslash separates values in DICOM: not part of a single value
    assert c.matches(el("LO", text)) == oracle(pattern, text)


@given(text=st.text(alphabet=st.sampled_from(list("ab[]c")), min_size=1, max_size=6))
def test_brackets_are_literal(text: str) -> None:
    c = parse_criterion("00100020", "LO", "[" + text + "*")
    assert c.matches(el("LO", "[" + text + "zz"))
    assert not c.matches(el("LO", text + "zz"))


DATES = st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 12, 31)).map(lambda d: d.strftime("%Y%m%d"))


@given(a=DATES, b=DATES, d=DATES, open_low=st.booleans(), open_high=st.booleans())
def test_date_range_inclusive(a: str, b: str, d: str, open_low: bool, open_high: bool) -> None:
    low, high = min(a, b), max(a, b)
    if open_low and open_high:
        open_high = False
    raw = f"{'' if open_low else low}-{'' if open_high else high}"
    c = parse_criterion("00080020", "DA", raw)
    expected = (open_low or low <= d) and (open_high or d <= high)
    assert c.matches(el("DA", d)) == expected
    for bound, is_open in ((low, open_low), (high, open_high)):
        if not is_open:
            assert Criterion.matches(c, el("DA", bound))  # bounds are inclusive


UIDS = st.lists(st.from_regex(r"1\.2\.[1-9][0-9]{0,5}", fullmatch=True), min_size=1, max_size=5)


@given(listed=UIDS, probe=st.from_regex(r"1\.2\.[1-9][0-9]{0,5}", fullmatch=True))
def test_uid_list_membership(listed: list[str], probe: str) -> None:
    c = parse_criterion("0020000D", "UI", "\\".join(listed))
    assert c.matches(el("UI", probe)) == (probe in listed)
    assert all(c.matches(el("UI", u)) for u in listed)
