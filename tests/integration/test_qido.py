"""QIDO-RS (PS3.18 §10.6) against a real server holding a known set of generated studies."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from tests.conftest import Server, make_home, start_server

pytestmark = pytest.mark.integration

Json = dict[str, Any]


def make_instance(
    *,
    study: str,
    series: str,
    patient_name: str,
    patient_id: str,
    study_date: str,
    modality: str,
    accession: str,
    number: int,
    description: str = "",
) -> bytes:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientAge = "050Y"
    ds.StudyDate = study_date
    ds.StudyTime = "101500"
    ds.AccessionNumber = accession
    ds.StudyDescription = description
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.Rows = 4
    ds.Columns = 4
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(range(number, number + 16))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@dataclass
class StudySpec:
    key: str
    patient_name: str
    patient_id: str
    study_date: str
    accession: str
    description: str
    series: list[tuple[str, int]]  # (modality, number of instances)
    study_uid: str = ""
    series_uids: list[str] | None = None
    sop_uids: list[list[str]] | None = None


SPECS = [
    StudySpec("A", "Doe^John", "PID-A", "20200105", "ACC-A", "chest", [("CT", 2), ("SR", 1)]),
    StudySpec("B", "DOE^JANE", "PID-B", "20210615", "ACC-B", "head", [("MR", 1)]),
    StudySpec("C", "Smith^Anna", "PID-C", "20221231", "ACC-C", "abdomen", [("CT", 1)]),
    StudySpec("D", "Müller^Hans", "PID-D", "20190301", "ACC-D", "knee", [("MR", 1)]),
    StudySpec("E", "Roe^Richard", "PID-E", "20230702", "ACC-E", "hand", [("OT", 1)]),
    StudySpec("F", "Poe^Edgar", "PID-F", "20180820", "ACC-F", "foot", [("US", 1)]),
]


@dataclass
class Archive:
    server: Server
    client: httpx.Client
    studies: dict[str, StudySpec]

    def uid(self, key: str) -> str:
        return self.studies[key].study_uid


def multipart(files: list[bytes], boundary: str = "qido-boundary-7c1d") -> tuple[bytes, str]:
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + f + b"\r\n"
        for f in files
    )
    body += b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    home = make_home(Path(tmp_path_factory.mktemp("qido")) / "home")
    server = start_server(home)
    client = server.client()
    files: list[bytes] = []
    for spec in SPECS:
        spec.study_uid = generate_uid()
        spec.series_uids, spec.sop_uids = [], []
        number = 1
        for modality, count in spec.series:
            series_uid = generate_uid()
            spec.series_uids.append(series_uid)
            sops = []
            for _ in range(count):
                data = make_instance(
                    study=spec.study_uid,
                    series=series_uid,
                    patient_name=spec.patient_name,
                    patient_id=spec.patient_id,
                    study_date=spec.study_date,
                    modality=modality,
                    accession=spec.accession,
                    number=number,
                    description=spec.description,
                )
                number += 1
                files.append(data)
                sops.append(str(dcmread(io.BytesIO(data)).SOPInstanceUID))
            spec.sop_uids.append(sops)
    body, content_type = multipart(files)
    response = client.post("/dicomweb/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text
    try:
        yield Archive(server, client, {s.key: s for s in SPECS})
    finally:
        client.close()
        server.stop()


def values(item: Json, tag: str) -> list[Any]:
    return list(item.get(tag, {}).get("Value", []))


def first(item: Json, tag: str) -> Any:
    vals = values(item, tag)
    return vals[0] if vals else None


def qido(archive: Archive, path: str, **params: str) -> list[Json]:
    response = archive.client.get(f"/dicomweb{path}", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    result = response.json()
    assert isinstance(result, list)
    return result


def study_keys(archive: Archive, results: list[Json]) -> set[str]:
    by_uid = {s.study_uid: k for k, s in archive.studies.items()}
    return {by_uid[first(r, "0020000D")] for r in results}


def search_studies(archive: Archive, **params: str) -> set[str]:
    return study_keys(archive, qido(archive, "/studies", **params))


# -- studies ---------------------------------------------------------------------------------------


def test_all_studies_listed_once(archive: Archive) -> None:
    results = qido(archive, "/studies")
    uids = [first(r, "0020000D") for r in results]
    assert sorted(uids) == sorted(s.study_uid for s in SPECS)


def test_patient_id_is_exact(archive: Archive) -> None:
    assert search_studies(archive, PatientID="PID-A") == {"A"}
    assert search_studies(archive, PatientID="PID") == set()
    assert search_studies(archive, PatientID="pid-a") == set()  # LO matching is case-sensitive
    assert search_studies(archive, **{"00100020": "PID-C"}) == {"C"}  # by tag


def test_patient_name_wildcards_and_case(archive: Archive) -> None:
    assert search_studies(archive, PatientName="Doe*") == {"A", "B"}
    assert search_studies(archive, PatientName="doe*") == {"A", "B"}
    assert search_studies(archive, PatientName="?oe^*") == {"A", "B", "E", "F"}
    assert search_studies(archive, PatientName="doe^j?hn") == {"A"}
    assert search_studies(archive, PatientName="*^Ann?") == {"C"}
    assert search_studies(archive, PatientName="DOE^JOHN") == {"A"}
    assert search_studies(archive, PatientName="doe^jane") == {"B"}
    assert search_studies(archive, PatientName="Doe") == set()  # single value: not a prefix match
    assert search_studies(archive, PatientName="*") == set("ABCDEF")  # universal


def test_patient_name_accent_insensitive(archive: Archive) -> None:
    assert search_studies(archive, PatientName="MULLER^HANS") == {"D"}
    assert search_studies(archive, PatientName="müll*") == {"D"}


def test_study_date_single_and_ranges(archive: Archive) -> None:
    assert search_studies(archive, StudyDate="20210615") == {"B"}
    assert search_studies(archive, StudyDate="20210614") == set()
    assert search_studies(archive, StudyDate="20200105-20221231") == {"A", "B", "C"}  # inclusive
    assert search_studies(archive, StudyDate="20200106-20221230") == {"B"}
    assert search_studies(archive, StudyDate="-20200105") == {"A", "D", "F"}
    assert search_studies(archive, StudyDate="20221231-") == {"C", "E"}


def test_study_uid_list(archive: Archive) -> None:
    wanted = f"{archive.uid('A')}\\{archive.uid('C')}"
    assert search_studies(archive, StudyInstanceUID=wanted) == {"A", "C"}
    assert search_studies(archive, StudyInstanceUID=archive.uid("B")) == {"B"}
    assert search_studies(archive, StudyInstanceUID=f"{archive.uid('E')}\\1.2.3.4") == {"E"}


def test_modalities_in_study(archive: Archive) -> None:
    assert search_studies(archive, ModalitiesInStudy="MR") == {"B", "D"}
    assert search_studies(archive, ModalitiesInStudy="SR") == {"A"}
    assert search_studies(archive, ModalitiesInStudy="CT") == {"A", "C"}
    assert search_studies(archive, ModalitiesInStudy="XA") == set()


def test_accession_number_exact(archive: Archive) -> None:
    assert search_studies(archive, AccessionNumber="ACC-B") == {"B"}
    assert search_studies(archive, AccessionNumber="ACC") == set()


def test_combined_criteria(archive: Archive) -> None:
    assert search_studies(archive, PatientName="*oe*", StudyDate="20200101-20211231") == {"A", "B"}
    assert search_studies(archive, PatientName="*oe*", ModalitiesInStudy="CT") == {"A"}


def test_study_required_attributes(archive: Archive) -> None:
    (result,) = qido(archive, "/studies", PatientID="PID-A")
    spec = archive.studies["A"]
    assert first(result, "0020000D") == spec.study_uid
    assert first(result, "00100010") == {"Alphabetic": "Doe^John"}
    assert first(result, "00100020") == "PID-A"
    assert first(result, "00080020") == "20200105"
    assert first(result, "00080050") == "ACC-A"
    assert int(first(result, "00201206")) == 2  # NumberOfStudyRelatedSeries
    assert int(first(result, "00201208")) == 3  # NumberOfStudyRelatedInstances
    assert sorted(values(result, "00080061")) == ["CT", "SR"]  # ModalitiesInStudy
    assert first(result, "00080056") == "ONLINE"
    url = first(result, "00081190")
    assert url == f"{archive.server.dicomweb}/studies/{spec.study_uid}"
    for element in result.values():
        assert "vr" in element
    # Not requested: not returned.
    assert "00081030" not in result
    assert "00101010" not in result
    # The RetrieveURL works.
    response = archive.client.get(
        url, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'}
    )
    assert response.status_code == 200
    assert response.content.count(b"Content-Type: application/dicom") == 3


def test_includefield_named_tag_and_all(archive: Archive) -> None:
    (named,) = qido(archive, "/studies", PatientID="PID-B", includefield="StudyDescription")
    assert first(named, "00081030") == "head"
    assert "00101010" not in named
    (by_tag,) = qido(archive, "/studies", PatientID="PID-B", includefield="00081030,PatientAge")
    assert first(by_tag, "00081030") == "head"
    assert first(by_tag, "00101010") == "050Y"
    response = archive.client.get(
        "/dicomweb/studies",
        params=[("PatientID", "PID-B"), ("includefield", "00081030"), ("includefield", "00101010")],
    )
    (repeated,) = response.json()
    assert first(repeated, "00081030") == "head" and first(repeated, "00101010") == "050Y"
    (everything,) = qido(archive, "/studies", PatientID="PID-B", includefield="all")
    assert first(everything, "00081030") == "head"
    assert first(everything, "00101010") == "050Y"
    assert first(everything, "00100030") == "19700101"
    assert int(first(everything, "00201208")) == 1


def test_paging_is_stable_without_duplicates(archive: Archive) -> None:
    full = [first(r, "0020000D") for r in qido(archive, "/studies")]
    assert len(full) == len(SPECS)
    assert full == [first(r, "0020000D") for r in qido(archive, "/studies")]  # stable order
    paged: list[str] = []
    for offset in range(0, len(SPECS), 4):
        page = qido(archive, "/studies", limit="4", offset=str(offset))
        assert len(page) == min(4, len(SPECS) - offset)
        paged += [first(r, "0020000D") for r in page]
    assert paged == full
    assert [first(r, "0020000D") for r in qido(archive, "/studies", limit="1", offset="2")] == full[2:3]
    assert qido(archive, "/studies", offset=str(len(SPECS))) == []
    # Paging applies after matching.
    matched = [first(r, "0020000D") for r in qido(archive, "/studies", PatientName="*oe*")]
    assert len(matched) == 4
    assert [
        first(r, "0020000D") for r in qido(archive, "/studies", PatientName="*oe*", offset="1", limit="2")
    ] == matched[1:3]


def test_limit_zero_is_not_one_result(archive: Archive) -> None:
    """limit=0 means no results (or, leniently, no limit) -- never exactly one."""
    result = qido(archive, "/studies", limit="0")
    assert len(result) in (0, len(SPECS))


def test_empty_result_is_200_empty_list(archive: Archive) -> None:
    response = archive.client.get("/dicomweb/studies", params={"PatientID": "nobody"})
    assert response.status_code == 200
    assert response.json() == []
    response = archive.client.get(f"/dicomweb/studies/{generate_uid()}/series")
    assert response.status_code == 200
    assert response.json() == []


@pytest.mark.parametrize(
    "params",
    [
        {"NoSuchAttribute": "x"},
        {"includefield": "NoSuchAttribute"},
        {"StudyDate": "2020"},
        {"StudyDate": "20200101-20200230x"},
        {"StudyDate": "20221231-20200101"},
        {"StudyDate": "2020-01-01-2021"},
        {"StudyDate": "-"},
        {"StudyInstanceUID": "1.2.abc"},
        {"limit": "-1"},
        {"offset": "abc"},
        {"00099999": "x"},
    ],
)
def test_bad_queries_are_400(archive: Archive, params: dict[str, str]) -> None:
    response = archive.client.get("/dicomweb/studies", params=params)
    assert response.status_code == 400, response.text
    assert "error" in response.json()


def test_bad_query_value_is_not_echoed(archive: Archive) -> None:
    """A query value may carry PHI: an error names the attribute, never the value."""
    response = archive.client.get("/dicomweb/studies", params={"StudyDate": "Secret^Person"})
    assert response.status_code == 400
    assert "Secret" not in response.text
    assert "00080020" in response.text or "StudyDate" in response.text


# -- series and instances --------------------------------------------------------------------------


def test_series_search_all_and_by_modality(archive: Archive) -> None:
    all_series = qido(archive, "/series")
    expected = {uid for s in SPECS for uid in (s.series_uids or [])}
    assert {first(r, "0020000E") for r in all_series} == expected
    assert len(all_series) == len(expected)
    ct = qido(archive, "/series", Modality="CT")
    a, c = archive.studies["A"], archive.studies["C"]
    assert {first(r, "0020000E") for r in ct} == {a.series_uids[0], c.series_uids[0]}  # type: ignore[index]
    for r in ct:
        assert first(r, "00080060") == "CT"
        assert first(r, "00081190").startswith(f"{archive.server.dicomweb}/studies/")


def test_series_search_by_study_attributes(archive: Archive) -> None:
    series = qido(archive, "/series", PatientID="PID-A")
    assert {first(r, "0020000E") for r in series} == set(archive.studies["A"].series_uids or [])


def test_series_search_by_modalities_in_study(archive: Archive) -> None:
    """ModalitiesInStudy is a study attribute: every series of a matching study matches."""
    series = qido(archive, "/series", ModalitiesInStudy="SR")
    assert {first(r, "0020000E") for r in series} == set(archive.studies["A"].series_uids or [])


def test_study_series_nested(archive: Archive) -> None:
    spec = archive.studies["A"]
    series = qido(archive, f"/studies/{spec.study_uid}/series")
    assert [first(r, "0020000E") for r in series] == spec.series_uids
    counts = {first(r, "0020000E"): int(first(r, "00201209")) for r in series}
    assert counts == {spec.series_uids[0]: 2, spec.series_uids[1]: 1}  # type: ignore[index]
    assert {first(r, "00080060") for r in series} == {"CT", "SR"}
    for r in series:
        assert (
            first(r, "00081190")
            == f"{archive.server.dicomweb}/studies/{spec.study_uid}/series/{first(r, '0020000E')}"
        )
    only_sr = qido(archive, f"/studies/{spec.study_uid}/series", Modality="SR")
    assert [first(r, "0020000E") for r in only_sr] == [spec.series_uids[1]]  # type: ignore[index]


def test_instances_search(archive: Archive) -> None:
    all_instances = qido(archive, "/instances")
    assert len(all_instances) == sum(n for s in SPECS for _, n in s.series)
    spec = archive.studies["A"]
    sop = spec.sop_uids[0][1]  # type: ignore[index]
    (hit,) = qido(archive, "/instances", SOPInstanceUID=sop)
    assert first(hit, "00080018") == sop
    assert first(hit, "00080016") == SecondaryCaptureImageStorage
    assert int(first(hit, "00200013")) == 2
    assert int(first(hit, "00280010")) == 4
    assert int(first(hit, "00280011")) == 4
    assert first(hit, "0020000D") == spec.study_uid
    assert first(hit, "0020000E") == spec.series_uids[0]  # type: ignore[index]
    url = first(hit, "00081190")
    assert (
        url
        == f"{archive.server.dicomweb}/studies/{spec.study_uid}/series/{spec.series_uids[0]}/instances/{sop}"
    )  # type: ignore[index]
    assert archive.client.get(url, headers={"Accept": "application/dicom"}).status_code == 200
    by_patient = qido(archive, "/instances", PatientName="doe^john")
    assert {first(r, "00080018") for r in by_patient} == {u for sops in spec.sop_uids or [] for u in sops}


def test_study_and_series_instances_nested(archive: Archive) -> None:
    spec = archive.studies["A"]
    in_study = qido(archive, f"/studies/{spec.study_uid}/instances")
    assert {first(r, "00080018") for r in in_study} == {u for sops in spec.sop_uids or [] for u in sops}
    series_uid = spec.series_uids[0]  # type: ignore[index]
    in_series = qido(archive, f"/studies/{spec.study_uid}/series/{series_uid}/instances")
    assert [first(r, "00080018") for r in in_series] == spec.sop_uids[0]  # type: ignore[index]
    assert qido(archive, f"/studies/{spec.study_uid}/series/{series_uid}/instances", InstanceNumber="2") == [
        r for r in in_series if int(first(r, "00200013")) == 2
    ]
    paged = qido(archive, f"/studies/{spec.study_uid}/instances", limit="2", offset="1")
    assert [first(r, "00080018") for r in paged] == [first(r, "00080018") for r in in_study][1:3]
    other = archive.studies["B"]
    # A series UID under the wrong study finds nothing.
    assert qido(archive, f"/studies/{other.study_uid}/series/{series_uid}/instances") == []


def test_qido_with_dicomweb_client(archive: Archive) -> None:
    session = requests.Session()
    session.trust_env = False
    session.verify = str(archive.server.home.ca)
    session.headers["Authorization"] = f"Bearer {archive.server.home.admin_key}"
    client = DICOMwebClient(archive.server.dicomweb, session=session)
    studies = client.search_for_studies(search_filters={"PatientName": "Doe*"}, fields=["StudyDescription"])
    assert {s["00081030"]["Value"][0] for s in studies} == {"chest", "head"}
    spec = archive.studies["B"]
    series = client.search_for_series(study_instance_uid=spec.study_uid)
    assert [s["0020000E"]["Value"][0] for s in series] == spec.series_uids
    instances = client.search_for_instances(study_instance_uid=spec.study_uid, limit=1)
    assert [i["00080018"]["Value"][0] for i in instances] == spec.sop_uids[0]  # type: ignore[index]
