"""The runtime sits below the API and the CLI: none of its modules imports them, not even
lazily; graph building and the clock sit below the runtime."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "conveyor"


def imported(path: Path) -> set[str]:
    """Every ``conveyor`` module a file imports, anywhere in it (functions, TYPE_CHECKING)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n == "conveyor" or n.startswith("conveyor.")}


def above(names: set[str], *layers: str) -> list[str]:
    return sorted(n for n in names if any(n == x or n.startswith(x + ".") for x in layers))


RUNTIME = sorted((SRC / "runtime").glob("*.py"))


@pytest.mark.parametrize("path", RUNTIME, ids=lambda p: p.name)
def test_runtime_imports_neither_api_nor_cli(path: Path) -> None:
    cli = ("conveyor.cli", "conveyor.cli_store", "conveyor.cli_options")
    assert above(imported(path), "conveyor.api", *cli) == []


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("clock.py", ("conveyor",)),  # the bottom: standard library only
        ("testing.py", ("conveyor.runtime", "conveyor.store", "conveyor.api", "conveyor.cli")),
        ("graph.py", ("conveyor.runtime", "conveyor.store", "conveyor.api", "conveyor.cli")),
        ("limiter.py", ("conveyor.runtime", "conveyor.store", "conveyor.api", "conveyor.cli")),
    ],
)
def test_low_modules_import_nothing_above_them(module: str, forbidden: tuple[str, ...]) -> None:
    assert above(imported(SRC / module), *forbidden) == []
