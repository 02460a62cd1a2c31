"""ATNA audit messages (DICOM PS3.15 A.5): well-formed XML in the schema's order, the DCM codes per
event kind, the outcome indicators, and nothing about a patient but the keyed pseudonym."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta, timezone

import pytest

from medvault.ledger import Actor, ActorKind, AuditEvent, EventKind, ObjectRef, Outcome
from medvault.ledger.atna import EVENT_CODES, OUTCOME_INDICATORS, audit_message, event_coding

from .conftest import PSEUDONYM, T0, make_event

SOURCE = "medvault.test/ledger"
STUDY = "1.2.826.0.1.3680043.8.498.100"
INSTANCE = "1.2.826.0.1.3680043.8.498.101"
USER = Actor(kind=ActorKind.USER, id="dr-who", address="10.1.2.3", auth="password+totp")


def event(
    kind: EventKind,
    *,
    outcome: Outcome = Outcome.SUCCESS,
    obj: ObjectRef | None = None,
    actor: Actor = USER,
    action: str = "some.action",
    patient: str | None = None,
    reason: str | None = None,
    details: dict[str, str | int] | None = None,
    time: datetime = T0,
) -> AuditEvent:
    return AuditEvent(
        kind=kind,
        time=time,
        actor=actor,
        action=action,
        outcome=outcome,
        object=obj,
        patient=patient,
        reason=reason,
        details=details or {},
    )


def parse(e: AuditEvent) -> ET.Element:
    data = audit_message(e, source_id=SOURCE)
    assert b"\n" not in data and b"\r" not in data  # one message, one line
    return ET.fromstring(data)


def code(element: ET.Element | None) -> tuple[str, str, str]:
    assert element is not None
    return element.attrib["csd-code"], element.attrib["codeSystemName"], element.attrib["originalText"]


def event_id(root: ET.Element) -> str:
    return code(root.find("EventIdentification/EventID"))[0]


def type_codes(root: ET.Element) -> list[tuple[str, str, str]]:
    return [code(e) for e in root.findall("EventIdentification/EventTypeCode")]


def objects(root: ET.Element) -> list[ET.Element]:
    return root.findall("ParticipantObjectIdentification")


def test_every_kind_gives_a_message_in_schema_order() -> None:
    for kind in EventKind:
        root = parse(event(kind, obj=ObjectRef(type="study", id=STUDY), patient=PSEUDONYM))
        assert root.tag == "AuditMessage"
        tags = [child.tag for child in root]
        assert tags[0] == "EventIdentification"
        n_participants = tags.count("ActiveParticipant")
        assert n_participants >= 1 and tags[1 : 1 + n_participants] == ["ActiveParticipant"] * n_participants
        assert tags[1 + n_participants] == "AuditSourceIdentification"
        assert set(tags[2 + n_participants :]) <= {"ParticipantObjectIdentification"}
        ident = root.find("EventIdentification")
        assert ident is not None
        assert ident[0].tag == "EventID"
        assert ident.attrib["EventActionCode"] in {"C", "R", "U", "D", "E"}
        assert ident.attrib["EventDateTime"] == "2024-05-06T07:08:09.123456Z"
        assert code(ident.find("EventID"))[1] == "DCM"
        # the medvault kind and action travel as the last EventTypeCode
        assert type_codes(root)[-1] == (kind.value, "medvault", "some.action")


@pytest.mark.parametrize(
    ("kind", "expected_id", "action", "expected_type"),
    [
        (EventKind.LOGIN, "110114", "E", "110122"),
        (EventKind.LOGOUT, "110114", "E", "110123"),
        (EventKind.AUTHZ_DECISION, "110113", "E", "110144"),
        (EventKind.STORE, "110104", "C", None),
        (EventKind.QUERY, "110112", "E", None),
        (EventKind.RETRIEVE, "110103", "R", None),
        (EventKind.EXPORT, "110106", "R", None),
        (EventKind.DEIDENTIFY, "110103", "R", None),
        (EventKind.ERASURE, "110110", "D", None),
        (EventKind.KEY_ROTATION, "110113", "E", "110129"),
        (EventKind.USER_CHANGE, "110113", "E", "110137"),
        (EventKind.ROLE_CHANGE, "110113", "E", "110136"),
        (EventKind.GRANT_CHANGE, "110113", "E", "110137"),
        (EventKind.NODE_CHANGE, "110113", "E", "110128"),
        (EventKind.APIKEY_CHANGE, "110113", "E", "110137"),
        (EventKind.BREAK_GLASS, "110113", "E", "110127"),
        (EventKind.CONFIG_CHANGE, "110113", "E", "110131"),
        (EventKind.ALERT, "110113", "E", "110132"),
        (EventKind.ASSOCIATION, "110114", "E", "110122"),
        (EventKind.BACKUP, "110106", "R", None),
    ],
)
def test_codes_per_kind(kind: EventKind, expected_id: str, action: str, expected_type: str | None) -> None:
    root = parse(event(kind, obj=ObjectRef(type="study", id=STUDY)))
    assert event_id(root) == expected_id
    ident = root.find("EventIdentification")
    assert ident is not None and ident.attrib["EventActionCode"] == action
    dcm_types = [c for c, system, _ in type_codes(root) if system == "DCM"]
    assert dcm_types == ([expected_type] if expected_type else [])


def test_the_table_covers_every_kind_with_cid_400_codes() -> None:
    assert set(EVENT_CODES) == set(EventKind)
    cid_400 = {str(c) for c in range(110100, 110115)}
    assert {c.event_id.code for c in EVENT_CODES.values()} <= cid_400
    assert EVENT_CODES[EventKind.QUERY].event_id.text == "Query"
    assert EVENT_CODES[EventKind.LOGIN].event_id.text == "User Authentication"


def test_deletes_of_instances_and_of_studies() -> None:
    study = parse(event(EventKind.DELETE, obj=ObjectRef(type="study", id=STUDY)))
    assert event_id(study) == "110105"
    one = parse(
        event(EventKind.DELETE, obj=ObjectRef(type="instance", id=INSTANCE), details={"study_uid": STUDY})
    )
    assert event_id(one) == "110103"
    ident = one.find("EventIdentification")
    assert ident is not None and ident.attrib["EventActionCode"] == "D"
    assert objects(one)[0].attrib["ParticipantObjectDataLifeCycle"] == "14"  # logical deletion


def test_dimse_refinements() -> None:
    node = Actor(kind=ActorKind.NODE, id="ct-1", address="10.0.0.9:4242", auth="mtls")
    refused = parse(event(EventKind.ASSOCIATION, actor=node, action="dimse.tls", outcome=Outcome.DENIED))
    assert event_id(refused) == "110113" and type_codes(refused)[0][0] == "110126"
    released = parse(
        event(EventKind.ASSOCIATION, actor=node, action="dimse.association", details={"event": "released"})
    )
    assert event_id(released) == "110114" and type_codes(released)[0][0] == "110123"
    start = parse(event(EventKind.ASSOCIATION, actor=node, action="dimse.listener.start"))
    assert event_id(start) == "110100" and type_codes(start)[0][0] == "110120"
    stored = parse(event(EventKind.ASSOCIATION, actor=node, action="dimse.store"))
    assert event_id(stored) == "110104"


def test_an_export_of_the_ledger_is_audit_log_used() -> None:
    e = event(EventKind.EXPORT, obj=ObjectRef(type="ledger", id=SOURCE), action="ledger.export")
    assert event_coding(e).event_id.code == "110101"
    assert event_id(parse(e)) == "110101"


@pytest.mark.parametrize(
    ("outcome", "indicator"), [(Outcome.SUCCESS, "0"), (Outcome.DENIED, "4"), (Outcome.FAILURE, "8")]
)
def test_outcome_mapping(outcome: Outcome, indicator: str) -> None:
    root = parse(event(EventKind.RETRIEVE, outcome=outcome, reason="not in scope"))
    ident = root.find("EventIdentification")
    assert ident is not None and ident.attrib["EventOutcomeIndicator"] == indicator
    description = ident.find("EventOutcomeDescription")
    if outcome is Outcome.SUCCESS:
        assert description is None
    else:
        assert description is not None and description.text == "not in scope"
    assert OUTCOME_INDICATORS[outcome] == indicator


def test_study_instance_and_patient_objects() -> None:
    root = parse(
        event(
            EventKind.STORE,
            obj=ObjectRef(type="instance", id=INSTANCE),
            patient=PSEUDONYM,
            details={"study_uid": STUDY, "sha256": "ab" * 32, "size": 1234},
        )
    )
    study, patient = objects(root)
    assert study.attrib == {
        "ParticipantObjectID": STUDY,
        "ParticipantObjectTypeCode": "2",
        "ParticipantObjectTypeCodeRole": "3",
    }
    assert code(study.find("ParticipantObjectIDTypeCode")) == ("110180", "DCM", "Study Instance UID")
    instance = study.find("ParticipantObjectDescription/SOPClass/Instance")
    assert instance is not None and instance.attrib["UID"] == INSTANCE
    assert patient.attrib == {
        "ParticipantObjectID": PSEUDONYM,
        "ParticipantObjectTypeCode": "1",
        "ParticipantObjectTypeCodeRole": "1",
    }
    assert code(patient.find("ParticipantObjectIDTypeCode")) == ("2", "RFC-3881", "Patient Number")


def test_no_phi_fields() -> None:
    """Only the pseudonym identifies the patient: no name, no birth date, no other patient field,
    and every value in the message comes from the event, the source id or the code tables."""
    e = make_event(5)
    root = parse(
        AuditEvent(
            kind=EventKind.RETRIEVE,
            time=e.time,
            actor=e.actor,
            action=e.action,
            outcome=Outcome.SUCCESS,
            object=ObjectRef(type="study", id=STUDY),
            patient=PSEUDONYM,
            details=dict(e.details),
        )
    )
    names = {el.tag for el in root.iter()} | {a for el in root.iter() for a in el.attrib}
    assert not {n for n in names if "Name" in n and n not in {"codeSystemName"}}  # no ParticipantObjectName
    assert not {n for n in names if any(w in n.lower() for w in ("birth", "sex", "address"))}
    patient_values = [
        o.attrib["ParticipantObjectID"]
        for o in objects(root)
        if o.attrib.get("ParticipantObjectTypeCodeRole") == "1"
    ]
    assert patient_values == [PSEUDONYM]
    codes = {c for el in root.iter() for c in (el.get("csd-code"), el.get("originalText")) if c}
    allowed = {
        SOURCE, STUDY, PSEUDONYM, "user-5", "10.1.2.3", "2024-05-06T07:08:09.128456Z",
        "true", "false", "0", "1", "2", "3", "4", "R",
    }  # fmt: skip
    values = {v for el in root.iter() for k, v in el.attrib.items() if k not in {"csd-code", "originalText"}}
    values -= {"DCM", "RFC-3881", "medvault"}
    assert values <= allowed, values - allowed
    assert codes  # codes carry only table texts and the action


def test_medvault_as_the_actor_is_one_application_participant() -> None:
    system = Actor(kind=ActorKind.SYSTEM, id="medvault")
    root = parse(event(EventKind.STORE, actor=system))
    (participant,) = root.findall("ActiveParticipant")
    assert participant.attrib == {"UserID": SOURCE, "UserIsRequestor": "true"}
    assert code(participant.find("RoleIDCode")) == ("110150", "DCM", "Application")


def test_user_and_medvault_participants() -> None:
    root = parse(event(EventKind.RETRIEVE))
    user, app = root.findall("ActiveParticipant")
    assert user.attrib == {
        "UserID": "dr-who",
        "UserIsRequestor": "true",
        "NetworkAccessPointID": "10.1.2.3",
        "NetworkAccessPointTypeCode": "2",
    }
    assert app.attrib["UserIsRequestor"] == "false" and app.attrib["UserID"] == SOURCE
    source = root.find("AuditSourceIdentification")
    assert source is not None and source.attrib == {"AuditSourceID": SOURCE}
    source_type = source.find("AuditSourceTypeCode")
    assert source_type is not None and source_type.attrib == {"csd-code": "4"}


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("10.0.0.9:4242", ("10.0.0.9", "2")),
        ("[2001:db8::1]:104", ("2001:db8::1", "2")),
        ("2001:db8::2", ("2001:db8::2", "2")),
        ("ws-1.example.org", ("ws-1.example.org", "1")),
    ],
)
def test_network_access_points(address: str, expected: tuple[str, str]) -> None:
    actor = Actor(kind=ActorKind.NODE, id="n", address=address)
    participant = parse(event(EventKind.QUERY, actor=actor)).find("ActiveParticipant")
    assert participant is not None
    assert (
        participant.attrib["NetworkAccessPointID"],
        participant.attrib["NetworkAccessPointTypeCode"],
    ) == expected


def test_other_objects_users_nodes_keys() -> None:
    user = objects(parse(event(EventKind.USER_CHANGE, obj=ObjectRef(type="user", id="alice"))))[0]
    assert user.attrib["ParticipantObjectTypeCode"] == "1"
    assert code(user.find("ParticipantObjectIDTypeCode")) == ("11", "RFC-3881", "User Identifier")
    node = objects(parse(event(EventKind.NODE_CHANGE, obj=ObjectRef(type="node", id="ct-1"))))[0]
    assert code(node.find("ParticipantObjectIDTypeCode"))[0] == "110182"
    key = objects(parse(event(EventKind.KEY_ROTATION, obj=ObjectRef(type="kek", id="local-2"))))[0]
    assert code(key.find("ParticipantObjectIDTypeCode")) == ("kek", "medvault", "kek")


def test_escaping_and_characters_xml_cannot_carry() -> None:
    nasty = "a<b>&\"'\n\r\tc\x01\x1f]]>"
    actor = Actor(kind=ActorKind.USER, id=nasty, address="host <x>")
    root = parse(
        event(
            EventKind.LOGIN, actor=actor, outcome=Outcome.DENIED, reason="bad </EventOutcomeDescription>\nx"
        )
    )
    participant = root.find("ActiveParticipant")
    assert participant is not None
    assert participant.attrib["UserID"] == "a<b>&\"'\n\r\tc\ufffd\ufffd]]>"
    description = root.find("EventIdentification/EventOutcomeDescription")
    assert description is not None and description.text == "bad </EventOutcomeDescription>\nx"
    assert len(root.findall("EventIdentification")) == 1


def test_event_time_is_written_in_utc() -> None:
    local = datetime(2024, 5, 6, 9, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    ident = parse(event(EventKind.QUERY, time=local)).find("EventIdentification")
    assert ident is not None and ident.attrib["EventDateTime"] == "2024-05-06T07:08:09.123456Z"
    assert local.astimezone(UTC) == T0


@pytest.mark.parametrize(
    ("action", "expected_id", "code"),
    [("backup.create", "110106", "R"), ("backup.verify", "110100", "E"), ("backup.restore", "110107", "C")],
)
def test_backups_are_export_application_activity_and_import(action: str, expected_id: str, code: str) -> None:
    root = parse(event(EventKind.BACKUP, obj=ObjectRef(type="backup", id="ab" * 32), action=action))
    assert event_id(root) == expected_id
    ident = root.find("EventIdentification")
    assert ident is not None and ident.attrib["EventActionCode"] == code
