"""The audit event model and its canonical bytes (the ledger's leaves).

An event says who (:class:`Actor`) did what (:class:`EventKind`, ``action``) to which object, for
which patient (a keyed pseudonym only), when, with which :class:`Outcome` and why. Its leaf bytes
are the RFC 8785 (JSON Canonicalization Scheme) form of :meth:`AuditEvent.to_json`; the ledger
stores and serves exactly those bytes.

No PHI: patients appear only as the pseudonym the caller computed
(:class:`medvault.crypto.Pseudonymizer`: 32+ lowercase hex); ``details`` refuses keys that name
personal data (``patient_name``, ``birth_date``, ``address`` …) and DICOM person-name values.
Free text (``reason``) is the caller's responsibility: put no names in it.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from medvault.errors import InvalidInput

__all__ = [
    "EVENT_FORMAT_VERSION",
    "Actor",
    "ActorKind",
    "AuditEvent",
    "EventKind",
    "ObjectRef",
    "Outcome",
    "canonical_bytes",
    "canonicalize",
    "parse_event",
]

EVENT_FORMAT_VERSION = 1
MAX_SAFE_INTEGER = 2**53 - 1  # RFC 8785 §3.2.2.3: numbers are IEEE 754 doubles; we allow exact ints only
_MAX_TEXT = 2048
_DETAIL_KEY_RE = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")
_PSEUDONYM_RE = re.compile(r"[0-9a-f]{32,128}\Z")
# Substrings of detail keys that name personal data (after lower-casing and dropping "_", "-").
_PHI_KEY_WORDS = ("patient", "name", "birth", "dob", "ssn", "mrn", "phone", "email", "address", "accession")


class EventKind(enum.StrEnum):
    LOGIN = "login"
    LOGOUT = "logout"
    AUTHZ_DECISION = "authz_decision"
    STORE = "store"
    QUERY = "query"
    RETRIEVE = "retrieve"
    DELETE = "delete"
    EXPORT = "export"
    DEIDENTIFY = "deidentify"
    ERASURE = "erasure"
    KEY_ROTATION = "key_rotation"
    USER_CHANGE = "user_change"
    ROLE_CHANGE = "role_change"
    GRANT_CHANGE = "grant_change"
    NODE_CHANGE = "node_change"
    APIKEY_CHANGE = "apikey_change"
    BREAK_GLASS = "break_glass"
    CONFIG_CHANGE = "config_change"
    ALERT = "alert"
    ASSOCIATION = "association"
    BACKUP = "backup"

    @property
    def is_read(self) -> bool:
        """Events that accompany reads and may be group-committed: queries, retrievals, the
        authorization decisions and sign-ins around them, and DICOM associations. Changes to data,
        accounts, grants, keys, nodes or configuration are durable before they are acknowledged."""
        return self in _GROUP_COMMITTED


_GROUP_COMMITTED = frozenset(
    {
        EventKind.QUERY,
        EventKind.RETRIEVE,
        EventKind.AUTHZ_DECISION,
        EventKind.LOGIN,
        EventKind.LOGOUT,
        EventKind.ASSOCIATION,
    }
)


class ActorKind(enum.StrEnum):
    USER = "user"
    NODE = "node"
    APIKEY = "apikey"
    SYSTEM = "system"


class Outcome(enum.StrEnum):
    SUCCESS = "success"
    DENIED = "denied"
    FAILURE = "failure"


def _text(value: object, what: str, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value or len(value) > _MAX_TEXT:
        raise InvalidInput(f"event {what} must be a non-empty string of at most {_MAX_TEXT} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(f"event {what} is not valid Unicode text") from None


@dataclass(frozen=True, kw_only=True)
class Actor:
    """Who acted: a user, a node (DICOM AE / peer), an API key, or medvault itself."""

    kind: ActorKind
    id: str
    address: str | None = None  # client network address
    auth: str | None = None  # how it authenticated: "password+totp", "mtls", "apikey", …

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", ActorKind(self.kind))
        _text(self.id, "actor id")
        _text(self.address, "actor address", optional=True)
        _text(self.auth, "actor auth method", optional=True)


@dataclass(frozen=True, kw_only=True)
class ObjectRef:
    """What was acted on: ``type`` ("study", "series", "instance", "user", "key", …) and its id."""

    type: str
    id: str

    def __post_init__(self) -> None:
        _text(self.type, "object type")
        _text(self.id, "object id")


Scalar = str | int | bool | None


def _check_details(details: Mapping[str, Scalar]) -> None:
    for key, value in details.items():
        if not isinstance(key, str) or not _DETAIL_KEY_RE.match(key):
            raise InvalidInput(f"event detail key {key!r} must be lower_snake_case, at most 64 characters")
        folded = key.replace("_", "")
        for word in _PHI_KEY_WORDS:
            if word in folded:
                raise InvalidInput(
                    f"event detail {key!r} looks like personal data ({word!r}); the ledger holds no PHI",
                    hint="Pass patients only as a keyed pseudonym in the 'patient' field.",
                )
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            if abs(value) > MAX_SAFE_INTEGER:
                raise InvalidInput(f"event detail {key!r}: integer beyond 2**53 - 1")
            continue
        if isinstance(value, str):
            _text(value, f"detail {key!r}")
            if "^" in value:
                raise InvalidInput(f"event detail {key!r} looks like a DICOM person name; no PHI")
            continue
        raise InvalidInput(f"event detail {key!r} must be a string, integer, boolean or null")


def _format_time(t: datetime) -> str:
    if t.tzinfo is None or t.utcoffset() is None:
        raise InvalidInput("event time must be timezone-aware")
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True, kw_only=True)
class AuditEvent:
    """One ledger event. Every field is checked on construction; bad input raises InvalidInput."""

    kind: EventKind
    time: datetime
    actor: Actor
    action: str
    outcome: Outcome
    object: ObjectRef | None = None
    patient: str | None = None  # keyed pseudonym only (never a name or an MRN)
    reason: str | None = None
    details: Mapping[str, Scalar] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", EventKind(self.kind))
        object.__setattr__(self, "outcome", Outcome(self.outcome))
        if not isinstance(self.actor, Actor):
            raise InvalidInput("event actor must be an Actor")
        if self.object is not None and not isinstance(self.object, ObjectRef):
            raise InvalidInput("event object must be an ObjectRef")
        _format_time(self.time)
        _text(self.action, "action")
        _text(self.reason, "reason", optional=True)
        if self.patient is not None and (
            not isinstance(self.patient, str) or not _PSEUDONYM_RE.match(self.patient)
        ):
            raise InvalidInput(
                "event patient must be a keyed pseudonym (32-128 lowercase hex characters)",
                hint="Use medvault.crypto.Pseudonymizer; never pass a name, birth date or MRN.",
            )
        if not isinstance(self.details, Mapping):
            raise InvalidInput("event details must be a mapping")
        _check_details(self.details)
        object.__setattr__(self, "details", MappingProxyType(dict(self.details)))

    def to_json(self) -> dict[str, Any]:
        """The JSON object whose canonical form is the leaf. ``None`` fields are left out."""
        actor: dict[str, Any] = {"kind": self.actor.kind.value, "id": self.actor.id}
        if self.actor.address is not None:
            actor["address"] = self.actor.address
        if self.actor.auth is not None:
            actor["auth"] = self.actor.auth
        out: dict[str, Any] = {
            "v": EVENT_FORMAT_VERSION,
            "kind": self.kind.value,
            "time": _format_time(self.time),
            "actor": actor,
            "action": self.action,
            "outcome": self.outcome.value,
        }
        if self.object is not None:
            out["object"] = {"type": self.object.type, "id": self.object.id}
        if self.patient is not None:
            out["patient"] = self.patient
        if self.reason is not None:
            out["reason"] = self.reason
        if self.details:
            out["details"] = dict(self.details)
        return out


def canonical_bytes(event: AuditEvent) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of ``event`` — exactly the ledger leaf."""
    # Every key here is ASCII (field names, _DETAIL_KEY_RE), so sort_keys' code-point order is
    # RFC 8785 §3.2.3's UTF-16 order; strings are escaped as §3.2.2.2 prescribes (same as
    # ensure_ascii=False: only '"', '\\' and control characters); integers are exact (<= 2**53 - 1).
    return _dumps(event.to_json())


def _dumps(value: Any) -> bytes:
    return json.dumps(
        value, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
    ).encode("utf-8")


def _utf16_key(s: str) -> bytes:
    return s.encode("utf-16-be", "surrogatepass")


def _canon(value: Any, out: list[str]) -> None:
    if value is None or isinstance(value, bool):
        out.append(json.dumps(value))
    elif isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER:
            raise InvalidInput("integers beyond 2**53 - 1 have no exact RFC 8785 form")
        out.append(str(value))
    elif isinstance(value, str):
        out.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _canon(item, out)
        out.append("]")
    elif isinstance(value, Mapping):
        out.append("{")
        if not all(isinstance(k, str) for k in value):
            raise InvalidInput("JSON object keys must be strings")
        for i, key in enumerate(sorted(value, key=_utf16_key)):  # RFC 8785 §3.2.3
            if i:
                out.append(",")
            out.append(json.dumps(key, ensure_ascii=False))
            out.append(":")
            _canon(value[key], out)
        out.append("}")
    else:
        raise InvalidInput(f"{type(value).__name__} has no canonical JSON form here (no floats)")


def canonicalize(value: Any) -> bytes:
    """RFC 8785 canonical JSON of ``value`` restricted to null, bools, exact ints, strings, lists
    and objects (floats are refused). Raises InvalidInput for anything else or for lone surrogates."""
    out: list[str] = []
    _canon(value, out)
    try:
        return "".join(out).encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput("strings must be valid Unicode (no lone surrogates)") from None


def parse_event(data: bytes) -> AuditEvent:
    """Read a leaf back into an :class:`AuditEvent`; the bytes must be its canonical form."""
    try:
        raw = json.loads(data)
        actor = raw["actor"]
        obj = raw.get("object")
        event = AuditEvent(
            kind=EventKind(raw["kind"]),
            time=datetime.strptime(raw["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC),
            actor=Actor(
                kind=ActorKind(actor["kind"]),
                id=actor["id"],
                address=actor.get("address"),
                auth=actor.get("auth"),
            ),
            action=raw["action"],
            outcome=Outcome(raw["outcome"]),
            object=ObjectRef(type=obj["type"], id=obj["id"]) if obj is not None else None,
            patient=raw.get("patient"),
            reason=raw.get("reason"),
            details=raw.get("details", {}),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"not a ledger event: {type(exc).__name__}") from None
    if raw.get("v") != EVENT_FORMAT_VERSION or canonical_bytes(event) != data:
        raise InvalidInput("not a canonical ledger event of this format version")
    return event
