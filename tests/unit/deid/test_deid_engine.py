"""The engine beyond single rows: nesting, SR, private tags, UIDs, dates, markers, leaks, pixels."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from medvault.dicom.deid import (
    CID7050,
    OPTION_NAMES,
    DatePolicy,
    DeidConfig,
    Deidentifier,
    deidentify_dataset,
    parse_pixel_masks,
)
from medvault.errors import InvalidInput

from .deid_kit import (
    ACCESSION,
    CT,
    KEY,
    OTHER_KEY,
    PATIENT_ID,
    PHI,
    SERIES_UID,
    SOP_UID,
    STUDY_UID,
    UIDS,
    assert_paths_agree,
    code_item,
    leaks,
    make_ct,
    make_sr,
    sequence,
    to_bytes,
)


def deid(ds: Dataset, config: DeidConfig | None = None, key: bytes = KEY) -> Dataset:
    result = deidentify_dataset(ds, config=config or DeidConfig(), project_key=key)
    assert result.dataset is not None, result.excluded
    assert_paths_agree(ds, config or DeidConfig(), key)
    return result.dataset


# --- UIDs ------------------------------------------------------------------------------------
def test_uids_consistent_across_files_and_runs_differ_across_projects() -> None:
    a = deid(make_ct())
    b = deid(make_ct(SOPInstanceUID="1.2.826.0.1.3680043.99.1.9"))
    again = deid(make_ct())
    other = deid(make_ct(), key=OTHER_KEY)
    assert a.StudyInstanceUID == b.StudyInstanceUID == again.StudyInstanceUID != STUDY_UID
    assert a.SeriesInstanceUID == b.SeriesInstanceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert a.SOPInstanceUID == again.SOPInstanceUID
    assert other.StudyInstanceUID != a.StudyInstanceUID and other.SOPInstanceUID != a.SOPInstanceUID
    for uid in (a.StudyInstanceUID, a.SOPInstanceUID):
        assert uid.startswith("2.25.") and len(uid) <= 64 and int(uid[5:]) < 2**128


def test_references_in_nested_sequences_follow_the_instances() -> None:
    ref = Dataset()
    ref.ReferencedSOPClassUID = CT
    ref.ReferencedSOPInstanceUID = SOP_UID
    series = Dataset()
    series.SeriesInstanceUID = SERIES_UID
    series.ReferencedImageSequence = sequence(ref)  # X/Z/U* nested: kept, UIDs replaced
    ds = make_ct(SOPInstanceUID="1.2.826.0.1.3680043.99.2.1")
    ds.ReferencedSeriesSequence = sequence(series)  # not in the table: walked
    target = deid(make_ct())
    out = deid(ds)
    item = out.ReferencedSeriesSequence[0]
    assert item.SeriesInstanceUID == target.SeriesInstanceUID
    assert item.ReferencedImageSequence[0].ReferencedSOPInstanceUID == target.SOPInstanceUID
    assert item.ReferencedImageSequence[0].ReferencedSOPClassUID == CT  # class UIDs are kept


def test_top_level_referenced_image_sequence_is_removed() -> None:
    ref = Dataset()
    ref.ReferencedSOPInstanceUID = SOP_UID
    out = deid(make_ct(ReferencedImageSequence=sequence(ref)))
    assert "ReferencedImageSequence" not in out  # X/Z/U* -> X (Type 3 in image IODs)


def test_retain_uids_keeps_them() -> None:
    out = deid(make_ct(ImageComments=f"prior {STUDY_UID}"), DeidConfig(retain_uids=True))
    assert out.SOPInstanceUID == SOP_UID and out.StudyInstanceUID == STUDY_UID


def test_private_uid_attribute_outside_table_is_mapped() -> None:
    ds = make_ct()
    ds.add_new(0x00081155, "UI", SOP_UID)  # Referenced SOP Instance UID at top level
    ds.add_new(0x0040A124, "UI", "1.2.826.0.1.3680043.99.5")  # UID (SR UIDREF), U row
    out = deid(ds)
    assert out[0x00081155].value == out.SOPInstanceUID


# --- patient, dates, markers -----------------------------------------------------------------
def test_patient_pseudonym_per_project() -> None:
    a, b = deid(make_ct()), deid(make_ct(PatientName="OTHER^NAME"))
    other = deid(make_ct(), key=OTHER_KEY)
    assert a.PatientID == b.PatientID and a.PatientID.startswith("ANON-")
    assert str(a.PatientName) == "ANON^" + a.PatientID[5:]
    assert other.PatientID != a.PatientID


def test_modified_dates_shift_consistently_per_patient() -> None:
    config = DeidConfig(dates=DatePolicy.MODIFIED, record_mapping=True)
    engine = Deidentifier(config=config, project_key=KEY)
    r1 = engine.deidentify(make_ct(StudyDate="20200115", AcquisitionDateTime="20200115101500.5+0100"))
    r2 = engine.deidentify(make_ct(StudyDate="20200120"))
    r3 = engine.deidentify(make_ct(PatientID="SOMEONE-ELSE", StudyDate="20200115"))
    assert r1.dataset is not None and r2.dataset is not None and r3.dataset is not None
    assert r1.mapping is not None
    offset = r1.mapping.patients[PATIENT_ID].date_offset_days
    assert offset is not None and -3652 <= offset <= -1
    import datetime as dt

    assert r1.dataset.StudyDate == (dt.date(2020, 1, 15) + dt.timedelta(days=offset)).strftime("%Y%m%d")
    assert r1.dataset.AcquisitionDateTime == r1.dataset.StudyDate + "101500.5+0100"
    d1 = dt.datetime.strptime(r1.dataset.StudyDate, "%Y%m%d")
    d2 = dt.datetime.strptime(r2.dataset.StudyDate, "%Y%m%d")
    assert (d2 - d1).days == 5  # intervals are preserved
    assert r3.dataset.StudyDate != r1.dataset.StudyDate  # another patient, another offset
    assert r1.dataset.StudyTime == "101500"
    assert r1.dataset.LongitudinalTemporalInformationModified == "MODIFIED"


@pytest.mark.parametrize(
    ("dates", "flag"),
    [(DatePolicy.REMOVE, "REMOVED"), (DatePolicy.FULL, "UNMODIFIED"), (DatePolicy.MODIFIED, "MODIFIED")],
)
def test_markers(dates: DatePolicy, flag: str) -> None:
    config = DeidConfig(dates=dates, retain_uids=True, clean_descriptors=True)
    out = deid(make_ct(), config)
    assert out.PatientIdentityRemoved == "YES"
    assert out.LongitudinalTemporalInformationModified == flag
    codes = [item.CodeValue for item in out.DeidentificationMethodCodeSequence]
    assert codes[0] == "113100" and "113110" in codes and "113105" in codes
    assert all(item.CodingSchemeDesignator == "DCM" for item in out.DeidentificationMethodCodeSequence)
    assert all(item.CodeMeaning == CID7050[item.CodeValue] for item in out.DeidentificationMethodCodeSequence)
    expected = {DatePolicy.FULL: "113106", DatePolicy.MODIFIED: "113107"}.get(dates)
    assert (expected in codes) if expected else not {"113106", "113107"} & set(codes)
    assert out.DeidentificationMethod


def test_option_codes_complete() -> None:
    config = DeidConfig.from_options(n for n in OPTION_NAMES if "full" not in n and n != "modified-dates")
    out = deid(make_ct(), config)
    codes = {item.CodeValue for item in out.DeidentificationMethodCodeSequence}
    # every option's CID 7050 code except 113101 (no mask applied here), 113102 (not offered), 113106
    assert codes == set(CID7050) - {"113101", "113102", "113106"}


def test_second_pass_keeps_method_history_without_repeats() -> None:
    once = deid(make_ct())
    twice = deid(once)
    assert [i.CodeValue for i in twice.DeidentificationMethodCodeSequence] == ["113100"]


# --- config ----------------------------------------------------------------------------------
def test_config_from_option_names() -> None:
    config = DeidConfig.from_options(["retain-uids", "Clean_Descriptors", "modified-dates"])
    assert config.retain_uids and config.clean_descriptors and config.dates is DatePolicy.MODIFIED
    assert set(config.option_names()) == {"retain-uids", "clean-descriptors", "modified-dates"}
    assert DeidConfig.from_options(["retain-longitudinal-full-dates"]).dates is DatePolicy.FULL
    with pytest.raises(InvalidInput, match="unknown"):
        DeidConfig.from_options(["retain-everything"])
    with pytest.raises(InvalidInput, match="exclude"):
        DeidConfig.from_options(["full-dates", "modified-dates"])
    with pytest.raises(InvalidInput):
        Deidentifier(config=DeidConfig(), project_key=b"short")


def test_input_is_not_modified() -> None:
    ds = make_sr()
    before = to_bytes_plain(ds)
    deid(ds, DeidConfig(clean_structured_content=True))
    assert to_bytes_plain(ds) == before


def to_bytes_plain(ds: Dataset) -> bytes:
    from .deid_kit import with_meta

    return to_bytes(with_meta(ds))


# --- SR content, nested, private ---------------------------------------------------------------
def test_sr_content_basic_profile_replaces_content() -> None:
    out = deid(make_sr())
    assert len(out.ContentSequence) == 1 and len(out.ContentSequence[0]) == 0  # D: dummy
    assert out.ContentDate == "19000101"  # Z/D -> D: Content Date is Type 1 in SR
    data = to_bytes(out)
    assert leaks(data, [*PHI, "KILDARE", *UIDS]) == []


def test_sr_content_date_is_dummy_for_sr_conformance() -> None:
    out = deid(make_sr())
    assert "ContentDate" in out


def test_sr_clean_structured_content_walks_the_tree() -> None:
    target = deid(make_ct())
    out = deid(make_sr(), DeidConfig(clean_structured_content=True))
    container = out.ContentSequence[0]
    text, person, image = container.ContentSequence
    assert (
        "DOE" not in text.TextValue and PATIENT_ID not in text.TextValue and "Kildare" not in text.TextValue
    )
    assert "2020-01-15" not in text.TextValue
    assert target.SOPInstanceUID in text.TextValue  # the quoted UID follows the instance
    assert person.PersonName != "KILDARE^JAMES"
    assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == target.SOPInstanceUID
    assert text.ConceptNameCodeSequence[0].CodeMeaning == "Finding"
    assert leaks(to_bytes(out), [*PHI, "KILDARE", *UIDS]) == []


def test_nested_sequences_apply_the_table_at_every_depth() -> None:
    inner = Dataset()
    inner.PatientName = "NESTED^PERSON"
    inner.InstitutionName = "HIDDEN CLINIC"
    inner.StudyInstanceUID = STUDY_UID
    middle = Dataset()
    middle.ProcedureCodeSequence = sequence(code_item("P1", "99LOCAL", "Scan of DOE JOHNATHAN"))
    middle.AnatomicRegionSequence = sequence(inner)  # any sequence, any depth
    ds = make_ct(SourceImageSequence=sequence(middle))
    ds.ReferencedStudySequence = sequence(middle)
    ds.add_new(0x00181030, "LO", "protocol for " + ACCESSION)
    ds.ProcedureCodeSequence = sequence(code_item("P1", "99LOCAL", "Scan of DOE JOHNATHAN " + PATIENT_ID))
    ds.PerformedProtocolCodeSequence = sequence(middle)
    out = deid(ds)
    data = to_bytes(out)
    assert leaks(data, [*PHI, "NESTED", "HIDDEN CLINIC", *UIDS]) == []
    assert out.ProcedureCodeSequence[0].CodeValue == "P1"  # codes stay; their meanings are cleaned


def test_private_tags_removed_and_safe_private_kept() -> None:
    ds = make_ct()
    ge = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
    ge.add_new(0x23, "DS", "12.5")  # safe: table speed
    ge.add_new(0x24, "LO", "DOE JOHNATHAN")  # not in the allowlist
    philips = ds.private_block(0x7053, "Philips PET Private Group", create=True)
    philips.add_new(0x00, "DS", "0.0005")
    seq_item = Dataset()
    seq_item.PatientName = PHI[0]
    seq_item.PatientID = PATIENT_ID
    other = ds.private_block(0x0009, "ACME PRIVATE", create=True)
    other.add_new(0x01, "SQ", sequence(seq_item))
    basic = deid(ds)
    assert not [e for e in basic if e.tag.is_private]
    safe = deid(ds, DeidConfig(retain_safe_private=True))
    kept = {(e.tag, str(e.value)) for e in safe if e.tag.is_private}
    assert (0x00191023, "12.5") in kept and (0x70531000, "0.0005") in kept
    assert (0x00190010, "GEMS_ACQU_01") in kept
    assert not [t for t, _ in kept if t >> 16 == 0x0009] and 0x00191024 not in {t for t, _ in kept}
    assert "113111" in {i.CodeValue for i in safe.DeidentificationMethodCodeSequence}


def test_safe_private_sequence_nesting_standard_attributes_is_cleaned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from medvault.dicom.deid import _engine

    monkeypatch.setattr(
        _engine, "_safe_private", lambda: frozenset({("ACME PRIVATE", 0x0009, 0x01)}) | _real_safe()
    )
    ds = make_ct()
    item = Dataset()
    item.PatientName = "DOE^JOHNATHAN"
    item.OtherPatientIDs = PATIENT_ID
    item.SOPInstanceUID = SOP_UID
    ds.private_block(0x0009, "ACME PRIVATE", create=True).add_new(0x01, "SQ", sequence(item))
    out = deid(ds, DeidConfig(retain_safe_private=True))
    nested = out[0x00091001].value[0]
    assert str(nested.PatientName).startswith("ANON^")
    assert "OtherPatientIDs" not in nested
    assert nested.SOPInstanceUID == out.SOPInstanceUID


def _real_safe() -> frozenset[tuple[str, int, int]]:
    from medvault.dicom.deid._table import load_data

    return frozenset(
        (e["creator"].upper(), int(e["group"], 16), int(e["offset"], 16))
        for e in load_data("safe_private.json")["entries"]
    )


# --- beyond the table ------------------------------------------------------------------------
def test_beyond_table_leaks_are_closed() -> None:
    ds = make_ct()
    ds.ImageComments = f"pt DOE JOHNATHAN {PATIENT_ID}, prior study {STUDY_UID}"  # X under basic
    ds.ConvolutionKernel = f"B30f {PHI[1]}"  # outside the table: kept, cleaned of the PHI
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    ds.RequestedProcedureCodeSequence = sequence(code_item("RP1", "99L", f"CT for {ACCESSION}"))
    ds.add_new(0x60000010, "US", 4)
    ds.add_new(0x60000011, "US", 4)
    ds.add_new(0x60000022, "LO", "overlay by DOE")  # Overlay Description, outside the table
    ds.add_new(0x60001500, "LO", "DOE label")  # Overlay Label
    ds.add_new(0x60003000, "OW", b"\xff\xff")
    ds.add_new(0x00400254, "LO", f"performed for {PHI[0]}")  # description, X
    ds.add_new(0x0040A160, "UT", f"free text {PHI[0]} {PATIENT_ID}")  # Text Value, not in the table
    ds.add_new(0x00321032, "PN", "REQUESTER^ROBERT")  # a person name
    out = deid(ds)
    assert leaks(to_bytes(out), [*PHI, "REQUESTER", *UIDS]) == []
    assert out.ConvolutionKernel == "B30f ***" and out.BodyPartExamined == "CHEST"


def test_clean_descriptors_keeps_text_without_phi() -> None:
    ds = make_ct(StudyDescription=f"CT CHEST for DOE JOHNATHAN {PATIENT_ID} on 15.01.2020")
    out = deid(ds, DeidConfig(clean_descriptors=True))
    assert out.StudyDescription.startswith("CT CHEST for")
    assert leaks(to_bytes(out), PHI) == []


def test_clean_graphics_keeps_cleaned_annotations() -> None:
    text = Dataset()
    text.UnformattedTextValue = "Measured for DOE JOHNATHAN"
    annotation = Dataset()
    annotation.TextObjectSequence = sequence(text)
    ds = make_ct(GraphicAnnotationSequence=sequence(annotation))
    basic = deid(ds)
    assert len(basic.GraphicAnnotationSequence) == 1 and len(basic.GraphicAnnotationSequence[0]) == 0
    cleaned = deid(ds, DeidConfig(clean_graphics=True))
    value = cleaned.GraphicAnnotationSequence[0].TextObjectSequence[0].UnformattedTextValue
    assert value.startswith("Measured for") and "DOE" not in value


# --- burned-in text and pixel masks ----------------------------------------------------------
US = "1.2.840.10008.5.1.4.1.1.6.1"


def make_us(burned: str | None = None) -> Dataset:
    ds = make_ct(SOPClassUID=US, Modality="US", Manufacturer="ACME", ManufacturerModelName="SONO 1")
    ds.Rows, ds.Columns = 8, 10
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = np.full((8, 10), 200, dtype=np.uint8).tobytes()
    if burned is not None:
        ds.BurnedInAnnotation = burned
    return ds


MASKS = parse_pixel_masks(
    '{"rules": [{"name": "acme sono header", "manufacturer": "acme", "model": "SONO 1",'
    ' "rows": 8, "columns": 10, "regions": [{"x": 0, "y": 0, "width": 10, "height": 2},'
    ' {"x": 7, "y": 5, "width": 5, "height": 5}]}]}'
)


@pytest.mark.parametrize(
    ("ds", "reason"),
    [
        (make_us(), "ultrasound"),
        (make_ct(BurnedInAnnotation="YES"), "BurnedInAnnotation is YES"),
        (make_ct(SOPClassUID="1.2.840.10008.5.1.4.1.1.7"), "secondary capture"),
        (make_ct(ImageType=["DERIVED", "SECONDARY", "SCREEN SAVE"]), "screen capture"),
    ],
)
def test_burned_in_candidates_are_excluded_by_default(ds: Dataset, reason: str) -> None:
    result = deidentify_dataset(ds, config=DeidConfig(), project_key=KEY)
    assert result.dataset is None and result.excluded is not None and reason in result.excluded
    assert "DOE" not in result.excluded


def test_clean_pixel_data_masks_regions_on_a_real_pixel_array() -> None:
    config = DeidConfig(clean_pixel_data=True, pixel_masks=MASKS)
    result = deidentify_dataset(make_us("YES"), config=config, project_key=KEY)
    assert result.dataset is not None
    out = result.dataset
    pixels = out.pixel_array
    assert pixels.shape == (8, 10)
    assert (pixels[:2, :] == 0).all() and (pixels[5:, 7:] == 0).all()
    assert (pixels[2:5, :] == 200).all() and (pixels[5:, :7] == 200).all()
    assert out.BurnedInAnnotation == "NO"
    assert "113101" in {i.CodeValue for i in out.DeidentificationMethodCodeSequence}
    other = make_us()
    other.Rows = 16  # another image size: no rule, still excluded
    assert deidentify_dataset(other, config=config, project_key=KEY).dataset is None


def test_pixel_mask_config_errors() -> None:
    with pytest.raises(InvalidInput):
        parse_pixel_masks("{not json")
    with pytest.raises(InvalidInput):
        parse_pixel_masks('{"rules": [{"regions": [{"x": 0}]}]}')
    with pytest.raises(InvalidInput):
        parse_pixel_masks('{"rules": [{"regions": []}]}')
