# -- durable stores (issue 4): a PostgreSQL server for the session, stores per backend --------
import os as _os
import sys as _sys
from collections.abc import Callable as _Callable
from collections.abc import Iterator as _Iterator
from typing import Any as _Any

import pytest as _pytest

_sys.path.insert(0, _os.path.dirname(__file__))

from pg import PgServer as _PgServer
from pg import find_bin as _find_pg_bin


def _cache_children_bytecode() -> None:
    """Every process a test starts (a conveyor command, a worker, a script) imports conveyor.
    Where ``PYTHONDONTWRITEBYTECODE`` is set (CI's sandbox sets it) each of them compiled
    conveyor from source, ~0.15 CPU-s a process over hundreds of processes; they share one
    bytecode cache outside the source tree instead, as processes on a machine that caches
    bytecode do. This process is left as it started (both variables are read at start-up)."""
    import tempfile

    if "PYTHONPYCACHEPREFIX" not in _os.environ:
        prefix = _os.path.join(tempfile.gettempdir(), f"conveyor-tests-pycache-{_os.getuid()}")
        _os.environ["PYTHONPYCACHEPREFIX"] = prefix
        _os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


_cache_children_bytecode()


@_pytest.fixture(scope="session")
def pg_server() -> _Iterator[_PgServer]:
    """A PostgreSQL server the session starts itself (skipped only without the binaries)."""
    bindir = _find_pg_bin()
    if bindir is None:
        _pytest.skip("PostgreSQL binaries not found (apt-get install -y postgresql)")
    server = _PgServer(bindir)
    try:
        server.start()
    except Exception:
        server.stop()
        raise
    yield server
    server.stop()


@_pytest.fixture
def pg_url(pg_server: _PgServer) -> str:
    """A fresh database (a clone of the empty template) for one test."""
    return pg_server.new_database()


@_pytest.fixture(params=["memory", "sqlite", "postgres"])
def store_url(request: _pytest.FixtureRequest, tmp_path: _Any) -> str:
    """One URL per backend; the shared store suite runs on each."""
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/run.db"
    return str(request.getfixturevalue("pg_url"))


@_pytest.fixture
def open_url() -> _Iterator[_Callable[[str], _Any]]:
    """Open stores by URL (a second one on the same URL acts as another process); all closed
    at the end of the test."""
    from conveyor.store.urls import open_store

    opened: list[_Any] = []

    def opener(url: str) -> _Any:
        store = open_store(url)
        opened.append(store)
        return store

    yield opener
    for s in opened:
        s.close()
