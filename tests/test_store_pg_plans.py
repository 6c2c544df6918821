"""The plans PostgreSQL picks for the completion path: a seek per task or child, never a read
of every task, nor of every running one (those grow with N and with the workers: issue 16).
Checked with EXPLAIN on a real store after its submission's ANALYZE."""

from __future__ import annotations

from typing import Any

import psycopg

from conveyor.graphfile import graph_from_dict
from conveyor.store.base import WorkerProfile
from conveyor.store.sqlqueries import load_queries
from conveyor.store.sqlsteps import OWED_FOLD
from conveyor.store.urls import open_store

T0 = 1_000_000.0


def _plan(conn: psycopg.Connection[Any], name: str, **params: Any) -> str:
    with conn.transaction(force_rollback=True):
        rows = conn.execute("EXPLAIN " + load_queries("postgres")[name], params).fetchall()
    return "\n".join(r[0] for r in rows)


def test_pg_completions_seek_tasks_by_key(pg_url: str) -> None:
    # 400 parents with 49 children each, and 8 children with fan-ins of 50: a table large
    # enough that reading it whole costs more than seeking what a batch names, and a batch
    # of 64 parents with thousands of children (the planner then joined them with every task).
    tasks: list[dict[str, Any]] = [{"id": f"p{i}"} for i in range(400)]
    tasks += [{"id": f"c{j}", "deps": [f"p{j % 400}"]} for j in range(19_600)]
    tasks += [{"id": f"f{g}", "deps": [f"p{i}" for i in range(g, 400, 8)]} for g in range(8)]
    store = open_store(pg_url)
    try:
        store.open_graph(graph_from_dict({"name": "plans", "tasks": tasks}), T0)
        store.configure(WorkerProfile(complete_noops=False))
        claims = store.claim("w", 64, T0, 30.0)
        seqs = [c.handle for c in claims]
        tokens = [c.token for c in claims]
    finally:
        store.close()
    with psycopg.connect(pg_url) as conn:
        plans = {
            "complete_task": _plan(conn, "complete_task", seq=seqs[0], token=tokens[0], now=T0),
            "complete_claims": _plan(conn, "complete_claims", seqs=seqs, tokens=tokens, now=T0),
            "complete_seqs": _plan(conn, "complete_seqs", seqs=seqs, now=T0),
            "release_children_of": _plan(
                conn, "release_children_of", seqs=seqs, now=T0, owed_max=OWED_FOLD
            ),
        }
    for name, plan in plans.items():
        assert "Seq Scan on tasks" not in plan, f"{name} reads every task:\n{plan}"
        assert "tasks_running" not in plan, f"{name} reads every running task:\n{plan}"
