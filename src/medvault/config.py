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
    """Where encrypted objects go: a folder in the home (``objects``), or an S3 bucket
    (docs/storage.md). Secrets never live here: S3 credentials come from ``credentials_file`` or
    the environment."""

    backend: str = "filesystem"  # or "s3"
    objects: str = "objects"
    fsync: bool = True
    endpoint: str = ""  # https://s3.example.org (s3)
    bucket: str = ""
    region: str = "us-east-1"
    prefix: str = ""  # every key under this prefix, e.g. "medvault/"
    path_style: bool = False  # https://host/bucket/key rather than https://bucket.host/key
    ca_file: str = ""  # PEM bundle that signs the endpoint's certificate (default: the system's)
    credentials_file: str = ""  # TOML: access_key_id, secret_access_key (else AWS_* variables)
    plain_http: bool = False  # allow an http:// endpoint: an isolated test network only
    part_size_mb: int = 16  # objects larger than this go up as multipart uploads


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
    # Independent witnesses (docs/witness.md): "<cosignature verifier key> <https URL>" each. Every
    # new checkpoint is submitted to them; /ledger/checkpoint serves the newest one cosigned by
    # witness_quorum of them (0: a majority). witness_ca: their CA certificates (a PEM file, relative
    # to the home); empty trusts the system's CAs.
    witnesses: tuple[str, ...] = ()
    witness_quorum: int = 0
    witness_ca: str = ""


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


#: The keys of one ``[[retention.rules]]`` entry (docs/compliance.md).
RULE_KEYS = (
    "name",
    "modality",
    "department",
    "min_age_years",
    "max_age_years",
    "keep_years",
    "keep_until_patient_age",
)
_RULE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


@dataclass(frozen=True, kw_only=True)
class RetentionRule:
    """How long studies must be kept: those matching every criterion given (modality in the study,
    department, the patient's age in whole years at the study, ``min``/``max`` inclusive) are kept
    ``keep_years`` after the study date and/or until the patient is ``keep_until_patient_age``
    (the later of the two). Matching is done by medvault.compliance.retention."""

    name: str
    modality: str = ""  # "" matches any
    department: str = ""  # InstitutionalDepartmentName; "" matches any
    min_age_years: int | None = None
    max_age_years: int | None = None
    keep_years: int | None = None
    keep_until_patient_age: int | None = None

    def to_toml(self) -> dict[str, str | int]:
        return {k: v for k in RULE_KEYS if (v := getattr(self, k)) not in (None, "")}


def parse_rules(raw: object, where: str = "[retention] rules") -> tuple[RetentionRule, ...]:
    """Retention rules from TOML (or JSON) data; a :class:`ConfigError` naming the rule and key."""
    if not isinstance(raw, list):
        raise ConfigError(f"{where} must be a list of tables (use [[retention.rules]])")
    rules: list[RetentionRule] = []
    for n, entry in enumerate(raw):
        at = f"{where}[{n}]"
        if not isinstance(entry, dict):
            raise ConfigError(
                f"{at} must be a table with name, criteria and keep_years / keep_until_patient_age"
            )
        name = entry.get("name")
        if not isinstance(name, str) or not _RULE_NAME.match(name):
            raise ConfigError(
                f"{at} name must be 1-64 letters, digits, '.', '_' or '-' (starting with a letter or digit)"
            )
        at = f'{at} ("{name}")'
        values: dict[str, Any] = {}
        for key, value in entry.items():
            if key not in RULE_KEYS:
                raise ConfigError(f"{at}: unknown key {key}", hint=f"Known keys: {', '.join(RULE_KEYS)}.")
            if key in ("modality", "department"):
                if not isinstance(value, str) or len(value) > 64 or not value.isprintable():
                    raise ConfigError(f"{at}: {key} must be a string of at most 64 characters")
                value = value.strip().upper() if key == "modality" else value.strip()
            elif key != "name":
                low = 1 if key.startswith("keep") else 0
                if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= 200:
                    raise ConfigError(f"{at}: {key} must be a whole number of years from {low} to 200")
            values[key] = value
        rule = RetentionRule(**values)
        if rule.keep_years is None and rule.keep_until_patient_age is None:
            raise ConfigError(f"{at}: give keep_years or keep_until_patient_age (how long to keep)")
        if (
            rule.min_age_years is not None
            and rule.max_age_years is not None
            and rule.min_age_years > rule.max_age_years
        ):
            raise ConfigError(f"{at}: min_age_years is greater than max_age_years")
        if any(r.name == rule.name for r in rules):
            raise ConfigError(f"{at}: another rule has the same name")
        rules.append(rule)
    return tuple(rules)


@dataclass(frozen=True)
class RetentionSettings:
    """Retention (docs/compliance.md): ``serve`` applies the rules every ``schedule_seconds``
    while ``enabled``. Without rules nothing is ever deleted: a study no rule matches is kept."""

    enabled: bool = True
    schedule_seconds: int = 86400
    rules: tuple[RetentionRule, ...] = ()


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
    retention: RetentionSettings = field(default_factory=RetentionSettings)


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
    "retention": RetentionSettings,
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
        if cls is RetentionSettings and key == "rules":
            value = parse_rules(value)
        elif isinstance(default, tuple):
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
    if settings.retention.schedule_seconds < 60:
        raise ConfigError("[retention] schedule_seconds must be at least 60")
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

[storage]                   # where encrypted objects go: "filesystem" or "s3" (docs/storage.md)
backend = "filesystem"
objects = "objects"
fsync = true
endpoint = ""               # s3 only, from here on: "https://…" of the object store
bucket = ""
region = "us-east-1"
prefix = ""
path_style = false
ca_file = ""
credentials_file = ""       # secrets never go in this file: a 0600 TOML file, or AWS_* variables
plain_http = false
part_size_mb = 16

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
witnesses = []              # "<witness key> https://host:port" each: independent cosigners (docs/witness.md)
witness_quorum = 0          # cosignatures a checkpoint needs to count (0: a majority of the witnesses)
witness_ca = ""             # PEM file of the witnesses' CAs (relative to this folder); "" = system CAs

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

[retention]                 # how long studies must be kept (docs/compliance.md); no rule: kept forever
enabled = true              # serve applies the rules on a schedule (with no rules it deletes nothing)
schedule_seconds = 86400    # how often
rules = []                  # e.g. [{ name = "ct-10y", modality = "CT", keep_years = 10 },
                            #       { name = "paediatric", max_age_years = 17, keep_until_patient_age = 25 }]
"""


def write_setting(home: Path, section: str, key: str, value: bool | int | str) -> None:
    """Set one key of ``medvault.toml`` in place (see :func:`write_settings`); quickstart
    remembers a port given with --dimse-port this way."""
    write_settings(home, section, {key: value})


def write_settings(home: Path, section: str, values: dict[str, bool | int | str]) -> None:
    """Set keys of one section of ``medvault.toml`` in place, keeping every comment and other
    line, in one atomic rewrite (all of them or none). Nothing is written that the loader refuses."""
    path = home / CONFIG_FILE
    lines = path.read_text(encoding="utf-8").splitlines()
    for key, value in values.items():
        lines = _with_setting(lines, section, key, value)
    text = "\n".join(lines) + "\n"
    _settings_from(text, path)  # an unknown key or a wrong type: refused before anything is written
    replace_config_text(path, text)


def replace_config_text(path: Path, text: str) -> None:
    """Replace ``medvault.toml`` with ``text`` atomically (temp file, fsync, rename), keeping its
    mode; the caller has checked that the loader accepts ``text``."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, path.stat().st_mode & 0o777)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def _with_setting(lines: list[str], section: str, key: str, value: bool | int | str) -> list[str]:
    if isinstance(value, bool):
        literal = "true" if value else "false"
    else:
        literal = str(value) if isinstance(value, int) else json.dumps(value)  # a valid TOML basic string
    lines = list(lines)
    assignment = re.compile(rf'^\s*{re.escape(key)}\s*=\s*(?:"(?:[^"\\]|\\.)*"|[^#]*?)(\s*#.*)?$')
    current, header = None, None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("["):
            current = stripped[1:].split("]")[0].strip()
            header = i if current == section else header
        elif current == section and (match := assignment.match(line)):
            lines[i] = f"{key} = {literal}{match.group(1) or ''}"
            return lines
    if header is None:
        lines += ["", f"[{section}]", f"{key} = {literal}"]
    else:
        lines.insert(header + 1, f"{key} = {literal}")
    return lines
