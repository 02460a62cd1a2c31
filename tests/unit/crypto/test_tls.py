"""The archive's CA and certificates, and real TLS handshakes over a loopback socket pair."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from medvault.crypto import (
    client_ssl_context,
    create_ca,
    default_hostnames,
    encrypt_private_key,
    issue_client_certificate,
    issue_server_certificate,
    load_private_key_pem,
    server_ssl_context,
)
from medvault.crypto.tls import restrict_groups
from medvault.errors import ConfigError, InvalidInput, KeyringError

NOW = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)
SECRET = b"tls secret from the keyring"


@pytest.fixture(scope="module")
def ca() -> tuple[bytes, bytes]:
    return create_ca("medvault test CA")


@pytest.fixture(scope="module")
def server(ca: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
    return issue_server_certificate(
        *ca, hostnames=["localhost", "pacs.example.org"], ip_addresses=["127.0.0.1", "::1"]
    )


@dataclass
class Files:
    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path


@pytest.fixture
def files(tmp_path: Path, ca: tuple[bytes, bytes], server: tuple[bytes, bytes]) -> Files:
    client_cert, client_key = issue_client_certificate(*ca, common_name="CT_SCANNER_1")
    f = Files(
        ca=tmp_path / "ca.pem",
        cert=tmp_path / "server.pem",
        key=tmp_path / "server.key",
        client_cert=tmp_path / "client.pem",
        client_key=tmp_path / "client.key",
    )
    f.ca.write_bytes(ca[0])
    f.cert.write_bytes(server[0])
    f.key.write_bytes(encrypt_private_key(server[1], SECRET))
    f.client_cert.write_bytes(client_cert)
    f.client_key.write_bytes(encrypt_private_key(client_key, SECRET))
    return f


# -- certificates ---------------------------------------------------------------------------------


def test_ca_certificate() -> None:
    cert_pem, key_pem = create_ca("Site CA", valid_days=100, now=NOW)
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Site CA"
    assert cert.issuer == cert.subject
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    assert cert.not_valid_before_utc == NOW - timedelta(minutes=5)
    assert cert.not_valid_after_utc == NOW + timedelta(days=100)
    cert.verify_directly_issued_by(cert)
    assert b"ENCRYPTED" not in key_pem
    load_private_key_pem(key_pem)


def test_server_certificate(ca: tuple[bytes, bytes]) -> None:
    cert_pem, _ = issue_server_certificate(
        *ca, hostnames=["localhost", "PACS.example.org"], ip_addresses=["10.0.0.5", "::1"], now=NOW
    )
    cert = x509.load_pem_x509_certificate(cert_pem)
    ca_cert = x509.load_pem_x509_certificate(ca[0])
    cert.verify_directly_issued_by(ca_cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "pacs.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("10.0.0.5"),
        ipaddress.ip_address("::1"),
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    assert cert.not_valid_after_utc == NOW + timedelta(days=365)


def test_leaf_never_outlives_its_ca() -> None:
    ca = create_ca("short CA", valid_days=30, now=NOW)
    cert_pem, _ = issue_server_certificate(*ca, hostnames=["localhost"], ip_addresses=[], now=NOW)
    assert x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc == NOW + timedelta(days=30)


def test_client_certificate(ca: tuple[bytes, bytes]) -> None:
    cert_pem, _ = issue_client_certificate(*ca, common_name="CT_SCANNER_1", now=NOW)
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "CT_SCANNER_1"


def test_issuing_checks_its_inputs(ca: tuple[bytes, bytes], server: tuple[bytes, bytes]) -> None:
    with pytest.raises(InvalidInput):
        issue_server_certificate(*ca, hostnames=[], ip_addresses=[])
    with pytest.raises(InvalidInput):
        issue_server_certificate(*ca, hostnames=["bad host"], ip_addresses=[])
    with pytest.raises(InvalidInput):
        issue_server_certificate(*ca, hostnames=["localhost"], ip_addresses=["300.1.1.1"])
    with pytest.raises(InvalidInput):  # a leaf is not a CA
        issue_server_certificate(*server, hostnames=["localhost"], ip_addresses=[])
    with pytest.raises(InvalidInput):  # key of another CA
        issue_server_certificate(ca[0], create_ca("other")[1], hostnames=["localhost"], ip_addresses=[])
    with pytest.raises(InvalidInput):
        create_ca("naive", now=datetime(2026, 1, 1))


def test_private_key_encryption(server: tuple[bytes, bytes]) -> None:
    encrypted = encrypt_private_key(server[1], SECRET)
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in encrypted
    key = load_private_key_pem(encrypted, SECRET)
    assert key.private_numbers() == load_private_key_pem(server[1]).private_numbers()
    with pytest.raises(KeyringError):
        load_private_key_pem(encrypted, b"wrong")
    with pytest.raises(KeyringError):
        load_private_key_pem(encrypted)
    with pytest.raises(KeyringError):
        load_private_key_pem(b"not a key")


def test_default_hostnames() -> None:
    names, ips = default_hostnames()
    assert names[0] == "localhost"
    assert ips == ["127.0.0.1", "::1"]
    assert len(names) == len(set(names))


# -- handshakes -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    version: str | None = None
    cipher: str | None = None
    reply: bytes | None = None
    server_peer_cn: str | None = None
    client_error: BaseException | None = None
    server_error: BaseException | None = None
    extra: dict[str, object] = field(default_factory=dict)


def handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str = "localhost"
) -> Outcome:
    """Connect a client and a server over a socket pair; the server echoes 5 bytes upper-cased."""
    out = Outcome()
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(a, server_side=True) as s:
                peer = s.getpeercert(binary_form=True)
                if peer:
                    cn = x509.load_der_x509_certificate(peer).subject.get_attributes_for_oid(
                        NameOID.COMMON_NAME
                    )
                    out.server_peer_cn = str(cn[0].value)
                s.sendall(s.recv(5).upper())
        except (OSError, ssl.SSLError) as e:
            out.server_error = e
        finally:
            a.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(b, server_hostname=server_hostname) as c:
            out.version = c.version()
            cipher = c.cipher()
            out.cipher = cipher[0] if cipher else None
            c.sendall(b"hello")
            out.reply = c.recv(5)
            if not out.reply:
                raise ConnectionError("server closed the connection")
    except (OSError, ssl.SSLError) as e:
        out.client_error = e
    finally:
        b.close()
        thread.join(15)
    assert not thread.is_alive()
    return out


def test_tls13_handshake_verifies_the_server_name(files: Files) -> None:
    server_ctx = server_ssl_context(files.cert, files.key, key_password=SECRET)
    out = handshake(server_ctx, client_ssl_context(files.ca))
    assert out.client_error is None and out.server_error is None
    assert out.version == "TLSv1.3"
    assert out.reply == b"HELLO"


def test_second_name_in_the_certificate_is_accepted(files: Files) -> None:
    server_ctx = server_ssl_context(files.cert, files.key, key_password=SECRET)
    assert handshake(server_ctx, client_ssl_context(files.ca), "pacs.example.org").reply == b"HELLO"


def test_wrong_server_name_is_refused(files: Files) -> None:
    server_ctx = server_ssl_context(files.cert, files.key, key_password=SECRET)
    out = handshake(server_ctx, client_ssl_context(files.ca), "evil.example.com")
    assert isinstance(out.client_error, ssl.SSLCertVerificationError)


def test_unknown_ca_is_refused(tmp_path: Path, files: Files) -> None:
    other = tmp_path / "other-ca.pem"
    other.write_bytes(create_ca("someone else")[0])
    server_ctx = server_ssl_context(files.cert, files.key, key_password=SECRET)
    out = handshake(server_ctx, client_ssl_context(other))
    assert isinstance(out.client_error, ssl.SSLCertVerificationError)


def test_tls12_with_ecdhe_aead_is_allowed(files: Files) -> None:
    server_ctx = server_ssl_context(files.cert, files.key, key_password=SECRET)
    client = client_ssl_context(files.ca)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    out = handshake(server_ctx, client)
    assert out.version == "TLSv1.2"
    assert (
        out.cipher is not None
        and out.cipher.startswith("ECDHE-")
        and ("GCM" in out.cipher or "CHACHA" in out.cipher)
    )


def test_tls12_with_a_cbc_cipher_is_refused(files: Files) -> None:
    server_ctx = server_ssl_context(files.cert, files.key, key_password=SECRET)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(files.ca)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA384")
    out = handshake(server_ctx, client)
    assert out.reply is None
    assert isinstance(out.server_error, ssl.SSLError)


def test_tls11_is_refused(files: Files) -> None:
    server_ctx = server_ssl_context(files.cert, files.key, key_password=SECRET)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(files.ca)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            client.set_ciphers("ALL:@SECLEVEL=0")
            client.minimum_version = ssl.TLSVersion.TLSv1
            client.maximum_version = ssl.TLSVersion.TLSv1_1
        except (ValueError, ssl.SSLError):
            pytest.skip("this OpenSSL cannot even offer TLS 1.1")
    out = handshake(server_ctx, client)
    assert out.reply is None
    assert out.server_error is not None or out.client_error is not None


@pytest.mark.parametrize(
    ("group", "accepted"),
    [
        ("X25519", True),
        ("P-256", True),
        ("P-384", True),
        ("P-521", False),
        ("X448", False),
        ("ffdhe2048", False),
    ],
)
def test_key_exchange_groups_are_mozillas_intermediate(files: Files, group: str, accepted: bool) -> None:
    """Issue #12, item 11: X25519, P-256 and P-384 only (OpenSSL also offers X448 and P-521).
    TLS 1.3, where the groups a client offers are its key exchange alone (in TLS 1.2 they also
    bound the server certificate's curve, P-256 here)."""
    version = ssl.TLSVersion.TLSv1_3
    server_ctx = server_ssl_context(files.cert, files.key, key_password=SECRET)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(files.ca)
    client.minimum_version = client.maximum_version = version
    assert restrict_groups(client, group)  # the client offers this group alone
    out = handshake(server_ctx, client)
    assert (out.reply == b"HELLO") is accepted, (group, version, out)


def test_leaf_certificates_live_at_most_366_days(ca: tuple[bytes, bytes]) -> None:
    cert_pem, _ = issue_server_certificate(*ca, hostnames=["localhost"], ip_addresses=[])
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= timedelta(days=366)


def test_mutual_tls(files: Files) -> None:
    server_ctx = server_ssl_context(files.cert, files.key, key_password=SECRET, client_ca_file=files.ca)
    assert server_ctx.verify_mode == ssl.CERT_REQUIRED
    with_cert = client_ssl_context(
        files.ca, cert_file=files.client_cert, key_file=files.client_key, key_password=SECRET
    )
    out = handshake(server_ctx, with_cert)
    assert out.reply == b"HELLO"
    assert out.server_peer_cn == "CT_SCANNER_1"

    out = handshake(server_ctx, client_ssl_context(files.ca))
    assert out.reply is None
    assert isinstance(out.server_error, ssl.SSLError)


def test_context_policy(files: Files) -> None:
    ctx = server_ssl_context(files.cert, files.key, key_password=SECRET)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_COMPRESSION
    assert ctx.verify_mode == ssl.CERT_NONE
    tls12 = [c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12 and all(n.startswith("ECDHE-") and ("GCM" in n or "CHACHA20" in n) for n in tls12)


def test_bad_key_password_is_a_config_error(files: Files) -> None:
    with pytest.raises(ConfigError):
        server_ssl_context(files.cert, files.key, key_password=b"wrong")
    with pytest.raises(ConfigError):
        server_ssl_context(files.cert, files.key.with_name("missing.key"), key_password=SECRET)
