"""The signed backup manifest: it round-trips, and any change to any byte of it is refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from medvault.compliance.manifest import BackupError, FileEntry, Manifest, check_path, parse_manifest
from medvault.errors import NoteInvalid
from medvault.ledger.events import canonicalize
from medvault.ledger.note import Signer, open_note, parse_checkpoint

ORIGIN = "example.org/medvault/ledger"
SIGNER = Signer.from_private_bytes(name=ORIGIN, seed=bytes(range(32)))
OTHER = Signer.from_private_bytes(name=ORIGIN, seed=bytes(range(1, 33)))

hex64 = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
component = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,20}", fullmatch=True)
paths = st.lists(component, min_size=1, max_size=4).map("/".join)
kinds = st.sampled_from(["config", "keyring", "tls", "file", "object"])


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    extra = draw(
        st.lists(
            st.builds(
                lambda p, k, s, h: FileEntry(path="x/" + p, kind=k, size=s, sha256=h),
                paths,
                kinds,
                st.integers(0, 2**53 - 1),
                hex64,
            ),
            max_size=8,
            unique_by=lambda f: f.path,
        )
    )
    core = [
        FileEntry(path="index.db", kind="index", size=draw(st.integers(0, 2**40)), sha256=draw(hex64)),
        FileEntry(path="ledger.db", kind="ledger", size=draw(st.integers(0, 2**40)), sha256=draw(hex64)),
    ]
    return Manifest(
        created_at=draw(st.datetimes(min_value=datetime(2000, 1, 1), timezones=st.just(UTC))),
        medvault_version=draw(st.sampled_from(["0.1.0", "1.2.3rc1"])),
        origin=ORIGIN,
        signer=SIGNER.verifier_key_text(),
        ledger_path="ledger.db",
        tree_size=draw(st.integers(0, 2**53 - 1)),
        root_hash=draw(st.binary(min_size=32, max_size=32)),
        index_path="index.db",
        instances=draw(st.integers(0, 10**9)),
        files=tuple(draw(st.permutations([*core, *extra]))),
    )


def small() -> Manifest:
    return Manifest(
        created_at=datetime(2026, 12, 3, 12, 0, 0, 123, tzinfo=UTC),
        medvault_version="0.1.0",
        origin=ORIGIN,
        signer=SIGNER.verifier_key_text(),
        ledger_path="ledger.db",
        tree_size=7,
        root_hash=bytes(32),
        index_path="index.db",
        instances=1,
        files=(
            FileEntry(path="ledger.db", kind="ledger", size=3, sha256="a" * 64),
            FileEntry(path="index.db", kind="index", size=4, sha256="b" * 64),
            FileEntry(path="objects/ab/ab12cd34", kind="object", size=5, sha256="c" * 64),
        ),
    )


@given(manifests())
@settings(max_examples=60, deadline=None)
def test_round_trip(manifest: Manifest) -> None:
    data = manifest.signed_bytes(SIGNER)
    assert data.endswith(b"\n") and data.count(b"\n") == 1  # one canonical line
    assert parse_manifest(data) == manifest
    assert parse_manifest(data, expected_signer=SIGNER.verifier_key_text()) == manifest


@given(st.data())
@settings(max_examples=200, deadline=None)
def test_any_changed_byte_is_refused(data: st.DataObject) -> None:
    signed = small().signed_bytes(SIGNER)
    position = data.draw(st.integers(0, len(signed) - 1))
    flip = data.draw(st.integers(1, 255))
    changed = bytearray(signed)
    changed[position] ^= flip
    with pytest.raises(BackupError):
        parse_manifest(bytes(changed))


def test_a_changed_value_re_serialised_canonically_fails_the_signature() -> None:
    raw = json.loads(small().signed_bytes(SIGNER))
    raw["files"][2]["sha256"] = "d" * 64  # a tamperer who re-writes the manifest in canonical form
    with pytest.raises(BackupError, match="bad signature"):
        parse_manifest(canonicalize(raw) + b"\n")


def test_re_signed_by_another_key_is_refused_when_the_key_is_pinned() -> None:
    forged = Manifest(**{**small().__dict__, "signer": OTHER.verifier_key_text()})
    data = forged.signed_bytes(OTHER)
    assert parse_manifest(data).signer == OTHER.verifier_key_text()  # valid, but by whom?
    with pytest.raises(BackupError, match="another key"):
        parse_manifest(data, expected_signer=SIGNER.verifier_key_text())


def test_a_signature_by_another_key_under_the_same_name_is_refused() -> None:
    raw = json.loads(small().signed_bytes(SIGNER))
    raw["signature"] = OTHER.sign_note(small().note_text()).decode()
    with pytest.raises(BackupError, match="bad signature"):
        parse_manifest(canonicalize(raw) + b"\n")


def test_the_signed_text_is_never_a_checkpoint() -> None:
    """Domain separation: the ledger's key signs both checkpoints and manifests."""
    raw = json.loads(small().signed_bytes(SIGNER))
    text = open_note(raw["signature"].encode(), SIGNER.verifier)
    assert text.startswith("medvault-backup-manifest/v1\n")
    with pytest.raises(NoteInvalid):
        parse_checkpoint(text)


def test_not_canonical_or_unknown_members_or_wrong_format_are_refused() -> None:
    signed = small().signed_bytes(SIGNER)
    raw = json.loads(signed)
    with pytest.raises(BackupError, match="canonical"):
        parse_manifest(json.dumps(raw, indent=1).encode())
    for change, message in (
        ({"extra": 1}, "members"),
        ({"format": "tar"}, "format"),
        ({"version": 2}, "format"),
        ({"created_at": "yesterday"}, "created_at"),
    ):
        with pytest.raises(BackupError, match=message):
            parse_manifest(canonicalize({**raw, **change}) + b"\n")
    with pytest.raises(BackupError, match="not valid JSON"):
        parse_manifest(b"{")


@pytest.mark.parametrize(
    "path", ["../etc/passwd", "/etc/passwd", "a/../b", ".hidden", "a//b", "a b", "a\\b", "", "a/./b"]
)
def test_paths_that_could_escape_or_mislead_are_refused(path: str) -> None:
    with pytest.raises(BackupError):
        check_path(path)


def test_the_ledger_and_index_must_be_listed() -> None:
    for kind in ("ledger", "index"):
        with pytest.raises(BackupError, match=f"the {kind} file"):
            Manifest(**{**small().__dict__, "files": tuple(f for f in small().files if f.kind != kind)})
    with pytest.raises(BackupError, match="twice"):
        Manifest(**{**small().__dict__, "files": (*small().files, small().files[0])})


def test_only_the_manifests_signer_can_sign_it() -> None:
    with pytest.raises(BackupError, match="signer"):
        small().signed_bytes(OTHER)
