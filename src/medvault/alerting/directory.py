"""The directory the monitor scores with: what a site imports (``medvault monitor directory
import FILE``, DIRECTORY.json of docs/monitoring.md) merged with what the archive knows itself
(every account and its role).

Patients reach the monitor as the ledger names them, by keyed pseudonym, so an imported
directory's ``patient_id`` values are pseudonymized on import and the file's own ids are never
stored; the stored directory is sealed (it still names staff, departments and VIP flags).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from medvault.errors import DirectoryInvalid
from medvault.index.alerts import AlertStore
from medvault.index.store import Index
from medvault.index.users import UserStore
from medvault.monitor import Directory, parse_directory

PATIENT_TAG = "00100020"


MAX_DIRECTORY_BYTES = 256 * 1024 * 1024
"""A million patients with their teams is ~100 MB of JSON; more is a mistake, not a directory."""


def read_directory_file(path: Path) -> dict[str, Any]:
    try:
        size = path.stat().st_size
        if size > MAX_DIRECTORY_BYTES:
            raise DirectoryInvalid(
                f"{path} is {size:,} bytes; a directory may be at most {MAX_DIRECTORY_BYTES:,} "
                "(split it, or leave out what the monitor does not use)"
            )
        raw = json.loads(path.read_text(encoding="utf-8-sig"))  # a BOM, as Windows tools write
    except FileNotFoundError:
        raise DirectoryInvalid(f"{path} does not exist") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DirectoryInvalid(f"{path} is not JSON: {type(exc).__name__}") from None
    parse_directory(raw)  # every field checked, naming the one that is wrong
    if not isinstance(raw, dict):
        raise DirectoryInvalid("the directory must be a JSON object")
    return raw


def import_directory(
    raw: dict[str, Any], *, index: Index, alerts: AlertStore, now: datetime
) -> tuple[int, int]:
    """Store ``raw`` (already checked) with its patients pseudonymized; (users, patients)."""
    doc = dict(raw)
    patients = []
    for entry in raw.get("patients", []):
        item = dict(entry)
        item["patient_id"] = index.pseudonym(PATIENT_TAG, str(entry["patient_id"]))
        patients.append(item)
    doc["patients"] = patients
    parse_directory(doc)
    alerts.save_directory(doc, now=now)
    return len(doc.get("users", [])), len(patients)


def effective_directory(alerts: AlertStore, users: UserStore) -> tuple[Directory, str]:
    """The imported directory with every account of the archive added (by its first role) when
    the import does not name it; and a stamp that changes when either changes."""
    imported, when = alerts.load_directory()
    doc: dict[str, Any] = dict(imported or {})
    listed = {str(u.get("user")) for u in doc.get("users", []) if isinstance(u, dict)}
    accounts = users.list()
    extra = [
        {"user": u.name, "role": sorted(u.roles)[0]} for u in accounts if u.name not in listed and u.roles
    ]
    doc["users"] = [*doc.get("users", []), *extra]
    stamp = f"{when.isoformat() if when else '-'}/{len(accounts)}/" + ",".join(
        f"{u.name}:{'+'.join(sorted(u.roles))}" for u in accounts
    )
    return parse_directory(doc), stamp
