"""The service layer over a real SQLite index and the in-memory blob store."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_frames

from medvault.archive import Archive
from medvault.crypto.envelope import encrypt_object
from medvault.crypto.fields import BlindIndex, FieldCipher
from medvault.crypto.kek import KeyringKekProvider
from medvault.crypto.keyring import Keyring
from medvault.dicom.matching import parse_criterion
from medvault.errors import Conflict, IntegrityError, NotFound, StorageError, StudyMismatch
from medvault.index.store import Index, StudyFacts
from medvault.sample import generate_study
from medvault.testing import MemoryBlobStore


def read(name: str) -> bytes:
    path = get_testdata_file(name, download=False)
    assert path is not None, name
    return Path(str(path)).read_bytes()


@pytest.fixture
def keyring() -> Keyring:
    return Keyring.generate()


@pytest.fixture
def blobs() -> MemoryBlobStore:
    return MemoryBlobStore()


@pytest.fixture
def archive(tmp_path: Path, keyring: Keyring, blobs: MemoryBlobStore) -> Iterator[Archive]:
    index = Index.open_sqlite(
        tmp_path / "index.db",
        cipher=FieldCipher(keyring.index_key),
        blind=BlindIndex(keyring.blind_index_key),
    )
    archive = Archive(index=index, blobs=blobs, keks=KeyringKekProvider(keyring))
    yield archive
    archive.close()


@pytest.fixture
def ct_files(tmp_path: Path) -> list[bytes]:
    paths = generate_study(
        tmp_path / "ct",
        seed=3,
        series=2,
        instances=3,
        rows=32,
        cols=32,
        patient_name="DOE^JANE",
        patient_id="P-1",
    )
    return [p.read_bytes() for p in paths]


def test_round_trip_is_byte_exact_and_ciphertext_only(archive: Archive, blobs: MemoryBlobStore) -> None:
    data = read("CT_small.dcm")
    outcome = archive.store(data)
    assert outcome.status == "stored"
    (record,) = archive.instances(outcome.study_uid or "")
    assert archive.read(record) == data
    (key,) = blobs.keys()
    stored = blobs.get(key)
    assert data[200:264] not in stored and b"CompressedSamples" not in stored
    assert outcome.sop_instance_uid not in key  # object keys reveal nothing about the instance


def test_batch_outcomes_are_per_instance(archive: Archive, ct_files: list[bytes]) -> None:
    altered = bytearray(ct_files[1])
    altered[-1] ^= 0xFF  # same SOP instance UID, different pixel bytes
    outcomes = archive.store_batch([ct_files[0], ct_files[0], b"not dicom", bytes(altered), ct_files[1]])
    assert [o.status for o in outcomes] == ["stored", "already_present", "failed", "stored", "failed"]
    assert isinstance(outcomes[4].error, Conflict)
    assert archive.store(ct_files[0]).status == "already_present"
    again = archive.store(ct_files[1])
    assert again.status == "failed" and isinstance(again.error, Conflict)
    record = archive.index.get_instance(outcomes[3].sop_instance_uid or "")
    assert record is not None and archive.read(record) == bytes(altered)  # never overwritten


def test_study_in_url_must_match(archive: Archive, ct_files: list[bytes]) -> None:
    outcome = archive.store(ct_files[0], study_uid="1.2.3.4")
    assert outcome.status == "failed" and isinstance(outcome.error, StudyMismatch)
    assert archive.index.count_instances() == 0


class FlakyBlobStore(MemoryBlobStore):
    def __init__(self, fail_on: int) -> None:
        super().__init__()
        self.calls = 0
        self.fail_on = fail_on

    def put(self, key: str, data: bytes) -> None:
        with self._lock:
            self.calls += 1
            fail = self.calls == self.fail_on
        if fail:
            raise StorageError("disk full")
        super().put(key, data)


def test_a_failed_object_write_indexes_nothing_for_that_instance(
    tmp_path: Path, keyring: Keyring, ct_files: list[bytes]
) -> None:
    blobs = FlakyBlobStore(fail_on=2)
    index = Index.open_sqlite(
        tmp_path / "i.db", cipher=FieldCipher(keyring.index_key), blind=BlindIndex(keyring.blind_index_key)
    )
    archive = Archive(index=index, blobs=blobs, keks=KeyringKekProvider(keyring))
    outcomes = archive.store_batch(ct_files[:3])  # objects are written in parallel: any one may fail
    assert sorted(o.status for o in outcomes) == ["failed", "stored", "stored"]
    (failed,) = [o for o in outcomes if o.status == "failed"]
    assert isinstance(failed.error, StorageError)
    assert index.count_instances() == 2 and len(blobs.keys()) == 2
    assert index.get_instance(failed.sop_instance_uid or "") is None
    archive.close()


def test_an_index_failure_removes_the_objects_of_the_batch(
    archive: Archive, blobs: MemoryBlobStore, ct_files: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(_items: object, **_kwargs: object) -> None:
        raise RuntimeError("database went away")

    monkeypatch.setattr(archive.index, "add_instances", broken)
    with pytest.raises(RuntimeError):
        archive.store_batch(ct_files)
    assert blobs.keys() == []


def test_sha256_recorded_at_ingest_is_checked_on_read(
    archive: Archive, blobs: MemoryBlobStore, ct_files: list[bytes]
) -> None:
    """Re-encrypting different plaintext with the right key passes GCM; the SHA-256 still catches it."""
    outcome = archive.store(ct_files[0])
    (record,) = archive.instances(outcome.study_uid or "", outcome.series_uid, outcome.sop_instance_uid)
    data_key = archive.keks.unwrap(record.wrapped_key, context=record.blob_key.encode())
    forged = bytearray(ct_files[0])
    forged[-10] ^= 0x01
    blobs.put(record.blob_key, encrypt_object(bytes(forged), data_key, object_id=record.blob_key.encode()))
    with pytest.raises(IntegrityError, match="integrity check"):
        archive.read(record)


def test_read_into_decrypts_in_place_and_refuses_damage(
    archive: Archive, blobs: MemoryBlobStore, ct_files: list[bytes]
) -> None:
    """What WADO uses to assemble a response without copies: the same checks as ``read``."""
    outcome = archive.store(ct_files[0])
    (record,) = archive.instances(outcome.study_uid or "", outcome.series_uid, outcome.sop_instance_uid)
    buffer = bytearray(record.size + 4)
    archive.read_into(record, memoryview(buffer)[2 : 2 + record.size])
    assert bytes(buffer[2:-2]) == ct_files[0] and buffer[:2] == buffer[-2:] == b"\0\0"
    with pytest.raises(IntegrityError, match="integrity check"):  # a buffer of the wrong size
        archive.read_into(record, memoryview(bytearray(record.size - 1)))
    damaged = bytearray(blobs.get(record.blob_key))
    damaged[len(damaged) // 2] ^= 0x40
    blobs.put(record.blob_key, bytes(damaged))
    with pytest.raises(IntegrityError, match="integrity check"):
        archive.read_into(record, memoryview(bytearray(record.size)))


def test_read_many_into_is_read_into_for_each_and_stops_at_damage(
    archive: Archive, blobs: MemoryBlobStore, ct_files: list[bytes]
) -> None:
    outcomes = archive.store_batch(ct_files)
    records = [archive.instances(o.study_uid or "", o.series_uid, o.sop_instance_uid)[0] for o in outcomes]
    buffers = [bytearray(r.size) for r in records]
    archive.read_many_into([(r, memoryview(b)) for r, b in zip(records, buffers, strict=True)])
    assert [bytes(b) for b in buffers] == ct_files  # each in its place, in order
    damaged = bytearray(blobs.get(records[2].blob_key))
    damaged[len(damaged) // 2] ^= 0x40
    blobs.put(records[2].blob_key, bytes(damaged))
    fresh = [bytearray(r.size) for r in records]
    with pytest.raises(IntegrityError, match="integrity check"):
        archive.read_many_into([(r, memoryview(b)) for r, b in zip(records, fresh, strict=True)])
    assert [bytes(b) for b in fresh[:2]] == ct_files[:2]  # those before it were served
    assert not any(any(b) for b in fresh[3:])  # nothing after it was decrypted


def test_frames_are_read_without_the_rest(archive: Archive) -> None:
    data = read("SC_rgb_rle_2frame.dcm")
    outcome = archive.store(data)
    (record,) = archive.instances(outcome.study_uid or "")
    ds = dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm", download=False))
    expected = list(generate_frames(ds.PixelData, number_of_frames=2))
    assert archive.read_frames(record, [2, 1]) == [expected[1], expected[0]]
    with pytest.raises(NotFound):
        archive.read_frames(record, [3])


def test_rotation_rewraps_keys_and_rewrites_no_object(
    archive: Archive, blobs: MemoryBlobStore, keyring: Keyring, ct_files: list[bytes]
) -> None:
    archive.store_batch(ct_files)
    before = {k: hashlib.sha256(blobs.get(k)).digest() for k in blobs.keys()}
    keyring.add_kek()
    assert archive.key_status().objects_per_kek == {"local-1": len(ct_files)}
    assert archive.rewrap_all() == len(ct_files)
    assert archive.key_status().objects_per_kek == {"local-2": len(ct_files)}
    assert {k: hashlib.sha256(blobs.get(k)).digest() for k in blobs.keys()} == before
    del keyring.keks[1]  # the old KEK is no longer needed to read anything
    for hit in archive.search("instance", []):
        uid = hit.attributes["00080018"]["Value"][0]
        record = archive.index.get_instance(uid)
        assert record is not None and record.wrapped_key.kek_id == "local-2"
        assert archive.read(record) in ct_files


def test_instance_lookups_at_every_level(archive: Archive, ct_files: list[bytes]) -> None:
    """Study, series, SOP instance and SOP-without-series lookups (each a prebuilt statement):
    the right rows in series then instance order, and a mismatched pair finds nothing."""
    outcomes = archive.store_batch(ct_files)
    study = outcomes[0].study_uid or ""
    series = sorted({o.series_uid for o in outcomes})
    everything = archive.instances(study)
    assert len(everything) == 6
    order = [r.series_uid for r in everything]
    assert order == sorted(order, key=order.index)  # each series' instances together
    for uid in series:
        in_series = archive.instances(study, uid)
        assert [r.sop_uid for r in in_series] == [r.sop_uid for r in everything if r.series_uid == uid]
        assert [r.instance_number for r in in_series] == sorted(r.instance_number or 0 for r in in_series)
    one = everything[4]
    assert archive.instances(study, one.series_uid, one.sop_uid) == [one]
    assert archive.index.find_instances(study, None, one.sop_uid) == [one]
    other_series = next(uid for uid in series if uid != one.series_uid)
    assert archive.index.find_instances(study, other_series, one.sop_uid) == []
    assert archive.index.find_instances("1.2.3.4", one.series_uid, one.sop_uid) == []


def test_delete_removes_rows_keys_and_objects(
    archive: Archive, blobs: MemoryBlobStore, ct_files: list[bytes]
) -> None:
    outcomes = archive.store_batch(ct_files)
    study = outcomes[0].study_uid or ""
    series = outcomes[0].series_uid
    assert archive.delete(study, series) == 3
    assert len(blobs.keys()) == 3
    assert archive.delete(study) == 3
    assert blobs.keys() == [] and archive.index.count_instances() == 0
    with pytest.raises(NotFound):
        archive.instances(study)
    assert archive.search("study", []) == []


def test_search_matches_on_encrypted_fields(archive: Archive, ct_files: list[bytes]) -> None:
    archive.store_batch(ct_files)
    by_id = archive.search("study", [parse_criterion("00100020", "LO", "P-1")])
    assert len(by_id) == 1
    assert archive.search("study", [parse_criterion("00100020", "LO", "P-2")]) == []
    assert len(archive.search("study", [parse_criterion("00100010", "PN", "doe^jane")])) == 1  # PN: any case
    assert len(archive.search("study", [parse_criterion("00100010", "PN", "D?E*")])) == 1
    assert len(archive.search("series", [parse_criterion("00100020", "LO", "P-1")])) == 2
    assert len(archive.search("instance", [], limit=4, offset=1)) == 4


def test_visibility_is_asked_only_for_matches_and_before_paging(archive: Archive, tmp_path: Path) -> None:
    """The policy is asked once per study the query would return (each answer is a ledgered
    decision), never for candidates that do not match; hidden studies do not count for offset."""
    for n, name in enumerate(["DOE^JANE", "DOE^JOHN", "ROE^RICHARD"]):
        paths = generate_study(tmp_path / name, seed=n, series=1, instances=2, rows=8, cols=8,
                               patient_name=name, patient_id=f"P-{n}")  # fmt: skip
        archive.store_batch([p.read_bytes() for p in paths])
    ids = {hit.attributes["00100020"]["Value"][0]: hit.study_id for hit in archive.search("study", [])}
    asked: list[int] = []

    patient_of = {study_id: patient for patient, study_id in ids.items()}

    def visible(facts: StudyFacts) -> bool:
        asked.append(facts.study_id)
        assert facts.patient == archive.index.pseudonym("00100020", patient_of[facts.study_id])
        return facts.study_id != ids["P-0"]

    doe = [parse_criterion("00100010", "PN", "DOE*")]
    hits = archive.search("instance", doe, visible=visible)
    assert sorted(asked) == sorted([ids["P-0"], ids["P-1"]])  # ROE never put to the policy
    assert {h.study_id for h in hits} == {ids["P-1"]} and len(hits) == 2
    assert len(archive.search("instance", doe, visible=visible, offset=1)) == 1
