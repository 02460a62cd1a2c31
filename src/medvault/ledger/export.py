"""Export the ledger for a SIEM: JSON Lines, or IHE ATNA audit messages; to a file or over syslog.

:func:`export_ledger` streams the entries from ``since_index`` up to the ledger's size when the
export starts, in index order:

* ``fmt="jsonl"`` — each entry's exact leaf bytes (RFC 8785 JSON), one per line, so every line can
  be hashed (``SHA-256(0x00 || line)``) and checked against the Merkle tree with an inclusion proof;
* ``fmt="atna"`` — each entry as a DICOM PS3.15 A.5 ``AuditMessage`` (:mod:`.atna`), one per line.

``destination`` is a file path (``-`` = standard output; an existing file is never overwritten),
``syslog+tls://HOST[:PORT]`` (RFC 5425, port 6514 by default) or ``syslog+tcp://HOST:PORT``
(plain TCP, RFC 6587 — only when asked for by that scheme). Over syslog each event is one RFC 5424
message (:mod:`.syslog`): facility authpriv, severity notice (warning when denied or failed),
TIMESTAMP = the event's time, MSGID ``IHE+RFC-3881`` (ATNA) or ``medvault-ledger`` (JSON), and a
structured-data element ``[medvault@32473 origin="…" index="…" leafhash="…"]`` naming the entry,
so a collector can drop duplicates and an auditor can ask for its inclusion proof.

The result (:class:`ExportResult`) gives the count and the last index exported: the next export
resumes with ``since_index = next_index``. When sending fails part-way, the :class:`SyslogError`
says which indices were handed to the connection; TCP gives no delivery receipt, so resume from
the first index the collector lacks (each message names its index; repeats can be dropped by it).

Every export is itself ledgered (DICOM "Audit Log Used"): one ``export`` event, action
``ledger.export``, object ``ledger``/origin, with the format, the index range and the count, and
outcome failure with the reason when it did not complete.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Literal, Protocol

from medvault.errors import InvalidInput, LedgerTampered, MedvaultError, StorageError
from medvault.ledger.atna import audit_message
from medvault.ledger.events import Actor, ActorKind, AuditEvent, EventKind, ObjectRef, Outcome, parse_event
from medvault.ledger.merkle import leaf_hash
from medvault.ledger.store import Ledger
from medvault.ledger.syslog import (
    SEVERITY_NOTICE,
    SEVERITY_WARNING,
    SdElement,
    SyslogError,
    SyslogSender,
    format_message,
    is_syslog_destination,
    parse_destination,
)

__all__ = [
    "MSGID_ATNA",
    "MSGID_JSON",
    "SD_ID",
    "ExportFormat",
    "ExportResult",
    "export_entries",
    "export_ledger",
]

ExportFormat = Literal["jsonl", "atna"]
MSGID_ATNA = "IHE+RFC-3881"
MSGID_JSON = "medvault-ledger"
#: SD-ID of the entry's coordinates; 32473 is the private enterprise number RFC 5612 sets aside
#: for documentation and examples (medvault has none of its own).
SD_ID = "medvault@32473"
_CHUNK = 2048
_SYSTEM = Actor(kind=ActorKind.SYSTEM, id="medvault")


@dataclass(frozen=True)
class ExportResult:
    """``count`` events exported, the last one at ``last_index`` (``None`` when there was nothing
    to export); ``next_index`` is where the next export resumes."""

    count: int
    last_index: int | None
    next_index: int


class _Sink(Protocol):
    def write(self, index: int, leaf: bytes, event: AuditEvent | None, record: bytes) -> None: ...


class _FileSink:
    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def write(self, index: int, leaf: bytes, event: AuditEvent | None, record: bytes) -> None:
        self._stream.write(record + b"\n")


class _SyslogSink:
    def __init__(self, sender: SyslogSender, *, origin: str, msgid: str, hostname: str) -> None:
        self._sender = sender
        self._origin = origin
        self._msgid = msgid
        self._hostname = hostname
        self._procid = str(os.getpid())

    def write(self, index: int, leaf: bytes, event: AuditEvent | None, record: bytes) -> None:
        assert event is not None
        sd = SdElement(
            SD_ID, [("origin", self._origin), ("index", str(index)), ("leafhash", leaf_hash(leaf).hex())]
        )
        self._sender.send(
            format_message(
                record,
                severity=SEVERITY_NOTICE if event.outcome is Outcome.SUCCESS else SEVERITY_WARNING,
                timestamp=event.time,
                hostname=self._hostname,
                procid=self._procid,
                msgid=self._msgid,
                structured_data=[sd],
            )
        )


def _leaves(ledger: Ledger, start: int, stop: int) -> Iterator[tuple[int, bytes]]:
    for chunk in range(start, stop, _CHUNK):
        end = min(chunk + _CHUNK, stop)
        leaves = ledger.entries(chunk, end)
        if len(leaves) != end - chunk:
            raise LedgerTampered(
                f"ledger entries between {chunk} and {end - 1} are missing",
                hint="Run `medvault ledger verify`.",
            )
        yield from enumerate(leaves, start=chunk)


@contextlib.contextmanager
def _file_output(destination: str) -> Iterator[BinaryIO]:
    if destination == "-":
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    path = Path(destination)
    if path.exists():
        raise InvalidInput(
            f"{path} already exists; the export never overwrites a file",
            hint="Choose another file name (e.g. one per --since range), or remove the old one.",
        )
    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise StorageError(f"cannot write the export to {path}: {exc.strerror or exc}") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def export_entries(
    ledger: Ledger,
    *,
    fmt: ExportFormat,
    destination: str,
    origin: str,
    since_index: int = 0,
    ca_file: Path | None = None,
    client_cert: Path | None = None,
    client_key: Path | None = None,
    client_key_password: bytes | None = None,
    progress: Callable[[int], None] | None = None,
    hostname: str | None = None,
    timeout: float = 30.0,
) -> ExportResult:
    """Export entries ``[since_index, size)`` of ``ledger`` (see the module text); does not ledger
    the export itself (:func:`export_ledger` does)."""
    if fmt not in ("jsonl", "atna"):
        raise InvalidInput(f"unknown export format {fmt!r}: use jsonl or atna")
    ledger.flush()  # queued read events belong in the export
    size = ledger.size
    if not 0 <= since_index <= size:
        raise InvalidInput(f"--since {since_index} is outside the ledger (0 to {size})")
    to_syslog = is_syslog_destination(destination)
    count = 0
    last: int | None = None

    def run(sink: _Sink) -> None:
        nonlocal count, last
        for index, leaf in _leaves(ledger, since_index, size):
            event: AuditEvent | None = None
            if fmt == "atna" or to_syslog:
                try:
                    event = parse_event(leaf)
                except InvalidInput:
                    raise LedgerTampered(
                        f"ledger entry {index} is not a canonical ledger event",
                        hint="Run `medvault ledger verify`.",
                    ) from None
            record = leaf if event is None or fmt == "jsonl" else audit_message(event, source_id=origin)
            sink.write(index, leaf, event, record)
            count += 1
            last = index
            if progress is not None:
                progress(1)

    if to_syslog:
        target = parse_destination(destination)
        try:
            with SyslogSender(
                target,
                ca_file=ca_file,
                client_cert=client_cert,
                client_key=client_key,
                client_key_password=client_key_password,
                timeout=timeout,
            ) as sender:
                run(
                    _SyslogSink(
                        sender,
                        origin=origin,
                        msgid=MSGID_ATNA if fmt == "atna" else MSGID_JSON,
                        hostname=hostname or socket.gethostname(),
                    )
                )
        except SyslogError as exc:
            if last is None:
                raise
            raise SyslogError(
                f"{exc.message}; {count} events (indices {since_index} to {last}) were handed to the "
                "connection, and the collector may not hold all of them",
                hint="Each message names its ledger index: resume from the first index the collector "
                f"lacks (since_index {since_index} sends this whole range again). {exc.hint}".rstrip(),
            ) from None
    else:
        if ca_file is not None or client_cert is not None:
            raise InvalidInput("a CA file or client certificate only applies to a syslog+tls:// destination")
        with _file_output(destination) as stream:
            run(_FileSink(stream))
    return ExportResult(count=count, last_index=last, next_index=size if last is None else last + 1)


def _describe(destination: str) -> str:
    if is_syslog_destination(destination):
        with contextlib.suppress(MedvaultError):
            return str(parse_destination(destination))
    return destination.replace("^", "_")[:500] or "-"


def export_ledger(
    ledger: Ledger,
    *,
    fmt: ExportFormat,
    destination: str,
    since_index: int = 0,
    ca_file: Path | None = None,
    client_cert: Path | None = None,
    client_key: Path | None = None,
    client_key_password: bytes | None = None,
    progress: Callable[[int], None] | None = None,
    actor: Actor | None = None,
    timeout: float = 30.0,
) -> ExportResult:
    """Export ``ledger`` from ``since_index`` as ``fmt`` to ``destination`` (a file path,
    ``-``, ``syslog+tls://HOST[:PORT]`` or ``syslog+tcp://HOST:PORT``); the ATNA AuditSourceID is
    the ledger's origin. ``ca_file`` verifies the collector (system CAs when ``None``);
    ``client_cert`` (with ``client_key``, or a PEM holding both) authenticates medvault to it.

    The export is ledgered (by ``actor``, default medvault) after it completes or fails; failures
    raise :class:`~medvault.errors.MedvaultError` subclasses (:class:`SyslogError` for the network).
    """
    origin = ledger.origin
    outcome, reason = Outcome.FAILURE, "the export did not complete"
    result = ExportResult(0, None, since_index)
    try:
        result = export_entries(
            ledger,
            fmt=fmt,
            destination=destination,
            origin=origin,
            since_index=since_index,
            ca_file=ca_file,
            client_cert=client_cert,
            client_key=client_key,
            client_key_password=client_key_password,
            progress=progress,
            timeout=timeout,
        )
        outcome, reason = Outcome.SUCCESS, ""
        return result
    except MedvaultError as exc:
        reason = exc.message[:500].replace("^", "_")
        raise
    finally:
        details: dict[str, str | int | None] = {
            "format": str(fmt)[:16],
            "destination": _describe(destination),
            "since_index": since_index,
            "count": result.count,
            "last_index": result.last_index,
        }
        ledger.append(
            AuditEvent(
                kind=EventKind.EXPORT,
                time=datetime.now(UTC),
                actor=actor or _SYSTEM,
                action="ledger.export",
                outcome=outcome,
                object=ObjectRef(type="ledger", id=origin),
                reason=reason or None,
                details=details,
            )
        )
