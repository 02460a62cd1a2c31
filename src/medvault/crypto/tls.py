"""The archive's own certificate authority, its server and client certificates, and TLS contexts.

At ``medvault init`` the archive makes a private CA (EC P-256, CA:true, pathlen 0) and issues a
server certificate for its host names; machine identities (modalities, other PACS speaking DICOM
TLS) get client certificates from the same CA. Private keys are stored on disk as encrypted
PKCS#8 under ``keyring.tls_secret`` (:func:`encrypt_private_key`).

TLS policy (:func:`server_ssl_context`, :func:`client_ssl_context`): TLS 1.2 minimum, TLS 1.3
negotiated whenever the peer can; for TLS 1.2 only ECDHE with AES-GCM or ChaCha20-Poly1305
(forward secret AEAD suites, as BCP 195 / RFC 9325 recommends); no compression, no renegotiation.

Time is an argument (``now``) so tests can issue certificates for a fixed instant.
"""

from __future__ import annotations

import _ssl
import ctypes
import ipaddress
import secrets
import socket
import ssl
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from medvault.errors import ConfigError, InvalidInput, KeyringError

__all__ = [
    "LEAF_VALID_DAYS",
    "TLS12_CIPHERS",
    "TLS_GROUPS",
    "certificate_expiry",
    "certificate_names",
    "client_ssl_context",
    "create_ca",
    "default_hostnames",
    "encrypt_private_key",
    "issue_client_certificate",
    "issue_server_certificate",
    "load_private_key_pem",
    "server_ssl_context",
]

#: OpenSSL cipher string for TLS 1.2 (TLS 1.3 suites are all AEAD and left at OpenSSL's default).
TLS12_CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20"
#: Key-exchange groups of Mozilla's "intermediate" profile (v5.7): X25519, P-256, P-384; OpenSSL's
#: default list also offers X448, P-521 and the FFDHE groups.
TLS_GROUPS: Final = "X25519:P-256:P-384"
#: Leaf certificate lifetime: Mozilla's intermediate profile allows at most 366 days.
LEAF_VALID_DAYS: Final = 365
#: Back-date ``notBefore`` so a peer whose clock is a little behind still accepts a fresh certificate.
CLOCK_SKEW: Final = timedelta(minutes=5)
ORGANIZATION: Final = "medvault"

SigningKey = ec.EllipticCurvePrivateKey


def _now(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    if now.tzinfo is None:
        raise InvalidInput("`now` must be a timezone-aware datetime")
    return now


def _new_key() -> SigningKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: SigningKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _name(common_name: str) -> x509.Name:
    if not common_name:
        raise InvalidInput("a certificate needs a non-empty common name")
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )


def _serial() -> int:
    # RFC 5280 4.1.2.2: positive, at most 20 octets; CA/B BR: at least 64 bits of randomness.
    return secrets.randbits(159) | 1


def create_ca(
    common_name: str, *, valid_days: int = 3650, now: datetime | None = None
) -> tuple[bytes, bytes]:
    """A self-signed CA: returns (certificate PEM, private key PEM — unencrypted: encrypt it before
    writing it to disk)."""
    if valid_days < 1:
        raise InvalidInput("valid_days must be at least 1")
    start = _now(now)
    key = _new_key()
    name = _name(common_name)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(start - CLOCK_SKEW)
        .not_valid_after(start + timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def load_private_key_pem(key_pem: bytes, password: bytes | None = None) -> SigningKey:
    """Load an EC private key PEM (encrypted PKCS#8 when ``password`` is given).

    Raises :class:`KeyringError` if it cannot be decrypted or is not an EC key.
    """
    try:
        key = serialization.load_pem_private_key(key_pem, password=password)
    except (ValueError, TypeError):
        raise KeyringError(
            "the TLS private key cannot be loaded",
            hint="It is unreadable, or it was encrypted under another keyring's TLS secret.",
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyringError("the TLS private key is not an EC key")
    return key


def encrypt_private_key(key_pem: bytes, password: bytes) -> bytes:
    """Re-encode an unencrypted private key PEM as encrypted PKCS#8 (BestAvailableEncryption)."""
    if not password:
        raise InvalidInput("a private key password cannot be empty")
    key = load_private_key_pem(key_pem)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )


def _load_ca(
    ca_cert_pem: bytes, ca_key_pem: bytes, password: bytes | None = None
) -> tuple[x509.Certificate, SigningKey]:
    try:
        ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    except ValueError:
        raise InvalidInput("the CA certificate is not a PEM certificate") from None
    ca_key = load_private_key_pem(ca_key_pem, password)
    try:
        constraints = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise InvalidInput("the CA certificate is not a CA (basicConstraints CA:true missing)")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if ca_cert.public_key().public_bytes(*spki) != ca_key.public_key().public_bytes(*spki):
        raise InvalidInput("the CA private key does not belong to the CA certificate")
    return ca_cert, ca_key


def _issue(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    *,
    common_name: str,
    eku: x509.ObjectIdentifier | Sequence[x509.ObjectIdentifier],
    san: list[x509.GeneralName],
    valid_days: int,
    now: datetime | None,
    ca_key_password: bytes | None = None,
) -> tuple[bytes, bytes]:
    if valid_days < 1:
        raise InvalidInput("valid_days must be at least 1")
    ca_cert, ca_key = _load_ca(ca_cert_pem, ca_key_pem, ca_key_password)
    ekus = [eku] if isinstance(eku, x509.ObjectIdentifier) else list(eku)
    start = _now(now)
    # A leaf never outlives its CA.
    end = min(start + timedelta(days=valid_days), ca_cert.not_valid_after_utc)
    key = _new_key()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(start - CLOCK_SKEW)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def _dns_name(name: str) -> x509.DNSName:
    if not name or not name.isascii() or any(c.isspace() for c in name):
        raise InvalidInput(f"not a DNS host name (use the IDNA A-label for non-ASCII names): {name!r}")
    return x509.DNSName(name.lower())


def _ip(text: str) -> x509.IPAddress:
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        raise InvalidInput(f"not an IP address: {text!r}") from None


def issue_server_certificate(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    *,
    hostnames: Sequence[str],
    ip_addresses: Sequence[str],
    valid_days: int = LEAF_VALID_DAYS,
    now: datetime | None = None,
    ca_key_password: bytes | None = None,
) -> tuple[bytes, bytes]:
    """A server certificate (EKU serverAuth, SAN = the host names and IP addresses) signed by the CA.

    Returns (certificate PEM, unencrypted private key PEM).
    """
    san: list[x509.GeneralName] = [_dns_name(h) for h in hostnames]
    san += [_ip(a) for a in ip_addresses]
    if not san:
        raise InvalidInput("a server certificate needs at least one host name or IP address")
    common_name = hostnames[0] if hostnames else ip_addresses[0]
    return _issue(
        ca_cert_pem,
        ca_key_pem,
        common_name=common_name,
        eku=ExtendedKeyUsageOID.SERVER_AUTH,
        san=san,
        valid_days=valid_days,
        now=now,
        ca_key_password=ca_key_password,
    )


def certificate_names(cert_pem: bytes) -> tuple[list[str], list[str]]:
    """The DNS names and IP addresses a certificate is for (its subject alternative names)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return list(san.get_values_for_type(x509.DNSName)), [
        str(a) for a in san.get_values_for_type(x509.IPAddress)
    ]


def certificate_expiry(cert_pem: bytes) -> datetime:
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc


def issue_client_certificate(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    *,
    common_name: str,
    valid_days: int = LEAF_VALID_DAYS,
    now: datetime | None = None,
) -> tuple[bytes, bytes]:
    """A client certificate (EKU clientAuth) naming a machine identity in its common name."""
    return _issue(
        ca_cert_pem,
        ca_key_pem,
        common_name=common_name,
        eku=ExtendedKeyUsageOID.CLIENT_AUTH,
        san=[],
        valid_days=valid_days,
        now=now,
    )


def issue_node_certificate(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    *,
    common_name: str,
    host: str,
    valid_days: int = LEAF_VALID_DAYS,
    now: datetime | None = None,
    ca_key_password: bytes | None = None,
) -> tuple[bytes, bytes]:
    """A DICOM node's certificate: clientAuth (it calls the archive) and serverAuth (it may receive
    C-MOVE sub-operations), with its address as subject alternative name."""
    try:
        san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        san = _dns_name(host)
    return _issue(
        ca_cert_pem,
        ca_key_pem,
        common_name=common_name,
        eku=(ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH),
        san=[san],
        valid_days=valid_days,
        now=now,
        ca_key_password=ca_key_password,
    )


def _harden(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    restrict_groups(ctx, TLS_GROUPS)


_SSL_CTRL_SET_GROUPS_LIST = 92  # OpenSSL's SSL_CTX_set1_groups_list is SSL_CTX_ctrl with this


def restrict_groups(ctx: ssl.SSLContext, groups: str) -> bool:
    """Limit the key-exchange groups of ``ctx`` (``SSL_CTX_set1_groups_list``), which Python's
    ``ssl`` module cannot do before 3.15 except for a single curve.

    OpenSSL is asked through the very library the ``ssl`` module is linked with, on the
    ``SSL_CTX`` a CPython ``SSLContext`` holds right after its object header; the pointer is checked
    (``SSL_CTX_get_options`` must return the context's own options) before anything is set.
    Returns False, changing nothing, where that cannot be done safely (another Python, no such
    symbol): the context then keeps OpenSSL's default groups, all of them still strong ones.
    """
    if sys.implementation.name != "cpython":
        return False
    try:
        lib = ctypes.CDLL(_ssl.__file__)
        get_options, ctrl = lib.SSL_CTX_get_options, lib.SSL_CTX_ctrl
    except (OSError, AttributeError):
        return False
    get_options.argtypes, get_options.restype = [ctypes.c_void_p], ctypes.c_uint64
    ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
    ctrl.restype = ctypes.c_long
    pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not pointer or get_options(pointer) != int(ctx.options):
        return False
    if ctrl(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, groups.encode("ascii")) != 1:
        raise ConfigError(f"OpenSSL refused the TLS group list {groups!r}")
    return True


def _load_chain(ctx: ssl.SSLContext, cert_file: Path, key_file: Path, key_password: bytes | None) -> None:
    try:
        ctx.load_cert_chain(cert_file, key_file, password=key_password)
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(
            f"cannot load the TLS certificate {cert_file} with its key {key_file}",
            hint=f"{type(e).__name__}: check the files exist and the key password (keyring TLS secret).",
        ) from None


def _load_ca_file(ctx: ssl.SSLContext, ca_file: Path) -> None:
    try:
        ctx.load_verify_locations(cafile=ca_file)
    except (ssl.SSLError, OSError):
        raise ConfigError(f"cannot load the CA certificate {ca_file}") from None


def server_ssl_context(
    cert_file: Path,
    key_file: Path,
    *,
    key_password: bytes | None,
    client_ca_file: Path | None = None,
) -> ssl.SSLContext:
    """A server context: TLS 1.2+ (1.3 preferred), ECDHE AEAD suites; mutual TLS (CERT_REQUIRED)
    against ``client_ca_file`` when given. Raises :class:`ConfigError` if the files do not load."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(ctx)
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _load_chain(ctx, cert_file, key_file, key_password)
    if client_ca_file is not None:
        _load_ca_file(ctx, client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_ssl_context(
    ca_file: Path,
    *,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    key_password: bytes | None = None,
) -> ssl.SSLContext:
    """A client context trusting only ``ca_file`` (host name checked), with the same TLS policy;
    presents ``cert_file``/``key_file`` for mutual TLS when given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname by default
    _harden(ctx)
    _load_ca_file(ctx, ca_file)
    if cert_file is not None:
        if key_file is None:
            raise InvalidInput("a client certificate needs its key file")
        _load_chain(ctx, cert_file, key_file, key_password)
    return ctx


def default_hostnames() -> tuple[list[str], list[str]]:
    """Names for the server certificate made at ``init``: (["localhost", this host's name], loopback IPs).

    Only ``socket.gethostname()`` is asked (no DNS lookup, which can hang offline); sites add
    their public names with ``medvault init --hostname``.
    """
    names = ["localhost"]
    host = socket.gethostname().strip().lower()
    if host and host.isascii() and host not in names and not any(c.isspace() for c in host):
        names.append(host)
    return names, ["127.0.0.1", "::1"]
