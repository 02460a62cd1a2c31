"""The DIMSE listener: a pynetdicom SCP in front of the archive, over mutual TLS.

Services: Verification (C-ECHO); Storage (C-STORE, every storage SOP class of pynetdicom, the
transfer syntaxes in :data:`STORAGE_TRANSFER_SYNTAXES`); Query/Retrieve Patient Root and Study
Root (C-FIND, C-GET, C-MOVE). Every operation goes through the one service layer
(``Archive.store_batch`` / ``search`` / ``instances`` / ``read``); this module only translates.

Per connection (in the connection's own thread, never in the accept loop):

1. TLS handshake with a client certificate required (TLS 1.2+, AEAD suites);
2. the certificate must be registered to a node (SHA-256 pin), unrevoked, unexpired — read from
   the registry for every connection, so a revocation takes effect at once;
3. the A-ASSOCIATE-RQ's calling AE title must be that node's, the called AE title ours;
4. each operation is checked against the node's permissions (read again per operation).

Refusals at step 1-2 happen before pynetdicom sees the connection (it would drop them silently);
each one is audited with the peer address and the reason. Plain (non-TLS) DIMSE is off; it can be
switched on per listener (``allow_plain=True``), with a warning in the log and an audit event.

pynetdicom's process-wide settings are set when a listener starts: no PHI in logs
(``LOG_REQUEST_IDENTIFIERS``/``LOG_RESPONSE_IDENTIFIERS`` off, no standard PDU/DIMSE dump
handlers) and C-STORE data kept in memory (``STORE_RECV_CHUNKED_DATASET`` off: no temp files).
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import threading
import weakref
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from io import BytesIO
from typing import Any, Final

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, _config, build_context, evt
from pynetdicom.dsutils import encode_file_meta
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from medvault.access.policy import Action, Context, DecisionPoint, Grant, Principal
from medvault.archive import Archive, StoreCheck
from medvault.dimse import pdu
from medvault.dimse._tls import DimseTls, NodeTls, peer_text
from medvault.dimse.audit import AuditSink, DimseAuditEvent, Outcome
from medvault.dimse.ingest import StoreQueue
from medvault.dimse.intake import (
    ASSOCIATE_RQ_LIMIT,
    STATUS_CANNOT_UNDERSTAND,
    STATUS_OUT_OF_RESOURCES,
    Closed,
    Received,
    is_storage_only,
    read_pdu,
    serve_storage_association,
)
from medvault.dimse.permissions import DimseOperation, NodeDecision, decide_node
from medvault.dimse.query import (
    PATIENT_ROOT,
    STUDY_ROOT,
    TAG_SERIES_UID,
    TAG_SOP_UID,
    TAG_STUDY_UID,
    FindQuery,
    IdentifierError,
    RetrieveKeys,
    parse_find_identifier,
    parse_retrieve_identifier,
    patient_groups,
    result_identifier,
)
from medvault.errors import ConfigError, IntegrityError, MedvaultError, NotFound, TooLarge
from medvault.guard import Guard
from medvault.index.nodes import Node, NodeStore
from medvault.index.store import Hit, InstanceRecord
from medvault.ledger.events import Actor, ActorKind

# DIMSE operations as policy actions; a node's registered permissions are its roles ("node.find" …).
_NODE_ACTIONS: dict[DimseOperation, Action] = {
    DimseOperation.STORE: Action.STUDY_STORE,
    DimseOperation.FIND: Action.STUDY_READ,
    DimseOperation.GET: Action.STUDY_READ,
    DimseOperation.MOVE: Action.STUDY_READ,
}


def node_principal(node: Node) -> Principal:
    """A registered node as a policy subject: a machine (no training gate) with a site-wide reach
    and one role per registered permission."""
    return Principal(
        name=f"node:{node.name}",
        method="mtls",
        roles=frozenset(f"node.{p}" for p in node.permissions),
        grants=(Grant.site(),),
    )


def _node_actor(session: Any) -> Actor | None:
    if session is None:
        return None
    return Actor(kind=ActorKind.NODE, id=session.node, address=session.peer, auth="mtls")


__all__ = [
    "DEFAULT_AE_TITLE",
    "DEFAULT_PORT",
    "STORAGE_TRANSFER_SYNTAXES",
    "DimseServer",
    "start_dimse_server",
]

LOGGER = logging.getLogger("medvault.dimse")
DEFAULT_PORT: Final = 2762  # IANA "dicom-tls"
DEFAULT_AE_TITLE: Final = "MEDVAULT"
HANDSHAKE_TIMEOUT_S: Final = 15.0

#: Accepted for C-STORE; compressed data is stored exactly as received. Deflated data is inflated
#: back to the Explicit VR Little Endian stream it was made from (lossless) before it is stored.
STORAGE_TRANSFER_SYNTAXES: Final = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
]
# SOP classes (PS3.4 Annex A / C); pynetdicom.sop_class builds these names dynamically.
Verification: Final = "1.2.840.10008.1.1"
PatientRootQueryRetrieveInformationModelFind: Final = "1.2.840.10008.5.1.4.1.2.1.1"
PatientRootQueryRetrieveInformationModelMove: Final = "1.2.840.10008.5.1.4.1.2.1.2"
PatientRootQueryRetrieveInformationModelGet: Final = "1.2.840.10008.5.1.4.1.2.1.3"
StudyRootQueryRetrieveInformationModelFind: Final = "1.2.840.10008.5.1.4.1.2.2.1"
StudyRootQueryRetrieveInformationModelMove: Final = "1.2.840.10008.5.1.4.1.2.2.2"
StudyRootQueryRetrieveInformationModelGet: Final = "1.2.840.10008.5.1.4.1.2.2.3"
_QR_TRANSFER_SYNTAXES: Final = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
_FIND_MODELS: Final = {
    PatientRootQueryRetrieveInformationModelFind: PATIENT_ROOT,
    StudyRootQueryRetrieveInformationModelFind: STUDY_ROOT,
}
_GET_MODELS: Final = {
    PatientRootQueryRetrieveInformationModelGet: PATIENT_ROOT,
    StudyRootQueryRetrieveInformationModelGet: STUDY_ROOT,
}
_MOVE_MODELS: Final = {
    PatientRootQueryRetrieveInformationModelMove: PATIENT_ROOT,
    StudyRootQueryRetrieveInformationModelMove: STUDY_ROOT,
}

STATUS_SUCCESS: Final = 0x0000
STATUS_PENDING: Final = 0xFF00
STATUS_CANCEL: Final = 0xFE00
STATUS_NOT_AUTHORIZED: Final = 0x0124  # PS3.7 C.5: Refused: Not Authorized
STATUS_PROCESSING_FAILURE: Final = 0x0110
# A pending C-GET/C-MOVE sub-operation that could not be read: pynetdicom counts it as failed.
_UNREADABLE: Final = "unreadable"


def _outcome(status: int) -> Outcome:
    if status == STATUS_SUCCESS:
        return "success"
    if status in (0x0001, 0x0107, 0x0116) or status & 0xF000 == 0xB000:
        return "warning"
    if status == STATUS_NOT_AUTHORIZED:
        return "denied"
    return "failure"


def _configure_pynetdicom() -> None:
    """pynetdicom's settings are process-wide: the safe ones, every time a listener starts."""
    _config.LOG_HANDLER_LEVEL = "none"  # no PDU / DIMSE dumps (they include identifiers)
    _config.LOG_REQUEST_IDENTIFIERS = False  # C-FIND/GET/MOVE identifiers hold PHI
    _config.LOG_RESPONSE_IDENTIFIERS = False
    _config.STORE_RECV_CHUNKED_DATASET = False  # in memory: no plaintext temp files
    _config.STORE_SEND_CHUNKED_DATASET = False


@dataclass
class _Session:
    node: str
    peer: str
    calling_ae: str
    pending: dict[tuple[str, int], dict[str, str | int]] = field(default_factory=dict)
    checked: Node | None = None  # the registry's record, as read for the request in hand


class _ReplaySocket(AssociationSocket):
    """pynetdicom's socket, first handing out the A-ASSOCIATE-RQ the listener read to route the
    association (see :meth:`DimseServer._route`)."""

    _prefix: bytearray

    @property
    def ready(self) -> bool:
        return bool(self._prefix) or bool(super().ready)

    def recv(self, nr_bytes: int) -> bytearray:
        if not self._prefix:
            return super().recv(nr_bytes)
        head = self._prefix[:nr_bytes]
        del self._prefix[:nr_bytes]
        if len(head) < nr_bytes:
            head += super().recv(nr_bytes - len(head))
        return head


class _Handler(RequestHandler):
    server: _Server

    def _create_association(self) -> Any:
        assoc = super()._create_association()
        with self.server.listener._lock:
            prefix = self.server.listener._prefixes.pop(self.request, b"")
        if prefix:
            sock = assoc.dul.socket
            sock.__class__ = _ReplaySocket  # the same object: pynetdicom queued its events already
            assert isinstance(sock, _ReplaySocket)
            sock._prefix = bytearray(prefix)
        return assoc


class _Server(ThreadedAssociationServer):
    """pynetdicom's server with the TLS handshake moved into the connection's thread, where
    failures are seen (and audited) instead of being dropped by the accept loop, and storage
    associations served by the listener's own path (medvault.dimse.intake)."""

    listener: DimseServer

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        raw, address = self.socket.accept()
        # Each C-STORE-RSP is a small write answered by the peer's next request: without
        # TCP_NODELAY, Nagle's algorithm can hold it for the peer's delayed ACK (tens of ms).
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return raw, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            admitted = self.listener._admit(request, client_address)
        except Exception:
            LOGGER.exception("DIMSE connection from %s failed before association", peer_text(client_address))
            admitted = None
        if admitted is None:
            _close(request)
            return
        try:
            prefix = self.listener._route(admitted, client_address)
        except Exception:
            LOGGER.exception("DIMSE association from %s failed", peer_text(client_address))
            prefix = None
        if prefix is None:  # served here, or refused
            _close(admitted)
            return
        with self.listener._lock:
            self.listener._prefixes[admitted] = prefix
        super().process_request_thread(admitted, client_address)


class DimseServer:
    """A running DIMSE listener. Stop it with :meth:`shutdown` (or use it as a context manager)."""

    def __init__(
        self,
        *,
        archive: Archive,
        nodes: NodeStore,
        tls: DimseTls | None,
        audit: AuditSink,
        host: str,
        port: int,
        ae_title: str,
        allow_plain: bool,
        max_associations: int,
        pdp: DecisionPoint | None = None,
    ) -> None:
        if tls is None and not allow_plain:
            raise ConfigError(
                "the DIMSE listener needs TLS material",
                hint="Plain DIMSE is only for a legacy modality on an isolated network: allow_plain=True.",
            )
        self.archive = archive
        self.nodes = nodes
        self.pdp = pdp
        self.ae_title = ae_title
        self.plain = tls is None
        self._audit = audit
        self._node_tls = NodeTls(tls, nodes) if tls is not None else None
        self._admitted: weakref.WeakKeyDictionary[socket.socket, Node] = weakref.WeakKeyDictionary()
        self._sessions: weakref.WeakKeyDictionary[Any, _Session] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()
        self._prefixes: weakref.WeakKeyDictionary[socket.socket, bytes] = weakref.WeakKeyDictionary()
        self._native: set[socket.socket] = set()  # storage associations served by medvault.dimse.intake
        self._max_associations = max_associations
        self._ingest = StoreQueue(archive)  # concurrent associations' C-STOREs, written together

        _configure_pynetdicom()
        ae = AE(ae_title=ae_title)
        ae.require_called_aet = True
        ae.maximum_associations = max_associations
        ae.acse_timeout = 30
        ae.dimse_timeout = 120
        ae.network_timeout = 120
        ae.add_supported_context(Verification, _QR_TRANSFER_SYNTAXES)
        for cx in AllStoragePresentationContexts:
            # scp_role/scu_role: a C-GET requestor may take the Storage SCP role for sub-operations.
            ae.add_supported_context(
                str(cx.abstract_syntax), STORAGE_TRANSFER_SYNTAXES, scp_role=True, scu_role=False
            )
        for model in (*_FIND_MODELS, *_GET_MODELS, *_MOVE_MODELS):
            ae.add_supported_context(model, _QR_TRANSFER_SYNTAXES)
        self._ae = ae
        handlers: list[Any] = [
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_association("accepted", "success")),
            (evt.EVT_REJECTED, self._on_association("rejected", "denied")),
            (evt.EVT_RELEASED, self._on_association("released", "info")),
            (evt.EVT_ABORTED, self._on_association("aborted", "warning")),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_GET, self._on_get),
            (evt.EVT_C_MOVE, self._on_move),
            (evt.EVT_DIMSE_SENT, self._on_dimse_sent),
        ]
        server = ae.make_server((host, port), ae_title=ae_title, evt_handlers=handlers, server_class=_Server)
        assert isinstance(server, _Server)
        server.listener = self
        server.RequestHandlerClass = _Handler
        self._server = server
        self.implementation_class_uid = str(ae.implementation_class_uid)
        self.implementation_version = str(ae.implementation_version_name or "")
        ae._servers.append(server)
        self.host, self.port = server.server_address[0], int(server.server_address[1])
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="medvault-dimse", daemon=True
        )
        self._thread.start()
        mode = "plain TCP" if self.plain else "mutual TLS"
        self.emit(
            DimseAuditEvent(
                "dimse.listener.start",
                "info",
                details={"endpoint": f"{self.host}:{self.port}", "mode": mode},
                called_ae=ae_title,
            )
        )
        if self.plain:
            LOGGER.warning(
                "PLAIN DIMSE is ON for %s:%d (AE %s): images and identifiers cross the network "
                "unencrypted and nodes are identified only by AE title and address. Use it only for a "
                "legacy modality on an isolated network.",
                self.host,
                self.port,
                ae_title,
            )
            self.emit(
                DimseAuditEvent(
                    "dimse.plain_enabled",
                    "warning",
                    called_ae=ae_title,
                    details={"endpoint": f"{self.host}:{self.port}"},
                    reason="plain DIMSE explicitly enabled for this listener",
                )
            )

    # -- lifecycle -------------------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop accepting, abort running associations, close the socket."""
        self._server.shutdown()
        for assoc in list(self._ae.active_associations):
            assoc.abort()
        with self._lock:
            native = list(self._native)
        for conn in native:  # their threads see the connection end (a C-STORE in hand is written)
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._ingest.close()  # what was received is written and answered before the stop
        self._thread.join(timeout=10)
        self.emit(DimseAuditEvent("dimse.listener.stop", "info", called_ae=self.ae_title))

    def __enter__(self) -> DimseServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- audit -----------------------------------------------------------------------------------

    def emit(self, event: DimseAuditEvent) -> None:
        try:
            self._audit(event)
        except Exception:
            LOGGER.exception("the DIMSE audit callback failed for %s", event.action)

    # -- connection admission --------------------------------------------------------------------

    def _refuse(self, peer: str, reason: str, node: Node | None = None) -> None:
        self.emit(
            DimseAuditEvent(
                "dimse.tls", "refused", peer=peer, node=node.name if node else None, reason=reason
            )
        )

    def _admit(self, raw: socket.socket, address: Any) -> socket.socket | None:
        """TLS handshake + registry check; the socket to hand to pynetdicom, or None (refused)."""
        if self._node_tls is None:
            return raw
        peer = peer_text(address)
        raw.settimeout(HANDSHAKE_TIMEOUT_S)
        ctx = self._node_tls.server_context()
        conn = ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)  # takes over the fd
        reason: str | None = None
        try:
            conn.do_handshake()
        except ssl.SSLCertVerificationError as exc:
            reason = f"TLS handshake failed: {exc.verify_message or exc.reason}"
        except ssl.SSLError as exc:
            reason = f"TLS handshake failed: {exc.reason or type(exc).__name__}"
        except OSError as exc:
            reason = f"TLS handshake failed: {type(exc).__name__}"
        if reason is not None:
            self._refuse(peer, reason)
            _close(conn)
            return None
        check = self._node_tls.check_peer(conn.getpeercert(binary_form=True), now=datetime.now(UTC))
        if check.node is None or check.reason is not None:
            self._refuse(peer, check.reason or "unknown certificate", check.node)
            _close(conn)
            return None
        conn.settimeout(None)
        with self._lock:
            self._admitted[conn] = check.node
        return conn

    # -- association -----------------------------------------------------------------------------

    def _peer(self, assoc: Any) -> str:
        try:
            return peer_text(assoc.dul.socket.socket.getpeername())
        except (AttributeError, OSError):
            return "unknown"

    def _on_requested(self, event: Any) -> None:
        assoc = event.assoc
        rq = assoc.requestor.primitive
        calling = str(rq.calling_ae_title).strip()
        called = str(rq.called_ae_title).strip()
        peer = self._peer(assoc)
        node, reason = self._node_for(assoc.dul.socket.socket, calling, peer)
        if reason is not None:
            assoc.acse.send_reject(0x01, 0x01, 0x03)  # rejected-permanent, calling AE not recognised
            # As pynetdicom does after its own rejections: wait until the DUL has sent the
            # A-ASSOCIATE-RJ, else the socket is shut down first and the peer sees an abort.
            assoc.kill()
            self._rejected(peer, node, calling, called, reason)
            return
        assert node is not None
        self._sessions[assoc] = _Session(node=node.name, peer=peer, calling_ae=calling)

    def _node_for(self, conn: socket.socket, calling: str, peer: str) -> tuple[Node | None, str | None]:
        """The registered node behind a connection and its A-ASSOCIATE-RQ, or why there is none."""
        node: Node | None
        if self._node_tls is not None:
            with self._lock:
                node = self._admitted.pop(conn, None)
            if node is not None:
                try:
                    node = self.nodes.get(node.name)  # fresh: revocation between handshake and now
                except NotFound:
                    node = None
        else:
            host = peer.rsplit(":", 1)[0]
            node = next(
                (n for n in self.nodes.get_by_ae_title(calling) if n.host == host and not n.revoked), None
            )
        if node is None:
            return None, "no registered node for this connection"
        if node.revoked:
            return node, f"node {node.name} is revoked"
        if calling != node.ae_title:
            return node, f"calling AE title {calling!r} is not node {node.name}'s ({node.ae_title!r})"
        return node, None

    def _rejected(self, peer: str, node: Node | None, calling: str, called: str, reason: str) -> None:
        self.emit(
            DimseAuditEvent(
                "dimse.association",
                "denied",
                peer=peer,
                node=node.name if node else None,
                calling_ae=calling,
                called_ae=called,
                reason=reason,
                details={"event": "rejected"},
            )
        )

    # -- the storage path (medvault.dimse.intake) ----------------------------------------------

    def _route(self, conn: socket.socket, address: Any) -> bytes | None:
        """Read the A-ASSOCIATE-RQ; serve a storage-only association here and return None, or
        return the PDU's bytes for pynetdicom to serve (Query/Retrieve, role selection, ...)."""
        peer = peer_text(address)
        try:
            conn.settimeout(float(self._ae.acse_timeout or 30))
            pdu_type, body = read_pdu(conn, ASSOCIATE_RQ_LIMIT)
            if pdu_type != pdu.A_ASSOCIATE_RQ:
                raise pdu.PduError("the first PDU is not an A-ASSOCIATE-RQ")
            rq = pdu.parse_associate_rq(body)
        except pdu.PduError as exc:
            try:
                conn.sendall(pdu.abort(2, exc.abort_reason))
            except OSError:
                pass
            self.emit(
                DimseAuditEvent(
                    "dimse.association",
                    "warning",
                    peer=peer,
                    reason=str(exc)[:200],
                    details={"event": "aborted"},
                )
            )
            return None
        except (Closed, OSError):
            return None
        if not is_storage_only(rq, _STORAGE_CLASSES):
            conn.settimeout(None)
            return pdu.encode(pdu_type, body)
        self._serve_storage(conn, rq, peer)
        return None

    def _serve_storage(self, conn: socket.socket, rq: pdu.AssociateRequest, peer: str) -> None:
        def reject(result: int, source: int, reason_code: int, node: Node | None, reason: str) -> None:
            try:
                conn.sendall(pdu.associate_rj(result, source, reason_code))
            except OSError:
                pass
            self._rejected(peer, node, rq.calling_ae, rq.called_ae, reason)

        if rq.called_ae != self.ae_title:
            reject(1, 1, 7, None, f"called AE title {rq.called_ae!r} is not this listener's")
            return
        if rq.application_context != pdu.APPLICATION_CONTEXT:
            reject(1, 1, 2, None, "application context name not supported")
            return
        node, reason = self._node_for(conn, rq.calling_ae, peer)
        if reason is not None:
            reject(1, 1, 3, node, reason)
            return
        assert node is not None
        with self._lock:
            busy = len(self._native) + len(self._ae.active_associations) >= self._max_associations
            if not busy:
                self._native.add(conn)
        if busy:
            reject(2, 3, 2, node, "too many concurrent associations")
            return

        def done() -> None:
            with self._lock:
                self._native.discard(conn)

        session = _Session(node=node.name, peer=peer, calling_ae=rq.calling_ae)
        serve_storage_association(
            conn, rq, session, self, idle_timeout=float(self._ae.network_timeout or 120), on_done=done
        )

    @property
    def max_instance_bytes(self) -> int:
        return self.archive.max_instance_bytes

    def accept_contexts(self, rq: pdu.AssociateRequest) -> list[tuple[int, int, str]]:
        """Per proposed context: (ID, result, transfer syntax), the requestor's first supported
        transfer syntax winning, as pynetdicom chooses."""
        results: list[tuple[int, int, str]] = []
        for context in rq.contexts:
            supported: list[str]
            if context.abstract_syntax == Verification:
                supported = list(_QR_TRANSFER_SYNTAXES)
            elif context.abstract_syntax in _STORAGE_CLASSES:
                supported = list(STORAGE_TRANSFER_SYNTAXES)
            else:
                results.append((context.id, 3, ImplicitVRLittleEndian))
                continue
            chosen = next((ts for ts in context.transfer_syntaxes if ts in supported), None)
            results.append((context.id, 0, chosen) if chosen else (context.id, 4, ImplicitVRLittleEndian))
        return results

    def association_event(
        self, session: object, name: str, outcome: Outcome, reason: str | None = None
    ) -> None:
        assert isinstance(session, _Session)
        self.emit(
            DimseAuditEvent(
                "dimse.association",
                outcome,
                peer=session.peer,
                node=session.node,
                calling_ae=session.calling_ae,
                called_ae=self.ae_title,
                reason=reason,
                details={"event": name},
            )
        )

    def echo(self, session: object) -> int:
        assert isinstance(session, _Session)
        if self._authorize(session, DimseOperation.ECHO) is not None:
            return STATUS_NOT_AUTHORIZED
        self._op_event(session, "dimse.echo", STATUS_SUCCESS, {})
        return STATUS_SUCCESS

    def store_failed(
        self, session: object, sop_class: str, sop_instance: str, ts: str, status: int, reason: str
    ) -> None:
        assert isinstance(session, _Session)
        details: dict[str, str | int] = {
            "sop_class_uid": sop_class,
            "sop_instance_uid": sop_instance,
            "transfer_syntax": ts,
        }
        self._op_event(session, "dimse.store", status, details, reason)

    def _on_association(self, name: str, outcome: Outcome) -> Any:
        def handler(event: Any) -> None:
            session = self._sessions.get(event.assoc)
            if session is None and name != "rejected":
                return  # refused in _on_requested: already audited
            rq = event.assoc.requestor.primitive
            self.emit(
                DimseAuditEvent(
                    "dimse.association",
                    outcome,
                    peer=session.peer if session else self._peer(event.assoc),
                    node=session.node if session else None,
                    calling_ae=str(rq.calling_ae_title).strip() if rq is not None else None,
                    called_ae=self.ae_title,
                    details={"event": name},
                )
            )

        return handler

    def _authorize(self, session: _Session | None, operation: DimseOperation) -> str | None:
        """None when allowed, else why not (audited)."""
        node: Node | None = None
        if session is not None:
            try:
                node = self.nodes.get(session.node)
            except NotFound:
                node = None
            session.checked = node
        decision = decide_node(node, operation, now=datetime.now(UTC))
        if decision.allowed and node is not None and self.pdp is not None and operation in _NODE_ACTIONS:
            # The registry says the node is live; the one policy decision point decides (and its
            # decision, allow or deny, lands in the ledger like every other).
            verdict = self.pdp.decide(
                node_principal(node),
                _NODE_ACTIONS[operation],
                None,
                Context(now=datetime.now(UTC), client=session.peer if session else None),
            )
            decision = NodeDecision(verdict.allowed, verdict.reason)
        if not decision.allowed:
            self.emit(
                DimseAuditEvent(
                    f"dimse.{operation}",
                    "denied",
                    peer=session.peer if session else None,
                    node=session.node if session else None,
                    calling_ae=session.calling_ae if session else None,
                    called_ae=self.ae_title,
                    reason=decision.reason,
                )
            )
            return decision.reason or "not authorized"
        return None

    def _op_event(
        self,
        session: _Session,
        action: str,
        status: int,
        details: dict[str, str | int],
        reason: str | None = None,
    ) -> None:
        self.emit(
            DimseAuditEvent(
                action,
                _outcome(status),
                peer=session.peer,
                node=session.node,
                calling_ae=session.calling_ae,
                called_ae=self.ae_title,
                reason=reason,
                details={**details, "status": f"0x{status:04X}"},
            )
        )

    # -- C-ECHO ----------------------------------------------------------------------------------

    def _on_echo(self, event: Any) -> int:
        session = self._sessions.get(event.assoc)
        return STATUS_NOT_AUTHORIZED if session is None else self.echo(session)

    # -- C-STORE ---------------------------------------------------------------------------------

    def _received(self, event: Any) -> bytes:
        """The instance as a Part 10 file, its data set bytes exactly as received (deflate undone)."""
        if event.context.transfer_syntax != DeflatedExplicitVRLittleEndian:
            data: bytes = event.encoded_dataset()
            return data
        limit = self.archive.max_instance_bytes
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            body = inflater.decompress(event.encoded_dataset(include_meta=False), limit + 1)
        except zlib.error:
            raise IdentifierError(
                "the deflated data set cannot be inflated", STATUS_CANNOT_UNDERSTAND
            ) from None
        if len(body) > limit or inflater.unconsumed_tail:
            raise TooLarge(f"inflated instance exceeds the limit of {limit} bytes")
        meta = event.file_meta
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        return b"\x00" * 128 + b"DICM" + encode_file_meta(meta) + body

    def _store_check(self, session: _Session) -> StoreCheck | None:
        """The node's write check: the same scope rules as every other writer (a node is granted
        the whole site, so in practice this refuses only what no writer may do)."""
        if self.pdp is None:
            return None
        node = session.checked  # read by _authorize for this very request: no second lookup
        if node is None:
            return lambda _facts: False
        guard = Guard(pdp=self.pdp, index=self.archive.index)
        return guard.store_check(node_principal(node), client=session.peer)

    def _on_store(self, event: Any) -> int:
        session = self._sessions.get(event.assoc)
        if session is None:
            return STATUS_NOT_AUTHORIZED
        req = event.request
        sop_class, sop_instance = str(req.AffectedSOPClassUID), str(req.AffectedSOPInstanceUID)
        ts = str(event.context.transfer_syntax)
        try:
            data = self._received(event)
        except IdentifierError as exc:
            self.store_failed(session, sop_class, sop_instance, ts, exc.status, str(exc))
            return exc.status
        except MedvaultError as exc:
            self.store_failed(session, sop_class, sop_instance, ts, exc.failure_reason, exc.message)
            return exc.failure_reason
        return self.store(session, Received(data, sop_class, sop_instance, ts))

    def store(self, session: object, received: Received) -> int:
        """Store one C-STORE's data set through the write pipeline; the C-STORE status."""
        assert isinstance(session, _Session)
        if self._authorize(session, DimseOperation.STORE) is not None:
            return STATUS_NOT_AUTHORIZED
        details: dict[str, str | int] = {
            "sop_class_uid": received.sop_class_uid,
            "sop_instance_uid": received.sop_instance_uid,
            "transfer_syntax": received.transfer_syntax,
        }
        try:
            outcome = self._ingest.store(
                received.data,
                node=session.node,
                actor=_node_actor(session),
                check=self._store_check(session),
                expect=(received.sop_class_uid, received.sop_instance_uid),
            )
        except MedvaultError as exc:
            self._op_event(session, "dimse.store", exc.failure_reason, details, exc.message)
            return exc.failure_reason
        except OSError as exc:
            status = (
                STATUS_OUT_OF_RESOURCES
                if exc.errno in (errno.ENOSPC, errno.EDQUOT)
                else STATUS_PROCESSING_FAILURE
            )
            self._op_event(session, "dimse.store", status, details, f"storage error: {type(exc).__name__}")
            return status
        if outcome.study_uid:
            details["study_uid"] = outcome.study_uid
        details["result"] = outcome.status
        if outcome.status == "failed":
            error = outcome.error or MedvaultError("not stored")
            self._op_event(session, "dimse.store", error.failure_reason, details, error.message)
            return error.failure_reason
        self._op_event(session, "dimse.store", STATUS_SUCCESS, details)
        return STATUS_SUCCESS

    # -- C-FIND ----------------------------------------------------------------------------------

    def _on_find(self, event: Any) -> Iterator[tuple[int, Dataset | None]]:
        session = self._sessions.get(event.assoc)
        denied = self._authorize(session, DimseOperation.FIND)
        if denied or session is None:
            yield STATUS_NOT_AUTHORIZED, None
            return
        msg_id = int(event.request.MessageID)
        model = _FIND_MODELS.get(str(event.request.AffectedSOPClassUID), STUDY_ROOT)
        details: dict[str, str | int] = {"model": model}
        session.pending[("find", msg_id)] = details
        try:
            query = parse_find_identifier(event.identifier, model)
        except IdentifierError as exc:
            details["reason"] = str(exc)
            yield exc.status, None
            return
        except Exception:  # an identifier pydicom cannot decode
            details["reason"] = "the identifier cannot be decoded"
            yield STATUS_CANNOT_UNDERSTAND, None
            return
        details["level"] = query.qr_level
        try:
            results = self._find_results(query)
        except MedvaultError as exc:
            details["reason"] = exc.message
            yield exc.failure_reason, None
            return
        details["matches"] = 0
        for ds in results:
            if event.is_cancelled:
                yield STATUS_CANCEL, None
                return
            details["matches"] = int(details["matches"]) + 1
            yield STATUS_PENDING, ds

    def _find_results(self, query: FindQuery) -> Iterator[Dataset]:
        hits = self.archive.search(
            query.level, query.criteria, study_uid=query.study_uid, series_uid=query.series_uid
        )
        wanted = set(query.return_tags)
        index = self.archive.index
        if query.qr_level == "PATIENT":
            groups = patient_groups(hits)
            counts = (
                index.study_counts(sorted({h.study_id for h in hits}))
                if wanted & {"00201202", "00201204"}
                else {}
            )
            for group in groups:
                computed: dict[str, dict[str, Any]] = {
                    "00201200": {"vr": "IS", "Value": [len(group)]},
                }
                if counts:
                    computed["00201202"] = {
                        "vr": "IS",
                        "Value": [sum(counts[h.study_id].series for h in group)],
                    }
                    computed["00201204"] = {
                        "vr": "IS",
                        "Value": [sum(counts[h.study_id].instances for h in group)],
                    }
                yield self._answer(query, group[0], computed)
            return
        study_counts = (
            index.study_counts(sorted({h.study_id for h in hits}))
            if query.level == "study" and wanted & {"00201206", "00201208", "00080061"}
            else {}
        )
        series_counts = (
            index.series_instance_counts(sorted({h.series_id for h in hits if h.series_id is not None}))
            if query.level == "series" and "00201209" in wanted
            else {}
        )
        for hit in hits:
            computed = {}
            if study_counts:
                c = study_counts[hit.study_id]
                computed["00201206"] = {"vr": "IS", "Value": [c.series]}
                computed["00201208"] = {"vr": "IS", "Value": [c.instances]}
                computed["00080061"] = {"vr": "CS", "Value": c.modalities} if c.modalities else {"vr": "CS"}
            if series_counts and hit.series_id is not None:
                computed["00201209"] = {"vr": "IS", "Value": [series_counts.get(hit.series_id, 0)]}
            yield self._answer(query, hit, computed)

    def _answer(self, query: FindQuery, hit: Hit, computed: dict[str, dict[str, Any]]) -> Dataset:
        return result_identifier(query, hit.attributes, computed=computed, retrieve_ae_title=self.ae_title)

    # -- C-GET / C-MOVE --------------------------------------------------------------------------

    def _records(self, keys: RetrieveKeys) -> list[InstanceRecord]:
        records: list[InstanceRecord] = []
        seen: set[str] = set()
        for hit in self.archive.search(keys.level, keys.criteria):
            attrs = hit.attributes
            study = _uid(attrs, TAG_STUDY_UID)
            series = _uid(attrs, TAG_SERIES_UID) if keys.level != "study" else None
            sop = _uid(attrs, TAG_SOP_UID) if keys.level == "instance" else None
            if study is None:
                continue
            try:
                found = self.archive.instances(study, series, sop)
            except NotFound:
                continue
            for record in found:
                if record.sop_uid not in seen:
                    seen.add(record.sop_uid)
                    records.append(record)
        return records

    def _datasets(self, event: Any, records: list[InstanceRecord]) -> Iterator[tuple[int, Any]]:
        for record in records:
            if event.is_cancelled:
                yield STATUS_CANCEL, None
                return
            try:
                data = self.archive.read(record)
            except (IntegrityError, MedvaultError, OSError):
                LOGGER.error("instance %s could not be read for a DIMSE retrieve", record.sop_uid)
                yield STATUS_PENDING, _UNREADABLE
                continue
            yield STATUS_PENDING, dcmread(BytesIO(data))

    def _retrieve_keys(self, event: Any, models: dict[str, str]) -> RetrieveKeys:
        model = models.get(str(event.request.AffectedSOPClassUID), STUDY_ROOT)
        try:
            identifier = event.identifier
        except Exception:
            raise IdentifierError("the identifier cannot be decoded", STATUS_CANNOT_UNDERSTAND) from None
        return parse_retrieve_identifier(identifier, model)

    def _on_get(self, event: Any) -> Iterator[Any]:
        session = self._sessions.get(event.assoc)
        denied = self._authorize(session, DimseOperation.GET)
        if denied or session is None:
            yield 1
            yield STATUS_NOT_AUTHORIZED, None
            return
        details: dict[str, str | int] = {}
        session.pending[("get", int(event.request.MessageID))] = details
        try:
            keys = self._retrieve_keys(event, _GET_MODELS)
            details["level"] = keys.qr_level
            records = self._records(keys)
        except IdentifierError as exc:
            details["reason"] = str(exc)
            yield 1
            yield exc.status, None
            return
        except MedvaultError as exc:
            details["reason"] = exc.message
            yield 1
            yield exc.failure_reason, None
            return
        details["instances"] = len(records)
        yield len(records)
        yield from self._datasets(event, records)

    def _on_move(self, event: Any) -> Iterator[Any]:
        session = self._sessions.get(event.assoc)
        denied = self._authorize(session, DimseOperation.MOVE)
        if denied or session is None:
            raise PermissionError(denied or "not authorized")  # pynetdicom answers 0xC514 (failure)
        destination_ae = str(event.move_destination or "").strip()
        details: dict[str, str | int] = {"destination_ae": destination_ae}
        session.pending[("move", int(event.request.MessageID))] = details
        try:
            keys = self._retrieve_keys(event, _MOVE_MODELS)
        except IdentifierError as exc:
            details["reason"] = str(exc)
            raise  # pynetdicom answers 0xC514 (unable to process): a destination must come first
        details["level"] = keys.qr_level
        now = datetime.now(UTC)
        destination = next(
            (n for n in self.nodes.get_by_ae_title(destination_ae) if not n.revoked and not n.expired(now)),
            None,
        )
        if destination is None:
            details["reason"] = "move destination is not an active registered node"
            yield None, None  # pynetdicom answers 0xA801 (move destination unknown)
            return
        details["destination"] = destination.name
        records = self._records(keys)
        details["instances"] = len(records)
        kwargs: dict[str, Any] = {"contexts": _contexts_for(records)}
        if self._node_tls is not None:
            kwargs["tls_args"] = (self._node_tls.client_context(destination), None)
        yield destination.host, destination.port, kwargs
        yield len(records)
        yield from self._datasets(event, records)

    # -- outcome of FIND / GET / MOVE ---------------------------------------------------------------

    def _on_dimse_sent(self, event: Any) -> None:
        name = type(event.message).__name__
        op = {"C_FIND_RSP": "find", "C_GET_RSP": "get", "C_MOVE_RSP": "move"}.get(name)
        if op is None:
            return
        cs = event.message.command_set
        status = int(cs.Status)
        if status in (STATUS_PENDING, 0xFF01):
            return
        session = self._sessions.get(event.assoc)
        if session is None:
            return
        details = session.pending.pop((op, int(cs.MessageIDBeingRespondedTo)), {})
        for key, attr in (
            ("completed", "NumberOfCompletedSuboperations"),
            ("failed", "NumberOfFailedSuboperations"),
            ("warning", "NumberOfWarningSuboperations"),
        ):
            value = cs.get(attr)
            if value is not None and op != "find":
                details[key] = int(value)
        reason = details.pop("reason", None)
        self._op_event(session, f"dimse.{op}", status, details, str(reason) if reason is not None else None)


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


def _uid(attrs: dict[str, Any], tag: str) -> str | None:
    element = attrs.get(tag) or {}
    values = element.get("Value") or []
    return str(values[0]) if values else None


def _contexts_for(records: list[InstanceRecord]) -> list[Any]:
    """Presentation contexts to propose to a C-MOVE destination: each SOP class with its stored
    transfer syntaxes (sent as stored, never transcoded) and the two uncompressed ones."""
    by_class: dict[str, list[str]] = {}
    for record in records:
        syntaxes = by_class.setdefault(record.sop_class_uid, [])
        if record.transfer_syntax not in syntaxes:
            syntaxes.append(record.transfer_syntax)
    contexts = []
    for sop_class, syntaxes in list(by_class.items())[:128]:
        for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            if ts not in syntaxes:
                syntaxes.append(ts)
        contexts.append(build_context(sop_class, syntaxes))
    return contexts or [build_context(Verification)]


_STORAGE_CLASSES: Final = frozenset(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)


def start_dimse_server(
    *,
    archive: Archive,
    nodes: NodeStore,
    tls: DimseTls | None,
    audit: AuditSink,
    host: str = "0.0.0.0",  # noqa: S104 - a listener for modalities on the network, TLS-only by default
    port: int = DEFAULT_PORT,
    ae_title: str = DEFAULT_AE_TITLE,
    allow_plain: bool = False,
    max_associations: int = 16,
    pdp: DecisionPoint | None = None,
) -> DimseServer:
    """Start the DIMSE listener in a background thread and return its handle (``.shutdown()``).

    ``tls=None`` is refused unless ``allow_plain=True`` (legacy modality, isolated network: a
    warning is logged and a ``dimse.plain_enabled`` audit event emitted). ``port=0`` picks a free
    port (read it back from ``.port``).
    """
    return DimseServer(
        archive=archive,
        nodes=nodes,
        tls=tls,
        audit=audit,
        host=host,
        port=port,
        ae_title=ae_title,
        allow_plain=allow_plain,
        max_associations=max_associations,
        pdp=pdp,
    )
