"""SIEM export end to end: traffic in a real home, exported as IHE ATNA over RFC 5425 syslog/TLS to a
receiver this test runs (and as JSON Lines to a file), checked frame by frame; no PHI leaves."""

from __future__ import annotations

import re
import socket
import ssl
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from medvault.crypto.tls import (
    create_ca,
    issue_client_certificate,
    issue_server_certificate,
    server_ssl_context,
)
from medvault.errors import InvalidInput
from medvault.home import OpenHome, open_home
from medvault.ledger import Actor, ActorKind
from medvault.ledger.events import parse_event
from medvault.ledger.export import export_ledger
from medvault.ledger.merkle import leaf_hash, verify_inclusion
from medvault.ledger.syslog import BOM, SyslogError, split_frames
from medvault.sample import generate_study
from tests.conftest import PASSPHRASE, make_home

pytestmark = pytest.mark.integration

PATIENT_NAME = "PHITESTSURNAME^PHITESTGIVEN"
PATIENT_ID = "PHI-ID-7734119"
PHI = [PATIENT_NAME, PATIENT_ID, "PHITESTSURNAME", "PHITESTGIVEN", "7734119"]
HEADER = re.compile(
    rb"<(?P<pri>\d{1,3})>1 (?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z) (?P<host>[!-~]{1,255}) medvault "
    rb"(?P<procid>\d+) (?P<msgid>[!-~]{1,32}) "
    rb'\[medvault@32473 origin="(?P<origin>[^"]+)" index="(?P<index>\d+)" '
    rb'leafhash="(?P<hash>[0-9a-f]{64})"\] '
)


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def write_pki(root: Path, name: str) -> Pki:
    root.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = create_ca(f"{name} test CA")
    cert, key = issue_server_certificate(ca_cert, ca_key, hostnames=["localhost"], ip_addresses=["127.0.0.1"])
    client, client_key = issue_client_certificate(ca_cert, ca_key, common_name="medvault-exporter")
    files = {
        "ca.crt": ca_cert,
        "server.crt": cert,
        "server.key": key,
        "client.crt": client,
        "client.key": client_key,
    }
    for file, data in files.items():
        (root / file).write_bytes(data)
    return Pki(*(root / f for f in files))


class Receiver:
    """A one-connection RFC 5425 collector: TLS server on a free port, keeps every octet received."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(1)
        self._listener.settimeout(60)
        self.port: int = self._listener.getsockname()[1]
        self.data = bytearray()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="syslog-receiver", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self._listener.accept()
        except OSError as exc:
            self.error = exc
            return
        conn.settimeout(60)
        try:
            with self._context.wrap_socket(conn, server_side=True) as tls:
                while chunk := tls.recv(65536):
                    self.data.extend(chunk)
                tls.unwrap()
        except (ssl.SSLError, OSError) as exc:
            self.error = exc
        finally:
            conn.close()

    def received(self) -> bytes:
        self._thread.join(60)
        assert not self._thread.is_alive()
        self._listener.close()
        return bytes(self.data)


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[OpenHome]:
    home = make_home(tmp_path / "home")
    files = generate_study(
        tmp_path / "study",
        seed=11,
        series=2,
        instances=3,
        rows=16,
        cols=16,
        patient_name=PATIENT_NAME,
        patient_id=PATIENT_ID,
    )
    opened = open_home(home.root, PASSPHRASE)
    try:
        outcomes = opened.archive.store_batch([p.read_bytes() for p in files])
        assert {o.status for o in outcomes} == {"stored"}
        study_uid = outcomes[0].study_uid
        assert study_uid is not None
        facts = opened.archive.index.study_facts(study_uid=study_uid)
        reader = Actor(kind=ActorKind.USER, id="dr-reader", address="10.9.8.7", auth="password+totp")
        opened.archive.audit_read("query", reader, list(facts))
        opened.archive.audit_read("retrieve", reader, list(facts))
        opened.archive.delete(study_uid, outcomes[0].series_uid, outcomes[0].sop_instance_uid)
        opened.ledger.flush()
        yield opened
    finally:
        opened.close()


def leaves(opened: OpenHome) -> list[bytes]:
    ledger = opened.ledger
    return ledger.entries(0, ledger.size)


def code_of(root: ET.Element) -> str:
    event_id = root.find("EventIdentification/EventID")
    assert event_id is not None
    return event_id.attrib["csd-code"]


def assert_no_phi(data: bytes) -> None:
    for value in PHI:
        assert value.encode() not in data, value


def test_atna_over_tls_to_a_syslog_receiver(opened: OpenHome, tmp_path: Path) -> None:
    pki = write_pki(tmp_path / "pki", "collector")
    before = leaves(opened)
    assert len(before) == 1 + 6 + 3  # the first admin (init), six stores, a query, a retrieval, a deletion
    kinds = {parse_event(leaf).kind.value for leaf in before}
    assert {"store", "query", "retrieve", "delete"} <= kinds
    receiver = Receiver(server_ssl_context(pki.server_cert, pki.server_key, key_password=None))
    progress: list[int] = []

    result = export_ledger(
        opened.ledger,
        fmt="atna",
        destination=f"syslog+tls://127.0.0.1:{receiver.port}",
        ca_file=pki.ca,
        progress=progress.append,
    )
    data = receiver.received()
    assert receiver.error is None, receiver.error

    assert (result.count, result.last_index, result.next_index) == (len(before), len(before) - 1, len(before))
    assert sum(progress) == len(before)
    frames = list(split_frames(data))
    assert len(frames) == len(before)
    origin = opened.settings.ledger.origin
    codes_by_kind: dict[str, set[str]] = {}
    for index, (message, leaf) in enumerate(zip(frames, before, strict=True)):
        header = HEADER.match(message)
        assert header is not None, message[:200]
        event = parse_event(leaf)
        assert int(header["pri"]) == (85 if event.outcome.value == "success" else 84)
        assert header["msgid"] == b"IHE+RFC-3881"
        assert header["origin"].decode() == origin
        assert int(header["index"]) == index
        assert bytes.fromhex(header["hash"].decode()) == leaf_hash(leaf)
        assert header["ts"].decode() == event.to_json()["time"]
        body = message[header.end() :]
        assert body.startswith(BOM)
        root = ET.fromstring(body[len(BOM) :].decode("utf-8"))
        assert root.tag == "AuditMessage"
        ident = root.find("EventIdentification")
        assert ident is not None and ident.attrib["EventDateTime"] == event.to_json()["time"]
        source = root.find("AuditSourceIdentification")
        assert source is not None and source.attrib["AuditSourceID"] == origin
        if event.patient is not None:
            ids = [o.attrib["ParticipantObjectID"] for o in root.iter("ParticipantObjectIdentification")]
            assert event.patient in ids
        codes_by_kind.setdefault(event.kind.value, set()).add(code_of(root))
    assert codes_by_kind["store"] == {"110104"}
    assert codes_by_kind["query"] == {"110112"}
    assert codes_by_kind["retrieve"] == {"110103"}
    assert codes_by_kind["delete"] == {"110103"}  # one instance (a whole study would be 110105)
    assert_no_phi(data)

    # the export itself is ledgered (Audit Log Used), and a second export resumes after it
    after = leaves(opened)
    assert len(after) == len(before) + 1
    record = parse_event(after[-1])
    assert (record.kind.value, record.action, record.outcome.value) == ("export", "ledger.export", "success")
    assert record.details["count"] == len(before) and record.details["last_index"] == len(before) - 1
    again = Receiver(server_ssl_context(pki.server_cert, pki.server_key, key_password=None))
    resumed = export_ledger(
        opened.ledger,
        fmt="atna",
        destination=f"syslog+tls://127.0.0.1:{again.port}",
        ca_file=pki.ca,
        since_index=result.next_index,
    )
    (only,) = split_frames(again.received())
    assert resumed.count == 1 and resumed.last_index == len(before)
    header = HEADER.match(only)
    assert header is not None and int(header["index"]) == len(before)
    assert b'csd-code="110101"' in only  # Audit Log Used


def test_jsonl_file_is_the_leaves(opened: OpenHome, tmp_path: Path) -> None:
    expected = leaves(opened)
    out = tmp_path / "export.jsonl"
    result = export_ledger(opened.ledger, fmt="jsonl", destination=str(out))
    data = out.read_bytes()
    lines = data.split(b"\n")
    assert lines[-1] == b"" and lines[:-1] == expected
    assert result.count == len(expected)
    assert_no_phi(data)
    # each line is checkable against the Merkle tree
    ledger = opened.ledger
    size = len(expected)
    root = ledger.root(size)
    for index in (0, size // 2, size - 1):
        proof = ledger.inclusion_proof(index, size)
        verify_inclusion(leaf_hash(lines[index]), index, size, proof.hashes, root)
    # never overwrites; resumes from an index
    with pytest.raises(InvalidInput, match="already exists"):
        export_ledger(opened.ledger, fmt="jsonl", destination=str(out))
    tail = tmp_path / "tail.jsonl"
    now = len(leaves(opened))  # the two exports above were ledgered
    part = export_ledger(opened.ledger, fmt="jsonl", destination=str(tail), since_index=size - 2)
    assert (part.count, part.last_index, part.next_index) == (now - (size - 2), now - 1, now)
    assert tail.read_bytes().split(b"\n")[:2] == expected[size - 2 :]


def test_untrusted_collector_certificate_fails_clearly(opened: OpenHome, tmp_path: Path) -> None:
    trusted = write_pki(tmp_path / "trusted", "trusted")
    impostor = write_pki(tmp_path / "impostor", "impostor")
    receiver = Receiver(server_ssl_context(impostor.server_cert, impostor.server_key, key_password=None))
    size = opened.ledger.size
    with pytest.raises(SyslogError, match="does not verify against the CA file") as info:
        export_ledger(
            opened.ledger,
            fmt="atna",
            destination=f"syslog+tls://127.0.0.1:{receiver.port}",
            ca_file=trusted.ca,
        )
    assert "certificate verify failed" in str(info.value) or "unable to get local issuer" in str(info.value)
    assert receiver.received() == b""
    record = parse_event(opened.ledger.entry(size))  # the failed export is ledgered as a failure
    assert record.outcome.value == "failure" and record.reason is not None and "verify" in record.reason


def test_mutual_tls(opened: OpenHome, tmp_path: Path) -> None:
    pki = write_pki(tmp_path / "pki", "mtls")
    strict = server_ssl_context(pki.server_cert, pki.server_key, key_password=None, client_ca_file=pki.ca)
    receiver = Receiver(strict)
    result = export_ledger(
        opened.ledger,
        fmt="jsonl",
        destination=f"syslog+tls://127.0.0.1:{receiver.port}",
        ca_file=pki.ca,
        client_cert=pki.client_cert,
        client_key=pki.client_key,
    )
    frames = list(split_frames(receiver.received()))
    assert receiver.error is None
    assert len(frames) == result.count
    assert all(b" medvault-ledger [medvault@32473 " in f for f in frames)
    assert [f.split(BOM, 1)[1] for f in frames] == leaves(opened)[: result.count]

    # without a client certificate the collector refuses the session, and the export says so
    refusing = Receiver(strict)
    with pytest.raises(SyslogError, match="collector"):
        export_ledger(
            opened.ledger, fmt="jsonl", destination=f"syslog+tls://127.0.0.1:{refusing.port}", ca_file=pki.ca
        )
    assert refusing.received() == b""
    assert refusing.error is not None
