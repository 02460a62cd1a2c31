"""WADO-RS (PS3.18 §10.4) and DELETE against a real server: instances, metadata, frames, rendered."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from medvault.sample import generate_study
from tests.conftest import Server, make_home, start_server

pytestmark = pytest.mark.integration

EXPLICIT_LE = "1.2.840.10008.1.2.1"
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
DEFAULT_DICOM = 'multipart/related; type="application/dicom"'
FRAMES_AS_STORED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
FRAMES_UNCOMPRESSED = 'multipart/related; type="application/octet-stream"'

FILES = [
    "CT_small.dcm",
    "SC_rgb_rle_2frame.dcm",
    "JPEG2000.dcm",
    "JPEG-lossy.dcm",
    "MR_small_jp2klossless.dcm",
    "test-SR.dcm",
]
DECODABLE_COMPRESSED = ["SC_rgb_rle_2frame.dcm", "JPEG2000.dcm", "MR_small_jp2klossless.dcm"]


def bundled(name: str) -> bytes:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"pydicom test file {name} is not bundled")
    return Path(str(path)).read_bytes()


def native_multiframe(frames: int = 3, rows: int = 6, cols: int = 5) -> tuple[bytes, Dataset]:
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Frames^Test"
    ds.PatientID = "WADO-MF"
    ds.Modality = "OT"
    ds.NumberOfFrames = frames
    ds.Rows = rows
    ds.Columns = cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    # Each frame has its own pattern, so frames differ after rendering (which windows each frame).
    ds.PixelData = b"".join(
        bytes((k * 7 * (i + 1) + 13 * i) % 256 for k in range(rows * cols)) for i in range(frames)
    )
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), ds


def small_instance(study: str, series: str, number: int) -> bytes:
    data, _ = native_multiframe(frames=1)
    ds = dcmread(io.BytesIO(data))
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.InstanceNumber = number
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def stow(client: httpx.Client, files: list[bytes]) -> None:
    boundary = "wado-setup-boundary-91ab"
    body = (
        b"".join(
            b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + f + b"\r\n"
            for f in files
        )
        + b"--"
        + boundary.encode()
        + b"--\r\n"
    )
    response = client.post(
        "/dicomweb/studies",
        content=body,
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
    )
    assert response.status_code == 200, response.text


def parts(response: httpx.Response) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part of a multipart/related response (parsed independently)."""
    assert response.status_code == 200, response.text
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/related")
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    assert match is not None
    delimiter = b"--" + match.group(1).encode()
    body = response.content
    assert body.startswith(delimiter + b"\r\n")
    end = body.rindex(b"\r\n" + delimiter + b"--")
    out = []
    for chunk in body[len(delimiter) + 2 : end].split(b"\r\n" + delimiter + b"\r\n"):
        head, _, content = chunk.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        out.append((headers["Content-Type"], content))
    return out


@dataclass
class Stored:
    data: bytes
    ds: Dataset

    @property
    def path(self) -> str:
        ds = self.ds
        study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        return f"/dicomweb/studies/{study}/series/{series}/instances/{sop}"


@dataclass
class Wado:
    server: Server
    client: httpx.Client
    files: dict[str, Stored]


@pytest.fixture(scope="module")
def wado(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Wado]:
    home = make_home(Path(tmp_path_factory.mktemp("wado")) / "home")
    server = start_server(home)
    client = server.client()
    files = {name: Stored(bundled(name), dcmread(io.BytesIO(bundled(name)))) for name in FILES}
    data, ds = native_multiframe()
    files["multiframe"] = Stored(data, ds)
    stow(client, [s.data for s in files.values()])
    try:
        yield Wado(server, client, files)
    finally:
        client.close()
        server.stop()


# -- instances -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*FILES, "multiframe"])
def test_instance_as_stored_is_byte_identical(wado: Wado, name: str) -> None:
    stored = wado.files[name]
    ((part_type, body),) = parts(wado.client.get(stored.path, headers={"Accept": AS_STORED}))
    assert body == stored.data
    assert f"transfer-syntax={stored.ds.file_meta.TransferSyntaxUID}" in part_type
    single = wado.client.get(stored.path, headers={"Accept": "application/dicom; transfer-syntax=*"})
    assert single.status_code == 200
    assert single.headers["content-type"].startswith("application/dicom")
    assert single.content == stored.data


def test_no_accept_gives_as_stored(wado: Wado) -> None:
    stored = wado.files["SC_rgb_rle_2frame.dcm"]
    response = wado.client.get(stored.path)
    ((_, body),) = parts(response)
    assert body == stored.data


def test_study_and_series_as_stored(wado: Wado) -> None:
    j2k, lossy = wado.files["JPEG2000.dcm"], wado.files["JPEG-lossy.dcm"]
    assert j2k.ds.StudyInstanceUID == lossy.ds.StudyInstanceUID
    response = wado.client.get(f"/dicomweb/studies/{j2k.ds.StudyInstanceUID}", headers={"Accept": AS_STORED})
    # as stored, every size is known: a Content-Length body, no chunked framing
    assert int(response.headers["content-length"]) == len(response.content)
    assert "transfer-encoding" not in response.headers
    study = parts(response)
    assert sorted(body for _, body in study) == sorted([j2k.data, lossy.data])
    for stored in (j2k, lossy):
        series_path = f"/dicomweb/studies/{stored.ds.StudyInstanceUID}/series/{stored.ds.SeriesInstanceUID}"
        series = parts(wado.client.get(series_path, headers={"Accept": AS_STORED}))
        expected = [s.data for s in (j2k, lossy) if s.ds.SeriesInstanceUID == stored.ds.SeriesInstanceUID]
        assert sorted(body for _, body in series) == sorted(expected)
    ct = wado.files["CT_small.dcm"]
    ((_, body),) = parts(
        wado.client.get(f"/dicomweb/studies/{ct.ds.StudyInstanceUID}", headers={"Accept": AS_STORED})
    )
    assert body == ct.data


def test_study_larger_than_one_read_batch_streams_every_part(wado: Wado, tmp_path: Path) -> None:
    """Parts are read a few MB per worker-thread trip: 12 instances of 512x512 cross that."""
    paths = generate_study(
        tmp_path / "big", seed=5, series=1, instances=12, patient_name="BIG^STUDY", patient_id="B1"
    )
    originals = [p.read_bytes() for p in paths]
    stow(wado.client, originals)
    study = dcmread(paths[0]).StudyInstanceUID
    response = wado.client.get(f"/dicomweb/studies/{study}", headers={"Accept": AS_STORED})
    assert int(response.headers["content-length"]) == len(response.content) > 12 * 512 * 512 * 2
    assert sorted(body for _, body in parts(response)) == sorted(originals)


def test_study_converted_on_the_way_streams_every_part(wado: Wado, tmp_path: Path) -> None:
    """Stored in another transfer syntax than asked for, a study larger than one read batch is
    converted part by part (sizes unknown up front, so no Content-Length)."""
    paths = generate_study(
        tmp_path / "implicit", seed=6, series=1, instances=12, patient_name="IMPLICIT^VR", patient_id="I1"
    )
    stored: dict[str, Dataset] = {}
    originals = []
    for path in paths:
        ds = dcmread(path)
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        buffer = io.BytesIO()
        ds.save_as(buffer, implicit_vr=True, little_endian=True, enforce_file_format=True)
        originals.append(buffer.getvalue())
        stored[ds.SOPInstanceUID] = ds
    stow(wado.client, originals)
    study = next(iter(stored.values())).StudyInstanceUID
    response = wado.client.get(f"/dicomweb/studies/{study}", headers={"Accept": DEFAULT_DICOM})
    assert response.status_code == 200 and "content-length" not in response.headers
    got = [(part_type, dcmread(io.BytesIO(body))) for part_type, body in parts(response)]
    assert len(got) == 12
    for part_type, ds in got:
        assert f"transfer-syntax={ExplicitVRLittleEndian}" in part_type
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert np.array_equal(ds.pixel_array, stored[ds.SOPInstanceUID].pixel_array)


@pytest.mark.parametrize("name", DECODABLE_COMPRESSED)
@pytest.mark.parametrize("accept", [DEFAULT_DICOM, f"{DEFAULT_DICOM}; transfer-syntax={EXPLICIT_LE}"])
def test_compressed_instance_decompressed_to_explicit_le(wado: Wado, name: str, accept: str) -> None:
    stored = wado.files[name]
    ((part_type, body),) = parts(wado.client.get(stored.path, headers={"Accept": accept}))
    assert f"transfer-syntax={EXPLICIT_LE}" in part_type
    got = dcmread(io.BytesIO(body))
    assert got.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert got.SOPInstanceUID == stored.ds.SOPInstanceUID
    assert str(got.PatientName) == str(stored.ds.PatientName)
    expected = dcmread(io.BytesIO(stored.data)).pixel_array
    assert np.array_equal(got.pixel_array, expected)


def test_single_part_default_is_explicit_le(wado: Wado) -> None:
    stored = wado.files["SC_rgb_rle_2frame.dcm"]
    response = wado.client.get(stored.path, headers={"Accept": "application/dicom"})
    assert response.status_code == 200
    got = dcmread(io.BytesIO(response.content))
    assert got.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert got.SOPInstanceUID == stored.ds.SOPInstanceUID
    assert np.array_equal(got.pixel_array, stored.ds.pixel_array)


def test_undecodable_instance_is_406_but_retrievable_as_stored(wado: Wado) -> None:
    stored = wado.files["JPEG-lossy.dcm"]  # 12-bit JPEG Extended that no installed decoder reads
    response = wado.client.get(stored.path, headers={"Accept": DEFAULT_DICOM})
    assert response.status_code == 406
    assert "transfer-syntax=*" in response.json()["error"]
    ((_, body),) = parts(wado.client.get(stored.path, headers={"Accept": AS_STORED}))
    assert body == stored.data


def dicomweb_client(server: Server) -> DICOMwebClient:
    session = requests.Session()
    session.trust_env = False
    session.verify = str(server.home.ca)
    session.headers["Authorization"] = f"Bearer {server.home.admin_key}"
    return DICOMwebClient(server.dicomweb, session=session)


def test_retrieve_with_dicomweb_client(wado: Wado) -> None:
    client = dicomweb_client(wado.server)
    stored = wado.files["multiframe"]
    (got,) = client.retrieve_study(stored.ds.StudyInstanceUID)
    assert got.SOPInstanceUID == stored.ds.SOPInstanceUID
    assert got.PixelData == stored.ds.PixelData
    size = stored.ds.Rows * stored.ds.Columns
    frames = client.retrieve_instance_frames(
        stored.ds.StudyInstanceUID,
        stored.ds.SeriesInstanceUID,
        stored.ds.SOPInstanceUID,
        frame_numbers=[2],
        media_types=(("application/octet-stream", "*"),),
    )
    assert frames == [stored.ds.PixelData[size : 2 * size]]
    rle = wado.files["SC_rgb_rle_2frame.dcm"]
    (instance,) = client.retrieve_series(
        rle.ds.StudyInstanceUID, rle.ds.SeriesInstanceUID, media_types=(("application/dicom", "*"),)
    )
    assert instance.SOPInstanceUID == rle.ds.SOPInstanceUID
    assert instance.PixelData == rle.ds.PixelData


def test_frames_with_dicomweb_client_defaults(wado: Wado) -> None:
    """dicomweb-client asks for frames with `multipart/related; type="*/*"` by default."""
    client = dicomweb_client(wado.server)
    stored = wado.files["multiframe"]
    size = stored.ds.Rows * stored.ds.Columns
    frames = client.retrieve_instance_frames(
        stored.ds.StudyInstanceUID, stored.ds.SeriesInstanceUID, stored.ds.SOPInstanceUID, frame_numbers=[2]
    )
    assert frames == [stored.ds.PixelData[size : 2 * size]]
    rle = wado.files["SC_rgb_rle_2frame.dcm"]
    frames = client.retrieve_instance_frames(
        rle.ds.StudyInstanceUID, rle.ds.SeriesInstanceUID, rle.ds.SOPInstanceUID, frame_numbers=[1]
    )
    assert frames == [next(generate_frames(rle.ds.PixelData, number_of_frames=2))]


# -- metadata and bulk data ------------------------------------------------------------------------


def test_metadata_at_each_level(wado: Wado) -> None:
    j2k, lossy = wado.files["JPEG2000.dcm"], wado.files["JPEG-lossy.dcm"]
    study = j2k.ds.StudyInstanceUID
    response = wado.client.get(f"/dicomweb/studies/{study}/metadata")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/dicom+json")
    items = response.json()
    assert sorted(i["00080018"]["Value"][0] for i in items) == sorted(
        [j2k.ds.SOPInstanceUID, lossy.ds.SOPInstanceUID]
    )
    series = wado.client.get(f"/dicomweb/studies/{study}/series/{j2k.ds.SeriesInstanceUID}/metadata").json()
    assert j2k.ds.SOPInstanceUID in [i["00080018"]["Value"][0] for i in series]
    (instance,) = wado.client.get(j2k.path + "/metadata").json()
    assert instance["0020000D"]["Value"] == [study]
    assert instance["00100010"]["Value"] == [{"Alphabetic": str(j2k.ds.PatientName)}]
    assert instance["00280010"]["Value"] == [j2k.ds.Rows]
    pixel = instance["7FE00010"]
    assert set(pixel) == {"vr", "BulkDataURI"}  # never inline


@pytest.mark.parametrize("name", ["CT_small.dcm", "SC_rgb_rle_2frame.dcm"])
def test_pixel_data_bulk_data_uri_is_absolute_and_retrievable(wado: Wado, name: str) -> None:
    stored = wado.files[name]
    (instance,) = wado.client.get(stored.path + "/metadata").json()
    uri = instance["7FE00010"]["BulkDataURI"]
    assert uri.startswith(f"{wado.server.dicomweb}{stored.path.removeprefix('/dicomweb')}/"), uri
    ((part_type, body),) = parts(wado.client.get(uri))
    assert part_type.startswith("application/octet-stream")
    assert body == stored.ds.PixelData


def test_bulkdata_route(wado: Wado) -> None:
    stored = wado.files["CT_small.dcm"]
    ((part_type, body),) = parts(wado.client.get(stored.path + "/bulkdata/7FE00010"))
    assert part_type == "application/octet-stream"
    assert body == stored.ds.PixelData
    assert wado.client.get(stored.path + "/bulkdata/00100010").status_code == 404  # not bulk data
    rle = wado.files["SC_rgb_rle_2frame.dcm"]
    ((_, encapsulated),) = parts(wado.client.get(rle.path + "/bulkdata/7FE00010"))
    assert encapsulated == rle.ds.PixelData
    assert wado.client.get(stored.path + "/bulkdata/7FE10010").status_code == 404


# -- frames ----------------------------------------------------------------------------------------


def test_rle_frames_as_stored(wado: Wado) -> None:
    stored = wado.files["SC_rgb_rle_2frame.dcm"]
    expected = list(generate_frames(stored.ds.PixelData, number_of_frames=2))
    got = parts(wado.client.get(stored.path + "/frames/1,2", headers={"Accept": FRAMES_AS_STORED}))
    assert [body for _, body in got] == expected
    assert all(t.startswith("image/dicom-rle") and "transfer-syntax=1.2.840.10008.1.2.5" in t for t, _ in got)
    reversed_ = parts(wado.client.get(stored.path + "/frames/2,1", headers={"Accept": FRAMES_AS_STORED}))
    assert [body for _, body in reversed_] == expected[::-1]
    ((_, second),) = parts(
        wado.client.get(
            stored.path + "/frames/2", headers={"Accept": 'multipart/related; type="image/dicom-rle"'}
        )
    )
    assert second == expected[1]


def test_rle_frames_uncompressed(wado: Wado) -> None:
    stored = wado.files["SC_rgb_rle_2frame.dcm"]
    pixels = dcmread(io.BytesIO(stored.data)).pixel_array  # (2, rows, cols, 3), interleaved
    got = parts(wado.client.get(stored.path + "/frames/2,1", headers={"Accept": FRAMES_UNCOMPRESSED}))
    assert [body for _, body in got] == [pixels[1].tobytes(), pixels[0].tobytes()]
    assert all(t == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}" for t, _ in got)


def test_j2k_frame_as_stored_and_uncompressed(wado: Wado) -> None:
    stored = wado.files["MR_small_jp2klossless.dcm"]
    ((part_type, body),) = parts(
        wado.client.get(stored.path + "/frames/1", headers={"Accept": 'multipart/related; type="image/jp2"'})
    )
    assert part_type.startswith("image/jp2")
    assert body == next(generate_frames(stored.ds.PixelData, number_of_frames=1))
    ((_, raw),) = parts(wado.client.get(stored.path + "/frames/1", headers={"Accept": FRAMES_UNCOMPRESSED}))
    assert (
        raw
        == dcmread(io.BytesIO(stored.data))
        .pixel_array.astype("<i2" if stored.ds.PixelRepresentation else "<u2")
        .tobytes()
    )


def test_native_frames(wado: Wado) -> None:
    stored = wado.files["multiframe"]
    size = stored.ds.Rows * stored.ds.Columns
    frames = [stored.ds.PixelData[i * size : (i + 1) * size] for i in range(3)]
    for accept in (FRAMES_UNCOMPRESSED, FRAMES_AS_STORED, None):
        headers = {"Accept": accept} if accept else {}
        got = parts(wado.client.get(stored.path + "/frames/3,1,2", headers=headers))
        assert [body for _, body in got] == [frames[2], frames[0], frames[1]]
    ct = wado.files["CT_small.dcm"]
    ((_, body),) = parts(wado.client.get(ct.path + "/frames/1"))
    assert body == ct.ds.PixelData


@pytest.mark.parametrize("frames", ["3", "1,3", "99"])
def test_unknown_frame_is_404(wado: Wado, frames: str) -> None:
    stored = wado.files["SC_rgb_rle_2frame.dcm"]
    assert wado.client.get(f"{stored.path}/frames/{frames}").status_code == 404


@pytest.mark.parametrize("frames", ["0", "a", "1,,2", "-1"])
def test_malformed_frame_list_is_400(wado: Wado, frames: str) -> None:
    stored = wado.files["SC_rgb_rle_2frame.dcm"]
    assert wado.client.get(f"{stored.path}/frames/{frames}").status_code == 400


def test_frames_of_instance_without_pixels_is_404(wado: Wado) -> None:
    stored = wado.files["test-SR.dcm"]
    assert wado.client.get(stored.path + "/frames/1").status_code == 404


# -- rendered and thumbnails -----------------------------------------------------------------------


def decode(response: httpx.Response, media_type: str) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == media_type
    image = Image.open(io.BytesIO(response.content))
    image.load()
    assert image.format == {"image/jpeg": "JPEG", "image/png": "PNG"}[media_type]
    return image


def test_rendered_jpeg_and_png(wado: Wado) -> None:
    ct = wado.files["CT_small.dcm"]
    jpeg = decode(wado.client.get(ct.path + "/rendered"), "image/jpeg")
    assert jpeg.size == (ct.ds.Columns, ct.ds.Rows)
    png = decode(wado.client.get(ct.path + "/rendered", headers={"Accept": "image/png"}), "image/png")
    assert png.size == (ct.ds.Columns, ct.ds.Rows)
    assert png.mode == "L"
    assert np.asarray(png).std() > 5  # an image, not a flat field
    rgb = decode(
        wado.client.get(
            wado.files["SC_rgb_rle_2frame.dcm"].path + "/rendered", headers={"Accept": "image/png"}
        ),
        "image/png",
    )
    assert rgb.mode == "RGB"
    preferred = wado.client.get(ct.path + "/rendered", headers={"Accept": "image/jpeg;q=0.2, image/png"})
    decode(preferred, "image/png")


def test_rendered_window_changes_output(wado: Wado) -> None:
    ct = wado.files["CT_small.dcm"]
    get = lambda window: np.asarray(  # noqa: E731
        decode(
            wado.client.get(
                ct.path + "/rendered", params={"window": window}, headers={"Accept": "image/png"}
            ),
            "image/png",
        )
    )
    narrow, wide = get("100,50"), get("1000,4000")
    assert narrow.shape == wide.shape
    assert not np.array_equal(narrow, wide)
    assert np.array_equal(get("100,50"), narrow)  # deterministic
    assert wado.client.get(ct.path + "/rendered", params={"window": "100,0"}).status_code == 400
    assert wado.client.get(ct.path + "/rendered", params={"window": "abc"}).status_code == 400


def test_rendered_viewport_and_quality(wado: Wado) -> None:
    ct = wado.files["CT_small.dcm"]  # 128 x 128
    assert decode(
        wado.client.get(ct.path + "/rendered", params={"viewport": "64,64"}), "image/jpeg"
    ).size == (64, 64)
    assert decode(
        wado.client.get(ct.path + "/rendered", params={"viewport": "64,32"}), "image/jpeg"
    ).size == (32, 32)
    assert decode(
        wado.client.get(ct.path + "/rendered", params={"viewport": "256,256"}), "image/jpeg"
    ).size == (256, 256)
    low = wado.client.get(ct.path + "/rendered", params={"quality": "5"})
    high = wado.client.get(ct.path + "/rendered", params={"quality": "100"})
    assert len(low.content) < len(high.content)
    for bad in ({"viewport": "0,10"}, {"viewport": "10"}, {"quality": "0"}, {"quality": "101"}):
        assert wado.client.get(ct.path + "/rendered", params=bad).status_code == 400


def test_rendered_frames_differ(wado: Wado) -> None:
    stored = wado.files["multiframe"]
    first = np.asarray(
        decode(
            wado.client.get(stored.path + "/frames/1/rendered", headers={"Accept": "image/png"}), "image/png"
        )
    )
    third = np.asarray(
        decode(
            wado.client.get(stored.path + "/frames/3/rendered", headers={"Accept": "image/png"}), "image/png"
        )
    )
    assert first.shape == third.shape == (stored.ds.Rows, stored.ds.Columns)
    assert not np.array_equal(first, third)
    assert wado.client.get(stored.path + "/frames/4/rendered").status_code == 404


def test_thumbnails(wado: Wado) -> None:
    ct = wado.files["CT_small.dcm"]
    study = f"/dicomweb/studies/{ct.ds.StudyInstanceUID}"
    series = f"{study}/series/{ct.ds.SeriesInstanceUID}"
    for path in (f"{study}/thumbnail", f"{series}/thumbnail", f"{ct.path}/thumbnail"):
        image = decode(wado.client.get(path), "image/jpeg")
        assert max(image.size) <= 128
        assert image.size == (128, 128)
    small = decode(
        wado.client.get(
            f"{ct.path}/thumbnail", params={"viewport": "32,32"}, headers={"Accept": "image/png"}
        ),
        "image/png",
    )
    assert small.size == (32, 32)
    rle = wado.files["SC_rgb_rle_2frame.dcm"]
    assert max(decode(wado.client.get(rle.path + "/thumbnail"), "image/jpeg").size) == 128


# -- errors ----------------------------------------------------------------------------------------


def test_unknown_resources_are_404(wado: Wado) -> None:
    ct = wado.files["CT_small.dcm"].ds
    study, series, sop = ct.StudyInstanceUID, ct.SeriesInstanceUID, ct.SOPInstanceUID
    unknown = generate_uid()
    paths = [
        f"/dicomweb/studies/{unknown}",
        f"/dicomweb/studies/{unknown}/metadata",
        f"/dicomweb/studies/{unknown}/thumbnail",
        f"/dicomweb/studies/{study}/series/{unknown}",
        f"/dicomweb/studies/{study}/series/{unknown}/metadata",
        f"/dicomweb/studies/{study}/series/{series}/instances/{unknown}",
        f"/dicomweb/studies/{study}/series/{series}/instances/{unknown}/metadata",
        f"/dicomweb/studies/{study}/series/{series}/instances/{unknown}/frames/1",
        f"/dicomweb/studies/{study}/series/{series}/instances/{unknown}/rendered",
        f"/dicomweb/studies/{unknown}/series/{series}/instances/{sop}",  # right instance, wrong study
        f"/dicomweb/studies/{study}/series/{unknown}/instances/{sop}",  # right instance, wrong series
    ]
    for path in paths:
        response = wado.client.get(path, headers={"Accept": AS_STORED} if path.count("/") <= 7 else {})
        assert response.status_code == 404, path
        assert "error" in response.json()


def test_unsupported_accept_is_406(wado: Wado) -> None:
    rle = wado.files["SC_rgb_rle_2frame.dcm"]
    study = f"/dicomweb/studies/{rle.ds.StudyInstanceUID}"
    cases = [
        (rle.path, "text/html"),
        (rle.path, 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'),
        (rle.path, 'multipart/related; type="application/dicom+xml"'),
        (study, "application/dicom"),  # single part is for one instance only
        (rle.path + "/frames/1", 'multipart/related; type="image/jpeg"'),
        (
            rle.path + "/frames/1",
            'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.4.50',
        ),
        (rle.path + "/rendered", "image/gif"),
        (rle.path + "/rendered", "image/png;q=0"),
    ]
    for path, accept in cases:
        response = wado.client.get(path, headers={"Accept": accept})
        assert response.status_code == 406, (path, accept, response.status_code)


# -- delete ----------------------------------------------------------------------------------------


def test_delete_instance_series_study(wado: Wado) -> None:
    client = wado.client
    study, s1, s2 = generate_uid(), generate_uid(), generate_uid()
    files = [small_instance(study, s1, 1), small_instance(study, s1, 2), small_instance(study, s2, 3)]
    stow(client, files)
    sops = [dcmread(io.BytesIO(f)).SOPInstanceUID for f in files]
    base = f"/dicomweb/studies/{study}"

    def qido_instances() -> set[str]:
        found = client.get(f"{base}/instances").json()
        return {i["00080018"]["Value"][0] for i in found}

    assert qido_instances() == set(sops)
    first = f"{base}/series/{s1}/instances/{sops[0]}"
    assert client.delete(first).status_code == 204
    assert client.get(first, headers={"Accept": AS_STORED}).status_code == 404
    assert client.get(first + "/metadata").status_code == 404
    assert client.get("/dicomweb/instances", params={"SOPInstanceUID": sops[0]}).json() == []
    assert qido_instances() == set(sops[1:])
    ((_, body),) = parts(client.get(f"{base}/series/{s1}", headers={"Accept": AS_STORED}))
    assert body == files[1]
    assert client.delete(first).status_code == 404

    assert client.delete(f"{base}/series/{s1}").status_code == 204
    assert client.get(f"{base}/series/{s1}", headers={"Accept": AS_STORED}).status_code == 404
    assert [s["0020000E"]["Value"][0] for s in client.get(f"{base}/series").json()] == [s2]
    assert qido_instances() == {sops[2]}
    (counts,) = client.get("/dicomweb/studies", params={"StudyInstanceUID": study}).json()
    assert counts["00201208"]["Value"] == [1]

    assert client.delete(base).status_code == 204
    assert client.get(base, headers={"Accept": AS_STORED}).status_code == 404
    assert client.get(f"{base}/metadata").status_code == 404
    assert client.get("/dicomweb/studies", params={"StudyInstanceUID": study}).json() == []
    assert client.get("/dicomweb/series", params={"SeriesInstanceUID": s2}).json() == []
    assert client.delete(base).status_code == 404
    # Other studies are untouched.
    ct = wado.files["CT_small.dcm"]
    ((_, body),) = parts(client.get(ct.path, headers={"Accept": AS_STORED}))
    assert body == ct.data


def test_deleted_instance_can_be_stored_again(wado: Wado) -> None:
    data, ds = native_multiframe(frames=1)
    stow(wado.client, [data])
    path = (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    )
    assert wado.client.delete(path).status_code == 204
    stow(wado.client, [data])
    ((_, body),) = parts(wado.client.get(path, headers={"Accept": AS_STORED}))
    assert body == data
