"""The engine end to end, in process, with the memory store: order, executors, failures,
children, results as they finish."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import conveyor
from conveyor import Graph, TaskFailed, TaskState
from conveyor.core.retry import RetryPolicy
from conveyor.errors import ConveyorError
from conveyor.runtime.engine import Engine
from conveyor.store.base import Claim
from conveyor.store.memory import MemoryStore
from conveyor.testing import EventLog, FakeClock
from helpers import expected_start_order, pid_and_square

TINY_RETRY = RetryPolicy(base=0.001, factor=2.0, max_delay=0.01, jitter=0.0)


def started(log: EventLog) -> list[str]:
    return log.tasks("task_started")


# -- order ------------------------------------------------------------------------------------
@st.composite
def small_dags(draw: st.DrawFn) -> tuple[list[str], list[list[str]]]:
    n = draw(st.integers(1, 30))
    perm = draw(st.permutations(range(n)))
    topo = [sorted(draw(st.sets(st.integers(0, i - 1), max_size=3))) if i else [] for i in range(n)]
    ids = [f"t{perm[k]}" for k in range(n)]
    return ids, [[f"t{p}" for p in topo[perm[k]]] for k in range(n)]


@settings(max_examples=40, deadline=None)
@given(dag=small_dags())
def test_run_one_worker_noop_tasks_start_order_is_key_order(dag) -> None:
    ids, parents = dag
    # a graph file may name a parent after its child; a dict keeps the random order
    spec = {"tasks": [{"id": t, "deps": ps} for t, ps in zip(ids, parents, strict=True)]}
    log = EventLog()
    result = conveyor.run(spec, workers=1, emit=log)
    assert result.exit_code == 0
    assert started(log) == expected_start_order(ids, parents)


@settings(max_examples=40, deadline=None)
@given(dag=small_dags(), data=st.data())
def test_run_without_events_finishes_noops_in_key_order_around_real_tasks(dag, data) -> None:
    """Without events no-ops finish inside the store, many per claim: still in key order,
    stopping at each function task (which finds exactly the tasks before it done), each with
    attempt 1 and the value ``None``."""
    from conveyor.model import GraphSpec, TaskSpec

    ids, parents = dag
    real = data.draw(st.sets(st.sampled_from(ids), max_size=4), label="functions")
    store = MemoryStore()
    seen: list[tuple[str, int]] = []

    def probe(tid: str) -> Any:
        def fn() -> str:
            seen.append((tid, store.counts()["done"]))
            return tid

        return fn

    tasks = [
        TaskSpec(id=t, fn=probe(t) if t in real else None, deps=tuple(ps))
        for t, ps in zip(ids, parents, strict=True)
    ]
    result = conveyor.run(GraphSpec("mixed", tasks, {}), workers=1, executor="inline",
                          store=store)  # fmt: skip
    order = expected_start_order(ids, parents)
    assert seen == [(t, k) for k, t in enumerate(order) if t in real]
    assert result.stats.done == result.stats.started == len(ids)
    for t in ids:
        res = result.result(t)
        assert (res.state, res.value, res.attempt) == (TaskState.DONE, t if t in real else None, 1)


def test_engine_child_job_runs_before_shallower_work_of_newer_root() -> None:
    def spawn() -> str:
        ctx = conveyor.current()
        job = Graph("job")
        j1 = job.add(None, id="j1")
        job.add(None, id="j2", deps=[j1])
        ctx.submit_job(job)
        # depends on a task of the newer root: same depth as B2 once B1 is done
        ctx.submit(None, id="c", deps=["B1"])
        return "spawned"

    g1 = Graph("g1")
    a = g1.add(None, id="A")
    g1.add(spawn, id="T", deps=[a])
    g2 = Graph("g2")
    b0 = g2.add(None, id="B0")
    b1 = g2.add(None, id="B1", deps=[b0])
    g2.add(None, id="B2", deps=[b1])
    log = EventLog()
    store = MemoryStore()
    store.emit = log
    now = time.time()
    store.open_graph(g1.spec(), now)
    store.open_graph(g2.spec(), now)
    Engine(store, workers=1, emit=log).run()
    assert started(log) == ["A", "T", "T/j1", "T/j2", "B0", "B1", "c", "B2"]
    assert store.frontier.depth[store.frontier.index["T/j1"]] == 2
    assert store.frontier.depth[store.frontier.index["c"]] == 2
    assert store.counts()["done"] == 8


def test_run_child_job_submitted_at_run_time_runs_before_pending_roots() -> None:
    def spawn() -> int:
        job = Graph("job")
        x = job.add(pow, 2, 5, id="x")
        job.add(lambda v: v + 1, x, id="y")
        handles = conveyor.current().submit_job(job)
        return len(handles)

    g = Graph("g")
    g.add(spawn, id="spawn")
    g.add(None, id="later")
    log = EventLog()
    result = conveyor.run(g, workers=1, emit=log)
    assert started(log) == ["spawn", "spawn/x", "spawn/y", "later"]
    assert result["spawn"] == 2
    assert result["spawn/y"] == 33
    assert result.exit_code == 0


# -- parents' results ------------------------------------------------------------------------
def test_run_taskref_args_receive_parent_results() -> None:
    seen = {}

    def combine(x: int, ys: list[int], *, z: int) -> int:
        seen.update(conveyor.current().parent_results)
        return x + sum(ys) + z

    g = Graph("refs")
    a = g.add(lambda: 1, id="a")
    b = g.add(lambda: 10, id="b")
    c = g.add(lambda: 100, id="c")
    g.add(combine, a, [b, 5], kwargs={"z": c}, id="d")
    result = conveyor.run(g, workers=2)
    assert result["d"] == 116
    assert seen == {"a": 1, "b": 10, "c": 100}


def test_parent_results_is_a_mapping_read_only_by_tasks_that_look() -> None:
    reads: list[str] = []

    class CountingStore(MemoryStore):
        def parent_values(self, claim: Claim) -> dict[str, Any]:
            reads.append(claim.id)
            return super().parent_values(claim)

    seen: dict[str, Any] = {}

    def looks() -> None:
        p = conveyor.current().parent_results
        seen.update(mapping=isinstance(p, Mapping), n=len(p), has_a="a" in p, a=p["a"])
        seen.update(missing=p.get("zz", "-"), items=sorted(p.items()), keys=list(p))

    g = Graph("lazy")
    a = g.add(lambda: 1, id="a")
    b = g.add(lambda: 2, id="b")
    g.add(looks, id="looks", deps=[a, b])
    g.add(lambda: None, id="ignores", deps=[a, b])
    store = CountingStore()
    store.open_graph(g.spec(), time.time())
    Engine(store, workers=1).run()
    assert seen == {
        "mapping": True, "n": 2, "has_a": True, "a": 1, "missing": "-",
        "items": [("a", 1), ("b", 2)], "keys": ["a", "b"],
    }  # fmt: skip
    assert reads == ["looks"]  # the task that never looked did not read the store


def test_current_outside_task_raises() -> None:
    with pytest.raises(ConveyorError):
        conveyor.current()


# -- executors -------------------------------------------------------------------------------
def test_run_sync_function_runs_on_a_task_thread() -> None:
    g = Graph("threads")
    g.add(lambda: threading.current_thread().name, id="name")
    g.add(lambda: threading.get_ident(), id="ident")
    result = conveyor.run(g, workers=2)
    assert result["name"].startswith("conveyor-task")
    assert result["ident"] != threading.get_ident()


def test_run_async_function_runs_on_event_loop_with_context() -> None:
    async def fetch(x: int) -> tuple[int, str]:
        await asyncio.sleep(0)
        asyncio.get_running_loop()
        return x * 2, conveyor.current().task_id

    g = Graph("async")
    a = g.add(fetch, 21, id="a")
    g.add(lambda pair: pair[0] + 1, a, id="b")
    result = conveyor.run(g, workers=2)
    assert result["a"] == (42, "a")
    assert result["b"] == 43


def test_run_shell_command_stdout_is_result() -> None:
    g = Graph("cmd")
    g.cmd("echo hello; echo world", id="hi")
    g.cmd('printf %s "$CONVEYOR_TASK_ID"', id="env")
    g.cmd(["echo", "a list"], id="argv")
    result = conveyor.run(g, workers=2)
    assert result["hi"] == "hello\nworld"
    assert result["env"] == "env"
    assert result["argv"] == "a list"


def test_run_shell_command_nonzero_exit_fails_with_stderr_tail() -> None:
    g = Graph("cmdfail")
    g.cmd("echo one >&2; echo two >&2; echo the-cause >&2; exit 7", id="bad")
    result = conveyor.run(g, workers=1)
    res = result.result("bad")
    assert res.state is TaskState.FAILED
    assert "exited 7" in res.error
    assert "the-cause" in res.error
    assert result.exit_code == 1


def test_run_process_executor_runs_module_function_in_another_process() -> None:
    g = Graph("proc")
    g.add(pid_and_square, 7, id="p", executor="process")
    result = conveyor.run(g, workers=1)
    pid, value = result["p"]
    assert value == 49
    assert pid != os.getpid()


# -- retries ----------------------------------------------------------------------------------
def test_run_retry_backoff_grows_and_task_succeeds_on_last_attempt() -> None:
    attempts = []

    def flaky() -> str:
        attempts.append(conveyor.current().attempt)
        if len(attempts) < 3:
            raise RuntimeError(f"boom {len(attempts)}")
        return "ok"

    g = Graph("retry")
    g.add(flaky, id="f", retries=2)
    log = EventLog()
    policy = RetryPolicy(base=0.004, factor=2.0, max_delay=1.0, jitter=0.0)
    result = conveyor.run(g, workers=1, retry=policy, emit=log)
    assert result["f"] == "ok"
    assert attempts == [1, 2, 3]
    assert result.result("f").attempt == 3
    retrying = log.of("task_retrying")
    assert [e["attempt"] for e in retrying] == [1, 2]
    delays = [e["retry_at"] - e["ts"] for e in retrying]
    assert delays == pytest.approx([0.004, 0.008], abs=1e-6)  # float unix seconds
    assert "boom 1" in retrying[0]["error"]
    assert [e["attempt"] for e in log.of("task_started")] == [1, 2, 3]


def test_run_retries_spent_task_fails_with_last_error() -> None:
    g = Graph("retry-fail")
    g.add(lambda: 1 / 0, id="f", retries=2)
    g.add(None, id="after", deps=["f"])
    log = EventLog()
    result = conveyor.run(g, workers=1, retry=TINY_RETRY, emit=log)
    res = result.result("f")
    assert res.state is TaskState.FAILED and res.attempt == 3
    assert "ZeroDivisionError" in res.error
    assert log.names("f").count("task_started") == 3
    assert result.result("after").state is TaskState.SKIPPED


def test_run_retry_jitter_stays_within_policy_bounds() -> None:
    g = Graph("jitter")
    for i in range(5):
        g.add(lambda: 1 / 0, id=f"f{i}", retries=3)
    log = EventLog()
    policy = RetryPolicy(base=0.002, factor=2.0, max_delay=0.005, jitter=0.5)
    conveyor.run(g, workers=2, retry=policy, seed=7, emit=log)
    for e in log.of("task_retrying"):
        raw = min(0.005, 0.002 * 2 ** (e["attempt"] - 1))
        assert raw * 0.5 - 1e-9 <= e["retry_at"] - e["ts"] <= raw + 1e-9


def test_engine_waiting_retry_holds_no_worker() -> None:
    clock = FakeClock()
    calls = []

    def flaky() -> str:
        calls.append("R")
        if len(calls) == 1:
            raise RuntimeError("first attempt fails")
        return "R ok"

    def other() -> str:
        clock.advance(60.0)  # the retry's backoff (10 s) passes while this one runs
        return "S ok"

    g = Graph("wait")
    g.add(flaky, id="R", retries=1)
    g.add(other, id="S")
    log = EventLog()
    store = MemoryStore()
    store.emit = log
    store.open_graph(g.spec(), clock.wall())
    policy = RetryPolicy(base=10.0, factor=2.0, jitter=0.0)
    Engine(store, workers=1, clock=clock, retry=policy, emit=log).run()
    order = [(e["event"], e["task"]) for e in log.events if e["event"].startswith("task_")]
    order = [x for x in order if x[0] in ("task_started", "task_retrying", "task_finished")]
    assert order == [
        ("task_started", "R"),
        ("task_retrying", "R"),
        ("task_started", "S"),  # one worker, and it is free while R waits
        ("task_finished", "S"),
        ("task_started", "R"),
        ("task_finished", "R"),
    ]
    assert store.result("R").value == "R ok" and store.result("R").attempt == 2


# -- timeouts ----------------------------------------------------------------------------------
def test_run_thread_task_timeout_fails_and_run_does_not_wait_for_it() -> None:
    release = threading.Event()
    ended = threading.Event()

    def stuck() -> str:
        release.wait(10)
        ended.set()
        return "late"

    g = Graph("timeout-thread")
    g.add(stuck, id="stuck", timeout_s=0.05)
    g.add(None, id="down", deps=["stuck"])
    g.add(lambda: "fine", id="other")
    try:
        result = conveyor.run(g, workers=2)
        still_stuck = not ended.is_set()
    finally:
        release.set()
    res = result.result("stuck")
    assert res.state is TaskState.FAILED
    assert res.error.startswith("timeout")
    assert result.result("down").state is TaskState.SKIPPED
    assert result["other"] == "fine"
    assert still_stuck, "run() waited for a timed-out thread to finish"


def test_run_async_task_timeout_fails() -> None:
    async def forever() -> None:
        await asyncio.Event().wait()

    g = Graph("timeout-async")
    g.add(forever, id="a", timeout_s=0.05)
    g.add(lambda: 1, id="b")
    result = conveyor.run(g, workers=2)
    assert result.result("a").state is TaskState.FAILED
    assert result.result("a").error.startswith("timeout")
    assert result["b"] == 1


def test_run_cmd_task_timeout_kills_command_and_fails(tmp_path: Path) -> None:
    # The command outlives the per-test timeout unless it is killed; it names its pid first.
    pidfile = tmp_path / "pid"
    g = Graph("timeout-cmd")
    g.cmd(f"echo $$ > {pidfile}; exec sleep 600", id="c", timeout_s=1.0)
    try:
        result = conveyor.run(g, workers=1)
        res = result.result("c")
        assert res.state is TaskState.FAILED
        assert res.error.startswith("timeout")
        pid = int(pidfile.read_text())  # it started (the timeout hit a running command) ...
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # ... and is gone, reaped
    finally:
        if pidfile.exists() and pidfile.read_text().strip():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pidfile.read_text()), signal.SIGKILL)


# -- failures ----------------------------------------------------------------------------------
def test_run_final_failure_skips_downstream_and_rest_goes_on() -> None:
    g = Graph("fail")
    g.add(lambda: 1 / 0, id="a")
    g.add(None, id="b", deps=["a"])
    g.add(lambda: "c", id="c", deps=["b"])
    g.add(lambda: "d", id="d")
    g.add(lambda: "e", id="e", deps=["d"])
    log = EventLog()
    result = conveyor.run(g, workers=1, emit=log)
    assert result["d"] == "d" and result["e"] == "e"
    for t in ("b", "c"):
        res = result.result(t)
        assert res.state is TaskState.SKIPPED
        assert res.error.startswith("upstream_failed")
        with pytest.raises(TaskFailed):
            result[t]
    skipped = log.of("task_skipped")
    assert sorted(e["task"] for e in skipped) == ["b", "c"]
    assert {e["reason"] for e in skipped} == {"upstream_failed"}
    assert "b" not in started(log) and "c" not in started(log)
    assert set(result.failed) == {"a", "b", "c"}
    assert not result.ok
    assert result.exit_code == 1


def test_run_fail_fast_stops_starting_new_tasks() -> None:
    g = Graph("ff")
    g.add(lambda: 1 / 0, id="a")
    for i in range(5):
        g.add(lambda: None, id=f"later{i}")
    log = EventLog()
    result = conveyor.run(g, workers=1, fail_fast=True, emit=log)
    assert started(log) == ["a"]
    assert result.exit_code == 1
    assert result.counts["done"] == 0


def test_run_all_done_exit_code_zero() -> None:
    g = Graph("ok")
    a = g.add(lambda: 2, id="a")
    g.add(lambda x: x * 3, a, id="b")
    result = conveyor.run(g)
    assert result.ok and result.exit_code == 0
    assert result["b"] == 6
    assert result.counts["done"] == 2


# -- children and waiting -----------------------------------------------------------------------
def test_run_parent_waits_on_child_with_one_worker_without_deadlock() -> None:
    def parent() -> int:
        ctx = conveyor.current()
        first = ctx.submit(lambda: 20, id="kid")
        job = Graph("job")
        x = job.add(lambda: 1, id="x")
        job.add(lambda v: v + 1, x, id="y")
        handles = ctx.submit_job(job)
        return first.result(timeout=30) + sum(h.result(timeout=30) for h in handles)

    g = Graph("lend")
    g.add(parent, id="p")
    g.add(lambda: "other", id="q")
    result = conveyor.run(g, workers=1)
    assert result["p"] == 23
    assert result["p/x"] == 1 and result["p/y"] == 2
    assert result["q"] == "other"


def test_run_parent_waiting_on_failed_child_gets_task_failed() -> None:
    def parent() -> str:
        handle = conveyor.current().submit(lambda: 1 / 0, id="kid")
        try:
            handle.result(timeout=30)
        except TaskFailed as exc:
            return f"caught: {exc}"
        return "no error"

    g = Graph("lend-fail")
    g.add(parent, id="p")
    result = conveyor.run(g, workers=1)
    assert result["p"].startswith("caught:") and "ZeroDivisionError" in result["p"]
    assert result.result("kid").state is TaskState.FAILED


# -- results as they finish --------------------------------------------------------------------
def test_run_iter_yields_first_result_before_last_task_starts() -> None:
    g = Graph("iter")
    prev = None
    for i in range(5):
        prev = g.add(lambda *_: random.random(), *([prev] if prev else []), id=f"s{i}")
    log = EventLog()
    it = conveyor.run_iter(g, workers=1, emit=log)
    first = next(it)
    started_at_first = started(log)
    rest = list(it)
    assert first.id == "s0" and first.ok
    assert "s4" not in started_at_first
    assert [r.id for r in rest] == ["s1", "s2", "s3", "s4"]


def test_run_on_result_called_as_each_task_finishes() -> None:
    log = EventLog()
    seen: list[tuple[str, list[str]]] = []

    def on_result(res: conveyor.TaskResult) -> None:
        seen.append((res.id, started(log)))

    g = Graph("callback")
    for i in range(4):
        g.add(lambda: None, id=f"t{i}")
    g.add(lambda: 1 / 0, id="bad")
    result = conveyor.run(g, workers=1, emit=log, on_result=on_result)
    assert [s[0] for s in seen] == ["t0", "t1", "t2", "t3", "bad"]
    assert "t3" not in seen[0][1]  # the first result came before the last task started
    assert result.exit_code == 1
