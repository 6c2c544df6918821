"""Which pool thread runs a sync task (``runtime/runners.py``): a task waits for a thread
running a fresh task instead of waking one of its own, and a stuck thread gets company -- so
quick tasks stay on one thread while sleeping tasks on N slots still overlap."""

from __future__ import annotations

import concurrent.futures
import threading
from pathlib import Path

import pytest

import conveyor
from conveyor.model import TaskSpec
from conveyor.runtime.context import TaskContext
from conveyor.runtime.executors import Launch, Running
from conveyor.runtime.runners import Runner, Runners
from conveyor.store.base import Claim
from helpers import wait_until

WAIT = 10.0


class Clock:
    """A clock the test moves (seconds)."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def launch(name: str) -> Launch:
    claim = Claim(TaskSpec(id=name), attempt=1, token=1, handle=hash(name))
    return Launch(Running(claim, 0.0), lambda: None, (), {}, TaskContext.__new__(TaskContext))


class Bench:
    """``Runners`` on a real thread pool; each task records its thread and may be held."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=8)
        self.ran: list[tuple[str, int]] = []
        self.started = {n: threading.Event() for n in "abcd"}
        self.hold = {n: threading.Event() for n in "abcd"}
        self.wakes = 0
        self.runners = Runners(lambda: self.pool, self.body, self.clock, self.wake)
        self.runners.looker = threading.get_ident()  # the test plays the engine's loop

    def wake(self) -> None:
        self.wakes += 1

    def body(self, first: Launch | None, runner: Runner) -> None:
        item = first
        while item is not None:
            name = item.run.claim.spec.id
            self.ran.append((name, threading.get_ident()))
            self.started[name].set()
            if not self.hold[name].wait(WAIT):
                raise AssertionError(f"{name} was never let go")
            runner.since = None  # as Executors does: recording the task
            item = self.runners.next_for(runner, None)

    def close(self) -> None:
        for e in self.hold.values():
            e.set()
        self.runners.close()
        self.pool.shutdown(wait=True)


@pytest.fixture
def bench() -> object:
    b = Bench()
    yield b
    b.close()


def test_a_task_waits_for_a_thread_running_a_fresh_task(bench: Bench) -> None:
    """Fails when every task gets a thread of its own (no wait for a fresh runner)."""
    bench.runners.start(launch("a"))
    assert bench.started["a"].wait(WAIT)
    bench.runners.start(launch("b"))
    bench.runners.start(launch("c"))
    assert bench.runners.waiting == 2
    assert bench.runners.threads_started == 1
    for n in "abc":
        bench.hold[n].set()
    wait_until(lambda: len(bench.ran) == 3, WAIT, "a, b and c ran")
    assert [n for n, _ in bench.ran] == ["a", "b", "c"]  # in the order they started
    assert len({t for _, t in bench.ran}) == 1  # all on the one thread
    wait_until(lambda: bench.runners.runners == 0, WAIT, "the runner ended")


def test_a_stuck_runner_gets_company(bench: Bench) -> None:
    """Fails when waiting tasks never get a thread of their own."""
    bench.runners.start(launch("a"))
    assert bench.started["a"].wait(WAIT)
    bench.runners.start(launch("b"))
    assert bench.runners.waiting == 1
    assert bench.runners.look(bench.clock()) is not None  # a is fresh: b waits
    assert bench.runners.threads_started == 1
    bench.clock.t += 2 * bench.runners.spread_s  # a's task is no longer fresh: a is stuck
    assert bench.runners.look(bench.clock()) is None  # b got a thread: nothing waits
    assert bench.started["b"].wait(WAIT)  # while a still runs
    assert not bench.hold["a"].is_set()
    assert bench.runners.threads_started == 2
    a_thread, b_thread = (t for _, t in bench.ran)
    assert a_thread != b_thread


def test_a_runner_recording_its_task_is_not_stuck(bench: Bench) -> None:
    """A runner between tasks (recording one, waiting for the engine's lock) keeps the tasks
    that wait for it. Fails when such a runner counts as stuck."""
    runner = Runner(None)
    bench.runners._runners.append(runner)  # a runner in the engine's bookkeeping
    bench.runners.start(launch("a"))
    assert bench.runners.waiting == 1
    bench.clock.t += 10 * bench.runners.spread_s
    assert bench.runners.look(bench.clock()) == bench.runners.spread_s  # look again later
    assert bench.runners.threads_started == 0
    bench.hold["a"].set()
    assert bench.runners.next_for(runner, None) is not None  # it takes a itself
    assert bench.runners.next_for(runner, None) is None  # and then ends
    assert bench.runners.runners == 0


def test_a_task_waiting_off_the_engine_thread_wakes_the_engine(bench: Bench) -> None:
    """The engine's loop only looks when it wakes: a task that starts waiting from a pool
    thread asks it to. Fails without the wake."""
    bench.runners.start(launch("a"))
    assert bench.started["a"].wait(WAIT)
    bench.runners.start(launch("b"))  # from the looker's own thread: no wake needed
    assert bench.wakes == 0
    bench.hold["a"].set()
    bench.hold["b"].set()
    wait_until(lambda: bench.runners.runners == 0, WAIT, "the runner ended")
    bench.runners.start(launch("c"))
    assert bench.started["c"].wait(WAIT)
    other = threading.Thread(target=bench.runners.start, args=(launch("d"),))
    other.start()
    other.join(WAIT)
    assert bench.runners.waiting == 1
    assert bench.wakes == 1


def test_a_task_cancelled_while_it_waits_never_runs(bench: Bench) -> None:
    """Fails when a waiting task whose run was abandoned (cancelled, timed out) still runs."""
    bench.runners.start(launch("a"))
    assert bench.started["a"].wait(WAIT)
    b, c = launch("b"), launch("c")
    bench.runners.start(b)
    bench.runners.start(c)
    b.run.abandoned = True
    bench.hold["a"].set()
    bench.hold["c"].set()
    wait_until(lambda: bench.runners.runners == 0, WAIT, "the runner ended")
    assert [n for n, _ in bench.ran] == ["a", "c"]


N = 6


@pytest.mark.parametrize("db", ["memory", "sqlite"])
def test_n_waiting_tasks_on_n_slots_all_run_at_once(db: str, tmp_path: Path) -> None:
    """Tasks that block (sleep, network, a lock) keep their concurrency: N of them on N slots
    meet at an N-barrier. Fails when a task waits for a stuck thread for good."""
    barrier = threading.Barrier(N, timeout=WAIT)

    def meet() -> str:
        barrier.wait()  # BrokenBarrierError after its timeout unless all N run at once
        return "met"

    g = conveyor.Graph("meet")
    for k in range(N):
        g.add(meet, id=f"m{k}")
    options: dict[str, object] = {"workers": N}
    if db == "sqlite":
        options["db"] = f"sqlite:///{tmp_path / 'run.db'}"
    res = conveyor.run(g, **options)
    assert res.ok, res.failed
    assert [res[f"m{k}"] for k in range(N)] == ["met"] * N
