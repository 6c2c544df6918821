"""Refuse ``executor="process"`` when it would re-run the user's script: the process pool's
``spawn`` workers import the main script again (so that functions defined in it can be found),
and a ``conveyor.run`` at its top level, outside ``if __name__ == "__main__":``, would run again
in each worker (each failing to start a pool of its own, or waiting forever for it).

``fork`` would not re-run the script but is unsafe in a process with threads, which a running
engine always has; so the pool keeps ``spawn`` and this module names the problem in one line,
before any process is started. Reads the script's source once per pool (``ast``).
"""

from __future__ import annotations

import ast
import sys
from types import FrameType
from typing import Any

from conveyor.errors import UsageError

__all__ = ["check_main_guard", "unguarded_main_line"]


def check_main_guard() -> None:
    """Raise ``UsageError`` when this call runs from a script's unguarded top-level code."""
    found = unguarded_main_line()
    if found is not None:
        path, line = found
        raise UsageError(
            f"{path}:{line}: executor='process' starts processes that import this script again, "
            "so this line would run again in each: put the script's top-level code under "
            "'if __name__ == \"__main__\":'"
        )


def unguarded_main_line() -> tuple[str, int] | None:
    """``(script, line)`` of the top-level statement of ``__main__`` that is running now, when
    a ``spawn``ed process would run it again (it is not under the ``__name__`` guard);
    ``None`` when there is no such statement on this thread's stack or it is guarded."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not isinstance(path, str):
        return None  # interactive, -c, stdin: nothing is imported again
    spec_name = getattr(getattr(main, "__spec__", None), "name", None) or ""
    if spec_name == "__main__" or spec_name.endswith(".__main__"):
        return None  # a package's __main__ (python -m pkg): multiprocessing skips it
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals is vars(main):
            break
        frame = frame.f_back
    if frame is None:
        return None  # not called from the script's top level (e.g. on another thread)
    line = frame.f_lineno
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return None
    return None if _guarded(tree.body, line) else (path, line)


def _guarded(body: list[Any], line: int) -> bool:
    """Whether ``line`` lies inside an ``if __name__ == "__main__":`` block of ``body``."""
    for stmt in body:
        end = stmt.end_lineno or stmt.lineno
        if not stmt.lineno <= line <= end:
            continue
        if isinstance(stmt, ast.If) and _is_main_test(stmt.test):
            return any(_contains(s, line) for s in stmt.body)
        inner = [getattr(stmt, name, None) for name in ("body", "orelse", "finalbody", "handlers")]
        blocks: list[Any] = [s for b in inner if isinstance(b, list) for s in b]
        return _guarded(blocks, line)
    return False


def _contains(stmt: Any, line: int) -> bool:
    first: int = stmt.lineno
    return first <= line <= (stmt.end_lineno or first)


def _is_main_test(test: ast.expr) -> bool:
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return False
    if not isinstance(test.ops[0], ast.Eq):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s.id for s in sides if isinstance(s, ast.Name)]
    consts = [s.value for s in sides if isinstance(s, ast.Constant)]
    return names == ["__name__"] and consts == ["__main__"]
