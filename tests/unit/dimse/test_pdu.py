"""The storage path's PDU and command-set codec (medvault.dimse.pdu), checked against independent
implementations: pynetdicom's PDU classes and pydicom's data set reader."""

from __future__ import annotations

import struct
from io import BytesIO

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.filereader import read_dataset
from pynetdicom import build_context
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ, P_DATA_TF
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)

from medvault.dimse import pdu
from medvault.dimse.intake import is_storage_only

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
FIND = "1.2.840.10008.5.1.4.1.2.2.1"
EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
uids = st.lists(st.integers(1, 99999), min_size=2, max_size=6).map(lambda xs: ".".join(map(str, xs)))
ae_titles = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_", min_size=1, max_size=16)


def associate_rq_bytes(
    contexts: list[tuple[str, list[str]]],
    *,
    calling: str = "CT1",
    max_length: int = 16384,
    role: bool = False,
) -> bytes:
    """An A-ASSOCIATE-RQ as pynetdicom encodes it."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = pdu.APPLICATION_CONTEXT
    primitive.calling_ae_title = calling
    primitive.called_ae_title = "MEDVAULT"
    built = []
    for n, (abstract, syntaxes) in enumerate(contexts):
        cx = build_context(abstract, syntaxes)
        cx.context_id = 2 * n + 1
        built.append(cx)
    primitive.presentation_context_definition_list = built
    length = MaximumLengthNotification()
    length.maximum_length_received = max_length
    impl = ImplementationClassUIDNotification()
    impl.implementation_class_uid = "1.2.3.4"
    items: list[object] = [length, impl]
    if role:
        selection = SCP_SCU_RoleSelectionNegotiation()
        selection.sop_class_uid = CT
        selection.scu_role, selection.scp_role = False, True
        items.append(selection)
    primitive.user_information = items
    encoded = A_ASSOCIATE_RQ()
    encoded.from_primitive(primitive)
    return bytes(encoded.encode())


@settings(max_examples=60, deadline=None)
@given(
    contexts=st.lists(
        st.tuples(uids, st.lists(uids, min_size=1, max_size=4, unique=True)), min_size=1, max_size=20
    ),
    calling=ae_titles,
    max_length=st.integers(0, 2**32 - 1),
)
def test_associate_rq_decodes_as_pynetdicom_encodes_it(
    contexts: list[tuple[str, list[str]]], calling: str, max_length: int
) -> None:
    raw = associate_rq_bytes(contexts, calling=calling, max_length=max_length)
    pdu_type, length = pdu.header(raw[:6])
    assert (pdu_type, length) == (pdu.A_ASSOCIATE_RQ, len(raw) - 6)
    rq = pdu.parse_associate_rq(raw[6:])
    assert (rq.called_ae, rq.calling_ae, rq.max_pdu_length) == ("MEDVAULT", calling, max_length)
    assert rq.application_context == pdu.APPLICATION_CONTEXT
    assert [(c.id, c.abstract_syntax, list(c.transfer_syntaxes)) for c in rq.contexts] == [
        (2 * n + 1, a, s) for n, (a, s) in enumerate(contexts)
    ]
    assert rq.implementation_class_uid == "1.2.3.4"


def test_storage_only_routing() -> None:
    storage = frozenset({CT, MR})
    parse = pdu.parse_associate_rq
    assert is_storage_only(
        parse(associate_rq_bytes([(CT, [EXPLICIT]), ("1.2.840.10008.1.1", [IMPLICIT])])[6:]), storage
    )
    assert not is_storage_only(parse(associate_rq_bytes([(CT, [EXPLICIT]), (FIND, [IMPLICIT])])[6:]), storage)
    # Role selection (a C-GET requestor taking the Storage SCP role) goes to pynetdicom.
    assert not is_storage_only(parse(associate_rq_bytes([(CT, [EXPLICIT])], role=True)[6:]), storage)


def test_associate_ac_decodes_with_pynetdicom() -> None:
    rq = pdu.parse_associate_rq(associate_rq_bytes([(CT, [IMPLICIT, EXPLICIT]), (FIND, [IMPLICIT])])[6:])
    raw = pdu.associate_ac(
        rq,
        [(1, 0, EXPLICIT), (3, 3, IMPLICIT)],
        max_pdu_length=262144,
        implementation_class_uid="1.2.826.0.1.3680043.9.3811.3.0.4",
        implementation_version="MEDVAULT_TEST",
    )
    decoded = A_ASSOCIATE_AC()
    decoded.decode(raw)
    primitive = decoded.to_primitive()
    assert (primitive.called_ae_title, primitive.calling_ae_title) == ("MEDVAULT", "CT1")
    results = primitive.presentation_context_definition_results_list
    assert [(c.context_id, c.result) for c in results] == [(1, 0), (3, 3)]
    assert results[0].transfer_syntax == [EXPLICIT]
    assert primitive.maximum_length_received == 262144
    assert b"MEDVAULT_TEST" in raw


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, 3, 5]), st.booleans(), st.booleans(), st.binary(max_size=300))))
def test_pdata_round_trips_through_pynetdicom(items: list[tuple[int, bool, bool, bytes]]) -> None:
    body = b"".join(
        struct.pack(">IBB", len(data) + 2, cid, int(command) | int(last) << 1) + data
        for cid, command, last, data in items
    )
    if not items:
        with pytest.raises(pdu.PduError):
            pdu.parse_pdata(body)
        return
    theirs = P_DATA_TF()
    theirs.decode(pdu.encode(pdu.P_DATA_TF, body))
    ours = pdu.parse_pdata(body)
    assert [(p.context_id, bytes(p.data)) for p in ours] == [
        (item.presentation_context_id, bytes(item.presentation_data_value[1:]))
        for item in theirs.presentation_data_value_items
    ]
    assert [(p.is_command, p.is_last) for p in ours] == [(c, last) for _, c, last, _ in items]


def test_single_pdv_response_decodes_with_pynetdicom() -> None:
    raw = pdu.pdata(7, b"\x01\x02\x03", is_command=True)
    theirs = P_DATA_TF()
    theirs.decode(raw)
    (item,) = theirs.presentation_data_value_items
    assert (item.presentation_context_id, item.presentation_data_value) == (7, b"\x03\x01\x02\x03")


@settings(max_examples=80, deadline=None)
@given(
    message_id=st.integers(0, 0xFFFF),
    status=st.integers(0, 0xFFFF),
    sop_class=uids,
    sop_instance=uids,
)
def test_command_set_round_trips_and_reads_with_pydicom(
    message_id: int, status: int, sop_class: str, sop_instance: str
) -> None:
    elements: pdu.Command = {
        0x0002: sop_class,
        0x0100: 0x8001,
        0x0120: message_id,
        0x0800: 0x0101,
        0x0900: status,
        0x1000: sop_instance,
    }
    raw = pdu.command_set(elements)
    parsed = pdu.parse_command(raw)
    assert parsed == {**elements, 0x0000: len(raw) - 12}
    ds = read_dataset(BytesIO(raw), is_implicit_VR=True, is_little_endian=True)
    assert ds.CommandGroupLength == len(raw) - 12
    assert (ds.MessageIDBeingRespondedTo, ds.Status) == (message_id, status)
    assert (ds.AffectedSOPClassUID, ds.AffectedSOPInstanceUID) == (sop_class, sop_instance)


def test_file_meta_reads_with_pydicom() -> None:
    meta = pdu.file_meta(
        sop_class_uid=CT,
        sop_instance_uid="1.2.3.45",
        transfer_syntax=EXPLICIT,
        implementation_class_uid="1.2.826.0.1.3680043.9.3811.3.0.4",
        implementation_version="PYNETDICOM_304",
        source_ae="CT1",
    )
    body = b"\x08\x00\x60\x00CS\x02\x00CT"  # (0008,0060) Modality CT, Explicit VR Little Endian
    ds = dcmread(BytesIO(meta + body))
    assert ds.file_meta.MediaStorageSOPClassUID == CT
    assert ds.file_meta.MediaStorageSOPInstanceUID == "1.2.3.45"
    assert ds.file_meta.TransferSyntaxUID == EXPLICIT
    assert ds.file_meta.SourceApplicationEntityTitle == "CT1"
    assert ds.file_meta.FileMetaInformationGroupLength == len(meta) - 128 - 4 - 12
    assert ds.Modality == "CT"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_is_a_pdu_error_never_a_crash(data: bytes) -> None:
    for parse in (pdu.parse_associate_rq, pdu.parse_pdata, pdu.parse_command):
        try:
            parse(data)
        except pdu.PduError:
            pass


def test_lying_lengths_are_refused() -> None:
    rq = associate_rq_bytes([(CT, [EXPLICIT])])[6:]
    with pytest.raises(pdu.PduError):
        pdu.parse_associate_rq(rq[:-3])  # the last item claims more than is there
    with pytest.raises(pdu.PduError):
        pdu.parse_pdata(struct.pack(">IBB", 1000, 1, 3) + b"short")
    with pytest.raises(pdu.PduError):
        pdu.parse_command(struct.pack("<HHI", 0, 0x0100, 2) + b"\x01")
    context_item = 68 + 4 + len(pdu.APPLICATION_CONTEXT)  # after the application context item
    assert rq[context_item] == 0x20
    even = bytearray(rq)
    even[context_item + 4] = 2  # presentation context IDs are odd
    with pytest.raises(pdu.PduError, match="odd and unique"):
        pdu.parse_associate_rq(bytes(even))
