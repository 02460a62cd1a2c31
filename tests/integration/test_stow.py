"""STOW-RS (PS3.18 §10.5) against a real server: store, duplicates, conflicts, refusals, limits."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from tests.conftest import Server, make_home, start_server

pytestmark = pytest.mark.integration

Json = dict[str, Any]
BOUNDARY = "stow-test-boundary-5e2a"
DICOM_MULTIPART = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'

REFERENCED = "00081199"
FAILED = "00081198"
RETRIEVE_URL = "00081190"
SOP_CLASS = "00081150"
SOP_INSTANCE = "00081155"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"


def bundled(name: str) -> bytes:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not bundled")
    return Path(str(path)).read_bytes()


def to_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def make_dataset(*, study: str | None = None, pixels: int = 16, seed: int = 0) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Secret^Person"
    ds.PatientID = "STOW-" + ds.StudyInstanceUID[-8:]  # one patient per study
    ds.StudyDate = "20240102"
    ds.Modality = "OT"
    ds.InstanceNumber = 1
    ds.Rows = 1
    ds.Columns = pixels
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes((seed + i) % 256 for i in range(pixels))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def make_instance(**kwargs: Any) -> tuple[bytes, Dataset]:
    ds = make_dataset(**kwargs)
    return to_bytes(ds), ds


def multipart(parts: list[tuple[str | None, bytes]], boundary: str = BOUNDARY) -> bytes:
    out = b""
    for content_type, body in parts:
        out += b"--" + boundary.encode() + b"\r\n"
        if content_type is not None:
            out += b"Content-Type: " + content_type.encode() + b"\r\n"
        out += b"\r\n" + body + b"\r\n"
    return out + b"--" + boundary.encode() + b"--\r\n"


def stow(client: httpx.Client, files: list[bytes], url: str = "/dicomweb/studies") -> httpx.Response:
    body = multipart([("application/dicom", f) for f in files])
    return client.post(url, content=body, headers={"Content-Type": DICOM_MULTIPART})


def seq(payload: Json, tag: str) -> list[Json]:
    return list(payload.get(tag, {}).get("Value", []))


def value(item: Json, tag: str) -> Any:
    return item[tag]["Value"][0]


def dicomweb_client(server: Server) -> DICOMwebClient:
    session = requests.Session()
    session.trust_env = False
    session.verify = str(server.home.ca)
    session.headers["Authorization"] = f"Bearer {server.home.admin_key}"
    return DICOMwebClient(server.dicomweb, session=session)


def retrieve_as_stored(client: httpx.Client, url: str) -> bytes:
    response = client.get(url, headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom")
    return response.content


def assert_healthy_and_absent(client: httpx.Client, *datasets: Dataset, study_absent: bool = True) -> None:
    """The server still answers, and nothing of a refused request can be found or retrieved."""
    assert client.get("/healthz").status_code == 200
    for ds in datasets:
        found = client.get("/dicomweb/instances", params={"SOPInstanceUID": ds.SOPInstanceUID})
        assert found.status_code == 200
        assert found.json() == []
        study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        url = f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"
        assert client.get(url).status_code == 404
        assert client.get(url + "/metadata").status_code == 404
        if study_absent:
            assert client.get(f"/dicomweb/studies/{ds.StudyInstanceUID}").status_code == 404
            studies = client.get("/dicomweb/studies", params={"StudyInstanceUID": ds.StudyInstanceUID})
            assert studies.json() == []


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = make_home(Path(tmp_path_factory.mktemp("stow")) / "home")
    started = start_server(home)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


# -- storing ---------------------------------------------------------------------------------------


def test_store_several_files_with_dicomweb_client(server: Server, client: httpx.Client) -> None:
    names = ["CT_small.dcm", "SC_rgb_rle_2frame.dcm", "JPEG2000.dcm", "test-SR.dcm"]
    datasets = [dcmread(io.BytesIO(bundled(n))) for n in names]
    response = dicomweb_client(server).store_instances(datasets)
    referenced = response.ReferencedSOPSequence
    assert [str(r.ReferencedSOPInstanceUID) for r in referenced] == [
        str(ds.SOPInstanceUID) for ds in datasets
    ]
    assert "FailedSOPSequence" not in response
    for ds in datasets:
        found = client.get("/dicomweb/instances", params={"SOPInstanceUID": ds.SOPInstanceUID}).json()
        assert len(found) == 1
        assert found[0]["0020000D"]["Value"] == [ds.StudyInstanceUID]


def test_store_multipart_response_shape(server: Server, client: httpx.Client) -> None:
    study = generate_uid()
    files = [make_instance(study=study, seed=i) for i in range(3)]
    response = stow(client, [f for f, _ in files])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    payload = response.json()
    assert FAILED not in payload
    assert payload[RETRIEVE_URL]["Value"] == [f"{server.dicomweb}/studies/{study}"]
    referenced = seq(payload, REFERENCED)
    assert len(referenced) == 3
    for item, (data, ds) in zip(referenced, files, strict=True):
        assert value(item, SOP_CLASS) == SecondaryCaptureImageStorage
        assert value(item, SOP_INSTANCE) == ds.SOPInstanceUID
        assert WARNING_REASON not in item
        url = value(item, RETRIEVE_URL)
        assert url == (
            f"{server.dicomweb}/studies/{study}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
        )
        assert retrieve_as_stored(client, url) == data
    studies = client.get("/dicomweb/studies", params={"StudyInstanceUID": study}).json()
    assert int(studies[0]["00201208"]["Value"][0]) == 3


def test_store_to_study_url(client: httpx.Client) -> None:
    study = generate_uid()
    data, ds = make_instance(study=study)
    response = stow(client, [data], url=f"/dicomweb/studies/{study}")
    assert response.status_code == 200, response.text
    assert value(seq(response.json(), REFERENCED)[0], SOP_INSTANCE) == ds.SOPInstanceUID


def test_part_without_content_type_is_taken_as_dicom(client: httpx.Client) -> None:
    data, ds = make_instance()
    body = multipart([(None, data)])
    response = client.post("/dicomweb/studies", content=body, headers={"Content-Type": DICOM_MULTIPART})
    assert response.status_code == 200, response.text
    assert value(seq(response.json(), REFERENCED)[0], SOP_INSTANCE) == ds.SOPInstanceUID


def test_same_instance_again_is_accepted_with_warning(client: httpx.Client) -> None:
    data, ds = make_instance()
    assert stow(client, [data]).status_code == 200
    again = stow(client, [data])
    assert again.status_code == 200, again.text
    payload = again.json()
    assert FAILED not in payload
    (item,) = seq(payload, REFERENCED)
    assert value(item, SOP_INSTANCE) == ds.SOPInstanceUID
    assert item[WARNING_REASON]["Value"] == [0xB000]
    assert RETRIEVE_URL in item
    found = client.get("/dicomweb/instances", params={"SOPInstanceUID": ds.SOPInstanceUID}).json()
    assert len(found) == 1


def test_same_instance_twice_in_one_request(client: httpx.Client) -> None:
    data, ds = make_instance()
    response = stow(client, [data, data])
    assert response.status_code == 200, response.text
    items = seq(response.json(), REFERENCED)
    assert [value(i, SOP_INSTANCE) for i in items] == [ds.SOPInstanceUID] * 2
    assert [WARNING_REASON in i for i in items] == [False, True]


def test_a_different_data_set_under_existing_uid_is_409(client: httpx.Client) -> None:
    """Other bytes of the same data set (here JPEG 2000 lossless of the same pixels) are the same
    instance (issue 20: a re-send must succeed); a changed element is a conflict."""
    original = bundled("MR_small.dcm")
    recoded = bundled("MR_small_jp2klossless.dcm")  # same SOPInstanceUID and data set, other encoding
    ds = dcmread(io.BytesIO(original))
    assert dcmread(io.BytesIO(recoded)).SOPInstanceUID == ds.SOPInstanceUID
    assert stow(client, [original]).status_code == 200
    again = stow(client, [recoded])
    assert again.status_code == 200, again.text
    assert WARNING_REASON in seq(again.json(), REFERENCED)[0]  # already present, kept as first stored
    ds.SeriesDescription = "corrected afterwards"
    changed = io.BytesIO()
    ds.save_as(changed, enforce_file_format=True)
    response = stow(client, [changed.getvalue()])
    assert response.status_code == 409, response.text
    payload = response.json()
    assert REFERENCED not in payload
    (item,) = seq(payload, FAILED)
    assert item[FAILURE_REASON]["Value"] == [0x0111]
    assert value(item, SOP_INSTANCE) == ds.SOPInstanceUID
    assert "Warning" in response.headers
    assert "CompressedSamples" not in response.headers["Warning"]  # no patient name in the warning
    url = (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    )
    assert retrieve_as_stored(client, url) == original
    found = client.get("/dicomweb/instances", params={"SOPInstanceUID": ds.SOPInstanceUID}).json()
    assert len(found) == 1
    assert client.get("/healthz").status_code == 200


def test_conflicting_content_in_one_request(client: httpx.Client) -> None:
    ds = make_dataset()
    first_bytes = to_bytes(ds)
    ds.PatientID = "CHANGED"
    second_bytes = to_bytes(ds)
    response = stow(client, [first_bytes, second_bytes])
    assert response.status_code == 202, response.text
    payload = response.json()
    assert [value(i, SOP_INSTANCE) for i in seq(payload, REFERENCED)] == [ds.SOPInstanceUID]
    assert [i[FAILURE_REASON]["Value"] for i in seq(payload, FAILED)] == [[0x0111]]
    url = (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    )
    assert retrieve_as_stored(client, url) == first_bytes


def test_mix_of_good_and_bad_parts_is_202(client: httpx.Client) -> None:
    good, good_ds = make_instance()
    bad_study_ds = make_dataset()
    truncated = to_bytes(bad_study_ds)[:-10]
    body = multipart(
        [
            ("application/dicom", good),
            ("application/dicom", b"this is not DICOM at all"),
            ("application/dicom", truncated),
            ("application/json", b'{"not": "dicom"}'),
        ]
    )
    response = client.post("/dicomweb/studies", content=body, headers={"Content-Type": DICOM_MULTIPART})
    assert response.status_code == 202, response.text
    payload = response.json()
    assert [value(i, SOP_INSTANCE) for i in seq(payload, REFERENCED)] == [good_ds.SOPInstanceUID]
    failed = seq(payload, FAILED)
    assert [i[FAILURE_REASON]["Value"] for i in failed] == [[0xC000]] * 3
    warnings = response.headers["Warning"]
    assert "part 2" in warnings and "part 3" in warnings and "part 4" in warnings
    assert "Secret" not in warnings
    url = value(seq(payload, REFERENCED)[0], RETRIEVE_URL)
    assert retrieve_as_stored(client, url) == good
    assert_healthy_and_absent(client, bad_study_ds)


# -- refused parts ---------------------------------------------------------------------------------


def test_non_dicom_part_is_c000(client: httpx.Client) -> None:
    response = stow(client, [b"\x00" * 200 + b"hello"])
    assert response.status_code == 400, response.text
    payload = response.json()
    assert REFERENCED not in payload
    assert [i[FAILURE_REASON]["Value"] for i in seq(payload, FAILED)] == [[0xC000]]
    assert_healthy_and_absent(client)


@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_file_is_refused(client: httpx.Client, keep: float) -> None:
    ds = dcmread(io.BytesIO(bundled("CT_small.dcm")))
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    data = to_bytes(ds)
    response = stow(client, [data[: int(len(data) * keep)]])
    assert response.status_code == 400, response.text
    payload = response.json()
    assert REFERENCED not in payload
    assert [i[FAILURE_REASON]["Value"] for i in seq(payload, FAILED)] == [[0xC000]]
    assert_healthy_and_absent(client, ds)


def test_missing_sop_instance_uid_is_a900(client: httpx.Client) -> None:
    ds = make_dataset()
    sop = ds.SOPInstanceUID
    del ds.SOPInstanceUID
    response = stow(client, [to_bytes(ds)])
    assert response.status_code == 400, response.text
    payload = response.json()
    assert REFERENCED not in payload
    assert [i[FAILURE_REASON]["Value"] for i in seq(payload, FAILED)] == [[0xA900]]
    ds.SOPInstanceUID = sop
    assert_healthy_and_absent(client, ds)


def test_instance_of_another_study_on_study_url(client: httpx.Client) -> None:
    data, ds = make_instance()
    url_study = generate_uid()
    response = stow(client, [data], url=f"/dicomweb/studies/{url_study}")
    assert response.status_code == 409, response.text
    payload = response.json()
    assert REFERENCED not in payload
    (item,) = seq(payload, FAILED)
    assert item[FAILURE_REASON]["Value"] == [0xA900]
    assert value(item, SOP_INSTANCE) == ds.SOPInstanceUID
    assert_healthy_and_absent(client, ds)
    assert client.get(f"/dicomweb/studies/{url_study}").status_code == 404


def test_study_url_with_mixed_studies_is_202(client: httpx.Client) -> None:
    study = generate_uid()
    good, good_ds = make_instance(study=study)
    other, other_ds = make_instance()
    response = stow(client, [good, other], url=f"/dicomweb/studies/{study}")
    assert response.status_code == 202, response.text
    payload = response.json()
    assert [value(i, SOP_INSTANCE) for i in seq(payload, REFERENCED)] == [good_ds.SOPInstanceUID]
    assert [i[FAILURE_REASON]["Value"] for i in seq(payload, FAILED)] == [[0xA900]]
    assert_healthy_and_absent(client, other_ds)


# -- refused requests ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/dicom",
        f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}',
        f"multipart/form-data; boundary={BOUNDARY}",
        None,
    ],
)
def test_wrong_content_type_is_415(client: httpx.Client, content_type: str | None) -> None:
    data, ds = make_instance()
    body = multipart([("application/dicom", data)])
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/dicomweb/studies", content=body, headers=headers)
    assert response.status_code == 415, response.text
    assert_healthy_and_absent(client, ds)


@pytest.mark.parametrize(
    ("content_type", "mangle"),
    [
        ('multipart/related; type="application/dicom"', None),  # no boundary
        ('multipart/related; type="application/dicom"; boundary=', None),
        (DICOM_MULTIPART, "truncate"),  # no closing delimiter
        (DICOM_MULTIPART, "no-boundary"),  # the body never contains the boundary
        (DICOM_MULTIPART, "empty"),
        (DICOM_MULTIPART, "no-parts"),
        (DICOM_MULTIPART, "no-header-end"),
    ],
)
def test_malformed_multipart_is_400(client: httpx.Client, content_type: str, mangle: str | None) -> None:
    data, ds = make_instance()
    body = multipart([("application/dicom", data)])
    if mangle == "truncate":
        body = body[: len(body) // 2]
    elif mangle == "no-boundary":
        body = multipart([("application/dicom", data)], boundary="some-other-boundary")
    elif mangle == "empty":
        body = b""
    elif mangle == "no-parts":
        body = f"--{BOUNDARY}--\r\n".encode()
    elif mangle == "no-header-end":
        body = f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n".encode()
    response = client.post("/dicomweb/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 400, response.text
    assert "error" in response.json()
    assert_healthy_and_absent(client, ds)


# -- size limits -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = make_home(Path(tmp_path_factory.mktemp("stow-limits")) / "home")
    home.set_config("server", "max_instance_bytes", "4000")
    home.set_config("server", "max_request_bytes", "60000")
    started = start_server(home)
    yield started
    started.stop()


def test_part_over_max_instance_bytes_is_a700(small_server: Server) -> None:
    big = make_dataset(pixels=8000)
    small, small_ds = make_instance()
    assert len(small) < 4000 < len(to_bytes(big)) < 60000
    with small_server.client() as client:
        response = stow(client, [to_bytes(big)])
        assert response.status_code == 413, response.text
        payload = response.json()
        assert REFERENCED not in payload
        (item,) = seq(payload, FAILED)
        assert item[FAILURE_REASON]["Value"] == [0xA700]
        assert_healthy_and_absent(client, big)

        mixed = stow(client, [small, to_bytes(big)])
        assert mixed.status_code == 202, mixed.text
        payload = mixed.json()
        assert [value(i, SOP_INSTANCE) for i in seq(payload, REFERENCED)] == [small_ds.SOPInstanceUID]
        assert [i[FAILURE_REASON]["Value"] for i in seq(payload, FAILED)] == [[0xA700]]
        assert_healthy_and_absent(client, big)


def test_body_over_max_request_bytes_is_413(small_server: Server) -> None:
    instances = [make_instance(pixels=3000) for _ in range(20)]  # each under max_instance_bytes
    body = multipart([("application/dicom", data) for data, _ in instances])
    assert len(body) > 60000
    with small_server.client() as client:
        response = client.post("/dicomweb/studies", content=body, headers={"Content-Type": DICOM_MULTIPART})
        assert response.status_code == 413, response.text[:300]
        assert_healthy_and_absent(client, *(ds for _, ds in instances[:3]), instances[-1][1])


def test_chunked_body_over_max_request_bytes_is_413(small_server: Server) -> None:
    instances = [make_instance(pixels=3000) for _ in range(20)]
    body = multipart([("application/dicom", data) for data, _ in instances])

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    with small_server.client() as client:
        response = client.post(
            "/dicomweb/studies", content=chunks(), headers={"Content-Type": DICOM_MULTIPART}
        )
        assert "content-length" not in response.request.headers
        assert response.status_code == 413, response.text[:300]
        assert_healthy_and_absent(client, instances[0][1], instances[-1][1])
