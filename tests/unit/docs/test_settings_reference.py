"""docs/configuration.md, which the README names as the settings reference, stays true (issue 20,
item 9): every section and key the loader (medvault.config) accepts is documented with its default,
the documented file is one the loader reads, and docs/dicomweb.md's role table matches the policy."""

from __future__ import annotations

import re
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from medvault.access.policy import ROLE_PERMISSIONS, Action
from medvault.config import _SECTIONS, CONFIG_FILE, DEFAULT_CONFIG_TEXT, load_settings

DOCS = Path(__file__).parents[3] / "docs"


def documented() -> dict[str, Any]:
    """The TOML blocks of docs/configuration.md, as one settings table."""
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```toml\n(.*?)^```", text, flags=re.S | re.M)
    assert blocks, "docs/configuration.md has no ```toml block"
    merged: dict[str, Any] = {}
    for block in blocks:
        for section, values in tomllib.loads(block).items():
            merged.setdefault(section, {}).update(values)
    return merged


def loader_keys() -> dict[str, dict[str, Any]]:
    """Every section and key the loader accepts, with its default."""
    return {
        section: {f.name: getattr(cls(), f.name) for f in fields(cls)} for section, cls in _SECTIONS.items()
    }


@pytest.mark.parametrize("section", sorted(_SECTIONS))
def test_every_key_the_loader_accepts_is_documented_with_its_default(section: str) -> None:
    doc = documented()
    assert section in doc, f"[{section}] is missing from docs/configuration.md"
    keys = loader_keys()[section]
    missing = sorted(set(keys) - set(doc[section]))
    assert not missing, f"[{section}] keys missing from docs/configuration.md: {missing}"
    unknown = sorted(set(doc[section]) - set(keys))
    assert not unknown, f"docs/configuration.md documents [{section}] keys the loader refuses: {unknown}"
    for key, default in keys.items():
        value = doc[section][key]
        value = tuple(value) if isinstance(default, tuple) else value
        assert value == default, f"[{section}] {key}: documented {value!r}, default {default!r}"


def test_the_file_init_writes_names_every_key_too() -> None:
    """The medvault.toml an administrator opens first lists every setting, not only the docs."""
    written = tomllib.loads(DEFAULT_CONFIG_TEXT.replace("{origin}", "example.org/medvault/ledger"))
    for section, keys in loader_keys().items():
        assert sorted(set(keys) - set(written.get(section, {}))) == [], section


def test_the_documented_file_is_one_the_loader_reads(tmp_path: Path) -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    (tmp_path / CONFIG_FILE).write_text(
        "\n".join(re.findall(r"^```toml\n(.*?)^```", text, flags=re.S | re.M))
    )
    settings = load_settings(tmp_path)
    assert settings.dimse.port == 2762 and settings.ledger.checkpoint_seconds == 10


def test_the_dicomweb_role_table_matches_the_policy() -> None:
    """docs/dicomweb.md: which roles store, read and delete studies, as ROLE_PERMISSIONS says."""
    text = (DOCS / "dicomweb.md").read_text(encoding="utf-8")
    header = "| role | study.store (STOW) | study.read (QIDO/WADO) | study.delete |"
    assert header in text
    rows = text.split(header, 1)[1].split("\n\n", 1)[0].strip().splitlines()[1:]
    seen: set[str] = set()
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        names = re.findall(r"\b[a-z_]+\b", cells[0].split("(")[0])
        for name in names:
            permissions = ROLE_PERMISSIONS[name]
            for cell, action in zip(
                cells[1:], (Action.STUDY_STORE, Action.STUDY_READ, Action.STUDY_DELETE), strict=True
            ):
                assert cell.startswith("yes") == (action in permissions), (name, action, cell)
            seen.add(name)
    people_and_keys = {r for r, p in ROLE_PERMISSIONS.items() if not r.startswith("node.")}
    assert people_and_keys <= seen, f"roles missing from docs/dicomweb.md: {sorted(people_and_keys - seen)}"
