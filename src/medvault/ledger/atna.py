"""Ledger events as IHE ATNA audit messages: the DICOM PS3.15 A.5 ``AuditMessage`` XML.

:func:`audit_message` maps one :class:`~medvault.ledger.events.AuditEvent` to the A.5.1 schema:

* ``EventIdentification`` — ``EventID`` from DCM CID 400 (table :data:`EVENT_CODES`), an
  ``EventTypeCode`` from CID 401 where one fits, then ``EventTypeCode`` (medvault kind, with the
  ledger ``action`` as its ``originalText``); ``EventActionCode`` C/R/U/D/E; ``EventDateTime`` (UTC);
  ``EventOutcomeIndicator`` 0 (success), 4 (denied: minor failure), 8 (failure: serious failure);
  ``EventOutcomeDescription`` = the event's ``reason`` when the outcome is not a success.
* ``ActiveParticipant`` — the actor (``UserID``, ``NetworkAccessPointID`` with its type code,
  ``UserIsRequestor="true"``) and, unless the actor is medvault itself, medvault as the
  application (CID 402 110150, ``UserIsRequestor="false"``).
* ``AuditSourceIdentification`` — ``AuditSourceID`` (the caller's: the export uses the ledger's
  origin), optional ``AuditEnterpriseSiteID``, ``AuditSourceTypeCode`` 4 (application server).
* ``ParticipantObjectIdentification`` — the study (ID type DCM 110180 Study Instance UID; SOP
  instances as ``ParticipantObjectDescription/SOPClass/Instance``), the patient (ID type RFC-3881
  2 Patient Number, **the keyed pseudonym only**: the ledger holds no name, birth date or MRN and
  so neither does this message; no ``ParticipantObjectName`` is ever written), and users, nodes,
  API keys or other objects that an event changed.

XML is written with :mod:`xml.etree.ElementTree` (all escaping is its own); characters XML 1.0
cannot carry are replaced by U+FFFD, and line breaks are written as character references so one
message is always one line.
"""

from __future__ import annotations

import ipaddress
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC

from medvault.ledger.events import ActorKind, AuditEvent, EventKind, Outcome

__all__ = [
    "EVENT_CODES",
    "OUTCOME_INDICATORS",
    "AtnaCode",
    "EventCoding",
    "audit_message",
    "event_coding",
]


@dataclass(frozen=True)
class AtnaCode:
    """A coded value (A.5.1 ``CodedValueType``): ``csd-code``, ``codeSystemName``, ``originalText``."""

    code: str
    system: str
    text: str

    def element(self, parent: ET.Element, tag: str) -> ET.Element:
        return ET.SubElement(
            parent,
            tag,
            {
                "csd-code": _token(self.code),
                "codeSystemName": _token(self.system),
                "originalText": _token(self.text),
            },
        )


def _dcm(code: str, text: str) -> AtnaCode:
    return AtnaCode(code, "DCM", text)


# CID 400 Audit Event ID
APPLICATION_ACTIVITY = _dcm("110100", "Application Activity")
AUDIT_LOG_USED = _dcm("110101", "Audit Log Used")
BEGIN_TRANSFERRING = _dcm("110102", "Begin Transferring DICOM Instances")
INSTANCES_ACCESSED = _dcm("110103", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = _dcm("110104", "DICOM Instances Transferred")
STUDY_DELETED = _dcm("110105", "DICOM Study Deleted")
EXPORT = _dcm("110106", "Export")
IMPORT = _dcm("110107", "Import")
NETWORK_ENTRY = _dcm("110108", "Network Entry")
ORDER_RECORD = _dcm("110109", "Order Record")
PATIENT_RECORD = _dcm("110110", "Patient Record")
PROCEDURE_RECORD = _dcm("110111", "Procedure Record")
QUERY = _dcm("110112", "Query")
SECURITY_ALERT = _dcm("110113", "Security Alert")
USER_AUTHENTICATION = _dcm("110114", "User Authentication")

# CID 401 Audit Event Type Code
APPLICATION_START = _dcm("110120", "Application Start")
APPLICATION_STOP = _dcm("110121", "Application Stop")
LOGIN = _dcm("110122", "Login")
LOGOUT = _dcm("110123", "Logout")
NODE_AUTHENTICATION = _dcm("110126", "Node Authentication")
EMERGENCY_OVERRIDE_STARTED = _dcm("110127", "Emergency Override Started")
NETWORK_CONFIGURATION = _dcm("110128", "Network Configuration")
SECURITY_CONFIGURATION = _dcm("110129", "Security Configuration")
SOFTWARE_CONFIGURATION = _dcm("110131", "Software Configuration")
USE_OF_RESTRICTED_FUNCTION = _dcm("110132", "Use of Restricted Function")
SECURITY_ROLES_CHANGED = _dcm("110136", "Security Roles Changed")
USER_SECURITY_ATTRIBUTES_CHANGED = _dcm("110137", "User Security Attributes Changed")
AUTHORIZATION_DECISION = _dcm("110144", "Authorization Decision")

# CID 402 Audit Active Participant Role ID
ROLE_APPLICATION = _dcm("110150", "Application")

# CID 404 / RFC 3881 Participant Object ID Type Codes
STUDY_INSTANCE_UID = _dcm("110180", "Study Instance UID")
NODE_ID = _dcm("110182", "Node ID")
PATIENT_NUMBER = AtnaCode("2", "RFC-3881", "Patient Number")
USER_IDENTIFIER = AtnaCode("11", "RFC-3881", "User Identifier")

MEDVAULT_CODE_SYSTEM = "medvault"
AUDIT_SOURCE_TYPE_APPLICATION_SERVER = "4"


@dataclass(frozen=True)
class EventCoding:
    """How one ledger event is identified in ATNA: EventID, action code, optional event type."""

    event_id: AtnaCode
    action: str  # EventActionCode: C, R, U, D or E
    type_code: AtnaCode | None = None


#: The coding of each ledger event kind (before the per-event refinements of :func:`event_coding`).
EVENT_CODES: dict[EventKind, EventCoding] = {
    EventKind.LOGIN: EventCoding(USER_AUTHENTICATION, "E", LOGIN),
    EventKind.LOGOUT: EventCoding(USER_AUTHENTICATION, "E", LOGOUT),
    EventKind.AUTHZ_DECISION: EventCoding(SECURITY_ALERT, "E", AUTHORIZATION_DECISION),
    EventKind.STORE: EventCoding(INSTANCES_TRANSFERRED, "C"),
    EventKind.QUERY: EventCoding(QUERY, "E"),
    EventKind.RETRIEVE: EventCoding(INSTANCES_ACCESSED, "R"),
    EventKind.DELETE: EventCoding(STUDY_DELETED, "D"),
    EventKind.EXPORT: EventCoding(EXPORT, "R"),
    EventKind.DEIDENTIFY: EventCoding(INSTANCES_ACCESSED, "R"),
    EventKind.ERASURE: EventCoding(PATIENT_RECORD, "D"),
    EventKind.KEY_ROTATION: EventCoding(SECURITY_ALERT, "E", SECURITY_CONFIGURATION),
    EventKind.USER_CHANGE: EventCoding(SECURITY_ALERT, "E", USER_SECURITY_ATTRIBUTES_CHANGED),
    EventKind.ROLE_CHANGE: EventCoding(SECURITY_ALERT, "E", SECURITY_ROLES_CHANGED),
    EventKind.GRANT_CHANGE: EventCoding(SECURITY_ALERT, "E", USER_SECURITY_ATTRIBUTES_CHANGED),
    EventKind.NODE_CHANGE: EventCoding(SECURITY_ALERT, "E", NETWORK_CONFIGURATION),
    EventKind.APIKEY_CHANGE: EventCoding(SECURITY_ALERT, "E", USER_SECURITY_ATTRIBUTES_CHANGED),
    EventKind.BREAK_GLASS: EventCoding(SECURITY_ALERT, "E", EMERGENCY_OVERRIDE_STARTED),
    EventKind.CONFIG_CHANGE: EventCoding(SECURITY_ALERT, "E", SOFTWARE_CONFIGURATION),
    EventKind.ALERT: EventCoding(SECURITY_ALERT, "E", USE_OF_RESTRICTED_FUNCTION),
    EventKind.ASSOCIATION: EventCoding(USER_AUTHENTICATION, "E", LOGIN),
    EventKind.BACKUP: EventCoding(EXPORT, "R"),  # backup.create; verify and restore are refined
}

#: EventOutcomeIndicator per ledger outcome (12, "major failure", is never claimed by an export).
OUTCOME_INDICATORS: dict[Outcome, str] = {Outcome.SUCCESS: "0", Outcome.DENIED: "4", Outcome.FAILURE: "8"}

# DIMSE listener actions (medvault.dimse.audit) that have a more precise coding than ASSOCIATION's.
_DIMSE_CODES: dict[str, EventCoding] = {
    "dimse.listener.start": EventCoding(APPLICATION_ACTIVITY, "E", APPLICATION_START),
    "dimse.listener.stop": EventCoding(APPLICATION_ACTIVITY, "E", APPLICATION_STOP),
    "dimse.plain_enabled": EventCoding(SECURITY_ALERT, "E", SECURITY_CONFIGURATION),
    "dimse.store": EventCoding(INSTANCES_TRANSFERRED, "C"),
    "dimse.find": EventCoding(QUERY, "E"),
    "dimse.get": EventCoding(INSTANCES_TRANSFERRED, "R"),
    "dimse.move": EventCoding(INSTANCES_TRANSFERRED, "R"),
}


def event_coding(event: AuditEvent) -> EventCoding:
    """The ATNA coding of ``event``: :data:`EVENT_CODES`, refined for exports of the ledger itself
    (Audit Log Used, R), for deletions of single instances
    (DICOM Instances Accessed, D), for backups (a restore is an Import, C; a verification is
    Application Activity, E) and for DICOM associations (by DIMSE action and outcome: a node
    that is refused is a Security Alert / Node Authentication, a release is a Logout)."""
    if event.kind is EventKind.EXPORT and event.object is not None and event.object.type == "ledger":
        return EventCoding(AUDIT_LOG_USED, "R")  # an export of the audit trail itself
    if event.kind is EventKind.DELETE and (event.object is None or event.object.type != "study"):
        return EventCoding(INSTANCES_ACCESSED, "D")
    if event.kind is EventKind.BACKUP and event.action == "backup.restore":
        return EventCoding(IMPORT, "C")
    if event.kind is EventKind.BACKUP and event.action == "backup.verify":
        return EventCoding(APPLICATION_ACTIVITY, "E")
    if event.kind is EventKind.ASSOCIATION:
        specific = _DIMSE_CODES.get(event.action)
        if specific is not None:
            return specific
        if event.outcome is not Outcome.SUCCESS:
            return EventCoding(SECURITY_ALERT, "E", NODE_AUTHENTICATION)
        if event.details.get("event") in ("released", "aborted"):
            return EventCoding(USER_AUTHENTICATION, "E", LOGOUT)
    return EVENT_CODES[event.kind]


# XML 1.0 Char production: everything else (most C0 controls, lone surrogates, U+FFFE/U+FFFF).
_NOT_XML_CHAR = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _clean(text: str) -> str:
    return _NOT_XML_CHAR.sub("\ufffd", text)


def _token(text: str) -> str:
    """An xsd:token value: no leading, trailing or repeated white space."""
    return " ".join(_clean(text).split()) or "-"


def _network_access_point(address: str | None) -> tuple[str, str] | None:
    """(NetworkAccessPointID, NetworkAccessPointTypeCode) of a client address: "2" for an IP
    address (any ":port" suffix removed), "1" for a machine name."""
    if not address:
        return None
    text = address.strip()
    candidates = [text]
    if text.startswith("[") and "]" in text:  # [v6]:port
        candidates.insert(0, text[1 : text.index("]")])
    elif text.count(":") == 1:  # v4:port or name:port
        candidates.insert(0, text.rsplit(":", 1)[0])
    for candidate in candidates:
        try:
            return str(ipaddress.ip_address(candidate)), "2"
        except ValueError:
            continue
    return _token(candidates[0]), "1"


def _participant(
    message: ET.Element, user_id: str, *, requestor: bool, address: str | None, role: AtnaCode | None
) -> None:
    attrs = {"UserID": _clean(user_id), "UserIsRequestor": "true" if requestor else "false"}
    access_point = _network_access_point(address)
    if access_point is not None:
        attrs["NetworkAccessPointID"], attrs["NetworkAccessPointTypeCode"] = access_point
    element = ET.SubElement(message, "ActiveParticipant", attrs)
    if role is not None:
        role.element(element, "RoleIDCode")


def _participant_object(
    message: ET.Element,
    object_id: str,
    id_type: AtnaCode,
    *,
    type_code: str,
    role: str | None,
    life_cycle: str | None = None,
) -> ET.Element:
    attrs = {"ParticipantObjectID": _token(object_id), "ParticipantObjectTypeCode": type_code}
    if role is not None:
        attrs["ParticipantObjectTypeCodeRole"] = role
    if life_cycle is not None:
        attrs["ParticipantObjectDataLifeCycle"] = life_cycle
    element = ET.SubElement(message, "ParticipantObjectIdentification", attrs)
    id_type.element(element, "ParticipantObjectIDTypeCode")
    return element


# ParticipantObjectDataLifeCycle by kind (A.5.1.2.3): de-identification, export, logical deletion.
_LIFE_CYCLE = {EventKind.DEIDENTIFY: "7", EventKind.EXPORT: "10", EventKind.DELETE: "14"}
# (ID type, ParticipantObjectTypeCode, ParticipantObjectTypeCodeRole) of non-study objects.
_OBJECT_TYPES: dict[str, tuple[AtnaCode, str, str | None]] = {
    "user": (USER_IDENTIFIER, "1", "11"),  # Person, Security User Entity
    "apikey": (USER_IDENTIFIER, "2", "11"),  # System Object, Security User Entity
    "node": (NODE_ID, "2", "11"),
}


def _objects(message: ET.Element, event: AuditEvent) -> None:
    obj = event.object
    study_uid = obj.id if obj is not None and obj.type == "study" else None
    detail_study = event.details.get("study_uid")
    if study_uid is None and isinstance(detail_study, str):
        study_uid = detail_study
    if study_uid is not None:
        study = _participant_object(
            message,
            study_uid,
            STUDY_INSTANCE_UID,
            type_code="2",  # System Object
            role="3",  # Report
            life_cycle=_LIFE_CYCLE.get(event.kind),
        )
        if obj is not None and obj.type == "instance":
            description = ET.SubElement(study, "ParticipantObjectDescription")
            sop_class = ET.SubElement(description, "SOPClass", {"NumberOfInstances": "1"})
            ET.SubElement(sop_class, "Instance", {"UID": _token(obj.id)})
    elif obj is not None:
        id_type, type_code, role = _OBJECT_TYPES.get(
            obj.type, (AtnaCode(_token(obj.type), MEDVAULT_CODE_SYSTEM, obj.type), "2", None)
        )
        _participant_object(message, obj.id, id_type, type_code=type_code, role=role)
    if event.patient is not None:
        # The keyed pseudonym, never a name or an MRN (AuditEvent refuses anything else).
        _participant_object(message, event.patient, PATIENT_NUMBER, type_code="1", role="1")


def audit_message(event: AuditEvent, *, source_id: str, enterprise_site_id: str | None = None) -> bytes:
    """The DICOM PS3.15 A.5 ``AuditMessage`` for ``event`` as UTF-8 XML on one line (no XML
    declaration). ``source_id`` is the AuditSourceID (e.g. the ledger origin); it is also the
    UserID of medvault as the application participant."""
    coding = event_coding(event)
    message = ET.Element("AuditMessage")
    ident_attrs = {
        "EventActionCode": coding.action,
        "EventDateTime": event.time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "EventOutcomeIndicator": OUTCOME_INDICATORS[event.outcome],
    }
    ident = ET.SubElement(message, "EventIdentification", ident_attrs)
    coding.event_id.element(ident, "EventID")
    if coding.type_code is not None:
        coding.type_code.element(ident, "EventTypeCode")
    AtnaCode(event.kind.value, MEDVAULT_CODE_SYSTEM, event.action).element(ident, "EventTypeCode")
    if event.outcome is not Outcome.SUCCESS and event.reason:
        ET.SubElement(ident, "EventOutcomeDescription").text = _clean(event.reason)

    actor = event.actor
    is_medvault = actor.kind is ActorKind.SYSTEM and actor.id == "medvault"
    _participant(
        message,
        source_id if is_medvault else actor.id,
        requestor=True,
        address=actor.address,
        role=ROLE_APPLICATION if is_medvault else None,
    )
    if not is_medvault:
        _participant(message, source_id, requestor=False, address=None, role=ROLE_APPLICATION)

    source_attrs = {"AuditSourceID": _token(source_id)}
    if enterprise_site_id:
        source_attrs["AuditEnterpriseSiteID"] = _token(enterprise_site_id)
    source = ET.SubElement(message, "AuditSourceIdentification", source_attrs)
    ET.SubElement(source, "AuditSourceTypeCode", {"csd-code": AUDIT_SOURCE_TYPE_APPLICATION_SERVER})

    _objects(message, event)
    data: bytes = ET.tostring(message, encoding="utf-8", xml_declaration=False)
    # ElementTree escapes line breaks in attributes but not in text: make one message one line.
    return data.replace(b"\r", b"&#13;").replace(b"\n", b"&#10;")
