"""TLS for DIMSE (PS3.15 Annex B, BCP 195): contexts, the per-connection node check, pinning.

Inbound: a server context (TLS 1.2+, AEAD suites: ``medvault.crypto.tls``) that requires a client
certificate chaining to medvault's CA or equal to a site certificate registered for a node (those
are added as trust anchors with ``VERIFY_X509_PARTIAL_CHAIN``). After the handshake the certificate
must belong to a registered node (SHA-256 of its DER), unrevoked and unexpired.

Outbound (C-MOVE sub-associations): a client context presenting medvault's DIMSE client certificate
and accepting exactly the destination node's registered certificate (pinned: the connection fails
inside the handshake when the fingerprint differs).
"""

from __future__ import annotations

import hashlib
import os
import ssl
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from medvault.crypto.tls import (
    client_ssl_context,
    encrypt_private_key,
    issue_client_certificate,
    load_private_key_pem,
    server_ssl_context,
)
from medvault.index.nodes import CaMaterial, Node, NodeStore

OUTBOUND_CERT = "dimse-client.crt"
OUTBOUND_KEY = "dimse-client.key"


@dataclass(frozen=True)
class DimseTls:
    """TLS material of the DIMSE listener.

    ``cert_file``/``key_file``: the listener's certificate (medvault's server certificate);
    ``ca_file``: the CA that issued node certificates; ``client_cert_file``/``client_key_file``:
    medvault's identity when it calls a node (C-MOVE). Keys may be encrypted with ``key_password``.
    """

    cert_file: Path
    key_file: Path
    ca_file: Path
    client_cert_file: Path
    client_key_file: Path
    key_password: bytes | None = field(default=None, repr=False)


def ensure_outbound_identity(
    tls_dir: Path, ca: CaMaterial, *, common_name: str = "medvault DIMSE", now: datetime | None = None
) -> tuple[Path, Path]:
    """medvault's client certificate for outgoing DIMSE (C-MOVE), made once from the CA; its key
    is stored encrypted under ``ca.key_password`` (the keyring's TLS secret)."""
    cert_path, key_path = tls_dir / OUTBOUND_CERT, tls_dir / OUTBOUND_KEY
    if cert_path.exists() and key_path.exists():
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if cert.not_valid_after_utc > (now or datetime.now(UTC)):
            return cert_path, key_path
    ca_key = load_private_key_pem(ca.key_pem, ca.key_password)
    ca_key_pem = ca_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cert_pem, key_pem = issue_client_certificate(ca.cert_pem, ca_key_pem, common_name=common_name, now=now)
    stored_key = encrypt_private_key(key_pem, ca.key_password) if ca.key_password else key_pem
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(stored_key)
    cert_path.write_bytes(cert_pem)
    return cert_path, key_path


def fingerprint_of(der: bytes) -> bytes:
    return hashlib.sha256(der).digest()


class PeerCheck:
    """Outcome of checking a handshake's client certificate against the registry."""

    def __init__(self, node: Node | None, reason: str | None) -> None:
        self.node = node
        self.reason = reason


class NodeTls:
    """Builds (and caches) the contexts; checks peers against the node registry per connection."""

    def __init__(self, tls: DimseTls, nodes: NodeStore) -> None:
        self.tls = tls
        self.nodes = nodes
        self._lock = threading.Lock()
        self._server_ctx: ssl.SSLContext | None = None
        self._anchors: tuple[bytes, ...] = ()

    def _add_anchors(self, ctx: ssl.SSLContext, site: list[tuple[bytes, str]]) -> None:
        for _, pem in site:
            ctx.load_verify_locations(cadata=pem)
        if site:
            ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN

    def server_context(self) -> ssl.SSLContext:
        """The listener's context; rebuilt only when the registered site certificates change."""
        site = self.nodes.site_certificates()
        anchors = tuple(fp for fp, _ in site)
        with self._lock:
            if self._server_ctx is None or anchors != self._anchors:
                ctx = server_ssl_context(
                    self.tls.cert_file,
                    self.tls.key_file,
                    key_password=self.tls.key_password,
                    client_ca_file=self.tls.ca_file,
                )
                self._add_anchors(ctx, site)
                self._server_ctx, self._anchors = ctx, anchors
            return self._server_ctx

    def check_peer(self, der: bytes | None, *, now: datetime) -> PeerCheck:
        if not der:
            return PeerCheck(None, "no client certificate")
        node = self.nodes.get_by_fingerprint(fingerprint_of(der))
        if node is None:
            return PeerCheck(None, "certificate is not registered to any node")
        if node.revoked:
            return PeerCheck(node, "certificate's node is revoked")
        cert = x509.load_der_x509_certificate(der)
        if cert.not_valid_after_utc <= now or cert.not_valid_before_utc > now:
            return PeerCheck(node, "certificate is expired or not yet valid")
        return PeerCheck(node, None)

    def client_context(self, destination: Node) -> ssl.SSLContext:
        """A context for calling ``destination``: mutual TLS, its registered certificate pinned."""
        ctx = client_ssl_context(
            self.tls.ca_file,
            cert_file=self.tls.client_cert_file,
            key_file=self.tls.client_key_file,
            key_password=self.tls.key_password,
        )
        ctx.check_hostname = False  # the destination is identified by its pinned certificate
        if not destination.issued_by_medvault:
            self._add_anchors(ctx, [(destination.fingerprint, destination.certificate_pem)])
        ctx.sslsocket_class = _pinned_socket_class(destination.fingerprint)
        return ctx


def _pinned_socket_class(expected: bytes) -> type[ssl.SSLSocket]:
    class PinnedSSLSocket(ssl.SSLSocket):
        def do_handshake(self, block: bool = False) -> None:
            super().do_handshake(block)
            der = self.getpeercert(binary_form=True)
            if der is None or fingerprint_of(der) != expected:
                raise ssl.SSLCertVerificationError(
                    "the destination's certificate is not the one registered for the node"
                )

    return PinnedSSLSocket


def peer_text(address: Any) -> str:
    try:
        return f"{address[0]}:{address[1]}"
    except (TypeError, IndexError):
        return str(address)
