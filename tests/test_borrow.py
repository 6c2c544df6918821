"""Borrow policies (``core/borrow.py``): properties of the pure rule, the admission queue that
applies it, every store through the contract fixtures, and a real run where a late group gets
its share while the first group's long tasks still run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import conveyor
from conveyor.api import open_run
from conveyor.core.admission import AdmissionQueue, GroupInfo, Offer, Shape
from conveyor.core.borrow import DEFAULT_BOUND_SHARE, BorrowPolicy, borrow_check, fair_share
from conveyor.errors import GraphError
from conveyor.graphfile import graph_from_dict
from conveyor.store.base import Store
from conveyor.store.urls import open_store
from conveyor.testing import EventLog
from helpers import wait_until

T0 = 1_000_000.0
LEASE = 10.0

policies = st.one_of(
    st.sampled_from(["strict", "bounded", "work_conserving"]),
    st.integers(0, 6).map(lambda n: f"bounded:{n}"),
    st.integers(0, 100).map(lambda p: f"bounded:{p}%"),
).map(BorrowPolicy.parse)
weights = st.dictionaries(
    st.sampled_from("abcde"), st.sampled_from([0.5, 1.0, 2.0, 3.0]), min_size=1, max_size=5
)


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


# -- the pure rule ------------------------------------------------------------------------------
def test_policy_parse_and_default_bound() -> None:
    assert BorrowPolicy.parse("bounded:3").bound(100) == 3
    assert BorrowPolicy.parse("bounded:10%").bound(100) == 10
    assert BorrowPolicy.parse("bounded").bound(100) == 100 * DEFAULT_BOUND_SHARE
    assert BorrowPolicy.parse("bounded").bound(2) == 1  # at least one slot
    assert BorrowPolicy.parse("strict").bound(100) == 0
    assert math.isinf(BorrowPolicy.parse("work_conserving").bound(100))
    assert BorrowPolicy.parse("bounded:100%").bound(8) == 8
    for bad in ("lenient", "bounded:", "bounded:-1", "bounded:x%", "", "bounded:150%",
                "bounded:100.5%"):  # fmt: skip
        with pytest.raises(ValueError, match="borrow policy"):
            BorrowPolicy.parse(bad)


@settings(max_examples=300, deadline=None)
@given(w=weights, policy=policies, total=st.integers(1, 64), data=st.data())
def test_borrow_check_limits_exactly_share_plus_bound(
    w: dict[str, float], policy: BorrowPolicy, total: int, data: st.DataObject
) -> None:
    group = data.draw(st.sampled_from(sorted(w)))
    running = data.draw(st.integers(0, total + 8))
    active = set(w)
    got = borrow_check(group, running, w, active, total, policy)
    share = fair_share(group, w, active, total)
    alone = active == {group}
    if policy.mode == "work_conserving" or alone:
        assert got is None  # today's behaviour; and a lone group has the whole pool
    else:
        assert (got is None) == (running < share + policy.bound(total))
    if got is not None:
        assert (got.running, got.share, got.total) == (running, share, total)
        assert got.bound == policy.bound(total) and got.policy == str(policy)


@settings(max_examples=200, deadline=None)
@given(w=weights, total=st.integers(1, 64), running=st.integers(0, 70), data=st.data())
def test_policies_are_ordered_strict_bounded_work_conserving(
    w: dict[str, float], total: int, running: int, data: st.DataObject
) -> None:
    group = data.draw(st.sampled_from(sorted(w)))
    allowed = [
        borrow_check(group, running, w, set(w), total, BorrowPolicy.parse(p)) is None
        for p in ("strict", "bounded", "work_conserving")
    ]
    assert allowed == sorted(allowed)  # whatever strict allows, bounded does; and so on


@settings(max_examples=200, deadline=None)
@given(w=weights.filter(lambda d: len(d) > 1), total=st.integers(1, 64))
def test_strict_shares_cover_every_slot(w: dict[str, float], total: int) -> None:
    """Under strict, groups that all have work and all sit at their limit fill the pool: a
    group's limit is its share rounded up, and the shares sum to the pool."""
    strict = BorrowPolicy.parse("strict")
    limits = {}
    for g in w:
        n = 0
        while borrow_check(g, n, w, set(w), total, strict) is None:
            n += 1
        limits[g] = n
    assert sum(limits.values()) >= total


@settings(max_examples=150, deadline=None)
@given(w=weights, policy=policies, total=st.integers(2, 24), ready=st.integers(1, 30))
def test_admission_queue_starts_no_group_beyond_its_limit_and_idles_only_at_limits(
    w: dict[str, float], policy: BorrowPolicy, total: int, ready: int
) -> None:
    """Every group has ``ready`` ready tasks and one more waiting group has work pending: the
    queue fills slots until every group is at its limit or the pool is full."""
    q = AdmissionQueue({g: GroupInfo(wt) for g, wt in w.items()})
    q.borrow = policy
    q.groups["late"] = GroupInfo(1.0)
    q.unfinished["late"] = 1  # pending, nothing ready
    n = 0
    for g in sorted(w):
        sid = q.shape_id(Shape(g))
        q.add_unfinished(sid, ready)
        for _ in range(ready):
            q.push(n, (0, 0, n), sid)
            n += 1
    running = 0
    while running < total:
        got = q.pick(Offer(total - running, capacity=total), lambda _i: True, 0.0)
        if got is None:
            break
        q.started_shape(got.shape)
        running += 1
    active = {*w, "late"}
    for g in w:
        limit = fair_share(g, {**w, "late": 1.0}, active, total) + policy.bound(total)
        assert q.groups[g].running < limit + 1  # started only while below its limit
        if running < total and q.groups[g].running < ready:  # idle slots: g is at its limit
            assert q.borrow_refusal(g, total) is not None


# -- graph file, API, CLI ------------------------------------------------------------------------
def test_borrow_in_the_graph_file_and_the_api() -> None:
    spec = graph_from_dict({"borrow": "strict", "groups": {"a": {"borrow": "bounded:2"}},
                            "tasks": [{"id": "t", "group": "a"}]})  # fmt: skip
    assert spec.borrow == "strict" and spec.groups["a"].borrow == "bounded:2"
    with pytest.raises(GraphError, match="group 'a', field 'borrow': unknown borrow policy"):
        graph_from_dict({"groups": {"a": {"borrow": "greedy"}}, "tasks": [{"id": "t"}]})
    with pytest.raises(GraphError, match="borrow policy"):
        conveyor.Graph("g", borrow="greedy")
    g = conveyor.Graph("g", borrow="bounded:10%")
    g.group("a", borrow="strict")
    assert g.spec().borrow == "bounded:10%" and g.spec().groups["a"].borrow == "strict"


# -- every store (memory, SQLite, PostgreSQL) ---------------------------------------------------
@pytest.fixture
def store(store_url: str, open_url: Any) -> Store:
    s: Store = open_url(store_url)
    return s


@pytest.mark.parametrize("policy", ["bounded:1", "strict", "work_conserving"])
def test_store_holds_a_group_to_its_share_plus_bound(store: Store, policy: str) -> None:
    """Groups a and b weigh the same on 4 slots; b's tasks wait on a parent, so b is active and
    a's share is 2. a may run 2 + the policy's bound."""
    spec = graph_from_dict(
        {"name": "g", "borrow": policy, "groups": {"a": {}, "b": {}},
         "tasks": [{"id": f"a{i}", "cmd": "true", "group": "a"} for i in range(6)]
         + [{"id": "b1", "cmd": "true", "group": "b", "deps": ["a0"]}]},
        check_functions=False,
    )  # fmt: skip
    store.open_graph(spec, T0)
    got = []
    while len(got) < 4:
        c = store.claim("w1", 1, T0, LEASE, offer=Offer(4 - len(got), capacity=4))
        if not c:
            break
        got += c
    limit = {"bounded:1": 3, "strict": 2, "work_conserving": 4}[policy]
    assert len(got) == limit
    waiting = next(f"a{i}" for i in range(6) if f"a{i}" not in {c.id for c in got})
    why = store.explain(waiting, T0, [Offer(4 - len(got), capacity=4)])
    if policy == "work_conserving":
        assert why.code != "borrow_limit"
    else:
        assert why.code == "borrow_limit", why
        assert why.details["running"] == limit and why.details["share"] == 2.0
        assert why.details["bound"] == limit - 2 and why.details["policy"] == policy


# -- a real run --------------------------------------------------------------------------------
def test_late_group_gets_its_share_while_the_first_groups_long_tasks_run() -> None:
    """Group a has six long tasks on 4 slots; group b's two tasks become ready only when a's
    gate task ends. Under ``bounded:1`` a holds at most 3 slots (share 2 + 1), so b starts both
    of its tasks at once, before any of a's long tasks ends: its share well within one task
    duration (under work_conserving a would hold all 4 and b would wait for a long task)."""
    hold, gate = threading.Event(), threading.Event()

    def long_task() -> None:
        hold.wait(60)

    def gate_task() -> None:
        gate.wait(60)

    g = conveyor.Graph("late", borrow="bounded:1")
    g.group("a")
    g.group("b")
    g.add(gate_task, id="gate", group="a")
    for i in range(6):
        g.add(long_task, id=f"a{i}", group="a")
    for i in range(2):
        g.add(long_task, id=f"b{i}", group="b", deps=["gate"])  # b holds 2 slots at once
    log = EventLog()
    run = open_run(g, workers=4, emit=log)
    done: list[Any] = []
    thread = threading.Thread(target=lambda: done.append(run.run()), daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(log.tasks("task_started")) == 3, 10, "a's first 3 tasks")
        waiting = next(f"a{i}" for i in range(6) if f"a{i}" not in log.tasks("task_started"))
        why = run.engine.explain(waiting)
        assert why.code == "borrow_limit" and why.details["running"] == 3, why
        gate.set()
        wait_until(lambda: {"b0", "b1"} <= set(log.tasks("task_started")), 10, "b's share")
        assert not log.tasks("task_finished") or set(log.tasks("task_finished")) <= {
            "gate",
            "b0",
            "b1",
        }  # no long task of a ended: b got its share without waiting for one
    finally:
        gate.set()
        hold.set()
        thread.join(60)
        run.close()
    assert done and done[0].exit_code == 0


def test_cli_borrow_option_and_why_borrow_limit(tmp_path: Path) -> None:
    """`conveyor submit --borrow` is what the workers apply; `why` says borrow_limit with the
    numbers; a bad policy is one line and exit 2."""
    spec = {"name": "g", "groups": {"a": {}, "b": {}},
            "tasks": [{"id": f"a{i}", "cmd": "true", "group": "a"} for i in range(4)]
            + [{"id": "b1", "cmd": "true", "group": "b", "deps": ["a0"]}]}  # fmt: skip
    (tmp_path / "g.json").write_text(json.dumps(spec))
    bad = cli("submit", "g.json", "--db", "sqlite:///p.db", "--borrow", "greedy", cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "unknown borrow policy 'greedy'" in bad.stderr
    ok = cli("submit", "g.json", "--db", "sqlite:///p.db", "--borrow", "strict", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    store = open_store("sqlite:///" + str(tmp_path / "p.db"))
    try:
        now = time.time()  # `why` asks the live workers (registered now) what they offer
        store.register_worker("w1", now, {"slots": 2})
        got = []
        while c := store.claim("w1", 1, now, LEASE, offer=Offer(2 - len(got), capacity=2)):
            got += c
        assert len(got) == 1  # a's share of 2 slots beside b (waiting on a0) is 1
    finally:
        store.close()
    why = cli("why", "--db", "sqlite:///p.db", "a3", "--json", cwd=tmp_path)
    assert why.returncode == 0, why.stderr
    d = json.loads(why.stdout)
    assert d["reason"] == "borrow_limit" and d["policy"] == "strict" and d["running"] == 1, d
