"""Every option of the `fleetstream` CLI explains itself in --help."""

from __future__ import annotations

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from fleetstream.cli import app

pytestmark = pytest.mark.unit


def _options_without_help(command: Any, path: list[str], ctx: typer.Context) -> list[str]:
    found = [
        f"{' '.join(path)} {'/'.join(param.opts)}"
        for param in command.params
        if param.param_type_name == "option" and not param.help
    ]
    if hasattr(command, "list_commands"):  # a group
        for name in command.list_commands(ctx):
            found += _options_without_help(command.get_command(ctx, name), [*path, name], ctx)
    return found


def test_every_option_has_help() -> None:
    # `evaluate --bootstrap` had none.
    root = typer.main.get_command(app)
    assert _options_without_help(root, ["fleetstream"], typer.Context(root)) == []


def test_the_models_group_names_all_its_commands() -> None:
    # Its help said "List and promote" while `models shadow` was one of its commands.
    result = CliRunner().invoke(app, ["models", "--help"])
    assert result.exit_code == 0
    description = result.output.split("Options:")[0]
    for command in ("List", "promote", "shadow"):
        assert command in description, description
