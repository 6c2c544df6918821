"""Every option's help text reaches ``--help`` whole: typer renders help through rich, whose
markup eats a ``[word: ...]`` in square brackets (``--workers`` once showed "Tasks run at
once ." with its default gone)."""

from __future__ import annotations

import re
from typing import Any

import typer
from typer.testing import CliRunner

from conveyor.cli import make_app


def _commands(group: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every leaf command's path below ``group`` (typer's commands carry ``commands`` when
    they are groups; typer vendors its own click, so no ``isinstance`` on click's classes)."""
    found: list[tuple[str, ...]] = []
    for name, command in sorted(group.commands.items()):
        if hasattr(command, "commands"):
            found += _commands(command, (*path, name))
        else:
            found.append((*path, name))
    return found


def _words(text: str) -> str:
    """The text as rich prints it (an escaped ``\\[`` is a ``[``), without rich's box drawing
    and every run of white space."""
    return re.sub(r"[\s│╭╮╰╯─]+", "", text.replace("\\[", "["))


def test_every_option_help_is_printed_whole() -> None:
    app = make_app()
    root = typer.main.get_command(app)
    runner = CliRunner()
    checked = 0
    missing: list[tuple[tuple[str, ...], str | None, str]] = []
    for path in _commands(root):
        command: Any = root
        for name in path:
            command = command.commands[name]
        shown = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert shown.exit_code == 0, (path, shown.output)
        printed = _words(shown.output)
        for param in command.params:
            help_text = getattr(param, "help", None)
            if help_text:
                if _words(help_text) not in printed:
                    missing.append((path, param.name, help_text))
                checked += 1
    assert missing == []
    assert checked > 50  # every command's options were looked at, not none
