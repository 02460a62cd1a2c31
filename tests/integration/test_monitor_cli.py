"""`medvault monitor replay` and `medvault monitor directory import` as a user runs them (a real
subprocess): the same scores as the library, errors naming the line or field, patients kept only
as pseudonyms."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medvault.monitor.files import replay_file
from tests.conftest import Home

pytestmark = pytest.mark.integration

PATIENT = "PHI-MRN-5531907"


def medvault(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "medvault.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def _events(path: Path) -> list[dict[str, object]]:
    """A morning of ordinary work, then a burst of failed sign-ins from a new address."""
    events: list[dict[str, object]] = []
    for i in range(40):
        events.append(
            {
                "event_id": f"e{i:03d}",
                "ts": f"2026-03-02T{8 + i // 10:02d}:{(i % 10) * 5:02d}:00Z",
                "user": "u001",
                "role": "radiologist",
                "dept": "radiology",
                "action": "view" if i % 3 else "query",
                "patient_id": f"p{i % 7}",
                "study_uid": f"2.25.{1000 + i % 7}",
                "bytes": 1000,
                "src_ip": "10.1.2.3",
                "user_agent": "OHIF/3.7",
                "outcome": "success",
            }
        )
    for j in range(12):
        events.append(
            {
                "event_id": f"f{j:03d}",
                "ts": f"2026-03-02T13:00:{j:02d}Z",
                "user": "u001",
                "action": "login",
                "src_ip": "203.0.113.9",
                "outcome": "failure",
            }
        )
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return events


def test_replay_scores_every_event_as_the_library_does(tmp_path: Path) -> None:
    events = _events(tmp_path / "EVENTS.jsonl")
    directory = tmp_path / "DIRECTORY.json"
    directory.write_text(
        json.dumps({"users": [{"user": "u001", "role": "radiologist", "dept": "radiology"}]})
    )
    out = tmp_path / "OUT.jsonl"
    done = medvault(
        "monitor",
        "replay",
        str(tmp_path / "EVENTS.jsonl"),
        "--directory",
        str(directory),
        "--scores",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["event_id"] for line in lines] == [e["event_id"] for e in events]
    flagged = [line for line in lines if line["alert"]]
    assert flagged and all(line["event_id"].startswith("f") for line in flagged)
    assert any("failed sign-in" in reason for reason in flagged[-1]["reasons"])
    alerts = len(flagged)
    assert f"{len(events)} events scored, {alerts} alerts in 1 incidents" in done.stdout

    from medvault.monitor.files import load_directory

    library = tmp_path / "LIB.jsonl"
    replay_file(tmp_path / "EVENTS.jsonl", library, directory=load_directory(directory))
    assert library.read_text() == out.read_text()  # one implementation

    stricter = medvault(
        "monitor",
        "replay",
        str(tmp_path / "EVENTS.jsonl"),
        "--scores",
        str(tmp_path / "S.jsonl"),
        *("--rule", "alert_score=1000", "--rule", "high_score=1001", "--rule", "critical_score=1002"),
    )
    assert stricter.returncode == 0, stricter.stderr
    assert "0 alerts" in stricter.stdout


def test_replay_errors_name_the_line_or_setting(tmp_path: Path) -> None:
    events = tmp_path / "EVENTS.jsonl"
    _events(events)
    lines = events.read_text().splitlines()
    lines[4] = lines[4].replace('"view"', '"peek"').replace('"query"', '"peek"')
    events.write_text("\n".join(lines) + "\n")
    bad = medvault("monitor", "replay", str(events), "--scores", str(tmp_path / "OUT.jsonl"))
    assert bad.returncode == 1
    assert "line 5" in bad.stderr and "action" in bad.stderr
    assert "Traceback" not in bad.stderr

    lines[4], lines[5] = lines[20], lines[4].replace('"peek"', '"view"')
    events.write_text("\n".join(lines) + "\n")
    late = medvault("monitor", "replay", str(events), "--scores", str(tmp_path / "OUT.jsonl"))
    assert late.returncode == 1 and "line 6" in late.stderr and "earlier" in late.stderr

    typo = medvault(
        "monitor", "replay", str(events), "--scores", str(tmp_path / "O.jsonl"), "--rule", "alrt=1"
    )
    assert typo.returncode == 1 and "alrt" in typo.stderr

    missing = medvault(
        "monitor", "replay", str(tmp_path / "nope.jsonl"), "--scores", str(tmp_path / "O.jsonl")
    )
    assert missing.returncode == 1 and "is not a file" in missing.stderr


def test_directory_import_keeps_patients_only_as_pseudonyms(home: Home, tmp_path: Path) -> None:
    doc = {
        "shift_hours": {"day": [7, 19]},
        "users": [{"user": "dr-directory-only", "role": "radiologist", "dept": "radiology", "shift": "day"}],
        "patients": [{"patient_id": PATIENT, "dept": "radiology", "vip": True}],
    }
    file = tmp_path / "DIRECTORY.json"
    file.write_text(json.dumps(doc))
    done = home.cli("monitor", "directory", "import", str(file))
    assert "1 users, 1 patients" in done.stdout
    for path in home.root.rglob("*"):
        if path.is_file():
            assert PATIENT.encode() not in path.read_bytes(), path
            assert b"dr-directory-only" not in path.read_bytes() or path.suffix in (".log",), (
                path
            )  # sealed too

    doc["users"][0]["shift"] = "night"  # not in shift_hours
    file.write_text(json.dumps(doc))
    bad = home.cli("monitor", "directory", "import", str(file), check=False)
    assert bad.returncode == 1 and "users[0].shift" in bad.stderr
    file.write_text("{not json")
    broken = home.cli("monitor", "directory", "import", str(file), check=False)
    assert broken.returncode == 1 and "not JSON" in broken.stderr
