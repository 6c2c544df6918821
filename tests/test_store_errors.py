"""Bad URLs and broken databases: a StoreError with a one-line message, never a traceback, and
through the CLI exit code 2."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor.errors import (
    GraphMismatchError,
    StoreCorruptError,
    StoreError,
    StoreLockedError,
    StoreUnreachableError,
)
from conveyor.graphfile import graph_from_dict
from conveyor.store.urls import open_store


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


@pytest.mark.parametrize(
    "url",
    ["sqlite://run.db", "sqlite:///", "sqlite:///nowhere/at/all/run.db", "redis://x",
     "sqlite:///run.db?timeout=soon"],
)  # fmt: skip
def test_store_bad_url_is_a_store_error(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError) as info:
        open_store(url)
    assert "\n" not in str(info.value)


def test_store_unreachable_postgres_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreUnreachableError, match="cannot connect"):
        open_store(f"postgresql://nobody@/db?host={tmp_path}&connect_timeout=2")


def test_store_corrupt_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run.db").write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreCorruptError, match="not a usable SQLite database"):
        open_store(f"sqlite:///{tmp_path}/run.db")


def test_store_foreign_sqlite_db_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "other.db")
    conn.execute("CREATE TABLE invoices (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreCorruptError, match="not a conveyor store"):
        open_store(f"sqlite:///{tmp_path}/other.db")


def test_store_locked_file_is_a_clear_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/run.db?timeout=0.2"
    open_store(url).close()
    holder = sqlite3.connect(tmp_path / "run.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another program holds the write lock
    store = open_store(url)
    g = graph_from_dict({"name": "g", "tasks": [{"id": "a"}]})
    with pytest.raises(StoreLockedError, match="locked"):
        store.open_graph(g, 0.0)
    holder.execute("ROLLBACK")
    holder.close()
    assert store.open_graph(g, 0.0).added == 1  # nothing half-written before
    store.close()


def test_store_mismatch_through_the_cli_exits_2(tmp_path: Path) -> None:
    for name in ("first", "second"):
        (tmp_path / f"{name}.json").write_text(json.dumps({"tasks": [{"id": "a"}]}))
    db = f"sqlite:///{tmp_path}/run.db"
    assert cli("submit", "first.json", "--db", db, cwd=tmp_path).returncode == 0
    out = cli("submit", "second.json", "--db", db, cwd=tmp_path)
    assert out.returncode == 2
    assert "unfinished work of graph 'first'" in out.stderr and "Traceback" not in out.stderr
    assert cli("submit", "second.json", "--db", db, "--replace", cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("args", [["status"], ["history", "a"], ["worker", "--idle-exit", "1"]])
def test_store_cli_errors_are_one_line(args: list[str], tmp_path: Path) -> None:
    (tmp_path / "bad.db").write_bytes(b"garbage" * 1000)
    out = cli(*args, "--db", f"sqlite:///{tmp_path}/bad.db", cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_store_graph_mismatch_is_a_store_error() -> None:
    assert issubclass(GraphMismatchError, StoreError)
