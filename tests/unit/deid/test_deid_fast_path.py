"""The fast path (``_raw``: no pydicom) gives byte for byte the files of the pydicom path, takes
the plain files, and declines everything else (then the pydicom path decides).

Every Table E.1-1 case and every engine test also compares both paths (``deid_kit``); here:
real files, encodings, undefined lengths, encapsulated pixel data, random data sets, the
declined cases, and the batch with and without the fast path.
"""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pydicom.data
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit

from medvault.dicom.deid import DatePolicy, DeidConfig, Deidentifier, deidentify_tree, parse_pixel_masks

from .deid_kit import (
    KEY,
    PATIENT_ID,
    SOP_UID,
    STUDY_UID,
    assert_files_agree,
    assert_paths_agree,
    code_item,
    leaks,
    make_ct,
    sequence,
    to_bytes,
    with_meta,
)

ALL_OPTIONS = DeidConfig.from_options(
    ["retain-uids", "retain-device-identity", "retain-institution-identity",
     "retain-patient-characteristics", "modified-dates", "clean-descriptors",
     "clean-structured-content", "clean-graphics", "retain-safe-private"]
)  # fmt: skip
CONFIGS = {
    "basic": DeidConfig(),
    "all-options": ALL_OPTIONS,
    "modified-dates-map": DeidConfig(dates=DatePolicy.MODIFIED, record_mapping=True),
}
# pydicom's files the fast path must take (explicit VR little endian, not burned-in suspects)
EXPECTED_FAST = {"CT_small.dcm", "MR_small.dcm"}


def _test_files() -> list[Path]:
    """pydicom's bundled files (not its optional downloads: no network in tests)."""
    root = Path(pydicom.data.__file__).parent / "test_files"
    return sorted(p for p in root.rglob("*.dcm") if p.stat().st_size < 1_000_000)


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_pydicom_test_files_agree(config_name: str) -> None:
    taken: set[str] = set()
    for path in _test_files():
        data = path.read_bytes()
        engine = Deidentifier(config=CONFIGS[config_name], project_key=KEY)
        try:
            engine.deidentify(dcmread(io.BytesIO(data)))
        except Exception:
            continue  # the pydicom path cannot read or process it: nothing to compare
        if assert_files_agree(data, CONFIGS[config_name]):
            taken.add(path.name)
    assert taken >= EXPECTED_FAST
    assert len(taken) >= 10


def _ct_bytes(ds: Dataset) -> bytes:
    return to_bytes(with_meta(ds))


def test_utf8_and_latin1_text() -> None:
    for charset, name in (("ISO_IR 192", "MÜLLER^JÜRGEN"), ("ISO_IR 100", "MÜLLER^JÜRGEN")):
        ds = make_ct(SpecificCharacterSet=charset, PatientName=name)
        ds.ImageComments = "scan of Jürgen MÜLLER ok"
        ds.ConvolutionKernel = "JÜRGEN kernel"  # outside the table: kept, cleaned of the name
        data = _ct_bytes(ds)
        for config in CONFIGS.values():
            assert assert_files_agree(data, config)
        out = Deidentifier(config=DeidConfig(), project_key=KEY).deidentify_bytes(data)
        assert out is not None
        codec = "utf-8" if charset == "ISO_IR 192" else "latin-1"
        assert "JÜRGEN".encode(codec) not in out.data.upper()
        assert "MÜLLER".encode(codec) not in out.data


def test_undefined_length_sequences_and_items() -> None:
    ds = make_ct()
    inner = code_item("C1", "99L", f"seen by DOE for {PATIENT_ID}")
    inner.is_undefined_length_sequence_item = True
    ds.ProcedureCodeSequence = sequence(inner)
    ds["ProcedureCodeSequence"].is_undefined_length = True
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ref.ReferencedSOPInstanceUID = SOP_UID
    ds.SourceImageSequence = sequence(ref, Dataset())  # an empty item too
    ds["SourceImageSequence"].is_undefined_length = True
    data = _ct_bytes(ds)
    assert b"\xfe\xff\xdd\xe0" in data  # the input really has a sequence delimiter
    for config in CONFIGS.values():
        assert assert_files_agree(data, config)


def test_encapsulated_pixel_data_is_copied_as_is() -> None:
    frames = [b"\xff\xd8frame-one\xff\xd9", b"\xff\xd8frame-two!\xff\xd9"]
    ds = make_ct(NumberOfFrames=2)
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    with_meta(ds).file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    data = to_bytes(ds)
    for config in CONFIGS.values():
        assert assert_files_agree(data, config)
    out = Deidentifier(config=DeidConfig(), project_key=KEY).deidentify_bytes(data)
    assert out is not None
    assert dcmread(io.BytesIO(out.data)).file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert encapsulate(frames) in out.data


def test_overlays_curves_private_and_public_un() -> None:
    ds = make_ct()
    ds.add_new(0x60000010, "US", 4)
    ds.add_new(0x60000022, "LO", "overlay by DOE")
    ds.add_new(0x60003000, "OW", b"\x01\x00" * 8)
    ds.add_new(0x50000005, "US", 1)
    ds.add_new(0x0072006D, "UN", b"SECRET")  # Selector UN Value: pydicom keeps UN too
    block = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
    block.add_new(0x23, "DS", "12.5")
    block.add_new(0x24, "LO", "DOE JOHNATHAN")
    data = _ct_bytes(ds)
    for config in CONFIGS.values():
        assert assert_files_agree(data, config)


# --- declined: the pydicom path decides ----------------------------------------------------
def _declined_inputs() -> dict[str, bytes]:
    no_sop_uid = with_meta(make_ct())
    del no_sop_uid.SOPInstanceUID
    implicit = with_meta(make_ct())
    implicit.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    big = with_meta(make_ct())
    big.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    nested_charset = make_ct()
    item = code_item("C", "99L", "x")
    item.SpecificCharacterSet = "ISO_IR 192"
    nested_charset.ProcedureCodeSequence = sequence(item)
    # Study Description written as UN (pydicom's writer would re-type it, so by hand): pydicom
    # reads it back as LO, the fast path does not guess
    un_known = _ct_bytes(make_ct(StudyDescription="SECRET STUDY")).replace(
        b"\x08\x00\x30\x10LO\x0c\x00", b"\x08\x00\x30\x10UN\x00\x00\x0c\x00\x00\x00"
    )
    second_pass = make_ct(PatientIdentityRemoved="YES", DeidentificationMethod="EARLIER TOOL")
    no_preamble = io.BytesIO()
    with_meta(make_ct()).save_as(no_preamble, enforce_file_format=False)
    whole = _ct_bytes(make_ct())
    comma = _ct_bytes(make_ct(SliceThickness="12.5")).replace(b"12.5", b"12,5")
    return {
        "UID with whitespace": whole.replace(SOP_UID.encode(), b" " + SOP_UID.encode()[1:]),
        "DS that is not a number": comma,
        "implicit VR": to_bytes(implicit),
        "big endian": to_bytes(big),
        "no file meta": no_preamble.getvalue(),
        "truncated": whole[:-7],
        "nested character set": _ct_bytes(nested_charset),
        "UN with a known VR": un_known,
        "de-identified before": _ct_bytes(second_pass),
        "burned-in suspect": _ct_bytes(make_ct(Modality="US")),
        "no SOP Instance UID": to_bytes(no_sop_uid),
    }


def test_file_ending_inside_its_file_meta_is_declined() -> None:
    syntax = struct.pack("<HH2sH", 0x0002, 0x0010, b"UI", 20) + b"1.2.840.10008.1.2.1\0"
    cut_header = struct.pack("<HH2sH", 0x0002, 0x0001, b"OB", 0)  # a long-VR header without its length
    meta = syntax + cut_header
    data = b"\0" * 128 + b"DICM" + struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(meta)) + meta
    assert Deidentifier(config=DeidConfig(), project_key=KEY).deidentify_bytes(data) is None


@pytest.mark.parametrize("case", sorted(_declined_inputs()))
def test_declined_inputs(case: str) -> None:
    data = _declined_inputs()[case]
    assert Deidentifier(config=DeidConfig(), project_key=KEY).deidentify_bytes(data) is None


def test_pixel_masks_take_the_pydicom_path() -> None:
    masks = parse_pixel_masks(
        {"rules": [{"name": "corner", "regions": [{"x": 0, "y": 0, "width": 2, "height": 2}]}]}
    )
    config = DeidConfig(clean_pixel_data=True, pixel_masks=masks)
    assert Deidentifier(config=config, project_key=KEY).deidentify_bytes(_ct_bytes(make_ct())) is None


# --- the batch: same files with and without the fast path ----------------------------------
def test_batch_output_is_the_same_without_the_fast_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        ds = make_ct(SOPInstanceUID=f"{SOP_UID}.{i}", InstanceNumber=i, ImageComments=f"see {STUDY_UID}")
        (src / f"{i}.dcm").write_bytes(_ct_bytes(ds))
    (src / "ct_small.dcm").write_bytes(Path(get_testdata_file("CT_small.dcm", download=False)).read_bytes())
    (src / "implicit.dcm").write_bytes(
        Path(get_testdata_file("MR_small_implicit.dcm", download=False)).read_bytes()
    )
    fast = deidentify_tree(src, tmp_path / "fast", config=ALL_OPTIONS, project_key=KEY)
    monkeypatch.setattr(Deidentifier, "deidentify_bytes", lambda self, data: None)
    slow = deidentify_tree(src, tmp_path / "slow", config=ALL_OPTIONS, project_key=KEY)
    assert [o.status for o in fast.outcomes] == [o.status for o in slow.outcomes] == ["written"] * 8
    names = sorted(p.name for p in (tmp_path / "fast").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "slow").iterdir())
    for name in names:
        assert (tmp_path / "fast" / name).read_bytes() == (tmp_path / "slow" / name).read_bytes()
    assert not leaks(b"".join((tmp_path / "fast" / n).read_bytes() for n in names), [PATIENT_ID, "JOHNATHAN"])


# --- random data sets ----------------------------------------------------------------------
_WORDS = st.sampled_from(["DOE", "JOHNATHAN", PATIENT_ID, "2020-01-15", "CHEST", "Dr. Kildare", "12345678",
                          STUDY_UID, "", " padded ", "a\\b", "x@y.org", "ÉCOLE"])  # fmt: skip
_TEXT = st.lists(_WORDS, max_size=4).map(" ".join)
_POOL: list[tuple[str, st.SearchStrategy[object]]] = [
    ("PatientName", st.sampled_from(["DOE^JOHNATHAN", "ÉMILE^ZOLA", "", "A^B\\C^D"])),
    ("PatientID", st.sampled_from([PATIENT_ID, "", "X1"])),
    ("OtherPatientIDs", st.sampled_from(["OTHER1", "A\\B"])),
    ("StudyDescription", _TEXT),
    ("ImageComments", _TEXT),
    ("ConvolutionKernel", _TEXT),
    ("InstitutionName", _TEXT),
    ("OperatorsName", st.sampled_from(["SMITH^ANN", "A\\B"])),
    ("ContentDate", st.sampled_from(["20200115", "2020", "20200115-20200201", "", "bad"])),
    ("AcquisitionDateTime", st.sampled_from(["20200115101500", "20200115101500.5+0100", ""])),
    ("StudyTime", st.sampled_from(["101500", "1015", ""])),
    ("FrameOfReferenceUID", st.sampled_from([STUDY_UID + ".9", "1.2.840.10008.1.2", ""])),
    ("StationAETitle", st.sampled_from(["CT_ROOM_1", " PAD "])),
    ("SliceThickness", st.sampled_from(["1.25", "5"])),
    ("InstanceNumber", st.sampled_from(["1", "42"])),
    ("PatientAge", st.sampled_from(["045Y", ""])),
    ("PatientWeight", st.sampled_from(["70.5", ""])),
    ("WindowCenter", st.sampled_from(["40\\400", "40"])),
]
_SEQUENCES = ["ProcedureCodeSequence", "ReferencedImageSequence", "RequestAttributesSequence",
              "SourceImageSequence", "ContentSequence"]  # fmt: skip


@st.composite
def _datasets(draw: st.DrawFn, depth: int = 0) -> Dataset:
    ds = Dataset()
    for keyword, values in draw(st.lists(st.sampled_from(_POOL), max_size=8, unique_by=lambda p: p[0])):
        setattr(ds, keyword, draw(values))
    if depth < 2:
        for keyword in draw(st.lists(st.sampled_from(_SEQUENCES), max_size=2, unique=True)):
            items = draw(st.lists(_datasets(depth + 1), max_size=2))
            setattr(ds, keyword, sequence(*items))
    return ds


@settings(max_examples=150, deadline=None)
@given(
    body=_datasets(),
    config=st.sampled_from(sorted(CONFIGS)),
    charset=st.sampled_from(["ISO_IR 100", "ISO_IR 192"]),
)
def test_random_data_sets_agree(body: Dataset, config: str, charset: str) -> None:
    ds = make_ct(SpecificCharacterSet=charset)
    for elem in body:
        ds[elem.tag] = elem
    assert assert_paths_agree(ds, CONFIGS[config])


# --- damaged input: the fast path declines, it never raises ---------------------------------
_SAMPLE = None


def _sample_file() -> bytes:
    global _SAMPLE
    if _SAMPLE is None:
        ds = make_ct(ImageComments=f"see {STUDY_UID}")
        ds.ProcedureCodeSequence = sequence(code_item("C1", "99L", "x"))
        _SAMPLE = _ct_bytes(ds)
    return _SAMPLE


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_damaged_files_never_raise(data: st.DataObject) -> None:
    original = _sample_file()
    damaged = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(128, len(damaged) - 1))
        damaged[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(132, len(damaged)))
    engine = Deidentifier(config=DeidConfig(), project_key=KEY)
    result = engine.deidentify_bytes(bytes(damaged[:cut]))
    assert result is None or result.data.startswith(b"\0" * 128 + b"DICM")
