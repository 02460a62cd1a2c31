"""The signed backup manifest (``manifest.json``): what a backup holds, and who vouches for it.

Pure: no I/O, the time is an argument. The file is one line of RFC 8785 canonical JSON::

    {"created_at": "2026-12-03T12:00:00Z", "files": [{"kind": "object", "path": "objects/ab/ab…",
     "sha256": "<hex>", "size": 1234}, …], "format": "medvault-backup", "index": {"instances": 3,
     "path": "index.db"}, "ledger": {"path": "ledger.db", "root_hash": "<hex>", "tree_size": 42},
     "medvault_version": "0.1.0", "origin": "<ledger origin>", "signature": "<signed note>",
     "signer": "<note verifier key>", "version": 1}

The signature is a C2SP signed note (https://c2sp.org/signed-note, :mod:`medvault.ledger.note`)
by the ledger's own checkpoint key, whose text is::

    medvault-backup-manifest/v1
    <SHA-256 hex of the canonical JSON of every member except "signature">

SPEC: https://c2sp.org/tlog-checkpoint — a checkpoint's second line is a decimal tree size, so
this note text can never be taken for a checkpoint signed by the same key (domain separation),
and a checkpoint can never be taken for a manifest. A file that is not exactly its canonical
form is refused, so every byte of ``manifest.json`` is covered: change one and it fails.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from medvault.errors import InvalidInput, MedvaultError, NoteInvalid
from medvault.ledger.events import canonicalize
from medvault.ledger.note import Signer, Verifier, open_note

__all__ = [
    "FILE_KINDS",
    "MANIFEST_FILE",
    "BackupError",
    "FileEntry",
    "Manifest",
    "parse_manifest",
]

MANIFEST_FILE = "manifest.json"
FORMAT = "medvault-backup"
VERSION = 1
NOTE_HEADER = "medvault-backup-manifest/v1"
FileKind = Literal["config", "keyring", "tls", "file", "index", "ledger", "object"]
FILE_KINDS: tuple[FileKind, ...] = ("config", "keyring", "tls", "file", "index", "ledger", "object")
MAX_MANIFEST_BYTES = 1 << 30  # ~5 million objects; a planted file must not exhaust memory
# Relative POSIX paths whose components start with a letter, digit or "_" (so no "." or ".."),
# and hold nothing a shell or another system could misread.
_PATH_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254}(/[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254}){0,15}\Z")
_HEX64_RE = re.compile(r"[0-9a-f]{64}\Z")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class BackupError(MedvaultError):
    """A backup cannot be made, read, verified or restored (the message says which file, why)."""


def check_path(path: str) -> str:
    """A path a manifest may name: relative, no ``..``, a conservative character set."""
    if not isinstance(path, str) or not _PATH_RE.match(path):
        raise BackupError(
            f"cannot back up a file named {path!r}",
            hint="Backups hold paths of letters, digits and _ . + - only (no spaces, no '..').",
        )
    return path


@dataclass(frozen=True, kw_only=True)
class FileEntry:
    """One file of the backup: its path inside the backup (= inside the home), size and SHA-256."""

    path: str
    kind: FileKind
    size: int
    sha256: str

    def __post_init__(self) -> None:
        check_path(self.path)
        if self.kind not in FILE_KINDS:
            raise BackupError(f"manifest: unknown file kind {self.kind!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 0 <= self.size < 2**53:
            raise BackupError(f"manifest: size of {self.path} is not a non-negative integer")
        if not isinstance(self.sha256, str) or not _HEX64_RE.match(self.sha256):
            raise BackupError(f"manifest: sha256 of {self.path} is not 64 lowercase hex digits")

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """What a backup holds at its snapshot: every file, the ledger's size and root, the index's
    instance count, when, by which medvault, for which log (``origin``) and signed by whom."""

    created_at: datetime
    medvault_version: str
    origin: str
    signer: str  # the note verifier key text of the ledger's checkpoint key
    ledger_path: str
    tree_size: int
    root_hash: bytes
    index_path: str
    instances: int
    files: tuple[FileEntry, ...]

    def __post_init__(self) -> None:
        if self.created_at.tzinfo is None:
            raise BackupError("manifest: created_at must be timezone-aware")
        object.__setattr__(self, "created_at", self.created_at.astimezone(UTC).replace(microsecond=0))
        for what, value in (("medvault_version", self.medvault_version), ("origin", self.origin)):
            if not isinstance(value, str) or not value or len(value) > 256:
                raise BackupError(f"manifest: {what} must be a non-empty string")
        try:
            verifier = Verifier.from_key_text(self.signer)
        except (NoteInvalid, AttributeError):
            raise BackupError("manifest: signer is not a note verifier key") from None
        if verifier.name != self.origin:
            raise BackupError("manifest: the signer's key name is not the ledger origin")
        for what, count in (("tree_size", self.tree_size), ("instances", self.instances)):
            if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count < 2**53:
                raise BackupError(f"manifest: {what} must be a non-negative integer")
        if not isinstance(self.root_hash, bytes) or len(self.root_hash) != 32:
            raise BackupError("manifest: root_hash must be 32 bytes")
        files = tuple(sorted(self.files, key=lambda f: f.path))
        object.__setattr__(self, "files", files)
        if len({f.path for f in files}) != len(files):
            raise BackupError("manifest: a file is listed twice")
        by_path = {f.path: f for f in files}
        for what, path, kind in (("ledger", self.ledger_path, "ledger"), ("index", self.index_path, "index")):
            entry = by_path.get(path)
            if entry is None or entry.kind != kind:
                raise BackupError(f"manifest: the {what} file {path!r} is not listed as {kind}")

    @property
    def verifier(self) -> Verifier:
        return Verifier.from_key_text(self.signer)

    @property
    def objects(self) -> tuple[FileEntry, ...]:
        return tuple(f for f in self.files if f.kind == "object")

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def body(self) -> dict[str, Any]:
        """Every member but the signature."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "created_at": self.created_at.strftime(_TIME_FORMAT),
            "medvault_version": self.medvault_version,
            "origin": self.origin,
            "signer": self.signer,
            "ledger": {
                "path": self.ledger_path,
                "tree_size": self.tree_size,
                "root_hash": self.root_hash.hex(),
            },
            "index": {"path": self.index_path, "instances": self.instances},
            "files": [f.to_json() for f in self.files],
        }

    def note_text(self) -> str:
        return f"{NOTE_HEADER}\n{hashlib.sha256(canonicalize(self.body())).hexdigest()}\n"

    def signed_bytes(self, signer: Signer) -> bytes:
        """The whole ``manifest.json``: canonical JSON with the signature, and a newline."""
        if signer.verifier_key_text() != self.signer:
            raise BackupError("the signing key is not the manifest's signer")
        note = signer.sign_note(self.note_text()).decode("utf-8")
        return canonicalize({**self.body(), "signature": note}) + b"\n"


def _member(raw: dict[str, Any], key: str, kind: type) -> Any:
    value = raw.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) is not (kind is bool):
        raise BackupError(f"manifest: {key!r} is missing or not a {kind.__name__}")
    return value


def parse_manifest(data: bytes, *, expected_signer: str | None = None) -> Manifest:
    """Read ``manifest.json`` and check its signature by the key it names (and, when given, that
    this key is ``expected_signer``). Raises :class:`BackupError` naming the first problem."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise BackupError("manifest.json is larger than any manifest medvault writes")
    try:
        raw = json.loads(data)
    except ValueError:
        raise BackupError("manifest.json is not valid JSON (damaged or edited)") from None
    if not isinstance(raw, dict):
        raise BackupError("manifest.json is not a JSON object")
    try:
        canonical = canonicalize(raw) + b"\n"
    except InvalidInput:
        canonical = b""
    if canonical != data:
        raise BackupError("manifest.json is not in the canonical form medvault writes (edited?)")
    if raw.get("format") != FORMAT or raw.get("version") != VERSION:
        raise BackupError("manifest.json is not a medvault backup manifest of format version 1")
    try:
        ledger = _member(raw, "ledger", dict)
        index = _member(raw, "index", dict)
        created = datetime.strptime(_member(raw, "created_at", str), _TIME_FORMAT).replace(tzinfo=UTC)
        root_hex = _member(ledger, "root_hash", str)
        if not _HEX64_RE.match(root_hex):
            raise BackupError("manifest: ledger root_hash is not 64 lowercase hex digits")
        entries: Sequence[Any] = _member(raw, "files", list)
        files = []
        for item in entries:
            if not isinstance(item, dict) or set(item) != {"path", "kind", "size", "sha256"}:
                raise BackupError("manifest: a file entry is not {path, kind, size, sha256}")
            files.append(
                FileEntry(path=item["path"], kind=item["kind"], size=item["size"], sha256=item["sha256"])
            )
        manifest = Manifest(
            created_at=created,
            medvault_version=_member(raw, "medvault_version", str),
            origin=_member(raw, "origin", str),
            signer=_member(raw, "signer", str),
            ledger_path=_member(ledger, "path", str),
            tree_size=_member(ledger, "tree_size", int),
            root_hash=bytes.fromhex(root_hex),
            index_path=_member(index, "path", str),
            instances=_member(index, "instances", int),
            files=tuple(files),
        )
    except ValueError:
        raise BackupError("manifest: created_at is not a UTC time like 2026-01-31T12:00:00Z") from None
    if canonicalize(manifest.body()) != canonicalize({k: v for k, v in raw.items() if k != "signature"}):
        raise BackupError("manifest.json has members medvault does not write, or files out of order")
    if expected_signer is not None and manifest.signer != expected_signer.strip():
        raise BackupError(
            "the manifest is signed by another key than the one given",
            hint="Compare `medvault ledger key` of the archive with the manifest's signer.",
        )
    note = raw.get("signature")
    if not isinstance(note, str):
        raise BackupError("manifest.json has no signature")
    try:
        text = open_note(note.encode("utf-8"), manifest.verifier)
    except NoteInvalid as exc:
        raise BackupError(f"bad signature on manifest.json: {exc.message}") from None
    if text != manifest.note_text():
        raise BackupError("bad signature on manifest.json: it signs other contents")
    return manifest
