"""A witness's home folder: the independent party that cosigns an archive's checkpoints.

A witness is run by someone other than the archive's operator (another hospital, a regulator, a
patient-advocacy body), on its own machine, with its own key. Its home holds::

    witness.toml        name, listen address, the logs it witnesses (their note verifier keys)
    keyring.json        sealed by the witness's own passphrase (MEDVAULT_PASSPHRASE); the
                        cosigning key is derived from it and never written anywhere in clear
    witness.db          the latest checkpoint cosigned per log (medvault.ledger.witness_store)
    tls/ca.pem          the witness's own CA: archives that submit to it trust this file
    tls/server.pem, tls/server-key.pem (encrypted)

Everything is 0600 in a 0700 folder. The HTTP side is :mod:`medvault.api.witness`.
"""

from __future__ import annotations

import json
import os
import ssl
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from medvault.crypto.keyring import DEFAULT_SCRYPT, Keyring, ScryptParams, load_keyring, save_keyring
from medvault.crypto.tls import (
    create_ca,
    encrypt_private_key,
    issue_server_certificate,
    server_ssl_context,
)
from medvault.errors import ConfigError, InvalidInput, NoteInvalid
from medvault.home import write_private
from medvault.ledger.cosignature import Cosigner
from medvault.ledger.note import Verifier
from medvault.ledger.witness_store import WitnessStore

__all__ = ["WITNESS_CONFIG", "OpenWitness", "WitnessConfig", "init_witness", "open_witness"]

WITNESS_CONFIG = "witness.toml"
KEYRING_FILE = "keyring.json"
STATE_FILE = "witness.db"
CA_FILE = "tls/ca.pem"
CERT_FILE = "tls/server.pem"
KEY_FILE = "tls/server-key.pem"
DEFAULT_PORT = 8444


@dataclass(frozen=True)
class WitnessConfig:
    """``witness.toml``: who this witness is, where it listens, whom it witnesses."""

    name: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    logs: tuple[str, ...] = field(default=())  # note verifier keys; a key's name is the log's origin

    def verifiers(self) -> dict[str, list[Verifier]]:
        """Origin -> the keys trusted to sign its checkpoints."""
        out: dict[str, list[Verifier]] = {}
        for text in self.logs:
            verifier = Verifier.from_key_text(text)
            out.setdefault(verifier.name, []).append(verifier)
        return out

    def to_toml(self) -> str:
        logs = "".join(f"    {json.dumps(k)},\n" for k in self.logs)
        return (
            "# A medvault witness (docs/witness.md). Logs are note verifier keys; a key's name is the\n"
            "# origin line of the checkpoints it signs. Add one with `medvault witness add-log`.\n"
            f"name = {json.dumps(self.name)}\n"
            f"host = {json.dumps(self.host)}\n"
            f"port = {self.port}\n"
            f"logs = [\n{logs}]\n"
        )


def _load_config(root: Path) -> WitnessConfig:
    path = root / WITNESS_CONFIG
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{path} does not exist", hint="Run `medvault witness init --home DIR --name NAME` first."
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    unknown = set(raw) - {"name", "host", "port", "logs"}
    if unknown:
        raise ConfigError(
            f"unknown setting {sorted(unknown)[0]!r} in {path}", hint="Known: name, host, port, logs."
        )
    name, host, port, logs = (
        raw.get("name"),
        raw.get("host", "127.0.0.1"),
        raw.get("port", DEFAULT_PORT),
        raw.get("logs", []),
    )
    if not isinstance(name, str) or not isinstance(host, str):
        raise ConfigError(f"{path}: name and host must be strings")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ConfigError(f"{path}: port must be between 1 and 65535")
    if not isinstance(logs, list) or not all(isinstance(k, str) for k in logs):
        raise ConfigError(f"{path}: logs must be a list of verifier keys (strings)")
    config = WitnessConfig(name=name, host=host, port=port, logs=tuple(logs))
    try:
        config.verifiers()
        _check_name(name)
    except (NoteInvalid, InvalidInput) as exc:
        raise ConfigError(f"{path}: {exc.message}") from None
    return config


def _check_name(name: str) -> None:
    """A witness name is a note key name (SPEC: a schema-less URL such as ``example.org/w1``)."""
    Cosigner.from_private_bytes(name=name, seed=bytes(32))


def _write_config(root: Path, config: WitnessConfig) -> None:
    write_private(root / WITNESS_CONFIG, config.to_toml().encode("utf-8"))


def cosigning_seed(keyring: Keyring) -> bytes:
    """The witness's Ed25519 seed, derived (HKDF) from its sealed keyring."""
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=b"medvault/witness-cosigning/v1"
    ).derive(keyring.tls_secret)


def init_witness(
    root: Path,
    *,
    name: str,
    passphrase: str,
    port: int = DEFAULT_PORT,
    hostnames: tuple[str, ...] = ("localhost",),
    ip_addresses: tuple[str, ...] = ("127.0.0.1", "::1"),
    scrypt: ScryptParams = DEFAULT_SCRYPT,
) -> Cosigner:
    """Create a witness home (refuses an existing one); returns its cosigner."""
    if (root / WITNESS_CONFIG).exists():
        raise ConfigError(f"{root} is already a witness home", hint="Use another folder, or serve this one.")
    _check_name(name)
    config = WitnessConfig(name=name, port=port)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    (root / "tls").mkdir(mode=0o700, exist_ok=True)
    keyring = Keyring.generate()
    save_keyring(root / KEYRING_FILE, keyring, passphrase, params=scrypt)
    ca_pem, ca_key = create_ca(f"medvault witness {name}")
    cert_pem, key_pem = issue_server_certificate(
        ca_pem, ca_key, hostnames=list(hostnames), ip_addresses=list(ip_addresses)
    )
    write_private(root / CA_FILE, ca_pem)
    write_private(root / CERT_FILE, cert_pem)
    write_private(root / KEY_FILE, encrypt_private_key(key_pem, keyring.tls_secret))
    del ca_key  # the CA signs this one certificate; a new one comes with a new home
    WitnessStore(root / STATE_FILE).close()
    _write_config(root, config)
    return Cosigner.from_private_bytes(name=name, seed=cosigning_seed(keyring))


@dataclass
class OpenWitness:
    """An opened witness home: its configuration, cosigner and state."""

    root: Path
    config: WitnessConfig
    cosigner: Cosigner
    store: WitnessStore
    _tls_secret: bytes

    def ssl_context(self) -> ssl.SSLContext:
        return server_ssl_context(self.root / CERT_FILE, self.root / KEY_FILE, key_password=self._tls_secret)

    def add_log(self, key_text: str) -> Verifier:
        """Trust a log's note verifier key (its name is the log's origin). Idempotent."""
        try:
            verifier = Verifier.from_key_text(key_text)
        except NoteInvalid as exc:
            raise InvalidInput(f"not a log verifier key: {exc.message}") from None
        text = verifier.key_text()
        if text not in self.config.logs:
            self.config = WitnessConfig(
                name=self.config.name,
                host=self.config.host,
                port=self.config.port,
                logs=(*self.config.logs, text),
            )
            _write_config(self.root, self.config)
        return verifier

    def close(self) -> None:
        self.store.close()


def open_witness(root: Path, passphrase: str) -> OpenWitness:
    config = _load_config(root)
    keyring = load_keyring(root / KEYRING_FILE, passphrase)
    cosigner = Cosigner.from_private_bytes(name=config.name, seed=cosigning_seed(keyring))
    return OpenWitness(root, config, cosigner, WitnessStore(root / STATE_FILE), keyring.tls_secret)
