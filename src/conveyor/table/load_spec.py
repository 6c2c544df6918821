"""Loading a table from a spec file: ``spec.py`` or ``spec.py:name``, as ``conveyor build``
and ``conveyor build --plan`` both do.

The file is run like a script (``runpy.run_path``, under the name ``<run_path>``, so its
``if __name__ == "__main__":`` block does not run), with its directory first on ``sys.path``
while it runs so it can import the modules beside it. Every way this can go wrong is one
``UsageError`` line: no such file, a file that does not import (with the exception and the
file:line where it was raised), a ``:name`` that is not a table, no table or several.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

from conveyor.errors import UsageError
from conveyor.table.spec import Table

__all__ = ["load_table", "split_spec"]


def split_spec(spec: str) -> tuple[Path, str | None]:
    """``"dir/spec.py:reviews"`` -> ``(Path("dir/spec.py"), "reviews")``; a spec without a
    ``:name`` (or a file whose own name holds a ``:``) -> ``(path, None)``."""
    if ":" not in spec or Path(spec).is_file():
        return Path(spec), None
    path, _, name = spec.rpartition(":")
    if not path:
        raise UsageError(f"{spec}: expected SPEC.py or SPEC.py:TABLE")
    if not name.isidentifier():
        raise UsageError(f"{spec}: {name!r} after ':' is not a name (SPEC.py:TABLE)")
    return Path(path), name


def load_table(spec: str) -> Table:
    """The ``Table`` that ``spec`` (``path`` or ``path:name``) names; see the module doc."""
    path, name = split_spec(spec)
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    if not path.is_file():
        raise UsageError(f"{path}: not a file (expected a Python file that defines a Table)")
    namespace = _run(path)
    tables = {k: v for k, v in namespace.items() if isinstance(v, Table) and not k.startswith("__")}
    if name is not None:
        if name not in namespace:  # the table's own name (Table("reviews")) names it too
            by_name = {id(t): t for t in tables.values() if t.name == name}
            if len(by_name) == 1:
                return next(iter(by_name.values()))
            raise UsageError(f"{path} defines no {name!r} (tables: {_names(tables)})")
        value = namespace[name]
        if not isinstance(value, Table):
            raise UsageError(f"{path}:{name} is a {type(value).__name__}, not a conveyor Table"
                             f" (tables: {_names(tables)})")  # fmt: skip
        return value
    distinct = {id(t): t for t in tables.values()}
    if not distinct:
        raise UsageError(f"{path} defines no conveyor Table (a global = conveyor.Table(...))")
    if len(distinct) > 1:
        raise UsageError(f"{path} defines several tables ({_names(tables)}):"
                         f" name one, e.g. {path}:{next(iter(tables))}")  # fmt: skip
    return next(iter(distinct.values()))


def _names(tables: dict[str, Table]) -> str:
    return ", ".join(tables) if tables else "none"


def _run(path: Path) -> dict[str, object]:
    import runpy

    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        return runpy.run_path(str(path))
    except (Exception, SystemExit) as exc:
        where = _where(exc, path)
        text = exc.msg if isinstance(exc, SyntaxError) else str(exc)
        what = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
        raise UsageError(f"{path} does not import: {what}{where}") from None
    finally:
        try:
            sys.path.remove(folder)
        except ValueError:  # the spec took it off itself
            pass


def _where(exc: BaseException, path: Path) -> str:
    """`` (file:line)`` where ``exc`` was raised, as the spec's author would fix it: the
    innermost frame in the spec's folder (the spec or a module beside it; a ``UsageError``
    from ``table.column(...)`` points at the declaration, not into conveyor), else the
    innermost frame that is not Python's import machinery or runpy; for a syntax error,
    where it is."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" ({_short(exc.filename)}:{exc.lineno})"
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not _machinery(f.filename)]
    folder = path.resolve().parent
    mine = [f for f in frames if Path(f.filename).resolve().is_relative_to(folder)]
    if not (mine or frames):
        return f" ({path})"
    last = (mine or frames)[-1]
    return f" ({_short(last.filename)}:{last.lineno})"


def _machinery(filename: str) -> bool:
    return (
        filename.startswith("<frozen ")
        or Path(filename).name == "runpy.py"
        or Path(filename) == Path(__file__)
    )


def _short(filename: str) -> str:
    """``filename`` relative to the cwd when it is under it (shorter to read)."""
    try:
        return str(Path(filename).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return filename
