"""Backups on a real home (no server): create, verify without the passphrase, restore end to end,
and every way a backup can be wrong (tampered, missing, added, incomplete, someone else's)."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tests.conftest import PASSPHRASE, Home, make_home

import medvault.compliance.backup as backup_module
from medvault.audit import SYSTEM
from medvault.compliance.backup import (
    backup_status,
    create_backup,
    record_verification,
    restore_backup,
    verify_backup,
)
from medvault.compliance.manifest import MANIFEST_FILE, BackupError
from medvault.errors import WrongPassphrase
from medvault.home import OpenHome, ledger_signing_seed, open_home
from medvault.index.outbox import Outbox, process_tag, write_outbox
from medvault.index.schema import instances
from medvault.ledger.events import AuditEvent, EventKind, ObjectRef, Outcome, canonical_bytes, parse_event
from medvault.ledger.note import Signer
from medvault.ledger.verify import verify_ledger
from medvault.sample import generate_study

PATIENT_NAME, PATIENT_ID = "BACKUP^PATIENT", "BK-7731"


@pytest.fixture
def home(tmp_path: Path) -> Home:
    return make_home(tmp_path / "home")


@pytest.fixture
def opened(home: Home) -> Iterator[OpenHome]:
    opened = open_home(home.root, PASSPHRASE)
    yield opened
    opened.close()


def store_study(opened: OpenHome, folder: Path, seed: int) -> dict[str, bytes]:
    files = generate_study(
        folder,
        seed=seed,
        series=2,
        instances=2,
        rows=16,
        cols=16,
        patient_name=PATIENT_NAME,
        patient_id=PATIENT_ID,
    )
    data = [p.read_bytes() for p in files]
    outcomes = opened.archive.store_batch(data)
    assert all(o.status == "stored" for o in outcomes)
    return {str(o.sop_instance_uid): d for o, d in zip(outcomes, data, strict=True)}


@pytest.fixture
def stored(opened: OpenHome, tmp_path: Path) -> dict[str, bytes]:
    return store_study(opened, tmp_path / "in", seed=11)


def key_text(opened: OpenHome) -> str:
    return opened.ledger.verifier_key_text()


def test_create_verify_and_restore_end_to_end(
    home: Home, opened: OpenHome, stored: dict[str, bytes], tmp_path: Path
) -> None:
    result = create_backup(opened, tmp_path / "b", actor=SYSTEM)
    assert result.manifest.instances == len(stored) == len(result.manifest.objects)
    kinds = {f.kind for f in result.manifest.files}
    assert kinds == {"config", "keyring", "tls", "index", "ledger", "object"}
    assert not (tmp_path / "b" / "logs").exists()  # access log and TOTP images stay home

    checked = verify_backup(tmp_path / "b", home=home.root)
    assert checked.ok, checked.problems
    assert "this archive's ledger key" in checked.proves
    unpinned = verify_backup(tmp_path / "b")
    assert unpinned.ok and "NOT pinned" in unpinned.proves
    assert verify_backup(tmp_path / "b", expected_signer=key_text(opened)).ok

    restored = restore_backup(tmp_path / "b", tmp_path / "new", passphrase=PASSPHRASE, actor=SYSTEM)
    assert restored.manifest_sha256 == result.manifest_sha256
    for path in [tmp_path / "new", *(tmp_path / "new").rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), path
    again = open_home(tmp_path / "new", PASSPHRASE)  # the keyring unlocks with the same passphrase
    try:
        for record in again.archive.index.iter_instances():
            assert again.archive.read(record) == stored[record.sop_uid]  # byte-identical
        assert again.archive.index.count_instances() == len(stored)
        report = verify_ledger(tmp_path / "new" / "ledger.db", verifier_key=key_text(again))
        assert report.ok, report.summary()
        last = parse_event(again.ledger.entry(again.ledger.size - 1))
        assert (last.kind, last.action) == (EventKind.BACKUP, "backup.restore")
        assert last.details["manifest_sha256"] == result.manifest_sha256
    finally:
        again.close()


def test_the_backup_and_its_manifest_carry_no_phi(
    opened: OpenHome, stored: dict[str, bytes], tmp_path: Path
) -> None:
    create_backup(opened, tmp_path / "b", actor=SYSTEM)
    manifest = (tmp_path / "b" / MANIFEST_FILE).read_bytes()
    for path in (tmp_path / "b").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for secret in (PATIENT_NAME, PATIENT_ID, "BACKUP", "BK-7731"):
                assert secret.encode() not in data, (path.name, secret)
    assert b"sop" not in manifest.lower() or all(uid.encode() not in manifest for uid in stored)


def test_events_are_ledgered_and_status_reads_them(
    home: Home, opened: OpenHome, stored: dict[str, bytes], tmp_path: Path
) -> None:
    assert backup_status(home.root).last_created is None
    result = create_backup(opened, tmp_path / "b", actor=SYSTEM)
    created = parse_event(opened.ledger.entry(result.ledger_index))
    assert created.action == "backup.create" and created.details["objects"] == len(stored)
    record_verification(home.root, verify_backup(tmp_path / "b", home=home.root), actor=SYSTEM)
    first = backup_status(home.root)
    assert first.last_created is not None and first.last_created.manifest_sha256 == result.manifest_sha256
    assert first.last_verified is not None and first.last_verified.details["pinned"] is True
    (tmp_path / "b" / "medvault.toml").write_text("tampered")
    record_verification(home.root, verify_backup(tmp_path / "b", home=home.root), actor=SYSTEM)
    second = backup_status(home.root)
    assert second.last_verification is not None and second.last_verification.outcome == "failure"
    assert second.last_verified == first.last_verified  # the last one that PASSED
    assert json.loads(json.dumps(second.as_dict()))["last_verified"]["details"]["result"] == "ok"


def test_a_tampered_object_is_named(opened: OpenHome, stored: dict[str, bytes], tmp_path: Path) -> None:
    result = create_backup(opened, tmp_path / "b", actor=SYSTEM)
    victim = result.manifest.objects[0].path
    data = bytearray((tmp_path / "b" / victim).read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / "b" / victim).write_bytes(bytes(data))
    checked = verify_backup(tmp_path / "b")
    assert not checked.ok
    assert checked.problems == [f"tampered file: {victim} (its SHA-256 differs from the manifest's)"]
    with pytest.raises(BackupError, match=f"tampered file: {victim}"):
        restore_backup(tmp_path / "b", tmp_path / "new", passphrase=PASSPHRASE, actor=SYSTEM)
    assert not (tmp_path / "new").exists()
    assert not [p for p in tmp_path.iterdir() if "restoring" in p.name]  # no staging left behind


def test_missing_and_added_files_are_named(
    opened: OpenHome, stored: dict[str, bytes], tmp_path: Path
) -> None:
    result = create_backup(opened, tmp_path / "b", actor=SYSTEM)
    gone = result.manifest.objects[-1].path
    (tmp_path / "b" / gone).unlink()
    (tmp_path / "b" / "objects" / "zz").mkdir()
    (tmp_path / "b" / "objects" / "zz" / "planted").write_bytes(b"x")
    problems = verify_backup(tmp_path / "b").problems
    assert f"missing file: {gone}" in problems
    assert "unexpected file: objects/zz/planted (not in the manifest)" in problems
    assert len(problems) == 2


def test_an_object_the_index_names_but_the_manifest_omits_is_named(
    opened: OpenHome, stored: dict[str, bytes], tmp_path: Path
) -> None:
    """Even a manifest signed by the archive's own key must cover every object of its index."""
    result = create_backup(opened, tmp_path / "b", actor=SYSTEM)
    dropped = result.manifest.objects[0]
    signer = Signer.from_private_bytes(
        name=result.manifest.origin, seed=ledger_signing_seed(opened.keyring_file.keyring)
    )
    short = dataclasses.replace(
        result.manifest, files=tuple(f for f in result.manifest.files if f != dropped)
    )
    (tmp_path / "b" / MANIFEST_FILE).write_bytes(short.signed_bytes(signer))
    (tmp_path / "b" / dropped.path).unlink()
    key = Path(dropped.path).name
    assert verify_backup(tmp_path / "b").problems == [
        f"missing object: the index names {key}, the backup does not hold it"
    ]


def test_a_ledger_copy_that_does_not_match_the_manifest_fails(
    opened: OpenHome, stored: dict[str, bytes], tmp_path: Path
) -> None:
    create_backup(opened, tmp_path / "b", actor=SYSTEM)
    (tmp_path / "b" / "ledger.db").write_bytes(b"not a database")
    problems = verify_backup(tmp_path / "b").problems
    assert problems[0] == "tampered file: ledger.db (its SHA-256 differs from the manifest's)"
    assert any(p.startswith("ledger copy ledger.db cannot be read") for p in problems)


def test_an_edited_manifest_is_a_bad_signature(
    opened: OpenHome, stored: dict[str, bytes], tmp_path: Path
) -> None:
    create_backup(opened, tmp_path / "b", actor=SYSTEM)
    path = tmp_path / "b" / MANIFEST_FILE
    path.write_bytes(path.read_bytes().replace(b'"instances":4', b'"instances":3'))
    assert verify_backup(tmp_path / "b").problems == [
        "bad signature on manifest.json: it signs other contents"
    ]


def test_another_archives_backup_is_refused_against_this_home(
    home: Home, opened: OpenHome, stored: dict[str, bytes], tmp_path: Path
) -> None:
    other = make_home(tmp_path / "other")
    create_backup(opened, tmp_path / "b", actor=SYSTEM)
    checked = verify_backup(tmp_path / "b", home=other.root)
    assert "the live ledger has no signed checkpoint to pin the manifest's key against" in checked.problems
    other_opened = open_home(other.root, PASSPHRASE)
    try:
        other_opened.ledger.checkpoint()
        checked = verify_backup(tmp_path / "b", home=other.root)
        assert not checked.ok and not checked.pinned
        assert "bad signature: the manifest is not signed by this archive's ledger key" in checked.problems
        with pytest.raises(BackupError, match="another key"):
            restore_backup(
                tmp_path / "b",
                tmp_path / "new",
                passphrase=PASSPHRASE,
                actor=SYSTEM,
                expected_signer=key_text(other_opened),
            )
    finally:
        other_opened.close()


def test_disk_full_mid_backup_leaves_an_incomplete_backup(
    opened: OpenHome, stored: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_copy = backup_module._copy
    calls: list[Path] = []

    def copy_until_full(source: Path, dest: Path, progress: backup_module.Progress) -> tuple[int, str]:
        calls.append(source)
        if len(calls) == 3:
            dest.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_copy(source, dest, progress)

    monkeypatch.setattr(backup_module, "_copy", copy_until_full)
    with pytest.raises(BackupError, match=r"No space left on device.*has no manifest") as caught:
        create_backup(opened, tmp_path / "b", actor=SYSTEM)
    assert "Free space" in caught.value.diagnostics()
    assert not (tmp_path / "b" / MANIFEST_FILE).exists()
    checked = verify_backup(tmp_path / "b")
    assert not checked.ok and checked.problems[0].startswith("incomplete backup:")
    with pytest.raises(BackupError, match="incomplete backup"):
        restore_backup(tmp_path / "b", tmp_path / "new", passphrase=PASSPHRASE, actor=SYSTEM)


def test_an_object_deleted_during_the_snapshot_starts_it_over(
    opened: OpenHome, stored: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    second = store_study(opened, tmp_path / "in2", seed=12)
    records = [r for r in opened.archive.index.iter_instances() if r.sop_uid in second]
    real_keys = backup_module._blob_keys
    deleted: list[str] = []

    def keys_then_delete(index_copy: Path) -> set[str]:
        keys = real_keys(index_copy)
        if not deleted:  # a DELETE lands between the index snapshot and the object copies
            for record in records:
                (opened.root / "objects" / record.blob_key[:2] / record.blob_key).unlink()
                deleted.append(record.blob_key)
            with opened.archive.index.engine.begin() as conn:
                conn.execute(instances.delete().where(instances.c.blob_key.in_(deleted)))
        return keys

    monkeypatch.setattr(backup_module, "_blob_keys", keys_then_delete)
    result = create_backup(opened, tmp_path / "b", actor=SYSTEM)
    assert result.attempts == 2
    assert result.manifest.instances == len(stored)
    assert verify_backup(tmp_path / "b").ok


def test_objects_the_live_index_names_but_storage_lost_refuse_the_backup(
    opened: OpenHome, stored: dict[str, bytes], tmp_path: Path
) -> None:
    record = next(opened.archive.index.iter_instances())
    (opened.root / "objects" / record.blob_key[:2] / record.blob_key).unlink()
    with pytest.raises(BackupError, match="1 objects the index names are missing") as caught:
        create_backup(opened, tmp_path / "b", actor=SYSTEM)
    assert "fsck" in caught.value.diagnostics()
    assert not (tmp_path / "b" / MANIFEST_FILE).exists()


def test_events_in_flight_at_the_snapshot_are_published_by_the_restore(
    opened: OpenHome, stored: dict[str, bytes], tmp_path: Path
) -> None:
    event = AuditEvent(
        kind=EventKind.STORE,
        time=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        actor=SYSTEM,
        action="store.in_flight",
        outcome=Outcome.SUCCESS,
        object=ObjectRef(type="instance", id="1.2.3"),
    )
    # committed with its index change, not yet appended by its (live) writer
    with opened.archive.index.engine.begin() as conn:
        write_outbox(
            conn, Outbox(owner=process_tag(), after_size=opened.ledger.size, leaves=[canonical_bytes(event)])
        )
    create_backup(opened, tmp_path / "b", actor=SYSTEM)
    restored = restore_backup(tmp_path / "b", tmp_path / "new", passphrase=PASSPHRASE, actor=SYSTEM)
    assert restored.published == 1
    again = open_home(tmp_path / "new", PASSPHRASE)
    try:
        assert again.archive.index.outbox_rows() == []
        leaves = again.ledger.entries(0, again.ledger.size)
        assert leaves.count(canonical_bytes(event)) == 1
    finally:
        again.close()


def test_targets_that_are_not_empty_are_refused(
    opened: OpenHome, stored: dict[str, bytes], tmp_path: Path
) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(BackupError, match="exists and is not empty"):
        create_backup(opened, tmp_path / "full", actor=SYSTEM)
    (tmp_path / "empty").mkdir()
    create_backup(opened, tmp_path / "empty", actor=SYSTEM)  # an empty folder is fine
    with pytest.raises(BackupError, match=r"restore target .* exists and is not empty"):
        restore_backup(tmp_path / "empty", tmp_path / "full", passphrase=PASSPHRASE, actor=SYSTEM)
    restored = restore_backup(
        tmp_path / "empty", tmp_path / "full", passphrase=PASSPHRASE, actor=SYSTEM, force=True
    )
    assert restored.replaced is not None and (restored.replaced / "x").read_text() == "x"  # moved aside
    assert (tmp_path / "full" / "keyring.sealed").is_file()


def test_a_wrong_passphrase_restores_nothing(
    opened: OpenHome, stored: dict[str, bytes], tmp_path: Path
) -> None:
    create_backup(opened, tmp_path / "b", actor=SYSTEM)
    with pytest.raises(WrongPassphrase):
        restore_backup(tmp_path / "b", tmp_path / "new", passphrase="not the passphrase!", actor=SYSTEM)
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b", "home", "in"]


def test_a_file_replaced_by_a_link_is_never_followed(
    opened: OpenHome, stored: dict[str, bytes], tmp_path: Path
) -> None:
    result = create_backup(opened, tmp_path / "b", actor=SYSTEM)
    victim = result.manifest.objects[0].path
    outside = tmp_path / "outside"
    outside.write_bytes((tmp_path / "b" / victim).read_bytes())  # even with the very bytes
    (tmp_path / "b" / victim).unlink()
    (tmp_path / "b" / victim).symlink_to(outside)
    assert verify_backup(tmp_path / "b").problems == [f"not a regular file: {victim}"]
    with pytest.raises(BackupError, match=f"not a regular file: {victim}"):
        restore_backup(tmp_path / "b", tmp_path / "new", passphrase=PASSPHRASE, actor=SYSTEM)


KILL_CHILD = """
import os, sys, time
from pathlib import Path
import medvault.compliance.backup as b
from medvault.audit import SYSTEM
from medvault.home import open_home
real = b._copy
def slow(source, dest, progress):
    out = real(source, dest, progress)
    print("copied", flush=True)
    time.sleep(30)  # killed here, mid-backup
    return out
b._copy = slow
opened = open_home(Path(sys.argv[1]), os.environ["MEDVAULT_PASSPHRASE"])
b.create_backup(opened, Path(sys.argv[2]), actor=SYSTEM)
"""


def test_kill_9_mid_backup_leaves_an_incomplete_backup(
    home: Home, stored: dict[str, bytes], tmp_path: Path
) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", KILL_CHILD, str(home.root), str(tmp_path / "b")],
        env=home.env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "copied"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        if child.stdout is not None:
            child.stdout.close()
    assert (tmp_path / "b" / "index.db").is_file() and not (tmp_path / "b" / MANIFEST_FILE).exists()
    checked = verify_backup(tmp_path / "b")
    assert checked.problems == [f"incomplete backup: {tmp_path / 'b'} has no manifest.json"]


def test_a_full_disk_while_sqlite_writes_the_snapshot_is_an_incomplete_backup(
    opened: OpenHome, stored: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(source: Path, dest: Path) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(backup_module, "_snapshot_sqlite", full)
    with pytest.raises(BackupError, match="disk is full") as caught:
        create_backup(opened, tmp_path / "b", actor=SYSTEM)
    assert "Free space" in caught.value.diagnostics()
    assert verify_backup(tmp_path / "b").problems[0].startswith("incomplete backup:")
