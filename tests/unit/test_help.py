"""What ``placeholder-etl … --help`` shows: a type beside every option that takes a value, none
beside a flag (``--help`` included: typer shows it as ``--help <bool>`` unless told)."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from placeholder_etl.cli import app

COMMANDS = ["run", "serve-api", "serve", "verify", "setup-alerts"]
#: The value types typer shows: a Python type, a range of one, or the choices (a|b).
TYPE = re.compile(r"<(?:str|int|float|int range|float range|[a-z]+(?:\|[a-z]+)+)>")


def _help(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_shows_no_type_for_a_flag_and_no_stray_metavar(command) -> None:
    text = _help(*([command] if command else []))
    assert "<bool>" not in text
    assert [m for m in re.findall(r"<[^<>\s][^<>]*>", text) if not TYPE.fullmatch(m)] == []
    (line,) = [line for line in text.splitlines() if "--help" in line]
    assert re.search(r"--help\s+Show this message and exit\.", line), line
    if command == "run":
        for flag in ("--quiet", "--verbose", "--cache", "--report"):
            (line,) = [line for line in text.splitlines() if re.match(rf"\W*{flag}\s", line)]
            assert not TYPE.search(line), line
        assert re.search(r"--page-size\s+<int range>", text)
