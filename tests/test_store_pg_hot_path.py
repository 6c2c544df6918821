"""The PostgreSQL claim/complete transaction writes as little as it may (issue 16, 9 and 9b):
a no-op completed in the claim that takes it is one update of its row, not two; the release of
a completion's children writes their ``task_ready`` audit rows itself, after the rows of the
rest of the transaction, and emits what it wrote; audit rows go in as one JSON statement and
come back as they went in, whatever their text."""

from __future__ import annotations

from typing import Any

import psycopg

from conveyor.model import GraphSpec, TaskSpec
from conveyor.store.base import WorkerProfile
from conveyor.store.urls import open_store

T0 = 1_000_000.0


def _updates(store: Any) -> int:
    """Row updates of the tasks table so far, this session's flushed first."""
    conn = store.io.conn
    conn.execute("SELECT pg_stat_force_next_flush()")  # flushed once the session is idle
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute("SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'tasks'")
    return int(row.fetchone()[0])


def test_pg_noops_completed_in_their_claim_are_one_update_each(pg_url: str) -> None:
    n = 40
    store = open_store(pg_url)
    try:
        store.open_graph(GraphSpec("g", [TaskSpec(f"n{i:02d}") for i in range(n)]), T0)
        before = _updates(store)
        got = []
        while (claim := store.claim_one("w", T0 + 1, 30.0)) is not None:
            got.append(claim)
        assert len(got) == n and all(c.extra.get("committed") for c in got)  # completed
        assert _updates(store) - before == n  # two each (to running, then to done) before
        assert store.counts()["done"] == n
        with psycopg.connect(pg_url) as c:
            rows = c.execute(
                "SELECT DISTINCT attempt, token, worker, lease_until, error FROM tasks"
            ).fetchall()
        assert rows == [(1, 1, "w", None, None)]
        kinds = [e["event"] for _i, e in store.events_after(0, 10_000)]
        assert kinds.count("task_started") == kinds.count("task_finished") == n
    finally:
        store.close()


def test_pg_release_writes_and_emits_task_ready_after_the_rest(pg_url: str) -> None:
    store = open_store(pg_url)
    emitted: list[dict[str, Any]] = []
    try:
        kids = [TaskSpec(f"k{i}", fn="json:dumps", args=(i,), deps=("p",)) for i in range(3)]
        store.open_graph(GraphSpec("g", [TaskSpec("p", fn="json:dumps", args=(0,)), *kids]), T0)
        store.configure(WorkerProfile(complete_noops=False))
        claim = store.claim_one("w", T0 + 1, 30.0)
        assert claim is not None and claim.id == "p"
        after = store.events_after(0, 10_000)[-1][0]
        store.emit = emitted.append
        assert store.complete_many([(claim, "v")], T0 + 2) == [True]
        stored = [e for _i, e in store.events_after(after, 10_000)]
        assert [(e["event"], e["task"]) for e in stored] == [
            ("task_finished", "p"), ("task_ready", "k0"), ("task_ready", "k1"),
            ("task_ready", "k2"),
        ]  # fmt: skip
        assert stored[1]["ts"] >= stored[0]["ts"]
        assert emitted == stored
        assert store.counts()["ready"] == 3
    finally:
        store.close()


def test_pg_audit_rows_keep_their_text_and_order(pg_url: str) -> None:
    store = open_store(pg_url)
    odd = 'tab\there, line\nbreak, back\\slash, "quotes", \'single\', é ✓ \u2028 {"x": 1}'
    try:
        tasks = [TaskSpec(f"t{i}", fn="json:dumps", args=(i,)) for i in range(3)]
        store.open_graph(GraphSpec("g", tasks), T0)
        store.configure(WorkerProfile(complete_noops=False, max_batch=3))
        claims = store.claim("w", 3, T0 + 1, 30.0, None)
        after = store.events_after(0, 10_000)[-1][0]
        # Two hand-backs in one transaction: their rows go in as one statement.
        assert store.hand_back(claims[:2], T0 + 2, odd) == [True, True]
        assert store.fail(claims[2], odd, T0 + 3, None)  # a single row
        got = [e for _i, e in store.events_after(after, 10_000)]
        assert [(e["event"], e["task"]) for e in got] == [
            ("task_released", "t0"), ("task_released", "t1"), ("task_failed", "t2"),
        ]  # fmt: skip
        assert [got[0]["reason"], got[1]["reason"], got[2]["error"]] == [odd] * 3
        assert [(e["from"], e["to"]) for e in got] == [
            ("running", "ready"), ("running", "ready"), ("running", "failed"),
        ]  # fmt: skip
        assert {e["worker"] for e in got} == {"w"} and {e["attempt"] for e in got} == {1}
    finally:
        store.close()
