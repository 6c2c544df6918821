"""A store, result file or directory from someone else must not run code or leak files:
read-only commands never unpickle, result paths stay inside the store's results directory,
modules beside a graph file do not shadow the ones conveyor imports, and what a run writes
is readable by its owner only."""

from __future__ import annotations

import json
import os
import pickle
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conveyor.errors import StoreCorruptError
from conveyor.graphfile import graph_from_dict
from conveyor.store.sqlite import SqliteStore

CLI = [sys.executable, "-m", "conveyor.cli"]
T0 = 1_000_000.0


class _Exploit:
    """Unpickling this runs a shell command (what a hostile store would hold)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (self.command,)


def one_done_task(db: Path, value: object, **options: Any) -> None:
    store = SqliteStore(db, **options)
    store.open_graph(graph_from_dict({"name": "g", "tasks": [{"id": "t", "cmd": "true"}]}), T0)
    claims = store.claim("w", 1, T0, 30)
    for c in claims:
        if c.id == "t":
            assert store.complete(c, value, T0)
    store.close()


def set_result(db: Path, kind: str, data: bytes) -> None:
    conn = sqlite3.connect(db)
    with conn:
        seq = "(SELECT seq FROM tasks WHERE id = 't')"
        n = conn.execute(f"UPDATE results SET kind = ?, data = ? WHERE seq = {seq}", (kind, data))
        n = n.rowcount
    conn.close()
    assert n == 1


def test_history_of_a_hostile_pickled_result_runs_no_code(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    one_done_task(db, (1, 2))  # a tuple is stored pickled
    marker = tmp_path / "pwned"
    set_result(db, "pickle", pickle.dumps(_Exploit(f"touch {marker}")))
    out = subprocess.run([*CLI, "history", "t", "--db", f"sqlite:///{db}"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "task t: done" in out.stdout
    assert not marker.exists()


@pytest.mark.parametrize("name", ["../outside.json", "/ABS/outside.json", "sub/../../outside.json"])
def test_result_file_outside_the_results_dir_is_refused(tmp_path: Path, name: str) -> None:
    db = tmp_path / "store" / "run.db"
    db.parent.mkdir()
    one_done_task(db, "x" * 100, inline_max=10)
    outside = tmp_path / "store" / "outside.json"
    outside.write_text(json.dumps("secret"))
    name = name.replace("/ABS", str(tmp_path / "store"))
    set_result(db, "file:json", name.encode())
    store = SqliteStore(db, inline_max=10)
    try:
        with pytest.raises(StoreCorruptError, match="outside"):
            store.result("t")
    finally:
        store.close()


def test_modules_beside_the_graph_file_do_not_shadow_conveyors_imports(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    marker = tmp_path / "shadowed"
    (proj / "sqlite3.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit(9)\n")
    (proj / "jobs.py").write_text("def work():\n    return 7\n")
    graph = {"name": "g", "tasks": [{"id": "a", "fn": "jobs:work"}]}
    (proj / "graph.json").write_text(json.dumps(graph))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    db = tmp_path / "run.db"
    out = subprocess.run([*CLI, "run", str(proj / "graph.json"), "--db", f"sqlite:///{db}"],
                         cwd=elsewhere, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert not marker.exists()
    store = SqliteStore(db)
    try:
        assert store.result("a").value == 7  # the graph's own module still resolves
    finally:
        store.close()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_store_results_and_events_are_private_to_their_owner(tmp_path: Path) -> None:
    (tmp_path / "jobs.py").write_text("def big():\n    return 'x' * 1000\n")
    graph = {"name": "g", "tasks": [{"id": "a", "fn": "jobs:big"}]}
    (tmp_path / "graph.json").write_text(json.dumps(graph))
    cmd = [*CLI, "run", "graph.json", "--db", "sqlite:///run.db?inline_max=10",
           "--events", "events.jsonl", "--quiet"]  # fmt: skip
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         preexec_fn=lambda: os.umask(0o022))  # fmt: skip
    assert out.returncode == 0, out.stderr
    results = tmp_path / "run.db.results"
    files = list(results.iterdir())
    assert files
    assert _mode(results) == 0o700
    for path in [tmp_path / "run.db", tmp_path / "events.jsonl", *files]:
        assert _mode(path) == 0o600, path
    for side in ("run.db-wal", "run.db-shm", "run.db.lock"):
        if (tmp_path / side).exists():
            assert _mode(tmp_path / side) == 0o600, side
