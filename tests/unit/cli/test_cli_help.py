"""`--help` of every command and group reads as written (issue 20, item 8): no "<bool>" for flags,
no paragraph cut short mid-sentence, no command summary cut with "...", "[section]" kept."""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

from medvault.cli import HELP_WIDTH, app


def every_command() -> list[list[str]]:
    """The argv of each command and group, walked from the click tree (new ones are covered)."""
    found: list[list[str]] = []

    def walk(command: Any, path: list[str]) -> None:
        found.append(path)
        for name, sub in getattr(command, "commands", {}).items():  # a group (typer's click or click's)
            walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


COMMANDS = every_command()


def description(text: str) -> list[list[str]]:
    """The paragraphs above the first section heading ("Options:", "Arguments:"…), as lines."""
    body = text.split("\n\n", 1)[1] if "\n\n" in text else ""
    head = re.split(r"^\S[^\n]*:\n", body, maxsplit=1, flags=re.M)[0]
    return [p.splitlines() for p in head.strip("\n").split("\n\n") if p.strip()]


def test_the_walk_finds_the_groups_and_their_commands() -> None:
    assert {"users grant", "quickstart", "report disclosures", "ledger verify"} <= {
        " ".join(c) for c in COMMANDS
    }


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda argv: " ".join(argv) or "medvault")
@pytest.mark.parametrize("columns", [80, 200])
def test_help_has_no_bool_and_breaks_no_sentence(argv: list[str], columns: int) -> None:
    result = CliRunner().invoke(app, [*argv, "--help"], env={"COLUMNS": str(columns)}, terminal_width=columns)
    assert result.exit_code == 0, result.output
    text = result.output
    assert "<bool>" not in text
    width = min(columns, HELP_WIDTH)
    for paragraph in description(text):
        for line, following in itertools.pairwise(paragraph):
            # A line ends inside a paragraph only where the next word would not have fitted.
            assert len(line) + 1 + len(following.split()[0]) > width - 2, (line, following)
    listing = text.split("Commands:\n", 1)[1] if "Commands:\n" in text else ""
    assert "..." not in listing, listing
