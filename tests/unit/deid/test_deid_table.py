"""Every attribute row of PS3.15 Table E.1-1, under the Basic Profile and under each option
column that has a code for it: a data set carries a value there, and the action is checked.

Parametrized from the table data shipped with the package (not a hand-kept list). The expected
action is computed here from the row, independently of the engine: an applied option column
replaces the Basic code (C wins over K when two applied columns disagree), and combined codes
resolve, for a CT image at the top level, to their first alternative (documented decision).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from medvault.dicom.deid import DatePolicy, DeidConfig, deidentify_dataset
from medvault.dicom.deid._table import Row, load_table

from .deid_kit import KEY, PATIENT_ID, assert_paths_agree, code_item, make_ct

TABLE = load_table()
EXACT = [r for r in TABLE.rows if r.match == "exact" and r.value is not None and r.value >> 16 != 0x0002]
COLUMN_CONFIG: dict[str, DeidConfig] = {
    "rtnUIDsOpt": DeidConfig(retain_uids=True),
    "rtnDevIdOpt": DeidConfig(retain_device_identity=True),
    "rtnInstIdOpt": DeidConfig(retain_institution_identity=True),
    "rtnPatCharsOpt": DeidConfig(retain_patient_characteristics=True),
    "rtnLongFullDatesOpt": DeidConfig(dates=DatePolicy.FULL),
    "rtnLongModifDatesOpt": DeidConfig(dates=DatePolicy.MODIFIED),
    "cleanDescOpt": DeidConfig(clean_descriptors=True),
    "cleanStructContOpt": DeidConfig(clean_structured_content=True),
    "cleanGraphOpt": DeidConfig(clean_graphics=True),
    "rtnSafePrivOpt": DeidConfig(retain_safe_private=True),
}
SECRET_TEXT = "note DOE JOHNATHAN PID12345 seen 2020-01-15"


def sample(vr: str, *, neutral: bool = False) -> Any:
    if neutral and vr in ("LO", "SH", "ST", "LT", "UT", "UC"):
        return "KEPT VALUE"  # K keeps it; kept text is still cleaned of this instance's PHI
    return {
        "AE": "SECRETAE",
        "AS": "045Y",
        "CS": "SECRETCS",
        "DA": "20010203",
        "DS": "12.5",
        "DT": "20010203040506",
        "IS": "42",
        "OB": b"\x01\x02",
        "PN": "SECRET^PERSON",
        "SH": "SECRET 12345",
        "TM": "040506",
        "UI": "1.2.826.0.1.3680043.77.5.6",
        "UN": b"\x01\x02",
        "UR": "http://secret.example/x",
        "US": 7,
    }.get(vr, SECRET_TEXT)


def element_for(row: Row, *, neutral: bool = False) -> DataElement:
    assert row.value is not None and row.vr is not None
    vr = row.vr.split(" or ")[0]
    if vr == "SQ":
        item = code_item("CV1", "99LOCAL", "meaning for DOE JOHNATHAN")
        return DataElement(row.value, "SQ", Sequence([item]))
    return DataElement(row.value, vr, sample(vr, neutral=neutral))


def expected_code(row: Row, column: str | None) -> str:
    code = row.basic
    if column is not None and column in row.options:
        code = row.options[column]
    if "/" in code:
        code = "X" if code.startswith("X") else "Z"  # CT, top level: first alternative
    return code


def cases() -> list[Any]:
    out = []
    for row in EXACT:
        out.append(pytest.param(row, None, id=f"{row.tag}-{row.keyword}-basic"))
        for column in row.options:
            out.append(pytest.param(row, column, id=f"{row.tag}-{row.keyword}-{column}"))
    return out


def run(row: Row, column: str | None) -> tuple[Dataset, DataElement, Dataset, DeidConfig]:
    ds = make_ct()
    elem = element_for(row, neutral=expected_code(row, column) == "K")
    ds.add(elem)
    base = COLUMN_CONFIG[column] if column is not None else DeidConfig()
    config = DeidConfig(**{**base.__dict__, "record_mapping": True})
    result = deidentify_dataset(ds, config=config, project_key=KEY)
    assert result.dataset is not None, result.excluded
    taken = assert_paths_agree(ds, config)
    assert taken or elem.tag >> 16 == 0x0000, "the fast path takes every case a file can hold"
    return ds, elem, result.dataset, config


def values(v: Any) -> list[Any]:
    if v is None:
        return []
    if isinstance(v, MultiValue | list):
        return list(v)
    return [v]


@pytest.mark.parametrize(("row", "column"), cases())
def test_table_row_action(row: Row, column: str | None) -> None:
    _, original, out, config = run(row, column)
    code = expected_code(row, column)
    tag = original.tag
    if tag in (0x00100010, 0x00100020):  # Z / Z/D with a pseudonym, a permitted dummy
        assert str(out[tag].value).startswith("ANON")
        return
    if code == "X":
        assert tag not in out
        return
    assert tag in out, f"{row.name}: {code} should leave the attribute present"
    new = out[tag]
    if code == "Z":
        assert new.is_empty, f"{row.name}: Z should leave it empty"
    elif code == "K":
        assert new.value == original.value or (
            new.VR == "SQ" and len(new.value) == len(original.value) and new.value[0].CodeValue == "CV1"
        )
    elif code == "D":
        assert not new.is_empty, f"{row.name}: D needs a non-zero length value"
        if new.VR == "SQ":
            assert len(new.value) == 1 and len(new.value[0]) == 0  # one empty item: says nothing
        else:
            assert new.value != original.value
    elif code == "U":
        assert str(new.value).startswith("2.25.") and new.value != original.value
    elif code == "C":
        check_clean(original, new, config)
    else:  # pragma: no cover
        pytest.fail(f"unexpected code {code}")


def check_clean(original: DataElement, new: DataElement, config: DeidConfig) -> None:
    vr = new.VR
    if vr == "DA":
        assert config.dates is DatePolicy.MODIFIED
        shifted = dt.datetime.strptime(str(new.value), "%Y%m%d").date()
        delta = shifted - dt.date(2001, 2, 3)
        assert -3652 <= delta.days <= -1
    elif vr == "DT":
        assert str(new.value)[8:] == str(original.value)[8:] and str(new.value)[:8] != "20010203"
    elif vr == "TM":
        assert new.value == original.value  # whole days are shifted; the time of day stays
    elif vr == "SQ":
        assert len(new.value) == 1
        assert "DOE" not in str(new.value[0].CodeMeaning) and "JOHNATHAN" not in str(new.value[0].CodeMeaning)
    elif vr in ("LO", "SH", "ST", "LT", "UT", "UC"):
        text = str(new.value)
        assert (
            "DOE" not in text and PATIENT_ID not in text and "12345" not in text and "2020-01-15" not in text
        )
    elif vr == "AE":
        assert str(new.value).startswith("AE") and new.value != original.value
    elif vr == "CS":
        assert new.value == original.value  # defined terms carry no identity
    elif vr in ("OB", "UN", "PN"):
        assert new.value != original.value
    else:
        assert new.value == original.value


def test_every_exact_row_is_covered() -> None:
    assert len(TABLE.rows) == 621
    tested = {r.value for r in EXACT}
    exact = {r.value for r in TABLE.rows if r.match == "exact"}
    assert exact - tested == {0x00020003}  # file meta: see test_media_storage_sop_instance_uid


def test_media_storage_sop_instance_uid() -> None:
    """(0002,0003) U: the file meta is rebuilt around the new SOP Instance UID."""
    from .deid_kit import SOP_UID, with_meta

    out = deidentify_dataset(with_meta(make_ct()), config=DeidConfig(), project_key=KEY).dataset
    assert out is not None
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID != SOP_UID


@pytest.mark.parametrize("group", [0x5000, 0x501E])
@pytest.mark.parametrize("clean_graphics", [False, True])
def test_curve_data_mask_row(group: int, clean_graphics: bool) -> None:
    ds = make_ct()
    ds.add_new((group << 16) | 0x3000, "OW", b"\x01\x00\x02\x00")
    ds.add_new((group << 16) | 0x2500, "LO", "curve by DOE JOHNATHAN")  # Curve Label
    out = deidentify_dataset(ds, config=DeidConfig(clean_graphics=clean_graphics), project_key=KEY).dataset
    assert out is not None
    if clean_graphics:  # C: curve kept, its text cleaned
        assert out[(group << 16) | 0x3000].value == b"\x01\x00\x02\x00"
        assert "DOE" not in str(out[(group << 16) | 0x2500].value)
    else:  # X
        assert not [e for e in out if e.tag >> 16 == group]


@pytest.mark.parametrize("group", [0x6000, 0x6002])
def test_overlay_mask_rows_basic(group: int) -> None:
    ds = make_ct()
    ds.add_new((group << 16) | 0x0010, "US", 4)
    ds.add_new((group << 16) | 0x0011, "US", 4)
    ds.add_new((group << 16) | 0x0022, "LO", "overlay of DOE")  # Overlay Description
    ds.add_new((group << 16) | 0x3000, "OW", b"\xff\xff")
    ds.add_new((group << 16) | 0x4000, "LT", "comment DOE")
    out = deidentify_dataset(ds, config=DeidConfig(), project_key=KEY).dataset
    assert out is not None
    assert not [e for e in out if e.tag >> 16 == group]  # X on data and comments, the plane goes too


def test_private_row_removed_without_option() -> None:
    ds = make_ct()
    block = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
    block.add_new(0x23, "DS", "12.5")
    ds.add_new(0x00291010, "LO", "orphan private")
    out = deidentify_dataset(ds, config=DeidConfig(), project_key=KEY).dataset
    assert out is not None
    assert not [e for e in out if e.tag.is_private]
