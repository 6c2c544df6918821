"""Admission through the real engine (threads, the memory store): caps, fair share, labels and
resources, gangs, ``check_fit``, ``explain`` reason codes and bad input at submit.

No sleeps: tasks report their start on a queue and block on their own ``Event``; the test
thread (or the engine's ``on_tick``) decides what happens next."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import conveyor
from conveyor.core.retry import RetryPolicy
from conveyor.errors import GraphError
from conveyor.model import TaskState
from conveyor.runtime.engine import Engine
from conveyor.store.memory import MemoryStore
from conveyor.testing import FakeClock

WAIT = 10.0  # s: generous bound on any cross-thread wait; never reached when things work


class Gate:
    """Tasks that report ``(id, group)`` on start and block until released; counts the most
    that ran at once per group (thread-safe)."""

    def __init__(self) -> None:
        self.started: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.release: dict[str, threading.Event] = {}
        self.lock = threading.Lock()
        self.running: dict[str, int] = {}
        self.peak: dict[str, int] = {}

    def fn(self, tid: str, group: str) -> Callable[[], str]:
        ev = self.release.setdefault(tid, threading.Event())

        def body() -> str:
            with self.lock:
                n = self.running[group] = self.running.get(group, 0) + 1
                self.peak[group] = max(self.peak.get(group, 0), n)
            self.started.put(tid)
            ev.wait(WAIT)
            with self.lock:
                self.running[group] -= 1
            return tid

        return body

    def free(self) -> None:
        """Let every task (started or not) return at once."""
        for ev in self.release.values():
            ev.set()

    def next_start(self) -> str:
        return self.started.get(timeout=WAIT)

    def starts(self, n: int) -> list[str]:
        return [self.next_start() for _ in range(n)]


def run_in_thread(graph: Any, **options: Any) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["result"] = conveyor.run(graph, **options)
        except BaseException as exc:  # reported to the test thread
            out["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t, out


def finish(t: threading.Thread, out: dict[str, Any]) -> Any:
    t.join(WAIT)
    assert not t.is_alive()
    if "error" in out:
        raise out["error"]
    return out["result"]


def engine_for(graph: conveyor.Graph, **kw: Any) -> Engine:
    """An engine on a fresh memory store without running it (no ``check_fit``)."""
    store = MemoryStore()
    spec = graph.spec()
    store.open_graph(spec, time.time())
    return Engine(store, functions={t.id: t for t in spec.tasks if callable(t.fn)}, **kw)


# -- caps, fair share, labels, resources ----------------------------------------------------------
def test_engine_group_cap_never_exceeded_while_others_fill_the_slots() -> None:
    gate = Gate()
    g = conveyor.Graph("caps", groups={"alice": {"cap": 2}, "bob": {}})
    for k in range(8):
        g.add(gate.fn(f"a{k}", "alice"), id=f"a{k}", group="alice")
    for k in range(4):
        g.add(gate.fn(f"b{k}", "bob"), id=f"b{k}", group="bob")
    t, out = run_in_thread(g, workers=6)
    first = gate.starts(6)
    assert sorted(x[0] for x in first) == ["a", "a", "b", "b", "b", "b"]
    gate.free()
    res = finish(t, out)
    assert res.ok
    assert gate.peak == {"alice": 2, "bob": 4}


def test_engine_fair_share_one_to_three_visible_in_start_order() -> None:
    gate = Gate()
    g = conveyor.Graph("fair", groups={"a": {"weight": 1}, "b": {"weight": 3}})
    for k in range(6):
        g.add(gate.fn(f"a{k}", "a"), id=f"a{k}", group="a")
    for k in range(6):
        g.add(gate.fn(f"b{k}", "b"), id=f"b{k}", group="b")
    t, out = run_in_thread(g, workers=4)
    first = gate.starts(4)
    assert sorted(x[0] for x in first) == ["a", "b", "b", "b"]  # 4 slots at 1:3
    b_first = next(x for x in first if x[0] == "b")
    gate.release[b_first].set()  # b drops to 2 of its 3: the slot goes back to b
    assert gate.next_start()[0] == "b"
    a_first = next(x for x in first if x[0] == "a")
    gate.release[a_first].set()  # a drops to 0 of its 1: a goes next
    assert gate.next_start()[0] == "a"
    gate.free()
    assert finish(t, out).ok


def test_engine_resources_and_labels_match_the_worker_offer() -> None:
    gate = Gate()
    g = conveyor.Graph("fit")
    for k in range(4):
        g.add(gate.fn(f"c{k}", "cpu2"), id=f"c{k}", resources={"cpu": 2})
    asks = [
        {"gpu": "a100"},
        {"gpu": {"ne": "k80"}},
        {"zone": {"in": ["a", "b"]}},
        {"ssd": {"exists": False}},
        {"mem_gb": {">=": 64}},
    ]
    for k, ask in enumerate(asks):
        g.add(gate.fn(f"l{k}", "labelled"), id=f"l{k}", labels=ask)
    t, out = run_in_thread(
        g, workers=8, resources={"cpu": 4}, labels={"gpu": "a100", "zone": "a", "mem_gb": 128}
    )
    first = gate.starts(7)  # 2 cpu-2 tasks fill 4 cpu; the 5 labelled ones take other slots
    assert sorted(x[0] for x in first).count("c") == 2
    gate.free()
    assert finish(t, out).ok
    assert gate.peak["cpu2"] == 2


def test_engine_check_fit_refuses_a_task_no_worker_could_run() -> None:
    g = conveyor.Graph("nofit")
    g.add(len, [1], id="small")
    g.add(len, [1], id="huge", resources={"cpu": 64})
    with pytest.raises(GraphError, match="'huge' can never run"):
        conveyor.run(g, workers=2, resources={"cpu": 4})
    g2 = conveyor.Graph("nolabel")
    g2.add(len, [1], id="needs-a100", labels={"gpu": "a100"})
    with pytest.raises(GraphError, match="'needs-a100' can never run"):
        conveyor.run(g2, workers=2, labels={"gpu": "k80"})


def test_engine_check_fit_refuses_a_gang_larger_than_the_worker() -> None:
    g = conveyor.Graph("biggang")
    for k in range(3):
        g.add(len, [1], id=f"m{k}", gang="G")
    with pytest.raises(GraphError, match="gang 'G'"):
        conveyor.run(g, workers=2)
    g2 = conveyor.Graph("gangres")
    for k in range(3):
        g2.add(len, [1], id=f"m{k}", gang="G", resources={"cpu": 2})
    with pytest.raises(GraphError, match="gang 'G'"):
        conveyor.run(g2, workers=4, resources={"cpu": 4})


def test_cli_run_refuses_an_impossible_task_with_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "g.json"
    path.write_text(
        '{"name": "g", "tasks": [{"id": "big", "cmd": "true", "resources": {"cpu": 8}}]}'
    )
    proc = subprocess.run(
        [sys.executable, "-c", "from conveyor.cli import main; main()", "run", str(path),
         "--resources", "cpu=4", "--quiet"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "'big' can never run" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


# -- gangs ----------------------------------------------------------------------------------------
def test_engine_gang_members_start_together_on_a_busy_worker() -> None:
    """A 3-barrier inside the gang members deadlocks unless all three start at once."""
    barrier = threading.Barrier(3, timeout=WAIT)
    gate = Gate()
    g = conveyor.Graph("gang", groups={"solo": {}, "team": {}})
    for k in range(5):
        g.add(gate.fn(f"s{k}", "solo"), id=f"s{k}", group="solo")
    for k in range(3):
        g.add(barrier.wait, id=f"m{k}", group="team", gang="G", gang_size=3)
    t, out = run_in_thread(g, workers=3)
    gate.starts(1)  # solo takes a slot first (better key); the gang holds the other two
    gate.free()
    res = finish(t, out)
    assert res.ok, res.failed


def test_engine_gang_member_retry_restarts_the_whole_gang() -> None:
    barrier = threading.Barrier(3, timeout=WAIT)
    failed_once = threading.Event()
    calls: list[tuple[str, int]] = []
    lock = threading.Lock()

    def member(name: str) -> Callable[[], str]:
        def body() -> str:
            attempt = conveyor.current().attempt
            with lock:
                calls.append((name, attempt))
            barrier.wait()
            if name == "m0" and not failed_once.is_set():
                raise RuntimeError("boom")
            if name != "m0" and not failed_once.is_set():
                failed_once.wait(WAIT)  # still running when m0's failure lands
            return name

        return body

    def on_result(res: Any) -> None:
        if res.id == "m0" and res.state is TaskState.RETRY_WAIT:
            failed_once.set()  # siblings have been released by now: let their threads end

    g = conveyor.Graph("gang-retry")
    for k in range(3):
        g.add(member(f"m{k}"), id=f"m{k}", gang="G", retries=1)
    res = conveyor.run(g, workers=3, on_result=on_result, retry=RetryPolicy(base=0.01, jitter=0.0))
    assert res.ok, res.failed
    runs = sorted(calls)
    assert [n for n, _ in runs] == ["m0", "m0", "m1", "m1", "m2", "m2"]  # all ran twice
    assert res.result("m0").attempt == 2


def test_engine_gang_member_fatal_failure_cancels_running_siblings() -> None:
    barrier = threading.Barrier(3, timeout=WAIT)
    done = threading.Event()

    def member(name: str) -> Callable[[], str]:
        def body() -> str:
            barrier.wait()
            if name == "m0":
                raise RuntimeError("boom")
            done.wait(WAIT)
            return name

        return body

    def on_result(res: Any) -> None:
        if res.id == "m0":
            done.set()

    g = conveyor.Graph("gang-fail")
    for k in range(3):
        g.add(member(f"m{k}"), id=f"m{k}", gang="G")
    g.add(len, [1], id="after", deps=["m1"])
    res = conveyor.run(g, workers=3, on_result=on_result)
    assert not res.ok
    assert res.result("m0").state is TaskState.FAILED
    for sib in ("m1", "m2"):
        r = res.result(sib)
        assert r.state is TaskState.FAILED and "gang member 'm0' failed" in (r.error or "")
    assert res.result("after").state is TaskState.SKIPPED


# -- explain --------------------------------------------------------------------------------------
def blocker(release: threading.Event) -> Callable[[], None]:
    def body() -> None:
        release.wait(WAIT)

    return body


def test_explain_scheduling_reasons_with_their_numbers() -> None:
    hold = threading.Event()
    g = conveyor.Graph(
        "why", groups={"capped": {"cap": 1}, "light": {"weight": 1}, "heavy": {"weight": 3}}
    )
    g.add(blocker(hold), id="parent", group="light")
    g.add(len, [1], id="child", deps=["parent"], group="light")
    g.add(blocker(hold), id="c0", group="capped")
    g.add(len, [1], id="c1", group="capped")
    g.add(len, [1], id="light2", group="light")
    g.add(blocker(hold), id="h0", group="heavy")
    g.add(blocker(hold), id="h1", group="heavy")
    g.add(len, [1], id="h2", group="heavy")
    g.add(len, [1], id="h3", group="heavy")

    reasons: dict[str, Any] = {}

    def tick(engine: Engine) -> None:
        if not reasons:
            for tid in ("child", "c1", "light2", "h3"):
                reasons[tid] = engine.explain(tid).as_dict()
            reasons["counts"] = engine.store.counts()
            hold.set()

    res = conveyor.run(g, workers=4, on_tick=tick)
    assert res.ok, res.failed
    assert reasons["counts"]["running"] == 4  # parent, c0, h0, h1
    assert reasons["child"]["reason"] == "waiting_on_parents"
    assert reasons["child"]["parents"] == ["parent"]
    assert reasons["c1"]["reason"] == "group_cap"
    assert (reasons["c1"]["running"], reasons["c1"]["cap"]) == (1, 1)
    why = reasons["light2"]
    assert why["reason"] == "fair_share"  # light runs 1 of weight 1; heavy 2 of weight 3
    assert (why["group"], why["running"], why["behind_groups"]) == ("light", 1, ["heavy"])
    assert why["share"] == pytest.approx(4 * 1 / 5)  # 4 slots; weights 1+3+1 have ready work
    assert reasons["h3"]["reason"] == "behind_higher_priority"
    assert (reasons["h3"]["ahead"], reasons["h3"]["first"]) == (1, "h2")


def test_explain_fit_reasons_with_their_numbers() -> None:
    g = conveyor.Graph("why-fit")
    g.add(len, [1], id="k80", labels={"gpu": "k80"})
    g.add(len, [1], id="cpu3", resources={"cpu": 3})
    g.add(len, [1], id="cpu64", resources={"cpu": 64})
    engine = engine_for(g, workers=2, resources={"cpu": 2}, labels={"gpu": "a100"})
    why = engine.explain("k80").as_dict()
    assert why["reason"] == "no_matching_worker"
    assert why["asked"] == ["gpu=k80"] and why["closest_worker_labels"] == {"gpu": "a100"}
    why = engine.explain("cpu64").as_dict()
    assert why["reason"] == "never_fits" and why["need"] == {"cpu": 64.0}
    assert why["free"] == {"cpu": 2.0}


def test_explain_insufficient_resources_while_others_hold_them() -> None:
    hold = threading.Event()
    g = conveyor.Graph("why-res")
    g.add(blocker(hold), id="big", resources={"cpu": 3})
    g.add(len, [1], id="two", resources={"cpu": 2})
    reasons = explain_at_first_tick_with(g, ["two"], hold, workers=4, resources={"cpu": 4})
    why = reasons["two"]
    assert why["reason"] == "insufficient_resources"
    assert why["need"] == {"cpu": 2.0} and why["free"] == {"cpu": 1.0}


def test_explain_gang_reasons_with_their_numbers() -> None:
    hold = threading.Event()
    g = conveyor.Graph("why-gang", groups={"solo": {}, "team": {}})
    g.add(blocker(hold), id="s0", group="solo")
    g.add(blocker(hold), id="gate", group="team")
    for k in range(3):
        deps = ["gate"] if k == 2 else []
        g.add(len, [1], id=f"m{k}", group="team", gang="G", gang_size=3, deps=deps)
    g.add(len, [1], id="n0", group="team", gang="N", gang_size=3)
    g.add(len, [1], id="n1", group="team", gang="N", gang_size=3)
    g.add(len, [1], id="n2", group="team", gang="N", gang_size=3)
    reasons = explain_at_first_tick_with(g, ["m0", "n0"], hold, workers=4)
    assert reasons["m0"]["reason"] == "gang_incomplete"
    assert (reasons["m0"]["need"], reasons["m0"]["ready"]) == (3, 2)
    why = reasons["n0"]
    assert why["reason"] == "gang_incomplete"
    assert (why["need"], why["largest_free_set"], why["reserved"]) == (3, 2, True)


def test_explain_retry_backoff_says_until_when() -> None:
    clock = FakeClock()
    seen: dict[str, Any] = {}
    failed = threading.Event()

    def flaky() -> int:
        if not failed.is_set():
            failed.set()
            raise RuntimeError("once")
        return 1

    g = conveyor.Graph("why-retry", groups={"x": {}})
    g.add(flaky, id="flaky", group="x", retries=1)
    engine = engine_for(g, workers=1, retry=RetryPolicy(base=0.3, jitter=0.0), clock=clock)

    def on_result(res: Any) -> None:
        if res.state is TaskState.RETRY_WAIT:
            seen["failed_at"] = clock.wall()
            seen["why"] = engine.explain("flaky").as_dict()
            clock.advance(0.1)
            seen["later"] = engine.explain("flaky").as_dict()
            clock.advance(0.2)  # the backoff is over: the retry may start

    engine.on_result = on_result
    engine.run()
    why, later = seen["why"], seen["later"]
    assert why["reason"] == later["reason"] == "retry_backoff"
    # exact up to float resolution at unix times (~2e-7 s)
    assert why["until"] == later["until"] == pytest.approx(seen["failed_at"] + 0.3, abs=1e-6)
    assert why["in_s"] == pytest.approx(0.3, abs=1e-6)
    assert later["in_s"] == pytest.approx(0.2, abs=1e-6)
    assert engine.store.result("flaky").state is TaskState.DONE


def explain_at_first_tick_with(
    graph: conveyor.Graph, ids: list[str], hold: threading.Event, **options: Any
) -> dict[str, Any]:
    reasons: dict[str, Any] = {}

    def tick(engine: Engine) -> None:
        if not reasons:
            reasons.update({tid: engine.explain(tid).as_dict() for tid in ids})
            hold.set()

    res = conveyor.run(graph, on_tick=tick, **options)
    assert res.ok, res.failed
    return reasons


# -- bad input at submit --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("graph", "match"),
    [
        (
            {"groups": {"alice": {}}, "tasks": [{"id": "t", "cmd": "true", "group": "bob"}]},
            "unknown group 'bob'",
        ),
        ({"groups": {"alice": {"weight": 0}}, "tasks": []}, "group 'alice', field 'weight'"),
        ({"groups": {"alice": {"weight": -1}}, "tasks": []}, "group 'alice', field 'weight'"),
        (
            {
                "groups": {"alice": {"cap": 2}},
                "tasks": [
                    {"id": f"m{k}", "cmd": "true", "group": "alice", "gang": "G"} for k in range(3)
                ],
            },
            "capped at 2",
        ),
        (
            {"tasks": [{"id": "t", "cmd": "true", "labels": {"gpu": {"like": "a1"}}}]},
            "unknown operator 'like'",
        ),
        (
            {"tasks": [{"id": "t", "cmd": "true", "labels": {"gpu": {">=": "a100"}}}]},
            "ordered comparisons on strings",
        ),
        (
            {
                "tasks": [
                    {"id": "m0", "cmd": "true", "gang": "G", "labels": {"gpu": "a100"}},
                    {"id": "m1", "cmd": "true", "gang": "G"},
                ]
            },
            "gang 'G'",
        ),
    ],
)
def test_run_bad_admission_input_is_a_graph_error_at_submit(
    graph: dict[str, Any], match: str
) -> None:
    with pytest.raises(GraphError, match=match):
        conveyor.run({"name": "bad", **graph}, workers=4, labels={"gpu": "a100"})


def test_every_reason_code_is_documented_and_known() -> None:
    """One list of the ``why`` codes (``core.explain.CODES``): the table of docs/fairness.md and
    the states it names are exactly those codes (the dashboard answers 404 for any other)."""
    import re

    from conveyor.core.explain import CODES

    doc = (Path(__file__).parent.parent / "docs" / "fairness.md").read_text()
    section = doc.split("## Why is my task not running?")[1].split("\n## ")[0]
    table = set(re.findall(r"^\| `(\w+)` +\|", section, re.M))
    states = re.search(
        r"report their state \(([^)]*)\); a cell of a table build says `(\w+)`", section
    )
    assert states is not None
    named = set(re.findall(r"`(\w+)`", states.group(1))) | {states.group(2)}
    assert table | named == CODES, (table | named) ^ CODES
