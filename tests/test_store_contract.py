"""One store suite, run on memory, SQLite and PostgreSQL (``store_url`` in conftest.py): every
``Store`` method its callers use.

What ``store/base.py`` says the memory store lacks (leases and worker rows, an audit table,
anything to resume) skips on memory with the reason; what it says the durable stores leave to
each process (endpoint caps, ``unfit``, cancelling an interrupted run) is checked as documented.
Time is a parameter: ``now`` values are made up.
"""

from __future__ import annotations

from typing import Any

import pytest

from conveyor.core.admission import Offer
from conveyor.core.fingerprint import Parts
from conveyor.errors import GraphError, GraphMismatchError, StaleLeaseError, UsageError
from conveyor.graphfile import graph_from_dict
from conveyor.model import GraphSpec, TaskSpec, TaskState
from conveyor.store.base import Claim, GraphFingerprints, Store, WorkerProfile
from conveyor.store.memory import MemoryStore
from conveyor.testing import FakeClock

T0 = 1_000_000.0
LEASE = 10.0


def graph(name: str, *tasks: dict[str, Any]) -> GraphSpec:
    """Tasks run a command unless they say otherwise, so that no-ops do not finish inline."""
    return graph_from_dict(
        {"name": name, "tasks": [{"cmd": "true", **t} for t in tasks]}, check_functions=False
    )


def claim1(store: Store, now: float = T0, worker: str = "w1") -> Claim | None:
    got = store.claim(worker, 1, now, LEASE)
    return got[0] if got else None


def durable(url: str, lacks: str = "no leases, nothing to resume") -> None:
    if url.startswith("memory"):
        pytest.skip(f"the memory store lives in one process: {lacks}")


def is_memory(url: str) -> bool:
    return url.startswith("memory")


@pytest.fixture
def store(store_url: str, open_url: Any) -> Store:
    s: Store = open_url(store_url)
    if isinstance(s, MemoryStore):
        s.keep_history()  # its audit trail is off by default (it costs per transition)
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


def test_store_hand_back_frees_a_running_task_at_once_and_counts_no_failure(
    store_url: str, store: Store
) -> None:
    store.open_graph(graph("g", {"id": "a"}, {"id": "b"}), T0)
    now = T0
    for _ in range(5):  # more than its retries (0) and the lost-lease budget (3)
        a = claim1(store, now, "w1")
        assert a is not None and a.id == "a" and a.attempt == 1
        assert store.hand_back([a], now, "signal SIGUSR2") == [True]
        assert store.result("a").state is TaskState.READY
        # handed back once only; a late report under the old claim is refused
        assert store.hand_back([a], now, "again") == [False]
        assert not store.complete(a, "late", now)
        assert not store.fail(a, "late", now, None)
        now += 1
    again = claim1(store, now, "w2")  # at once, by another worker: no lease to wait out
    assert again is not None and again.id == "a" and again.attempt == 1
    if not is_memory(store_url):  # memory: one process, whose engine drops a late result
        assert not store.complete(a, "late", now)
    assert store.complete(again, "fresh", now)
    assert store.result("a").value == "fresh"
    released = [e for e in store.history("a") if e["event"] == "task_released"]
    assert [e["reason"] for e in released] == ["signal SIGUSR2"] * 5
    assert all(e["worker"] == "w1" and e["attempt"] == 1 for e in released)
    events = [e["event"] for e in store.history("a")]
    assert "task_failed" not in events and "task_retrying" not in events
    assert events.count("task_finished") == 1


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


def test_store_children_submitted_again_by_their_parent_are_the_same_tasks(store: Store) -> None:
    """A parent that runs again (a crash, a lost lease, a retry) submits its children again:
    those it submitted before are not added twice (their state and results stand), new ones
    are added; another task submitting an id that exists is still refused."""
    store.open_graph(graph("g", {"id": "p"}, {"id": "q"}), T0)
    p = claim1(store)
    assert p is not None and p.id == "p"
    assert store.submit_children(p, [TaskSpec("p/1", cmd="true")], T0) == ["p/1"]
    kid = claim1(store)
    assert kid is not None and kid.id == "p/1" and store.complete(kid, "one", T0)
    assert store.release(p, T0 + 1)  # its worker stops: p runs again
    again = claim1(store, T0 + 2)
    assert again is not None and again.id == "p"
    kids = [TaskSpec("p/1", cmd="true"), TaskSpec("p/2", cmd="true", deps=("p/1",))]
    assert store.submit_children(again, kids, T0 + 2) == ["p/1", "p/2"]
    first = store.result("p/1")
    assert first.state.label == "done" and first.value == "one", first
    assert store.complete(again, None, T0 + 3)
    two = claim1(store, T0 + 3)
    assert two is not None and two.id == "p/2" and store.complete(two, None, T0 + 3)
    q = claim1(store, T0 + 4)
    assert q is not None and q.id == "q"
    assert sum(store.counts().values()) == 4  # p, q, p/1 once, p/2
    with pytest.raises(GraphError, match="p/1"):
        store.submit_children(q, [TaskSpec("p/1", cmd="true")], T0 + 4)


# -- every store: the rest of the interface -------------------------------------------------------
def test_store_events_carry_the_time_each_call_was_given(store: Store) -> None:
    events: list[dict[str, Any]] = []
    store.emit = events.append
    store.clock = FakeClock(wall_offset=T0 - 100)  # behind every call: the calls' times count
    store.open_graph(graph("g", {"id": "a"}, {"id": "b", "deps": ["a"]}), T0)
    a = claim1(store, T0 + 1)
    assert a is not None and store.complete(a, None, T0 + 2)
    by_event = {(e["event"], e.get("task")): e["ts"] for e in events}
    assert by_event[("task_submitted", "b")] == T0
    assert by_event[("task_finished", "a")] == by_event[("task_ready", "b")] == T0 + 2


def test_store_stamps_events_inside_the_transaction_so_children_follow_parents(
    store_url: str, store: Store
) -> None:
    """A worker's ``now`` was read before it got the lock: the time of the transaction counts
    when it is later, so a child's start never precedes its parent's end."""
    durable(store_url, "its engine reads the time under its own lock")
    events: list[dict[str, Any]] = []
    store.emit = events.append
    clock = FakeClock(wall_offset=T0)
    store.clock = clock
    store.open_graph(graph("g", {"id": "a"}, {"id": "b", "deps": ["a"]}), T0)
    a = claim1(store, T0)
    clock.advance(10.0)  # the finishing worker waited for the lock
    assert a is not None and store.complete(a, None, T0 + 5)
    b = claim1(store, T0 + 3)  # a worker whose time was read before a finished
    assert b is not None
    by_event = {(e["event"], e.get("task")): e["ts"] for e in events}
    assert by_event[("task_finished", "a")] == T0 + 10
    assert by_event[("task_started", "b")] == T0 + 10
    stamps = [e["ts"] for e in store.history("b")]
    assert stamps == sorted(stamps)


def test_store_claim_one_follows_the_key_and_release_buffered_gives_back_the_rest(
    store_url: str, store: Store
) -> None:
    store.open_graph(graph("g", *({"id": f"t{i:02}"} for i in range(40))), T0)
    order = []
    for _ in range(30):  # fast completions: a durable store starts claiming in batches
        c = store.claim_one("w1", T0, LEASE)
        assert c is not None
        order.append(c.id)
        assert store.complete(c, None, T0)
    held = store.claim_one("w1", T0, LEASE)
    assert held is not None and [*order, held.id] == [f"t{i:02}" for i in range(31)]
    given_back = store.release_buffered(T0)
    assert given_back == 0 if is_memory(store_url) else given_back > 0
    counts = store.counts()
    assert (counts["running"], counts["ready"]) == (1, 9)  # only the task handed out runs
    nxt = store.claim_one("w1", T0, LEASE)
    assert nxt is not None and nxt.id == "t31"  # what went back kept its key


def test_store_finish_noops_takes_the_no_ops_at_the_head_in_key_order_or_none(
    store_url: str, open_url: Any
) -> None:
    """``finish_noops`` finishes ready no-ops at the head of the ready order as claims and
    completions would, up to its limit and never past a task that runs something; a store with
    no cheaper way finishes none (the durable ones: a claim there completes no-ops itself)."""
    s: Store = open_url(store_url)  # (no audit trail: the memory store's is per task)
    s.open_graph(
        graph("g", {"id": "n1", "cmd": None}, {"id": "n2", "cmd": None, "deps": ["n1"]},
              {"id": "c", "deps": ["n2"]}, {"id": "n3", "cmd": None, "deps": ["c"]},
              {"id": "n4", "cmd": None}),
        T0,
    )  # fmt: skip
    before = s.counts()
    first = s.finish_noops("w1", T0, 1)
    done = first + s.finish_noops("w1", T0, 10)
    if not is_memory(store_url):
        assert (first, done) == (0, 0) and s.counts() == before
        return
    assert (first, done) == (1, 2)
    assert s.counts()["done"] == 2 and s.counts()["ready"] == 2  # c and n4
    assert [s.result(t).attempt for t in ("n1", "n2", "c")] == [1, 1, 0]
    assert run_in_order(s) == ["c", "n3", "n4"]


def test_store_claim_with_an_offer_on_a_plain_graph_takes_the_best_key(store: Store) -> None:
    store.open_graph(graph("g", {"id": "a"}, {"id": "b"}), T0)
    assert store.claim("w1", 2, T0, LEASE, offer=Offer(0)) == []  # no free slot
    assert [c.id for c in store.claim("w1", 2, T0, LEASE, offer=Offer(1))] == ["a"]


def test_store_configure_claims_what_fits_the_workers_profile(store: Store) -> None:
    store.open_graph(
        graph("g", {"id": "gpu", "labels": {"gpu": "a100"}}, {"id": "big", "resources": {"cpu": 8}},
              {"id": "plain"}),
        T0,
    )  # fmt: skip
    store.configure(WorkerProfile(labels={"gpu": "k80"}, resources={"cpu": 4}))
    assert [c.id for c in store.claim("w1", 1, T0, LEASE)] == ["plain"]
    assert store.claim("w1", 1, T0, LEASE) == []  # nothing else fits this worker
    store.configure(WorkerProfile(labels={"gpu": "a100"}, resources={"cpu": 8}))
    assert [c.id for c in store.claim("w1", 1, T0, LEASE)] == ["gpu"]
    assert [c.id for c in store.claim("w1", 1, T0, LEASE)] == ["big"]


def test_store_admission_switches_on_for_graphs_that_need_it(store_url: str, store: Store) -> None:
    store.open_graph(graph("plain", {"id": "a"}), T0)
    assert not store.admission
    assert run_in_order(store) == ["a"]
    store.open_graph(graph("grouped", {"id": "b", "group": "x"}), T0)
    assert store.admission
    assert run_in_order(store) == ["b"]
    if not is_memory(store_url):  # a finished graph replaced by a plain one: plain claims again
        store.open_graph(graph("plain again", {"id": "c"}), T0)
        assert not store.admission
        assert run_in_order(store) == ["c"]


def test_store_claims_past_a_task_that_would_not_finish_before_the_workers_end(
    store: Store,
) -> None:
    store.open_graph(
        graph("g", {"id": "long", "expected_s": 3600}, {"id": "short", "expected_s": 1},
              {"id": "plain"}),
        T0,
    )  # fmt: skip
    assert store.admission  # expected_s switches admission on
    near_end = Offer(3, time_left=30.0)
    assert [c.id for c in store.claim("w1", 3, T0, LEASE, offer=near_end)] == ["short"]
    assert [c.id for c in store.claim("w1", 3, T0, LEASE, offer=near_end)] == ["plain"]
    assert store.claim("w1", 3, T0, LEASE, offer=near_end) == []
    assert store.explain("long", T0, [near_end]).code == "would_not_finish"
    got = store.claim("w2", 1, T0, LEASE, offer=Offer(1, time_left=7200.0))
    assert [c.id for c in got] == ["long"]


def test_store_meta_values_live_beside_the_graph(store: Store) -> None:
    assert store.meta_get("graph_dir") is None
    store.meta_set("graph_dir", "/data/run")
    store.meta_set("graph_dir", "/data/run2")
    assert store.meta_get("graph_dir") == "/data/run2"
    store.open_graph(graph("g", {"id": "a"}), T0)
    assert store.graph_name() == "g"


def test_store_explain_says_why_with_numbers(store: Store) -> None:
    store.open_graph(
        graph("g", {"id": "a"}, {"id": "b"}, {"id": "x"}, {"id": "c", "deps": ["a", "b"]},
              {"id": "r", "retries": 1}),
        T0,
    )  # fmt: skip
    a = claim1(store)
    assert a is not None and a.id == "a"
    assert store.explain("a", T0).code == "running"
    why = store.explain("c", T0)
    assert (why.code, why.details["parents"], why.details["waiting"]) == (
        "waiting_on_parents", ["a", "b"], 2)  # fmt: skip
    assert store.complete(a, None, T0)
    assert store.explain("c", T0).details["parents"] == ["b"]
    why = store.explain("x", T0)
    assert (why.code, why.details["ahead"], why.details["first"]) == (
        "behind_higher_priority", 1, "b")  # fmt: skip
    assert store.explain("a", T0).code == "done"
    for _ in range(3):  # b, x, then r
        c = claim1(store)
        assert c is not None
    assert c is not None and c.id == "r" and store.fail(c, "boom", T0, T0 + 30)
    why = store.explain("r", T0 + 10)
    assert (why.code, why.details["in_s"]) == ("retry_backoff", pytest.approx(20.0))
    with pytest.raises(GraphError, match="unknown task"):
        store.explain("nope", T0)


def test_store_explain_and_unfit_judge_a_task_no_worker_can_hold(
    store_url: str, store: Store
) -> None:
    store.open_graph(graph("g", {"id": "big", "resources": {"cpu": 64}}, {"id": "small"}), T0)
    idle = Offer(4, {"cpu": 8.0}, {}, 4, {"cpu": 8.0})
    why = store.explain("big", T0, [idle])
    assert (why.code, why.details["need"]) == ("never_fits", {"cpu": 64.0})
    message = store.unfit(idle, T0)
    if is_memory(store_url):  # the engine is the only worker: refuse the graph up front
        assert message is not None and "'big'" in message
    else:  # workers come and go: ``explain`` says never_fits instead
        assert message is None


def test_store_endpoints_are_capped_per_process(store_url: str, store: Store) -> None:
    store.open_graph(
        graph("g", *({"id": f"e{i}", "endpoint": "openai/m/api.x"} for i in range(3))), T0
    )
    if not is_memory(store_url):
        assert store.endpoints() == []  # the durable stores ignore endpoints for admission
        return
    assert store.endpoints() == ["openai/m/api.x"]
    store.set_endpoint_cap("openai/m/api.x", 1)
    first = store.claim("w1", 1, T0, LEASE, offer=Offer(4))
    assert [c.id for c in first] == ["e0"]
    assert store.claim("w1", 1, T0, LEASE, offer=Offer(4)) == []
    assert store.explain("e1", T0, [Offer(4)]).code == "endpoint_limited"
    assert store.complete(first[0], None, T0)
    assert [c.id for c in store.claim("w1", 1, T0, LEASE, offer=Offer(4))] == ["e1"]


def test_store_endpoint_reports_are_each_workers_fresh_one(store_url: str, store: Store) -> None:
    busy = {"api.x": {"limit": 3, "in_flight": 3, "waiting": 2, "rate_limited": 1}}
    store.report_endpoints("w1", T0, busy)
    store.report_endpoints("w2", T0 + 8, {"api.x": {"limit": 4, "in_flight": 0}})
    if is_memory(store_url):  # one process: nobody to tell
        assert store.endpoint_reports(T0 + 8, 5.0) == {}
        return
    assert store.endpoint_reports(T0 + 8, 5.0) == {"w2": {"api.x": {"limit": 4, "in_flight": 0}}}
    assert store.endpoint_reports(T0 + 8, 10.0) == {
        "w1": busy, "w2": {"api.x": {"limit": 4, "in_flight": 0}},
    }  # fmt: skip
    store.report_endpoints("w1", T0 + 9, {"api.x": {"limit": 5}})  # the latest one counts
    assert store.endpoint_reports(T0 + 9, 5.0)["w1"] == {"api.x": {"limit": 5}}


def test_store_runtime_reports_keep_every_workers_last_one(store_url: str, store: Store) -> None:
    store.report_runtimes("w1", {"cmd:sleep": [2, 6.0, 3.5]})
    store.report_runtimes("w2", {"fn:jobs:f": [1, 0.5, 0.5]})
    if is_memory(store_url):  # one process: the engine's own runs are all there is
        assert store.runtime_reports() == {}
        return
    store.report_runtimes("w1", {"cmd:sleep": [3, 9.0, 3.5]})  # the latest one counts
    assert store.runtime_reports() == {
        "w1": {"cmd:sleep": [3, 9.0, 3.5]}, "w2": {"fn:jobs:f": [1, 0.5, 0.5]},
    }  # fmt: skip
    store.report_endpoints("w3", T0, {"api.x": {"limit": 3}})  # a neighbour in the meta table
    assert set(store.runtime_reports()) == {"w1", "w2"}


def test_store_status_has_every_documented_key(store_url: str, store: Store) -> None:
    store.open_graph(graph("g", {"id": "a"}, {"id": "b", "deps": ["a"]}), T0)
    a = claim1(store)
    assert a is not None and store.complete(a, None, T0)
    store.report_endpoints("w1", T0, {"api.x": {"limit": 3, "in_flight": 1}})
    st = store.status(T0)
    assert set(st) == {"graph", "total", "unfinished", "counts", "groups", "workers",
                       "workers_alive", "tasks_per_s", "eta_s", "endpoints", "reasons",
                       "group_shares"}  # fmt: skip
    assert (st["graph"], st["total"], st["unfinished"]) == ("g", 2, 1)
    assert st["counts"]["done"] == 1 and st["counts"]["ready"] == 1
    assert st["groups"] == {"default": {"done": 1, "ready": 1}}
    if not is_memory(store_url):  # what workers of a shared store publish
        assert st["endpoints"]["api.x"]["limit"] == 3
        assert st["reasons"] == {"no_worker": 1}  # no worker registered: none is alive


def test_store_cancel_unfinished_stops_an_interrupted_run(store_url: str, store: Store) -> None:
    store.open_graph(graph("g", {"id": "a"}, {"id": "b", "deps": ["a"]}, {"id": "c"}), T0)
    a = claim1(store)
    assert a is not None
    cancelled = store.cancel_unfinished(T0)
    if is_memory(store_url):
        assert cancelled == 2 and store.counts()["cancelled"] == 2
        assert store.unfinished() == 1  # the running task finishes its attempt
    else:  # a shared store keeps unfinished work for the next run
        assert cancelled == 0 and store.unfinished() == 3


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


def test_store_complete_many_fences_each_claim_and_readies_shared_children(
    store_url: str, store: Store
) -> None:
    durable(store_url)
    store.open_graph(
        graph("g", {"id": "a"}, {"id": "b"}, {"id": "c"},
              {"id": "ab", "deps": ["a", "b"]}, {"id": "bc", "deps": ["b", "c"]},
              {"id": "z"}),
        T0,
    )  # fmt: skip
    got = store.claim("w1", 3, T0, LEASE)
    assert [c.id for c in got] == ["a", "b", "c"]
    c = got[2]
    assert store.reap_expired(T0 + LEASE + 1) == ["a", "b", "c"]
    again = store.claim("w2", 3, T0 + LEASE + 2, LEASE)
    a2, b2 = (x for x in again if x.id in ("a", "b"))
    # c's old lease was taken over: of the three, only the fresh claims count
    assert store.complete_many([(a2, 1), (b2, 2), (c, 3)], T0 + LEASE + 3) == [True, True, False]
    assert store.result("a").value == 1 and store.result("b").value == 2
    assert store.result("c").state is TaskState.RUNNING
    # ab had both parents finish in the one call; bc still waits for c
    assert store.result("ab").state is TaskState.READY
    assert store.result("bc").state is TaskState.PENDING
    finished = [e["worker"] for t in "abc" for e in store.history(t)
                if e["event"] == "task_finished"]  # fmt: skip
    assert finished == ["w2", "w2"]


def test_store_complete_many_refill_hands_out_the_next_claims(store_url: str, store: Store) -> None:
    store.open_graph(
        graph("g", {"id": "a"}, {"id": "b"}, {"id": "a1", "deps": ["a"]}, {"id": "z"}), T0
    )
    a, b = store.claim("w1", 2, T0, LEASE)
    assert store.complete_many([(a, None), (b, None)], T0, refill=2) == [True, True]
    # the child the completions readied goes first (depth-first), then the next root
    claims = [store.claim_one("w1", T0, LEASE) for _ in range(2)]
    assert [c.id if c else None for c in claims] == ["a1", "z"]


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


def test_store_replace_fences_the_claims_of_the_replaced_graph(
    store_url: str, store: Store, open_url: Any
) -> None:
    durable(store_url)
    same = ({"id": "a"}, {"id": "b", "deps": ["a"]})
    store.open_graph(graph("first", *same), T0)
    old = claim1(store, T0, "old")  # the old graph's worker keeps running
    assert old is not None
    other = open_url(store_url)  # `submit --replace` from another process
    other.open_graph(graph("second", *same), T0 + 1, replace=True)
    new = claim1(other, T0 + 1, "new")
    assert new is not None and new.id == "a"
    assert not store.complete(old, "from the old graph", T0 + 2)
    assert not store.fail(old, "late", T0 + 2, None)
    assert not store.release(old, T0 + 2)
    with pytest.raises(StaleLeaseError):
        store.submit_children(old, [TaskSpec("a/kid", cmd="true")], T0 + 2)
    assert store.heartbeat("old", T0 + 2, LEASE) == 0
    assert other.result("a").state is TaskState.RUNNING
    assert other.counts() == {**other.counts(), "running": 1, "pending": 1, "done": 0}
    assert other.complete(new, "from the new graph", T0 + 3)
    b = claim1(other, T0 + 3, "new")
    assert b is not None and other.parent_values(b) == {"a": "from the new graph"}
    assert [e.get("worker") for e in other.history("a") if e["event"] == "task_finished"] == ["new"]


def test_store_event_ids_go_on_after_a_replacement(
    store_url: str, store: Store, open_url: Any
) -> None:
    durable(store_url, "no audit table")
    store.open_graph(graph("first", {"id": "a"}, {"id": "b"}), T0)
    after = store.events_after(0)[-1][0]  # where `events --follow` stands
    open_url(store_url).open_graph(graph("second", {"id": "z"}), T0 + 1, replace=True)
    got = store.events_after(after)
    assert [(e["event"], e.get("task")) for _, e in got] == [
        ("task_submitted", "z"), ("task_ready", "z"),
    ]  # fmt: skip
    assert [e for _, e in got] == list(store.iter_events())


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


def test_store_workers_join_and_leave(store_url: str, store: Store) -> None:
    durable(store_url, "no worker rows")
    store.configure(WorkerProfile(labels={"zone": "a"}, lease_s=LEASE))
    store.register_worker("host:1", T0, {"slots": 2, "slurm_array_job": "7"})
    st = store.status(T0 + 1)
    assert [w["worker"] for w in st["workers"]] == ["host:1"] and st["workers_alive"] == 1
    assert st["workers"][0]["info"]["slurm_array_job"] == "7" and st["workers"][0]["tasks"] == []
    store.open_graph(graph("g", {"id": "a"}, {"id": "b"}), T0)
    assert claim1(store, T0, worker="host:1") is not None
    assert store.status(T0 + 1)["workers"][0]["tasks"] == ["a"]  # what it runs now
    assert store.status(T0 + LEASE + 1)["workers_alive"] == 0  # silent past its lease
    store.unregister_worker("host:1", T0 + 2)
    assert store.status(T0 + 2)["workers_alive"] == 0


def test_store_events_after_pages_the_audit_trail(store_url: str, store: Store) -> None:
    durable(store_url, "no audit table")
    store.open_graph(graph("g", {"id": "a"}, {"id": "b", "deps": ["a"]}), T0)
    a = claim1(store)
    assert a is not None and store.complete(a, 1, T0 + 1)
    first = store.events_after(0, limit=3)
    rest = store.events_after(first[-1][0])
    ids = [i for i, _ in first + rest]
    assert len(first) == 3 and ids == sorted(ids) and len(set(ids)) == len(ids)
    events = [e for _, e in first + rest]
    assert [e["event"] for e in events].count("task_finished") == 1
    assert list(store.iter_events()) == events
    assert store.events_after(ids[-1]) == []
    assert [e for e in events if e.get("task") == "a"] == store.history("a")


def test_store_retry_runs_failed_tasks_and_what_they_skipped(store_url: str, store: Store) -> None:
    durable(store_url, "nothing to resume")
    store.open_graph(graph("g", {"id": "a"}, {"id": "b", "deps": ["a"]}, {"id": "c"}), T0)
    a = claim1(store)
    assert a is not None and store.fail(a, "boom", T0, None)
    assert store.result("b").state is TaskState.SKIPPED
    with pytest.raises(UsageError, match="only failed or cancelled"):
        store.retry(["b"], T0)
    with pytest.raises(GraphError, match="unknown task"):
        store.retry(["nope"], T0)
    assert store.retry(None, T0 + 1) == ["a"]
    assert store.result("b").state is TaskState.PENDING
    assert run_in_order(store, T0 + 1) == ["a", "b", "c"]
    with pytest.raises(UsageError):
        store.retry(["a"], T0 + 2)  # done: nothing to retry


def test_store_prune_keeps_the_newest_rows_of_each_task(store_url: str, store: Store) -> None:
    durable(store_url, "no audit table")
    store.open_graph(graph("g", {"id": "a"}, {"id": "b", "deps": ["a"]}), T0)
    assert run_in_order(store) == ["a", "b"]
    before = len(store.history("a")) + len(store.history("b"))
    assert store.prune(1) == before - 2
    assert [e["event"] for e in store.history("a")] == ["task_finished"]
    assert store.result("a").state is TaskState.DONE  # the tasks table keeps every state
    with pytest.raises(UsageError):
        store.prune(0)


def fingerprints(
    g: GraphSpec, code_a: str = "v1", files: dict[str, tuple[int, int, str]] | None = None
) -> GraphFingerprints:
    """Fingerprint parts as ``conveyor.fingerprints`` would compute them (graph order is
    parents first here)."""
    parts: dict[str, Parts] = {}
    for t in g.tasks:
        code = code_a if t.id == "a" else "v1"
        parts[t.id] = Parts.make(code, "args", (), [(d, parts[d].fingerprint) for d in t.deps])
    return GraphFingerprints(parts, files or {})


def test_store_plans_against_its_last_run_and_remembers_file_hashes(
    store_url: str, store: Store
) -> None:
    durable(store_url, "nothing to resume")
    g = graph("g", {"id": "a"}, {"id": "b", "deps": ["a"]}, {"id": "x"})
    store.open_graph(g, T0, fingerprints=fingerprints(g, files={"/in.csv": (1, 2, "d1")}))
    assert store.file_hashes() == {"/in.csv": (1, 2, "d1")}
    assert run_in_order(store) == ["a", "b", "x"]
    same = store.plan_graph(g, fingerprints(g))
    assert [(d.task, d.action, d.reason) for d in same] == [
        ("a", "reuse", "unchanged"),
        ("b", "reuse", "unchanged"),
        ("x", "reuse", "unchanged"),
    ]
    changed = store.plan_graph(g, fingerprints(g, code_a="v2"))
    assert [d.reason for d in changed] == ["code_changed", "upstream_changed", "unchanged"]
    assert store.counts()["done"] == 3  # a plan changes nothing
    opened = store.open_graph(g, T0 + 1, fingerprints=fingerprints(g, code_a="v2"))
    assert opened.resumed and opened.unfinished == 2
    assert run_in_order(store, T0 + 1) == ["a", "b"]
    assert [e["event"] for e in store.history("a")].count("task_invalidated") == 1


# -- priority bands (core/ordering.py) ----------------------------------------------------------
def test_store_bands_order_before_the_depth_first_key(store: Store) -> None:
    store.open_graph(
        graph("g", {"id": "b1"}, {"id": "b2", "deps": ["b1"]}, {"id": "e1", "band": "best_effort"},
              {"id": "i1", "band": "interactive"}, {"id": "n15", "band": 15},
              {"id": "i2", "deps": ["i1"], "band": "interactive"}),
        T0,
    )  # fmt: skip
    # interactive (10) and its child first, then band 15, then batch depth-first, best-effort last
    assert run_in_order(store) == ["i1", "i2", "n15", "b1", "b2", "e1"]


def test_store_graph_band_and_children_inherit_their_submitters(store: Store) -> None:
    spec = graph_from_dict(
        {"name": "g", "band": "interactive",
         "tasks": [{"id": "p", "cmd": "true"}, {"id": "q", "cmd": "true", "band": "batch"}]},
        check_functions=False,
    )  # fmt: skip
    store.open_graph(spec, T0)
    p = claim1(store)
    assert p is not None and p.id == "p"
    kids = [TaskSpec("k_inherit", cmd="true"), TaskSpec("k_low", cmd="true", band="best_effort")]
    store.submit_children(p, kids, T0)
    why = store.explain("q", T0)  # the inherited child is interactive: q waits behind its band
    assert why.code == "behind_higher_band" and why.details["first"] == "k_inherit", why
    assert run_in_order(store) == ["k_inherit", "q", "k_low"]


@pytest.mark.parametrize("groups", [False, True])
def test_store_why_behind_higher_band_with_the_bands(store: Store, groups: bool) -> None:
    extra = {"group": "a"} if groups else {}
    store.open_graph(
        graph("g", {"id": "low", **extra}, {"id": "top", "band": "interactive", "group": "b"}
              if groups else {"id": "top", "band": "interactive"}),
        T0,
    )  # fmt: skip
    why = store.explain("low", T0)
    assert why.code == "behind_higher_band", why
    assert why.details["band"] == 20 and why.details["higher_band"] == 10
    assert why.details["ahead"] == 1 and why.details["first"] == "top"
    assert "interactive (10)" in why.message
    assert store.explain("top", T0).code != "behind_higher_band"


def test_store_band_beats_fair_share(store: Store) -> None:
    """Group a runs one task and b none: fair share alone would pick b's next; a's interactive
    task goes first because bands order before groups."""
    store.open_graph(
        graph("g", {"id": "a1", "group": "a"}, {"id": "a2", "group": "a"},
              {"id": "a3", "group": "a", "band": "interactive", "deps": ["a1"]},
              {"id": "b1", "group": "b", "deps": ["a1"]}),
        T0,
    )  # fmt: skip
    c1, c2 = claim1(store), claim1(store)
    assert c1 is not None and c2 is not None and {c1.id, c2.id} == {"a1", "a2"}
    store.complete(c1 if c1.id == "a1" else c2, None, T0)
    got = claim1(store)
    assert got is not None and got.id == "a3"


# -- reads for people (the dashboard) --------------------------------------------------------------
def test_store_task_info_has_state_parents_children_and_spec(store: Store) -> None:
    store.open_graph(
        graph("g", {"id": "a", "group": "alice", "env": {"TOKEN": "s3cret"}},
              {"id": "b"}, {"id": "c", "deps": ["a", "b"], "retries": 2}),
        T0,
    )  # fmt: skip
    c = claim1(store)
    assert c is not None and c.id == "a"
    assert store.fail(c, "boom", T0, None)
    a = store.task_info("a")
    assert (a["state"], a["group"], a["attempt"], a["error"]) == ("failed", "alice", 1, "boom")
    assert a["children"] == ["c"] and a["parents"] == []
    assert a["spec"]["env"] == {"TOKEN": "s3cret"}  # the store shows all; the viewer hides
    info = store.task_info("c")
    assert info["parents"] == ["a", "b"] and info["spec"]["retries"] == 2
    assert info["state"] == "skipped" and info["group"] == "default"
    with pytest.raises(GraphError):
        store.task_info("nope")


def test_store_task_ids_and_groups(store: Store) -> None:
    store.open_graph(
        graph("g", {"id": "a", "group": "x"}, {"id": "b", "group": "y"},
              {"id": "c", "deps": ["a"]}),
        T0,
    )  # fmt: skip
    assert store.task_ids(["ready"], 10) == ["a", "b"]
    assert store.task_ids(["ready", "pending"], 2) == ["a", "b"]
    assert store.task_ids(["pending"], 10) == ["c"]
    assert store.task_ids(["done"], 10) == []
    assert store.task_groups(["a", "b", "c", "zz"]) == {"a": "x", "b": "y", "c": "default"}
    with pytest.raises(ValueError):
        store.task_ids(["sleeping"], 1)


def test_store_worker_rows_say_alive_left_lost(store: Store, store_url: str) -> None:
    durable(store_url, "it registers no workers")
    store.open_graph(graph("g", {"id": "a"}), T0)
    store.configure(WorkerProfile(labels={"gpu": "a100"}, resources={"gpu": 2.0}))
    store.register_worker("h:1", T0, {"slots": 2, "slurm_job": "77"})
    store.register_worker("h:2", T0, {"slots": 1})
    store.register_worker("h:3", T0, {"slots": 1})
    store.heartbeat("h:1", T0, LEASE)
    c = claim1(store, worker="h:1")
    assert c is not None
    store.unregister_worker("h:2", T0 + 1)
    store.heartbeat("h:1", T0 + 100, LEASE)  # h:3 registered with the default lease (30 s)
    rows = {w["worker"]: w for w in store.worker_rows(T0 + 105)}
    assert [rows[n]["state"] for n in ("h:1", "h:2", "h:3")] == ["alive", "left", "lost"]
    assert rows["h:1"]["tasks"] == ["a"] and rows["h:3"]["tasks"] == []
    info = rows["h:1"]["info"]
    assert (info["slots"], info["slurm_job"], info["labels"]) == (2, "77", {"gpu": "a100"})
    assert info["resources"] == {"gpu": 2.0}


def test_store_readonly_handle_reads_and_never_writes(
    store: Store, store_url: str, tmp_path: Any
) -> None:
    durable(store_url, "there is nothing to open twice")
    from conveyor.errors import StoreError
    from conveyor.store.urls import open_store

    store.open_graph(graph("g", {"id": "a"}, {"id": "b", "deps": ["a"]}), T0)
    viewer = open_store(store.url if "***" not in store.url else store_url, readonly=True)
    try:
        assert viewer.counts()["ready"] == 1 and viewer.task_info("b")["parents"] == ["a"]
        c = claim1(store)
        assert c is not None and store.complete(c, 1, T0)
        assert viewer.counts()["done"] == 1  # it sees the writers' commits
        with pytest.raises(StoreError):
            viewer.meta_set("x", "y")
        assert store.meta_get("x") is None
    finally:
        viewer.close()


def test_store_preempt_requeues_with_the_attempt_given_back(store_url: str, store: Store) -> None:
    """``preempt``: back to ready at once, ``task_preempted`` naming the waiting task, not a
    failure, the attempt given back; a late report under the old claim is refused."""
    store.open_graph(graph("g", {"id": "low", "band": "best_effort"}, {"id": "x"}), T0)
    low = claim1(store)
    assert low is not None and low.id == "x" and low.band == 20
    low = claim1(store)
    assert low is not None and low.id == "low" and low.band == 30
    assert store.preempt([low], T0 + 1, "hi") == [True]
    assert store.preempt([low], T0 + 1, "hi") == [False], "taken back once"
    assert not store.fail(low, "late", T0 + 1, None)
    again = claim1(store, T0 + 2)
    assert again is not None and again.id == "low" and again.attempt == 1
    if is_memory(store_url):
        assert again.extra["preempted"] == (1, T0 + 1), "anti-thrash: times, last"
    assert store.complete(again, "v", T0 + 2)
    trail = [e for e in store.history("low") if e["event"] == "task_preempted"]
    assert [(e["by"], e["reason"], e["attempt"]) for e in trail] == [("hi", "higher_band", 1)]
    events = [e["event"] for e in store.history("low")]
    assert "task_failed" not in events and "task_retrying" not in events


def test_store_ready_heads_are_higher_band_ready_tasks_best_first(store: Store) -> None:
    store.open_graph(
        graph("g", {"id": "b1"}, {"id": "i1", "band": "interactive"}, {"id": "e1", "band": 30},
              {"id": "i2", "band": 10, "deps": ["b1"]}, {"id": "i0", "band": 5}),
        T0,
    )  # fmt: skip
    heads = store.ready_heads(30, 10)
    if not heads:
        pytest.skip("this store leaves preemption to its shared decision (plan_preemptions)")
    assert heads == [("i0", 5), ("i1", 10), ("b1", 20)]
    assert store.ready_heads(10, 10) == [("i0", 5)]
    assert store.ready_heads(30, 1) == [("i0", 5)]


def test_store_plan_preemptions_asks_the_victims_worker_once(store_url: str, store: Store) -> None:
    """One global decision: a ready interactive task, every slot of both workers taken by
    batch and best-effort tasks: the best-effort one is asked (lowest band), once, on its
    worker; a second decision counts the pending request and asks nobody more."""
    durable(store_url, "one engine decides for itself (ready_heads)")
    from conveyor.core.preempt import PreemptPolicy

    store.open_graph(
        graph("g", {"id": "b"}, {"id": "e", "band": "best_effort"},
              {"id": "i", "band": "interactive", "deps": ["gate"]}, {"id": "gate"}),
        T0,
    )  # fmt: skip
    store.register_worker("w1", T0, {"slots": 1})
    store.register_worker("w2", T0, {"slots": 2})
    b = claim1(store, T0, "w1")
    gate = claim1(store, T0, "w2")
    e = claim1(store, T0 + 1, "w2")
    assert b is not None and gate is not None and e is not None
    assert [b.id, gate.id, e.id] == ["b", "gate", "e"]
    policy = PreemptPolicy()
    assert store.plan_preemptions(T0 + 2, policy) == 0, "nothing of a higher band is ready"
    assert store.complete(gate, None, T0 + 2)  # i is ready; w2 has a free slot: no preemption
    assert store.plan_preemptions(T0 + 2, policy) == 0
    x = claim1(store, T0 + 2, "w2")  # ... which the interactive task takes
    assert x is not None and x.id == "i"
    assert store.release(x, T0 + 3)  # and gives back: i waits, no slot is free
    store.register_worker("w2", T0 + 3, {"slots": 1})  # w2 now offers one slot (e's)
    assert "preempting" not in store.explain("i", T0 + 3).details
    assert store.plan_preemptions(T0 + 3, policy) == 1
    assert store.preempt_requests("w1") == {}
    assert store.preempt_requests("w2") == {e.handle: (e.token, "i")}
    why = store.explain("i", T0 + 3)  # ``why``: what is being done for it
    assert why.details["preempting"] == ["e"] and "preempting e for it" in why.message, why
    assert store.plan_preemptions(T0 + 3, policy) == 0, "the pending request counts"
    assert store.preempt([e], T0 + 4, "i") == [True]
    assert store.preempt_requests("w2") == {}
    assert "preempting" not in store.explain("i", T0 + 4).details, "given back: no longer said"
    got = claim1(store, T0 + 4, "w2")
    assert got is not None and got.id == "i", "the freed slot goes to the higher band"
    assert [ev["by"] for ev in store.history("e") if ev["event"] == "task_preempted"] == ["i"]


def test_store_plan_preemptions_keeps_anti_thrash_and_aging(store_url: str, store: Store) -> None:
    """A task preempted less than ``min_interval_s`` ago is not asked again; one preempted
    ``max_preemptions`` times keeps its slot to the end (aging: best-effort work is never
    starved forever)."""
    durable(store_url, "one engine decides for itself (ready_heads)")
    from conveyor.core.preempt import PreemptPolicy

    store.open_graph(graph("g", {"id": "e", "band": "best_effort"},
                           {"id": "i", "band": "interactive", "deps": ["gate"]},
                           {"id": "gate"}), T0)  # fmt: skip
    store.register_worker("w1", T0, {"slots": 1})
    policy = PreemptPolicy(min_interval_s=60.0, max_preemptions=2)
    gate = claim1(store, T0, "w1")
    assert gate is not None and gate.id == "gate" and store.complete(gate, None, T0)
    hold = claim1(store, T0, "w1")  # i, held aside so that e can be claimed and preempted
    assert hold is not None and hold.id == "i"
    now = T0
    for times in range(2):
        e = claim1(store, now, "w1")
        assert e is not None and e.id == "e"
        assert store.release(hold, now)  # i waits; e holds the only slot
        assert store.plan_preemptions(now + 1, policy) == 1, f"preemption {times + 1}"
        assert store.plan_preemptions(now + 1, policy) == 0, "one request at a time"
        assert store.preempt([e], now + 2, "i") == [True]
        hold = claim1(store, now + 2, "w1")
        assert hold is not None and hold.id == "i"
        e = claim1(store, now + 3, "w1")
        assert e is not None and e.id == "e"
        assert store.release(hold, now + 3)
        thrash = store.plan_preemptions(now + 10, policy)
        assert thrash == 0, "not again within min_interval_s"
        assert store.release(e, now + 10)
        hold = claim1(store, now + 10, "w1")
        assert hold is not None and hold.id == "i"
        now += 100
    e = claim1(store, now, "w1")
    assert e is not None and e.id == "e"
    assert store.release(hold, now)
    assert store.plan_preemptions(now + 1, policy) == 0, "aging: preempted twice, kept now"


def test_store_borrowing_names_groups_beyond_their_fair_share(store: Store) -> None:
    """What preemption takes back first: slots a group runs beyond its weighted fair share."""
    g = graph_from_dict({
        "name": "g", "groups": {"a": {"weight": 1}, "b": {"weight": 3}},
        "tasks": [{"id": f"{grp}{k}", "cmd": "true", "group": grp}
                  for grp in "ab" for k in range(4)],
    }, check_functions=False)  # fmt: skip
    store.open_graph(g, T0)
    if store.borrowing({"a": 3, "b": 1}, 4) == frozenset() and type(store).borrowing is (
        Store.borrowing
    ):
        pytest.skip("this store keeps no groups")
    assert store.borrowing({"a": 3, "b": 1}, 4) == {"a"}  # a's share is 1 of 4
    assert store.borrowing({"a": 1, "b": 3}, 4) == frozenset()
    assert store.borrowing({"a": 2}, 8) == frozenset(), "within its share (2 of 8)"


@pytest.mark.parametrize("groups", [False, True])
def test_store_why_next_in_line_says_no_free_slot(store: Store, groups: bool) -> None:
    """A ready task that is next in line while every slot is busy waits for a slot, not
    "behind 0 tasks"; behind others it still says who goes first."""
    extra = {"group": "g1"} if groups else {}
    spec = graph("g", {"id": "a", **extra}, {"id": "b", **extra})
    if groups:
        spec = graph_from_dict(
            {"name": "g", "groups": {"g1": {}},
             "tasks": [{"id": t, "cmd": "true", "group": "g1"} for t in ("a", "b")]},
            check_functions=False,
        )  # fmt: skip
    store.open_graph(spec, T0)
    full = Offer(0, capacity=2)  # one worker, both slots busy
    why = store.explain("a", T0, [full])
    assert why.code == "no_free_slot", why
    assert (why.details["workers"], why.details["slots"]) == (1, 2)
    why = store.explain("b", T0, [full])
    assert (why.code, why.details["ahead"], why.details["first"]) == (
        "behind_higher_priority", 1, "a")  # fmt: skip
    assert store.explain("a", T0, [full, Offer(1, capacity=1)]).code == "behind_higher_priority"


def test_store_why_no_worker_and_busy_workers_of_a_durable_store(
    store_url: str, store: Store
) -> None:
    """``conveyor why`` on a durable store reads its live workers: none alive is
    ``no_worker``; the one worker busy is ``no_free_slot``; ``status`` tallies the same."""
    durable(store_url, "it registers no workers")
    store.configure(WorkerProfile(lease_s=LEASE))
    store.open_graph(graph("g", {"id": "a"}, {"id": "b"}, {"id": "c"}), T0)
    assert store.explain("a", T0).code == "no_worker"
    assert store.status(T0)["reasons"] == {"no_worker": 3}
    store.register_worker("h:1", T0, {"slots": 1})
    assert store.explain("a", T0).code == "behind_higher_priority"  # a slot is free
    assert claim1(store, T0, worker="h:1") is not None
    why = store.explain("b", T0)
    assert why.code == "no_free_slot" and why.details["slots"] == 1, why
    assert store.explain("c", T0).details["ahead"] == 1
    assert store.status(T0)["reasons"] == {"no_free_slot": 2}
    assert store.explain("b", T0 + LEASE + 1).code == "no_worker"  # silent past its lease


def test_store_status_has_no_eta_when_no_waiting_task_can_start(
    store_url: str, store: Store
) -> None:
    """Tasks finished a moment ago give a rate, but the one left can never start on the live
    workers (it would not finish before their end): ``eta_s`` is unknown, not a few seconds."""
    durable(store_url, "it registers no workers")
    store.configure(WorkerProfile(lease_s=LEASE))
    store.open_graph(graph("g", {"id": "a"}, {"id": "long", "expected_s": 3600}), T0)
    store.register_worker("h:1", T0, {"slots": 1, "until": T0 + 60})
    a = claim1(store, T0, worker="h:1")
    assert a is not None and a.id == "a" and store.complete(a, None, T0 + 1)
    st = store.status(T0 + 2)
    assert st["reasons"] == {"would_not_finish": 1} and st["tasks_per_s"] > 0, st
    assert st["eta_s"] is None
    store.register_worker("h:2", T0, {"slots": 1})  # a worker without an end: it can start
    assert store.status(T0 + 2)["eta_s"] is not None


def test_store_age_ready_moves_a_long_waiting_low_band_task_to_the_default_band(
    store: Store,
) -> None:
    """Aging: a best-effort task ready for ``AGE_AFTER_S`` orders as batch from then on (same
    depth), once; before that it waits behind every batch task."""
    from conveyor.core.ordering import AGE_AFTER_S

    store.open_graph(graph("g", {"id": "e", "band": "best_effort"}, {"id": "b1"}, {"id": "b2"}), T0)
    assert store.age_ready(T0) == 0
    assert store.age_ready(T0 + AGE_AFTER_S / 2) == 0, "not waited long enough"
    later = T0 + AGE_AFTER_S * 1.5
    assert store.age_ready(later) == 1
    assert store.age_ready(later + 10) == 0, "aged once"
    got = [claim1(store, later + 10) for _ in range(3)]
    assert [c.id for c in got if c is not None] == ["e", "b1", "b2"]
    assert got[0] is not None and got[0].band == 20


def test_store_without_aging_a_best_effort_task_waits_behind_batch(store: Store) -> None:
    store.open_graph(graph("g", {"id": "e", "band": "best_effort"}, {"id": "b1"}), T0)
    got = [claim1(store, T0) for _ in range(2)]
    assert [c.id for c in got if c is not None] == ["b1", "e"]
