"""Research exports over a real `medvault serve` (issue #5): a researcher only ever receives
de-identified data, within its grants, and every export is in the ledger.

Until the app includes ``medvault.api.research`` (``create_app``), the server is started the same
way with the router installed by :func:`medvault.api.research.install`; once it is wired, the
production `medvault serve` is used as it is.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread

from medvault.api.app import create_app
from medvault.api.research import install
from medvault.export import export_studies
from medvault.home import open_home
from medvault.ledger.events import Actor, ActorKind, EventKind, parse_event
from medvault.sample import generate_study
from tests.conftest import PASSPHRASE, Home, Server, free_port, make_home

pytestmark = pytest.mark.integration

PATIENTS = [("QUIMBLY^ZENOBIA", "MRN-4471-ZQ", 21), ("FROBISHER^OCTAVIAN", "MRN-9032-FX", 22)]

_LAUNCH = """
import sys, uvicorn
from pathlib import Path
from medvault.api.research import install
from medvault.api.server import _uvicorn_config, setup_logging
from medvault.home import open_home
import os
root = Path(sys.argv[1])
setup_logging(root)
opened = open_home(root, os.environ["MEDVAULT_PASSPHRASE"])
config = _uvicorn_config(opened)
install(config.app, opened)
config.host, config.port = "127.0.0.1", int(sys.argv[2])
uvicorn.Server(config).run()
"""


def _launch_with_router(home: Home) -> Server:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", _LAUNCH, str(home.root), str(port)],
        env=home.env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    server = Server(home, port, process)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {process.stderr.read().decode() if process.stderr else ''}")
        try:
            if httpx.get(f"{server.url}/healthz", verify=server.ssl_context(), timeout=1).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    raise RuntimeError("server did not start")


def research_server(home: Home, server_factory: Callable[[Home], Server]) -> Server:
    server = server_factory(home)
    with httpx.Client(base_url=server.url, verify=server.ssl_context()) as client:
        if client.post("/research/exports").status_code != 404:
            return server  # the production app serves the route
    server.stop()
    return _launch_with_router(home)


@dataclass
class World:
    home: Home
    phi: list[str]  # names, IDs, accession, institution, referring, birth date, original UIDs
    researcher: str  # API key, role researcher


def _known_phi(paths: list[Path]) -> list[str]:
    out = [part for name, pid, _ in PATIENTS for part in (*name.split("^"), pid)]
    for path in paths:
        ds = dcmread(path)
        out += [str(ds.AccessionNumber), str(ds.InstitutionName), str(ds.PatientBirthDate)]
        out += [str(ds.ReferringPhysicianName).split("^")[0], str(ds.StudyDescription)]
        out += [str(getattr(ds, uid)) for uid in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
        out.append(str(ds.FrameOfReferenceUID))
    return sorted(set(out))


@pytest.fixture
def world(tmp_path: Path) -> World:
    home = make_home(tmp_path / "home")
    paths: list[Path] = []
    for name, pid, seed in PATIENTS:
        paths += generate_study(
            tmp_path / f"s{seed}", seed=seed, series=1, instances=2, rows=32, cols=32,
            patient_name=name, patient_id=pid,
        )  # fmt: skip
    opened = open_home(home.root, PASSPHRASE)
    try:
        assert {o.status for o in opened.archive.store_batch([p.read_bytes() for p in paths])} == {"stored"}
    finally:
        opened.close()
    created = home.cli("apikeys", "create", "r1", "--role", "researcher")
    key = next(w for w in created.stdout.split() if w.startswith("mvk_"))
    return World(home, _known_phi(paths), key)


def test_a_researcher_gets_a_zip_without_phi_and_never_the_originals(
    world: World, server_factory: Callable[[Home], Server]
) -> None:
    server = research_server(world.home, server_factory)
    try:
        with server.client(world.researcher) as researcher:
            response = researcher.post(
                "/research/exports",
                data={
                    "project": "trial-a",
                    "options": "retain-patient-characteristics",
                    "PatientID": "MRN-4471-ZQ",
                },
            )
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == "application/zip"
            assert response.headers["x-medvault-instances"] == "2"
            body = response.content
            leaked = [v for v in world.phi if v.encode() in body]
            assert leaked == []
            with zipfile.ZipFile(io.BytesIO(body)) as archive:
                names = archive.namelist()
                assert len(names) == 2
                for name in names:
                    ds = dcmread(io.BytesIO(archive.read(name)))
                    assert ds.PatientIdentityRemoved == "YES"
                    assert str(ds.PatientName).startswith("ANON")
                    assert name == f"{ds.StudyInstanceUID}/{ds.SOPInstanceUID}.dcm"
                    assert [v for v in world.phi if v in name] == []

            again = researcher.post(
                "/research/exports",
                json={"project": "trial-a", "options": ["retain-patient-characteristics"],
                      "query": {"PatientID": "MRN-4471-ZQ"}},
            )  # fmt: skip
            assert again.status_code == 200
            with zipfile.ZipFile(io.BytesIO(again.content)) as archive:
                assert sorted(archive.namelist()) == sorted(names)  # same project: same new UIDs

            # PHI routes stay closed to the researcher.
            study_uid = next(v for v in world.phi if v.startswith("2.25."))
            assert researcher.get("/dicomweb/studies").status_code == 403
            assert researcher.get(f"/dicomweb/studies/{study_uid}").status_code == 403
            assert researcher.get(f"/dicomweb/studies/{study_uid}/metadata").status_code == 403
            # Bad requests are refused before any work.
            assert researcher.post("/research/exports", data={"options": "x"}).status_code == 400
            bad = researcher.post("/research/exports", data={"project": "p", "options": "no-such-option"})
            assert bad.status_code == 400
            assert (
                researcher.post("/research/exports", data={"project": "p", "NoSuchKey": "1"}).status_code
                == 400
            )
        with server.client() as archivist:  # an archivist reads PHI but may not export
            assert archivist.post("/research/exports", data={"project": "p"}).status_code == 403
        with httpx.Client(base_url=server.url, verify=server.ssl_context()) as anonymous:
            assert anonymous.post("/research/exports", data={"project": "p"}).status_code == 401
    finally:
        server.stop()

    opened = open_home(world.home.root, PASSPHRASE)
    try:
        ledger = opened.ledger
        exports = [e for e in map(parse_event, ledger.entries(0, ledger.size)) if e.kind is EventKind.EXPORT]
    finally:
        opened.close()
    assert len(exports) == 2
    for event in exports:
        assert event.actor.id == "r1" and event.actor.kind is ActorKind.APIKEY
        assert event.details["destination"] == "zip" and event.details["exported"] == 2
        assert event.object is not None and event.object.id in world.phi  # the original study UID


def test_exports_over_the_size_limit_are_refused_with_413(world: World) -> None:
    opened = open_home(world.home.root, PASSPHRASE)
    try:
        app = create_app(
            opened.archive, api_keys=opened.api_keys, users=opened.users, guard=opened.guard,
            server=opened.settings.server, oidc=opened.oidc,
        )  # fmt: skip
        install(app, opened, max_export_bytes=10_000)
        headers = {"Authorization": f"Bearer {world.researcher}"}

        async def ask(**form: str) -> httpx.Response:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="https://testserver") as client:
                return await client.post("/research/exports", data=form, headers=headers)

        response = asyncio.run(ask(project="p"))
        assert response.status_code == 413, response.text
        small = asyncio.run(ask(project="p", PatientID="NOBODY"))
        assert small.status_code == 200 and small.headers["x-medvault-studies"] == "0"
        assert zipfile.ZipFile(io.BytesIO(small.content)).namelist() == []
        ledger = opened.ledger
        ledger.flush()
        kinds = {parse_event(leaf).kind for leaf in ledger.entries(0, ledger.size)}
        assert EventKind.EXPORT not in kinds
    finally:
        opened.close()


@pytest.fixture
def stow_target(tmp_path: Path, server_factory: Callable[[Home], Server]) -> Iterator[Server]:
    yield server_factory(make_home(tmp_path / "target"))


def test_export_to_a_stow_target(world: World, stow_target: Server, tmp_path: Path) -> None:
    opened = open_home(world.home.root, PASSPHRASE)
    try:
        summary = export_studies(
            opened, query_params=[], project="trial-s", to_stow=stow_target.dicomweb,
            stow_token=stow_target.home.admin_key, stow_ca=stow_target.home.ca,
            actor=Actor(kind=ActorKind.USER, id=f"cli:{os.getpid()}"),
        )  # fmt: skip
        ledger = opened.ledger
        ledger.flush()
        exports = [e for e in map(parse_event, ledger.entries(0, ledger.size)) if e.kind is EventKind.EXPORT]
    finally:
        opened.close()
    assert (summary.exported, summary.failed, len(summary.studies)) == (4, 0, 2)
    assert [e.details["target"] for e in exports] == [stow_target.dicomweb] * 2
    with stow_target.client() as client:
        found = client.get("/dicomweb/studies", params={"includefield": "all"})
        assert found.status_code == 200
        uids = {s["0020000D"]["Value"][0] for s in found.json()}
        assert uids == {s.new_study_uid for s in summary.studies}
        text = found.text
        assert [v for v in world.phi if v in text] == []
