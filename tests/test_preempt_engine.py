"""Preemption in a real in-process run (``runtime/preemption.py``): an interactive task that
becomes ready while batch tasks hold every slot starts before any of them ends; the victim goes
back to ready (``task_preempted``), runs again later exactly once more, its retries untouched.

No timed assertions: the batch tasks end only when told to (events), so "starts before any
batch task ends" is an order of events, not a race."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import conveyor
from conveyor.model import TaskState
from helpers import EventLog, wait_until

BOUND = 30.0  # how long a test waits for an event at most (a bound, not a check)


def _history(log: EventLog, task: str) -> list[str]:
    return [e["event"] for e in log.events if e.get("task") == task]


def _at(log: EventLog, event: str, task: str) -> int:
    """Where the first ``event`` of ``task`` is in the run's event order."""
    found = (k for k, e in enumerate(log.events) if (e["event"], e.get("task")) == (event, task))
    return next(found)


def _spawner(started: threading.Event, ready: Callable[[], object] | None = None) -> str:
    """An interactive task that submits an interactive child (``urgent``) at run time while
    it keeps its own slot (once ``ready()`` says the batch task runs, if given), and ends once
    the child started."""
    if ready is not None:
        wait_until(ready, BOUND, "the batch task to run")
    conveyor.current().submit(_urgent, started, id="urgent")
    assert started.wait(BOUND), "urgent never started"
    return "spawned"


def _urgent(started: threading.Event) -> str:
    started.set()
    return "urgent"


def _graph(
    victim: object, started: threading.Event, ready: Callable[[], object] | None = None
) -> conveyor.Graph:
    g = conveyor.Graph("preempt")
    g.add(_spawner, started, ready, id="spawner", band="interactive")
    g.add(victim, started, id="batch", band="batch", retries=2)
    return g


def test_an_async_batch_task_is_cancelled_requeued_and_runs_again_once() -> None:
    started = threading.Event()
    runs: list[str] = []

    async def batch(started: threading.Event) -> str:
        runs.append("run")
        while not started.is_set():  # holds its slot until urgent starts
            await asyncio.sleep(0.005)
        runs.append("end")
        return "batch done"

    log = EventLog()
    result = conveyor.run(_graph(batch, started, lambda: runs), workers=2, emit=log)
    assert result.exit_code == 0, result
    assert result["batch"] == "batch done"
    assert runs == ["run", "run", "end"], "the first run was cancelled, the second finished"
    assert _at(log, "task_preempted", "batch") < _at(log, "task_started", "urgent")
    assert _at(log, "task_started", "urgent") < _at(log, "task_finished", "batch")
    hist = _history(log, "batch")
    assert hist.count("task_preempted") == 1 and hist.count("task_finished") == 1
    assert "task_failed" not in hist and "task_retrying" not in hist
    pre = next(e for e in log.events if e["event"] == "task_preempted")
    assert pre["by"] == "urgent" and pre["attempt"] == 1 and pre["reason"] == "higher_band"
    assert result.result("batch").attempt == 1, "the preempted attempt was given back"
    assert result.stats.preempted == 1 and result.stats.retried == 0


def test_a_thread_task_sees_preempted_raises_and_its_slot_frees_then() -> None:
    started = threading.Event()
    seen: list[bool] = []

    def batch(started: threading.Event) -> str:
        ctx = conveyor.current()
        if not seen:  # first run: work until asked to give the slot up
            wait_until(lambda: ctx.preempted, BOUND, "the preemption flag")
            seen.append(ctx.preempted)
            raise RuntimeError("preempted: giving my slot up")
        seen.append(ctx.preempted)
        return "batch done"

    log = EventLog()
    result = conveyor.run(_graph(batch, started), workers=2, emit=log)
    assert result.exit_code == 0, result
    assert seen == [True, False], "the flag was seen, and is clear on the next run"
    hist = _history(log, "batch")
    assert hist.count("task_started") == 2 and hist.count("task_preempted") == 1
    assert "task_failed" not in hist and "task_retrying" not in hist
    assert result.result("batch").attempt == 1 and result.result("batch").state is (TaskState.DONE)


def test_a_command_is_killed_and_run_again(tmp_path: Path) -> None:
    started = threading.Event()
    marker = tmp_path / "runs"
    # Each run appends an x; the first then sleeps (up to the bound): killed before it ends.
    cmd = (
        f"{sys.executable} -c \"import pathlib,time; p=pathlib.Path(r'{marker}'); "
        "n=len(p.read_text()) if p.exists() else 0; p.write_text('x'*(n+1)); "
        f'time.sleep({BOUND}) if n == 0 else None"'
    )
    g = conveyor.Graph("preempt-cmd")
    written = lambda: marker.exists() and marker.read_text()  # noqa: E731
    g.add(_spawner, started, written, id="spawner", band="interactive")
    g.add(cmd=cmd, id="batch", band="batch", retries=0)
    log = EventLog()
    result = conveyor.run(g, workers=2, emit=log)
    assert result.exit_code == 0, result
    assert marker.read_text() == "xx", "killed once, run again once"
    assert _history(log, "batch").count("task_preempted") == 1


def test_preempt_false_leaves_the_batch_task_alone() -> None:
    started = threading.Event()

    async def batch(started: threading.Event) -> str:
        await asyncio.sleep(0.05)  # ends by itself: the spawner's child waits for its slot
        return "batch done"

    log = EventLog()
    result = conveyor.run(_graph(batch, started), workers=2, emit=log, preempt=False)
    assert result.exit_code == 0
    assert "task_preempted" not in [e["event"] for e in log.events]
    assert _at(log, "task_finished", "batch") < _at(log, "task_started", "urgent")


def test_a_task_of_the_same_band_preempts_nothing() -> None:
    started = threading.Event()

    async def batch(started: threading.Event) -> str:
        await asyncio.sleep(0.05)
        return "batch done"

    g = conveyor.Graph("same-band")
    g.add(_spawner, started, id="spawner")
    g.add(batch, started, id="batch")
    log = EventLog()
    assert conveyor.run(g, workers=2, emit=log).exit_code == 0
    assert "task_preempted" not in [e["event"] for e in log.events]


def test_a_thread_asked_for_a_task_that_then_started_elsewhere_is_left_to_finish() -> None:
    """The spawner submits ``urgent`` and ends at once: the batch thread is asked for its slot
    while both slots are busy, but ``urgent`` then starts on the spawner's freed slot. The ask
    is withdrawn (``preempted`` reads False again): the batch task is not taken back for a
    task that already ran."""
    urgent_done = threading.Event()
    seen: list[bool] = []

    def urgent() -> str:
        urgent_done.set()
        return "urgent"

    def spawner() -> str:
        conveyor.current().submit(urgent, id="urgent")
        return "spawned"

    def batch() -> str:
        assert urgent_done.wait(BOUND), "urgent never ran"
        seen.append(conveyor.current().preempted)
        if seen[-1]:
            raise RuntimeError("preempted: giving my slot up")
        return "batch done"

    g = conveyor.Graph("withdrawn")
    g.add(batch, id="batch", band="batch")
    g.add(spawner, id="spawner", band="interactive")
    log = EventLog()
    result = conveyor.run(g, workers=2, emit=log)
    assert result.exit_code == 0, result
    assert seen == [False]
    assert _history(log, "batch").count("task_preempted") == 0
