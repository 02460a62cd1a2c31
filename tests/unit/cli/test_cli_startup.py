"""`medvault GROUP …` loads that group's module only: a command such as `medvault monitor replay`
does not pay for the web, DIMSE and database layers at start-up (about 2 s of imports)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from medvault.cli import COMMANDS, GROUPS, app, build_app

_PROBE = """
import sys
from medvault.cli import main
sys.argv = ["medvault", *sys.argv[1:]]
try:
    main()
except SystemExit:
    pass
layers = ("fastapi", "sqlalchemy", "pydicom", "pynetdicom", "medvault.archive")
heavy = sorted(m for m in layers if m in sys.modules)
print("loaded:", ",".join(heavy))
"""


def _loaded(*argv: str) -> str:
    run = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, check=True)
    return run.stdout.rsplit("loaded:", 1)[1].strip()


def test_monitor_replay_starts_without_the_archive_layers() -> None:
    assert _loaded("monitor", "--help") == ""
    assert _loaded("monitor", "replay", "--help") == ""
    # the probe can see them: a command that needs the archive loads it
    assert "sqlalchemy" in _loaded("--help")


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_a_group_alone_reads_as_in_the_whole_command_line(group: str) -> None:
    alone = CliRunner().invoke(build_app(group), [group, "--help"], terminal_width=100)
    whole = CliRunner().invoke(app, [group, "--help"], terminal_width=100)
    assert alone.exit_code == whole.exit_code == 0
    assert alone.output == whole.output


def test_the_whole_command_line_has_every_group_and_command() -> None:
    whole = build_app()
    assert {g.name for g in whole.registered_groups} == set(GROUPS)
    assert {c.name for c in whole.registered_commands} == set(COMMANDS)
    assert "monitor" in CliRunner().invoke(app, ["--help"]).output
