"""What a durable store leaves on disk: result files of tasks run again or of a replaced graph
go with ``prune`` (files still named or still being written stay), and no ``.lock`` file
outlives the store's last user."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conveyor.graphfile import graph_from_dict
from conveyor.store.sqlite import SqliteStore

CLI = [sys.executable, "-m", "conveyor.cli"]
T0 = 1_000_000.0


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out


def big_results(tmp_path: Path, file: str, graph: str, n: int) -> str:
    """A graph file of ``n`` tasks ``t0..`` whose results are files (``[i + 100] * 1000``)."""
    (tmp_path / "jobs.py").write_text("def big(i):\n    return [i] * 1000\n")
    tasks = [{"id": f"t{i}", "fn": "jobs:big", "args": [i + 100]} for i in range(n)]
    (tmp_path / file).write_text(json.dumps({"name": graph, "tasks": tasks}))
    return file


DB = "sqlite:///run.db?inline_max=100"


def prune_checked(tmp_path: Path, before: int, gone: int) -> SqliteStore:
    """``conveyor prune`` where ``before`` result files are removes ``gone`` of them (and says
    so); returns the store, open (the caller closes it)."""
    results = tmp_path / "run.db.results"
    assert len(list(results.iterdir())) == before
    out = cli("prune", "--db", DB, cwd=tmp_path)
    assert f"{gone} result files" in out.stderr
    assert len(list(results.iterdir())) == before - gone
    return SqliteStore(tmp_path / "run.db", inline_max=100)


def test_prune_removes_result_files_of_a_replaced_graph(tmp_path: Path) -> None:
    cli("run", big_results(tmp_path, "first.json", "first", 5), "--db", DB, "-q", cwd=tmp_path)
    second = big_results(tmp_path, "second.json", "second", 2)
    cli("run", second, "--db", DB, "--quiet", "--replace", cwd=tmp_path)
    # the first graph's files are still there (task numbers are never reused: no name clashes)
    store = prune_checked(tmp_path, before=7, gone=5)
    try:
        assert store.result("t1").value == [101] * 1000  # the second graph's results remain
    finally:
        store.close()


def test_prune_removes_result_files_of_tasks_removed_from_their_graph(tmp_path: Path) -> None:
    """A task an edited graph leaves out is ``removed``: its result is never read again (added
    back, it runs again), so ``prune`` drops its row and its file; the others stay."""
    cli("run", big_results(tmp_path, "g.json", "g", 3), "--db", DB, "-q", cwd=tmp_path)
    cli("run", big_results(tmp_path, "g.json", "g", 1), "--db", DB, "-q", cwd=tmp_path)  # t1, t2 go
    store = prune_checked(tmp_path, before=3, gone=2)
    try:
        assert store.result("t0").value == [100] * 1000
        assert store.task_info("t1")["state"] == "removed"
    finally:
        store.close()


def test_prune_keeps_files_named_or_being_written_and_foreign_files(tmp_path: Path) -> None:
    graph = graph_from_dict(
        {"name": "g", "tasks": [{"id": "a", "cmd": "x"}, {"id": "b", "cmd": "y"}]}
    )
    store = SqliteStore(tmp_path / "run.db", inline_max=10)
    try:
        store.open_graph(graph, T0)
        a, b = store.claim("w", 2, T0, 30)
        assert store.complete(a, "x" * 100, T0)
        results = tmp_path / "run.db.results"
        (named,) = [p.name for p in results.iterdir()]
        in_flight = f"{b.handle}-{b.token}.json"  # b's completion wrote it, not yet committed
        leftovers = ["999-1.json", f"998-2.pickle.tmp{4242}"]
        for name in [in_flight, *leftovers, "notes.txt"]:
            (results / name).write_text('"x"')
        assert store.prune_results() == (2, 6)
        assert sorted(p.name for p in results.iterdir()) == sorted([named, in_flight, "notes.txt"])
    finally:
        store.close()


def test_sqlite_lock_file_is_removed_by_the_stores_last_user(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    lock = tmp_path / "run.db.lock"
    first, second = SqliteStore(db), SqliteStore(db)
    first.meta_set("k", "1")
    first.close()
    second.meta_set("k", "2")  # still writes after the first one removed the file
    assert lock.exists()
    second.close()
    assert not lock.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.db"]
