"""`[storage] backend = "s3"` against a real S3 (SeaweedFS over HTTPS): the BlobStore contract,
multipart uploads, refusals at connect, an unreachable store, and the archive end to end — the
bucket, listed and downloaded whole, holds no PHI and no pixels."""

from __future__ import annotations

import os
import secrets
import sqlite3
import ssl
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import httpx
import pytest
from botocore.config import Config
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE

from medvault.errors import ConfigError, StorageError, StorageUnavailable
from medvault.storage.s3 import MIN_PART_SIZE, S3BlobStore, S3Credentials
from tests.blob_contract import check_round_trip
from tests.conftest import Home, Server, free_port
from tests.integration.test_at_rest import PHI, make_phi_study, phi_needles, pixel_chunks
from tests.seaweed import ACCESS_KEY, SECRET_KEY, Seaweed, start_seaweed, use_s3

pytestmark = pytest.mark.integration

KEYS = S3Credentials(ACCESS_KEY, SECRET_KEY)


def _bucket(seaweed: Seaweed) -> str:
    return seaweed.make_bucket(f"t-{secrets.token_hex(6)}")


def _store(seaweed: Seaweed, bucket: str, *, prefix: str = "", part_size: int = 16 << 20) -> S3BlobStore:
    return S3BlobStore.connect(
        endpoint=seaweed.endpoint,
        bucket=bucket,
        prefix=prefix,
        path_style=True,
        ca_file=seaweed.ca,
        credentials=KEYS,
        part_size=part_size,
    )


def test_objects_round_trip(seaweed: Seaweed) -> None:
    check_round_trip(_store(seaweed, _bucket(seaweed), prefix="archive/"))


def test_listing_sees_only_the_archives_objects_under_its_prefix(seaweed: Seaweed) -> None:
    bucket = _bucket(seaweed)
    store = _store(seaweed, bucket, prefix="archive/")
    keys = sorted(f"obj{i:04d}{secrets.token_hex(4)}" for i in range(1005))  # more than one page
    for key in keys:
        store.put(key, key.encode())
    raw = seaweed.client()
    raw.put_object(Bucket=bucket, Key="elsewhere/abcdefgh12345678", Body=b"not ours")
    raw.put_object(Bucket=bucket, Key="archive/not a key", Body=b"not ours")
    listed = list(store.list_objects())
    assert [i.key for i in listed] == keys
    assert all(i.size == len(i.key) and abs(i.modified - time.time()) < 600 for i in listed)


def test_large_objects_go_up_in_parts_and_come_back_whole(seaweed: Seaweed) -> None:
    store = _store(seaweed, _bucket(seaweed), part_size=MIN_PART_SIZE)
    data = os.urandom(2 * MIN_PART_SIZE + 12345)
    chunks = [data[i : i + 1_000_003] for i in range(0, len(data), 1_000_003)]
    store.put_chunks("multipart0000001", iter(chunks))
    assert store.get("multipart0000001") == data
    assert (
        store.read_range("multipart0000001", MIN_PART_SIZE - 3, 6)
        == data[MIN_PART_SIZE - 3 : MIN_PART_SIZE + 3]
    )
    exact = os.urandom(MIN_PART_SIZE)  # exactly one part: one PUT, no empty last part
    store.put_chunks("multipart0000002", [exact])
    assert store.get("multipart0000002") == exact
    assert store.partial_writes(older_than=time.time() + 60) == []


def test_an_upload_that_fails_midway_leaves_no_object_and_no_upload(seaweed: Seaweed) -> None:
    store = _store(seaweed, _bucket(seaweed), part_size=MIN_PART_SIZE)

    def chunks() -> Iterator[bytes]:
        yield os.urandom(MIN_PART_SIZE + 10)  # one part goes up
        raise OSError("the encryption's source broke")

    with pytest.raises(OSError, match="broke"):
        store.put_chunks("interrupted00001", chunks())
    assert not store.exists("interrupted00001")
    assert store.partial_writes(older_than=time.time() + 60) == []  # aborted, not left behind


def test_a_crashed_upload_is_listed_and_removed_by_fsck_calls(seaweed: Seaweed) -> None:
    bucket = _bucket(seaweed)
    store = _store(seaweed, bucket, prefix="p/")
    raw = seaweed.client()
    upload = raw.create_multipart_upload(Bucket=bucket, Key="p/crashed00000001")["UploadId"]
    raw.upload_part(Bucket=bucket, Key="p/crashed00000001", UploadId=upload, PartNumber=1, Body=b"x" * 100)
    assert store.partial_writes(older_than=time.time() - 3600) == []  # too young: maybe in flight
    (name,) = store.partial_writes(older_than=time.time() + 60)
    assert name == f"multipart:crashed00000001:{upload}"
    store.remove_partial(name)
    assert store.partial_writes(older_than=time.time() + 60) == []
    store.remove_partial(name)  # gone already: not an error
    for bad in ("crashed00000001", "multipart:../x:1", "multipart:crashed00000001:"):
        with pytest.raises(StorageError):
            store.remove_partial(bad)


def test_connect_refuses_what_would_go_wrong_later(seaweed: Seaweed, tmp_path: Path) -> None:
    bucket = _bucket(seaweed)
    with pytest.raises(ConfigError, match="plain HTTP"):
        S3BlobStore.connect(
            endpoint=f"http://127.0.0.1:{seaweed.ports['s3']}", bucket=bucket, credentials=KEYS
        )
    with pytest.raises(ConfigError, match="does not exist"):
        _store(seaweed, "no-such-bucket-here")
    with pytest.raises(ConfigError, match="refused the archive's credentials"):
        S3BlobStore.connect(
            endpoint=seaweed.endpoint,
            bucket=bucket,
            path_style=True,
            ca_file=seaweed.ca,
            credentials=S3Credentials(ACCESS_KEY, "wrong-secret-0123456789"),
        )
    with pytest.raises(StorageUnavailable, match="did not verify"):  # the system's CAs do not know it
        S3BlobStore.connect(endpoint=seaweed.endpoint, bucket=bucket, path_style=True, credentials=KEYS)
    with pytest.raises(ConfigError, match="no credentials, query or fragment"):  # never a secret in a URL
        S3BlobStore.connect(endpoint=f"https://{ACCESS_KEY}:{SECRET_KEY}@127.0.0.1:1", bucket=bucket)
    with pytest.raises(ConfigError) as leaked:
        S3BlobStore.connect(endpoint=f"ftp://{ACCESS_KEY}:{SECRET_KEY}@127.0.0.1:1", bucket=bucket)
    assert SECRET_KEY not in str(leaked.value) + leaked.value.hint
    with pytest.raises(ConfigError, match=r"ca_file .* does not exist"):
        S3BlobStore.connect(endpoint=seaweed.endpoint, bucket=bucket, ca_file=tmp_path / "none.pem")
    with pytest.raises(ConfigError, match="must end with '/'"):
        _store(seaweed, bucket, prefix="archive")
    with pytest.raises(ConfigError, match="at least 5 MiB"):
        _store(seaweed, bucket, part_size=1 << 20)
    # plain HTTP only when asked for, in so many words
    plain = S3BlobStore.connect(
        endpoint=f"http://127.0.0.1:{seaweed.ports['s3']}",
        bucket=bucket,
        path_style=True,
        credentials=KEYS,
        plain_http=True,
    )
    plain.put("plainhttp0000001", b"x")
    assert plain.get("plainhttp0000001") == b"x"


def test_credentials_file_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "s3.toml"
    path.write_text('access_key_id = "a"\nsecret_access_key = "b"\n')
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by other users"):
        S3Credentials.read(path)
    path.chmod(0o600)
    assert S3Credentials.read(path) == S3Credentials("a", "b")
    path.write_text('access_key_id = "a"\n')
    with pytest.raises(ConfigError, match="must set access_key_id and secret_access_key"):
        S3Credentials.read(path)
    path.write_text("not toml = = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        S3Credentials.read(path)
    with pytest.raises(ConfigError, match="cannot read"):
        S3Credentials.read(tmp_path / "missing.toml")


def test_an_unreachable_store_is_unavailable_not_a_crash() -> None:
    port = free_port()  # nothing listens here
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=f"https://127.0.0.1:{port}",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(region_name="us-east-1", connect_timeout=1, retries={"max_attempts": 1}),
    )
    unreachable = S3BlobStore(client, "bucket")
    for call in (
        lambda: unreachable.put("abcdef0123456789", b"x"),
        lambda: unreachable.get("abcdef0123456789"),
        lambda: unreachable.exists("abcdef0123456789"),
        lambda: list(unreachable.list_objects()),
    ):
        with pytest.raises(StorageUnavailable, match="cannot be reached") as info:
            call()
        assert info.value.http_status == 503 and info.value.failure_reason == 0xA700


# -- the archive on S3 -------------------------------------------------------------------------


def _stow(client: httpx.Client, files: list[Path]) -> httpx.Response:
    body = b"".join(
        b"--b\r\nContent-Type: application/dicom\r\n\r\n" + f.read_bytes() + b"\r\n" for f in files
    )
    return client.post(
        "/dicomweb/studies",
        content=body + b"--b--\r\n",
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
    )


def test_the_archive_on_s3_keeps_no_phi_and_no_pixels_in_the_bucket(
    home: Home, seaweed: Seaweed, tmp_path: Path, server_factory: Callable[[Home], Server]
) -> None:
    bucket = _bucket(seaweed)
    use_s3(home, seaweed, bucket)
    files = make_phi_study(tmp_path / "incoming", series=2, instances=4)
    home.cli("import", str(tmp_path / "incoming"))
    stowed = make_phi_study(tmp_path / "stow", seed=12, series=1, instances=2)
    server = server_factory(home)
    with server.client() as client:
        assert _stow(client, stowed).status_code == 200
        study = dcmread(files[0]).StudyInstanceUID
        got = client.get(
            f"/dicomweb/studies/{study}",
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
        assert got.status_code == 200 and got.content.count(b"DICM") == len(files)
        for f in files:  # byte for byte, from the bucket
            assert dcmread(f).PixelData in got.content
    assert not list((home.root / "objects").glob("*/*")), "nothing went to the local folder"
    raw = seaweed.client()
    listed = raw.list_objects_v2(Bucket=bucket)["Contents"]
    assert len(listed) == len(files) + len(stowed)
    needles, chunks = phi_needles(), pixel_chunks([*files, *stowed])
    for item in listed:
        name = item["Key"]
        assert name.startswith("medvault/")
        for uid in (dcmread(files[0]).StudyInstanceUID, dcmread(files[0]).SOPInstanceUID):
            assert uid not in name  # keyed names: no UIDs
        data = raw.get_object(Bucket=bucket, Key=name)["Body"].read()
        assert not [n for n in needles if n in data], name
        assert not any(data[o : o + 32] in chunks for o in range(len(data) - 31)), name
    assert PHI["PatientID"].encode() not in b"".join(i["Key"].encode() for i in listed)
    verify = home.cli("ledger", "verify")  # every object, read back from the bucket and decrypted
    stored = len(files) + len(stowed)
    assert f"objects: {stored} of {stored} match their store events" in verify.stdout, verify.stdout
    fsck = home.cli("fsck")
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    # a backup that would leave the images out is refused, not written
    refused = home.cli("backup", "create", str(tmp_path / "backup"), check=False)
    assert refused.returncode == 1 and "does not copy" in refused.stderr, refused.stderr
    assert not (tmp_path / "backup").exists()


def _c_store(home: Home, creds: Path, path: Path) -> int:
    """One C-STORE over mutual TLS to the served archive's DIMSE port: the response status."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(home.ca))
    context.load_cert_chain(creds / "ct1.crt", creds / "ct1.key")
    ds = dcmread(path)
    ae = AE(ae_title="CT1")
    ae.add_requested_context(ds.SOPClassUID, ExplicitVRLittleEndian)
    port = tomllib.loads((home.root / "medvault.toml").read_text())["dimse"]["port"]
    deadline = time.monotonic() + 20
    while True:  # the DIMSE worker may still be starting
        assoc = ae.associate("127.0.0.1", port, ae_title="MEDVAULT", tls_args=(context, "localhost"))
        if assoc.is_established or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
        return int(status.Status)
    finally:
        assoc.release()


def test_the_archive_answers_503_while_s3_is_down_and_recovers_without_a_restart(
    home: Home, tmp_path: Path, server_factory: Callable[[Home], Server]
) -> None:
    """STOW gets 503, C-STORE 0xA700 (the sender retries), a retrieve 503, nothing is indexed;
    once the store is back the same server stores and serves again."""
    own = start_seaweed(tmp_path / "weed")  # its own S3: stopping it must not disturb other tests
    try:
        bucket = _bucket(own)
        use_s3(home, own, bucket)
        home.cli(
            "nodes", "add", "ct1", "--ae-title", "CT1", "--host", "127.0.0.1", "--port", "104",
            "--permissions", "store", "--out", str(tmp_path / "creds"),
        )  # fmt: skip
        first, second, third = (
            make_phi_study(tmp_path / f"s{i}", seed=20 + i, series=1, instances=2) for i in (1, 2, 3)
        )
        server = server_factory(home)
        with server.client() as client:
            assert _stow(client, first).status_code == 200
            assert _c_store(home, tmp_path / "creds", third[0]) == 0x0000
            own.stop()
            down = _stow(client, second)
            assert down.status_code == 503, down.text
            assert _c_store(home, tmp_path / "creds", third[1]) == 0xA700
            study = dcmread(second[0]).StudyInstanceUID
            assert client.get("/dicomweb/studies", params={"StudyInstanceUID": study}).json() == []
            instance = dcmread(third[1]).SOPInstanceUID
            assert not client.get("/dicomweb/instances", params={"SOPInstanceUID": instance}).json()
            frames = client.get(
                f"/dicomweb/studies/{dcmread(first[0]).StudyInstanceUID}",
                headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
            )
            assert frames.status_code == 503, frames.text
            assert "cannot be reached" in frames.json()["error"]
            own.start()
            again = _stow(client, second)
            assert again.status_code == 200, again.text
            assert len(client.get("/dicomweb/studies", params={"StudyInstanceUID": study}).json()) == 1
            assert _c_store(home, tmp_path / "creds", third[1]) == 0x0000
            assert client.get("/dicomweb/instances", params={"SOPInstanceUID": instance}).json()
    finally:
        own.stop()


# -- medvault migrate --storage -----------------------------------------------------------------


def _migrate_args(seaweed: Seaweed, home: Home, url: str) -> list[str]:
    creds = home.root.parent / "target-credentials.toml"
    creds.write_text(f'access_key_id = "{ACCESS_KEY}"\nsecret_access_key = "{SECRET_KEY}"\n')
    creds.chmod(0o600)
    return [
        "migrate", "--storage", url, "--endpoint", seaweed.endpoint, "--path-style",
        "--ca-file", str(seaweed.ca), "--credentials-file", str(creds),
    ]  # fmt: skip


def test_migrate_moves_an_embedded_home_into_a_bucket_and_resumes(
    home: Home, seaweed: Seaweed, tmp_path: Path, server_factory: Callable[[Home], Server]
) -> None:
    files = make_phi_study(tmp_path / "incoming", series=2, instances=5)
    home.cli("import", str(tmp_path / "incoming"))
    local = sorted(p for p in (home.root / "objects").glob("*/*") if not p.name.startswith("."))
    assert len(local) == len(files)
    bucket = _bucket(seaweed)
    # a run that stopped midway: some objects are in the bucket already, one of them damaged
    seeded = S3BlobStore.connect(
        endpoint=seaweed.endpoint, bucket=bucket, prefix="site/", path_style=True, ca_file=seaweed.ca,
        credentials=KEYS,
    )  # fmt: skip
    for path in local[:4]:
        seeded.put(path.name, path.read_bytes())
    damaged = bytearray(local[4].read_bytes())
    damaged[100] ^= 1
    seeded.put(local[4].name, bytes(damaged))
    moved = home.cli(*_migrate_args(seaweed, home, f"s3://{bucket}/site"))
    assert f"{len(files)} objects: {len(files) - 4} copied" in moved.stdout, moved.stdout
    assert "4 already in the bucket" in moved.stdout and f"{len(files)} checked byte for byte" in moved.stdout
    assert f"objects: {len(files)} of {len(files)} match their store events" in moved.stdout
    config = tomllib.loads((home.root / "medvault.toml").read_text())["storage"]
    assert (config["backend"], config["bucket"], config["prefix"]) == ("s3", bucket, "site/")
    assert sorted(i.key for i in seeded.list_objects()) == [p.name for p in local]
    assert seeded.get(local[4].name) == local[4].read_bytes()  # the damaged copy was replaced
    # the home now serves from the bucket: empty the folder to be sure nothing is read from it
    for path in local:
        path.unlink()
    server = server_factory(home)
    with server.client() as client:
        study = dcmread(files[0]).StudyInstanceUID
        got = client.get(
            f"/dicomweb/studies/{study}",
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
        assert got.status_code == 200
        assert all(dcmread(f).PixelData in got.content for f in files)
    server.stop()
    again = home.cli(*_migrate_args(seaweed, home, f"s3://{bucket}/site/"), check=False)
    assert again.returncode == 1 and "are not in" in again.stderr  # the folder is gone: nothing to move
    verify = home.cli("ledger", "verify")
    assert f"objects: {len(files)} of {len(files)} match" in verify.stdout
    ledger = sqlite3.connect(home.root / "ledger.db")
    leaves = [bytes(d) for (d,) in ledger.execute("SELECT data FROM entries")]
    ledger.close()
    assert any(b'"storage.migrate"' in leaf for leaf in leaves)


def test_migrate_refuses_and_switches_nothing(home: Home, seaweed: Seaweed, tmp_path: Path) -> None:
    home.cli("import", str(make_phi_study(tmp_path / "in", series=1, instances=2)[0].parent))
    before = (home.root / "medvault.toml").read_text()
    bucket = _bucket(seaweed)
    for url, words in (
        (f"https://{bucket}", "is not s3://BUCKET"),
        ("s3://no-such-bucket-at-all", "does not exist"),
    ):
        refused = home.cli(*_migrate_args(seaweed, home, url), check=False)
        assert refused.returncode == 1 and words in refused.stderr, refused.stderr
    next(p for p in (home.root / "objects").glob("*/*") if not p.name.startswith(".")).unlink()
    refused = home.cli(*_migrate_args(seaweed, home, f"s3://{bucket}"), check=False)
    assert refused.returncode == 1 and "1 objects the index names are not in" in refused.stderr
    assert (home.root / "medvault.toml").read_text() == before


def test_an_object_changed_or_swapped_in_the_bucket_is_never_served(
    home: Home, seaweed: Seaweed, tmp_path: Path, server_factory: Callable[[Home], Server]
) -> None:
    """Someone with write access to the bucket (but no keys) flips a byte, then swaps two objects:
    the envelope's authentication (its key bound to the instance) refuses both, never serving a
    byte of them."""
    bucket = _bucket(seaweed)
    use_s3(home, seaweed, bucket)
    files = make_phi_study(tmp_path / "in", series=1, instances=2)
    server = server_factory(home)
    raw = seaweed.client()
    accept = {"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    with server.client() as client:
        assert _stow(client, files).status_code == 200
        names = sorted(i["Key"] for i in raw.list_objects_v2(Bucket=bucket)["Contents"])
        blobs = {n: raw.get_object(Bucket=bucket, Key=n)["Body"].read() for n in names}
        ds = [dcmread(f) for f in files]
        urls = [
            f"/dicomweb/studies/{d.StudyInstanceUID}/series/{d.SeriesInstanceUID}/instances/{d.SOPInstanceUID}"
            for d in ds
        ]
        flipped = bytearray(blobs[names[0]])
        flipped[len(flipped) // 2] ^= 1
        raw.put_object(Bucket=bucket, Key=names[0], Body=bytes(flipped))
        raw.put_object(Bucket=bucket, Key=names[1], Body=blobs[names[0]])  # a valid object, wrong place
        for url, d in zip(urls, ds, strict=True):
            got = client.get(url, headers=accept)
            assert got.status_code == 500 and "integrity" in got.json()["error"], (url, got.status_code)
            assert d.PixelData[:64] not in got.content
        for name, data in blobs.items():  # put back: served again
            raw.put_object(Bucket=bucket, Key=name, Body=data)
        assert all(client.get(u, headers=accept).status_code == 200 for u in urls)
