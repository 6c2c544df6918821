"""The layer order that docs/architecture.md states, enforced: a module imports only from its
own layer or the layers below it (every import counts, including those inside functions and
under ``TYPE_CHECKING``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "conveyor"
ARCHITECTURE = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def stated_layers() -> list[list[str]]:
    """The layers as ``docs/architecture.md`` lists them, top first: the fenced block under
    "## Layers", one layer a line, ``name: modules`` with modules separated by spaces."""
    text = ARCHITECTURE.read_text()
    block = text.split("## Layers", 1)[1].split("```", 2)[1]
    layers = []
    for line in block.strip().splitlines():
        _label, _, mods = line.partition(":")
        layers.append(mods.split("#")[0].split())
    return layers


def layer_of(module: str, layers: list[list[str]]) -> int | None:
    """The layer index of ``conveyor.x.y`` (0 = bottom), by the longest stated prefix."""
    name = module.removeprefix("conveyor.")
    best: tuple[int, int] | None = None
    for depth, mods in enumerate(reversed(layers)):
        for m in mods:
            m = m.rstrip("/").replace("/", ".").removesuffix(".py")
            if (name == m or name.startswith(m + ".")) and (best is None or len(m) > best[0]):
                best = (len(m), depth)
    return None if best is None else best[1]


def modules() -> list[str]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.append(".".join(parts))
    return out


def imports_of(module: str) -> list[tuple[int, str]]:
    path = SRC.parent / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = SRC.parent / module.replace(".", "/") / "__init__.py"
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            if node.module == "conveyor":  # ``from conveyor import api`` names a module
                out.extend((node.lineno, f"conveyor.{a.name}") for a in node.names)
        elif isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
    return [(n, m) for n, m in out if m == "conveyor" or m.startswith("conveyor.")]


def test_every_module_has_a_stated_layer() -> None:
    layers = stated_layers()
    missing = [m for m in modules() if m != "conveyor" and layer_of(m, layers) is None]
    assert not missing, f"modules docs/architecture.md does not place in a layer: {missing}"


@pytest.mark.parametrize("module", [m for m in modules() if m != "conveyor"])
def test_imports_point_down(module: str) -> None:
    layers = stated_layers()
    mine = layer_of(module, layers)
    assert mine is not None
    upward = [
        f"line {line}: {target} (layer {layer_of(target, layers)} > {mine})"
        for line, target in imports_of(module)
        if (layer_of(target, layers) or 0) > mine
    ]
    assert not upward, f"{module} imports upward: {upward}"


#: A module longer than this says why in a ``Size:`` paragraph of its docstring.
LONG_MODULE = 450


def test_long_modules_say_why_they_are_long() -> None:
    unexplained = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        if text.count("\n") > LONG_MODULE:
            doc = ast.get_docstring(ast.parse(text)) or ""
            if "\nSize: " not in doc:
                unexplained.append(f"{path.relative_to(SRC)} ({text.count(chr(10))} lines)")
    assert not unexplained, unexplained
