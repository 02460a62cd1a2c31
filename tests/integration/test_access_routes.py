"""Access control over every route of a real `medvault serve` (issue #3, "Tests").

* Every route of the app, enumerated from ``create_app(...).routes`` (so a route added later is
  covered without editing this file): unauthenticated -> 401 with ``WWW-Authenticate: Bearer``;
  authenticated without the route's permission -> 403; out of scope -> exactly the answer for a
  study that does not exist. Only the sign-in routes and /healthz are public.
* A role x action matrix: each built-in role, a representative route per action, allowed exactly
  when :data:`medvault.access.policy.ROLE_PERMISSIONS` says so.

The helpers at the top (people, sign-in, instances) are shared by test_access_scopes.py and
test_access_sessions.py.
"""

from __future__ import annotations

import io
import re
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import pyotp
import pytest
from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from medvault.access.policy import ROLE_PERMISSIONS, ROLES, Action
from medvault.api.admin import grant_value, referring_identity
from medvault.api.app import create_app
from medvault.home import OpenHome, open_home
from tests.conftest import Home, Server, make_home, start_server

pytestmark = pytest.mark.integration

# -- shared helpers --------------------------------------------------------------------------------

BOUNDARY = "access-test-boundary-5c1d"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
AS_STORED = "application/dicom; transfer-syntax=*"
TRAINED = date(2030, 1, 1)
STEP = 30


def make_instance(
    *,
    patient_id: str = "ACCESS-1",
    patient_name: str = "Access^Test",
    study_uid: str | None = None,
    series_uid: str | None = None,
    referring: str | None = None,
    department: str | None = None,
    instance_number: int = 1,
) -> tuple[bytes, Dataset]:
    """A small secondary-capture image (2x2, 8 bit) as Part 10 bytes."""
    ds = Dataset()
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.StudyDate = "20240101"
    ds.Modality = "OT"
    ds.InstanceNumber = instance_number
    if referring is not None:
        ds.ReferringPhysicianName = referring
    if department is not None:
        ds.InstitutionalDepartmentName = department
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


def stow_body(*datas: bytes) -> bytes:
    parts = b"".join(
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n" for data in datas
    )
    return parts + f"--{BOUNDARY}--\r\n".encode()


def stow(client: httpx.Client, *datas: bytes) -> httpx.Response:
    return client.post("/dicomweb/studies", content=stow_body(*datas), headers={"Content-Type": STOW_TYPE})


def store(server: Server, *datas: bytes) -> None:
    """Store with the home's archivist key; the test fails if any instance is refused."""
    with server.client() as client:
        response = stow(client, *datas)
    assert response.status_code == 200, response.text


def instance_path(ds: Dataset) -> str:
    return (
        f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    )


def anonymous(server: Server, *, source: str | None = None) -> httpx.Client:
    """A client without credentials. ``source`` (a loopback address such as 127.0.0.23) gives the
    requests their own client address, so lockout counters of different tests stay apart."""
    context = server.ssl_context()
    transport = httpx.HTTPTransport(verify=context, local_address=source) if source else None
    return httpx.Client(base_url=server.url, verify=context, transport=transport, timeout=60)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Person:
    """A user account as its owner knows it: password, TOTP secret, recovery codes."""

    name: str
    password: str
    secret: str
    recovery_codes: list[str] = field(default_factory=list)
    last_step: int = -(10**9)

    def otp(self) -> str:
        """The next TOTP code the server will accept: codes are accepted once each, for the
        current 30-second step or one either side, so take the next unused step (waiting when the
        window is used up)."""
        while True:
            current = int(time.time()) // STEP
            step = max(current, self.last_step + 1)
            if step <= current + 1:
                break
            time.sleep(step * STEP - STEP - time.time() + 0.05)
        self.last_step = step
        return pyotp.TOTP(self.secret, interval=STEP).at(step * STEP)

    def current_otp(self) -> str:
        """The code for the current step (whether or not it was used already)."""
        return pyotp.TOTP(self.secret, interval=STEP).now()


def add_person(
    opened: OpenHome,
    name: str,
    roles: Iterable[str],
    *,
    training: date | None = TRAINED,
    grants: Iterable[tuple[str, str]] = (),
    referring: str | None = None,
) -> Person:
    """Add a user directly in the store (as `medvault users add` + `users grant` do), with grants
    given as the CLI takes them (patient by PatientID, department by name, study by UID, site *)."""
    now = datetime.now(UTC)
    created = opened.users.add_user(name, roles=list(roles), now=now, training_expires=training)
    for kind, value in grants:
        opened.users.grant(
            name,
            kind=kind,  # type: ignore[arg-type]
            value=grant_value(opened.archive.index, kind, value),
            now=now,
        )
    if referring is not None:
        opened.users.set_referring_id(name, referring_identity(opened.archive.index, referring))
    assert created.password is not None and created.enrolment is not None
    return Person(name, created.password, created.enrolment.secret, list(created.enrolment.recovery_codes))


def person_from_cli(name: str, output: str) -> Person:
    """Parse what `medvault users add` prints once: one-time password, otpauth URI, recovery codes."""
    password = re.search(r"one-time password[^:]*:\s*(\S+)", output)
    secret = re.search(r"[?&]secret=([A-Z2-7]+)", output)
    codes = re.findall(r"^\s+([a-z2-9]{4}-[a-z2-9]{4}-[a-z2-9]{4}-[a-z2-9]{4})\s*$", output, re.M)
    assert password and secret and len(codes) == 10, output
    return Person(name, password.group(1), secret.group(1), codes)


def change_password(client: httpx.Client, person: Person) -> None:
    """Leave the one-time password behind (POST /auth/password), as every new user must."""
    new = "pw-" + secrets.token_urlsafe(18)
    response = client.post(
        "/auth/password",
        data={
            "username": person.name,
            "old_password": person.password,
            "new_password": new,
            "otp": person.otp(),
        },
    )
    assert response.status_code == 204, response.text
    person.password = new


def token_request(client: httpx.Client, person: Person, otp: str | None = None) -> httpx.Response:
    return client.post(
        "/auth/token",
        data={
            "grant_type": "password",
            "username": person.name,
            "password": person.password,
            "otp": person.otp() if otp is None else otp,
        },
    )


def sign_in(client: httpx.Client, person: Person) -> dict[str, Any]:
    response = token_request(client, person)
    assert response.status_code == 200, response.text
    pair: dict[str, Any] = response.json()
    assert pair["access_token"].startswith("mva_") and pair["refresh_token"].startswith("mvr_")
    return pair


def activate(server: Server, *people: Person) -> dict[str, str]:
    """Change each one-time password, sign in; the access tokens by user name."""
    tokens = {}
    with anonymous(server) as client:
        for person in people:
            change_password(client, person)
            tokens[person.name] = sign_in(client, person)["access_token"]
    return tokens


def quiet_home(root: Path) -> Home:
    """A test home served by one worker (2 CPU cores are shared with other test runs)."""
    home = make_home(root)
    home.set_config("server", "workers", "1")
    return home


# -- this module's archive -------------------------------------------------------------------------

#: People sign in with tokens; every other built-in role (viewer, service, archivist, the DICOM
#: node roles...) is exercised through an API key.
HUMAN_ROLES = ("admin", "radiologist", "technologist", "referring_physician", "researcher", "auditor")
KEY_ROLES = tuple(r for r in ROLES if r not in HUMAN_ROLES)
assert {"viewer", "service", "archivist"} <= set(KEY_ROLES) and set(HUMAN_ROLES) <= set(ROLES)

PUBLIC = {("GET", "/healthz"), ("POST", "/auth/token"), ("POST", "/auth/session"), ("POST", "/auth/password")}
#: Routes any signed-in subject may use (no permission beyond being someone).
SIGNED_IN_ONLY = {("POST", "/auth/logout"), ("GET", "/api/openapi.json")}  # the API description (also docs/)
SIGNED_IN_ONLY |= {("GET", "/api/training/me")}  # one's own training records


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # the full path template, e.g. /dicomweb/studies/{study}
    dependant: Dependant


def app_endpoints(app: FastAPI) -> list[Endpoint]:
    """Every (method, path) the app serves. FastAPI >= 0.16x keeps included routers lazily in
    ``app.routes``; ``iter_route_contexts`` flattens them with their effective paths."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: app.routes is already flat
        contexts: list[Any] = list(app.routes)
    else:
        contexts = list(iter_route_contexts(app.routes))
    out = []
    for context in contexts:
        original = getattr(context, "original_route", context)
        dependant = getattr(context, "dependant", None) or getattr(original, "dependant", None)
        methods = getattr(context, "methods", None)
        # Anything that is not a plain HTTP route (a mount, a websocket) is new: look at it.
        assert dependant is not None and methods, f"unexpected route {context!r}"
        for method in sorted(methods - {"HEAD", "OPTIONS"}):
            out.append(Endpoint(method, str(context.path), dependant))
    return out


@dataclass
class World:
    server: Server
    endpoints: list[Endpoint]
    ds: Dataset  # the stored instance whose UIDs fill the path parameters
    tokens: dict[str, str]  # role -> user access token (site grant, current training)
    keys: dict[str, str]  # role -> API key
    nobody_key: str  # an API key whose role is unknown to the policy: no permission at all
    fresh_token: str  # a user still on the one-time password
    out_of_scope: dict[str, str]  # role -> token of a user with that role and no grants


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = quiet_home(Path(tmp_path_factory.mktemp("access-routes")) / "home")
    opened = open_home(home.root, home.passphrase)
    try:
        app = create_app(
            opened.archive,
            api_keys=opened.api_keys,
            users=opened.users,
            guard=opened.guard,
            server=opened.settings.server,
            oidc=opened.oidc,
        )
        endpoints = app_endpoints(app)
        people = {
            role: add_person(opened, f"m-{role.replace('_', '-')}", [role], grants=[("site", "*")])
            for role in HUMAN_ROLES
        }
        scopeless = {
            role: add_person(opened, f"noscope-{role}", [role]) for role in ("radiologist", "archivist")
        }
        fresh = add_person(opened, "fresh", ["archivist"], grants=[("site", "*")])
        keys = {
            role: opened.api_keys.create("key-" + role.replace(".", "-"), role=role) for role in KEY_ROLES
        }
        nobody_key = opened.api_keys.create("key-nobody", role="no-such-role")
    finally:
        opened.close()
    server = start_server(home)
    try:
        data, ds = make_instance()
        store(server, data)
        tokens = activate(server, *people.values(), *scopeless.values())
        with anonymous(server) as client:
            fresh_token = sign_in(client, fresh)["access_token"]
        yield World(
            server=server,
            endpoints=endpoints,
            ds=ds,
            tokens={role: tokens[p.name] for role, p in people.items()},
            keys=keys,
            nobody_key=nobody_key,
            fresh_token=fresh_token,
            out_of_scope={role: tokens[p.name] for role, p in scopeless.items()},
        )
    finally:
        server.stop()


def required_actions(dependant: Dependant) -> set[Action]:
    """The actions a route's dependencies ask the policy for (``require(action)`` closures)."""
    found: set[Action] = set()
    for sub in dependant.dependencies:
        for cell in getattr(sub.call, "__closure__", None) or ():
            if isinstance(cell.cell_contents, Action):
                found.add(cell.cell_contents)
        found |= required_actions(sub)
    return found


def fill_path(path: str, ds: Dataset, *, missing: bool = False) -> str:
    """The route's path with its parameters filled from a stored instance (or, with ``missing``,
    from UIDs that exist nowhere)."""
    values = {
        "study": generate_uid() if missing else ds.StudyInstanceUID,
        "series": generate_uid() if missing else ds.SeriesInstanceUID,
        "sop": generate_uid() if missing else ds.SOPInstanceUID,
        "frames": "1",
        "frame": "1",
        "tag_path": "7FE00010",
        "name": "m-radiologist",
        "index": "0",
    }

    def value(match: re.Match[str]) -> str:
        return values.get(match.group(1), "x")

    return re.sub(r"{([a-zA-Z_]+)(?::[a-z]+)?}", value, path)


def _required(param: Any) -> bool:
    required = getattr(param, "required", None)
    return bool(param.field_info.is_required() if required is None else required)


def query_of(dependant: Dependant) -> dict[str, str]:
    """Required query parameters (of the route and its dependencies), filled with a harmless value."""
    out = {p.alias: "0" for p in dependant.query_params if _required(p)}
    for sub in dependant.dependencies:
        out.update(query_of(sub))
    return out


def call(
    client: httpx.Client, endpoint: Endpoint, ds: Dataset, headers: dict[str, str] | None = None
) -> httpx.Response:
    return client.request(
        endpoint.method,
        fill_path(endpoint.path, ds),
        params=query_of(endpoint.dependant),
        headers=headers or {},
        content=b"" if endpoint.method in ("POST", "PUT") else None,
    )


# -- every route -----------------------------------------------------------------------------------


def test_route_enumeration_covers_the_known_surface(world: World) -> None:
    """The walk below is only as good as the enumeration: it must see the whole API."""
    seen = {(e.method, e.path) for e in world.endpoints}
    for expected in [
        ("GET", "/healthz"),
        ("POST", "/dicomweb/studies"),
        ("GET", "/dicomweb/studies"),
        ("GET", "/dicomweb/studies/{study}/series/{series}/instances/{sop}/frames/{frames}"),
        ("DELETE", "/dicomweb/studies/{study}"),
        ("GET", "/api/users"),
        ("POST", "/api/breakglass"),
        ("GET", "/api/breakglass"),
        ("GET", "/ledger/checkpoint"),
        ("POST", "/auth/logout"),
    ]:
        assert expected in seen
    assert len(seen) == len(world.endpoints) >= 45
    assert PUBLIC | SIGNED_IN_ONLY <= seen


def test_every_route_has_a_permission_or_is_explicitly_public(world: World) -> None:
    """A route added without `require(action)` fails here until it is listed as public."""
    unguarded = [
        (e.method, e.path)
        for e in world.endpoints
        if not required_actions(e.dependant) and (e.method, e.path) not in PUBLIC | SIGNED_IN_ONLY
    ]
    assert unguarded == []


def test_unauthenticated_requests_get_401_with_a_bearer_challenge(world: World) -> None:
    wrong = []
    with anonymous(world.server) as client:
        for e in world.endpoints:
            if (e.method, e.path) in PUBLIC:
                continue
            for headers in ({}, {"Authorization": "Bearer mvk_unknown-key"}, {"Authorization": "Basic eDp5"}):
                response = call(client, e, world.ds, headers)
                challenge = response.headers.get("www-authenticate", "")
                if response.status_code != 401 or not challenge.lower().startswith("bearer"):
                    wrong.append((e.method, e.path, headers, response.status_code, challenge))
    assert wrong == []


def test_public_routes_answer_without_credentials(world: World) -> None:
    with anonymous(world.server) as client:
        assert client.get("/healthz").status_code == 200
        # The sign-in routes are reachable (they refuse a bad form, not the caller).
        for path in ("/auth/token", "/auth/session", "/auth/password"):
            response = client.post(path, data={})
            assert response.status_code == 400, (path, response.text)
            assert "www-authenticate" not in response.headers


def test_a_subject_without_any_permission_gets_403_everywhere(world: World) -> None:
    """An API key whose role grants nothing is authenticated, yet refused on every route."""
    wrong = []
    with anonymous(world.server) as client:
        for e in world.endpoints:
            if (e.method, e.path) in PUBLIC | SIGNED_IN_ONLY:
                continue
            response = call(client, e, world.ds, bearer(world.nobody_key))
            if response.status_code != 403 or "www-authenticate" in response.headers:
                wrong.append((e.method, e.path, response.status_code))
    assert wrong == []


def test_a_user_on_the_one_time_password_gets_403_everywhere(world: World) -> None:
    wrong = []
    with anonymous(world.server) as client:
        for e in world.endpoints:
            if (e.method, e.path) in PUBLIC | SIGNED_IN_ONLY:
                continue
            response = call(client, e, world.ds, bearer(world.fresh_token))
            if response.status_code != 403 or "one-time password" not in response.json().get("error", ""):
                wrong.append((e.method, e.path, response.status_code))
    assert wrong == []


def principals(world: World) -> dict[str, tuple[str, frozenset[Action]]]:
    """label -> (credential, the actions its role grants)."""
    out = {f"user:{role}": (token, ROLE_PERMISSIONS[role]) for role, token in world.tokens.items()}
    out.update({f"key:{role}": (key, ROLE_PERMISSIONS[role]) for role, key in world.keys.items()})
    return out


def test_every_route_refuses_each_role_lacking_its_permission(world: World) -> None:
    """For each route, every built-in role that does not grant the route's action gets 403 (e.g. an
    auditor or a service key on reads, a viewer key on store, delete and administration)."""
    wrong = []
    checked = 0
    with anonymous(world.server) as client:
        for e in world.endpoints:
            actions = required_actions(e.dependant)
            if not actions:
                continue
            for label, (credential, granted) in principals(world).items():
                if actions <= granted:
                    continue
                checked += 1
                response = call(client, e, world.ds, bearer(credential))
                if response.status_code != 403:
                    wrong.append((label, e.method, e.path, response.status_code))
    assert wrong == []
    assert checked > 200


def test_out_of_scope_study_routes_answer_as_for_a_missing_study(world: World) -> None:
    """A user whose role allows the action but who holds no grant gets, on every route that names
    a study, exactly the answer for a study that does not exist (404, or an empty QIDO result);
    a site-wide user gets the real thing on the same path."""
    study_routes = [e for e in world.endpoints if "{study}" in e.path and e.method in ("GET", "DELETE")]
    assert len(study_routes) >= 19
    wrong: list[tuple[Any, ...]] = []
    with anonymous(world.server) as client:
        for e in study_routes:
            token = world.out_of_scope["archivist" if e.method == "DELETE" else "radiologist"]
            real = client.request(e.method, fill_path(e.path, world.ds), headers=bearer(token))
            missing = client.request(
                e.method, fill_path(e.path, world.ds, missing=True), headers=bearer(token)
            )
            if (real.status_code, real.content) != (missing.status_code, missing.content):
                wrong.append((e.method, e.path, real.status_code, real.text, missing.status_code))
            elif real.status_code == 404:
                assert real.json() == {"error": "no such study"}, e.path
            elif not (real.status_code == 200 and real.json() == []):
                wrong.append((e.method, e.path, real.status_code, real.text))
            if e.method == "GET":
                path = fill_path(e.path, world.ds)
                visible = client.get(path, headers=bearer(world.tokens["radiologist"]))
                if visible.status_code != 200 or visible.content in (b"", b"[]"):
                    wrong.append(("site-wide", e.method, e.path, visible.status_code))
    assert wrong == []
    with world.server.client() as archivist:  # the refused deletes deleted nothing
        response = archivist.get(instance_path(world.ds), headers={"Accept": AS_STORED})
        assert response.status_code == 200


# -- role x action ---------------------------------------------------------------------------------


def credential_of(world: World, role: str) -> str:
    return world.tokens[role] if role in world.tokens else world.keys[role]


@pytest.mark.parametrize("role", ROLES)
def test_role_action_matrix(world: World, role: str) -> None:
    """Each role may do exactly what ROLE_PERMISSIONS grants it, through the real routes."""
    granted = ROLE_PERMISSIONS[role]
    ds = world.ds
    victim_data, victim = make_instance(patient_id=f"VICTIM-{role}")
    store(world.server, victim_data)
    new_data, new = make_instance(patient_id=f"NEW-{role}")

    with anonymous(world.server) as client:
        client.headers.update(bearer(credential_of(world, role)))
        answers: dict[Action, list[tuple[str, httpx.Response, int]]] = {
            Action.STUDY_READ: [
                ("QIDO /studies", client.get("/dicomweb/studies"), 200),
                ("WADO instance", client.get(instance_path(ds), headers={"Accept": AS_STORED}), 200),
                ("WADO metadata", client.get(f"/dicomweb/studies/{ds.StudyInstanceUID}/metadata"), 200),
            ],
            Action.STUDY_STORE: [("STOW", stow(client, new_data), 200)],
            Action.STUDY_DELETE: [
                ("DELETE study", client.delete(f"/dicomweb/studies/{victim.StudyInstanceUID}"), 204)
            ],
            Action.USERS_MANAGE: [
                ("GET /api/users", client.get("/api/users"), 200),
                ("GET /api/apikeys", client.get("/api/apikeys"), 200),
            ],
            Action.BREAKGLASS_REVIEW: [("GET /api/breakglass", client.get("/api/breakglass"), 200)],
            Action.LEDGER_READ: [("GET /ledger/checkpoint", client.get("/ledger/checkpoint"), 200)],
            Action.TRAINING_READ: [("GET /api/training", client.get("/api/training"), 200)],
        }
    wrong = []
    for action, results in answers.items():
        for label, response, ok in results:
            expected = ok if action in granted else 403
            if response.status_code != expected:
                wrong.append((label, expected, response.status_code, response.text[:200]))
    assert wrong == [], f"role {role}: {wrong}"

    with world.server.client() as archivist:
        victim_left = archivist.get(f"/dicomweb/studies/{victim.StudyInstanceUID}/metadata")
        new_stored = archivist.get("/dicomweb/instances", params={"SOPInstanceUID": new.SOPInstanceUID})
    assert victim_left.status_code == (404 if Action.STUDY_DELETE in granted else 200)
    assert len(new_stored.json()) == (1 if Action.STUDY_STORE in granted else 0)


@pytest.mark.parametrize("role", ROLES)
def test_role_may_open_break_glass_exactly_when_granted(world: World, role: str) -> None:
    """POST /api/breakglass (with a study and a proper reason): 201 for the roles granting
    breakglass.use (radiologist, referring physician), 403 for every other role."""
    with anonymous(world.server) as client:
        response = client.post(
            "/api/breakglass",
            data={"study_uid": world.ds.StudyInstanceUID, "reason": f"matrix test for role {role}"},
            headers=bearer(credential_of(world, role)),
        )
    expected = 201 if Action.BREAKGLASS_USE in ROLE_PERMISSIONS[role] else 403
    assert response.status_code == expected, response.text
