from __future__ import annotations

import json
import re

import pytest
from dicom_testkit import Builder, FileLoader, to_bytes
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medvault.dicom import (
    DEFAULT_RETURN_TAGS,
    INSTANCE_LEVEL_TAGS,
    SERIES_LEVEL_TAGS,
    STUDY_LEVEL_TAGS,
    dataset_to_json,
    json_to_dataset,
    level_attributes,
    parse_instance,
    with_bulk_data_base,
)
from medvault.errors import InvalidInput


def _sample() -> Dataset:
    ds = Dataset()
    ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    ds.PatientID = "ID1"
    ds.StudyDate = "20240131"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.InstanceNumber = 7
    ds.SliceThickness = "2.5"
    ds.Rows = 4
    ds.PixelSpacing = ["0.5", "0.25"]
    ds.FrameIncrementPointer = 0x00181063
    ds.RescaleIntercept = "-1024"
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3"
    item.add_new(0x00091010, "OB", b"\x01" * 2000)
    ds.ReferencedImageSequence = Sequence([item])
    ds.add_new(0x00091001, "OB", b"\x00\x01\x02")
    return ds


def test_encoding_follows_ps3_18_f2() -> None:
    obj = dataset_to_json(_sample(), bulk_data_uri=lambda path: f"bulk/{path}")
    assert obj["00100010"] == {
        "vr": "PN",
        "Value": [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}],
    }
    assert obj["00080008"] == {"vr": "CS", "Value": ["ORIGINAL", "PRIMARY"]}
    assert obj["00200013"] == {"vr": "IS", "Value": [7]}
    assert obj["00180050"] == {"vr": "DS", "Value": [2.5]}
    assert obj["00280030"] == {"vr": "DS", "Value": [0.5, 0.25]}
    assert obj["00281052"] == {"vr": "DS", "Value": [-1024]}
    assert obj["00280010"] == {"vr": "US", "Value": [4]}
    assert obj["00280009"] == {"vr": "AT", "Value": ["00181063"]}
    assert obj["00091001"] == {"vr": "OB", "InlineBinary": "AAEC"}
    seq_item = obj["00081140"]["Value"][0]
    assert seq_item["00081155"] == {"vr": "UI", "Value": ["1.2.3"]}
    assert seq_item["00091010"] == {"vr": "OB", "BulkDataURI": "bulk/00081140/0/00091010"}
    assert all(re.fullmatch(r"[0-9A-F]{8}", k) for k in obj)
    json.dumps(obj, allow_nan=False)


def test_bulk_data_is_left_out_without_a_callable() -> None:
    obj = dataset_to_json(_sample())
    assert "00091010" not in obj["00081140"]["Value"][0]
    assert obj["00091001"]["InlineBinary"] == "AAEC"
    small = dataset_to_json(_sample(), bulk_data_threshold=2)
    assert "00091001" not in small


def test_pixel_data_is_always_bulk(build: Builder) -> None:
    ds = build(rows=1, columns=1, bits=8)
    assert "7FE00010" not in dataset_to_json(ds)
    assert dataset_to_json(ds, bulk_data_uri=str.lower)["7FE00010"] == {"vr": "OB", "BulkDataURI": "7fe00010"}


def test_round_trip() -> None:
    ds = _sample()
    back = json_to_dataset(dataset_to_json(ds))
    assert str(back.PatientName) == str(ds.PatientName)
    assert back.ImageType == ds.ImageType
    assert back.InstanceNumber == 7
    assert float(back.SliceThickness) == 2.5
    assert back.Rows == 4
    assert back.FrameIncrementPointer == 0x00181063
    assert back.ReferencedImageSequence[0].ReferencedSOPInstanceUID == "1.2.3"
    assert back[0x00091001].value == b"\x00\x01\x02"


def test_bundled_file_to_json(testfile: FileLoader) -> None:
    parsed = parse_instance(testfile("CT_small.dcm"))
    text = json.dumps(parsed.metadata, allow_nan=False)
    assert "7FE00010" in text
    assert parsed.metadata["00280010"] == {"vr": "US", "Value": [128]}


def test_invalid_numbers_fall_back_to_strings(build: Builder) -> None:
    ds = build(InstanceNumber="7", SliceThickness="2.5", SliceLocation="1.0")
    data = to_bytes(ds)
    for good, bad in (
        (b"IS\x02\x007 ", b"IS\x02\x00x7"),
        (b"DS\x04\x002.5 ", b"DS\x04\x00abc "),
        (b"DS\x04\x001.0 ", b"DS\x04\x00nan "),
    ):
        assert data.count(good) == 1
        data = data.replace(good, bad)
    md = parse_instance(data).metadata
    assert md["00200013"] == {"vr": "IS", "Value": ["x7"]}
    assert md["00180050"] == {"vr": "DS", "Value": ["abc"]}
    assert md["00201041"] == {"vr": "DS", "Value": ["nan"]}
    json.dumps(md, allow_nan=False)


def test_with_bulk_data_base(testfile: FileLoader) -> None:
    md = parse_instance(testfile("MR_small.dcm")).metadata
    absolute = with_bulk_data_base(md, "https://h/dicomweb/studies/1/series/2/instances/3/bulkdata/")
    assert absolute["7FE00010"]["BulkDataURI"] == (
        "https://h/dicomweb/studies/1/series/2/instances/3/bulkdata/7FE00010"
    )
    assert md["7FE00010"]["BulkDataURI"] == "7FE00010"


def test_level_tag_sets() -> None:
    for level, tags in (
        ("study", STUDY_LEVEL_TAGS),
        ("series", SERIES_LEVEL_TAGS),
        ("instance", INSTANCE_LEVEL_TAGS),
    ):
        assert set(DEFAULT_RETURN_TAGS[level]) <= tags  # type: ignore[index]
        assert all(re.fullmatch(r"[0-9A-F]{8}", t) for t in tags)
    assert {"00100010", "00100020", "0020000D", "00080020", "00080050"} <= STUDY_LEVEL_TAGS
    assert {"0020000E", "00080060", "00200011", "00400244", "00400245"} <= SERIES_LEVEL_TAGS
    assert {"00080016", "00080018", "00200013", "00280010", "00280011", "00280100", "00280008"} <= (
        INSTANCE_LEVEL_TAGS
    )


def test_level_attributes(testfile: FileLoader) -> None:
    md = parse_instance(testfile("CT_small.dcm")).metadata
    study = level_attributes(md, "study")
    assert set(study) <= STUDY_LEVEL_TAGS
    assert "00100010" in study and "0020000E" not in study
    series = level_attributes(md, "series")
    assert "0020000E" in series and "00100010" not in series
    instance = level_attributes(md, "instance")
    assert instance["00280010"] == md["00280010"]
    with pytest.raises(InvalidInput):
        level_attributes(md, "patient")  # type: ignore[arg-type]
