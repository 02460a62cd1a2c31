"""docs/monitoring.md stays true: every setting and its default, every action, every rule."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from medvault.monitor import Action, Rule, Rules

DOC = (Path(__file__).resolve().parents[3] / "docs" / "monitoring.md").read_text()


def _fmt(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def test_every_setting_is_documented_with_its_default() -> None:
    rows = {line.split("|")[1].strip(): line for line in DOC.splitlines() if line.startswith("| `")}
    defaults = Rules()
    for f in dataclasses.fields(Rules):
        row = next((line for key, line in rows.items() if f"`{f.name}`" in key), None)
        assert row is not None, f.name
        value = getattr(defaults, f.name)
        if f.name == "researcher_roles":
            assert '["researcher"]' in row
        else:
            assert _fmt(value) in row.split("|")[2], f.name


def test_every_action_is_documented() -> None:
    for action in Action:
        assert action.value in DOC


def test_every_rule_has_a_setting() -> None:
    names = {f.name for f in dataclasses.fields(Rules)}
    for rule in Rule:
        stem = {
            "failed_login_user": "failed_login",
            "failed_login_address": "failed_login",
            "volume_read": "volume",
            "volume_out": "volume",
            "volume_week": "week",
            "new_patients": "new_patients",
            "researcher_identified": "researcher",
            "unexplained_access": "unexplained",
            "outside_shift": "outside_shift",
        }.get(rule.value, rule.value)
        assert any(n.startswith(stem) for n in names), rule
