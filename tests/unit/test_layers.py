"""Nothing imports upward (DESIGN.md, "Layout"; issue 20, "The layout"): a piece two layers need lives
in the lower one. Every import is counted, also those under TYPE_CHECKING and inside functions."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).parents[2] / "src" / "medvault"

BASE = {"errors", "config"}
#: The pure core (DESIGN.md's packages below the service layer): what each may import from medvault.
CORE: dict[str, set[str]] = {
    "crypto": set(),
    "dicom": set(),
    "storage": set(),
    "access": {"crypto"},
    "ledger": {"crypto"},
    "index": {"crypto", "dicom", "access"},
    "monitor": {"ledger"},
}
#: The service layer (archive and the modules around it, the online monitor's worker, alerting/, and
#: compliance/ over archive, ledger and index): core and each other, never a protocol.
SERVICE = {
    "archive",
    "audit",
    "guard",
    "home",
    "export",
    "fsck",
    "migrate",
    "reports",
    "sample",
    "testing",
    "alerting",
    "compliance",
    "witness_home",
    "witnessing",
    "mirroring",
}
PROTOCOLS = {"api", "dimse", "web"}


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, top-level medvault unit) for every import of a medvault module in ``path``."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "medvault" and len(parts) > 1:
                yield node.lineno, parts[1]


def unit_of(path: Path) -> str:
    return path.relative_to(SRC).parts[0].removesuffix(".py")


def allowed(unit: str) -> set[str]:
    if unit in CORE:
        return BASE | CORE[unit] | {unit}
    if unit in BASE:
        return {"errors", unit}
    if unit in SERVICE:
        return BASE | set(CORE) | SERVICE
    if unit in PROTOCOLS:
        return BASE | set(CORE) | SERVICE | PROTOCOLS
    return BASE | set(CORE) | SERVICE | PROTOCOLS | {unit, "cli", "__init__"}  # cli, the package itself


MODULES = sorted(p for p in SRC.rglob("*.py") if "tests" not in p.parts)


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(SRC)) for p in MODULES])
def test_no_module_imports_upward(path: Path) -> None:
    unit = unit_of(path)
    if unit == "__init__" or unit == "__main__":
        return
    wrong = [
        f"line {line}: medvault.{target}" for line, target in imports(path) if target not in allowed(unit)
    ]
    assert not wrong, f"{path.relative_to(SRC)} ({unit}) imports upward: {wrong}"


def test_every_package_has_a_layer() -> None:
    """A new package or module is placed in a layer here (and in DESIGN.md) before it is used."""
    known = BASE | set(CORE) | SERVICE | PROTOCOLS | {"cli", "__init__", "__main__"}
    units = {unit_of(p) for p in MODULES}
    assert units <= known, sorted(units - known)
