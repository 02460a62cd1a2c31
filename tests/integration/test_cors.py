"""CORS is off unless origins are configured; a configured viewer origin (OHIF) gets preflights."""

from __future__ import annotations

from collections.abc import Callable

from tests.conftest import Home, Server

VIEWER = "https://viewer.example.org"


def preflight(server: Server, origin: str) -> dict[str, str]:
    with server.client() as client:
        response = client.options(
            "/dicomweb/studies",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
    return dict(response.headers)


def test_no_cors_by_default(server: Server) -> None:
    assert "access-control-allow-origin" not in preflight(server, VIEWER)


def test_configured_origin_only(home: Home, server_factory: Callable[[Home], Server]) -> None:
    home.set_config("server", "cors_origins", f'["{VIEWER}"]')
    server = server_factory(home)
    allowed = preflight(server, VIEWER)
    assert allowed["access-control-allow-origin"] == VIEWER
    assert "authorization" in allowed["access-control-allow-headers"].lower()
    assert "access-control-allow-origin" not in preflight(server, "https://evil.example.com")
    with server.client() as client:  # the actual request still needs the key
        response = client.get("/dicomweb/studies", headers={"Origin": VIEWER, "Authorization": ""})
    assert response.status_code == 401
    assert response.headers["access-control-allow-origin"] == VIEWER
