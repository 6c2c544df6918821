"""PostgreSQL under concurrent writers: transactions that overlap where SQLite's single writer
never lets them. Each race is made to happen, not hoped for: the test holds a real lock that
pauses one real store transaction at a known point and lets the other run into it, polling
``pg_stat_activity`` (with a deadline) until both wait where they should."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from conveyor.model import TaskSpec, TaskState
from conveyor.store.base import Claim, Store
from conveyor.store.urls import open_store
from helpers import wait_until

T0 = 1_000_000.0
LEASE = 10.0


@pytest.fixture
def stores(pg_url: str) -> Iterator[Callable[[], Store]]:
    """Store handles on one fresh database, each with its own connection (another process)."""
    opened: list[Store] = []

    def new() -> Store:
        s = open_store(pg_url)
        opened.append(s)
        return s

    yield new
    for s in opened:
        s.close()


def waiting_on_locks(conn: psycopg.Connection[Any]) -> int:
    """Backends of this database that wait for a lock."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock'"
    ).fetchone()
    return int(row[0]) if row else 0


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed to the test thread
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


def test_pg_children_submitted_at_once_by_two_workers_both_land(
    pg_url: str, stores: Callable[[], Store]
) -> None:
    from conveyor.graphfile import graph_from_dict

    first = stores()
    first.open_graph(
        graph_from_dict({"name": "g", "tasks": [{"id": "p1", "cmd": "true"},
                                                 {"id": "p2", "cmd": "true"}]}),
        T0,
    )  # fmt: skip
    w1, w2 = stores(), stores()
    (p1,) = w1.claim("w1", 1, T0, LEASE)
    (p2,) = w2.claim("w2", 1, T0, LEASE)

    def submit(store: Store, parent: Claim) -> Any:
        need = {"p1": {"cpu": 1.0}, "p2": {"gpu": 1.0}}[parent.id]  # a new shape each
        kids = [TaskSpec(f"{parent.id}/{i}", cmd="true", resources=need) for i in range(3)]
        return lambda: store.submit_children(parent, kids, T0)

    with psycopg.connect(pg_url, autocommit=True) as holder:
        # Both submissions get as far as writing their specs, and wait there for this lock.
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE specs IN SHARE MODE")
        (t1, out1), (t2, out2) = in_thread(submit(w1, p1)), in_thread(submit(w2, p2))
        wait_until(lambda: waiting_on_locks(holder) >= 2, what="both submissions waiting")
        holder.execute("COMMIT")
        t1.join(30)
        t2.join(30)
    assert "error" not in out1 and "error" not in out2, (out1, out2)
    assert sorted(out1["value"] + out2["value"]) == [f"p{p}/{i}" for p in (1, 2) for i in range(3)]
    assert first.counts()["ready"] == 6
    assert first.result("p2/2").state is TaskState.READY
