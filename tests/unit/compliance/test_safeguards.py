# ruff: noqa: E501  (the table of changes reads best one per line)
"""The safeguards assessment (medvault.compliance.safeguards): each control turns on the facts it
names and on nothing else, the verdict is the worst of its parts, and the report hash pins the body."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medvault.compliance.report import body_hash, build, render
from medvault.compliance.safeguards import (
    ApiKeyFacts,
    BreakGlassUse,
    Control,
    Evidence,
    NodeFacts,
    Status,
    UserFacts,
    assess,
    overall,
)

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def person(name: str = "dr-ana", **changes: object) -> UserFacts:
    base = UserFacts(
        name=name,
        roles=frozenset({"radiologist"}),
        disabled=False,
        external=False,
        mfa_required=True,
        mfa_enrolled=True,
        must_change_password=False,
        created_at=NOW - timedelta(days=400),
        training_expires=date(2027, 6, 30),
        last_sign_in=NOW - timedelta(days=1),
        image_access=True,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def good() -> Evidence:
    """An archive where every control is met."""
    return Evidence(
        generated_at=NOW,
        medvault_version="0.1.0",
        https=True,
        tls_minimum="TLSv1.2",
        tls_ciphers=("ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305"),
        tls_weak_ciphers=(),
        server_certificate_expires=NOW + timedelta(days=300),
        dimse_enabled=True,
        dimse_plain=False,
        objects_sampled=50,
        objects_encrypted=50,
        kek_versions=2,
        kek_created=NOW - timedelta(days=100),
        objects_on_old_keks=0,
        users=(person(), person("dr-ben", roles=frozenset({"auditor"}), image_access=False)),
        api_keys=(
            ApiKeyFacts("ohif", "viewer", NOW - timedelta(days=30), None, False, NOW - timedelta(hours=1)),
        ),
        nodes=(NodeFacts("ct1", NOW + timedelta(days=200), False, False),),
        lockout_threshold=5,
        lockout_minutes=1,
        access_token_minutes=15,
        session_hours=12,
        password_min_length=12,
        ledger_size=1000,
        ledger_verified=True,
        ledger_problems=(),
        checkpoints_verified=10,
        latest_checkpoint_size=990,
        storage_orphans=0,
        storage_missing=0,
        monitor_enabled=True,
        notifications=("syslog",),
        failed_sign_ins_30d=3,
        open_alerts={"medium": 1},
        oldest_open_alert=NOW - timedelta(days=1),
        break_glass=(BreakGlassUse("dr-ana", NOW - timedelta(days=3), reviewed=True),),
        last_verified_backup=NOW - timedelta(days=1),
        last_backup_ok=True,
    )


def statuses(evidence: Evidence) -> dict[str, Status]:
    return {c.id: c.status for c in assess(evidence)}


def test_a_well_kept_archive_meets_every_control() -> None:
    controls = assess(good())
    assert {c.status for c in controls} == {"met"}, [c for c in controls if c.status != "met"]
    assert {c.framework for c in controls} == {"HIPAA", "GDPR"}
    assert len({c.id for c in controls}) == len(controls) == 15


CHANGES: list[tuple[str, dict[str, object], str, Status]] = [
    ("dormant account", {"users": (person(last_sign_in=NOW - timedelta(days=120)),)}, "hipaa-164.312-a-2-i", "attention"),
    ("unreviewed break-glass", {"break_glass": (BreakGlassUse("dr-ana", NOW, reviewed=False),)}, "hipaa-164.312-a-2-ii", "attention"),
    ("long tokens", {"access_token_minutes": 60}, "hipaa-164.312-a-2-iii", "attention"),
    ("a plaintext object", {"objects_encrypted": 49}, "hipaa-164.312-a-2-iv", "not_met"),
    ("an old KEK", {"kek_created": NOW - timedelta(days=400)}, "hipaa-164.312-a-2-iv", "attention"),
    ("rotation unfinished", {"objects_on_old_keks": 3}, "hipaa-164.312-a-2-iv", "attention"),
    ("a broken ledger", {"ledger_verified": False, "ledger_problems": ("entry 7 altered",)}, "hipaa-164.312-b", "not_met"),
    ("no checkpoint", {"checkpoints_verified": 0}, "hipaa-164.312-b", "attention"),
    ("monitor off", {"monitor_enabled": False}, "hipaa-164.308-a-5-ii-c", "not_met"),
    ("no SIEM", {"notifications": ()}, "hipaa-164.308-a-5-ii-c", "attention"),
    ("a missing object", {"storage_missing": 1}, "hipaa-164.312-c-1", "not_met"),
    ("leftovers", {"storage_orphans": 2}, "hipaa-164.312-c-1", "attention"),
    ("no MFA", {"users": (person(mfa_required=False),)}, "hipaa-164.312-d", "not_met"),
    ("first sign-in pending", {"users": (person(must_change_password=True),)}, "hipaa-164.312-d", "attention"),
    ("an old API key", {"api_keys": (ApiKeyFacts("old", "viewer", NOW - timedelta(days=500), None, False, NOW),)}, "hipaa-164.312-d", "attention"),
    ("an unused API key", {"api_keys": (ApiKeyFacts("idle", "viewer", NOW - timedelta(days=100), None, False, None),)}, "hipaa-164.312-d", "attention"),
    ("an expired node certificate", {"nodes": (NodeFacts("ct1", NOW - timedelta(days=1), False, False),)}, "hipaa-164.312-d", "not_met"),
    ("a node certificate expiring", {"nodes": (NodeFacts("ct1", NOW + timedelta(days=10), False, False),)}, "hipaa-164.312-d", "attention"),
    ("weak suites", {"tls_ciphers": ("ECDHE-RSA-AES128-SHA",), "tls_weak_ciphers": ("ECDHE-RSA-AES128-SHA",)}, "hipaa-164.312-e-1", "not_met"),
    ("plain HTTP", {"https": False}, "hipaa-164.312-e-1", "attention"),
    ("plain DICOM", {"dimse_plain": True}, "hipaa-164.312-e-1", "attention"),
    ("an expired server certificate", {"server_certificate_expires": NOW - timedelta(days=1)}, "hipaa-164.312-e-1", "not_met"),
    ("training expired", {"users": (person(training_expires=date(2026, 1, 1)),)}, "hipaa-164.308-a-5-i", "not_met"),
    ("training never recorded", {"users": (person(training_expires=None),)}, "hipaa-164.308-a-5-i", "not_met"),
    ("training expiring", {"users": (person(training_expires=date(2026, 12, 20)),)}, "hipaa-164.308-a-5-i", "attention"),
    ("a stale alert", {"oldest_open_alert": NOW - timedelta(days=30)}, "hipaa-164.308-a-1-ii-d", "attention"),
    ("no backup", {"last_verified_backup": None, "last_backup_ok": None}, "hipaa-164.308-a-7-ii-a", "not_met"),
    ("an old backup", {"last_verified_backup": NOW - timedelta(days=30)}, "hipaa-164.308-a-7-ii-a", "attention"),
    ("a failed backup check", {"last_backup_ok": False}, "hipaa-164.308-a-7-ii-a", "not_met"),
]  # fmt: skip

#: Facts two controls speak to: the monitor is part of the audit controls and of log-in monitoring.
ALSO: dict[str, set[str]] = {"monitor off": {"hipaa-164.312-b"}}


@pytest.mark.parametrize(("why", "change", "control", "expected"), CHANGES, ids=[c[0] for c in CHANGES])
def test_each_fact_moves_its_own_control(
    why: str, change: dict[str, object], control: str, expected: Status
) -> None:
    got = statuses(replace(good(), **change))  # type: ignore[arg-type]
    assert got[control] == expected, why
    skip = {control, "gdpr-art-32", "gdpr-art-30"} | ALSO.get(why, set())
    others = {k: v for k, v in got.items() if k not in skip}
    assert set(others.values()) == {"met"}, others


def test_a_disabled_account_is_neither_dormant_nor_untrained() -> None:
    gone = person(disabled=True, last_sign_in=None, training_expires=None, mfa_required=False)
    assert set(statuses(replace(good(), users=(person(), gone))).values()) == {"met"}


def test_art_32_is_the_worst_of_encryption_integrity_transmission_and_backup() -> None:
    assert statuses(replace(good(), storage_missing=1))["gdpr-art-32"] == "not_met"
    assert statuses(replace(good(), https=False))["gdpr-art-32"] == "attention"
    assert statuses(replace(good(), monitor_enabled=False))["gdpr-art-32"] == "met"  # not one of its parts


def test_evidence_names_people_never_more_than_ten_at_a_time() -> None:
    many = tuple(person(f"p{i:02}", last_sign_in=NOW - timedelta(days=200)) for i in range(25))
    (control,) = [c for c in assess(replace(good(), users=many)) if c.id == "hipaa-164.312-a-2-i"]
    (line,) = [f for f in control.evidence if f.startswith("dormant")]
    assert "p09" in line and "p10" not in line and "and 15 more" in line


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from(CHANGES), max_size=6),
)
def test_every_verdict_is_explained_and_the_overall_is_the_worst(
    changes: list[tuple[str, dict[str, object], str, Status]],
) -> None:
    evidence = good()
    for _, change, _, _ in changes:
        evidence = replace(evidence, **change)  # type: ignore[arg-type]
    controls = assess(evidence)
    for c in controls:
        assert c.evidence, c.id
        assert (c.action is None) == (c.status == "met"), c
    order = ["met", "attention", "not_met"]
    assert overall(controls) == max((c.status for c in controls), key=order.index)
    report = build(evidence, origin="test.example/ledger")
    assert report.body["summary"] == {s: sum(c.status == s for c in controls) for s in order}


def test_the_hash_pins_the_body_and_every_rendering_carries_it() -> None:
    report = build(good(), origin="test.example/ledger")
    assert report.sha256 == body_hash(report.body)
    changed = dict(report.body, overall="met", archive="elsewhere")
    assert body_hash(changed) != report.sha256
    for fmt in ("json", "html"):
        assert report.sha256.encode() in render(report, fmt, ledger_index=42)  # type: ignore[arg-type]
    pdf = render(report, "pdf", ledger_index=42)
    assert pdf.startswith(b"%PDF-")


def test_html_escapes_what_it_is_given() -> None:
    hostile = replace(good(), users=(person("x<script>", last_sign_in=NOW - timedelta(days=400)),))
    page = render(build(hostile, origin="o<b>"), "html", ledger_index=None).decode()
    assert "<script>" not in page and "x&lt;script&gt;" in page and "o&lt;b&gt;" in page
    assert "default-src 'none'" in page


def test_control_dicts_are_what_the_json_carries() -> None:
    c: Control = assess(good())[0]
    assert c.as_dict()["evidence"] == list(c.evidence)
