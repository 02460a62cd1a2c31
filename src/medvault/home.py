"""The home folder: create it (``init``) and open it into a working archive.

Layout (paths relative to the home; all written 0600/0700)::

    medvault.toml       settings
    keyring.sealed      the keyring, sealed by the passphrase (scrypt + AES-256-GCM)
    tls/ca.crt          the archive's own CA (clients trust this file)
    tls/ca.key          its key, encrypted with the keyring's TLS secret
    tls/server.crt/.key the HTTPS certificate and its encrypted key
    index.db            the SQLite index (PHI encrypted; -wal/-shm beside it)
    objects/            encrypted objects
    logs/               access log (no query strings, no PHI)

Without the passphrase the folder reveals no PHI, no pixels and no private key.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from medvault.access.oidc import OidcConfig, OidcVerifier
from medvault.access.policy import DecisionPoint, load_roles
from medvault.archive import Archive
from medvault.audit import SYSTEM, LedgerAudit
from medvault.config import CONFIG_FILE, DEFAULT_CONFIG_TEXT, Settings, StorageSettings, load_settings
from medvault.crypto.fields import BlindIndex, FieldCipher
from medvault.crypto.kek import KeyringKekProvider
from medvault.crypto.keyring import DEFAULT_SCRYPT, Keyring, KeyringFile, ScryptParams, save_keyring
from medvault.crypto.tls import (
    certificate_expiry,
    certificate_names,
    create_ca,
    default_hostnames,
    encrypt_private_key,
    issue_server_certificate,
    server_ssl_context,
)
from medvault.errors import ConfigError
from medvault.guard import Guard
from medvault.index.alerts import AlertStore
from medvault.index.apikeys import ApiKeyStore
from medvault.index.store import Index
from medvault.index.users import NewUser, UserStore
from medvault.ledger.events import AuditEvent, EventKind, ObjectRef, Outcome
from medvault.ledger.note import Signer
from medvault.ledger.store import Ledger
from medvault.storage.base import BlobStore
from medvault.storage.filesystem import FilesystemBlobStore

KEYRING_FILE = "keyring.sealed"
ADMIN_USER = "admin"


def write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def init_home(
    root: Path,
    passphrase: str,
    *,
    hostnames: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    scrypt: ScryptParams = DEFAULT_SCRYPT,
) -> NewUser:
    """Create a home folder: config, sealed keyring, CA + server certificate, empty index, and the
    first administrator (a person: one-time password and TOTP enrolment, returned to be shown once).

    The administrator manages users, keys and nodes; seeing images needs a clinical role or an
    API key with one (``medvault apikeys create NAME --role archivist``).
    """
    if (root / CONFIG_FILE).exists() or (root / KEYRING_FILE).exists():
        raise ConfigError(
            f"{root} already holds a medvault home", hint="Choose another --home, or use it as it is."
        )
    if len(passphrase) < 12:
        raise ConfigError("the passphrase must be at least 12 characters")
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    root.chmod(0o700)
    for sub in ("tls", "objects", "logs"):
        (root / sub).mkdir(mode=0o700, exist_ok=True)
    keyring = Keyring.generate()
    save_keyring(root / KEYRING_FILE, keyring, passphrase, params=scrypt)

    default_names, default_ips = default_hostnames()
    names = list(dict.fromkeys([*default_names, *hostnames]))
    ips = list(dict.fromkeys([*default_ips, *ip_addresses]))
    ca_cert, ca_key = create_ca("medvault local CA")
    cert, key = issue_server_certificate(ca_cert, ca_key, hostnames=names, ip_addresses=ips)
    (root / "tls" / "ca.crt").write_bytes(ca_cert)
    write_private(root / "tls" / "ca.key", encrypt_private_key(ca_key, keyring.tls_secret))
    (root / "tls" / "server.crt").write_bytes(cert)
    write_private(root / "tls" / "server.key", encrypt_private_key(key, keyring.tls_secret))
    origin = f"{(names[1] if len(names) > 1 else names[0])}/medvault/ledger"
    (root / CONFIG_FILE).write_text(DEFAULT_CONFIG_TEXT.replace("{origin}", origin), encoding="utf-8")

    opened = open_home(root, passphrase)
    try:
        created = opened.users.add_user(ADMIN_USER, roles=["admin"], now=datetime.now(UTC))
        opened.ledger.append(
            AuditEvent(
                kind=EventKind.USER_CHANGE,
                time=datetime.now(UTC),
                actor=SYSTEM,
                action="user.add",
                outcome=Outcome.SUCCESS,
                object=ObjectRef(type="user", id=ADMIN_USER),
                reason="first administrator, created by init",
            )
        )
        return created
    finally:
        opened.close()


#: ``serve`` warns when the server certificate expires sooner than this.
CERT_WARNING_DAYS = 30


def renew_server_certificate(opened: OpenHome, *, now: datetime | None = None) -> datetime:
    """Issue a new server certificate from the home's own CA for the same names (written
    atomically, the key encrypted as at ``init``); returns its expiry. ``serve`` loads it at its
    next start."""
    tls = opened.settings.tls
    if not tls.own_ca:
        raise ConfigError(
            "the server certificate comes from the site's PKI ([tls] own_ca = false)",
            hint="Renew it there and replace [tls] certificate and private_key.",
        )
    secret = opened.keyring_file.keyring.tls_secret
    cert_path, key_path = opened.path(tls.certificate), opened.path(tls.private_key)
    names, ips = certificate_names(cert_path.read_bytes())
    cert, key = issue_server_certificate(
        opened.path(tls.ca_certificate).read_bytes(),
        (opened.root / "tls" / "ca.key").read_bytes(),
        hostnames=names,
        ip_addresses=ips,
        now=now,
        ca_key_password=secret,
    )
    for path, data in ((key_path, encrypt_private_key(key, secret)), (cert_path, cert)):
        tmp = path.with_name(path.name + ".new")
        write_private(tmp, data)
        os.replace(tmp, path)
    return certificate_expiry(cert)


def server_certificate_expiry(opened: OpenHome) -> datetime:
    return certificate_expiry(opened.path(opened.settings.tls.certificate).read_bytes())


@dataclass
class OpenHome:
    """A home folder opened with its passphrase: the archive and what serves it."""

    root: Path
    settings: Settings
    keyring_file: KeyringFile
    archive: Archive
    api_keys: ApiKeyStore
    users: UserStore
    guard: Guard
    oidc: OidcVerifier | None
    alerts: AlertStore

    def path(self, relative: str) -> Path:
        return self.root / relative

    def ssl_context(self) -> ssl.SSLContext:
        tls = self.settings.tls
        if self.settings.tls.own_ca:
            password: bytes | None = self.keyring_file.keyring.tls_secret
        elif tls.private_key_password_env:
            value = os.environ.get(tls.private_key_password_env)
            if value is None:
                raise ConfigError(f"environment variable {tls.private_key_password_env} is not set")
            password = value.encode()
        else:
            password = None
        return server_ssl_context(
            self.path(tls.certificate), self.path(tls.private_key), key_password=password
        )

    @property
    def ledger(self) -> Ledger:
        assert self.archive.audit is not None
        return self.archive.audit.ledger

    def close(self) -> None:
        self.archive.close()
        self.ledger.close()


class _KeyringWatcher:
    """Reloads the KEK provider when the keyring file changed (one stat() per write batch)."""

    def __init__(self, path: Path, keks: KeyringKekProvider) -> None:
        self._path = path
        self._keks = keks
        self._seen = self._signature()

    def _signature(self) -> tuple[int, int, int]:
        st = self._path.stat()
        return st.st_ino, st.st_mtime_ns, st.st_size

    def __call__(self) -> None:
        current = self._signature()
        if current != self._seen:
            self._keks.refresh()
            self._seen = current


def open_blob_store(root: Path, storage: StorageSettings) -> BlobStore:
    """The object store ``[storage]`` names: the home's folder, or an S3 bucket (checked now)."""
    if storage.backend == "filesystem":
        return FilesystemBlobStore(root / storage.objects, fsync=storage.fsync)
    if storage.backend != "s3":
        raise ConfigError(
            f"[storage] backend {storage.backend!r} is not known", hint='Use "filesystem" (default) or "s3".'
        )
    from medvault.storage.s3 import S3BlobStore, S3Credentials  # boto3: only for homes that use S3

    def in_home(name: str) -> Path | None:
        return (root / name) if name else None

    credentials_file = in_home(storage.credentials_file)
    return S3BlobStore.connect(
        endpoint=storage.endpoint,
        bucket=storage.bucket,
        region=storage.region,
        prefix=storage.prefix,
        path_style=storage.path_style,
        ca_file=in_home(storage.ca_file),
        credentials=S3Credentials.read(credentials_file) if credentials_file else None,
        plain_http=storage.plain_http,
        part_size=storage.part_size_mb << 20,
    )


def open_home(root: Path, passphrase: str | KeyringFile) -> OpenHome:
    """Open a home with its passphrase, or with its keyring already unlocked (``serve`` unlocks it
    once, then its worker processes open the home from it without running scrypt again)."""
    settings = load_settings(root)
    if isinstance(passphrase, KeyringFile):
        keyring_file = passphrase
        keyring_file.reload()  # keys rotated since it was unlocked: start from the file as it is now
    else:
        keyring_file = KeyringFile.open(root / KEYRING_FILE, passphrase)
    keyring = keyring_file.keyring
    cipher = FieldCipher(keyring.index_key)
    index = Index.open_sqlite(
        root / settings.index.database, cipher=cipher, blind=BlindIndex(keyring.blind_index_key)
    )
    blobs = open_blob_store(root, settings.storage)
    ledger = Ledger.open(
        root / settings.ledger.database,
        signer=Signer.from_private_bytes(name=settings.ledger.origin, seed=ledger_signing_seed(keyring)),
        origin=settings.ledger.origin,
    )
    audit = LedgerAudit(ledger)
    keks = KeyringKekProvider(keyring, reload=keyring_file.reload)
    archive = Archive(
        index=index,
        blobs=blobs,
        keks=keks,
        max_instance_bytes=settings.server.max_instance_bytes,
        refresh_keys=_KeyringWatcher(root / KEYRING_FILE, keks),
        audit=audit,
    )
    roles = load_roles(_role_overrides(settings.access.roles)) if settings.access.roles else None
    users = (
        UserStore(index.engine, cipher=cipher, roles=roles)
        if roles
        else UserStore(index.engine, cipher=cipher)
    )
    guard = Guard(pdp=DecisionPoint(sink=audit, roles=roles), index=index)
    return OpenHome(
        root,
        settings,
        keyring_file,
        archive,
        ApiKeyStore(index.engine),
        users,
        guard,
        _oidc(root, settings),
        AlertStore(index.engine, cipher=cipher),
    )


def ledger_signing_seed(keyring: Keyring) -> bytes:
    """The Ed25519 seed that signs ledger checkpoints, derived (HKDF) from the sealed keyring."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"medvault/ledger-signing/v1").derive(
        keyring.tls_secret
    )


def _role_overrides(entries: Sequence[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for entry in entries:
        role, sep, perms = entry.partition("=")
        if not sep or not role.strip():
            raise ConfigError(f"[access] roles entry {entry!r} must look like role=perm1,perm2")
        out[role.strip()] = [p.strip() for p in perms.split(",") if p.strip()]
    return out


def _oidc(root: Path, settings: Settings) -> OidcVerifier | None:
    oidc = settings.oidc
    if not oidc.issuer:
        return None
    role_map = {}
    for entry in oidc.role_map:
        claim, sep, role = entry.partition("=")
        if not sep:
            raise ConfigError(f"[oidc] role_map entry {entry!r} must look like idp-group=role")
        role_map[claim.strip()] = role.strip()
    return OidcVerifier(
        OidcConfig(
            issuer=oidc.issuer,
            audience=oidc.audience,
            jwks_url=oidc.jwks_url or None,
            jwks_file=(root / oidc.jwks_file) if oidc.jwks_file else None,
            roles_claim=oidc.roles_claim,
            role_map=role_map,
            username_claim=oidc.username_claim,
        )
    )
