"""DIMSE over mutual TLS with real third-party clients: dcmtk (/usr/bin/*scu, storescp) and pynetdicom.

One in-process listener (a thread, free port) over one home for the module; nodes are registered
through ``NodeStore`` with certificates issued by the home's CA. dcmtk is called by absolute path
because pynetdicom installs same-named scripts into the virtualenv.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import ssl
import struct
import subprocess
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path

import pydicom.data
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    Verification,
)

from medvault.crypto.tls import create_ca, issue_client_certificate
from medvault.dicom.query import parse_query
from medvault.dimse import (
    DimseAuditEvent,
    DimseServer,
    IssuedNode,
    NodeStore,
    ca_material,
    dimse_tls_for_home,
    node_store,
    pdu,
    start_dimse_server,
    write_node_credentials,
)
from medvault.dimse.intake import MAX_PDU_LENGTH, read_pdu
from medvault.home import OpenHome, open_home
from medvault.sample import generate_study
from tests.conftest import PASSPHRASE, Home, Server, free_port, make_home
from tests.unit.dimse.test_pdu import associate_rq_bytes

pytestmark = pytest.mark.integration
DCMTK = Path("/usr/bin/storescu")
PLAIN_SCU1 = ["-aet", "SCU1", "-aec", "MEDVAULT"]  # through TlsTunnel (dcmtk's getscu/movescu lack TLS)
needs_dcmtk = pytest.mark.skipif(not DCMTK.exists(), reason="dcmtk is not installed")


@dataclass
class Creds:
    cert: Path
    key: Path
    ae: str


@dataclass
class Env:
    home: OpenHome
    nodes: NodeStore
    server: DimseServer
    ca: Path
    creds: dict[str, Creds]
    files: list[Path]
    tmp: Path
    events: list[DimseAuditEvent] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.port

    def tls_args(self, who: str) -> list[str]:
        c = self.creds[who]
        return ["+tls", str(c.key), str(c.cert), "+cf", str(self.ca), "-aet", c.ae, "-aec", "MEDVAULT"]

    def ssl_context(self, who: str | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if who is not None:
            ctx.load_cert_chain(self.creds[who].cert, self.creds[who].key)
        return ctx

    def events_since(self, mark: int, action: str | None = None) -> list[DimseAuditEvent]:
        deadline = time.monotonic() + 3
        while True:
            found = [e for e in self.events[mark:] if action is None or e.action == action]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


def _issue(
    nodes: NodeStore, home: OpenHome, out: Path, name: str, ae: str, perms: set[str], **kw: object
) -> Creds:
    issued = nodes.add(
        name,
        ae_title=ae,
        host="127.0.0.1",
        port=kw.pop("port", 104),
        permissions=perms,  # type: ignore[arg-type]
        ca=ca_material(home),
        **kw,
    )  # type: ignore[arg-type]
    assert isinstance(issued, IssuedNode)
    cert, key = write_node_credentials(issued, out)
    return Creds(cert, key, ae)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("dimse")
    made = make_home(tmp / "home")
    home = open_home(made.root, PASSPHRASE)
    nodes = node_store(home)
    creds_dir = tmp / "creds"
    creds = {
        "scu": _issue(nodes, home, creds_dir, "scu", "SCU1", {"store", "find", "get", "move"}),
        "storeonly": _issue(nodes, home, creds_dir, "storeonly", "STOREONLY", {"store"}),
        "revoked": _issue(nodes, home, creds_dir, "revoked", "REVOKED", {"store", "find"}),
        "expired": _issue(
            nodes,
            home,
            creds_dir,
            "expired",
            "EXPIRED",
            {"store"},
            now=datetime.now(UTC) - timedelta(days=3),
            valid_days=1,
        ),
    }
    nodes.revoke("revoked")
    rogue_ca, rogue_ca_key = create_ca("rogue CA")
    rogue_cert, rogue_key = issue_client_certificate(rogue_ca, rogue_ca_key, common_name="rogue")
    (creds_dir / "rogue.crt").write_bytes(rogue_cert)
    (creds_dir / "rogue.key").write_bytes(rogue_key)
    (creds_dir / "rogue.key").chmod(0o600)
    creds["rogue"] = Creds(creds_dir / "rogue.crt", creds_dir / "rogue.key", "SCU1")
    creds["wrong_ae"] = Creds(creds["scu"].cert, creds["scu"].key, "NOTSCU1")

    files: list[Path] = []
    files += generate_study(
        tmp / "data" / "a",
        seed=11,
        series=2,
        instances=3,
        rows=32,
        cols=32,
        patient_name="MÜLLER^ANNA",
        patient_id="PID-A",
    )
    files += generate_study(
        tmp / "data" / "b",
        seed=12,
        series=1,
        instances=2,
        rows=32,
        cols=32,
        patient_name="DOE^JOHN",
        patient_id="PID-B",
    )
    events: list[DimseAuditEvent] = []
    server = start_dimse_server(
        archive=home.archive,
        nodes=nodes,
        tls=dimse_tls_for_home(home),
        audit=events.append,
        host="127.0.0.1",
        port=0,
    )
    e = Env(home, nodes, server, made.root / "tls" / "ca.crt", creds, files, tmp, events)
    try:
        yield e
    finally:
        server.shutdown()
        home.close()


def run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def stored_uids(env: Env) -> set[str]:
    return {h.attributes["00080018"]["Value"][0] for h in env.home.archive.search("instance", [])}


# -- dcmtk: accepted and refused ------------------------------------------------------------------


@needs_dcmtk
def test_dcmtk_echo_and_store_with_a_node_certificate(env: Env) -> None:
    mark = len(env.events)
    r = run(["/usr/bin/echoscu", *env.tls_args("scu"), "127.0.0.1", str(env.port)])
    assert r.returncode == 0, r.stderr
    r = run(["/usr/bin/storescu", *env.tls_args("scu"), "127.0.0.1", str(env.port), *map(str, env.files)])
    assert r.returncode == 0, r.stdout + r.stderr
    want = {dcmread(p).SOPInstanceUID for p in env.files}
    assert want <= stored_uids(env)
    stores = [e for e in env.events_since(mark, "dimse.store") if e.outcome == "success"]
    assert len(stores) >= len(env.files)
    assert all(e.node == "scu" and e.calling_ae == "SCU1" for e in stores)
    # No PHI in audit events: no patient names or IDs anywhere.
    text = repr(env.events)
    assert "MÜLLER" not in text and "PID-A" not in text and "DOE^JOHN" not in text
    assert {"accepted", "released"} <= {
        str(e.details.get("event")) for e in env.events_since(mark, "dimse.association")
    }


@needs_dcmtk
@pytest.mark.parametrize(
    ("who", "tls", "reason"),
    [
        ("scu", False, "TLS handshake failed"),  # plain TCP to the TLS port
        ("none", True, "TLS handshake failed"),  # TLS without a client certificate
        ("rogue", True, "TLS handshake failed"),  # a certificate from another CA
        ("revoked", True, "revoked"),
        ("expired", True, "TLS handshake failed"),
        ("wrong_ae", True, "calling AE title"),
    ],
)
def test_dcmtk_refused(env: Env, who: str, tls: bool, reason: str) -> None:
    mark = len(env.events)
    before = stored_uids(env)
    extra = generate_study(
        env.tmp / f"refused-{who}-{tls}",
        seed=900 + len(who),
        series=1,
        instances=1,
        rows=16,
        cols=16,
        patient_name="X^Y",
        patient_id="PID-X",
    )
    if not tls:
        args = ["-aet", "SCU1", "-aec", "MEDVAULT"]
    elif who == "none":
        args = ["+tla", "+cf", str(env.ca), "-aet", "SCU1", "-aec", "MEDVAULT"]
    else:
        args = env.tls_args(who)
    r = run(["/usr/bin/storescu", *args, "127.0.0.1", str(env.port), str(extra[0])])
    assert r.returncode != 0
    if who == "wrong_ae":  # as docs/dimse.md says: an A-ASSOCIATE-RJ, not an abort
        said = (r.stdout + r.stderr).lower()
        assert "association rejected" in said and "calling ae title not recognized" in said, said
    assert stored_uids(env) == before
    refusals = [e for e in env.events_since(mark) if e.outcome in ("refused", "denied")]
    assert refusals, env.events[mark:]
    assert any(reason in (e.reason or "") for e in refusals), refusals
    assert all(e.peer and e.peer.startswith("127.0.0.1:") for e in refusals)


@needs_dcmtk
def test_revocation_takes_effect_without_restart(env: Env, tmp_path: Path) -> None:
    creds = _issue(env.nodes, env.home, tmp_path, "later", "LATER", {"store"})
    args = ["+tls", str(creds.key), str(creds.cert), "+cf", str(env.ca), "-aet", "LATER", "-aec", "MEDVAULT"]
    assert run(["/usr/bin/echoscu", *args, "127.0.0.1", str(env.port)]).returncode == 0
    env.nodes.revoke("later")
    assert run(["/usr/bin/echoscu", *args, "127.0.0.1", str(env.port)]).returncode != 0


# -- dcmtk: find, get, move -----------------------------------------------------------------------


@needs_dcmtk
def test_dcmtk_findscu_matches_like_qido(env: Env, tmp_path: Path) -> None:
    ensure_stored(env)
    out = tmp_path / "find"
    out.mkdir()
    r = run(
        [
            "/usr/bin/findscu",
            *env.tls_args("scu"),
            "-S",
            "-X",
            "-od",
            str(out),
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            "PatientName=muller*",
            "-k",
            "StudyInstanceUID",
            "-k",
            "NumberOfStudyRelatedInstances",
            "127.0.0.1",
            str(env.port),
        ]
    )
    assert r.returncode == 0, r.stdout + r.stderr
    answers = [dcmread(p) for p in sorted(out.iterdir())]
    got = {str(a.StudyInstanceUID) for a in answers}
    want = qido_study_uids(env, [("PatientName", "muller*")])
    assert got == want and len(got) == 1
    assert int(answers[0].NumberOfStudyRelatedInstances) == 6


@needs_dcmtk
def test_dcmtk_getscu_returns_the_stored_bytes(env: Env, tmp_path: Path) -> None:
    ensure_stored(env)
    source = {dcmread(p).SOPInstanceUID: p for p in env.files}
    first = dcmread(env.files[0])
    out = tmp_path / "get"
    out.mkdir()
    tunnel = TlsTunnel(env.port, env.ssl_context("scu"))
    r = run(
        [
            "/usr/bin/getscu",
            *PLAIN_SCU1,
            "-S",
            "-od",
            str(out),
            "-k",
            "QueryRetrieveLevel=SERIES",
            "-k",
            f"StudyInstanceUID={first.StudyInstanceUID}",
            "-k",
            f"SeriesInstanceUID={first.SeriesInstanceUID}",
            "127.0.0.1",
            str(tunnel.port),
        ]
    )
    tunnel.close()
    assert r.returncode == 0, r.stdout + r.stderr
    received = list(out.iterdir())
    assert len(received) == 3
    for path in received:
        got = dcmread(path)
        original = dcmread(source[got.SOPInstanceUID])
        assert got.PixelData == original.PixelData
        assert got == original  # every data element equal (the file meta is the receiver's own)


@needs_dcmtk
def test_dcmtk_movescu_to_a_registered_tls_destination(env: Env, tmp_path: Path) -> None:
    ensure_stored(env)
    # A destination registered now, on a port picked now: one picked when the module's fixture ran
    # could have been taken meanwhile (by an ephemeral client port) before storescp binds it.
    c = _issue(env.nodes, env.home, tmp_path / "creds", "mover-dest", "MOVEDEST", set(), port=free_port())
    dest = env.nodes.get("mover-dest")
    out = tmp_path / "moved"
    out.mkdir()
    scp = subprocess.Popen(
        [
            "/usr/bin/storescp",
            "+tls",
            str(c.key),
            str(c.cert),
            "+cf",
            str(env.ca),
            "-aet",
            "MOVEDEST",
            "-od",
            str(out),
            str(dest.port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    tunnel = TlsTunnel(env.port, env.ssl_context("scu"))
    try:
        wait_port(dest.port)
        first = dcmread(env.files[-1])  # patient B: 2 instances
        mark = len(env.events)
        r = run(
            [
                "/usr/bin/movescu",
                *PLAIN_SCU1,
                "-S",
                "-aem",
                "MOVEDEST",
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                f"StudyInstanceUID={first.StudyInstanceUID}",
                "127.0.0.1",
                str(tunnel.port),
            ]
        )
        assert r.returncode == 0, r.stdout + r.stderr
        received = sorted(out.iterdir())
        assert len(received) == 2
        assert all(dcmread(p).StudyInstanceUID == first.StudyInstanceUID for p in received)
        moves = env.events_since(mark, "dimse.move")
        assert moves and moves[-1].outcome == "success" and moves[-1].details["completed"] == 2
        assert moves[-1].details["destination"] == "mover-dest"
        # An unregistered destination AE title is refused (0xA801).
        r = run(
            [
                "/usr/bin/movescu",
                *PLAIN_SCU1,
                "-S",
                "-aem",
                "NOBODY",
                "-k",
                "QueryRetrieveLevel=STUDY",
                "-k",
                f"StudyInstanceUID={first.StudyInstanceUID}",
                "127.0.0.1",
                str(tunnel.port),
            ]
        )
        assert "a801" in (r.stdout + r.stderr).lower() or r.returncode != 0
        assert len(list(out.iterdir())) == 2
    finally:
        tunnel.close()
        scp.terminate()
        scp.wait(timeout=10)
        if scp.stdout is not None:
            scp.stdout.close()


# -- pynetdicom SCU -------------------------------------------------------------------------------


def associate(env: Env, who: str | None, contexts: list[str], *, ae: str = "SCU1", roles: list[str] = ()):  # type: ignore[no-untyped-def,assignment]
    scu = AE(ae_title=ae)
    for cx in contexts:
        scu.add_requested_context(cx)
    kwargs = {}
    if roles:
        kwargs["ext_neg"] = [build_role(r, scp_role=True) for r in roles]
    return scu.associate(
        "127.0.0.1", env.port, ae_title="MEDVAULT", tls_args=(env.ssl_context(who), "localhost"), **kwargs
    )


def test_pynetdicom_echo_and_refusal_without_certificate(env: Env) -> None:
    assoc = associate(env, "scu", [Verification])
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assoc.release()
    mark = len(env.events)
    refused = associate(env, None, [Verification])
    assert not refused.is_established
    sock = refused.dul.socket
    if sock is not None and sock.socket is not None:
        sock.socket.close()  # pynetdicom leaves a failed requestor's socket open
    assert any("TLS handshake failed" in (e.reason or "") for e in env.events_since(mark, "dimse.tls"))


def c_find(env: Env, model: str, query: Dataset, who: str = "scu") -> tuple[list[Dataset], int]:
    assoc = associate(env, who, [model])
    assert assoc.is_established
    answers, final = [], -1
    for status, identifier in assoc.send_c_find(query, model):
        if status and status.Status in (0xFF00, 0xFF01):
            answers.append(identifier)
        elif status:
            final = int(status.Status)
    assoc.release()
    return answers, final


def qido_study_uids(env: Env, params: list[tuple[str, str]]) -> set[str]:
    q = parse_query(params)
    return {h.attributes["0020000D"]["Value"][0] for h in env.home.archive.search("study", q.criteria)}


@pytest.mark.parametrize(
    "params",
    [
        [("PatientName", "MULLER^ANNA")],  # accent- and case-insensitive PN, like QIDO
        [("PatientName", "d*")],
        [("PatientID", "PID-B")],
        [("StudyDate", "19000101-")],
        [("AccessionNumber", "NOPE")],
        [("ModalitiesInStudy", "CT")],
    ],
)
def test_c_find_study_level_equals_qido(env: Env, params: list[tuple[str, str]]) -> None:
    ensure_stored(env)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = ""
    query.PatientName = ""
    for key, value in params:
        setattr(query, key, value)
    answers, final = c_find(env, StudyRootQueryRetrieveInformationModelFind, query)
    assert final == 0
    assert {str(a.StudyInstanceUID) for a in answers} == qido_study_uids(env, params)
    for a in answers:
        assert a.QueryRetrieveLevel == "STUDY" and a.RetrieveAETitle == "MEDVAULT"


def test_c_find_patient_series_and_image_levels(env: Env) -> None:
    ensure_stored(env)
    q = Dataset()
    q.QueryRetrieveLevel = "PATIENT"
    q.PatientID = ""
    q.PatientName = "*"
    q.NumberOfPatientRelatedStudies = ""
    answers, final = c_find(env, PatientRootQueryRetrieveInformationModelFind, q)
    assert final == 0
    assert {str(a.PatientID) for a in answers} >= {"PID-A", "PID-B"}
    a = next(x for x in answers if x.PatientID == "PID-A")
    assert a.NumberOfPatientRelatedStudies == 1 and str(a.PatientName) == "MÜLLER^ANNA"

    first = dcmread(env.files[0])
    q = Dataset()
    q.QueryRetrieveLevel = "SERIES"
    q.StudyInstanceUID = first.StudyInstanceUID
    q.SeriesInstanceUID = ""
    q.NumberOfSeriesRelatedInstances = ""
    answers, final = c_find(env, StudyRootQueryRetrieveInformationModelFind, q)
    assert final == 0 and len(answers) == 2
    assert all(int(x.NumberOfSeriesRelatedInstances) == 3 for x in answers)

    q = Dataset()
    q.QueryRetrieveLevel = "IMAGE"
    q.StudyInstanceUID = first.StudyInstanceUID
    q.SeriesInstanceUID = first.SeriesInstanceUID
    q.SOPInstanceUID = ""
    q.InstanceNumber = "2"
    answers, final = c_find(env, StudyRootQueryRetrieveInformationModelFind, q)
    assert final == 0 and len(answers) == 1 and answers[0].InstanceNumber == 2

    # PATIENT level is not part of Study Root; a malformed date is "cannot understand".
    q = Dataset()
    q.QueryRetrieveLevel = "PATIENT"
    q.PatientID = ""
    assert c_find(env, StudyRootQueryRetrieveInformationModelFind, q)[1] == 0xA900
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyDate = "2020-01-01-2021"
    assert c_find(env, StudyRootQueryRetrieveInformationModelFind, q)[1] == 0xC000


def test_permissions_are_checked_per_operation(env: Env) -> None:
    ensure_stored(env)
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = ""
    mark = len(env.events)
    assoc = AE(ae_title="STOREONLY")
    assoc.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    a = assoc.associate(
        "127.0.0.1", env.port, ae_title="MEDVAULT", tls_args=(env.ssl_context("storeonly"), "localhost")
    )
    assert a.is_established
    statuses = [int(s.Status) for s, _ in a.send_c_find(q, StudyRootQueryRetrieveInformationModelFind) if s]
    a.release()
    assert statuses == [0x0124]
    denied = env.events_since(mark, "dimse.find")
    assert denied and denied[0].outcome == "denied" and denied[0].node == "storeonly"


def test_pynetdicom_c_get_returns_the_stored_bytes(env: Env) -> None:
    ensure_stored(env)
    received: list[Dataset] = []

    def on_store(event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        received.append(ds)
        return 0

    scu = AE(ae_title="SCU1")
    scu.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    scu.add_requested_context(CTImageStorage)
    a = scu.associate(
        "127.0.0.1",
        env.port,
        ae_title="MEDVAULT",
        tls_args=(env.ssl_context("scu"), "localhost"),
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert a.is_established
    sop = dcmread(env.files[1]).SOPInstanceUID
    q = Dataset()
    q.QueryRetrieveLevel = "IMAGE"
    q.SOPInstanceUID = sop
    finals = [
        s for s, _ in a.send_c_get(q, StudyRootQueryRetrieveInformationModelGet) if s and s.Status != 0xFF00
    ]
    a.release()
    assert finals[-1].Status == 0
    assert len(received) == 1
    assert received[0] == dcmread(env.files[1])
    # A retrieve without the level's unique key does not match the SOP class.
    a = scu.associate(
        "127.0.0.1", env.port, ae_title="MEDVAULT", tls_args=(env.ssl_context("scu"), "localhost")
    )
    q = Dataset()
    q.QueryRetrieveLevel = "SERIES"
    q.StudyInstanceUID = dcmread(env.files[1]).StudyInstanceUID
    finals = [
        s for s, _ in a.send_c_get(q, StudyRootQueryRetrieveInformationModelGet) if s and s.Status != 0xFF00
    ]
    a.release()
    assert finals[-1].Status == 0xA900


# -- C-STORE statuses and transfer syntaxes ---------------------------------------------------------


def store_one(env: Env, ds: Dataset, ts: str = ExplicitVRLittleEndian, who: str = "scu") -> int:
    scu = AE(ae_title="SCU1")
    scu.add_requested_context(str(ds.SOPClassUID), [ts])
    a = scu.associate(
        "127.0.0.1", env.port, ae_title="MEDVAULT", tls_args=(env.ssl_context(who), "localhost")
    )
    assert a.is_established
    status = a.send_c_store(ds)
    a.release()
    return int(status.Status)


def fresh_ct(env: Env, seed: int) -> Dataset:
    path = generate_study(
        env.tmp / f"fresh{seed}",
        seed=seed,
        series=1,
        instances=1,
        rows=16,
        cols=16,
        patient_name="FRESH^ONE",
        patient_id=f"PID-{seed}",
    )[0]
    return dcmread(path)


def test_store_statuses_and_nothing_half_stored(env: Env) -> None:
    ds = fresh_ct(env, 501)
    assert store_one(env, ds) == 0
    assert store_one(env, ds) == 0  # the same bytes again: already present, success
    changed = dcmread(env.tmp / "fresh501" / "S01" / "I0001.dcm")
    changed.SeriesDescription = "CHANGED"
    before = stored_uids(env)
    assert store_one(env, changed) == 0x0111  # same SOP Instance UID, other content
    missing = fresh_ct(env, 502)
    del missing.StudyInstanceUID
    assert store_one(env, missing) == 0xA900
    assert stored_uids(env) == before


def test_store_data_set_not_matching_the_command_is_a900(env: Env, tmp_path: Path) -> None:
    """A C-STORE whose data set names another SOP instance than its command: 0xA900, not stored."""
    ds = fresh_ct(env, 504)
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.6.7"  # the command will carry this UID
    path = tmp_path / "mismatch.dcm"
    ds.save_as(path, enforce_file_format=False)
    scu = AE(ae_title="SCU1")
    scu.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    a = scu.associate(
        "127.0.0.1", env.port, ae_title="MEDVAULT", tls_args=(env.ssl_context("scu"), "localhost")
    )
    assert a.is_established
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes as they are
    try:
        status = a.send_c_store(path)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = False
        a.release()
    assert int(status.Status) == 0xA900
    assert str(ds.SOPInstanceUID) not in stored_uids(env)
    assert "1.2.3.4.5.6.7" not in stored_uids(env)


@pytest.mark.parametrize(
    ("name", "syntax"),
    [
        ("MR_small_RLE.dcm", None),
        ("JPEG-lossy.dcm", None),
        ("MR_small_jpeg_ls_lossless.dcm", None),
        ("MR_small_jp2klossless.dcm", None),
        ("MR_small_implicit.dcm", ImplicitVRLittleEndian),
        ("CT_small.dcm", DeflatedExplicitVRLittleEndian),
    ],
)
def test_store_transfer_syntaxes(env: Env, name: str, syntax: str | None) -> None:
    path = Path(pydicom.data.get_testdata_file(name))  # type: ignore[arg-type]
    ds = dcmread(path)
    ts = syntax or str(ds.file_meta.TransferSyntaxUID)
    uid = f"2.25.{int.from_bytes(name.encode()[:15], 'big')}"  # the MR_small variants share a UID
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    if syntax == DeflatedExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    assert store_one(env, ds, ts) == 0
    (record,) = env.home.archive.instances(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), uid)
    back = dcmread(BytesIO(env.home.archive.read(record)))
    if syntax is None:  # compressed: kept exactly as received
        assert record.transfer_syntax == ts
        assert back.PixelData == ds.PixelData
    else:
        assert back.PixelData == ds.PixelData and back.PatientName == ds.PatientName


# -- plain DIMSE (explicit opt-in only) -------------------------------------------------------------


@needs_dcmtk
def test_plain_dimse_only_when_switched_on(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    events: list[DimseAuditEvent] = []
    with pytest.raises(Exception, match="TLS"):
        start_dimse_server(
            archive=env.home.archive, nodes=env.nodes, tls=None, audit=events.append, host="127.0.0.1", port=0
        )
    with caplog.at_level("WARNING", logger="medvault.dimse"):
        plain = start_dimse_server(
            archive=env.home.archive,
            nodes=env.nodes,
            tls=None,
            audit=events.append,
            host="127.0.0.1",
            port=0,
            allow_plain=True,
        )
    try:
        assert "PLAIN DIMSE is ON" in caplog.text
        assert any(e.action == "dimse.plain_enabled" for e in events)
        ledger = env.home.ledger
        before = ledger.size
        for event in events:  # every listener event is one the ledger accepts (no PHI-like keys)
            env.home.archive.audit.dimse(event)
        ledger.flush()
        assert ledger.size == before + len(events)
        ok = run(["/usr/bin/echoscu", "-aet", "SCU1", "-aec", "MEDVAULT", "127.0.0.1", str(plain.port)])
        assert ok.returncode == 0, ok.stdout + ok.stderr
        bad = run(["/usr/bin/echoscu", "-aet", "UNKNOWN", "-aec", "MEDVAULT", "127.0.0.1", str(plain.port)])
        assert bad.returncode != 0
    finally:
        plain.shutdown()


# -- helpers --------------------------------------------------------------------------------------


def ensure_stored(env: Env) -> None:
    want = {dcmread(p).SOPInstanceUID for p in env.files}
    if want <= stored_uids(env):
        return
    for p in env.files:
        env.home.archive.store(p.read_bytes())


class TlsTunnel:
    """dcmtk 3.6.7's getscu and movescu have no TLS options: they connect in plain TCP to this
    local forwarder, which speaks mutual TLS (with the node's certificate) to the listener."""

    def __init__(self, target_port: int, ctx: ssl.SSLContext) -> None:
        self.ctx, self.target_port = ctx, target_port
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = int(self.sock.getsockname()[1])
        self.closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closing:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            upstream = self.ctx.wrap_socket(
                socket.create_connection(("127.0.0.1", self.target_port)), server_hostname="localhost"
            )
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.close()
            except OSError:
                pass

    def close(self) -> None:
        self.closing = True
        self.sock.close()


def wait_port(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def test_serve_starts_the_dimse_listener_and_nodes_cli_issues_certificates(
    tmp_path: Path, server_factory: Callable[[Home], Server]
) -> None:
    """`medvault nodes add` issues a node certificate; `medvault serve` answers C-ECHO over mutual
    TLS on [dimse] port with it, and refuses the node once `medvault nodes revoke` ran."""
    home = make_home(tmp_path / "served")
    added = home.cli(
        "nodes", "add", "ct1", "--ae-title", "CT1", "--host", "127.0.0.1", "--port", "104",
        "--permissions", "store,find", "--out", str(tmp_path / "creds"),
    )  # fmt: skip
    assert "ct1.crt" in added.stdout and "ca.crt" in added.stdout
    port = tomllib.loads((home.root / "medvault.toml").read_text())["dimse"]["port"]
    server_factory(home)
    echo = [
        "/usr/bin/echoscu", "+tls", str(tmp_path / "creds/ct1.key"), str(tmp_path / "creds/ct1.crt"),
        "+cf", str(home.ca), "-aet", "CT1", "-aec", "MEDVAULT", "127.0.0.1", str(port),
    ]  # fmt: skip
    deadline = time.monotonic() + 20
    while True:
        result = subprocess.run(echo, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        if result.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.3)  # the DIMSE worker process may still be starting
    assert result.returncode == 0, result.stderr
    files = generate_study(tmp_path / "scan", seed=41, series=1, instances=1, rows=32, cols=32,
                           patient_name="NODE^PAT", patient_id="NODE-1")  # fmt: skip
    store = [echo[0].replace("echoscu", "storescu"), *echo[1:], str(files[0])]
    stored = subprocess.run(store, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert stored.returncode == 0, stored.stderr
    assert "ct1" in home.cli("nodes", "list").stdout
    home.cli("nodes", "revoke", "ct1")
    time.sleep(0.5)  # decisions are group-committed
    rows = [
        json.loads(x)
        for x in home.cli("report", "disclosures", "--patient-id", "NODE-1", "--json").stdout.split()
    ]
    assert [(r["kind"], r["actor"], r["auth"], r["outcome"]) for r in rows] == [
        ("store", "ct1", "mtls", "success")
    ]
    ledger = sqlite3.connect(home.root / "ledger.db")
    leaves = [bytes(d) for (d,) in ledger.execute("SELECT data FROM entries")]
    ledger.close()
    assert any(
        b'"node:ct1"' in leaf and b'"study.store"' in leaf and b"authz_decision" in leaf for leaf in leaves
    )
    assert any(b'"dimse.listener.start"' in leaf for leaf in leaves)
    refused = subprocess.run(echo, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert refused.returncode != 0


# -- attacks on the storage path (medvault.dimse.intake, issue #19) --------------------------------
# Lying PDU lengths, an oversized data set, an abort in the middle of one, too many associations:
# each is answered (A-ABORT, A-ASSOCIATE-RJ or a C-STORE failure status), nothing is half-stored,
# memory stays bounded and the listener goes on serving.

CT = str(CTImageStorage)


def connect(env: Env) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", env.port), timeout=20)
    return env.ssl_context("scu").wrap_socket(raw, server_hostname="localhost")


@pytest.fixture
def associated(env: Env) -> Iterator[ssl.SSLSocket]:
    """A raw TLS connection with an accepted storage association (context 1: CT, Explicit LE)."""
    conn = connect(env)
    conn.sendall(associate_rq_bytes([(CT, [ExplicitVRLittleEndian])], calling="SCU1"))
    pdu_type, _ = read_pdu(conn, 1 << 20)
    assert pdu_type == pdu.A_ASSOCIATE_AC
    yield conn
    conn.close()


def c_store_rq(sop_instance: str, message_id: int = 1) -> bytes:
    command = pdu.command_set(
        {0x0002: CT, 0x0100: 0x0001, 0x0110: message_id, 0x0700: 0, 0x0800: 0x0000, 0x1000: sop_instance}
    )
    return pdu.pdata(1, command, is_command=True)


def data_pdv(data: bytes, *, last: bool) -> bytes:
    return pdu.encode(pdu.P_DATA_TF, struct.pack(">IBB", len(data) + 2, 1, 2 if last else 0) + data)


def data_set_bytes(env: Env, seed: int, rows: int = 16) -> tuple[str, bytes]:
    ds = fresh_ct(env, seed)
    if rows != 16:
        ds.Rows = ds.Columns = rows
        ds.PixelData = b"\x01\x00" * rows * rows
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_dataset(buffer, ds)
    return str(ds.SOPInstanceUID), buffer.getvalue()


def status_of(conn: ssl.SSLSocket) -> int:
    pdu_type, body = read_pdu(conn, 1 << 20)
    assert pdu_type == pdu.P_DATA_TF
    (pdv,) = pdu.parse_pdata(body)
    assert pdv.is_command
    return int(pdu.parse_command(bytes(pdv.data))[0x0900])


def still_serving(env: Env) -> bool:
    scu = AE(ae_title="SCU1")
    scu.add_requested_context(Verification)
    assoc = scu.associate(
        "127.0.0.1", env.port, ae_title="MEDVAULT", tls_args=(env.ssl_context("scu"), "localhost")
    )
    try:
        return bool(assoc.is_established) and int(assoc.send_c_echo().Status) == 0
    finally:
        assoc.release()


def test_a_lying_associate_rq_length_is_aborted_before_any_allocation(env: Env) -> None:
    conn = connect(env)
    conn.sendall(struct.pack(">BBI", pdu.A_ASSOCIATE_RQ, 0, 0xFFFFFFF0))  # "4 GB follow"
    pdu_type, body = read_pdu(conn, 16)
    assert pdu_type == pdu.A_ABORT and body[2] == 2  # source: service provider
    conn.close()
    assert still_serving(env)


def test_a_pdu_over_the_announced_maximum_is_aborted(env: Env, associated: ssl.SSLSocket) -> None:
    associated.sendall(struct.pack(">BBI", pdu.P_DATA_TF, 0, MAX_PDU_LENGTH + 1))
    pdu_type, body = read_pdu(associated, 16)
    assert pdu_type == pdu.A_ABORT and body[3] == 6  # invalid PDU parameter value
    assert still_serving(env)


def test_data_on_a_context_never_accepted_is_aborted(env: Env, associated: ssl.SSLSocket) -> None:
    associated.sendall(pdu.encode(pdu.P_DATA_TF, struct.pack(">IBB", 3, 9, 3) + b"x"))
    pdu_type, _ = read_pdu(associated, 16)
    assert pdu_type == pdu.A_ABORT


def test_an_oversized_data_set_is_refused_and_the_association_goes_on(
    env: Env, associated: ssl.SSLSocket
) -> None:
    archive = env.home.archive
    limit = archive.max_instance_bytes
    big_uid, big = data_set_bytes(env, 901, rows=128)  # ~33 kB
    archive.max_instance_bytes = 8 * 1024
    try:
        associated.sendall(c_store_rq(big_uid))
        for start in range(0, len(big), 4096):  # in many PDUs: read to the end, kept no further
            associated.sendall(data_pdv(big[start : start + 4096], last=start + 4096 >= len(big)))
        assert status_of(associated) == 0xA700
    finally:
        archive.max_instance_bytes = limit
    small_uid, small = data_set_bytes(env, 902)
    associated.sendall(c_store_rq(small_uid, message_id=2) + data_pdv(small, last=True))
    assert status_of(associated) == 0x0000
    uids = stored_uids(env)
    assert small_uid in uids and big_uid not in uids


def test_an_abort_in_the_middle_of_a_data_set_stores_nothing(env: Env, associated: ssl.SSLSocket) -> None:
    uid, data = data_set_bytes(env, 903)
    associated.sendall(c_store_rq(uid) + data_pdv(data[: len(data) // 2], last=False))
    associated.sendall(pdu.abort(0, 0))
    associated.close()
    assert uid not in stored_uids(env)
    assert still_serving(env)


def test_a_command_without_its_data_set_then_release(env: Env, associated: ssl.SSLSocket) -> None:
    """A C-STORE-RQ saying "no data set follows" is answered 0xC000; release is answered."""
    command = pdu.command_set({0x0002: CT, 0x0100: 0x0001, 0x0110: 5, 0x0800: 0x0101, 0x1000: "1.2.3.9"})
    associated.sendall(pdu.pdata(1, command, is_command=True))
    assert status_of(associated) == 0xC000
    associated.sendall(pdu.encode(pdu.A_RELEASE_RQ, bytes(4)))
    pdu_type, _ = read_pdu(associated, 16)
    assert pdu_type == pdu.A_RELEASE_RP


def test_stored_bytes_are_the_data_set_as_sent(env: Env, associated: ssl.SSLSocket) -> None:
    uid, data = data_set_bytes(env, 904)
    associated.sendall(c_store_rq(uid) + data_pdv(data, last=True))
    assert status_of(associated) == 0x0000
    ds = dcmread(fresh_path := env.tmp / "fresh904" / "S01" / "I0001.dcm")
    (record,) = env.home.archive.instances(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), uid)
    stored = env.home.archive.read(record)
    assert stored.endswith(data)  # Part 10 header of ours, then the data set byte for byte
    assert dcmread(fresh_path).PixelData == dcmread(DicomBytesIO(stored)).PixelData


def test_associations_beyond_the_limit_are_rejected_transiently(env: Env) -> None:
    limit = env.server._max_associations
    open_ones = []
    try:
        for _ in range(limit):
            conn = connect(env)
            conn.sendall(associate_rq_bytes([(CT, [ExplicitVRLittleEndian])], calling="SCU1"))
            assert read_pdu(conn, 1 << 20)[0] == pdu.A_ASSOCIATE_AC
            open_ones.append(conn)
        extra = connect(env)
        extra.sendall(associate_rq_bytes([(CT, [ExplicitVRLittleEndian])], calling="SCU1"))
        pdu_type, body = read_pdu(extra, 16)
        assert pdu_type == pdu.A_ASSOCIATE_RJ and body[1] == 2  # transient: try again later
        extra.close()
    finally:
        for conn in open_ones:
            conn.sendall(pdu.encode(pdu.A_RELEASE_RQ, bytes(4)))
            read_pdu(conn, 16)
            conn.close()
    assert still_serving(env)
