"""Glue between an opened home folder and the DIMSE layer (what ``medvault serve`` and
``medvault nodes …`` need): the CA material, the listener's TLS files, node credential files."""

from __future__ import annotations

import os
from pathlib import Path

from medvault.dimse._tls import DimseTls, ensure_outbound_identity
from medvault.errors import ConfigError
from medvault.home import OpenHome
from medvault.index.nodes import CaMaterial, IssuedNode, NodeStore

__all__ = ["ca_material", "dimse_tls_for_home", "node_store", "write_node_credentials"]


def _require_own_ca(home: OpenHome) -> None:
    if not home.settings.tls.own_ca:
        raise ConfigError(
            "DIMSE node certificates are issued by medvault's own CA, and this home uses a site CA",
            hint="Register each node's own certificate instead (NodeStore.add(..., certificate_pem=...)).",
        )


def ca_material(home: OpenHome) -> CaMaterial:
    """medvault's CA (HOME/tls/ca.crt + ca.key, the key encrypted with the keyring's TLS secret)."""
    _require_own_ca(home)
    return CaMaterial(
        cert_pem=home.path(home.settings.tls.ca_certificate).read_bytes(),
        key_pem=home.path("tls/ca.key").read_bytes(),
        key_password=home.keyring_file.keyring.tls_secret,
    )


def dimse_tls_for_home(home: OpenHome) -> DimseTls:
    """The listener's TLS material: the HTTPS server certificate, the CA that issues node
    certificates, and medvault's outbound DIMSE client certificate (made on first use as
    HOME/tls/dimse-client.crt/.key, the key encrypted like the others)."""
    ca = ca_material(home)
    client_cert, client_key = ensure_outbound_identity(home.path("tls"), ca)
    return DimseTls(
        cert_file=home.path(home.settings.tls.certificate),
        key_file=home.path(home.settings.tls.private_key),
        ca_file=home.path(home.settings.tls.ca_certificate),
        client_cert_file=client_cert,
        client_key_file=client_key,
        key_password=ca.key_password,
    )


def node_store(home: OpenHome) -> NodeStore:
    return NodeStore(home.archive.index.engine)


def write_node_credentials(issued: IssuedNode, out_dir: Path) -> tuple[Path, Path]:
    """Write ``NAME.crt`` and ``NAME.key`` (0600, unencrypted PKCS#8: what dcmtk and Orthanc read)
    into ``out_dir`` for the administrator to install on the node; returns (cert, key) paths.
    Refuses to overwrite existing files."""
    out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path = out_dir / f"{issued.node.name}.crt"
    key_path = out_dir / f"{issued.node.name}.key"
    for path in (cert_path, key_path):
        if path.exists():
            raise ConfigError(f"{path} already exists; not overwritten")
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(issued.key_pem)
    cert_path.write_bytes(issued.cert_pem)
    return cert_path, key_path
