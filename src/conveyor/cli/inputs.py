"""What commands open: graph files (with their functions importable) and durable stores."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from conveyor.errors import UsageError

if TYPE_CHECKING:
    from conveyor.model import GraphSpec
    from conveyor.store.base import Store


def import_from(*dirs: str | Path | None) -> None:
    """Let ``fn: "mod:func"`` names import from ``dirs`` (the graph file's folder, the cwd).
    Appended, not put first: a ``yaml.py`` or ``sqlite3.py`` beside a graph file must not
    shadow the modules conveyor and the standard library import."""
    for d in dirs:
        if d and str(d) not in sys.path:
            sys.path.append(str(d))


def graph_file(path: Path) -> Path:
    """``path``, with the functions it names (``"mod:func"``) importable beside it and in the
    cwd. For ``open_run``, which parses and validates it once."""
    import_from(path.resolve().parent, Path.cwd())
    return path


def load_graph_file(path: Path) -> GraphSpec:
    """Parse and validate a graph file (see ``graph_file``)."""
    from conveyor.graphfile import load_graph

    return load_graph(graph_file(path))


def durable(url: str) -> str:
    """``url`` if it names a store other processes can share (``memory://`` cannot be)."""
    if not url.startswith(("sqlite:", "postgresql:", "postgres:")):
        raise UsageError(f"--db must be sqlite:///path or postgresql://..., not {url!r}")
    return url


def existing_store(url: str) -> str:
    """``url`` if it names a durable store that exists: a mistyped SQLite path, or a
    PostgreSQL database without conveyor's tables, is refused before anything is created."""
    from conveyor.store.urls import redact, store_missing

    why = store_missing(durable(url))
    if why is not None:
        shown = redact(url)
        raise UsageError(
            f"{shown}: no store there ({why}): check --db, or "
            f"`conveyor submit FILE --db {shown}` first"
        )
    return url


@contextmanager
def durable_store(url: str, *, create: bool = False, readonly: bool = False) -> Iterator[Store]:
    """The durable store at ``url``, closed on the way out. Unless ``create`` (``submit``),
    it must exist already (``existing_store``): commands that read or change a run never
    make an empty store of a mistyped path. ``readonly``: on a connection that cannot write
    (the dashboard, the report)."""
    from conveyor.store.urls import open_store

    store = open_store(durable(url) if create else existing_store(url), readonly=readonly)
    try:
        yield store
    finally:
        store.close()
