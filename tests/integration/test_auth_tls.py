"""Authentication, roles, security headers and the TLS policy of a real `medvault serve`."""

from __future__ import annotations

import io
import socket
import ssl
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from tests.conftest import Server, make_home, start_server

pytestmark = pytest.mark.integration

BOUNDARY = "auth-test-boundary-0b7f"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def make_instance() -> tuple[bytes, Dataset]:
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Auth^Test"
    ds.PatientID = "AUTH-1"
    ds.Modality = "OT"
    ds.Rows = 2
    ds.Columns = 2
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = b"\x00\x40\x80\xff"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), ds


def stow_body(data: bytes) -> bytes:
    return (
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def instance_path(ds: Dataset) -> str:
    return (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    )


def create_key(server: Server, name: str, role: str) -> str:
    result = server.home.cli("apikeys", "create", name, "--role", role)
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = make_home(Path(tmp_path_factory.mktemp("auth")) / "home")
    started = start_server(home)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def stored(server: Server) -> tuple[bytes, Dataset]:
    data, ds = make_instance()
    with server.client() as client:
        response = client.post(
            "/dicomweb/studies", content=stow_body(data), headers={"Content-Type": STOW_TYPE}
        )
    assert response.status_code == 200, response.text
    return data, ds


@pytest.fixture(scope="module")
def keys(server: Server) -> dict[str, str]:
    return {role: create_key(server, f"k-{role}", role) for role in ("viewer", "service")}


def anonymous(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.url, verify=server.ssl_context(), timeout=30)


# -- authentication --------------------------------------------------------------------------------


def test_healthz_needs_no_auth(server: Server) -> None:
    with anonymous(server) as client:
        response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Basic dXNlcjpwYXNz", "Bearer mvk_not-a-real-key", "mvk_no_scheme"],
)
def test_missing_or_bad_credentials_are_401(
    server: Server, stored: tuple[bytes, Dataset], authorization: str | None
) -> None:
    _, ds = stored
    headers = {"Authorization": authorization} if authorization is not None else {}
    new_data, new_ds = make_instance()
    with anonymous(server) as client:
        requests_ = [
            client.get("/dicomweb/studies", headers=headers),
            client.get(instance_path(ds), headers={**headers, "Accept": AS_STORED}),
            client.get(instance_path(ds) + "/metadata", headers=headers),
            client.post(
                "/dicomweb/studies",
                content=stow_body(new_data),
                headers={**headers, "Content-Type": STOW_TYPE},
            ),
            client.delete(instance_path(ds), headers=headers),
        ]
    for response in requests_:
        assert response.status_code == 401, (response.request.method, response.request.url)
        assert response.headers["www-authenticate"].lower().startswith("bearer")
        assert "Auth^Test" not in response.text
    with server.client() as admin:
        assert admin.get(instance_path(ds), headers={"Accept": AS_STORED}).status_code == 200  # not deleted
        assert admin.get("/dicomweb/instances", params={"SOPInstanceUID": new_ds.SOPInstanceUID}).json() == []


def test_admin_key_with_other_case_scheme(server: Server) -> None:
    with anonymous(server) as client:
        response = client.get(
            "/dicomweb/studies", headers={"Authorization": f"bearer {server.home.admin_key}"}
        )
    assert response.status_code == 200


def test_viewer_reads_but_cannot_store_or_delete(
    server: Server, stored: tuple[bytes, Dataset], keys: dict[str, str]
) -> None:
    data, ds = stored
    with server.client(keys["viewer"]) as viewer:
        studies = viewer.get("/dicomweb/studies", params={"StudyInstanceUID": ds.StudyInstanceUID})
        assert studies.status_code == 200
        assert len(studies.json()) == 1
        single = viewer.get(instance_path(ds), headers={"Accept": "application/dicom; transfer-syntax=*"})
        assert single.status_code == 200
        assert single.content == data
        assert viewer.get(instance_path(ds) + "/metadata").status_code == 200
        assert viewer.get(instance_path(ds) + "/rendered").status_code == 200
        new_data, new_ds = make_instance()
        store = viewer.post(
            "/dicomweb/studies", content=stow_body(new_data), headers={"Content-Type": STOW_TYPE}
        )
        assert store.status_code == 403
        assert viewer.delete(instance_path(ds)).status_code == 403
        assert viewer.delete(f"/dicomweb/studies/{ds.StudyInstanceUID}").status_code == 403
    with server.client() as admin:
        assert admin.get(instance_path(ds), headers={"Accept": AS_STORED}).status_code == 200
        assert admin.get("/dicomweb/instances", params={"SOPInstanceUID": new_ds.SOPInstanceUID}).json() == []


def test_service_stores_but_cannot_read_or_delete(
    server: Server, stored: tuple[bytes, Dataset], keys: dict[str, str]
) -> None:
    _, ds = stored
    new_data, new_ds = make_instance()
    with server.client(keys["service"]) as service:
        store = service.post(
            "/dicomweb/studies", content=stow_body(new_data), headers={"Content-Type": STOW_TYPE}
        )
        assert store.status_code == 200, store.text
        assert service.get("/dicomweb/studies").status_code == 403
        assert service.get(instance_path(ds), headers={"Accept": AS_STORED}).status_code == 403
        assert service.get(instance_path(ds) + "/metadata").status_code == 403
        assert service.get(instance_path(ds) + "/frames/1").status_code == 403
        assert service.delete(instance_path(new_ds)).status_code == 403
    with server.client() as admin:
        response = admin.get(
            instance_path(new_ds), headers={"Accept": "application/dicom; transfer-syntax=*"}
        )
        assert response.status_code == 200
        assert response.content == new_data


def test_revoked_key_is_refused_at_once(server: Server, stored: tuple[bytes, Dataset]) -> None:
    key = create_key(server, "to-revoke", "viewer")
    with server.client(key) as client:
        assert client.get("/dicomweb/studies").status_code == 200
        server.home.cli("apikeys", "revoke", "to-revoke")
        response = client.get("/dicomweb/studies")
        assert response.status_code == 401
        assert response.headers["www-authenticate"].lower().startswith("bearer")
    other = create_key(server, "still-valid", "viewer")
    with server.client(other) as client:
        assert client.get("/dicomweb/studies").status_code == 200


# -- security headers ------------------------------------------------------------------------------


def test_security_headers_on_every_response(server: Server, stored: tuple[bytes, Dataset]) -> None:
    _, ds = stored
    with server.client() as admin, anonymous(server) as anon:
        responses = [
            anon.get("/healthz"),
            anon.get("/dicomweb/studies"),  # 401
            admin.get("/dicomweb/studies"),
            admin.get(instance_path(ds), headers={"Accept": AS_STORED}),
            admin.get(f"/dicomweb/studies/{generate_uid()}"),  # 404
            admin.get("/dicomweb/studies", params={"NoSuchAttribute": "1"}),  # 400
        ]
    for response in responses:
        headers = response.headers
        assert headers["strict-transport-security"].startswith("max-age=")
        assert int(headers["strict-transport-security"].split("=")[1].split(";")[0]) >= 31536000
        assert headers["x-content-type-options"] == "nosniff"
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert "no-store" in headers["cache-control"]


# -- TLS -------------------------------------------------------------------------------------------


def handshake(
    server: Server, context: ssl.SSLContext, hostname: str = "127.0.0.1"
) -> tuple[str | None, str | None]:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        with context.wrap_socket(sock, server_hostname=hostname) as tls:
            cipher = tls.cipher()
            return tls.version(), cipher[0] if cipher else None


def test_tls13_by_default(server: Server) -> None:
    assert handshake(server, server.ssl_context())[0] == "TLSv1.3"


def test_tls11_client_is_refused(server: Server) -> None:
    context = server.ssl_context()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is deprecated: the point here
        context.minimum_version = ssl.TLSVersion.TLSv1_1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    try:
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client really offer TLS 1.1
    except ssl.SSLError:
        pass
    with pytest.raises((ssl.SSLError, ConnectionResetError)) as refused:
        handshake(server, context)
    # The server refused it: the client did not fail locally before sending its hello.
    assert getattr(refused.value, "reason", None) not in ("NO_PROTOCOLS_AVAILABLE", "NO_CIPHERS_AVAILABLE")
    assert handshake(server, server.ssl_context())[0] == "TLSv1.3"  # still serving


def test_tls12_aead_client_is_accepted(server: Server) -> None:
    context = server.ssl_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    version, cipher = handshake(server, context)
    assert version == "TLSv1.2"
    assert cipher is not None and ("GCM" in cipher or "CHACHA20" in cipher)
    assert cipher.startswith("ECDHE")


def test_tls12_cbc_only_client_is_refused(server: Server) -> None:
    context = server.ssl_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(
        "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384:"
        "ECDHE-RSA-AES128-SHA:ECDHE-RSA-AES256-SHA:AES128-SHA:AES256-SHA:AES128-SHA256"
    )
    offered = [c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert offered and not any("GCM" in name or "CHACHA" in name for name in offered)
    with pytest.raises(ssl.SSLError) as refused:
        handshake(server, context)
    assert refused.value.reason not in ("NO_PROTOCOLS_AVAILABLE", "NO_CIPHERS_AVAILABLE")


def test_plain_http_fails(server: Server) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5)
    with httpx.Client(base_url=server.url, verify=server.ssl_context()) as client:
        assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("hostname", ["127.0.0.1", "localhost"])
def test_certificate_verifies_for_loopback_names(server: Server, hostname: str) -> None:
    context = ssl.create_default_context(cafile=str(server.home.ca))
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert handshake(server, context, hostname)[0] is not None
    response = httpx.get(f"https://{hostname}:{server.port}/healthz", verify=context, timeout=10)
    assert response.status_code == 200


def test_certificate_does_not_verify_for_other_names_or_without_ca(server: Server) -> None:
    context = ssl.create_default_context(cafile=str(server.home.ca))
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server, context, "medvault.example.org")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server, ssl.create_default_context(), "127.0.0.1")
