"""schemathesis against the live server (issue #12, "Also"): every operation of docs/openapi.json,
with generated and mutated inputs and real credentials, never answers 5xx."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from medvault.home import open_home
from tests.conftest import Server, start_server
from tests.integration.test_access_routes import quiet_home

pytestmark = pytest.mark.integration

SCHEMA = schemathesis.openapi.from_path(Path(__file__).parents[2] / "docs" / "openapi.json")


@dataclass
class World:
    server: Server
    keys: dict[str, str]  # role -> API key


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    home = quiet_home(Path(tmp_path_factory.mktemp("api-fuzz")) / "home")
    opened = open_home(home.root, home.passphrase)
    try:
        keys = {
            role: opened.api_keys.create(f"fuzz-{role}-{secrets.token_hex(6)}", role=role)
            for role in ("admin", "auditor", "researcher", "monitoring")
        }
    finally:
        opened.close()
    server = start_server(home)
    try:
        yield World(server, keys)
    finally:
        server.stop()


def _role_for(path: str) -> str:
    if path.startswith(
        ("/ledger", "/api/alerts", "/api/holds", "/api/legal-holds", "/api/erasure", "/api/patients")
    ):
        return "auditor"
    if path == "/metrics":
        return "monitoring"
    if path.startswith("/research"):
        return "researcher"
    return "admin"


@SCHEMA.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_operation_answers_a_server_error(case: schemathesis.Case, world: World) -> None:
    case.call_and_validate(
        base_url=world.server.url,
        headers={"Authorization": f"Bearer {world.keys[_role_for(case.path)]}"},
        checks=[not_a_server_error],
        verify=str(world.server.home.ca),
        timeout=30,
    )


def test_the_document_is_served_to_authenticated_callers_only(world: World) -> None:
    import httpx

    url = f"{world.server.url}/api/openapi.json"
    assert httpx.get(url, verify=world.server.ssl_context()).status_code == 401
    with world.server.client(world.keys["auditor"]) as client:
        served = client.get("/api/openapi.json")
    assert served.status_code == 200
    assert served.json() == json.loads((Path(__file__).parents[2] / "docs" / "openapi.json").read_text())
