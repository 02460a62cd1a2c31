"""Typed settings read from ``medvault.toml`` in the home folder.

Defaults are the safe ones: HTTPS on loopback, TLS 1.2+ with the archive's own certificate,
fsync on every object write. Unknown keys are an error (a typo must not silently fall back to a
default), and plain HTTP needs an explicit ``plain_http = true`` for a TLS-terminating proxy.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from medvault.errors import ConfigError

CONFIG_FILE = "medvault.toml"
DEFAULT_PORT = 8443


@dataclass(frozen=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    plain_http: bool = False
    max_instance_bytes: int = 1024**3  # a request holds about one instance (issue #12)
    max_request_bytes: int = 8 * 1024**3  # streamed: bounds disk per request, not memory
    cors_origins: tuple[str, ...] = ()
    public_url: str = ""
    workers: int = 0  # 0: one per CPU core (at most 8)


@dataclass(frozen=True)
class TlsSettings:
    certificate: str = "tls/server.crt"
    private_key: str = "tls/server.key"
    ca_certificate: str = "tls/ca.crt"
    # A site-supplied key may be unencrypted or protected by a password in this environment variable.
    # The key written by ``medvault init`` is encrypted with a secret held in the sealed keyring.
    private_key_password_env: str = ""
    own_ca: bool = True


@dataclass(frozen=True)
class StorageSettings:
    objects: str = "objects"
    fsync: bool = True


@dataclass(frozen=True)
class IndexSettings:
    database: str = "index.db"


@dataclass(frozen=True)
class DimseSettings:
    """The DICOM TLS listener (PS3.15 Annex B) for modalities and PACS peers."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 2762
    ae_title: str = "MEDVAULT"
    allow_plain: bool = False  # plain DIMSE: only for a legacy modality on an isolated network


@dataclass(frozen=True)
class LedgerSettings:
    """The tamper-evident audit log. ``origin`` names the log in its signed checkpoints; it is set
    at ``init`` and must never change for an existing ledger."""

    database: str = "ledger.db"
    origin: str = "medvault.local/ledger"
    checkpoint_seconds: int = 10


@dataclass(frozen=True)
class OidcSettings:
    """Bearer JWTs from the site's identity provider (Keycloak, Entra ID…); off when issuer is empty."""

    issuer: str = ""
    audience: str = ""
    jwks_url: str = ""
    jwks_file: str = ""
    roles_claim: str = "roles"
    username_claim: str = "preferred_username"
    role_map: tuple[str, ...] = ()  # "idp-group=medvault-role" pairs


@dataclass(frozen=True)
class AccessSettings:
    """Role overrides: "role=perm1,perm2" entries replace a built-in role's permissions."""

    roles: tuple[str, ...] = ()


@dataclass(frozen=True)
class MonitorSettings:
    """The continuous monitor (docs/monitoring.md): a worker of ``serve`` that scores every ledger
    event, raises alerts, responds and notifies. ``rules`` are "name=value" overrides of the
    detection settings; ``responses`` map a severity to automatic responses."""

    enabled: bool = True
    poll_ms: int = 200
    snapshot_seconds: int = 30
    rules: tuple[str, ...] = ()
    responses: tuple[str, ...] = (
        "medium=",
        "high=end_sessions,step_up",
        "critical=end_sessions,step_up,hold_exports,suspend_key,suspend_node",
    )
    syslog: str = ""  # syslog+tls://HOST[:PORT] or syslog+tcp://HOST:PORT (RFC 5424)
    syslog_ca: str = ""  # CA of the collector (TLS)
    webhook_url: str = ""  # https://… receives each alert as JSON, signed (X-Medvault-Signature)
    webhook_secret_env: str = ""  # environment variable holding the webhook's HMAC secret
    webhook_ca: str = ""  # CA of the webhook's server, if not a public one


@dataclass(frozen=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    index: IndexSettings = field(default_factory=IndexSettings)
    dimse: DimseSettings = field(default_factory=DimseSettings)
    ledger: LedgerSettings = field(default_factory=LedgerSettings)
    oidc: OidcSettings = field(default_factory=OidcSettings)
    access: AccessSettings = field(default_factory=AccessSettings)
    monitor: MonitorSettings = field(default_factory=MonitorSettings)


_SECTIONS: dict[str, type[Any]] = {
    "server": ServerSettings,
    "tls": TlsSettings,
    "storage": StorageSettings,
    "index": IndexSettings,
    "dimse": DimseSettings,
    "ledger": LedgerSettings,
    "oidc": OidcSettings,
    "access": AccessSettings,
    "monitor": MonitorSettings,
}


def _build(section: str, cls: type[Any], raw: dict[str, Any]) -> Any:
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(
                f"unknown setting [{section}] {key}", hint=f"Known settings: {', '.join(sorted(known))}."
            )
        default = getattr(cls(), key)
        if isinstance(default, tuple):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"[{section}] {key} must be a list of strings")
            value = tuple(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"[{section}] {key} must be true or false")
        elif isinstance(default, int):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"[{section}] {key} must be a non-negative integer")
        elif not isinstance(value, str):
            raise ConfigError(f"[{section}] {key} must be a string")
        values[key] = value
    return cls(**values)


def load_settings(home: Path) -> Settings:
    path = home / CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path} does not exist",
            hint="Run `medvault init --home HOME` first, or check --home / MEDVAULT_HOME.",
        ) from None
    return _settings_from(text, path)


def _settings_from(text: str, path: Path) -> Settings:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    parts: dict[str, Any] = {}
    for section, value in raw.items():
        cls = _SECTIONS.get(section)
        if cls is None:
            raise ConfigError(
                f"unknown section [{section}] in {path}", hint=f"Known: {', '.join(_SECTIONS)}."
            )
        if not isinstance(value, dict):
            raise ConfigError(f"[{section}] in {path} must be a table")
        parts[section] = _build(section, cls, value)
    settings = Settings(**parts)
    if settings.server.port == 0 or settings.server.port > 65535:
        raise ConfigError("[server] port must be between 1 and 65535")
    return settings


DEFAULT_CONFIG_TEXT = """\
# medvault configuration. Paths are relative to this home folder.

[server]
host = "127.0.0.1"          # loopback only; set "0.0.0.0" to serve the network
port = 8443
plain_http = false          # true ONLY behind a TLS-terminating proxy on the same host
max_instance_bytes = 1073741824   # 1 GiB; a request holds about one instance in memory
max_request_bytes = 8589934592    # 8 GiB per STOW request (streamed: disk, not memory)
cors_origins = []           # e.g. ["https://viewer.example.org"] for an OHIF viewer
public_url = ""             # base URL clients use, if not https://host:port
workers = 0                 # server processes; 0 = one per CPU core (at most 8)

[tls]
certificate = "tls/server.crt"
private_key = "tls/server.key"
ca_certificate = "tls/ca.crt"
own_ca = true               # false when certificate/private_key come from the site's PKI
private_key_password_env = ""

[storage]
objects = "objects"
fsync = true

[index]
database = "index.db"

[dimse]                     # DICOM over mutual TLS for modalities and PACS peers (`medvault nodes add`)
enabled = true
host = "127.0.0.1"          # "0.0.0.0" to accept modalities on the network
port = 2762                 # the registered DICOM-TLS port
ae_title = "MEDVAULT"
allow_plain = false         # true ONLY for a legacy modality on an isolated network (warns, audited)

[ledger]                    # tamper-evident audit log (RFC 9162 Merkle tree, signed checkpoints)
database = "ledger.db"
origin = "{origin}"         # names this log in its checkpoints; never change it afterwards
checkpoint_seconds = 10     # how often a new signed checkpoint is published (when the log grew)

[oidc]                      # accept bearer JWTs from the site's identity provider (off while issuer = "")
issuer = ""
audience = ""
jwks_url = ""               # the provider's signing keys (HTTPS) ...
jwks_file = ""              # ... or a JWKS file in this folder, for an air-gapped site
roles_claim = "roles"
username_claim = "preferred_username"
role_map = []               # e.g. ["pacs-radiologists=radiologist", "pacs-audit=auditor"]

[access]
roles = []                  # overrides, e.g. ["admin=users.manage,keys.manage,study.read"]

[monitor]                   # continuous monitoring: every ledger event scored, alerts (docs/monitoring.md)
enabled = true
poll_ms = 200               # how often the worker looks for new ledger entries
snapshot_seconds = 30       # how often it saves its state (a restart resumes from there)
rules = []                  # detection settings, e.g. ["alert_score=7", "failed_login_user_burst=5"]
responses = [               # automatic responses per severity (each ledgered, lifted by an officer)
  "medium=",
  "high=end_sessions,step_up",
  "critical=end_sessions,step_up,hold_exports,suspend_key,suspend_node",
]
syslog = ""                 # alerts to a SIEM: syslog+tls://HOST[:PORT] (RFC 5424/5425)
syslog_ca = ""
webhook_url = ""            # alerts as signed JSON POSTs (HMAC-SHA256 in X-Medvault-Signature)
webhook_secret_env = ""     # the environment variable holding the webhook secret
webhook_ca = ""
"""


def write_setting(home: Path, section: str, key: str, value: int | str) -> None:
    """Set one key of ``medvault.toml`` in place, keeping every comment and other line (quickstart
    remembers a port given with --dimse-port this way). Nothing is written that the loader refuses."""
    literal = str(value) if isinstance(value, int) else json.dumps(value)  # a valid TOML basic string
    path = home / CONFIG_FILE
    lines = path.read_text(encoding="utf-8").splitlines()
    assignment = re.compile(rf'^\s*{re.escape(key)}\s*=\s*(?:"(?:[^"\\]|\\.)*"|[^#]*?)(\s*#.*)?$')
    current, header = None, None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("["):
            current = stripped[1:].split("]")[0].strip()
            header = i if current == section else header
        elif current == section and (match := assignment.match(line)):
            lines[i] = f"{key} = {literal}{match.group(1) or ''}"
            break
    else:
        if header is None:
            lines += ["", f"[{section}]", f"{key} = {literal}"]
        else:
            lines.insert(header + 1, f"{key} = {literal}")
    text = "\n".join(lines) + "\n"
    _settings_from(text, path)  # an unknown key or a wrong type: refused before anything is written
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, path.stat().st_mode & 0o777)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    tmp.replace(path)
