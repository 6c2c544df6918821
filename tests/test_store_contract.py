"""One store suite, run on memory, SQLite and PostgreSQL (``store_url`` in conftest.py).

Leases, resume and graph identity only mean something in the durable stores; those tests
skip on memory with the reason. Time is a parameter: ``now`` values are made up.
"""

from __future__ import annotations

from typing import Any

import pytest

from conveyor.errors import GraphMismatchError
from conveyor.graphfile import graph_from_dict
from conveyor.model import TaskSpec, TaskState
from conveyor.store.base import Claim, Store

T0 = 1_000_000.0
LEASE = 10.0


def graph(name: str, *tasks: dict[str, Any]) -> Any:
    """Tasks run a command unless they say otherwise, so that no-ops do not finish inline."""
    return graph_from_dict(
        {"name": name, "tasks": [{"cmd": "true", **t} for t in tasks]}, check_functions=False
    )


def claim1(store: Store, now: float = T0, worker: str = "w1") -> Claim | None:
    got = store.claim(worker, 1, now, LEASE)
    return got[0] if got else None


def durable(url: str) -> None:
    if url.startswith("memory"):
        pytest.skip("the memory store lives in one process: no leases, nothing to resume")


@pytest.fixture
def store(store_url: str, open_url: Any) -> Store:
    s = open_url(store_url)
    if hasattr(s, "keep_history"):
        s.keep_history()
    return s


def run_in_order(store: Store, now: float = T0) -> list[str]:
    order = []
    while (c := claim1(store, now)) is not None:
        order.append(c.id)
        assert store.complete(c, None, now)
    return order


def test_store_claims_follow_depth_first_key(store: Store) -> None:
    store.open_graph(
        graph("g", {"id": "r1"}, {"id": "r2"}, {"id": "a1", "deps": ["r1"]},
              {"id": "a2", "deps": ["a1"]}, {"id": "b1", "deps": ["r2"]}),
        T0,
    )  # fmt: skip
    assert run_in_order(store) == ["r1", "a1", "a2", "r2", "b1"]
    assert store.unfinished() == 0
    assert store.counts()["done"] == 5


def test_store_child_waits_for_every_parent(store: Store) -> None:
    store.open_graph(graph("g", {"id": "a"}, {"id": "b"}, {"id": "c", "deps": ["a", "b"]}), T0)
    a, b = store.claim("w1", 2, T0, LEASE)
    assert claim1(store) is None
    assert store.complete(a, 1, T0)
    assert claim1(store) is None
    assert store.complete(b, 2, T0)
    c = claim1(store)
    assert c is not None and c.id == "c"
    assert store.parent_values(c) == {"a": 1, "b": 2}


def test_store_retry_waits_for_its_not_before_time(store: Store) -> None:
    store.open_graph(graph("g", {"id": "a", "retries": 1}), T0)
    a = claim1(store)
    assert a is not None and a.attempt == 1
    assert store.fail(a, "boom", T0, T0 + 30)
    assert store.counts()["retry_wait"] == 1
    assert store.next_wakeup() == pytest.approx(T0 + 30)
    assert claim1(store, T0 + 29) is None
    again = claim1(store, T0 + 31)
    assert again is not None and again.attempt == 2
    assert store.complete(again, "ok", T0 + 31)
    res = store.result("a")
    assert res.state is TaskState.DONE and res.value == "ok"


def test_store_final_failure_skips_downstream(store: Store) -> None:
    store.open_graph(
        graph("g", {"id": "a"}, {"id": "b", "deps": ["a"]}, {"id": "c", "deps": ["b"]},
              {"id": "x"}),
        T0,
    )  # fmt: skip
    a = claim1(store)
    assert a is not None and a.id == "a"
    assert store.fail(a, "ValueError: no", T0, None)
    counts = store.counts()
    assert (counts["failed"], counts["skipped"]) == (1, 2)
    assert store.result("c").state is TaskState.SKIPPED
    assert run_in_order(store) == ["x"]
    assert store.unfinished() == 0


def test_store_release_keeps_key_and_attempt(store: Store) -> None:
    store.open_graph(graph("g", {"id": "a"}, {"id": "b"}), T0)
    a = claim1(store)
    assert a is not None and a.id == "a"
    assert store.release(a, T0)
    again = claim1(store)
    assert again is not None and again.id == "a" and again.attempt == 1


def test_store_results_reach_children(store_url: str, store: Store, open_url: Any) -> None:
    store.open_graph(graph("g", {"id": "a"}, {"id": "b"}, {"id": "c", "deps": ["a", "b"]}), T0)
    a, b = store.claim("w1", 2, T0, LEASE)
    assert store.complete(a, {"rows": [1, 2.5, None], "name": "é"}, T0)
    assert store.complete(b, (1, frozenset({2})), T0)  # not JSON: pickled, not mangled
    other = store if store_url.startswith("memory") else open_url(store_url)  # "another process"
    c = claim1(other, worker="w2")
    assert c is not None
    assert other.parent_values(c) == {"a": {"rows": [1, 2.5, None], "name": "é"},
                                      "b": (1, frozenset({2}))}  # fmt: skip


def test_store_children_submitted_at_run_time_go_first(store: Store) -> None:
    store.open_graph(graph("g", {"id": "p"}, {"id": "q"}), T0)
    p = claim1(store)
    assert p is not None and p.id == "p"
    kids = [TaskSpec("p/1", cmd="true"), TaskSpec("p/2", cmd="true", deps=("p/1",))]
    store.submit_children(p, kids, T0)
    assert store.complete(p, None, T0)
    assert run_in_order(store) == ["p/1", "p/2", "q"]


# -- durable stores only ---------------------------------------------------------------------------
def test_store_audit_has_a_row_per_transition(store_url: str, store: Store) -> None:
    durable(store_url)
    store.open_graph(graph("g", {"id": "a"}, {"id": "b", "deps": ["a"]}), T0)
    a = claim1(store)
    assert a is not None and store.complete(a, None, T0 + 1)
    trail = [(e["event"], e.get("from"), e.get("to")) for e in store.history("a")]
    assert trail == [
        ("task_submitted", None, "pending"), ("task_ready", "pending", "ready"),
        ("task_started", "ready", "running"), ("task_finished", "running", "done"),
    ]  # fmt: skip
    assert [e["event"] for e in store.history("b")] == ["task_submitted", "task_ready"]


def test_store_stale_lease_completion_is_refused(store_url: str, store: Store) -> None:
    durable(store_url)
    store.open_graph(graph("g", {"id": "a"}), T0)
    old = claim1(store, T0, "w1")
    assert old is not None
    assert store.reap_expired(T0 + LEASE + 1) == ["a"]
    new = claim1(store, T0 + LEASE + 2, "w2")
    assert new is not None and new.token != old.token
    assert not store.complete(old, "late", T0 + LEASE + 3)
    assert not store.fail(old, "late", T0 + LEASE + 3, None)
    assert store.result("a").state is TaskState.RUNNING
    assert store.complete(new, "fresh", T0 + LEASE + 3)
    assert store.result("a").value == "fresh"
    finished = [e for e in store.history("a") if e["event"] == "task_finished"]
    assert len(finished) == 1 and finished[0]["worker"] == "w2"


def test_store_heartbeat_renews_leases(store_url: str, store: Store) -> None:
    durable(store_url)
    store.open_graph(graph("g", {"id": "a"}), T0)
    claim = claim1(store, T0, "w1")
    assert claim is not None
    assert store.heartbeat("w1", T0 + LEASE - 1, LEASE) == 1
    assert store.reap_expired(T0 + LEASE + 1) == []
    assert store.reap_expired(T0 + 2 * LEASE) == ["a"]


def test_store_lost_leases_have_their_own_budget(store_url: str, store: Store) -> None:
    durable(store_url)
    store.open_graph(graph("g", {"id": "a"}, {"id": "b", "deps": ["a"]}), T0)
    now = T0
    for _ in range(2):
        c = claim1(store, now)
        assert c is not None and c.attempt == 1  # a lost lease is not a failed attempt
        now += LEASE + 1
        assert store.reap_expired(now) == ["a"]
    c = claim1(store, now)
    assert c is not None
    assert store.reap_expired(now + LEASE + 1) == ["a"]
    assert store.result("a").state is TaskState.FAILED
    assert store.result("b").state is TaskState.SKIPPED
    assert [e["event"] for e in store.history("a")].count("lease_expired") == 3


def test_store_resume_runs_only_unfinished(store_url: str, store: Store, open_url: Any) -> None:
    durable(store_url)
    g = graph("g", {"id": "a"}, {"id": "b", "deps": ["a"]}, {"id": "c"})
    store.open_graph(g, T0)
    a = claim1(store)
    assert a is not None and store.complete(a, 1, T0)
    crashed = claim1(store, T0, "dead-worker")  # its worker dies holding it
    assert crashed is not None
    store.close()
    again = open_url(store_url)
    opened = again.open_graph(g, T0 + 2 * LEASE)
    assert opened.resumed and opened.added == 0 and opened.unfinished == 2
    assert sorted(run_in_order(again, T0 + 2 * LEASE)) == ["b", "c"]


def test_store_refuses_another_graph_unless_replace(store_url: str, store: Store) -> None:
    durable(store_url)
    store.open_graph(graph("first", {"id": "a"}), T0)
    with pytest.raises(GraphMismatchError, match="first"):
        store.open_graph(graph("second", {"id": "z"}), T0)
    assert store.counts()["ready"] == 1  # nothing half-written
    opened = store.open_graph(graph("second", {"id": "z"}), T0, replace=True)
    assert not opened.resumed and opened.unfinished == 1
    assert run_in_order(store) == ["z"]


def test_store_noops_finish_in_the_claim_transaction(store_url: str, store: Store) -> None:
    durable(store_url)
    g = graph_from_dict({"name": "n", "tasks": [{"id": f"t{i}", "deps": [f"t{i - 1}"] if i else []}
                                                for i in range(50)]})  # fmt: skip
    store.open_graph(g, T0)
    got: list[Claim] = []
    while batch := store.claim("w1", 1, T0, LEASE):  # SQLite: one; PostgreSQL: one per level
        got.extend(batch)
    assert [c.id for c in got] == [f"t{i}" for i in range(50)]
    assert all(store.complete(c, None, T0) for c in got)
    assert store.counts()["done"] == 50
    assert [e["event"] for e in store.history("t7")][-2:] == ["task_started", "task_finished"]
