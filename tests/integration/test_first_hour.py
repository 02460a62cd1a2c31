"""A new user's first hour (issue 20): each step of the README and the docs, taken as written,
against a real `medvault serve`, the real CLI and dcmtk."""

from __future__ import annotations

import pytest

from tests.conftest import Home, Server
from tests.integration.test_access_routes import activate, anonymous, bearer, person_from_cli, token_request

pytestmark = pytest.mark.integration


def test_first_sign_in_error_says_what_to_send_and_following_it_works(home: Home, server: Server) -> None:
    """Item 1: a token of a one-time password is refused with the exact next step, which works."""
    added = home.cli("users", "add", "drsmith", "--roles", "radiologist", "--training", "2030-06-30")
    home.cli("users", "grant", "drsmith", "site", "*")
    person = person_from_cli("drsmith", added.stdout)
    with anonymous(server) as client:
        first = token_request(client, person)
        assert first.status_code == 200, first.text
        refused = client.get("/dicomweb/studies", headers=bearer(first.json()["access_token"]))
    assert refused.status_code == 403
    body = refused.json()
    assert "one-time password must be changed" in body["error"]
    for named in ("POST /auth/password", "username", "old_password", "new_password", "otp", "POST /auth/token"):
        assert named in body["hint"], named
    token = activate(server, person)["drsmith"]  # exactly what the hint says: change, sign in again
    with anonymous(server) as client:
        assert client.get("/dicomweb/studies", headers=bearer(token)).status_code in (200, 204)
