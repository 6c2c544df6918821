"""``conveyor.core`` is pure: no threads, clocks, sockets, subprocesses, SQL or event loops, and
nothing of ``conveyor.store`` or ``conveyor.runtime``: decisions take state and ``now`` and
return decisions (docs/architecture.md, Layers)."""

from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import conveyor.core

FORBIDDEN = ("sqlite3", "asyncio", "threading", "time", "socket", "subprocess")
FORBIDDEN_OURS = ("conveyor.store", "conveyor.runtime")
CORE_DIR = Path(conveyor.core.__file__).parent
SRC_DIR = CORE_DIR.parents[1]
CORE_MODULES = sorted(
    f"conveyor.core.{m.name}" for m in pkgutil.iter_modules([str(CORE_DIR)]) if not m.ispkg
)


def _is_forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in (*FORBIDDEN, *FORBIDDEN_OURS))


def _imported_names(path: Path) -> list[str]:
    """Every module an ``import`` statement in ``path`` names, at any nesting level."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import inside conveyor.core
                base = "conveyor.core"
                if node.level > 1:
                    base = "conveyor"
                names.append(f"{base}.{node.module}" if node.module else base)
            elif node.module:
                names.append(node.module)
                names.extend(f"{node.module}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.append(str(node.args[0].value))
    return names


def test_core_modules_discovered_nonempty() -> None:
    assert {"conveyor.core.frontier", "conveyor.core.ordering", "conveyor.core.retry"} <= set(
        CORE_MODULES
    )


@pytest.mark.parametrize("path", sorted(CORE_DIR.glob("*.py")), ids=lambda p: p.name)
def test_core_source_imports_nothing_impure(path: Path) -> None:
    bad = [name for name in _imported_names(path) if _is_forbidden(name)]
    assert bad == [], f"{path.name} imports {bad}"


def _fresh_import(module: str) -> list[str]:
    """Import ``module`` in a fresh interpreter without site (so site's own imports, such as
    ``threading``, do not hide ours) and list the forbidden modules it pulled in.

    ``time`` is left out here: the import machinery itself loads it before any user code; the
    AST test above covers direct imports of ``time``.
    """
    code = (
        "import sys, json\n"
        f"sys.path.insert(0, {str(SRC_DIR)!r})\n"
        f"import {module}\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True
    )
    loaded = json.loads(out.stdout)
    return [m for m in loaded if _is_forbidden(m) and m.split(".")[0] != "time"]


def _params() -> list[object]:
    return [pytest.param(m, id=m) for m in CORE_MODULES]


@pytest.mark.parametrize("module", _params())
def test_core_module_fresh_import_loads_nothing_impure(module: str) -> None:
    assert _fresh_import(module) == []


def test_core_package_fresh_import_loads_no_store_or_runtime() -> None:
    loaded = _fresh_import("conveyor.core")
    assert loaded == []
