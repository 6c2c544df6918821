"""PostgreSQL under concurrent writers: transactions that overlap where SQLite's single writer
never lets them. Each race is made to happen, not hoped for: the test holds a real lock that
pauses one real store transaction at a known point and lets the other run into it, polling
``pg_stat_activity`` (with a deadline) until both wait where they should."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from conveyor.model import TaskSpec, TaskState
from conveyor.store.base import Claim, Store
from helpers import wait_until

T0 = 1_000_000.0
LEASE = 10.0


@pytest.fixture
def stores(pg_url: str, open_url: Callable[[str], Store]) -> Callable[[], Store]:
    """Store handles on one fresh database, each with its own connection (another process)."""
    return lambda: open_url(pg_url)


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


_HOLD_A = """
CREATE FUNCTION hold_a() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.event = 'task_finished' AND NEW.task = 'a' THEN
        PERFORM pg_advisory_xact_lock_shared(4242);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER hold_a AFTER INSERT ON audit FOR EACH ROW EXECUTE FUNCTION hold_a();
"""


def test_pg_events_follow_prints_rows_committed_out_of_id_order(
    pg_url: str, stores: Callable[[], Store], tmp_path: Path
) -> None:
    from conveyor.graphfile import graph_from_dict

    first = stores()
    first.open_graph(
        graph_from_dict({"name": "g", "tasks": [{"id": x, "cmd": "true"} for x in "abc"]}), T0
    )
    wa, wb = stores(), stores()
    (a,) = wa.claim("wa", 1, T0, LEASE)
    (b,) = wb.claim("wb", 1, T0, LEASE)
    out = tmp_path / "follow.jsonl"
    with out.open("w") as sink:
        follower = subprocess.Popen(
            [sys.executable, "-m", "conveyor.cli", "events", "--db", pg_url, "--follow"],
            stdout=sink, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def printed() -> list[tuple[str, str]]:
        lines = out.read_text().splitlines()
        return [(e["event"], e.get("task", "")) for e in map(json.loads, lines)]

    try:
        wait_until(
            lambda: ("task_started", "b") in printed(), what="the follower catching up", timeout=90
        )
        with psycopg.connect(pg_url, autocommit=True) as holder:
            holder.execute(_HOLD_A)  # a's completion waits after drawing its audit id
            holder.execute("SELECT pg_advisory_lock(4242)")
            ta, done_a = in_thread(lambda: wa.complete(a, None, T0 + 1))
            wait_until(lambda: waiting_on_locks(holder) >= 1, what="a's completion waiting")
            assert wb.complete(b, None, T0 + 2)  # a higher id, committed first
            wait_until(lambda: ("task_finished", "b") in printed(), what="b's completion")
            holder.execute("SELECT pg_advisory_unlock(4242)")
            ta.join(30)
        assert done_a == {"value": True}
        assert first.claim("w", 1, T0 + 3, LEASE)  # c: committed after a's completion
        wait_until(lambda: ("task_started", "c") in printed(), what="c's start")
        assert printed().count(("task_finished", "a")) == 1
        assert printed().count(("task_finished", "b")) == 1
    finally:
        follower.terminate()
        follower.wait(30)


def _audit_trigger(name: str, when: str, then: str) -> str:
    """SQL for a trigger on every audit row: ``then`` runs for the rows where ``when`` holds."""
    return f"""
CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF {when} THEN
        {then}
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER {name} AFTER INSERT ON audit FOR EACH ROW EXECUTE FUNCTION {name}();
"""


_FAIL_A = _audit_trigger(
    "fail_a",
    "NEW.event = 'task_finished' AND NEW.task = 'a'",
    "RAISE EXCEPTION 'refused by the test';",
)


def test_pg_event_feed_forgets_the_ids_of_rolled_back_transactions(
    pg_url: str, stores: Callable[[], Store]
) -> None:
    from conveyor.errors import StoreError
    from conveyor.graphfile import graph_from_dict
    from conveyor.store.sqlfeed import SqlEventFeed

    store = stores()
    store.open_graph(graph_from_dict({"name": "g", "tasks": [{"id": x, "cmd": "true"}
                                                             for x in "ab"]}), T0)  # fmt: skip
    feed = store.event_feed()
    assert isinstance(feed, SqlEventFeed)
    seen = feed.poll()
    a, b = store.claim("w", 2, T0, LEASE)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(_FAIL_A)
    with pytest.raises(StoreError, match="refused by the test"):
        store.complete(a, None, T0 + 1)  # drew an audit id, then rolled back
    assert store.complete(b, None, T0 + 2)
    seen += feed.poll()
    assert feed.gaps  # the rolled-back id, until its writer is known to have ended
    wait_until(lambda: not (feed.poll() or feed.gaps), what="the gap closing")
    events = [(e["event"], e.get("task")) for e in seen]
    assert events == [(e["event"], e.get("task")) for e in store.iter_events()]
    assert ("task_finished", "a") not in events and ("task_finished", "b") in events


def test_pg_a_completion_that_readies_a_child_wakes_an_idle_worker(
    stores: Callable[[], Store],
) -> None:
    """The NOTIFY goes out after the commit (its own transaction, see ``PostgresIo.begin``):
    the idle worker it wakes finds the child claimable."""
    from conveyor.graphfile import graph_from_dict

    busy, idle = stores(), stores()
    busy.open_graph(
        graph_from_dict({"name": "g", "tasks": [{"id": "p", "cmd": "true"},
                                                 {"id": "c", "cmd": "true", "deps": ["p"]}]}),
        T0,
    )  # fmt: skip
    assert idle.wait_for_work(0.0)  # the first call listens and says: look once more
    (p,) = busy.claim("w1", 1, T0, LEASE)
    assert busy.complete(p, None, T0 + 1)
    assert idle.wait_for_work(10.0)
    (c,) = idle.claim("w2", 1, T0 + 2, LEASE)
    assert c.id == "c"


def test_pg_a_worker_leaving_wakes_the_idle_ones(stores: Callable[[], Store]) -> None:
    """The last completion of a graph readies nothing, so it wakes no one; the worker that
    finished it leaves, and its leaving wakes the idle workers, which then see the graph
    finished at once (not at their next poll)."""
    from conveyor.graphfile import graph_from_dict

    last, idle = stores(), stores()
    last.open_graph(graph_from_dict({"name": "g", "tasks": [{"id": "p", "cmd": "true"}]}), T0)
    last.register_worker("w1", T0, {})
    assert idle.wait_for_work(0.0)  # the first call listens and says: look once more
    (p,) = last.claim("w1", 1, T0, LEASE)
    assert last.complete(p, None, T0 + 1)
    assert not idle.wait_for_work(0.0)  # the completion readied nothing: no signal
    last.unregister_worker("w1", T0 + 1)
    assert idle.wait_for_work(10.0)
    assert not idle.has_unfinished()


_HOLD_STARTS = _audit_trigger(
    "hold_starts", "NEW.event = 'task_started'", "PERFORM pg_advisory_xact_lock_shared(4243);"
)


def test_pg_a_claim_of_tasks_to_run_locks_only_the_rows_it_takes(
    pg_url: str, stores: Callable[[], Store]
) -> None:
    """Every row of a claim's ready window is locked (``FOR UPDATE SKIP LOCKED``) until its
    commit: rows locked and not taken would be skipped by every other worker meanwhile."""
    from conveyor.graphfile import graph_from_dict

    first = stores()
    tasks = [{"id": f"t{i}", "cmd": "true"} for i in range(50)]
    first.open_graph(graph_from_dict({"name": "g", "tasks": tasks}), T0)
    claimer = stores()
    with psycopg.connect(pg_url, autocommit=True) as holder:
        holder.execute(_HOLD_STARTS)  # the claim waits, its window locked, before it commits
        holder.execute("SELECT pg_advisory_lock(4243)")
        t, out = in_thread(lambda: claimer.claim("w", 2, T0, LEASE))
        wait_until(lambda: waiting_on_locks(holder) >= 1, what="the claim waiting")
        with holder.transaction():
            free = holder.execute(
                "SELECT count(*) FROM (SELECT seq FROM tasks WHERE state = %s "
                "FOR UPDATE SKIP LOCKED) AS r",
                (int(TaskState.READY),),
            ).fetchone()
        holder.execute("SELECT pg_advisory_unlock(4243)")
        t.join(30)
    assert len(out["value"]) == 2
    assert free == (48,)
