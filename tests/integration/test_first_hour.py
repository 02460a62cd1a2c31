"""A new user's first hour (issue 20): each step of the README and the docs, taken as written,
against a real `medvault serve`, the real CLI and dcmtk."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from medvault.home import open_home
from medvault.sample import generate_study
from tests.conftest import Home, Server, free_port, start_server
from tests.integration.test_access_routes import (
    activate,
    anonymous,
    bearer,
    make_instance,
    person_from_cli,
    token_request,
)
from tests.integration.test_dimse import needs_dcmtk
from tests.integration.test_smoke import dicomweb_client

pytestmark = pytest.mark.integration


def test_first_sign_in_error_says_what_to_send_and_following_it_works(home: Home, server: Server) -> None:
    """Item 1: a token of a one-time password is refused with the exact next step, which works."""
    added = home.cli("users", "add", "drsmith", "--roles", "radiologist", "--training", "2030-06-30")
    home.cli("users", "grant", "drsmith", "site", "*")
    person = person_from_cli("drsmith", added.stdout)
    with anonymous(server) as client:
        first = token_request(client, person)
        assert first.status_code == 200, first.text
        refused = client.get("/dicomweb/studies", headers=bearer(first.json()["access_token"]))
    assert refused.status_code == 403
    body = refused.json()
    assert "one-time password must be changed" in body["error"]
    for named in (
        "POST /auth/password",
        "username",
        "old_password",
        "new_password",
        "otp",
        "POST /auth/token",
    ):
        assert named in body["hint"], named
    token = activate(server, person)["drsmith"]  # exactly what the hint says: change, sign in again
    with anonymous(server) as client:
        assert client.get("/dicomweb/studies", headers=bearer(token)).status_code in (200, 204)


def quickstart(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`medvault quickstart ARGS` in ``cwd``, as a new user runs it (no passphrase in the environment)."""
    return subprocess.run(
        [sys.executable, "-m", "medvault.cli", "quickstart", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if k != "MEDVAULT_PASSPHRASE"},
    )


def as_run(printed: str) -> list[str]:
    """A printed `medvault …` command line as argv (this interpreter's medvault)."""
    argv = shlex.split(printed)
    assert argv[0] == "medvault", printed
    return [sys.executable, "-m", "medvault.cli", *argv[1:]]


def test_quickstart_with_a_port_taken_prints_nothing_and_names_the_option(tmp_path: Path) -> None:
    """Item 2: a held DIMSE (or HTTPS) port stops quickstart before any key or query is printed."""
    for option in ("--dimse-port", "--port"):
        with socket.socket() as held:
            held.bind(("127.0.0.1", 0))
            held.listen()
            taken = held.getsockname()[1]
            ports = {"--port": str(free_port()), "--dimse-port": str(free_port()), option: str(taken)}
            result = quickstart(tmp_path, *(x for pair in ports.items() for x in pair))
        assert result.returncode == 1, result.stdout + result.stderr
        assert result.stdout == "" and "mvk_" not in result.stderr and "curl" not in result.stderr
        assert f"127.0.0.1:{taken} is in use" in result.stderr and f"another with {option} N" in result.stderr
        assert "Traceback" not in result.stderr
        assert not (tmp_path / "medvault-demo").exists()  # nothing was created either


def test_quickstart_reruns_find_the_study_and_replace_the_key(tmp_path: Path) -> None:
    """Item 2 (re-runs) and item 3 (the printed TOTP command works as printed)."""
    first = quickstart(tmp_path, "--no-serve")
    assert first.returncode == 0, first.stderr
    assert "Sample study: 8 stored, 0 already present." in first.stdout
    second = quickstart(tmp_path, "--no-serve", "--dimse-port", "2999")
    assert second.returncode == 0, second.stderr
    assert "Sample study: 0 stored, 8 already present." in second.stdout
    assert "revoked the key of the previous run: quickstart-" in second.stdout
    assert "DICOM TLS    : 127.0.0.1:2999" in second.stdout
    home = tmp_path / "medvault-demo"
    opened = open_home(home, (tmp_path / "medvault-demo.passphrase").read_text().strip())
    try:
        live = [k for k in opened.api_keys.list() if k.revoked_at is None]
        assert [k.name.startswith("quickstart-") for k in live] == [True]
        assert opened.settings.dimse.port == 2999  # kept for the next run
    finally:
        opened.close()
    assert re.search(
        r"^port = 2999 +# the registered DICOM-TLS port$", (home / "medvault.toml").read_text(), re.M
    )

    hint = re.search(r"its TOTP enrolment: (medvault .+)$", first.stderr, re.M)
    assert hint is not None, first.stderr
    env = {k: v for k, v in os.environ.items() if k != "MEDVAULT_PASSPHRASE"}
    enrol = subprocess.run(
        as_run(hint.group(1)), cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert enrol.returncode == 0, enrol.stderr
    assert "otpauth://totp/" in enrol.stdout


def test_retrieve_urls_carry_the_listening_port_when_host_lacks_it(
    shared_server: Server, tmp_path: Path
) -> None:
    """Item 5: a client whose Host header drops :PORT still gets RetrieveURL/BulkDataURI that work."""
    (file,) = generate_study(
        tmp_path,
        seed=2005,
        series=1,
        instances=1,
        rows=16,
        cols=16,
        patient_name="HOST^PORT",
        patient_id="HP5",
    )
    ds = dcmread(file)
    client = dicomweb_client(shared_server)
    client._session.headers["Host"] = "127.0.0.1"  # as a client that leaves the port out
    stored = client.store_instances([ds])
    root = f"https://127.0.0.1:{shared_server.port}/dicomweb"
    assert stored.RetrieveURL == f"{root}/studies/{ds.StudyInstanceUID}"
    assert stored.ReferencedSOPSequence[0].RetrieveURL.startswith(root + "/studies/")
    (study,) = client.search_for_studies(search_filters={"StudyInstanceUID": ds.StudyInstanceUID})
    assert study["00081190"]["Value"] == [stored.RetrieveURL]
    meta = client.retrieve_instance_metadata(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert meta["7FE00010"]["BulkDataURI"].startswith(root + "/studies/")
    wado = dicomweb_client(shared_server)._session  # no Host override: a plain client follows the URL
    accept = {"Accept": 'multipart/related; type="application/dicom"'}
    got = wado.get(stored.ReferencedSOPSequence[0].RetrieveURL, headers=accept)
    assert got.status_code == 200 and ds.SOPInstanceUID.encode() in got.content


def wait_for_echo(echo: list[str]) -> None:
    deadline = time.monotonic() + 20
    while True:
        result = subprocess.run(echo, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        if result.returncode == 0:
            return
        assert time.monotonic() < deadline, result.stderr
        time.sleep(0.3)


@needs_dcmtk
def test_dcmtk_resending_an_imported_file_succeeds_and_a_changed_one_is_refused(
    home: Home, server_factory: Callable[[Home], Server], tmp_path: Path
) -> None:
    """Item 6: storescu +tls of files `medvault import` stored already (as they are, and converted to
    another transfer syntax by dcmtk) succeeds; the same SOP Instance UID with other content is 0x0111."""
    files = generate_study(tmp_path / "scan", seed=66, series=1, instances=2, rows=32, cols=32,
                           patient_name="RESEND^PAT", patient_id="RESEND-1")  # fmt: skip
    home.cli("import", str(tmp_path / "scan"))
    home.cli("nodes", "add", "ct1", "--ae-title", "CT1", "--host", "127.0.0.1", "--port", "104",
             "--permissions", "store", "--out", str(tmp_path / "creds"))  # fmt: skip
    port = tomllib.loads((home.root / "medvault.toml").read_text())["dimse"]["port"]
    server_factory(home)
    tls = ["+tls", str(tmp_path / "creds/ct1.key"), str(tmp_path / "creds/ct1.crt"), "+cf", str(home.ca)]
    peer = ["-aet", "CT1", "-aec", "MEDVAULT", "127.0.0.1", str(port)]
    wait_for_echo(["/usr/bin/echoscu", *tls, *peer])

    def storescu(file: Path, *options: str) -> subprocess.CompletedProcess[str]:
        argv = ["/usr/bin/storescu", "-v", *tls, *options, *peer, str(file)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)

    as_imported = storescu(files[0])
    assert as_imported.returncode == 0, as_imported.stdout + as_imported.stderr
    implicit = storescu(files[1], "-xi")  # dcmtk converts to Implicit VR Little Endian on the way
    assert implicit.returncode == 0, implicit.stdout + implicit.stderr
    assert "Implicit" in implicit.stdout + implicit.stderr

    changed = dcmread(files[0])
    changed.SeriesDescription = "changed after the import"
    changed.save_as(tmp_path / "changed.dcm", enforce_file_format=True)
    refused = storescu(tmp_path / "changed.dcm")
    assert refused.returncode != 0
    assert "Status: 0x111)" in refused.stderr  # Duplicate SOP Instance


def test_import_of_a_real_folder_skips_what_is_not_dicom_and_refuses_what_is_damaged(
    home: Home, tmp_path: Path
) -> None:
    """Item 7: a folder as bench/generate.py writes it (manifest.json), plus a README, a thumbnail
    and a real DICOMDIR, imports with exit 0; a damaged DICOM file is still an error (exit 2)."""
    folder = tmp_path / "incoming"
    bench = Path(__file__).parents[2] / "bench" / "generate.py"
    subprocess.run(
        [sys.executable, str(bench), str(folder), "--studies", "1", "--series-per-study", "1",
         "--instances-per-series", "3", "--rows", "16", "--cols", "16", "--quiet"],
        check=True, capture_output=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert (folder / "manifest.json").is_file()
    (folder / "README").write_text("Exported from the old PACS.\n")
    (folder / "thumbs.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(200))
    (folder / "DICOMDIR").write_bytes(Path(get_testdata_file("DICOMDIR")).read_bytes())
    clean = home.cli("import", str(folder))
    assert re.search(r"stored\s*│\s*3", clean.stdout), clean.stdout
    assert re.search(r"refused\s*│\s*0", clean.stdout)
    assert re.search(r"skipped \(not DICOM\)\s*│\s*4", clean.stdout)
    assert "skipped: DICOMDIR, README, manifest.json, thumbs.jpg" in clean.stdout

    (good,) = sorted(folder.rglob("*.dcm"))[:1]
    (folder / "cut.dcm").write_bytes(good.read_bytes()[:-100])  # damaged, by name
    (folder / "IM0001").write_bytes(good.read_bytes()[:300])  # damaged, by its DICM prefix
    damaged = home.cli("import", str(folder), check=False)
    assert damaged.returncode == 2, damaged.stdout
    assert re.search(r"already present\s*│\s*3", damaged.stdout)
    assert re.search(r"refused\s*│\s*2", damaged.stdout)
    assert "cut.dcm: truncated" in damaged.stdout and "IM0001:" in damaged.stdout


def test_grants_name_what_they_grant_and_warn_when_no_study_matches(home: Home, tmp_path: Path) -> None:
    """Item 8: `users grant` names the department (or patient) and warns when no stored study
    records it; `report disclosures` keeps its time column whole on an 80-column terminal."""
    data, _ = make_instance(patient_id="CARD-1", department="CARDIOLOGY")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "card.dcm").write_bytes(data)
    home.cli("import", str(tmp_path / "in"))
    home.cli("users", "add", "drsmith", "--roles", "radiologist", "--training", "2030-06-30")
    matched = home.cli("users", "grant", "drsmith", "department", "CARDIOLOGY")
    assert "granted drsmith access to department 'CARDIOLOGY'" in matched.stdout
    assert "warning" not in matched.stderr
    typo = home.cli("users", "grant", "drsmith", "department", "Cardiology", "--days", "7")
    assert "granted drsmith access to department 'Cardiology' until " in typo.stdout
    assert "warning: no stored study records InstitutionalDepartmentName 'Cardiology'" in " ".join(
        typo.stderr.split()
    )
    nobody = home.cli("users", "grant", "drsmith", "patient", "NOBODY-9")
    assert "the patient with PatientID 'NOBODY-9'" in nobody.stdout and "records PatientID" in nobody.stderr

    env = {**home.env(), "COLUMNS": "80"}
    report = subprocess.run(
        [sys.executable, "-m", "medvault.cli", "report", "disclosures", "--patient-id", "CARD-1",
         "--home", str(home.root)],
        env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=True,
    )  # fmt: skip
    assert max(len(line) for line in report.stdout.splitlines()) <= 80
    times = re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", report.stdout)
    rows = re.search(r"disclosures \((\d+)\)", report.stdout)
    assert rows is not None and int(rows.group(1)) >= 1 and len(times) == int(rows.group(1)), report.stdout


def test_the_quickstart_passphrase_file_is_git_ignored() -> None:
    """Item 8: quickstart run in a clone leaves nothing secret for `git add .` to pick up."""
    root = Path(__file__).parents[2]
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("medvault-demo.passphrase", "medvault-demo/keyring.sealed", "elsewhere/site.passphrase"):
        ignored = subprocess.run(["git", "-C", str(root), "check-ignore", "-q", path], timeout=30)
        assert ignored.returncode == 0, path


def listening_pid(parent: int, port: int) -> int:
    """The child of ``parent`` that holds the listening socket of ``port`` (from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":  # LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    for pid in map(int, children):
        fds = Path(f"/proc/{pid}/fd")
        if any(os.readlink(fd) in inodes for fd in fds.iterdir()):
            return pid
    raise AssertionError(f"no child of {parent} listens on {port}")


def test_healthz_is_healthy_only_when_every_listener_accepts(home: Home) -> None:
    """Item 11: the first healthy /healthz of each start finds the DIMSE port accepting (it raced
    before: refused for ~50 ms in 1 start of 4); the body names each listener's state, and a DIMSE
    listener that dies makes /healthz 503 until its successor listens."""
    home.set_config("server", "workers", "2")  # the DIMSE listener in a process of its own
    dimse_port = tomllib.loads((home.root / "medvault.toml").read_text())["dimse"]["port"]

    def start_and_check() -> Server:
        server = start_server(home)  # returns at the first 200 from /healthz
        try:
            with socket.create_connection(("127.0.0.1", dimse_port), timeout=5):
                pass  # accepted
            with server.client() as client:
                health = client.get("/healthz")
            assert health.status_code == 200
            assert health.json()["status"] == "ok"
            assert health.json()["listeners"] == {"https": "up", "dimse": "up"}
        except BaseException:
            server.stop()
            raise
        return server

    for _ in range(3):
        start_and_check().stop()
    last = start_and_check()
    try:
        os.kill(listening_pid(last.process.pid, dimse_port), signal.SIGKILL)
        with last.client() as client:
            deadline = time.monotonic() + 10
            while (down := client.get("/healthz")).status_code == 200:
                assert time.monotonic() < deadline, "still healthy without a DIMSE listener"
                time.sleep(0.01)
            assert down.status_code == 503
            assert down.json() == {"status": "unavailable", "version": down.json()["version"],
                                   "listeners": {"https": "up", "dimse": "down"}}  # fmt: skip
            deadline = time.monotonic() + 30
            while client.get("/healthz").status_code != 200:  # the supervisor starts another
                assert time.monotonic() < deadline, "the DIMSE listener did not come back"
                time.sleep(0.1)
        with socket.create_connection(("127.0.0.1", dimse_port), timeout=5):
            pass
    finally:
        last.stop()


@pytest.fixture(scope="module")
def stored_ct(shared_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    (file,) = generate_study(tmp_path_factory.mktemp("ct"), seed=1010, series=1, instances=1, rows=32,
                             cols=32, patient_name="ACCEPT^Q", patient_id="AQ-1")  # fmt: skip
    ds = dcmread(file)
    dicomweb_client(shared_server).store_instances([ds])
    return ds


OHIF_THUMBNAIL_ACCEPT = 'multipart/related; type="image/jpeg"'  # what OHIF 3.12 sends with ?accept=


@pytest.mark.parametrize(
    ("resource", "query", "header", "status", "media"),
    [
        # PS3.18 §8.7.8.1 step 2: the Accept Query Parameter decides first (OHIF's thumbnails).
        ("thumbnail", "image/jpeg", OHIF_THUMBNAIL_ACCEPT, 200, "image/jpeg"),
        ("series-thumbnail", "image/jpeg", OHIF_THUMBNAIL_ACCEPT, 200, "image/jpeg"),
        ("rendered", "image/png", "*/*", 200, "image/png"),
        ("rendered", "image/png", "image/jpeg", 200, "image/png"),  # the parameter over the header
        ("frame-rendered", "image/png", None, 200, "image/png"),
        # the parameter's own weights (RFC 7231 §5.3.1), separately from the header's
        ("rendered", "image/png;q=0.5,image/jpeg", "image/png", 200, "image/jpeg"),
        # step 3: none of the parameter's types is supported, so the header decides
        ("rendered", "image/gif", "image/png", 200, "image/png"),
        # step 4: ... and a wildcard there means the default
        ("rendered", "image/gif", "*/*", 200, "image/jpeg"),
        # step 5: nothing acceptable
        ("rendered", "image/gif", "image/gif", 406, None),
        # §8.3.3.1: media types, not ranges
        ("rendered", "image/*", None, 400, None),
        # the other negotiating routes
        ("instance", "application/dicom", 'multipart/related; type="application/dicom"', 200,
         "application/dicom"),
        ("study", 'multipart/related; type="application/dicom"; transfer-syntax=*', "image/png", 200,
         "multipart/related"),
        ("frames", 'multipart/related; type="application/octet-stream"; transfer-syntax=*', "image/png", 200,
         "multipart/related"),
        ("frames", "image/gif", "image/gif", 406, None),
        # routes that always answer DICOM JSON take the parameter (it names their one representation)
        ("search", "application/dicom+json", None, 200, "application/dicom+json"),
        ("metadata", "application/dicom+json", None, 200, "application/dicom+json"),
    ],
)  # fmt: skip
def test_the_accept_query_parameter_negotiates_every_route(
    shared_server: Server, stored_ct: Dataset, resource: str, query: str, header: str | None, status: int,
    media: str | None,
) -> None:  # fmt: skip
    """Item 10 (PS3.18 §8.3.3.1, §8.7.8.1)."""
    study, series, sop = stored_ct.StudyInstanceUID, stored_ct.SeriesInstanceUID, stored_ct.SOPInstanceUID
    instance = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
    path = {
        "thumbnail": f"/dicomweb/studies/{study}/thumbnail",
        "series-thumbnail": f"/dicomweb/studies/{study}/series/{series}/thumbnail",
        "rendered": f"{instance}/rendered",
        "frame-rendered": f"{instance}/frames/1/rendered",
        "instance": instance,
        "study": f"/dicomweb/studies/{study}",
        "frames": f"{instance}/frames/1",
        "search": "/dicomweb/studies",
        "metadata": f"{instance}/metadata",
    }[resource]
    with shared_server.client() as client:
        headers = {"Accept": header} if header is not None else {}
        params = {"accept": query} | ({"StudyInstanceUID": study} if resource == "search" else {})
        response = client.get(path, params=params, headers=headers)
    assert response.status_code == status, response.text
    if media is not None:
        assert response.headers["content-type"].split(";")[0] == media
        if media == "image/png":
            assert response.content.startswith(b"\x89PNG")
        if media == "image/jpeg":
            assert response.content.startswith(b"\xff\xd8")
