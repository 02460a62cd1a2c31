"""The listener's own path for storage associations (issue #19): what a modality opens.

An association that proposes only Verification and Storage SOP classes — every modality, every
forwarding PACS — is served here, in the connection's thread, with blocking reads: PDUs are
reassembled straight into the Part 10 bytes the write pipeline takes, with no reactor threads
polling every millisecond and no decode/re-encode of the data set. Anything else (Query/Retrieve,
role selection for C-GET, extended negotiation, user identity) goes to pynetdicom exactly as
before. Both paths share the listener's checks: the node and its permissions are read for every
request, each operation is audited, nothing is answered before the write pipeline has made the
instance durable, indexed and ledgered.

Bounded by construction: a PDU longer than the maximum this side announced is an A-ABORT, and a
data set beyond the archive's instance limit is read to its end but not kept (answered 0xA700).
"""

from __future__ import annotations

import socket
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from medvault.dimse import pdu
from medvault.dimse.audit import Outcome

__all__ = [
    "ASSOCIATE_RQ_LIMIT",
    "MAX_PDU_LENGTH",
    "Received",
    "StorageListener",
    "is_storage_only",
    "read_pdu",
    "serve_storage_association",
]

#: What this side announces (and enforces) as its maximum PDU length: large PDUs mean few reads.
MAX_PDU_LENGTH: Final = 256 * 1024
#: An A-ASSOCIATE-RQ larger than this is not a real one (128 contexts of long UIDs fit in 40 KB).
ASSOCIATE_RQ_LIMIT: Final = 64 * 1024

VERIFICATION: Final = "1.2.840.10008.1.1"
C_STORE_RQ: Final = 0x0001
C_ECHO_RQ: Final = 0x0030
C_CANCEL_RQ: Final = 0x0FFF
NO_DATA_SET: Final = 0x0101
STATUS_UNRECOGNIZED_OPERATION: Final = 0x0211
STATUS_CANNOT_UNDERSTAND: Final = 0xC000
STATUS_OUT_OF_RESOURCES: Final = 0xA700
_ASYNC_OPERATIONS_WINDOW: Final = 0x53  # answered by silence: one operation at a time


class Closed(Exception):
    """The peer closed the connection (or it timed out) in the middle of the association."""


def _read_exact(sock: socket.socket, length: int) -> bytearray:
    buf = bytearray(length)
    view = memoryview(buf)
    got = 0
    while got < length:
        n = sock.recv_into(view[got:], length - got)
        if n == 0:
            raise Closed
        got += n
    return buf


def read_pdu(sock: socket.socket, limit: int) -> tuple[int, bytearray]:
    """(type, body) of the next PDU; :class:`pdu.PduError` when it announces more than ``limit``."""
    pdu_type, length = pdu.header(_read_exact(sock, 6))
    if length > limit:
        raise pdu.PduError(f"PDU of {length} bytes exceeds the maximum of {limit}", abort_reason=6)
    return pdu_type, _read_exact(sock, length)


def is_storage_only(rq: pdu.AssociateRequest, storage_classes: frozenset[str]) -> bool:
    """Can this association be served here: only Verification and Storage SOP classes, and no
    negotiation beyond maximum length and implementation identity?"""
    if rq.other_user_items - {_ASYNC_OPERATIONS_WINDOW}:
        return False
    return all(c.abstract_syntax == VERIFICATION or c.abstract_syntax in storage_classes for c in rq.contexts)


@dataclass(frozen=True)
class Received:
    """One C-STORE's data set as the write pipeline takes it (Part 10 bytes)."""

    data: bytes
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str


class StorageListener(Protocol):
    """What the association needs of the listener (medvault.dimse.server.DimseServer)."""

    implementation_class_uid: str
    implementation_version: str

    @property
    def max_instance_bytes(self) -> int: ...
    def accept_contexts(self, rq: pdu.AssociateRequest) -> list[tuple[int, int, str]]: ...
    def echo(self, session: object) -> int: ...
    def store(self, session: object, received: Received) -> int: ...
    def store_failed(
        self, session: object, sop_class: str, sop_instance: str, ts: str, status: int, reason: str
    ) -> None: ...
    def association_event(
        self, session: object, name: str, outcome: Outcome, reason: str | None = None
    ) -> None: ...


def serve_storage_association(
    sock: socket.socket,
    rq: pdu.AssociateRequest,
    session: object,
    listener: StorageListener,
    *,
    idle_timeout: float,
    on_done: Callable[[], None] = lambda: None,
) -> None:
    """Accept ``rq`` (already admitted: node, calling and called AE checked) and serve its
    C-ECHO and C-STORE requests until release, abort or timeout."""
    results = listener.accept_contexts(rq)
    accepted = {cid: ts for cid, result, ts in results if result == 0}
    try:
        sock.settimeout(idle_timeout)
        sock.sendall(
            pdu.associate_ac(
                rq,
                results,
                max_pdu_length=MAX_PDU_LENGTH,
                implementation_class_uid=listener.implementation_class_uid,
                implementation_version=listener.implementation_version,
            )
        )
        listener.association_event(session, "accepted", "success")
        _Association(sock, session, listener, accepted).run()
    finally:
        on_done()


class _Association:
    def __init__(
        self,
        sock: socket.socket,
        session: object,
        listener: StorageListener,
        accepted: dict[int, str],
    ) -> None:
        self.sock = sock
        self.session = session
        self.listener = listener
        self.accepted = accepted  # context ID -> transfer syntax

    def run(self) -> None:
        command = bytearray()
        command_context = 0
        fields: pdu.Command | None = None
        data: list[memoryview] = []
        size = 0
        limit = self.listener.max_instance_bytes
        try:
            while True:
                pdu_type, body = read_pdu(self.sock, MAX_PDU_LENGTH)
                if pdu_type == pdu.A_RELEASE_RQ:
                    if fields is not None or command:
                        raise pdu.PduError("release requested in the middle of a message")
                    self.sock.sendall(pdu.release_rp())
                    self.listener.association_event(self.session, "released", "info")
                    return
                if pdu_type == pdu.A_ABORT:
                    self.listener.association_event(self.session, "aborted", "warning")
                    return
                if pdu_type != pdu.P_DATA_TF:
                    self._abort(2)
                    return
                for pdv in pdu.parse_pdata(body):
                    if pdv.context_id not in self.accepted:
                        raise pdu.PduError("data on a presentation context that was not accepted")
                    if pdv.is_command:
                        if fields is not None:
                            raise pdu.PduError("a command fragment in the middle of a data set")
                        if len(command) + len(pdv.data) > 64 * 1024:
                            raise pdu.PduError("command set too long")
                        command += pdv.data
                        command_context = pdv.context_id
                        if not pdv.is_last:
                            continue
                        fields = pdu.parse_command(bytes(command))
                        command = bytearray()
                        if fields.get(0x0800, NO_DATA_SET) == NO_DATA_SET:
                            self._handle(command_context, fields, None, 0)
                            fields = None
                        continue
                    if fields is None or pdv.context_id != command_context:
                        raise pdu.PduError("a data set fragment without its command")
                    size += len(pdv.data)
                    if size <= limit + 1:  # beyond the limit: read to the end, keep nothing
                        data.append(pdv.data)
                    else:
                        data = []
                    if pdv.is_last:
                        self._handle(command_context, fields, data, size)
                        fields, data, size = None, [], 0
        except pdu.PduError as exc:
            self._abort(exc.abort_reason, reason=str(exc))
        except (Closed, TimeoutError, OSError):
            self.listener.association_event(self.session, "aborted", "warning")

    def _abort(self, reason_code: int, *, reason: str | None = None) -> None:
        try:
            self.sock.sendall(pdu.abort(2, reason_code))
        except OSError:
            pass
        self.listener.association_event(
            self.session, "aborted", "warning", reason=None if reason is None else reason[:200]
        )

    def _respond(self, context_id: int, elements: pdu.Command) -> None:
        self.sock.sendall(pdu.pdata(context_id, pdu.command_set(elements), is_command=True))

    def _handle(self, context_id: int, fields: pdu.Command, data: list[memoryview] | None, size: int) -> None:
        field = fields.get(0x0100)
        message_id = fields.get(0x0110, 0)
        sop_class = str(fields.get(0x0002, ""))
        if field == C_CANCEL_RQ:
            return
        response: pdu.Command = {0x0120: message_id, 0x0800: NO_DATA_SET}
        if field == C_ECHO_RQ:
            status = self.listener.echo(self.session)
            self._respond(
                context_id, {**response, 0x0002: sop_class or VERIFICATION, 0x0100: 0x8030, 0x0900: status}
            )
            return
        if field != C_STORE_RQ:
            if isinstance(field, int):
                self._respond(
                    context_id, {**response, 0x0100: field | 0x8000, 0x0900: STATUS_UNRECOGNIZED_OPERATION}
                )
            return
        sop_instance = str(fields.get(0x1000, ""))
        response.update({0x0002: sop_class, 0x0100: 0x8001, 0x1000: sop_instance})
        if data is None:
            status = STATUS_CANNOT_UNDERSTAND  # a C-STORE without a data set
            self.listener.store_failed(
                self.session, sop_class, sop_instance, "", status, "C-STORE without a data set"
            )
        else:
            status = self._store(context_id, sop_class, sop_instance, data, size)
        self._respond(context_id, {**response, 0x0900: status})

    def _meta(self, sop_class: str, sop_instance: str, ts: str) -> bytes:
        return pdu.file_meta(
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
            transfer_syntax=ts,
            implementation_class_uid=self.listener.implementation_class_uid,
            implementation_version=self.listener.implementation_version,
            source_ae=getattr(self.session, "calling_ae", ""),
        )

    def _store(
        self, context_id: int, sop_class: str, sop_instance: str, data: list[memoryview], size: int
    ) -> int:
        ts = self.accepted[context_id]
        limit = self.listener.max_instance_bytes
        if size > limit:
            self.listener.store_failed(
                self.session, sop_class, sop_instance, ts, STATUS_OUT_OF_RESOURCES,
                f"instance of {size} bytes exceeds the limit of {limit} bytes",
            )  # fmt: skip
            return STATUS_OUT_OF_RESOURCES
        if (
            ts == DeflatedExplicitVRLittleEndian
        ):  # stored as the Explicit VR Little Endian stream it was made from
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            try:
                body = inflater.decompress(b"".join(data), limit + 1)
            except zlib.error:
                self.listener.store_failed(
                    self.session, sop_class, sop_instance, ts, STATUS_CANNOT_UNDERSTAND,
                    "the deflated data set cannot be inflated",
                )  # fmt: skip
                return STATUS_CANNOT_UNDERSTAND
            if len(body) > limit or inflater.unconsumed_tail:
                self.listener.store_failed(
                    self.session, sop_class, sop_instance, ts, STATUS_OUT_OF_RESOURCES,
                    f"inflated instance exceeds the limit of {limit} bytes",
                )  # fmt: skip
                return STATUS_OUT_OF_RESOURCES
            whole = self._meta(sop_class, sop_instance, ExplicitVRLittleEndian) + body
        else:
            whole = b"".join([self._meta(sop_class, sop_instance, ts), *data])  # one copy of the data set
        return self.listener.store(self.session, Received(whole, sop_class, sop_instance, ts))
