"""OIDC bearer JWTs against a JWKS made here (RS256 and ES256 keys the test generates)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from medvault.access.oidc import OidcConfig, OidcTokenRejected, OidcVerifier
from medvault.errors import ConfigError

NOW = datetime(2030, 3, 4, 10, 0, tzinfo=UTC)
ISS, AUD = "https://idp.example.org/realms/h", "medvault"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def jwk(key: Any, kid: str, alg: str) -> dict[str, Any]:
    algo = jwt.get_algorithm_by_name(alg)
    data: dict[str, Any] = json.loads(algo.to_jwk(key.public_key()))
    return {**data, "kid": kid, "alg": alg, "use": "sig"}


JWKS = {"keys": [jwk(RSA_KEY, "r1", "RS256"), jwk(EC_KEY, "e1", "ES256")]}


def token(key: Any = RSA_KEY, kid: str = "r1", alg: str = "RS256", **overrides: Any) -> str:
    claims = {
        "iss": ISS,
        "aud": AUD,
        "sub": "abc-123",
        "preferred_username": "alice",
        "exp": int((NOW + timedelta(minutes=5)).timestamp()),
        "iat": int(NOW.timestamp()),
        "groups": ["radiology-staff", "some-other-group", "auditor"],
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})


def verifier(**kw: Any) -> OidcVerifier:
    config = {
        "issuer": ISS,
        "audience": AUD,
        "jwks": JWKS,
        "roles_claim": "groups",
        "role_map": {"radiology-staff": "radiologist"},
        **kw,
    }
    return OidcVerifier(OidcConfig(**config))


@pytest.mark.parametrize(("key", "kid", "alg"), [(RSA_KEY, "r1", "RS256"), (EC_KEY, "e1", "ES256")])
def test_good_tokens(key: Any, kid: str, alg: str) -> None:
    identity = verifier().verify(token(key, kid, alg), now=NOW)
    assert identity.username == "alice" and identity.subject == "abc-123"
    # With a role map, only mapped groups count: a group that happens to be called "auditor" grants nothing.
    assert identity.roles == {"radiologist"}


def test_without_a_role_map_the_claim_carries_medvault_role_names() -> None:
    config = OidcConfig(issuer=ISS, audience=AUD, jwks=JWKS, roles_claim="groups")
    identity = OidcVerifier(config).verify(token(), now=NOW)
    assert identity.roles == {"auditor"}  # "radiology-staff" and "some-other-group" are not roles


def test_alg_none_refused() -> None:
    unsigned = jwt.encode(
        {"iss": ISS, "aud": AUD, "sub": "x", "exp": 2**40},
        None,  # type: ignore[arg-type]
        algorithm="none",
        headers={"kid": "r1"},
    )
    with pytest.raises(OidcTokenRejected, match="not accepted") as info:
        verifier().verify(unsigned, now=NOW)
    assert "none" in info.value.detail


def test_hmac_with_public_key_refused() -> None:
    forged = jwt.encode(
        {"iss": ISS, "aud": AUD, "sub": "x", "exp": 2**40}, "s" * 64, algorithm="HS256", headers={"kid": "r1"}
    )
    with pytest.raises(OidcTokenRejected):
        verifier().verify(forged, now=NOW)


@pytest.mark.parametrize(
    ("make", "detail"),
    [
        (lambda: token(iss="https://evil.example"), "Issuer"),
        (lambda: token(aud="other-app"), "Audience"),
        (lambda: token(exp=int((NOW - timedelta(minutes=1)).timestamp())), "expired"),
        (lambda: token(nbf=int((NOW + timedelta(minutes=5)).timestamp())), "not yet valid"),
        (lambda: token(kid="r9"), "unknown key id"),
        (lambda: token(EC_KEY, "r1", "ES256"), "key 'r1' is for RS256"),
        (lambda: token(rsa.generate_private_key(public_exponent=65537, key_size=2048)), "Signature"),
        (lambda: token(exp=None), "exp"),
        (lambda: "not-a-jwt", "malformed"),
    ],
)
def test_bad_tokens(make: Any, detail: str) -> None:
    with pytest.raises(OidcTokenRejected) as info:
        verifier().verify(make(), now=NOW)
    assert detail in info.value.detail
    assert str(info.value) == "the bearer token was not accepted"


def test_leeway() -> None:
    t = token(exp=int(NOW.timestamp()))
    verifier().verify(t, now=NOW + timedelta(seconds=29))
    with pytest.raises(OidcTokenRejected):
        verifier().verify(t, now=NOW + timedelta(seconds=30))


def test_jwks_by_url_is_cached_and_refetched_for_new_kid() -> None:
    calls: list[str] = []
    served: dict[str, Any] = {"keys": [JWKS["keys"][0]]}

    def fetch(url: str) -> Mapping[str, Any]:
        calls.append(url)
        return served

    v = OidcVerifier(OidcConfig(issuer=ISS, audience=AUD, jwks_url="https://idp/jwks"), fetch=fetch)
    v.verify(token(), now=NOW)
    v.verify(token(), now=NOW + timedelta(seconds=10))
    assert len(calls) == 1
    served = {"keys": JWKS["keys"]}  # the IdP adds a key
    with pytest.raises(OidcTokenRejected):  # too soon after the last fetch
        v.verify(token(EC_KEY, "e1", "ES256"), now=NOW + timedelta(seconds=20))
    v.verify(token(EC_KEY, "e1", "ES256"), now=NOW + timedelta(seconds=90))
    assert len(calls) == 2
    v.verify(
        token(exp=int((NOW + timedelta(hours=1)).timestamp())), now=NOW + timedelta(minutes=30)
    )  # cache expired
    assert len(calls) == 3


def test_jwks_from_file(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(JWKS))
    v = OidcVerifier(OidcConfig(issuer=ISS, audience=AUD, jwks_file=path))
    assert v.verify(token(), now=NOW).roles == frozenset()  # default claim "roles" absent


def test_config_checks() -> None:
    with pytest.raises(ConfigError):
        OidcConfig(issuer=ISS, audience=AUD)
    with pytest.raises(ConfigError):
        OidcConfig(issuer=ISS, audience=AUD, jwks=JWKS, algorithms=("HS256",))
    with pytest.raises(ConfigError):
        OidcConfig(issuer="", audience=AUD, jwks=JWKS)


def test_principal_for_oidc(store: Any) -> None:
    from tests.unit.access.conftest import TRAINED

    from medvault.access.policy import Action, Context, Resource, decide

    identity = verifier().verify(token(), now=NOW)
    stranger = store.principal_for_oidc(identity, now=NOW)
    assert stranger.method == "oidc" and stranger.human and stranger.roles == {"radiologist"}
    assert "training" in decide(stranger, Action.STUDY_READ, None, Context(now=NOW)).reason
    store.add_user("alice", roles=["auditor"], now=NOW, external=True, training_expires=TRAINED)
    store.grant("alice", kind="study", value="1.2.3", now=NOW)
    local = store.principal_for_oidc(identity, now=NOW)
    assert decide(local, Action.STUDY_READ, Resource(study_uid="1.2.3"), Context(now=NOW)).allowed
    store.disable("alice", now=NOW)
    assert store.principal_for_oidc(identity, now=NOW) is None
