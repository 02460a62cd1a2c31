"""The published OpenAPI document (docs/openapi.json) is the one the app describes itself with."""

from __future__ import annotations

import json
import os
from pathlib import Path

from medvault.api.app import route_table
from medvault.api.openapi import DOCUMENTED_PREFIXES, document

BODYLESS = (
    "/auth/logout",
    "/disable",
    "/enable",
    "/reset-mfa",
    "/lift",
    "/approve",
    "/execute",
    "/cancel",
)  # actions named by the path alone
DOC = Path(__file__).parents[3] / "docs" / "openapi.json"


def test_docs_openapi_json_is_current() -> None:
    current = json.dumps(document(route_table()), indent=2, sort_keys=True) + "\n"
    if os.environ.get("UPDATE_OPENAPI"):
        DOC.write_text(current)
    assert DOC.read_text() == current, "docs/openapi.json is stale: regenerate it (UPDATE_OPENAPI=1 pytest …)"


def test_every_body_reading_route_declares_its_body() -> None:
    spec = document(route_table())
    for path, item in spec["paths"].items():
        assert path.startswith(DOCUMENTED_PREFIXES)
        for method, operation in item.items():
            if method in ("post", "put") and not path.endswith(BODYLESS):
                assert "requestBody" in operation, (method, path)
            assert "422" not in operation["responses"], (method, path)
    assert spec["paths"]["/auth/token"]["post"]["security"] == []
    assert spec["security"] == [{"bearer": []}]
