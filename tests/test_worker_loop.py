"""``conveyor.worker()``: what happens to the task in hand is said by how the loop goes on or
ends (runtime/worker.py's docstring), never guessed from the caller's bytecode."""

from __future__ import annotations

from pathlib import Path

import pytest

import conveyor
from conveyor.runtime.idle import IdleBackoff
from conveyor.runtime.worker import DROPPED, WorkerLoop
from conveyor.store.urls import open_store
from conveyor.testing import FakeClock


def two_tasks(tmp_path: Path, retries: int = 0) -> tuple[conveyor.Graph, str]:
    graph = conveyor.Graph("g")
    graph.add(None, id="a", retries=retries)
    graph.add(None, id="b", deps=["a"])
    return graph, f"sqlite:///{tmp_path}/g.db"


def state(db: str, task: str) -> tuple[str, str | None, int]:
    store = open_store(db)
    try:
        res = store.result(task)
        started = [e["event"] for e in store.history(task)].count("task_started")
        return res.state.label, res.error, started
    finally:
        store.close()


def test_asking_for_the_next_task_completes_the_one_in_hand(tmp_path: Path) -> None:
    graph, db = two_tasks(tmp_path)
    seen = []
    for task in conveyor.worker(graph, db=db):
        seen.append((task.id, dict(task.parents)))
        task.result = task.id.upper()
    assert seen == [("a", {}), ("b", {"a": "A"})]
    assert state(db, "b") == ("done", None, 1)


def test_with_block_break_gives_the_task_back_unrun(tmp_path: Path) -> None:
    graph, db = two_tasks(tmp_path)
    with conveyor.worker(graph, db=db) as loop:
        for task in loop:
            assert task.id == "a"
            break
    assert state(db, "a") == ("ready", None, 1)  # back, attempt not spent


def test_with_block_exception_fails_the_task_and_propagates(tmp_path: Path) -> None:
    graph, db = two_tasks(tmp_path)
    with pytest.raises(KeyError), conveyor.worker(graph, db=db) as loop:
        for _task in loop:
            raise KeyError("boom")
    assert state(db, "a") == ("failed", "KeyError: 'boom'", 1)
    assert state(db, "b")[0] == "skipped"


def test_bare_loop_left_by_break_fails_the_task_and_says_why(tmp_path: Path) -> None:
    graph, db = two_tasks(tmp_path, retries=1)
    for _task in conveyor.worker(graph, db=db):
        break  # the dropped loop cannot tell this from an exception
    label, error, started = state(db, "a")
    assert (label, started) == ("retry_wait", 1)  # a failed attempt, retried per its retries
    assert error == DROPPED


def test_bare_loop_left_by_an_exception_fails_the_task(tmp_path: Path) -> None:
    graph, db = two_tasks(tmp_path)
    with pytest.raises(RuntimeError):
        for _task in conveyor.worker(graph, db=db):
            raise RuntimeError("body failed")
    assert state(db, "a") == ("failed", DROPPED, 1)


def test_fail_goes_on_and_close_gives_back(tmp_path: Path) -> None:
    graph = conveyor.Graph("g")
    graph.add(None, id="x")
    graph.add(None, id="y")
    db = f"sqlite:///{tmp_path}/g.db"
    loop = WorkerLoop(graph, db=db)
    first = next(loop)
    loop.fail("bad input")
    second = next(loop)
    loop.close()
    assert state(db, first.id) == ("failed", "bad input", 1)
    assert state(db, second.id) == ("ready", None, 1)
    assert list(loop) == []  # closed: nothing more


def test_idle_backoff_doubles_to_its_cap_waits_for_retries_and_gives_up() -> None:
    idle = IdleBackoff(idle_exit=10.0, first=0.1, cap=0.5)
    assert [idle.next_wait(100.0, None) for _ in range(4)] == [0.1, 0.2, 0.4, 0.5]
    assert idle.next_wait(105.0, wakeup=105.25) == 0.25  # a retry comes due sooner: not idle
    assert idle.next_wait(106.0, None) == 0.5  # nothing on its way: the idle spell starts
    assert idle.next_wait(115.9, None) == 0.5
    assert idle.next_wait(116.0, None) is None  # idle for idle_exit seconds
    idle.busy()
    assert idle.next_wait(200.0, None) == 0.1
    forever = IdleBackoff(idle_exit=None)
    assert forever.next_wait(0.0, None) is not None and forever.next_wait(1e9, None) is not None


def test_the_loop_takes_its_time_from_the_injected_clock(tmp_path: Path) -> None:
    clock = FakeClock()
    graph, db = two_tasks(tmp_path)
    for _task in conveyor.worker(graph, db=db, clock=clock):
        clock.advance(5.0)
    store = open_store(db)
    try:
        stamps = [(e["event"], e["ts"] - clock.wall()) for e in store.history("a")]
    finally:
        store.close()
    assert stamps == [
        ("task_submitted", -10.0), ("task_ready", -10.0), ("task_started", -10.0),
        ("task_finished", -5.0),
    ]  # fmt: skip
