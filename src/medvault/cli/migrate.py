"""`medvault migrate --storage s3://…`: move a home's objects from its folder into an S3 bucket."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from medvault.cli._common import (
    HomeOption,
    PassphraseFile,
    check_objects,
    err,
    open_for_cli,
    out,
    record_change,
)
from medvault.errors import ConfigError
from medvault.ledger.events import EventKind


def migrate_command(
    storage: Annotated[
        str,
        typer.Option(
            "--storage", help="The bucket to move the objects into: s3://BUCKET or s3://BUCKET/PREFIX/."
        ),
    ],
    endpoint: Annotated[
        str, typer.Option("--endpoint", help="The object store's https:// URL (e.g. https://s3.example.org).")
    ],
    region: Annotated[str, typer.Option(help="The signing region.")] = "us-east-1",
    path_style: Annotated[
        bool, typer.Option("--path-style", help="Buckets in the path (SeaweedFS, MinIO), not the host name.")
    ] = False,
    ca_file: Annotated[
        Path | None,
        typer.Option(help="PEM of the CA that signs the store's certificate (default: the system's CAs)."),
    ] = None,
    credentials_file: Annotated[
        Path | None,
        typer.Option(
            help="TOML with access_key_id and secret_access_key, mode 0600 (default: AWS_* variables)."
        ),
    ] = None,
    plain_http: Annotated[
        bool, typer.Option("--plain-http", help="Allow an http:// endpoint: an isolated test network only.")
    ] = False,
    home: HomeOption = Path("medvault-home"),
    passphrase_file: PassphraseFile = None,
) -> None:
    """Copy every object into an S3 bucket, check each copy, then switch [storage] to the bucket
    and check every object against the ledger. Stop `medvault serve` first. Running it again
    resumes: objects already in the bucket are not sent twice. The home's objects folder is left
    as it was (ciphertext only); remove it once the archive serves from the bucket."""
    from medvault.config import write_settings
    from medvault.migrate import copy_objects
    from medvault.storage.filesystem import FilesystemBlobStore
    from medvault.storage.s3 import S3BlobStore, S3Credentials

    bucket, prefix = _bucket_and_prefix(storage)
    opened = open_for_cli(home, passphrase_file)
    try:
        current = opened.settings.storage
        if current.backend == "s3" and (current.bucket, current.prefix, current.endpoint) != (
            bucket,
            prefix,
            endpoint,
        ):
            raise ConfigError(
                f"this home already keeps its objects in s3://{current.bucket}/{current.prefix}",
                hint="`medvault migrate` moves objects from the home's folder; it does not copy one bucket "
                "to another (use the object store's replication).",
            )
        target = S3BlobStore.connect(
            endpoint=endpoint,
            bucket=bucket,
            region=region,
            prefix=prefix,
            path_style=path_style,
            ca_file=ca_file,
            credentials=S3Credentials.read(credentials_file) if credentials_file else None,
            plain_http=plain_http,
            part_size=current.part_size_mb << 20,
        )
        source = FilesystemBlobStore(opened.root / current.objects, fsync=False)
        keys = sorted(opened.archive.index.blob_keys())
        sizes = {info.key: info.size for info in target.list_objects()}
        with Progress(
            TextColumn("[bold]copying and checking objects"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err,
        ) as progress:
            task = progress.add_task("objects", total=len(keys))
            report = copy_objects(
                source, target, keys, sizes=sizes, progress=lambda n: progress.advance(task, n)
            )
        if report.missing_in_source:
            raise ConfigError(
                f"{len(report.missing_in_source)} objects the index names are not in {source.root}; "
                "nothing was switched",
                hint="Run `medvault fsck` to see them; the copy so far is kept and a rerun resumes it.",
            )
        write_settings(
            opened.root,
            "storage",
            {
                "endpoint": endpoint,
                "bucket": bucket,
                "prefix": prefix,
                "region": region,
                "path_style": path_style,
                "ca_file": str(ca_file.resolve()) if ca_file else "",
                "credentials_file": str(credentials_file.resolve()) if credentials_file else "",
                "plain_http": plain_http,
                "backend": "s3",
            },
        )
        record_change(
            opened, EventKind.CONFIG_CHANGE, "storage.migrate", "storage", f"s3://{bucket}/{prefix}"
        )
    finally:
        opened.close()
    out.print(
        f"{report.objects} objects: {report.copied} copied ({report.bytes_copied:,} bytes), "
        f"{report.already_there} already in the bucket, {report.verified} checked byte for byte; "
        f"[storage] now uses s3://{bucket}/{prefix}",
        highlight=False,
        soft_wrap=True,
    )
    reopened = open_for_cli(home, passphrase_file)  # the home as it opens from now on: on the bucket
    try:
        problems = check_objects(reopened)
    finally:
        reopened.close()
    if problems:
        raise typer.Exit(1)
    out.print(
        f"The objects folder {opened.root / current.objects} is no longer used: remove it once you are sure."
    )


def _bucket_and_prefix(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(f"--storage {url!r} is not s3://BUCKET or s3://BUCKET/PREFIX/")
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""
