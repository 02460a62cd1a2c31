"""The server starts over HTTPS with its own CA and answers DICOMweb with a real client."""

from __future__ import annotations

from io import BytesIO

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.data import get_testdata_file

from tests.conftest import Server


def dicomweb_client(server: Server, key: str | None = None) -> DICOMwebClient:
    session = requests.Session()
    session.trust_env = False  # else REQUESTS_CA_BUNDLE in the environment overrides `verify`
    session.verify = str(server.home.ca)
    session.headers["Authorization"] = f"Bearer {key or server.home.admin_key}"
    return DICOMwebClient(server.dicomweb, session=session)


def test_store_search_retrieve_with_dicomweb_client(server: Server) -> None:
    client = dicomweb_client(server)
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    response = client.store_instances([ds])
    assert response.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    studies = client.search_for_studies(search_filters={"PatientID": ds.PatientID})
    assert [s["0020000D"]["Value"][0] for s in studies] == [ds.StudyInstanceUID]
    got = client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert got.PixelData == ds.PixelData
    assert str(got.PatientName) == str(ds.PatientName)


def test_rt_files_round_trip_byte_exact(server: Server) -> None:
    """RT dose (multi-frame, native) and RT plan from pydicom: stored and returned exactly as sent,
    even though their file meta names another SOP instance (the data set decides)."""
    for name in ("rtdose.dcm", "rtplan.dcm"):
        path = get_testdata_file(name, download=False)
        assert path is not None
        with open(path, "rb") as fh:
            original = fh.read()
        ds = dcmread(BytesIO(original))
        assert ds.file_meta.MediaStorageSOPInstanceUID != ds.SOPInstanceUID
        body = b"--x\r\nContent-Type: application/dicom\r\n\r\n" + original + b"\r\n--x--\r\n"
        with server.client() as http:
            stored = http.post(
                "/dicomweb/studies",
                content=body,
                headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=x'},
            )
            assert stored.status_code == 200, stored.text
            response = http.get(
                f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}",
                headers={"Accept": "application/dicom; transfer-syntax=*"},
            )
        assert response.status_code == 200
        assert response.content == original
