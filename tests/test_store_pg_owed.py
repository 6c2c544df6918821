"""PostgreSQL's owed releases (issue 16, point 9; docs/architecture.md "Owed releases"): a
completion never waits for a child row another transaction holds. What it cannot apply now is
owed (table ``owed``, written in its own transaction) and folded later: by the next release, by
a worker that finds nothing to claim, or by a resume before it rewrites waiting counts. Each
test holds a child's row lock itself (a transaction of its own, as another worker's release
would), so the skip happens every time, not by chance."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from conveyor.fingerprints import open_graph
from conveyor.graphfile import graph_from_dict
from conveyor.model import TaskState
from conveyor.store.base import Claim, Store

pytestmark = pytest.mark.postgres

T0 = 1_000_000.0
LEASE = 30.0
#: Seconds a completion may take while the test holds its child's row: far more than it needs,
#: far less than forever (the code before owed releases waited until the holder committed).
PATIENCE = 10.0


@pytest.fixture
def stores(pg_url: str, open_url: Callable[[str], Store]) -> Callable[[], Store]:
    """Store handles on one fresh database, each with its own connection (another process)."""
    return lambda: open_url(pg_url)


@contextmanager
def holding(pg_url: str, task: str) -> Iterator[None]:
    """The row of ``task`` locked by a transaction of its own until the block ends."""
    with psycopg.connect(pg_url) as holder:
        holder.execute("SELECT 1 FROM tasks WHERE id = %s FOR UPDATE", (task,))
        yield
        holder.rollback()


def complete_without_waiting(store: Store, claim: Claim, now: float) -> None:
    """Complete ``claim``; fail if that waited for a row lock (the failure ends the caller's
    ``holding`` block, and the waiting completion with it)."""
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.update(ok=store.complete(claim, None, now)))
    t.daemon = True
    t.start()
    t.join(PATIENCE)
    assert not t.is_alive(), f"completing {claim.id} waited for a row another transaction holds"
    assert out["ok"] is True


def owed(pg_url: str) -> list[tuple[str, int]]:
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute(
            "SELECT t.id, o.n FROM owed o JOIN tasks t ON t.seq = o.child ORDER BY o.id"
        ).fetchall()
    return [(str(r[0]), int(r[1])) for r in rows]


def fan_in(store: Store, n: int) -> None:
    tasks: list[dict[str, Any]] = [{"id": f"p{i}", "cmd": "true"} for i in range(n)]
    tasks.append({"id": "c", "cmd": "true", "deps": [f"p{i}" for i in range(n)]})
    store.open_graph(graph_from_dict({"name": "g", "tasks": tasks}), T0)


def owe_the_last_release(pg_url: str, stores: Callable[[], Store]) -> Store:
    """A graph ``p0 -> c`` whose only parent finished while the test held c's row: c's one
    decrement is owed. Returns the first store handle."""
    first = stores()
    fan_in(first, 1)
    w1 = stores()
    (p0,) = w1.claim("w1", 1, T0, LEASE)
    with holding(pg_url, "c"):
        complete_without_waiting(w1, p0, T0 + 1)
    return first


def finish_with_a_worker(pg_url: str, first: Store, idle_exit: str) -> None:
    """A real ``conveyor worker --idle-exit IDLE_EXIT`` ends well and leaves c done."""
    worker = subprocess.run(
        [sys.executable, "-m", "conveyor.cli", "worker", "--db", pg_url, "--idle-exit", idle_exit,
         "--quiet"], capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert worker.returncode == 0, worker.stderr
    assert first.result("c").state is TaskState.DONE


def trail(store: Store, task: str) -> list[dict[str, Any]]:
    return store.history(task)


def test_pg_a_completion_never_waits_for_a_child_row_another_transaction_holds(
    pg_url: str, stores: Callable[[], Store]
) -> None:
    first = stores()
    fan_in(first, 2)
    w1, w2 = stores(), stores()
    (p0,) = w1.claim("w1", 1, T0, LEASE)
    (p1,) = w2.claim("w2", 1, T0, LEASE)
    with holding(pg_url, "c"):
        complete_without_waiting(w1, p0, T0 + 1)
        assert owed(pg_url) == [("c", 1)]
    assert first.result("c").state is TaskState.PENDING
    # The last parent's release folds the owed decrement with its own: ready once, after both.
    assert w2.complete(p1, None, T0 + 2)
    assert owed(pg_url) == []
    assert first.result("c").state is TaskState.READY
    ready = [e for e in trail(first, "c") if e["event"] == "task_ready"]
    assert len(ready) == 1
    finished = [e["ts"] for p in ("p0", "p1") for e in trail(first, p)
                if e["event"] == "task_finished"]  # fmt: skip
    assert ready[0]["ts"] >= max(finished)


def test_pg_an_owed_last_release_is_folded_by_a_worker_with_nothing_to_claim(
    pg_url: str, stores: Callable[[], Store]
) -> None:
    first = owe_the_last_release(pg_url, stores)
    # Nothing runs and nothing is ready, but c's last decrement is owed: a worker that finds
    # nothing to claim is not idle (``--idle-exit`` must not end it) and folds it.
    why = first.explain("c", T0 + 2)  # parents done, c not yet counted down: says so
    assert why.code == "waiting_on_parents" and "parents are done" in why.message, why
    idle = stores()
    assert idle.claim("w2", 1, T0 + 2, LEASE) == []
    assert first.result("c").state is TaskState.PENDING
    assert idle.has_running() is True
    assert owed(pg_url) == []
    assert first.result("c").state is TaskState.READY
    finish_with_a_worker(pg_url, first, idle_exit="1")


def test_pg_a_worker_does_not_exit_idle_while_a_release_is_owed(
    pg_url: str, stores: Callable[[], Store]
) -> None:
    first = owe_the_last_release(pg_url, stores)
    # A real worker, from nothing claimable to c done, with the shortest idle allowance.
    finish_with_a_worker(pg_url, first, idle_exit="0")
    assert [e["event"] for e in trail(first, "c")].count("task_ready") == 1


def _resume_spec(a_arg: int) -> Any:
    return graph_from_dict({
        "name": "r",
        "tasks": [
            {"id": "a", "fn": "json:dumps", "args": [a_arg]},
            {"id": "b", "fn": "json:dumps", "args": [2]},
            {"id": "c", "fn": "json:dumps", "args": [3], "deps": ["a", "b"]},
        ],
    })  # fmt: skip


def test_pg_a_resume_folds_owed_releases_before_it_counts_parents_again(
    pg_url: str, stores: Callable[[], Store]
) -> None:
    first = stores()
    open_graph(first, _resume_spec(1), T0)
    w1, w2 = stores(), stores()
    (a,) = w1.claim("w1", 1, T0, LEASE)
    (b,) = w2.claim("w2", 1, T0, LEASE)
    assert (a.id, b.id) == ("a", "b")
    with holding(pg_url, "c"):
        complete_without_waiting(w1, a, T0 + 1)
    assert owed(pg_url) == [("c", 1)]
    # a changed: it runs again, and the resume counts c's unfinished parents again (a and b:
    # two). The decrement owed for a's first run must not be applied on top of that count.
    open_graph(first, _resume_spec(10), T0 + 2)
    assert first.has_running() is True  # b runs (and whatever is owed is folded)
    (a2,) = w1.claim("w1", 1, T0 + 3, LEASE)
    assert a2.id == "a"
    assert w1.complete(a2, None, T0 + 4)
    assert first.result("c").state is TaskState.PENDING, "c ready while b still runs"
    assert owed(pg_url) == []
    assert w2.complete(b, None, T0 + 5)
    assert first.result("c").state is TaskState.READY
    assert [e["event"] for e in trail(first, "c")].count("task_ready") == 1
