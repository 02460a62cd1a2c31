"""OpenID Connect bearer tokens: JWTs from one configured issuer, checked against its JWKS.

Refused: ``alg`` ``none`` and every algorithm outside :data:`ALLOWED_ALGORITHMS` (asymmetric
only, so a public key can never be used as an HMAC secret), a ``kid`` not in the JWKS (after one
refetch, rate limited, for key rotation), a wrong signature, issuer or audience, and tokens
expired or not yet valid at ``now`` (with :attr:`OidcConfig.leeway`). Time is an argument.

The configured claim (``roles`` or ``groups``...) is mapped to medvault roles by
:attr:`OidcConfig.role_map` (IdP group -> medvault role). With a map configured, only mapped names
count (an IdP group that happens to be called "admin" grants nothing by itself); without one, the
claim must carry medvault role names.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final

import httpx
import jwt

from medvault.access.policy import ROLES
from medvault.errors import ConfigError, Unauthenticated

__all__ = ["ALLOWED_ALGORITHMS", "OidcConfig", "OidcIdentity", "OidcTokenRejected", "OidcVerifier"]

ALLOWED_ALGORITHMS: Final = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")
JwksFetcher = Callable[[str], Mapping[str, Any]]


class OidcTokenRejected(Unauthenticated):
    """An OIDC token that did not verify. ``str()`` is generic; ``detail`` is for logs only."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            "the bearer token was not accepted", hint="Sign in again with the identity provider."
        )
        self.detail = detail


@dataclass(frozen=True, kw_only=True)
class OidcConfig:
    issuer: str
    audience: str
    jwks_url: str | None = None
    jwks: Mapping[str, Any] | None = None  # given directly (tests, air-gapped sites)
    jwks_file: Path | None = None
    roles_claim: str = "roles"
    role_map: Mapping[str, str] = field(default_factory=dict)
    username_claim: str = "preferred_username"
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    leeway: timedelta = timedelta(seconds=30)
    cache_ttl: timedelta = timedelta(minutes=10)
    min_refetch: timedelta = timedelta(seconds=60)

    def __post_init__(self) -> None:
        if not self.issuer or not self.audience:
            raise ConfigError("OIDC needs an issuer and an audience")
        if sum(x is not None for x in (self.jwks_url, self.jwks, self.jwks_file)) != 1:
            raise ConfigError("OIDC needs exactly one of jwks_url, jwks, jwks_file")
        bad = [a for a in self.algorithms if a not in ALLOWED_ALGORITHMS]
        if bad or not self.algorithms:
            raise ConfigError(
                f"OIDC algorithms not allowed: {bad}", hint=f"Use some of {ALLOWED_ALGORITHMS}."
            )


@dataclass(frozen=True)
class OidcIdentity:
    subject: str
    username: str
    roles: frozenset[str]
    claims: Mapping[str, Any]


def _fetch_url(url: str) -> Mapping[str, Any]:
    response = httpx.get(url, timeout=10.0, follow_redirects=False)
    response.raise_for_status()
    data: Mapping[str, Any] = response.json()
    return data


class OidcVerifier:
    def __init__(self, config: OidcConfig, *, fetch: JwksFetcher | None = None) -> None:
        self.config = config
        self._fetch = fetch or _fetch_url
        self._lock = threading.Lock()
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: datetime | None = None

    def _load(self) -> Mapping[str, Any]:
        c = self.config
        if c.jwks is not None:
            return c.jwks
        if c.jwks_file is not None:
            data: Mapping[str, Any] = json.loads(c.jwks_file.read_text())
            return data
        assert c.jwks_url is not None
        return self._fetch(c.jwks_url)

    def _refresh(self, now: datetime) -> None:
        try:
            raw = self._load()
        except (OSError, ValueError, httpx.HTTPError) as exc:
            raise OidcTokenRejected(f"JWKS unavailable: {exc}") from None
        keys: dict[str, jwt.PyJWK] = {}
        for entry in raw.get("keys", []):
            kid = entry.get("kid")
            if not isinstance(kid, str) or entry.get("kty") == "oct" or entry.get("use", "sig") != "sig":
                continue
            try:
                keys[kid] = jwt.PyJWK(dict(entry))
            except jwt.PyJWTError:
                continue  # a key we cannot use is as good as absent
        self._keys = keys
        self._fetched_at = now

    def _key(self, kid: str, now: datetime) -> jwt.PyJWK:
        c = self.config
        with self._lock:
            stale = self._fetched_at is None or now - self._fetched_at >= c.cache_ttl
            if stale:
                self._refresh(now)
            key = self._keys.get(kid)
            if key is None and self._fetched_at is not None and now - self._fetched_at >= c.min_refetch:
                self._refresh(now)  # rotated keys: refetch, at most once per min_refetch
                key = self._keys.get(kid)
            if key is None:
                raise OidcTokenRejected(f"unknown key id {kid!r}")
            return key

    def verify(self, token: str, *, now: datetime) -> OidcIdentity:
        c = self.config
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise OidcTokenRejected(f"malformed token: {exc}") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in c.algorithms:
            raise OidcTokenRejected(f"algorithm {alg!r} not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise OidcTokenRejected("token has no key id")
        key = self._key(kid, now)
        if key.algorithm_name != alg:
            raise OidcTokenRejected(f"key {kid!r} is for {key.algorithm_name}, token says {alg}")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=c.audience,
                issuer=c.issuer,
                options={
                    "require": ["exp", "iss", "aud", "sub"],
                    "verify_exp": False,  # checked below against ``now``
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise OidcTokenRejected(f"{type(exc).__name__}: {exc}") from None
        ts = now.timestamp()
        leeway = c.leeway.total_seconds()
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool) or ts >= exp + leeway:
            raise OidcTokenRejected("token expired")
        nbf = claims.get("nbf")
        if nbf is not None and (not isinstance(nbf, int | float) or ts + leeway < nbf):
            raise OidcTokenRejected("token not yet valid")
        subject = claims["sub"]
        username = claims.get(c.username_claim, subject)
        if not isinstance(subject, str) or not isinstance(username, str) or not username:
            raise OidcTokenRejected("token has no usable subject / user name")
        return OidcIdentity(subject=subject, username=username, roles=self.map_roles(claims), claims=claims)

    def map_roles(self, claims: Mapping[str, Any]) -> frozenset[str]:
        value = claims.get(self.config.roles_claim, [])
        names = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        roles = set()
        for name in names:
            if not isinstance(name, str):
                continue
            if self.config.role_map:
                if name in self.config.role_map:
                    roles.add(self.config.role_map[name])
            elif name in ROLES:
                roles.add(name)
        return frozenset(roles)
