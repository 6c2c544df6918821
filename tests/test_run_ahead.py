"""Run-ahead on the durable stores: a pool thread that finishes a sync function task parks its
success for the group commit and runs the next task its worker claimed ahead itself, with no
hop to the engine thread (issue 16, point 9b). What it does not run itself (no-ops, inline,
async and command tasks, tasks with a deadline) still starts, once, on the engine thread."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import conveyor
from conveyor import TaskState
from conveyor.store.urls import open_store
from conveyor.testing import FakeClock

TASKS = 400


def own_id() -> str:
    return conveyor.current().task_id


async def own_id_async() -> str:
    await asyncio.sleep(0)
    return conveyor.current().task_id


def joined(*parts: str) -> str:
    return "+".join(parts)


def test_pool_threads_run_the_tasks_claimed_ahead_themselves(tmp_path: Path) -> None:
    g = conveyor.Graph("trivial")
    for i in range(TASKS):
        g.add(own_id, id=f"t{i}")
    store = open_store(f"sqlite:///{tmp_path}/run.db")
    try:
        # a fake clock: tasks take no time, so the worker claims ahead in batches
        result = conveyor.run(g, store=store, workers=4, clock=FakeClock())
        assert result.ok and store.counts()["done"] == TASKS
        values = {f"t{i}": store.result(f"t{i}").value for i in range(TASKS)}
        started = [e["task"] for e in store.iter_events() if e["event"] == "task_started"]
    finally:
        store.close()
    assert values == {t: t for t in values}  # each task ran with its own context
    assert sorted(started) == sorted(values)  # each started once
    # one hop to the engine thread and back per task would make this 0
    assert result.stats.ran_ahead >= TASKS // 2, result.stats


def test_what_a_pool_thread_does_not_run_itself_starts_once_on_the_engine(
    tmp_path: Path,
) -> None:
    g = conveyor.Graph("mixed")
    expected: dict[str, object] = {}
    for i in range(60):
        kind = i % 6
        tid = f"k{kind}-{i}"
        if kind == 0:
            g.add(own_id, id=tid)
        elif kind == 1:
            g.add(own_id_async, id=tid)
        elif kind == 2:
            g.add_spec(conveyor.TaskSpec(tid))  # a no-op
            expected[tid] = None
            continue
        elif kind == 3:
            g.add(own_id, id=tid, executor="inline")
        elif kind == 4:
            g.add(own_id, id=tid, timeout_s=60.0)
        else:
            prev = f"k0-{i - 5}"
            g.add(joined, conveyor.TaskRef(prev), id=tid, deps=[prev])
            expected[tid] = prev
            continue
        expected[tid] = tid
    store = open_store(f"sqlite:///{tmp_path}/run.db")
    try:
        result = conveyor.run(g, store=store, workers=4, clock=FakeClock())
        ok = result.ok
        got = {t: store.result(t) for t in expected}
        started = [e["task"] for e in store.iter_events() if e["event"] == "task_started"]
    finally:
        store.close()
    assert ok
    assert {t: r.state for t, r in got.items()} == dict.fromkeys(expected, TaskState.DONE)
    assert {t: r.value for t, r in got.items()} == expected
    assert sorted(started) == sorted(expected)
    st = result.stats  # what this engine saw: each task done once, nothing refused or failed
    assert (st.started, st.done, st.failed, st.refused) == (len(expected), len(expected), 0, 0)


_RUNNING = [0, 0]  # running now, most at once
_COUNT = threading.Lock()


def counted() -> None:
    with _COUNT:
        _RUNNING[0] += 1
        _RUNNING[1] = max(_RUNNING[1], _RUNNING[0])
    time.sleep(0.0005)  # long enough for the slots to overlap, short enough to claim ahead
    with _COUNT:
        _RUNNING[0] -= 1


def test_tasks_run_ahead_never_take_more_slots_than_the_worker_has(tmp_path: Path) -> None:
    """Pool threads take tasks claimed ahead while the engine thread claims and starts
    tasks too: between them they never run more tasks than the worker has slots."""
    g = conveyor.Graph("counted")
    for i in range(TASKS):
        g.add(counted, id=f"t{i}")
    _RUNNING[:] = [0, 0]
    store = open_store(f"sqlite:///{tmp_path}/run.db")
    try:
        # a fake clock: the tasks count as fast (claimed ahead) however loaded the machine is
        result = conveyor.run(g, store=store, workers=2, clock=FakeClock())
        assert result.ok and store.counts()["done"] == TASKS
    finally:
        store.close()
    assert result.stats.ran_ahead > 0
    assert _RUNNING[1] <= 2, f"{_RUNNING[1]} tasks ran at once on 2 slots"
