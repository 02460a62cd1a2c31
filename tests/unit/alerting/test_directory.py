"""The directory the online monitor scores with: imported with patients pseudonymized (the file's
own ids never stored), merged with the archive's accounts, refused with the field named when
malformed, and in force in a running worker without a restart."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tests.unit.alerting.conftest import Clock, alerts_of, worker_for

from medvault.alerting.directory import (
    PATIENT_TAG,
    effective_directory,
    import_directory,
    read_directory_file,
)
from medvault.errors import DirectoryInvalid
from medvault.home import OpenHome
from medvault.ledger.events import Actor, ActorKind, AuditEvent, EventKind, ObjectRef, Outcome

RAW_IDS = ["PHI-PID-80417733", "PHI-PID-80419921"]


def _doc() -> dict[str, Any]:
    return {
        "epoch": "2026-11-30T00:00:00Z",
        "departments": ["cardiology", "radiology"],
        "care_teams": {"cardiology": ["card-a"]},
        "shift_hours": {"day": [7, 19], "night": [19, 7]},
        "users": [
            {"user": "dr-ana", "role": "radiologist", "dept": "radiology", "shift": "day", "vendor": "x"},
        ],
        "patients": [
            {"patient_id": RAW_IDS[0], "dept": "cardiology", "team": "card-a", "vip": True},
            {"patient_id": RAW_IDS[1], "dept": "cardiology", "vip": False},
        ],
    }


def _write(tmp_path: Path, doc: object, name: str = "directory.json") -> Path:
    path = tmp_path / name
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    return path


def test_an_import_stores_patients_by_pseudonym_only(opened: OpenHome, tmp_path: Path) -> None:
    raw = read_directory_file(_write(tmp_path, _doc()))
    now = datetime.now(UTC)
    assert import_directory(raw, index=opened.archive.index, alerts=opened.alerts, now=now) == (1, 2)
    stored, when = opened.alerts.load_directory()
    assert stored is not None and when == now
    pseudonyms = [opened.archive.index.pseudonym(PATIENT_TAG, pid) for pid in RAW_IDS]
    assert [p["patient_id"] for p in stored["patients"]] == pseudonyms
    assert stored["patients"][0]["vip"] is True and stored["users"][0]["user"] == "dr-ana"
    assert raw["patients"][0]["patient_id"] == RAW_IDS[0]  # the caller's document is left alone
    for path in (p for p in opened.root.rglob("*") if p.is_file()):  # index, WAL, ledger, keys...
        data = path.read_bytes()
        assert not any(pid.encode() in data for pid in RAW_IDS), path.name
        assert b"dr-ana" not in data or path.suffix == ".toml", path.name  # the directory is sealed


def test_the_monitor_sees_the_import_and_every_account(opened: OpenHome) -> None:
    import_directory(_doc(), index=opened.archive.index, alerts=opened.alerts, now=datetime.now(UTC))
    opened.users.add_user("dr-ben", roles=["technologist", "radiologist"], now=datetime.now(UTC))
    directory, stamp = effective_directory(opened.alerts, opened.users)
    assert directory.users["dr-ana"].dept == "radiology"  # as imported
    assert directory.users["dr-ben"].role == "radiologist"  # from the account (first role by name)
    assert directory.patients[opened.archive.index.pseudonym(PATIENT_TAG, RAW_IDS[0])].vip
    opened.users.set_roles("dr-ben", ["technologist"])
    assert effective_directory(opened.alerts, opened.users)[1] != stamp  # a new stamp: reloaded


def test_without_an_import_the_accounts_alone_make_the_directory(opened: OpenHome) -> None:
    directory, _ = effective_directory(opened.alerts, opened.users)
    assert set(directory.users) == {u.name for u in opened.users.list()}
    assert dict(directory.patients) == {}


def _read(opened: OpenHome, user: str, at: datetime) -> AuditEvent:
    """A retrieve of the VIP patient's study, as the archive ledgers it (patient by pseudonym)."""
    return AuditEvent(
        kind=EventKind.RETRIEVE,
        time=at,
        actor=Actor(kind=ActorKind.USER, id=user, address="10.1.1.1", auth="token"),
        action="study.read",
        outcome=Outcome.SUCCESS,
        object=ObjectRef(type="study", id="1.2.826.0.1.3680043.8.498.1"),
        patient=opened.archive.index.pseudonym(PATIENT_TAG, RAW_IDS[0]),
    )


def test_a_running_worker_takes_a_new_import_within_its_check_period(opened: OpenHome, clock: Clock) -> None:
    # every event with a point alerts, so that scores can be read from the alerts
    worker = worker_for(opened, clock, responses=(), rules=("alert_score=0.5", "reason_floor=0.5"))
    opened.ledger.append(_read(opened, "dr-early", clock.wall))
    worker.step()
    assert alerts_of(opened) == []  # no directory: a first look at an unknown patient is routine
    import_directory(_doc(), index=opened.archive.index, alerts=opened.alerts, now=clock.wall)
    opened.ledger.append(_read(opened, "dr-soon", clock.wall))
    worker.step()
    assert alerts_of(opened) == []  # not checked yet (every 30 s)
    clock.advance(31)
    opened.ledger.append(_read(opened, "dr-later", clock.wall))
    worker.step()
    (alert,) = alerts_of(opened)
    assert alert.subject == "dr-later" and "vip" in alert.points and "VIP patient" in alert.reasons


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("{not json", "is not JSON"),
        ("[1, 2]", "the directory must be a JSON object"),
        ('"users"', "the directory must be a JSON object"),
        ({"users": {"dr-ana": {}}}, "'users': must be a list"),
        ({"users": [{"role": "radiologist"}]}, "'users[0].user': is required"),
        ({"users": [{"user": "a"}, {"user": "a"}]}, "'users[1].user': appears twice"),
        ({"users": [{"user": "a", "remote": "yes"}]}, "'users[0].remote': must be true or false"),
        ({"users": [{"user": "a", "role": 7}]}, "'users[0].role'"),
        ({"users": [{"user": "x" * 513}]}, "'users[0].user'"),
        ({"shift_hours": {"day": [7, 25]}}, "'shift_hours.day[1]': must be an hour"),
        ({"shift_hours": {"day": [7]}}, "'shift_hours.day'"),
        ({"shift_hours": {"day": [7, 19]}, "users": [{"user": "a", "shift": "nite"}]}, "'users[0].shift'"),
        ({"patients": [{"dept": "cardiology"}]}, "'patients[0].patient_id'"),
        ({"patients": [{"patient_id": RAW_IDS[0], "vip": 1}]}, "'patients[0].vip'"),
        ({"epoch": "yesterday"}, "'epoch'"),
        ({"epoch": 1e300}, "'epoch'"),
        ({"utc_offset_minutes": 10_000}, "'utc_offset_minutes'"),
    ],
)
def test_a_malformed_directory_is_refused_naming_the_field_never_the_value(
    opened: OpenHome, tmp_path: Path, doc: object, message: str
) -> None:
    with pytest.raises(DirectoryInvalid) as caught:
        read_directory_file(_write(tmp_path, doc))
    assert message in caught.value.message
    assert RAW_IDS[0] not in caught.value.diagnostics()
    assert opened.alerts.load_directory() == (None, None)


def test_a_file_that_is_not_there_or_not_text_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DirectoryInvalid, match="does not exist"):
        read_directory_file(tmp_path / "missing.json")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00{")
    with pytest.raises(DirectoryInvalid, match="is not JSON"):
        read_directory_file(tmp_path / "binary.json")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DirectoryInvalid, match="is not JSON: RecursionError"):
        read_directory_file(tmp_path / "deep.json")


def test_a_directory_written_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    path = tmp_path / "excel.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(_doc()).encode())
    assert read_directory_file(path)["users"][0]["user"] == "dr-ana"


def test_a_directory_larger_than_the_limit_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medvault.alerting.directory as directory

    path = tmp_path / "huge.json"
    path.write_text(json.dumps(_doc()))
    monkeypatch.setattr(directory, "MAX_DIRECTORY_BYTES", path.stat().st_size - 1)
    with pytest.raises(DirectoryInvalid, match="may be at most"):
        read_directory_file(path)
