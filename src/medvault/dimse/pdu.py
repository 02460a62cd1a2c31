"""The DICOM Upper Layer PDUs and DIMSE command sets the listener's own storage path speaks (PS3.8
§9.3, PS3.7 §9/§E): parse and build, nothing else — pure functions on bytes, no socket.

Only what a storage association needs: A-ASSOCIATE-RQ in, A-ASSOCIATE-AC/RJ out, P-DATA-TF both
ways, A-RELEASE and A-ABORT; command sets of C-ECHO and C-STORE. Anything malformed raises
:class:`PduError`, which the caller answers with an A-ABORT; lengths are checked against the
bytes actually present, so a lying length field can neither over-read nor allocate.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "APPLICATION_CONTEXT",
    "AssociateRequest",
    "PduError",
    "Pdv",
    "PresentationContext",
    "abort",
    "associate_ac",
    "associate_rj",
    "command_set",
    "encode",
    "file_meta",
    "header",
    "parse_associate_rq",
    "parse_command",
    "parse_pdata",
    "pdata",
    "release_rp",
]

A_ASSOCIATE_RQ: Final = 0x01
A_ASSOCIATE_AC: Final = 0x02
A_ASSOCIATE_RJ: Final = 0x03
P_DATA_TF: Final = 0x04
A_RELEASE_RQ: Final = 0x05
A_RELEASE_RP: Final = 0x06
A_ABORT: Final = 0x07

APPLICATION_CONTEXT: Final = "1.2.840.10008.3.1.1.1"

_HEADER = struct.Struct(">BBI")
_ITEM = struct.Struct(">BBH")


class PduError(ValueError):
    """A PDU or command set that does not follow PS3.8 / PS3.7 (answered with an A-ABORT whose
    provider reason is ``abort_reason``: 2 unexpected PDU, 6 invalid PDU parameter value)."""

    def __init__(self, message: str, *, abort_reason: int = 2) -> None:
        super().__init__(message)
        self.abort_reason = abort_reason


def header(data: bytes | bytearray | memoryview) -> tuple[int, int]:
    """(PDU type, length of what follows) of a 6-byte PDU header."""
    pdu_type, _, length = _HEADER.unpack(data)
    return pdu_type, length


def encode(pdu_type: int, body: bytes | bytearray) -> bytes:
    """A whole PDU: header and ``body``."""
    return _HEADER.pack(pdu_type, 0, len(body)) + bytes(body)


def _item(item_type: int, value: bytes) -> bytes:
    return _ITEM.pack(item_type, 0, len(value)) + value


def _items(data: bytes | memoryview) -> Iterator[tuple[int, memoryview]]:
    view = memoryview(data)
    pos = 0
    while pos < len(view):
        if pos + 4 > len(view):
            raise PduError("truncated item header")
        item_type, _, length = _ITEM.unpack_from(view, pos)
        end = pos + 4 + length
        if end > len(view):
            raise PduError(f"item 0x{item_type:02X} is longer than its PDU")
        yield item_type, view[pos + 4 : end]
        pos = end


def _text(value: memoryview | bytes) -> str:
    try:
        return bytes(value).decode("ascii").rstrip("\x00 ")
    except UnicodeDecodeError:
        raise PduError("a UID or name is not ASCII") from None


@dataclass(frozen=True)
class PresentationContext:
    id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True)
class AssociateRequest:
    called_ae: str
    calling_ae: str
    application_context: str
    contexts: tuple[PresentationContext, ...]
    max_pdu_length: int  # 0: unlimited
    implementation_class_uid: str = ""
    implementation_version: str = ""
    # User Information sub-items other than the three above (role selection 0x54, extended
    # negotiation 0x56/0x57, user identity 0x58, asynchronous operations 0x53), by type.
    other_user_items: frozenset[int] = field(default_factory=frozenset)
    raw_called_ae: bytes = b" " * 16
    raw_calling_ae: bytes = b" " * 16


def parse_associate_rq(body: bytes | bytearray | memoryview) -> AssociateRequest:
    """The A-ASSOCIATE-RQ whose PDU body (after the 6-byte header) is ``body``."""
    view = memoryview(body)
    if len(view) < 68:
        raise PduError("A-ASSOCIATE-RQ shorter than its fixed fields")
    (version,) = struct.unpack_from(">H", view, 0)
    if not version & 1:
        raise PduError("protocol version 1 not offered")
    raw_called, raw_calling = bytes(view[4:20]), bytes(view[20:36])
    context_name = ""
    contexts: list[PresentationContext] = []
    max_length, impl_uid, impl_version = 0, "", ""
    others: set[int] = set()
    for item_type, value in _items(view[68:]):
        if item_type == 0x10:
            context_name = _text(value)
        elif item_type == 0x20:
            if len(value) < 4:
                raise PduError("presentation context item too short")
            abstract, syntaxes = "", []
            for sub_type, sub in _items(value[4:]):
                if sub_type == 0x30:
                    abstract = _text(sub)
                elif sub_type == 0x40:
                    syntaxes.append(_text(sub))
            contexts.append(PresentationContext(value[0], abstract, tuple(syntaxes)))
        elif item_type == 0x50:
            for sub_type, sub in _items(value):
                if sub_type == 0x51:
                    if len(sub) != 4:
                        raise PduError("maximum length sub-item is not 4 bytes")
                    (max_length,) = struct.unpack(">I", sub)
                elif sub_type == 0x52:
                    impl_uid = _text(sub)
                elif sub_type == 0x55:
                    impl_version = _text(sub)
                else:
                    others.add(sub_type)
    ids = [c.id for c in contexts]
    if len(set(ids)) != len(ids) or any(i % 2 == 0 for i in ids):
        raise PduError("presentation context IDs must be odd and unique")
    return AssociateRequest(
        called_ae=_text(raw_called),
        calling_ae=_text(raw_calling),
        application_context=context_name,
        contexts=tuple(contexts),
        max_pdu_length=max_length,
        implementation_class_uid=impl_uid,
        implementation_version=impl_version,
        other_user_items=frozenset(others),
        raw_called_ae=raw_called,
        raw_calling_ae=raw_calling,
    )


def _uid(value: str) -> bytes:
    return value.encode("ascii")


def associate_ac(
    rq: AssociateRequest,
    results: list[tuple[int, int, str]],
    *,
    max_pdu_length: int,
    implementation_class_uid: str,
    implementation_version: str,
) -> bytes:
    """The A-ASSOCIATE-AC answering ``rq``; ``results``: (context ID, result, transfer syntax)
    per proposed context (result 0 acceptance, 3 abstract syntax / 4 transfer syntaxes not
    supported; the transfer syntax is ignored by the peer unless accepted)."""
    items = [_item(0x10, _uid(APPLICATION_CONTEXT))]
    for context_id, result, syntax in results:
        items.append(_item(0x21, bytes([context_id, 0, result, 0]) + _item(0x40, _uid(syntax))))
    user = (
        _item(0x51, struct.pack(">I", max_pdu_length))
        + _item(0x52, _uid(implementation_class_uid))
        + _item(0x55, implementation_version.encode("ascii")[:16])
    )
    items.append(_item(0x50, user))
    fixed = struct.pack(">HH", 1, 0) + rq.raw_called_ae + rq.raw_calling_ae + bytes(32)
    return encode(A_ASSOCIATE_AC, fixed + b"".join(items))


def associate_rj(result: int, source: int, reason: int) -> bytes:
    """A-ASSOCIATE-RJ (PS3.8 §9.3.4): result 1 permanent / 2 transient; source 1 service user,
    2 service provider (ACSE), 3 service provider (presentation)."""
    return encode(A_ASSOCIATE_RJ, bytes([0, result, source, reason]))


def release_rp() -> bytes:
    return encode(A_RELEASE_RP, bytes(4))


def abort(source: int = 2, reason: int = 0) -> bytes:
    """A-ABORT: source 0 service user, 2 service provider; reason (provider) 0 not specified,
    1 unrecognised PDU, 2 unexpected PDU, 4 unrecognised PDU parameter, 6 invalid parameter."""
    return encode(A_ABORT, bytes([0, 0, source, reason]))


@dataclass(frozen=True)
class Pdv:
    context_id: int
    is_command: bool
    is_last: bool
    data: memoryview


def parse_pdata(body: bytes | bytearray | memoryview) -> list[Pdv]:
    """The presentation data values of one P-DATA-TF body (views into ``body``, not copies)."""
    view = memoryview(body)
    pdvs: list[Pdv] = []
    pos = 0
    while pos < len(view):
        if pos + 6 > len(view):
            raise PduError("truncated PDV item")
        (length,) = struct.unpack_from(">I", view, pos)
        if length < 2 or pos + 4 + length > len(view):
            raise PduError("PDV item length does not fit its PDU")
        control = view[pos + 5]
        pdvs.append(
            Pdv(view[pos + 4], bool(control & 1), bool(control & 2), view[pos + 6 : pos + 4 + length])
        )
        pos += 4 + length
    if not pdvs:
        raise PduError("P-DATA-TF without presentation data values")
    return pdvs


def pdata(context_id: int, payload: bytes, *, is_command: bool) -> bytes:
    """One P-DATA-TF holding ``payload`` as a single, last fragment (responses are small)."""
    control = (1 if is_command else 0) | 2
    pdv = struct.pack(">IBB", len(payload) + 2, context_id, control) + payload
    return encode(P_DATA_TF, pdv)


# -- command sets (Implicit VR Little Endian, PS3.7 §E) ----------------------------------------------

_ELEMENT = struct.Struct("<HHI")
_US_TAGS: Final = frozenset({0x0100, 0x0110, 0x0120, 0x0700, 0x0800, 0x0900, 0x1031})
_UL_TAGS: Final = frozenset({0x0000})

Command = dict[int, int | str]


def parse_command(data: bytes | memoryview) -> Command:
    """The elements of a command set by element number (group 0000): US/UL values as int, the
    rest as text."""
    view = memoryview(data)
    out: Command = {}
    pos = 0
    while pos < len(view):
        if pos + 8 > len(view):
            raise PduError("truncated command element")
        group, element, length = _ELEMENT.unpack_from(view, pos)
        if group != 0x0000:
            raise PduError("command set element outside group 0000")
        end = pos + 8 + length
        if end > len(view):
            raise PduError("command element longer than the command set")
        value = view[pos + 8 : end]
        if element in _US_TAGS:
            if length != 2:
                raise PduError(f"command element (0000,{element:04X}) is not a US")
            out[element] = int.from_bytes(value, "little")
        elif element in _UL_TAGS:
            if length != 4:
                raise PduError("command group length is not a UL")
            out[element] = int.from_bytes(value, "little")
        else:
            out[element] = _text(value)
        pos = end
    return out


def command_set(elements: Command) -> bytes:
    """Encode a command set (with its group length) from element number -> value."""
    body = bytearray()
    for element in sorted(elements):
        if element == 0x0000:
            continue
        value = elements[element]
        if isinstance(value, int):
            raw = value.to_bytes(2, "little")
        else:
            raw = value.encode("ascii")
            if len(raw) % 2:
                raw += b"\x00"
        body += _ELEMENT.pack(0, element, len(raw)) + raw
    return _ELEMENT.pack(0, 0, 4) + struct.pack("<I", len(body)) + bytes(body)


# -- the Part 10 header of a received data set -----------------------------------------------------


def _explicit(element: int, vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH", 2, element) + vr + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return struct.pack("<HH", 2, element) + vr + struct.pack("<H", len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def file_meta(
    *,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax: str,
    implementation_class_uid: str,
    implementation_version: str,
    source_ae: str,
) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group (PS3.10 §7.1) of a data set
    received over the network; the data set's own bytes follow it unchanged."""
    elements = (
        _explicit(0x0001, b"OB", b"\x00\x01")
        + _explicit(0x0002, b"UI", _padded(sop_class_uid, b"\x00"))
        + _explicit(0x0003, b"UI", _padded(sop_instance_uid, b"\x00"))
        + _explicit(0x0010, b"UI", _padded(transfer_syntax, b"\x00"))
        + _explicit(0x0012, b"UI", _padded(implementation_class_uid, b"\x00"))
        + _explicit(0x0013, b"SH", _padded(implementation_version[:16], b" "))
        + (_explicit(0x0016, b"AE", _padded(source_ae[:16], b" ")) if source_ae else b"")
    )
    length = _explicit(0x0000, b"UL", struct.pack("<I", len(elements)))
    return b"\x00" * 128 + b"DICM" + length + elements
