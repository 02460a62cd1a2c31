"""The OpenAPI document of medvault's own HTTP API: /auth, /api, /ledger, /research.

DICOMweb (/dicomweb) is specified by DICOM PS3.18 itself and is left out. Routes that read their
bodies themselves (URL-encoded forms or JSON, see medvault.api.bodies) declare them here, so that
integrators can generate clients and API fuzzers (schemathesis) know what to send.

Served to authenticated callers at ``GET /api/openapi.json``; docs/openapi.json is the same
document (``python -c "import medvault.api.openapi as o; o.main()" > docs/openapi.json``), and a
test keeps the two equal.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI

DOCUMENTED_PREFIXES = ("/auth/", "/api/", "/ledger/", "/research/", "/healthz", "/metrics")
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"

_STRING = {"type": "string", "maxLength": 1024}
_DATE = {"type": "string", "format": "date", "example": "2027-06-30"}
_DAYS = {"type": "string", "pattern": "^[0-9]{1,5}$", "description": "a number of days"}


def form_body(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    """``openapi_extra`` for a route taking a URL-encoded form or the same fields as JSON strings."""
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    return {
        "requestBody": {
            "required": True,
            "content": {FORM: {"schema": schema}, JSON: {"schema": schema}},
        }
    }


def fields(*names: str, **special: dict[str, Any]) -> dict[str, Any]:
    return dict.fromkeys(names, _STRING) | special


PUBLIC: dict[str, Any] = {"security": []}
SIGN_IN = form_body(fields("username", "password", "otp"), ["username", "password"]) | PUBLIC
TOKEN = (
    form_body(
        fields(
            "username",
            "password",
            "otp",
            "refresh_token",
            grant_type={"type": "string", "enum": ["password", "refresh_token"]},
        )
    )
    | PUBLIC
)
_PASSWORD_FIELDS = ["username", "old_password", "new_password"]
PASSWORD = form_body(fields(*_PASSWORD_FIELDS, "otp"), _PASSWORD_FIELDS) | PUBLIC
NEW_USER = form_body(fields("name", "roles", training_expires=_DATE), ["name", "roles"])
ROLES = form_body(fields("roles"), ["roles"])
TRAINING = form_body({"expires": _DATE}, ["expires"])
REFERRING = form_body(fields("physician_name"))
GRANT = form_body(
    fields("value", kind={"type": "string", "enum": ["patient", "study", "department", "site"]}, days=_DAYS),
    ["kind", "value"],
)
REVOKE_GRANT = form_body(fields("kind", "value"), ["kind", "value"])
NEW_API_KEY = form_body(fields("name", "role", expires_days=_DAYS), ["name", "role"])
ACKNOWLEDGE = form_body(fields("note"))
RESOLVE = form_body(
    fields(
        "note",
        disposition={"type": "string", "enum": ["true_positive", "false_positive", "benign_explained"]},
    ),
    ["disposition"],
)
BREAK_GLASS = form_body(fields("study_uid", "reason"), ["study_uid", "reason"])
EXPORT: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            JSON: {
                "schema": {
                    "type": "object",
                    "required": ["project"],
                    "additionalProperties": False,
                    "properties": {
                        "project": _STRING,
                        "options": {"type": "array", "items": _STRING},
                        "keep_map": {"type": "boolean"},
                        "query": {"type": "object", "additionalProperties": _STRING},
                    },
                }
            }
        },
    }
}

_RULE = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"},
        "modality": {"type": "string", "maxLength": 64},
        "department": {"type": "string", "maxLength": 64},
        **{
            key: {"type": "integer", "minimum": 0, "maximum": 200}
            for key in ("min_age_years", "max_age_years", "keep_years", "keep_until_patient_age")
        },
    },
}
RETENTION_RULES: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            JSON: {
                "schema": {
                    "type": "object",
                    "required": ["rules"],
                    "additionalProperties": False,
                    "properties": {"rules": {"type": "array", "items": _RULE}},
                }
            }
        },
    }
}
RETENTION_RUN = form_body({"dry_run": {"type": "string", "enum": ["true", "false"]}})
LEGAL_HOLD = form_body(fields("patient_id", "study_uid", "query", "reason"), ["reason"])
LIFT_LEGAL_HOLD = form_body(fields("reason"), ["reason"])
PATIENT_ACCESS = form_body(fields("patient_id", "reference"), ["patient_id", "reference"])
ERASURE_REQUEST = form_body(
    fields("patient_id", "reference", "grounds"), ["patient_id", "reference", "grounds"]
)


def document(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document, limited to medvault's own API, with bearer authentication."""
    full = app.openapi()
    paths = {p: v for p, v in full["paths"].items() if p.startswith(DOCUMENTED_PREFIXES)}
    error = {"$ref": "#/components/schemas/Error"}
    for operation in (op for item in paths.values() for op in item.values()):
        # medvault answers a malformed parameter 400 {error} (app.validation_error), never 422
        responses = operation.setdefault("responses", {})
        responses.pop("422", None)
        responses["400"] = {
            "description": "Bad request: the error names what was wrong",
            "content": {JSON: {"schema": error}},
        }
        if operation.get("security") != []:
            responses["401"] = {
                "description": "Authentication required",
                "content": {JSON: {"schema": error}},
            }
            responses["403"] = {"description": "Not permitted", "content": {JSON: {"schema": error}}}
    components = dict(full.get("components", {}))
    components["securitySchemes"] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "An access token from POST /auth/token (mva_…), an API key (mvk_…) "
            "or a JWT from the site's identity provider (OIDC)",
        }
    }
    schemas = {
        k: v
        for k, v in components.get("schemas", {}).items()
        if k not in ("HTTPValidationError", "ValidationError")
    }
    components["schemas"] = {
        **schemas,
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string"}, "hint": {"type": "string"}},
        },
    }
    return {
        "openapi": full["openapi"],
        "info": {
            "title": "medvault API",
            "version": full["info"]["version"],
            "description": "Sign-in, administration, the audit ledger and research exports. "
            "DICOMweb at /dicomweb follows DICOM PS3.18. Errors are JSON {error, hint}.",
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": components,
    }


def main() -> None:
    """Print the document of an app built from no archive (routes and schemas need none)."""
    from medvault.api.app import route_table

    print(json.dumps(document(route_table()), indent=2, sort_keys=True))
