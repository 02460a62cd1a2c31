"""Sign-in, sessions and tokens over a real `medvault serve` (issue #3, "Tests"): TOTP and recovery
codes, lockout, no user enumeration, refresh rotation, revocation (logout, password change,
`users disable`, API keys), the web console's cookie session with CSRF, security headers, and
OIDC bearer JWTs.

Lockout counts failures per account name *and* per client address, and a success does not wash
an address clean. Tests that fail sign-ins on purpose therefore send them from their own loopback
address (127.0.0.x), so they cannot lock each other out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pyotp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from pydicom.dataset import Dataset

from medvault.api.auth import csrf_token_for
from medvault.home import open_home
from tests.conftest import Home, Server, start_server
from tests.integration.test_access_routes import (
    STEP,
    Person,
    add_person,
    anonymous,
    bearer,
    change_password,
    instance_path,
    make_instance,
    quiet_home,
    sign_in,
    store,
    token_request,
)

pytestmark = pytest.mark.integration

ISSUER = "https://idp.example.test/realms/hospital"
AUDIENCE = "medvault"
KID = "idp-key-1"
BAD_CREDENTIALS = {"error": "the user name, password or one-time code is wrong"}
SESSION_COOKIE, CSRF_COOKIE = "medvault_session", "medvault_csrf"


@dataclass
class World:
    server: Server
    people: dict[str, Person]
    ds: Dataset  # a stored instance
    api_key: str  # a viewer key, to be revoked
    idp_key: rsa.RSAPrivateKey


def configure_oidc(home: Home, public_key: rsa.RSAPublicKey) -> None:
    """[oidc] with a JWKS file in the home (an air-gapped site's setup)."""
    jwk = json.loads(RSAAlgorithm.to_jwk(public_key))
    jwk.update({"kid": KID, "use": "sig", "alg": "RS256"})
    (home.root / "idp-jwks.json").write_text(json.dumps({"keys": [jwk]}))
    home.set_config("oidc", "issuer", json.dumps(ISSUER))
    home.set_config("oidc", "audience", json.dumps(AUDIENCE))
    home.set_config("oidc", "role_map", '["pacs-radiologists=radiologist", "pacs-audit=auditor"]')
    home.set_config("oidc", "jwks_file", '"idp-jwks.json"')  # the default file names every key


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = quiet_home(Path(tmp_path_factory.mktemp("access-sessions")) / "home")
    idp_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    configure_oidc(home, idp_key.public_key())
    names = ["totp", "lock", "enum", "refresh", "logout", "pwchange", "disable", "cookie", "headers"]
    opened = open_home(home.root, home.passphrase)
    try:
        people = {n: add_person(opened, f"sess-{n}", ["archivist"], grants=[("site", "*")]) for n in names}
        # The local account behind an OIDC identity: training and scope (roles come from the IdP).
        opened.users.add_user(
            "oidc-rad",
            roles=["viewer"],
            now=datetime.now(UTC),
            training_expires=date(2030, 1, 1),
            external=True,
        )
        opened.users.grant("oidc-rad", kind="site", value="*", now=datetime.now(UTC))
        api_key = opened.api_keys.create("sess-viewer", role="viewer")
    finally:
        opened.close()
    server = start_server(home)
    try:
        data, ds = make_instance(patient_id="SESSIONS-1")
        store(server, data)
        with anonymous(server) as client:
            for person in people.values():
                change_password(client, person)
        yield World(server, people, ds, api_key, idp_key)
    finally:
        server.stop()


def from_address(world: World, last_octet: int) -> httpx.Client:
    return anonymous(world.server, source=f"127.0.0.{last_octet}")


def far_code(person: Person) -> str:
    """A well-formed TOTP code outside the accepted window."""
    return pyotp.TOTP(person.secret, interval=STEP).at(time.time() + 10 * STEP)


def studies(client: httpx.Client, token: str) -> httpx.Response:
    return client.get("/dicomweb/studies", headers=bearer(token))


# -- password + second factor ----------------------------------------------------------------------


def test_password_grant_requires_the_totp_code(world: World) -> None:
    person = world.people["totp"]
    with from_address(world, 11) as client:
        without = client.post("/auth/token", data={"username": person.name, "password": person.password})
        wrong = token_request(client, person, otp=far_code(person))
        assert (without.status_code, without.json()) == (401, BAD_CREDENTIALS)
        assert (wrong.status_code, wrong.json()) == (401, BAD_CREDENTIALS)
        pair = sign_in(client, person)
        assert studies(client, pair["access_token"]).status_code == 200


def test_a_totp_code_is_accepted_once(world: World) -> None:
    person = world.people["totp"]
    with from_address(world, 12) as client:
        code = person.otp()
        first = token_request(client, person, otp=code)
        replay = token_request(client, person, otp=code)
    assert first.status_code == 200, first.text
    assert (replay.status_code, replay.json()) == (401, BAD_CREDENTIALS)


def test_a_recovery_code_works_once(world: World) -> None:
    person = world.people["totp"]
    code = person.recovery_codes.pop()
    with from_address(world, 13) as client:
        first = token_request(client, person, otp=code)
        again = token_request(client, person, otp=code)
    assert first.status_code == 200, first.text
    assert (again.status_code, again.json()) == (401, BAD_CREDENTIALS)


# -- lockout and enumeration -----------------------------------------------------------------------


def test_repeated_failures_lock_the_account_even_for_the_right_password(world: World) -> None:
    person = world.people["lock"]
    with from_address(world, 14) as attacker:
        for _ in range(5):
            failed = attacker.post(
                "/auth/token",
                data={"username": person.name, "password": "not-the-password-1", "otp": "123456"},
            )
            assert failed.status_code == 401, failed.text
        locked = attacker.post(
            "/auth/token", data={"username": person.name, "password": "not-the-password-1", "otp": "123456"}
        )
    assert locked.status_code == 429, locked.text
    assert 0 < int(locked.headers["retry-after"]) <= 60
    # The owner, from another address, with the right password and a valid code: still locked.
    with from_address(world, 15) as owner:
        refused = token_request(owner, person)
    assert refused.status_code == 429, refused.text
    assert 0 < int(refused.headers["retry-after"]) <= 60
    assert "access_token" not in refused.text


def test_unknown_names_lock_out_the_same_way(world: World) -> None:
    """Counters exist for names that are no account too, so a lockout reveals nothing."""
    with from_address(world, 16) as client:
        answers = [
            client.post(
                "/auth/token", data={"username": "ghost-user", "password": "whatever-it-is", "otp": "1"}
            )
            for _ in range(6)
        ]
    assert [a.status_code for a in answers] == [401] * 5 + [429]
    assert "retry-after" in answers[-1].headers


def test_no_user_enumeration(world: World) -> None:
    """An unknown user, a wrong password and a wrong code get the same status and the same body."""
    person = world.people["enum"]
    with from_address(world, 17) as client:
        unknown = client.post(
            "/auth/token", data={"username": "nobody-here", "password": "wrong-password-1", "otp": "123456"}
        )
        wrong_password = client.post(
            "/auth/token",
            data={"username": person.name, "password": "wrong-password-1", "otp": person.current_otp()},
        )
        wrong_code = token_request(client, person, otp=far_code(person))
    for answer in (unknown, wrong_password, wrong_code):
        assert answer.status_code == 401
        assert answer.content == unknown.content
        assert answer.json() == BAD_CREDENTIALS
        assert answer.headers.get("www-authenticate") == unknown.headers.get("www-authenticate")


# -- tokens ----------------------------------------------------------------------------------------


def refresh(client: httpx.Client, token: str) -> httpx.Response:
    return client.post("/auth/token", data={"grant_type": "refresh_token", "refresh_token": token})


def test_refresh_rotates_and_reuse_revokes_the_session(world: World) -> None:
    person = world.people["refresh"]
    with anonymous(world.server) as client:
        first = sign_in(client, person)
        rotated = refresh(client, first["refresh_token"])
        assert rotated.status_code == 200, rotated.text
        second = rotated.json()
        assert second["refresh_token"] != first["refresh_token"]
        assert second["access_token"] != first["access_token"]
        assert rotated.headers["cache-control"] == "no-store"
        assert studies(client, second["access_token"]).status_code == 200
        # The old refresh token is spent; presenting it again revokes the whole session.
        reused = refresh(client, first["refresh_token"])
        assert reused.status_code == 401
        for token in (first["access_token"], second["access_token"]):
            assert studies(client, token).status_code == 401
        assert refresh(client, second["refresh_token"]).status_code == 401


def test_tokens_of_the_wrong_kind_are_refused(world: World) -> None:
    person = world.people["refresh"]
    with anonymous(world.server) as client:
        pair = sign_in(client, person)
        assert studies(client, pair["refresh_token"]).status_code == 401  # refresh token as bearer
        assert refresh(client, pair["access_token"]).status_code == 401  # access token as refresh
        assert refresh(client, world.api_key).status_code == 401
        assert studies(client, pair["access_token"]).status_code == 200


def test_logout_revokes_the_access_token_at_once(world: World) -> None:
    person = world.people["logout"]
    with anonymous(world.server) as client:
        pair = sign_in(client, person)
        assert studies(client, pair["access_token"]).status_code == 200
        out = client.post("/auth/logout", headers=bearer(pair["access_token"]))
        assert out.status_code == 204
        after = studies(client, pair["access_token"])
        assert after.status_code == 401
        assert after.headers["www-authenticate"].lower().startswith("bearer")
        assert refresh(client, pair["refresh_token"]).status_code == 401


def test_password_change_revokes_tokens(world: World) -> None:
    person = world.people["pwchange"]
    with anonymous(world.server) as client:
        pair = sign_in(client, person)
        assert studies(client, pair["access_token"]).status_code == 200
        old_password = person.password
        stolen = client.post(  # the password alone (no second factor) changes nothing
            "/auth/password",
            data={
                "username": person.name,
                "old_password": person.password,
                "new_password": "x" * 24 + "-stolen",
            },
        )
        assert (stolen.status_code, stolen.json()) == (401, BAD_CREDENTIALS)
        assert studies(client, pair["access_token"]).status_code == 200
        change_password(client, person)
        assert studies(client, pair["access_token"]).status_code == 401
        assert refresh(client, pair["refresh_token"]).status_code == 401
        assert studies(client, sign_in(client, person)["access_token"]).status_code == 200
    with from_address(world, 18) as client:
        old = client.post(
            "/auth/token",
            data={"username": person.name, "password": old_password, "otp": person.current_otp()},
        )
    assert (old.status_code, old.json()) == (401, BAD_CREDENTIALS)


def test_users_disable_revokes_at_once(world: World) -> None:
    person = world.people["disable"]
    with anonymous(world.server) as client:
        pair = sign_in(client, person)
        assert studies(client, pair["access_token"]).status_code == 200
        world.server.home.cli("users", "disable", person.name)
        assert studies(client, pair["access_token"]).status_code == 401
        assert refresh(client, pair["refresh_token"]).status_code == 401
    with from_address(world, 19) as client:
        again = token_request(client, person)
    assert (again.status_code, again.json()) == (401, BAD_CREDENTIALS)  # as for a wrong password


def test_revoked_api_key_is_refused_at_once(world: World) -> None:
    with anonymous(world.server) as client:
        assert studies(client, world.api_key).status_code == 200
        world.server.home.cli("apikeys", "revoke", "sess-viewer")
        refused = studies(client, world.api_key)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].lower().startswith("bearer")


# -- cookie session for the web console ------------------------------------------------------------


def cookie_attributes(set_cookie: list[str], name: str) -> tuple[str, set[str]]:
    """The value and the lower-cased attributes of cookie ``name`` in Set-Cookie headers."""
    for header in set_cookie:
        first, *attrs = [part.strip() for part in header.split(";")]
        key, _, value = first.partition("=")
        if key == name:
            return value, {a.lower() for a in attrs}
    raise AssertionError(f"no Set-Cookie for {name}: {set_cookie}")


def test_cookie_session_with_csrf_protection(world: World) -> None:
    person = world.people["cookie"]
    victim_data, victim = make_instance(patient_id="COOKIE-1")
    store(world.server, victim_data)
    victim_url = f"/dicomweb/studies/{victim.StudyInstanceUID}"
    with anonymous(world.server) as client:
        signed = client.post(
            "/auth/session", data={"username": person.name, "password": person.password, "otp": person.otp()}
        )
    assert signed.status_code == 200, signed.text
    assert "no-store" in signed.headers["cache-control"]
    set_cookie = signed.headers.get_list("set-cookie")
    session, attrs = cookie_attributes(set_cookie, SESSION_COOKIE)
    assert session.startswith("mva_")
    assert {"secure", "httponly", "samesite=strict", "path=/"} <= attrs
    csrf, csrf_attrs = cookie_attributes(set_cookie, CSRF_COOKIE)
    assert {"secure", "samesite=strict"} <= csrf_attrs and "httponly" not in csrf_attrs
    assert signed.json()["csrf_token"] == csrf
    assert session not in signed.text  # the token itself only travels in the HttpOnly cookie

    cookie = {"Cookie": f"{SESSION_COOKIE}={session}; {CSRF_COOKIE}={csrf}"}
    with anonymous(world.server) as browser:
        assert browser.get("/dicomweb/studies", headers=cookie).status_code == 200
        assert browser.get(victim_url + "/metadata", headers=cookie).status_code == 200
        # Changing requests need the X-CSRF-Token header (the cookie alone is what a forged
        # cross-site request would carry).
        for headers in ({}, {"X-CSRF-Token": ""}, {"X-CSRF-Token": csrf_token_for("mva_other-session")}):
            delete = browser.delete(victim_url, headers={**cookie, **headers})
            assert delete.status_code == 403, delete.text
            assert "CSRF" in delete.json()["error"]
            logout = browser.post("/auth/logout", headers={**cookie, **headers})
            assert logout.status_code == 403, logout.text
        assert browser.get(victim_url + "/metadata", headers=cookie).status_code == 200  # not deleted
        assert browser.get("/dicomweb/studies", headers=cookie).status_code == 200  # not logged out

        deleted = browser.delete(victim_url, headers={**cookie, "X-CSRF-Token": csrf})
        assert deleted.status_code == 204, deleted.text
        out = browser.post("/auth/logout", headers={**cookie, "X-CSRF-Token": csrf})
        assert out.status_code == 204, out.text
        cleared = out.headers.get_list("set-cookie")
        assert any(h.startswith(f"{SESSION_COOKIE}=") and "max-age=0" in h.lower() for h in cleared), cleared
        after = browser.get("/dicomweb/studies", headers=cookie)
        assert after.status_code == 401


def test_an_api_key_is_not_accepted_as_a_session_cookie(world: World) -> None:
    with anonymous(world.server) as browser:
        response = browser.get(
            "/dicomweb/studies", headers={"Cookie": f"{SESSION_COOKIE}={world.server.home.admin_key}"}
        )
    assert response.status_code == 401


# -- security headers ------------------------------------------------------------------------------


def test_security_headers_on_sign_in_and_error_responses(world: World) -> None:
    person = world.people["headers"]
    with anonymous(world.server) as client:
        token = client.post(
            "/auth/token", data={"username": person.name, "password": person.password, "otp": person.otp()}
        )
        responses = {
            "healthz": client.get("/healthz"),
            "token": token,
            "401": client.get("/dicomweb/studies"),
            "403": client.get("/api/users", headers=bearer(token.json()["access_token"])),
            "400": client.post("/auth/token", data={"grant_type": "magic"}),
            "404": client.get("/no/such/route"),
            "studies": studies(client, token.json()["access_token"]),
        }
    assert token.headers["pragma"] == "no-cache"
    for label, response in responses.items():
        headers = response.headers
        assert headers["strict-transport-security"].startswith("max-age="), label
        assert int(headers["strict-transport-security"].split("=")[1].split(";")[0]) >= 31536000, label
        assert headers["x-content-type-options"] == "nosniff", label
        assert "frame-ancestors 'none'" in headers["content-security-policy"], label
        assert headers["x-frame-options"] == "DENY", label
        assert headers["referrer-policy"] == "no-referrer", label
        assert "no-store" in headers["cache-control"], label
        assert "server" not in headers, label


# -- OIDC ------------------------------------------------------------------------------------------


def idp_token(world: World, *, key: Any = None, algorithm: str = "RS256", **overrides: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "f3a9c2e0-oidc-rad",
        "preferred_username": "oidc-rad",
        "roles": ["pacs-radiologists"],
        "iat": now,
        "exp": now + 300,
    }
    headers = {"kid": overrides.pop("kid", KID)}
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key if key is not None else world.idp_key, algorithm=algorithm, headers=headers)


def unsigned_token(claims: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT', 'kid': KID})}.{part(claims)}."


def test_oidc_token_with_a_mapped_role_reaches_qido(world: World) -> None:
    with anonymous(world.server) as client:
        answer = studies(client, idp_token(world))
        single = client.get(
            instance_path(world.ds),
            headers={**bearer(idp_token(world)), "Accept": "application/dicom; transfer-syntax=*"},
        )
    assert answer.status_code == 200, answer.text
    assert world.ds.StudyInstanceUID in answer.text
    assert single.status_code == 200


def test_oidc_role_decides_what_the_token_may_do(world: World) -> None:
    with anonymous(world.server) as client:
        auditor = idp_token(world, roles=["pacs-audit"])
        assert studies(client, auditor).status_code == 403
        assert client.get("/api/breakglass", headers=bearer(auditor)).status_code == 200
        unmapped = idp_token(world, roles=["some-other-group"])
        assert studies(client, unmapped).status_code == 403
        # No local account: no training on record and no scope, so no patient data.
        stranger = studies(client, idp_token(world, preferred_username="stranger", sub="stranger"))
        assert stranger.status_code == 403
        assert "training" in stranger.json()["error"]


@pytest.mark.parametrize(
    "case",
    [
        "wrong-audience",
        "wrong-issuer",
        "expired",
        "not-yet-valid",
        "no-exp",
        "unknown-kid",
        "other-key",
        "alg-none",
        "hs256-with-public-key",
        "garbage",
    ],
)
def test_oidc_bad_tokens_are_401(world: World, case: str) -> None:
    now = int(time.time())
    if case == "wrong-audience":
        token = idp_token(world, aud="another-service")
    elif case == "wrong-issuer":
        token = idp_token(world, iss="https://evil.example.test/")
    elif case == "expired":
        token = idp_token(world, iat=now - 7200, exp=now - 3600)
    elif case == "not-yet-valid":
        token = idp_token(world, nbf=now + 3600, exp=now + 7200)
    elif case == "no-exp":
        token = idp_token(world, exp=None)
    elif case == "unknown-kid":
        token = idp_token(world, kid="idp-key-2")
    elif case == "other-key":
        token = idp_token(world, key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    elif case == "alg-none":
        token = unsigned_token(
            {
                "iss": ISSUER,
                "aud": AUDIENCE,
                "sub": "x",
                "preferred_username": "oidc-rad",
                "roles": ["radiologist"],
                "exp": now + 300,
            }
        )
    elif case == "hs256-with-public-key":
        public_pem = world.idp_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        header = {"alg": "HS256", "typ": "JWT", "kid": KID}
        body = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "x",
            "preferred_username": "oidc-rad",
            "roles": ["radiologist"],
            "exp": now + 300,
        }

        def part(data: dict[str, Any]) -> bytes:
            return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=")

        signing_input = part(header) + b"." + part(body)
        signature = base64.urlsafe_b64encode(
            hmac.new(public_pem, signing_input, hashlib.sha256).digest()
        ).rstrip(b"=")
        token = (signing_input + b"." + signature).decode()
    else:
        token = "not.a.jwt-" + secrets.token_urlsafe(8)
    with anonymous(world.server) as client:
        response = studies(client, token)
    assert response.status_code == 401, (case, response.text)
    assert response.headers["www-authenticate"].lower().startswith("bearer")
    assert "oidc-rad" not in response.text
