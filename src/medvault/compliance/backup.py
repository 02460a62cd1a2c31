"""Backups that are evidence too: a consistent snapshot of a home while it serves, a signed
manifest, verification without the passphrase, and a restore that is checked end to end.

A backup folder mirrors the home's layout (so a restore is a copy)::

    manifest.json       the signed manifest (medvault.compliance.manifest), written LAST, atomically
    medvault.toml       settings (the ledger origin, ports, paths)
    keyring.sealed      the keyring exactly as sealed on disk (never unwrapped)
    tls/…               CA and server certificates; their keys as on disk (encrypted by the keyring)
    index.db            the index, from SQLite's online backup API (PHI fields encrypted as live)
    ledger.db           the ledger, from SQLite's online backup API
    objects/xx/…        every object the index snapshot names, ciphertext copied as is

Consistency while serving (the order is what makes it consistent):

1. the index is copied in one step of the online backup API: one read transaction, so one
   committed state, whatever the WAL holds;
2. then the ledger: it holds every event of that index state (a change's event is appended after
   its index commit; one still in flight is in the copied index's outbox, and a restore publishes
   it);
3. then the objects that index copy names. Objects are immutable (random key, written once before
   the row that names them commits), so a copy is the object. One deleted since step 1 makes the
   snapshot start over (objects already copied are kept); objects written later are simply not
   in this backup;
4. then the keyring: key-encryption keys are only ever added, so the keyring read after the index
   unwraps every data key the index copy holds.

Nothing here writes plaintext: the files are the home's own at-rest bytes. ``logs/`` (the access
log, one-time TOTP QR images) and lock and temporary files are not backed up.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from medvault import __version__
from medvault.compliance.manifest import MANIFEST_FILE, BackupError, FileEntry, FileKind, Manifest, check_path
from medvault.compliance.manifest import parse_manifest as _parse_manifest
from medvault.config import CONFIG_FILE, Settings, load_settings
from medvault.errors import MedvaultError, NoteInvalid
from medvault.home import KEYRING_FILE, OpenHome, ledger_signing_seed, open_home
from medvault.index.store import InstanceRecord
from medvault.ledger.events import Actor, AuditEvent, EventKind, ObjectRef, Outcome, parse_event
from medvault.ledger.note import Signer, parse_and_verify
from medvault.ledger.store import Ledger
from medvault.ledger.verify import verify_ledger

__all__ = [
    "BackupEvent",
    "BackupResult",
    "BackupStatus",
    "RestoreResult",
    "VerifyResult",
    "backup_status",
    "create_backup",
    "record_verification",
    "require_empty_folder",
    "restore_backup",
    "verify_backup",
]

#: How often a snapshot starts over because an object it names was deleted meanwhile.
SNAPSHOT_ATTEMPTS = 5
_CHUNK = 1 << 20
_BUSY_MS = 30_000

Progress = Callable[[int], None]  # bytes done since the last call


def _no_progress(_: int) -> None:
    pass


# -- files -------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkdirs(root: Path, relative: str) -> Path:
    """``root/relative``'s parent folders, created 0700."""
    target = root / relative
    current = root
    for part in Path(relative).parts[:-1]:
        current = current / part
        if not current.is_dir():
            current.mkdir(mode=0o700)
    return target


def _plain(folder: Path, relative: str) -> Path | None:
    """``folder/relative`` if it is a regular file reached without a symbolic link (a backup
    from elsewhere must not make verify or restore read files outside it), else ``None``."""
    path = folder / relative
    if not path.is_file() or path.resolve() != folder.resolve() / relative:
        return None
    return path


def _hash_file(path: Path, progress: Progress) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            progress(len(chunk))
    return size, digest.hexdigest()


def _copy(source: Path, dest: Path, progress: Progress) -> tuple[int, str]:
    """Copy ``source`` to a new ``dest`` (0600, fsynced), hashing what was written."""
    digest, size = hashlib.sha256(), 0
    with source.open("rb") as src:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            while chunk := src.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                progress(len(chunk))
            out.flush()
            os.fsync(out.fileno())
    return size, digest.hexdigest()


def _snapshot_sqlite(source: Path, dest: Path) -> None:
    """A consistent copy of a live SQLite database (WAL included), in rollback-journal mode so
    that reading it later changes no byte of it."""
    dest.unlink(missing_ok=True)
    if not source.is_file():
        raise BackupError(f"{source.name} is missing from the home")
    src = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True, timeout=_BUSY_MS / 1000)
    try:
        os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        dst = sqlite3.connect(dest, isolation_level=None)
        try:
            src.backup(dst)  # pages=-1: every page in one step, i.e. from one read transaction
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    finally:
        src.close()
    fd = os.open(dest, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        yield conn
    finally:
        conn.close()


def _blob_keys(index_copy: Path) -> set[str]:
    with _read_only(index_copy) as conn:
        return {str(row[0]) for row in conn.execute("SELECT blob_key FROM instances")}


def _object_path(objects: str, key: str) -> str:
    return check_path(f"{objects}/{key[:2]}/{key}")


def _home_relative(settings_path: str, what: str) -> str:
    path = Path(settings_path)
    if path.is_absolute() or ".." in path.parts:
        raise BackupError(
            f"{what} lies outside the home ({settings_path})",
            hint="Backups cover a home whose index, ledger and objects are inside it (the default).",
        )
    return check_path(path.as_posix())


# -- create ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupResult:
    manifest: Manifest
    manifest_sha256: str
    ledger_index: int  # of the backup.create event in the live ledger
    attempts: int
    not_included: tuple[str, ...]  # files the settings name outside the home (site PKI …)


def require_empty_folder(target: Path, *, what: str) -> None:
    """Refuse a path that is a file or a folder with anything in it (a backup or restore never
    mixes with what is there)."""
    if target.exists() and not target.is_dir():
        raise BackupError(f"{what} {target} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()):
        raise BackupError(
            f"{what} {target} exists and is not empty",
            hint="Choose a new folder (each backup gets its own).",
        )


def _extra_files(root: Path, settings: Settings) -> tuple[list[tuple[str, FileKind]], list[str]]:
    """The small files a restored home needs besides data: settings, keyring, TLS material, and
    any other file the settings name inside the home; and the names outside it (not included)."""
    wanted: dict[str, FileKind] = {CONFIG_FILE: "config", KEYRING_FILE: "keyring"}
    tls_dir = root / "tls"
    if tls_dir.is_dir():
        for path in sorted(tls_dir.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                wanted[f"tls/{path.name}"] = "tls"
    outside: list[str] = []
    named = (
        (settings.tls.certificate, "tls"),
        (settings.tls.private_key, "tls"),
        (settings.tls.ca_certificate, "tls"),
        (settings.oidc.jwks_file, "file"),
        (settings.monitor.syslog_ca, "file"),
        (settings.monitor.webhook_ca, "file"),
    )
    for name, kind in named:
        if not name:
            continue
        path = Path(name)
        if path.is_absolute() or ".." in path.parts:
            outside.append(name)
        elif (root / path).is_file():
            wanted.setdefault(check_path(path.as_posix()), kind)  # type: ignore[arg-type]
    return sorted(wanted.items()), outside


def create_backup(
    opened: OpenHome,
    target: Path,
    *,
    actor: Actor,
    now: datetime | None = None,
    progress: Progress = _no_progress,
) -> BackupResult:
    """Back up the home ``opened`` into the new folder ``target`` while it may be serving, sign
    the manifest with the ledger's key, and ledger ``backup.create``; see the module docstring.

    A failure (disk full, a crash) leaves ``target`` without ``manifest.json``: never a backup
    that verifies."""
    root, settings = opened.root, opened.settings
    if settings.storage.backend != "filesystem":  # a backup without the images must never verify
        raise BackupError(
            f"this home keeps its objects in {settings.storage.backend} storage, which `medvault backup` "
            "does not copy",
            hint="Back up the bucket with the object store's own versioning or replication, and the "
            "index and ledger with the database's tools (docs/storage.md).",
        )
    require_empty_folder(target, what="the backup folder")
    index_rel = _home_relative(settings.index.database, "the index")
    ledger_rel = _home_relative(settings.ledger.database, "the ledger")
    objects_rel = _home_relative(settings.storage.objects, "the objects folder")
    extras, outside = _extra_files(root, settings)
    target.mkdir(parents=True, exist_ok=True, mode=0o700)
    target.chmod(0o700)
    signer = Signer.from_private_bytes(
        name=settings.ledger.origin, seed=ledger_signing_seed(opened.keyring_file.keyring)
    )
    try:
        return _create(
            opened, target, signer, index_rel, ledger_rel, objects_rel, extras, outside, actor, now, progress
        )
    except (OSError, sqlite3.Error) as exc:
        errno_ = exc.errno if isinstance(exc, OSError) else None
        reason = os.strerror(errno_) if errno_ else str(exc)
        full = errno_ in (errno.ENOSPC, errno.EDQUOT) or "disk is full" in reason
        raise BackupError(
            f"the backup could not be written ({reason}); {target} has no manifest and will not verify",
            hint="Free space on the backup disk and start again in a new folder."
            if full
            else "Delete the folder and start again.",
        ) from None


def _create(
    opened: OpenHome,
    target: Path,
    signer: Signer,
    index_rel: str,
    ledger_rel: str,
    objects_rel: str,
    extras: list[tuple[str, FileKind]],
    outside: list[str],
    actor: Actor,
    now: datetime | None,
    progress: Progress,
) -> BackupResult:
    root = opened.root
    opened.ledger.flush()
    opened.ledger.checkpoint()  # the copy ends at or just after a checkpoint of this key
    copied: dict[str, FileEntry] = {}
    attempt, missing = 0, set[str]()
    for attempt in range(1, SNAPSHOT_ATTEMPTS + 1):  # noqa: B007 (reported in the result)
        _snapshot_sqlite(root / index_rel, _mkdirs(target, index_rel))
        _snapshot_sqlite(root / ledger_rel, _mkdirs(target, ledger_rel))
        keys = _blob_keys(target / index_rel)
        for key in sorted(set(copied) - keys):  # deleted before this snapshot: not in it
            (target / copied.pop(key).path).unlink()
        still_missing: set[str] = set()
        for key in sorted(keys - set(copied)):
            relative = _object_path(objects_rel, key)
            try:
                size, digest = _copy(root / relative, _mkdirs(target, relative), progress)
            except FileNotFoundError:
                (target / relative).unlink(missing_ok=True)
                still_missing.add(key)
                continue
            copied[key] = FileEntry(path=relative, kind="object", size=size, sha256=digest)
        if not still_missing:
            break
        if still_missing & missing:  # named by two snapshots in a row and absent both times
            raise BackupError(
                f"{len(still_missing & missing)} objects the index names are missing from storage",
                hint="The live archive has lost data: run `medvault fsck` and restore them first.",
            )
        missing = still_missing
    else:
        raise BackupError("objects kept being deleted while the backup ran; start it again")
    for relative, kind in extras:
        size, digest = _copy(root / relative, _mkdirs(target, relative), progress)
        copied[relative] = FileEntry(path=relative, kind=kind, size=size, sha256=digest)
    files = list(copied.values())
    for relative, kind in ((index_rel, "index"), (ledger_rel, "ledger")):
        size, digest = _hash_file(target / relative, _no_progress)
        files.append(FileEntry(path=relative, kind=kind, size=size, sha256=digest))
    report = verify_ledger(target / ledger_rel, verifier_key=signer.verifier, read_only=True)
    if not report.ok:
        raise BackupError(f"the live ledger does not verify, so it is not backed up:\n{report.summary()}")
    manifest = Manifest(
        created_at=now or datetime.now(UTC),
        medvault_version=__version__,
        origin=opened.settings.ledger.origin,
        signer=signer.verifier_key_text(),
        ledger_path=ledger_rel,
        tree_size=report.size,
        root_hash=report.root_hash,
        index_path=index_rel,
        instances=len(keys),
        files=tuple(files),
    )
    data = manifest.signed_bytes(signer)
    for folder in sorted({(target / f.path).parent for f in files}, key=lambda p: len(p.parts), reverse=True):
        _fsync_dir(folder)
    tmp = target / f".{MANIFEST_FILE}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target / MANIFEST_FILE)  # the backup exists from this rename on
    _fsync_dir(target)
    manifest_sha256 = hashlib.sha256(data).hexdigest()
    index = opened.ledger.append(
        AuditEvent(
            kind=EventKind.BACKUP,
            time=datetime.now(UTC),
            actor=actor,
            action="backup.create",
            outcome=Outcome.SUCCESS,
            object=ObjectRef(type="backup", id=manifest_sha256),
            details={
                "manifest_sha256": manifest_sha256,
                "files": len(files),
                "objects": len(manifest.objects),
                "instances": manifest.instances,
                "bytes": manifest.total_bytes,
                "tree_size": manifest.tree_size,
                "root_hash": manifest.root_hash.hex(),
            },
        )
    )
    return BackupResult(manifest, manifest_sha256, index, attempt, tuple(outside))


# -- verify ------------------------------------------------------------------------------------


@dataclass
class VerifyResult:
    """What :func:`verify_backup` found; ``ok`` only without any problem. ``proves`` says what a
    pass means given what the manifest's key was pinned against."""

    manifest: Manifest | None = None
    manifest_sha256: str | None = None
    problems: list[str] = field(default_factory=list)
    pinned: list[str] = field(default_factory=list)  # what the signer was checked against

    @property
    def ok(self) -> bool:
        return self.manifest is not None and not self.problems

    @property
    def proves(self) -> str:
        if not self.ok:
            return "nothing: the backup failed verification"
        base = (
            "every file is present and unmodified since the manifest was signed, the ledger copy "
            "verifies and ends at the signed root, every object the index names is present"
        )
        if not self.pinned:
            return (
                base + "; the signer was NOT pinned (anyone can sign with a key of their own): pass "
                "--home or --key to check it is this archive's ledger key"
            )
        return base + "; the signer is " + " and ".join(self.pinned)


def load_manifest(folder: Path, *, expected_signer: str | None = None) -> tuple[Manifest, str]:
    """The verified manifest of the backup in ``folder`` and the SHA-256 of its bytes."""
    if not folder.is_dir():
        raise BackupError(f"{folder} is not a folder")
    path = folder / MANIFEST_FILE
    if _plain(folder, MANIFEST_FILE) is None:
        raise BackupError(
            f"incomplete backup: {folder} has no {MANIFEST_FILE}",
            hint="The backup was interrupted (disk full, killed) or this is not a backup; make a new one.",
        )
    data = path.read_bytes()
    return _parse_manifest(data, expected_signer=expected_signer), hashlib.sha256(data).hexdigest()


def _check_files(folder: Path, manifest: Manifest, progress: Progress) -> list[str]:
    problems: list[str] = []
    listed = {f.path for f in manifest.files} | {MANIFEST_FILE}
    for entry in manifest.files:
        path = _plain(folder, entry.path)
        if path is None:
            what = "not a regular file" if (folder / entry.path).exists() else "missing file"
            problems.append(f"{what}: {entry.path}")
            progress(entry.size)
            continue
        size, digest = _hash_file(path, progress)
        if size != entry.size or digest != entry.sha256:
            problems.append(f"tampered file: {entry.path} (its SHA-256 differs from the manifest's)")
        progress(entry.size - size if size < entry.size else 0)
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_file() and relative not in listed:
            problems.append(f"unexpected file: {relative} (not in the manifest)")
    return problems


def _check_contents(folder: Path, manifest: Manifest) -> list[str]:
    """The ledger copy verifies under the signer and ends at the manifest's root; the index copy
    names only objects the backup holds; the keyring is a sealed keyring."""
    problems: list[str] = []
    try:
        report = verify_ledger(folder / manifest.ledger_path, verifier_key=manifest.verifier, read_only=True)
    except (MedvaultError, sqlite3.DatabaseError) as exc:
        problems.append(f"ledger copy {manifest.ledger_path} cannot be read: {exc}")
    else:
        if not report.ok:
            problems.append(f"ledger copy {manifest.ledger_path} does not verify: {report.summary()}")
        elif report.size != manifest.tree_size or report.root_hash != manifest.root_hash:
            problems.append(
                f"ledger copy ends at size {report.size}, not at the manifest's {manifest.tree_size} "
                "and its root"
            )
    try:
        keys = _blob_keys(folder / manifest.index_path)
    except sqlite3.DatabaseError as exc:
        problems.append(f"index copy {manifest.index_path} cannot be read: {exc}")
    else:
        held = {Path(f.path).name: f.path for f in manifest.objects}
        absent = sorted(keys - set(held))
        problems += [f"missing object: the index names {key}, the backup does not hold it" for key in absent]
        if len(keys) != manifest.instances:
            problems.append(
                f"the index copy has {len(keys)} instances, the manifest says {manifest.instances}"
            )
    keyring = [f for f in manifest.files if f.kind == "keyring"]
    if not keyring:
        problems.append("the backup holds no keyring: it could never be opened")
    else:
        with contextlib.suppress(FileNotFoundError):
            try:
                sealed = json.loads((folder / keyring[0].path).read_bytes())
            except ValueError:
                sealed = None
            if not isinstance(sealed, dict) or sealed.get("format") != "medvault-keyring":
                problems.append(f"{keyring[0].path} is not a sealed medvault keyring")
    return problems


def _pin_to_live(manifest: Manifest, home: Path) -> tuple[list[str], list[str]]:
    """Without the passphrase: the live ledger's latest checkpoint verifies under the manifest's
    signer (so it is the archive's key), and the live ledger's root at the backup's size is the
    backup's (its history is a prefix of the archive's: no fork, no rollback)."""
    settings = load_settings(home)
    if settings.ledger.origin != manifest.origin:
        return [f"the backup is of another archive (ledger origin {manifest.origin!r})"], []
    ledger = Ledger.open(home / settings.ledger.database, signer=None, origin=settings.ledger.origin)
    try:
        problems: list[str] = []
        note = ledger.latest_checkpoint()
        if note is None:
            problems.append("the live ledger has no signed checkpoint to pin the manifest's key against")
        else:
            try:
                parse_and_verify(note, manifest.verifier, origin=manifest.origin)
            except NoteInvalid:
                problems.append("bad signature: the manifest is not signed by this archive's ledger key")
        if ledger.size < manifest.tree_size:
            problems.append(
                f"the live ledger ({ledger.size} entries) is shorter than the backup's "
                f"({manifest.tree_size}): rolled back, or not this archive"
            )
        elif ledger.root(manifest.tree_size) != manifest.root_hash:
            problems.append("the backup's ledger is not a prefix of this archive's ledger (forked or forged)")
    finally:
        ledger.close()
    if problems:
        return problems, []
    return [], ["this archive's ledger key, and its ledger is a prefix of the archive's ledger"]


def verify_backup(
    folder: Path,
    *,
    home: Path | None = None,
    expected_signer: str | None = None,
    progress: Progress = _no_progress,
) -> VerifyResult:
    """Check a backup without the passphrase: the manifest's signature, every file's size and
    hash, no file added, the ledger copy, the objects the index names. ``home`` pins the signer to
    that live archive's ledger; ``expected_signer`` (a note verifier key, `medvault ledger key`)
    pins it to a key kept elsewhere. Problems are named in order, the first ones first."""
    result = VerifyResult()
    try:
        result.manifest, result.manifest_sha256 = load_manifest(folder, expected_signer=expected_signer)
    except BackupError as exc:
        result.problems.append(exc.message)
        return result
    manifest = result.manifest
    if expected_signer is not None:
        result.pinned.append("the key given")
    if home is not None:
        problems, pinned = _pin_to_live(manifest, home)
        result.problems += problems
        result.pinned += pinned
    result.problems += _check_files(folder, manifest, progress)
    result.problems += _check_contents(folder, manifest)
    return result


def _append_to_live(home: Path, event: AuditEvent) -> int:
    """Append one event to a home's ledger (no passphrase needed: appending signs nothing)."""
    settings = load_settings(home)
    ledger = Ledger.open(home / settings.ledger.database, signer=None, origin=settings.ledger.origin)
    try:
        return ledger.append(event)
    finally:
        ledger.close()


def record_verification(home: Path, result: VerifyResult, *, actor: Actor) -> int:
    """Ledger ``backup.verify`` (manifest hash, result, whether the signer was pinned) in the
    home's ledger; ``medvault backup status`` and the safeguards report read it back."""
    digest = result.manifest_sha256 or "unreadable"
    return _append_to_live(
        home,
        AuditEvent(
            kind=EventKind.BACKUP,
            time=datetime.now(UTC),
            actor=actor,
            action="backup.verify",
            outcome=Outcome.SUCCESS if result.ok else Outcome.FAILURE,
            object=ObjectRef(type="backup", id=digest),
            details={
                "manifest_sha256": digest,
                "result": "ok" if result.ok else "failed",
                "problems": len(result.problems),
                "pinned": bool(result.pinned),
                "tree_size": result.manifest.tree_size if result.manifest else None,
            },
        ),
    )


# -- restore -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RestoreResult:
    manifest: Manifest
    manifest_sha256: str
    replaced: Path | None  # where a non-empty target was moved aside (--force)
    published: int  # ledger events of changes in flight at the snapshot, appended now
    ledger_index: int  # of the backup.restore event in the restored ledger


def restore_backup(
    folder: Path,
    target: Path,
    *,
    passphrase: str,
    actor: Actor,
    force: bool = False,
    expected_signer: str | None = None,
    progress: Progress = _no_progress,
) -> RestoreResult:
    """Restore the backup in ``folder`` as the home ``target``: verify it, copy it into a staging
    folder beside ``target`` (re-hashing every byte), check the copy (ledger, objects), open it
    with the passphrase (the keyring must derive the manifest's signer and unwrap the data keys),
    publish the events of changes that were in flight, ledger ``backup.restore``, sign a
    checkpoint, then move it into place. A non-empty ``target`` is refused unless ``force``; then
    it is moved aside to ``TARGET.replaced-<time>``, never deleted."""
    manifest, manifest_sha256 = load_manifest(folder, expected_signer=expected_signer)
    if not force:
        require_empty_folder(target, what="the restore target")
    elif target.exists() and not target.is_dir():
        raise BackupError(f"the restore target {target} exists and is not a folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.restoring-{secrets.token_hex(4)}"
    staging.mkdir(mode=0o700)
    try:
        problems: list[str] = []
        for entry in manifest.files:
            source = _plain(folder, entry.path)
            if source is None:
                what = "not a regular file" if (folder / entry.path).exists() else "missing file"
                problems.append(f"{what}: {entry.path}")
                continue
            size, digest = _copy(source, _mkdirs(staging, entry.path), progress)
            if size != entry.size or digest != entry.sha256:
                problems.append(f"tampered file: {entry.path} (its SHA-256 differs from the manifest's)")
        problems += _check_contents(staging, manifest) if not problems else []
        if problems:
            raise BackupError(
                "the backup failed verification, nothing was restored: " + "; ".join(problems[:5]),
                hint="Run `medvault backup verify DIR` for every problem.",
            )
        (staging / "logs").mkdir(mode=0o700, exist_ok=True)
        published, index = _open_restored(staging, passphrase, manifest, manifest_sha256, actor)
        for path in [staging, *staging.rglob("*")]:
            path.chmod(0o700 if path.is_dir() else 0o600)
        replaced = None
        if target.is_dir() and any(target.iterdir()):
            replaced = target.with_name(f"{target.name}.replaced-{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
            target.rename(replaced)
        elif target.is_dir():
            target.rmdir()
        staging.rename(target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return RestoreResult(manifest, manifest_sha256, replaced, published, index)


def _open_restored(
    staging: Path, passphrase: str, manifest: Manifest, manifest_sha256: str, actor: Actor
) -> tuple[int, int]:
    opened = open_home(staging, passphrase)
    try:
        seed = ledger_signing_seed(opened.keyring_file.keyring)
        if Signer.from_private_bytes(name=manifest.origin, seed=seed).verifier_key_text() != manifest.signer:
            raise BackupError("the keyring in this backup does not hold the key that signed its manifest")
        known = set(opened.archive.keks.kek_ids())
        with _read_only(staging / manifest.index_path) as conn:
            used = {str(r[0]) for r in conn.execute("SELECT DISTINCT kek_id FROM instances")}
        if used - known:
            raise BackupError(f"the keyring lacks {len(used - known)} key-encryption keys the index uses")
        for record in _one_per_kek(opened):
            opened.archive.read(record)  # unwraps with the restored keyring, decrypts, verifies
        published = _publish_in_flight(opened)
        index = opened.ledger.append(
            AuditEvent(
                kind=EventKind.BACKUP,
                time=datetime.now(UTC),
                actor=actor,
                action="backup.restore",
                outcome=Outcome.SUCCESS,
                object=ObjectRef(type="backup", id=manifest_sha256),
                details={
                    "manifest_sha256": manifest_sha256,
                    "tree_size": manifest.tree_size,
                    "objects": len(manifest.objects),
                    "instances": manifest.instances,
                    "events_published": published,
                },
            )
        )
        opened.ledger.checkpoint()
        return published, index
    finally:
        opened.close()


def _one_per_kek(opened: OpenHome) -> Iterator[InstanceRecord]:
    seen: set[str] = set()
    for record in opened.archive.index.iter_instances():
        if record.wrapped_key.kek_id not in seen:
            seen.add(record.wrapped_key.kek_id)
            yield record


def _publish_in_flight(opened: OpenHome) -> int:
    """The copied index's outbox rows are events of changes whose writers (processes of the
    original home) may not have appended them before the ledger was copied: append those the
    restored ledger does not hold, and clear the rows (no process of this home owns them)."""
    index = opened.archive.index
    rows = index.outbox_rows()
    if not rows:
        return 0
    present = opened.ledger.present_leaves([r.leaf for r in rows], start=min(r.after_size for r in rows))
    missing = [r.leaf for r in rows if r.leaf not in present]
    opened.ledger.append_leaves(missing)
    index.outbox_done([r.id for r in rows])
    return len(missing)


# -- status ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupEvent:
    ledger_index: int
    time: datetime
    action: str
    outcome: str
    manifest_sha256: str
    actor: str
    details: dict[str, object]

    def as_dict(self) -> dict[str, object]:
        return {
            "ledger_index": self.ledger_index,
            "time": self.time.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "action": self.action,
            "outcome": self.outcome,
            "manifest_sha256": self.manifest_sha256,
            "actor": self.actor,
            "details": self.details,
        }


@dataclass(frozen=True)
class BackupStatus:
    """What the ledger says about backups: the last one made, the last one verified (the
    safeguards report's "last verified backup"), the last verification attempt and restore."""

    last_created: BackupEvent | None
    last_verified: BackupEvent | None
    last_verification: BackupEvent | None
    last_restore: BackupEvent | None

    def as_dict(self) -> dict[str, object]:
        return {
            name: (None if value is None else value.as_dict())
            for name, value in (
                ("last_created", self.last_created),
                ("last_verified", self.last_verified),
                ("last_verification", self.last_verification),
                ("last_restore", self.last_restore),
            )
        }


def _backup_events(conn: sqlite3.Connection, action: str) -> Iterator[BackupEvent]:
    needle = f'"action":"{action}"'.encode()
    rows = conn.execute("SELECT idx, data FROM entries WHERE instr(data, ?) > 0 ORDER BY idx DESC", (needle,))
    for idx, data in rows:
        try:
            event = parse_event(bytes(data))
        except MedvaultError:
            continue
        if event.kind is not EventKind.BACKUP or event.action != action or event.object is None:
            continue
        yield BackupEvent(
            ledger_index=int(idx),
            time=event.time,
            action=action,
            outcome=event.outcome.value,
            manifest_sha256=event.object.id,
            actor=event.actor.id,
            details=dict(event.details),
        )


def backup_status(home: Path) -> BackupStatus:
    """Read the home's ledger (no passphrase needed) for its latest backup events."""
    settings = load_settings(home)
    path = home / settings.ledger.database
    if not path.is_file():
        raise BackupError(f"{home} has no ledger")
    conn = sqlite3.connect(path, timeout=_BUSY_MS / 1000)
    try:
        created = next(_backup_events(conn, "backup.create"), None)
        verification = next(_backup_events(conn, "backup.verify"), None)
        verified = next((e for e in _backup_events(conn, "backup.verify") if e.outcome == "success"), None)
        restore = next(_backup_events(conn, "backup.restore"), None)
    finally:
        conn.close()
    return BackupStatus(created, verified, verification, restore)
