"""Objects in an S3 bucket (AWS S3, SeaweedFS, MinIO, Ceph RGW): the archive's ciphertext under
its opaque keys, nothing else.

The archive encrypts every object before it reaches a ``BlobStore`` (a data key per object,
wrapped by the keyring) and names it with a keyed token, so the bucket holds no UIDs, no PHI and
no pixels; a bucket copied whole reveals nothing. Every read is checked by the envelope's
authentication tag, as for the folder store.

A PUT that S3 acknowledges is durable and atomic (readers see the whole object or none), so
``sync`` has nothing to do. Objects larger than the part size go up as a multipart upload, part
by part as the encryption produces them; a crash mid-upload leaves an incomplete upload (never a
visible object), which ``partial_writes`` lists for ``medvault fsck`` to abort. The store's
errors: ``NotFound`` for a missing object, ``StorageUnavailable`` (HTTP 503, DIMSE 0xA700) when
the endpoint cannot be reached or answers with a server error, ``StorageError`` otherwise;
messages name the bucket's endpoint, never a key's meaning (keys have none).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import boto3
import botocore.exceptions
from botocore.config import Config

from medvault.errors import ConfigError, NotFound, StorageError, StorageUnavailable
from medvault.storage.base import KEY_PATTERN, BlobInfo

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MIN_PART_SIZE = 5 * 1024 * 1024  # S3's smallest part (every part but the last)
_MULTIPART = "multipart:"
_UNREACHABLE = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ProxyConnectionError,
)
_MISSING = {"NoSuchKey", "404", "NotFound"}


@dataclass(frozen=True)
class S3Credentials:
    access_key_id: str
    secret_access_key: str

    @classmethod
    def read(cls, path: Path) -> S3Credentials:
        """A TOML file holding ``access_key_id`` and ``secret_access_key`` (mode 0600, outside
        the configuration: the configuration itself never holds a secret)."""
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read the S3 credentials file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"the S3 credentials file {path} is not valid TOML ({exc})") from None
        if path.stat().st_mode & 0o077:
            raise ConfigError(
                f"the S3 credentials file {path} is readable by other users", hint=f"chmod 600 {path}"
            )
        values = [raw.get(k) for k in ("access_key_id", "secret_access_key")]
        if not all(isinstance(v, str) and v for v in values):
            raise ConfigError(
                f"the S3 credentials file {path} must set access_key_id and secret_access_key (strings)"
            )
        return cls(str(values[0]), str(values[1]))


class S3BlobStore:
    """A ``BlobStore`` in one bucket, every key under ``prefix``. Thread-safe (one boto3 client,
    a connection pool shared by the archive's writer threads)."""

    def __init__(self, client: S3Client, bucket: str, *, prefix: str = "", part_size: int = 16 << 20) -> None:
        if part_size < MIN_PART_SIZE:
            raise ConfigError(f"the S3 part size must be at least {MIN_PART_SIZE >> 20} MiB")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = part_size
        self._where = f"{client.meta.endpoint_url}/{bucket}"

    @classmethod
    def connect(
        cls,
        *,
        endpoint: str,
        bucket: str,
        region: str = "us-east-1",
        prefix: str = "",
        path_style: bool = False,
        ca_file: Path | None = None,
        credentials: S3Credentials | None = None,
        plain_http: bool = False,
        part_size: int = 16 << 20,
        timeout: float = 10.0,
    ) -> S3BlobStore:
        """A store on ``endpoint``, checked at once: the bucket must exist and accept these
        credentials (a typo fails here, not at the first image). Without ``credentials``, boto3's
        own chain is used (AWS_* environment variables, ~/.aws, an instance role)."""
        url = urlsplit(endpoint)
        if url.username is not None or url.password is not None or url.query or url.fragment:
            raise ConfigError(
                "[storage] endpoint must be a plain https://host[:port] URL "
                "(no credentials, query or fragment)",
                hint="Credentials go in [storage] credentials_file or the AWS_* variables, never in the URL.",
            )
        if url.scheme not in ("https", "http") or not url.hostname:
            raise ConfigError(f"[storage] endpoint {endpoint!r} is not an http(s) URL")
        if url.scheme == "http" and not plain_http:
            raise ConfigError(
                f"[storage] endpoint {endpoint} is plain HTTP: requests would cross the network "
                "unprotected (the objects are encrypted; their names, sizes and the signed requests are not)",
                hint="Use the store's https:// endpoint (with [storage] ca_file for a private CA), or set "
                "[storage] plain_http = true for an isolated test network only.",
            )
        if not bucket:
            raise ConfigError("[storage] bucket is not set", hint="Name the bucket the archive writes to.")
        if ca_file is not None and not ca_file.is_file():
            raise ConfigError(
                f"[storage] ca_file {ca_file} does not exist", hint="Give the PEM file of the CA."
            )
        if prefix and not prefix.endswith("/"):
            raise ConfigError(f"[storage] prefix {prefix!r} must end with '/'")
        config = Config(
            region_name=region,
            signature_version="s3v4",
            s3={"addressing_style": "path" if path_style else "virtual"},
            connect_timeout=timeout,
            read_timeout=max(timeout, 30.0),
            retries={"max_attempts": 3, "mode": "standard"},
            max_pool_connections=32,
        )
        keys: dict[str, Any] = {}
        if credentials is not None:
            keys = {
                "aws_access_key_id": credentials.access_key_id,
                "aws_secret_access_key": credentials.secret_access_key,
            }
        verify: str | bool = str(ca_file) if ca_file is not None else True
        client = boto3.session.Session().client(
            "s3", endpoint_url=endpoint, config=config, verify=verify, **keys
        )
        store = cls(client, bucket, prefix=prefix, part_size=part_size)
        store.check()
        return store

    # -- the BlobStore port ---------------------------------------------------------------------

    def put(self, key: str, data: bytes) -> None:
        self.put_chunks(key, (data,))

    def put_chunks(self, key: str, chunks: Iterable[bytes | bytearray]) -> None:
        """One PUT for an object up to the part size; larger ones as a multipart upload, a part
        sent as soon as it is full (at most one part and one chunk held)."""
        name = self._name(key)
        buffer = bytearray()
        upload: _Upload | None = None
        try:
            for chunk in chunks:
                buffer += chunk
                while len(buffer) >= self.part_size:
                    if upload is None:
                        upload = _Upload.start(self, name)
                    upload.send(bytes(buffer[: self.part_size]))
                    del buffer[: self.part_size]
            if upload is None:
                self._call(self.client.put_object, Bucket=self.bucket, Key=name, Body=bytes(buffer))
                return
            if buffer or not upload.parts:
                upload.send(bytes(buffer))
            upload.complete()
        except BaseException:
            if upload is not None:
                upload.abort()
            raise

    def get(self, key: str) -> bytes:
        response = self._call(self.client.get_object, Bucket=self.bucket, Key=self._name(key))
        return self._read_body(response)

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        if length <= 0:
            return b""
        try:
            response = self._call(
                self.client.get_object,
                Bucket=self.bucket,
                Key=self._name(key),
                Range=f"bytes={offset}-{offset + length - 1}",
            )
        except _RangeNotSatisfiable:  # at or past the end: no bytes, as a file read gives
            if self.exists(key):
                return b""
            raise NotFound("object not found in storage") from None
        return self._read_body(response)

    def sync(self) -> None:
        """Nothing to do: S3 acknowledges a PUT once it is durable."""

    def delete(self, key: str) -> None:
        self._call(self.client.delete_object, Bucket=self.bucket, Key=self._name(key))

    def exists(self, key: str) -> bool:
        try:
            self._call(self.client.head_object, Bucket=self.bucket, Key=self._name(key))
        except NotFound:
            return False
        return True

    def list_objects(self) -> Iterator[BlobInfo]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix)
        for page in self._pages(pages):
            for item in page.get("Contents", []):
                key = item["Key"][len(self.prefix) :]
                if KEY_PATTERN.match(key):
                    yield BlobInfo(key, int(item["Size"]), item["LastModified"].timestamp())

    def partial_writes(self, *, older_than: float) -> list[str]:
        """Multipart uploads that were never completed (a crash mid-upload), started before
        ``older_than``: ``multipart:<key>:<upload id>``."""
        pages = self.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        )
        found = []
        for page in self._pages(pages):
            for upload in page.get("Uploads", []):
                key = upload["Key"][len(self.prefix) :]
                if KEY_PATTERN.match(key) and upload["Initiated"].timestamp() < older_than:
                    found.append(f"{_MULTIPART}{key}:{upload['UploadId']}")
        return sorted(found)

    def remove_partial(self, name: str) -> None:
        key, sep, upload_id = name.removeprefix(_MULTIPART).partition(":")
        if not name.startswith(_MULTIPART) or not sep or not upload_id or not KEY_PATTERN.match(key):
            raise StorageError("not the name of a partial write")
        try:
            self._call(
                self.client.abort_multipart_upload,
                Bucket=self.bucket,
                Key=self.prefix + key,
                UploadId=upload_id,
            )
        except NotFound:  # aborted or completed meanwhile
            pass

    # -- plumbing ---------------------------------------------------------------------------------

    def check(self) -> None:
        """The bucket exists and these credentials may use it."""
        try:
            self._call(self.client.head_bucket, Bucket=self.bucket)
        except NotFound:
            raise ConfigError(
                f"the bucket {self.bucket!r} does not exist at {self.client.meta.endpoint_url}",
                hint="Create it first (the archive does not create buckets), or fix [storage] bucket.",
            ) from None
        except _Refused as exc:
            raise ConfigError(
                f"object storage at {self._where} refused the archive's credentials ({exc})",
                hint="Check [storage] credentials_file (or the AWS_* variables) and the bucket's policy.",
            ) from None

    def _name(self, key: str) -> str:
        if not KEY_PATTERN.match(key):
            raise StorageError("invalid object key")
        return self.prefix + key

    def _read_body(self, response: Any) -> bytes:
        try:
            data: bytes = response["Body"].read()
        except (*_UNREACHABLE, botocore.exceptions.ResponseStreamingError):
            raise StorageUnavailable(f"object storage at {self._where} broke off a read") from None
        return data

    def _pages(self, pages: Iterable[Any]) -> Iterator[Any]:
        iterator = iter(pages)
        while True:
            try:
                page = self._call(next, iterator)
            except StopIteration:
                return
            yield page

    def _call(self, operation: Any, *args: Any, **kwargs: Any) -> Any:
        """``operation(...)``, its failures as the archive's errors."""
        try:
            return operation(*args, **kwargs)
        except _UNREACHABLE:
            raise StorageUnavailable(f"object storage at {self._where} cannot be reached") from None
        except botocore.exceptions.ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
            if code in _MISSING or status == 404:
                raise NotFound("object not found in storage") from None
            if code == "InvalidRange" or status == 416:
                raise _RangeNotSatisfiable from None
            if status in (401, 403):
                raise _Refused(code or str(status)) from None
            if status >= 500 or code in ("SlowDown", "ServiceUnavailable", "RequestTimeout"):
                raise StorageUnavailable(
                    f"object storage at {self._where} is failing ({code or status})"
                ) from None
            raise StorageError(
                f"object storage at {self._where} refused a request ({code or status})"
            ) from None
        except botocore.exceptions.SSLError:
            raise StorageUnavailable(
                f"the TLS certificate of object storage at {self._where} did not verify",
            ) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise StorageError(f"object storage at {self._where}: {type(exc).__name__}") from None


class _RangeNotSatisfiable(Exception):
    pass


class _Refused(StorageError):
    """The endpoint refused the credentials (401/403)."""

    def __init__(self, code: str) -> None:
        super().__init__(f"object storage refused the request ({code})")
        self.code = code

    def __str__(self) -> str:
        return self.code


@dataclass
class _Upload:
    """One multipart upload in progress."""

    store: S3BlobStore
    name: str
    upload_id: str
    parts: list[dict[str, Any]]

    @classmethod
    def start(cls, store: S3BlobStore, name: str) -> _Upload:
        created = store._call(store.client.create_multipart_upload, Bucket=store.bucket, Key=name)
        return cls(store, name, str(created["UploadId"]), [])

    def send(self, data: bytes) -> None:
        number = len(self.parts) + 1
        sent = self.store._call(
            self.store.client.upload_part,
            Bucket=self.store.bucket,
            Key=self.name,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=data,
        )
        self.parts.append({"PartNumber": number, "ETag": sent["ETag"]})

    def complete(self) -> None:
        self.store._call(
            self.store.client.complete_multipart_upload,
            Bucket=self.store.bucket,
            Key=self.name,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": self.parts},
        )

    def abort(self) -> None:
        """Best effort: a failed abort leaves an incomplete upload for ``medvault fsck``."""
        try:
            self.store.client.abort_multipart_upload(
                Bucket=self.store.bucket, Key=self.name, UploadId=self.upload_id
            )
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            pass
