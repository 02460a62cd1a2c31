"""Pure parts of the DIMSE layer: node permissions, identifier translation, the node registry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import create_engine

import medvault.dimse as dimse
from medvault.crypto.tls import create_ca, encrypt_private_key, issue_client_certificate
from medvault.dicom.matching import MatchKind
from medvault.dimse.permissions import DimseOperation, decide_node
from medvault.dimse.query import IdentifierError, parse_find_identifier, parse_retrieve_identifier
from medvault.errors import Conflict, InvalidInput, NotFound
from medvault.index.nodes import CaMaterial, IssuedNode, Node, NodeStore, certificate_fingerprint

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def test_public_names() -> None:
    assert set(dimse.__all__) >= {"start_dimse_server", "NodeStore", "DimseAuditEvent", "dimse_tls_for_home"}
    assert dimse.DEFAULT_PORT == 2762 and dimse.DEFAULT_AE_TITLE == "MEDVAULT"


def _node(perms: set[str], *, revoked: bool = False, not_after: datetime = NOW + timedelta(days=1)) -> Node:
    return Node(
        name="ct1", ae_title="CT1", host="10.0.0.5", port=104, permissions=frozenset(perms),
        fingerprint=b"\0" * 32, certificate_pem="", issued_by_medvault=True, not_after=not_after,
        created_at=NOW, revoked_at=NOW if revoked else None,
    )  # fmt: skip


@pytest.mark.parametrize("op", list(DimseOperation))
def test_permissions_deny_by_default(op: DimseOperation) -> None:
    assert not decide_node(None, op, now=NOW).allowed
    assert not decide_node(_node({"store", "find", "get", "move"}, revoked=True), op, now=NOW).allowed
    assert not decide_node(_node({"store", "find", "get", "move"}, not_after=NOW), op, now=NOW).allowed
    assert decide_node(_node(set()), op, now=NOW).allowed is (op is DimseOperation.ECHO)
    assert decide_node(_node({op.value}), op, now=NOW).allowed


def _identifier(**keys: str) -> Dataset:
    ds = Dataset()
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def test_find_identifier_becomes_qido_criteria() -> None:
    q = parse_find_identifier(
        _identifier(QueryRetrieveLevel="SERIES", StudyInstanceUID="1.2.3", Modality="CT", SeriesNumber=""),
        "study",
    )
    assert q.level == "series" and q.study_uid == "1.2.3"
    kinds = {c.tag: c.kind for c in q.criteria}
    assert kinds == {
        "0020000D": MatchKind.SINGLE,
        "00080060": MatchKind.SINGLE,
        "00200011": MatchKind.UNIVERSAL,
    }
    assert "0020000E" in q.return_tags  # unique key of the level always returned


@pytest.mark.parametrize(
    ("keys", "model", "status"),
    [
        ({"PatientID": "1"}, "study", 0xA900),  # no level
        ({"QueryRetrieveLevel": "PATIENT"}, "study", 0xA900),  # not in Study Root
        ({"QueryRetrieveLevel": "STUDY", "StudyDate": "2020-01-01-2"}, "study", 0xC000),
        ({"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.x"}, "study", 0xC000),
    ],
)
def test_bad_find_identifiers(keys: dict[str, str], model: str, status: int) -> None:
    with pytest.raises(IdentifierError) as info:
        parse_find_identifier(_identifier(**keys), model)
    assert info.value.status == status


def test_retrieve_identifier_needs_unique_keys() -> None:
    keys = parse_retrieve_identifier(
        _identifier(QueryRetrieveLevel="STUDY", StudyInstanceUID="1.2\\1.3"), "study"
    )
    assert keys.level == "study" and keys.criteria[0].uids == ("1.2", "1.3")
    with pytest.raises(IdentifierError):
        parse_retrieve_identifier(_identifier(QueryRetrieveLevel="IMAGE", StudyInstanceUID="1.2"), "study")


@pytest.fixture
def store(tmp_path: Path) -> NodeStore:
    return NodeStore(create_engine(f"sqlite:///{tmp_path / 'nodes.db'}"))


@pytest.fixture
def ca() -> CaMaterial:
    cert, key = create_ca("test CA")
    return CaMaterial(cert, encrypt_private_key(key, b"secret"), b"secret")


def test_node_registry_issue_pin_revoke(store: NodeStore, ca: CaMaterial) -> None:
    issued = store.add("ct1", ae_title="CT1", host="10.0.0.5", port=104, permissions={"store"}, ca=ca)
    assert isinstance(issued, IssuedNode)
    assert b"PRIVATE KEY" in issued.key_pem and "PRIVATE" not in repr(issued)
    node = store.get_by_fingerprint(certificate_fingerprint(issued.cert_pem))
    assert node is not None and node.name == "ct1" and node.permissions == {"store"} and not node.revoked
    with pytest.raises(Conflict):
        store.add("ct1", ae_title="CT1", host="h", port=1, permissions=set(), ca=ca)
    store.revoke("ct1")
    assert store.get("ct1").revoked
    with pytest.raises(NotFound):
        store.revoke("ct1")
    assert [n.name for n in store.list()] == ["ct1"]


def test_node_registry_site_certificate_and_validation(store: NodeStore) -> None:
    site_ca, site_key = create_ca("site CA")
    cert, _ = issue_client_certificate(site_ca, site_key, common_name="pacs")
    node = store.add("pacs", ae_title="PACS", host="pacs.example", port=11112, permissions={"find"},
                     certificate_pem=cert)  # fmt: skip
    assert isinstance(node, Node) and not node.issued_by_medvault
    assert store.site_certificates()[0][0] == node.fingerprint
    with pytest.raises(Conflict):
        store.add("pacs2", ae_title="PACS", host="h", port=1, permissions=set(), certificate_pem=cert)
    for bad in ({"permissions": {"delete"}}, {"ae_title": "A\\B"}, {"ae_title": "X" * 17}, {"port": 0}):
        args = {"ae_title": "OK", "host": "h", "port": 1, "permissions": set(), **bad}
        with pytest.raises(InvalidInput):
            store.add("x", certificate_pem=cert, **args)  # type: ignore[arg-type]


def test_accepted_connections_have_nagle_off() -> None:
    """Every accepted DIMSE connection gets TCP_NODELAY (issue 19): a C-STORE-RSP is not held
    back for the peer's delayed ACK."""
    import socket

    from medvault.dimse.server import _Server

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    server = object.__new__(_Server)
    server.socket = listener
    with socket.create_connection(listener.getsockname()) as client:
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        accepted, _ = server.get_request()
        with accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    listener.close()
