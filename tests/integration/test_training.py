"""Training records over a real `medvault serve` (issue #15, "Training records"): a required course
gates image access (403 naming training) with break-glass still open, a new completion restores
access at once, reminders are listed and ledgered once, CLI errors name the field, and the
/api/training routes answer by permission."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from medvault.home import open_home
from medvault.ledger.events import AuditEvent, EventKind, Outcome, parse_event
from tests.conftest import Home, Server, start_server
from tests.integration.test_access_routes import (
    Person,
    activate,
    add_person,
    anonymous,
    bearer,
    make_instance,
    quiet_home,
    store,
)

pytestmark = pytest.mark.integration

TODAY = datetime.now(UTC).date()


@dataclass
class World:
    server: Server
    tokens: dict[str, str]
    people: dict[str, Person]
    studies: list[str]

    @property
    def home(self) -> Home:
        return self.server.home

    def client(self, user: str) -> httpx.Client:
        client = anonymous(self.server)
        client.headers.update(bearer(self.tokens[user]))
        return client


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = quiet_home(Path(tmp_path_factory.mktemp("training")) / "home")
    opened = open_home(home.root, home.passphrase)
    try:
        people = {
            "rad": add_person(opened, "rad", ["radiologist"], grants=[("site", "*")]),
            "tech": add_person(opened, "tech", ["technologist"], grants=[("site", "*")]),
            "doc": add_person(opened, "doc", ["referring_physician"], grants=[("site", "*")]),
            "trainer": add_person(opened, "trainer", ["admin"]),
            "officer": add_person(opened, "officer", ["auditor"]),
        }
    finally:
        opened.close()
    server = start_server(home)
    try:
        studies = []
        for n in range(2):
            data, ds = make_instance(patient_id=f"TRAIN-{n}")
            store(server, data)
            studies.append(str(ds.StudyInstanceUID))
        tokens = activate(server, *people.values())
        yield World(server, tokens, people, studies)
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def wide_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's tables at 200 columns (home.cli passes the environment on), so a cell is one line."""
    monkeypatch.setenv("COLUMNS", "200")


def ledgered(home: Home, action: str) -> list[AuditEvent]:
    opened = open_home(home.root, home.passphrase)
    try:
        events = [parse_event(leaf) for leaf in opened.ledger.entries(0, opened.ledger.size)]
    finally:
        opened.close()
    return [e for e in events if e.action == action]


def test_an_expired_required_course_refuses_images_until_renewed(world: World) -> None:
    home = world.home
    metadata = f"/dicomweb/studies/{world.studies[0]}/metadata"
    with world.client("rad") as rad:
        assert rad.get(metadata).status_code == 200  # the per-user date, before any course
        added = home.cli(
            "training",
            "courses",
            "add",
            "privacy and security",
            "--version",
            "2026",
            "--valid-days",
            "365",
            "--required-for",
            "radiologist",
        )
        assert "required for radiologist" in added.stdout and "rad loses access" in added.stdout
        refused = rad.get("/dicomweb/studies")
        assert refused.status_code == 403
        assert "training" in refused.json()["error"] and "privacy and security" in refused.json()["error"]

        long_ago = (TODAY - timedelta(days=400)).isoformat()
        home.cli(
            "training",
            "record",
            "rad",
            "privacy and security",
            "--completed",
            long_ago,
            "--evidence",
            "LMS-1",
        )
        for path in ("/dicomweb/studies", metadata):
            refused = rad.get(path)
            assert refused.status_code == 403, path
            lapsed_on = (TODAY - timedelta(days=35)).isoformat()
            assert "training expired on " + lapsed_on in refused.json()["error"]

        # Break-glass aside: the emergency path stays open, for the one study, recorded as such.
        opened = rad.post(
            "/api/breakglass", data={"study_uid": world.studies[1], "reason": "trauma call, on duty tonight"}
        )
        assert opened.status_code == 201, opened.text
        assert rad.get(f"/dicomweb/studies/{world.studies[1]}/metadata").status_code == 200
        assert rad.get(metadata).status_code == 403
        found = rad.get("/dicomweb/studies")  # the search shows the break-glass study only
        assert found.status_code == 200
        assert [s["0020000D"]["Value"][0] for s in found.json()] == [world.studies[1]]

        renewed = home.cli(
            "training",
            "record",
            "rad",
            "privacy and security",
            "--completed",
            TODAY.isoformat(),
            "--evidence",
            "LMS-2",
        )
        assert "rad regains access" in renewed.stdout
        assert rad.get(metadata).status_code == 200  # at once, same token
        assert rad.get("/dicomweb/studies").status_code == 200

    history = home.cli("training", "history", "rad").stdout
    assert history.count("privacy and security") == 2 and "LMS-1" in history and "LMS-2" in history
    gate = [
        (e.details["previous"], e.details["access"])
        for e in ledgered(home, "training.gate")
        if e.object and e.object.id == "rad"
    ]
    assert gate == [("unknown", "refused"), ("refused", "granted")]
    (course,) = ledgered(home, "training.course.add")
    assert course.actor.id.startswith("cli:") and course.details["required_for"] == "radiologist"
    completions = ledgered(home, "training.record")
    assert len(completions) == 2 and all("LMS" not in str(e.to_json()) for e in completions)
    # the emergency reads are ledgered as break-glass, their reason saying training had lapsed
    through = [
        e for e in ledgered(home, "study.read") if e.kind is EventKind.BREAK_GLASS and e.actor.id == "rad"
    ]
    assert through and all("training lapsed" in (e.reason or "") for e in through)
    (opening,) = [e for e in ledgered(home, "breakglass.use") if e.outcome is Outcome.SUCCESS and e.object]
    assert "training lapsed" in (opening.reason or "")


def test_reminders_list_who_expires_soon_and_ledger_once(world: World) -> None:
    home = world.home
    home.cli(
        "training",
        "courses",
        "add",
        "radiation safety",
        "--version",
        "1",
        "--valid-days",
        "30",
        "--required-for",
        "technologist",
    )
    home.cli(
        "training",
        "record",
        "tech",
        "radiation safety",
        "--completed",
        (TODAY - timedelta(days=10)).isoformat(),
    )
    first = home.cli("training", "reminders", "--within-days", "30").stdout
    assert "tech" in first and "radiation safety" in first and "1 new reminder(s) ledgered" in first
    second = home.cli("training", "reminders", "--within-days", "30").stdout
    assert "tech" in second and "0 new reminder(s) ledgered" in second
    reminders = [e for e in ledgered(home, "training.reminder") if e.object and e.object.id == "tech"]
    assert len(reminders) == 1
    assert reminders[0].kind.value == "alert" and reminders[0].details["days_left"] == 20
    status = home.cli("training", "status", "tech").stdout
    assert "radiation safety" in status and "expiring" in status


def test_cli_errors_name_the_field(world: World) -> None:
    home = world.home
    bad = home.cli(
        "training", "record", "rad", "privacy and security", "--completed", "2026-13-01", check=False
    )
    assert bad.returncode == 1 and "completed must be a date" in bad.stderr and "Traceback" not in bad.stderr
    unknown = home.cli(
        "training", "record", "rad", "no such course", "--completed", "2026-01-01", check=False
    )
    assert unknown.returncode == 1 and "course: no course named 'no such course'" in " ".join(
        unknown.stderr.split()
    )
    nobody = home.cli(
        "training", "record", "ghost", "privacy and security", "--completed", "2026-01-01", check=False
    )
    assert nobody.returncode == 1 and "user: no user named 'ghost'" in nobody.stderr
    role = home.cli(
        "training",
        "courses",
        "add",
        "x",
        "--version",
        "1",
        "--valid-days",
        "5",
        "--required-for",
        "wizard",
        check=False,
    )
    assert role.returncode == 1 and "required-for: unknown role" in role.stderr


def test_api_routes_by_permission(world: World) -> None:
    with world.client("trainer") as trainer:
        added = trainer.post(
            "/api/training/courses",
            data={
                "name": "consent",
                "version": "v1",
                "valid_days": "10",
                "required_for": "referring_physician",
            },
        )
        assert added.status_code == 201, added.text
        assert added.json()["course"]["required_for"] == ["referring_physician"]
        assert added.json()["gate_changes"] == [
            {"user": "doc", "image_access": False, "expires": None, "course": "consent"}
        ]
        with world.client("doc") as doc:
            assert doc.get("/dicomweb/studies").status_code == 403
            recorded = trainer.post(
                "/api/training/completions",
                data={
                    "user": "doc",
                    "course": "consent",
                    "completed": TODAY.isoformat(),
                    "evidence": "CERT 9",
                },
            )
            assert recorded.status_code == 201, recorded.text
            assert recorded.json()["gate_changes"][0]["image_access"] is True
            assert doc.get("/dicomweb/studies").status_code == 200
            mine = doc.get("/api/training/me")
            assert mine.status_code == 200 and mine.json()["user"] == "doc"
            assert mine.json()["courses"][0]["state"] == "expiring"  # 10 days, within the default 30
            assert doc.get("/api/training").status_code == 403  # others' records need training.read
        bad = trainer.post(
            "/api/training/completions", data={"user": "doc", "course": "consent", "completed": "soon"}
        )
        assert bad.status_code == 400 and "completed" in bad.json()["error"]
        missing = trainer.post(
            "/api/training/completions",
            data={"user": "nobody", "course": "consent", "completed": TODAY.isoformat()},
        )
        assert missing.status_code == 404 and missing.json()["error"].startswith("user:")
    with world.client("officer") as officer:
        everyone = officer.get("/api/training")
        assert everyone.status_code == 200
        assert {"rad", "tech", "doc"} <= {p["user"] for p in everyone.json()}
        assert officer.get("/api/training", params={"user": "doc"}).json()[0]["deciding_course"] == "consent"
        refused = officer.post("/api/training/courses", data={"name": "x", "version": "1", "valid_days": "5"})
        assert refused.status_code == 403
    (api_event,) = [
        e for e in ledgered(world.home, "training.course.add") if e.object and e.object.id == "consent"
    ]
    assert api_event.actor.id == "trainer"
