"""DIRECTORY.json: extra keys ignored, errors name the field, shifts wrap midnight."""

from __future__ import annotations

from typing import Any

import pytest

from medvault.errors import DirectoryInvalid
from medvault.monitor import Directory, parse_directory

from .conftest import directory


def test_parse_directory() -> None:
    d = directory()
    assert d.users["cyd"].remote and d.users["cyd"].home_ip == "73.1.2.3"
    assert d.patients[f"{7:032x}"].vip
    assert d.care_teams["cardiology"] == ("card-a", "card-b")
    assert d.epoch is not None and d.epoch.year == 2026


def test_shift_hours_wrap_midnight() -> None:
    d = directory()
    assert d.in_shift("day", 7) and d.in_shift("day", 18) and not d.in_shift("day", 19)
    assert d.in_shift("night", 23) and d.in_shift("night", 3) and not d.in_shift("night", 12)
    assert d.in_shift("unknown", 3) is None


def test_empty_directory() -> None:
    assert parse_directory({}) == Directory.empty()


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ([], "must be a JSON object"),
        ({"users": {}}, "'users'"),
        ({"users": [{"role": "x"}]}, "'users[0].user'"),
        ({"users": [{"user": "a"}, {"user": "a"}]}, "'users[1].user'"),
        ({"users": [{"user": "a", "remote": "yes"}]}, "'users[0].remote'"),
        ({"shift_hours": {"day": [7, 19]}, "users": [{"user": "a", "shift": "night"}]}, "'users[0].shift'"),
        ({"shift_hours": {"day": [7, 25]}}, "'shift_hours.day[1]'"),
        ({"shift_hours": {"day": 7}}, "'shift_hours.day'"),
        ({"care_teams": {"icu": "a"}}, "'care_teams.icu'"),
        ({"patients": [{"patient_id": "p", "vip": 1}]}, "'patients[0].vip'"),
        ({"patients": [{"dept": "icu"}]}, "'patients[0].patient_id'"),
        ({"epoch": "yesterday"}, "'epoch'"),
        ({"utc_offset_minutes": 10_000}, "'utc_offset_minutes'"),
    ],
)
def test_errors_name_the_field(raw: Any, field: str) -> None:
    with pytest.raises(DirectoryInvalid, match=field.replace("[", r"\[").replace("]", r"\]")):
        parse_directory(raw)
