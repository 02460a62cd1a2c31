"""The DICOM node registry: which machines may speak DIMSE to the archive, and what they may do.

A node is a modality, a PACS or a workstation: a name, its AE title, where it listens (for C-MOVE
destinations), the DIMSE permissions it holds (a subset of :data:`NODE_PERMISSIONS`) and the one
TLS client certificate it presents, pinned by its SHA-256 fingerprint (of the DER encoding).

Two ways in:

- :meth:`NodeStore.add` with ``ca=CaMaterial(...)`` issues a certificate + key from medvault's own
  CA (EC P-256, EKU clientAuth *and* serverAuth so the node can also be a C-MOVE destination). The
  private key is returned once and never stored.
- :meth:`NodeStore.add` with ``certificate_pem=...`` registers a certificate the site provides
  (its own PKI, or a modality's built-in certificate); it is pinned by fingerprint and trusted as
  a TLS trust anchor for that connection only (see ``medvault.dimse``).

Revocation (:meth:`NodeStore.revoke`) is a flag read on every connection and every operation, so it
takes effect without a restart. Nothing here is PHI.
"""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import Engine, bindparam, insert, select, update

from medvault.crypto.tls import issue_node_certificate
from medvault.errors import Conflict, InvalidInput, NotFound
from medvault.index.alerts_schema import security_holds
from medvault.index.holds import HELD_COLUMN
from medvault.index.nodes_schema import dimse_nodes

__all__ = [
    "NODE_PERMISSIONS",
    "CaMaterial",
    "IssuedNode",
    "Node",
    "NodeStore",
    "certificate_fingerprint",
]

#: What a node may be granted. C-ECHO needs no permission beyond being an active node.
NODE_PERMISSIONS: Final = frozenset({"store", "find", "get", "move"})
DEFAULT_NODE_CERT_DAYS: Final = 365  # Mozilla "intermediate": at most 366 days
_CLOCK_SKEW: Final = timedelta(minutes=5)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# PS3.5 AE VR: 16 characters of the default repertoire, no backslash or control characters.
_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")

# Read for every DIMSE operation (a revocation takes effect at once): built once.
_NODE_BY_NAME = select(dimse_nodes, HELD_COLUMN.label("suspended")).where(
    dimse_nodes.c.name == bindparam("name")
)


@dataclass(frozen=True)
class CaMaterial:
    """The CA that issues node certificates: its PEM certificate, its (encrypted) PEM key and the
    key's password (``keyring.tls_secret`` for the CA made at ``medvault init``)."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    key_password: bytes | None = field(repr=False)


@dataclass(frozen=True)
class Node:
    name: str
    ae_title: str
    host: str
    port: int
    permissions: frozenset[str]
    fingerprint: bytes
    certificate_pem: str
    issued_by_medvault: bool
    not_after: datetime
    created_at: datetime
    revoked_at: datetime | None
    suspended: bool = False  # a security hold (monitor response) is in force: refused until lifted

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    @property
    def fingerprint_hex(self) -> str:
        """``AB:CD:…`` — the form ``openssl x509 -fingerprint -sha256`` prints."""
        return ":".join(f"{b:02X}" for b in self.fingerprint)

    def expired(self, now: datetime) -> bool:
        return self.not_after <= now


@dataclass(frozen=True)
class IssuedNode:
    """A node just registered with a certificate issued by medvault; ``key_pem`` (unencrypted
    PKCS#8, what dcmtk/Orthanc read) exists only here: hand it to the node and drop it."""

    node: Node
    cert_pem: bytes
    key_pem: bytes = field(repr=False)


def certificate_fingerprint(cert_pem_or_der: bytes) -> bytes:
    """SHA-256 of the certificate's DER encoding (accepts PEM or DER)."""
    return hashlib.sha256(_der(cert_pem_or_der)).digest()


def _der(data: bytes) -> bytes:
    if data.lstrip().startswith(b"-----BEGIN"):
        return _load_pem_cert(data).public_bytes(serialization.Encoding.DER)
    return data


def _load_pem_cert(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise InvalidInput("the node certificate is not a PEM X.509 certificate") from None


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _check_fields(
    name: str, ae_title: str, host: str, port: int, permissions: Iterable[str]
) -> frozenset[str]:
    if not _NAME_RE.match(name):
        raise InvalidInput(
            "a node name is 1-64 letters, digits, '-' or '_' (starting with a letter or digit)"
        )
    if not _AE_RE.match(ae_title) or not ae_title.strip():
        raise InvalidInput("an AE title is 1-16 printable ASCII characters without backslash")
    if ae_title != ae_title.strip():
        raise InvalidInput("an AE title has no leading or trailing spaces")
    if not host or len(host) > 255 or any(c.isspace() for c in host):
        raise InvalidInput("a node host is a host name or IP address")
    if not 1 <= port <= 65535:
        raise InvalidInput("a node port is 1-65535")
    perms = frozenset(permissions)
    unknown = perms - NODE_PERMISSIONS
    if unknown:
        raise InvalidInput(
            f"unknown node permission(s) {sorted(unknown)}; choose from {sorted(NODE_PERMISSIONS)}"
        )
    return perms


def _issue_node_certificate(
    ca: CaMaterial, *, common_name: str, host: str, valid_days: int, now: datetime
) -> tuple[bytes, bytes]:
    return issue_node_certificate(
        ca.cert_pem,
        ca.key_pem,
        common_name=common_name,
        host=host,
        valid_days=valid_days,
        now=now,
        ca_key_password=ca.key_password,
    )


class NodeStore:
    """The registry over the index's engine (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = engine.execution_options(write=True)
        dimse_nodes.create(self._writer, checkfirst=True)
        security_holds.create(self._writer, checkfirst=True)

    def add(
        self,
        name: str,
        *,
        ae_title: str,
        host: str,
        port: int,
        permissions: Iterable[str],
        ca: CaMaterial | None = None,
        certificate_pem: bytes | None = None,
        valid_days: int = DEFAULT_NODE_CERT_DAYS,
        now: datetime | None = None,
    ) -> IssuedNode | Node:
        """Register a node. Exactly one of ``ca`` (issue a certificate + key: returns
        :class:`IssuedNode`) or ``certificate_pem`` (pin the site's certificate: returns
        :class:`Node`). ``Conflict`` when the name or the certificate is already registered."""
        perms = _check_fields(name, ae_title, host, port, permissions)
        if (ca is None) == (certificate_pem is None):
            raise InvalidInput("give either the CA to issue a node certificate or the node's own certificate")
        now = now or datetime.now(UTC)
        key_pem: bytes | None = None
        if ca is not None:
            if valid_days < 1:
                raise InvalidInput("valid_days must be at least 1")
            cert_pem, key_pem = _issue_node_certificate(
                ca, common_name=name, host=host, valid_days=valid_days, now=now
            )
        else:
            assert certificate_pem is not None
            cert_pem = certificate_pem
        cert = _load_pem_cert(cert_pem)
        not_after = cert.not_valid_after_utc
        if not_after <= now:
            raise InvalidInput("the node certificate has already expired")
        fingerprint = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
        pem_text = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
        with self._writer.begin() as conn:
            if conn.execute(select(dimse_nodes.c.id).where(dimse_nodes.c.name == name)).first():
                raise Conflict(f"a node named {name!r} already exists")
            if conn.execute(
                select(dimse_nodes.c.name).where(dimse_nodes.c.fingerprint == fingerprint)
            ).first():
                raise Conflict("this certificate is already registered for another node")
            conn.execute(
                insert(dimse_nodes).values(
                    name=name,
                    ae_title=ae_title,
                    host=host,
                    port=port,
                    permissions=",".join(sorted(perms)),
                    fingerprint=fingerprint,
                    certificate=pem_text,
                    issued_by_medvault=ca is not None,
                    not_after=not_after,
                    created_at=now,
                    revoked_at=None,
                )
            )
        node = self.get(name)
        if key_pem is not None:
            return IssuedNode(node=node, cert_pem=cert_pem, key_pem=key_pem)
        return node

    def get(self, name: str) -> Node:
        """The node, with ``suspended`` set while a security hold is in force on it (read on
        every connection and operation, like revocation)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                _NODE_BY_NAME, {"name": name, "kind": "suspend_node", "subject": "node:" + name}
            ).first()
        if row is None:
            raise NotFound(f"no node named {name!r}")
        return dataclasses.replace(self._node(row), suspended=bool(row.suspended))

    def get_by_fingerprint(self, fingerprint: bytes) -> Node | None:
        """The node whose certificate has this SHA-256 fingerprint, revoked or not (callers check)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(dimse_nodes).where(dimse_nodes.c.fingerprint == fingerprint)).first()
        return None if row is None else self._node(row)

    def get_by_ae_title(self, ae_title: str) -> builtins.list[Node]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(dimse_nodes).where(dimse_nodes.c.ae_title == ae_title).order_by(dimse_nodes.c.id)
            ).all()
        return [self._node(r) for r in rows]

    def list(self) -> list[Node]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(dimse_nodes).order_by(dimse_nodes.c.name)).all()
        return [self._node(r) for r in rows]

    def revoke(self, name: str, *, now: datetime | None = None) -> None:
        with self._writer.begin() as conn:
            result = conn.execute(
                update(dimse_nodes)
                .where(dimse_nodes.c.name == name, dimse_nodes.c.revoked_at.is_(None))
                .values(revoked_at=now or datetime.now(UTC))
            )
        if result.rowcount == 0:
            raise NotFound(f"no active node named {name!r}")

    def site_certificates(self) -> builtins.list[tuple[bytes, str]]:
        """(fingerprint, PEM) of active site-provided certificates: the extra TLS trust anchors."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(dimse_nodes.c.fingerprint, dimse_nodes.c.certificate)
                .where(dimse_nodes.c.issued_by_medvault.is_(False), dimse_nodes.c.revoked_at.is_(None))
                .order_by(dimse_nodes.c.id)
            ).all()
        return [(bytes(r.fingerprint), str(r.certificate)) for r in rows]

    @staticmethod
    def _node(row: Any) -> Node:
        return Node(
            name=row.name,
            ae_title=row.ae_title,
            host=row.host,
            port=int(row.port),
            permissions=frozenset(p for p in str(row.permissions).split(",") if p),
            fingerprint=bytes(row.fingerprint),
            certificate_pem=str(row.certificate),
            issued_by_medvault=bool(row.issued_by_medvault),
            not_after=_aware(row.not_after),
            created_at=_aware(row.created_at),
            revoked_at=_aware(row.revoked_at) if row.revoked_at is not None else None,
        )
