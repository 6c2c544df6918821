"""What is particular to the SQLite store: its file settings, query plans, result files."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from conveyor.graphfile import graph_from_dict
from conveyor.model import GraphSpec
from conveyor.store.sqlite import SqliteIo, SqliteStore
from conveyor.store.sqlqueries import load_migrations, load_queries

T0 = 1_000_000.0
HOT_PATH = ["ready_window", "claim_seqs", "specs_of", "complete_task", "release_children",
            "complete_seqs", "release_children_of", "due_retries", "renew_leases",
            "expired_leases", "results_of", "any_ready", "next_wakeup"]  # fmt: skip


def small_graph(n: int = 3) -> GraphSpec:
    tasks = [{"id": f"t{i}", "cmd": "true", "deps": [f"t{i - 1}"] if i else []} for i in range(n)]
    return graph_from_dict({"name": "g", "tasks": tasks})


def test_sqlite_store_uses_wal_and_records_its_schema_version(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "run.db")
    store.close()
    conn = sqlite3.connect(tmp_path / "run.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    latest = load_migrations("sqlite", SqliteIo.types)[-1][0]
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(latest,)]
    conn.close()
    SqliteStore(tmp_path / "run.db").close()  # reopening migrates nothing and keeps the data


def test_sqlite_hot_path_queries_never_scan_the_tasks_table(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "run.db")
    store.open_graph(small_graph(), T0)
    queries = load_queries("sqlite")
    params = {"seq": 1, "seqs": "[1]", "ids": '["t0"]', "limit": 4, "now": T0, "token": 1,
              "worker": "w", "lease_until": T0, "kind": "json", "data": b"1"}  # fmt: skip
    conn = store.io.conn
    assert conn is not None
    for name in HOT_PATH:
        plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + queries[name], params)]
        scans = [p for p in plan if re.match(r"SCAN (tasks|edges|specs|results|t|e)\b", p)
                 and "INDEX" not in p]  # fmt: skip
        assert not scans, f"{name}: {plan}"
    store.close()


def test_sqlite_large_results_live_in_files_beside_the_db(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "run.db", inline_max=100)
    store.open_graph(small_graph(2), T0)
    (a,) = store.claim("w", 1, T0, 30)
    big = {"blob": "x" * 1000}
    assert store.complete(a, big, T0)
    files = list((tmp_path / "run.db.results").iterdir())
    assert len(files) == 1
    (b,) = store.claim("w", 1, T0, 30)
    assert store.parent_values(b) == {"t0": big}
    store.close()


def test_sqlite_url_options_are_parsed(tmp_path: Path) -> None:
    store = SqliteStore.from_url(f"sqlite:///{tmp_path}/run.db?timeout=0.5&results=pickle&batch=4")
    assert store.io.timeout == 0.5 and store.codec.mode == "pickle"
    assert store.worker.max_batch == 4
    store.close()


def test_sqlite_store_of_schema_3_numbers_new_tasks_after_its_old_ones(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "run.db")
    store.open_graph(small_graph(3), T0)
    old = store.claim("old", 1, T0, 30.0)[0]
    store.close()
    conn = sqlite3.connect(tmp_path / "run.db")  # as the previous conveyor left it
    conn.execute("DELETE FROM meta WHERE key = 'last_seq'")
    conn.execute("UPDATE schema_version SET version = 3")
    conn.execute("DROP TABLE preempt_requests")  # what migration 5 adds
    conn.execute("DROP TABLE owed")  # what migration 6 adds
    conn.execute("ALTER TABLE tasks DROP COLUMN preempted")
    conn.execute("ALTER TABLE tasks DROP COLUMN preempted_at")
    conn.commit()
    conn.close()
    store = SqliteStore(tmp_path / "run.db")  # migrates
    try:
        other = graph_from_dict({"name": "other", "tasks": [{"id": "t0", "cmd": "true"}]})
        store.open_graph(other, T0 + 1, replace=True)
        new = store.claim("new", 1, T0 + 1, 30.0)[0]
        assert new.id == old.id and new.handle > 3
        assert not store.complete(old, "stale", T0 + 2)
    finally:
        store.close()


def test_bare_specs_of_structure_only_graphs_decode_as_the_full_encoding() -> None:
    """Graph files of ids, parents and runtimes are submitted with ``encode_bare_spec``: what a
    worker decodes must be the task the full encoding gives."""
    import dataclasses

    from conveyor.graphfile import load_graph
    from conveyor.model import TaskSpec
    from conveyor.store.codec import decode_spec, encode_bare_spec, encode_spec
    from helpers import workflow_files

    checked = 0
    for path in workflow_files():
        graph = load_graph(path)
        assert graph.structure_only, path
        for t in graph.tasks:
            bare, full = decode_spec(t.id, encode_bare_spec(t)), decode_spec(t.id, encode_spec(t))
            for f in dataclasses.fields(TaskSpec):
                assert getattr(bare, f.name) == getattr(full, f.name), (t.id, f.name)
            checked += 1
    assert checked > 500  # the vendored WfCommons graphs


def test_sqlite_audit_rows_written_by_runs_come_back_as_given_in_order(tmp_path: Path) -> None:
    # Runs of rows alike but for their task go in as one statement each (insert_audit_run):
    # any field that differs (attempt, worker, extra, ts ...) must start a new run.
    store = SqliteStore(tmp_path / "run.db")
    base = {"ts": T0, "event": "task_started", "from_state": 1, "to_state": 2, "worker": "w",
            "attempt": 1, "error": None, "extra": None}  # fmt: skip
    rows = [{**base, "task": f"a{i}"} for i in range(5)]
    rows += [{**base, "task": "b0", "attempt": 2}, {**base, "task": "b1", "worker": "v"}]
    rows += [{**base, "task": f"c{i}", "attempt": 3 if i == 2 else 1} for i in range(6)]
    rows += [{**base, "task": f"d{i}", "ts": T0 + 1, "extra": '{"k": 1}'} for i in range(4)]
    rows += [{**base, "task": None, "event": "worker_lost", "worker": f"x{i}"} for i in range(4)]
    sub = {**base, "event": "task_submitted", "from_state": None, "to_state": 0, "attempt": None}
    ready = {**sub, "event": "task_ready", "from_state": 0, "to_state": 1}
    for i in range(5):  # pairs per task (a submission), the last pair's task differs within
        rows += [{**sub, "task": f"p{i}"}, {**ready, "task": f"p{i}" if i < 4 else "q"}]
    for i in range(3):  # pairs, then a row that would continue them but for its kind
        rows += [{**sub, "task": f"r{i}"}, {**ready, "task": f"r{i}"}]
    rows += [{**sub, "task": "s0", "error": "x"}, {**ready, "task": "s0"}]
    store.db.atomic(lambda tx: tx.insert("insert_audit", [dict(r) for r in rows]))
    conn = store.io.conn
    assert conn is not None
    got = conn.execute(
        "SELECT ts, event, task, from_state, to_state, worker, attempt, error, extra FROM audit "
        "WHERE ts >= ? ORDER BY id",
        (T0,),
    ).fetchall()
    keys = ["ts", "event", "task", "from_state", "to_state", "worker", "attempt", "error", "extra"]
    assert got == [tuple(r[k] for k in keys) for r in rows]
    store.close()


def test_sqlite_worker_claims_a_batch_after_a_few_fast_tasks_and_not_after_slow_ones(
    tmp_path: Path,
) -> None:
    # Batches start once FAST_AFTER completions were fast (the smoothing starts from the
    # first completion, not from a 1 s guess that took ~24 fast tasks to wear off); a slow
    # first task keeps claims one at a time.
    from conveyor.store.base import WorkerProfile
    from conveyor.store.sqlclaim import FAST_AFTER

    tasks = [{"id": f"t{i}", "cmd": "true"} for i in range(100)]
    for took, batched in ((0.001, True), (1.0, False)):
        store = SqliteStore(tmp_path / f"run{took}.db")
        store.configure(WorkerProfile(lease_s=30.0))
        store.open_graph(graph_from_dict({"name": "g", "tasks": tasks}), T0)
        now = T0
        for _ in range(FAST_AFTER):
            claim = store.claim_one("w", now, 30.0)
            assert claim is not None and store.claims_ahead() == 0
            now += took
            assert store.complete(claim, None, now)
        assert store.claim_one("w", now, 30.0) is not None
        assert (store.claims_ahead() > 0) is batched
        store.close()
