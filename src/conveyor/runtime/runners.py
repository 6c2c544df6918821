"""Which pool thread runs a sync task: as few threads as keep the tasks moving.

A sync task that starts while a pool thread (a *runner*) is running a task that began less
than ``SPREAD_S`` ago, or is recording the one it just finished, waits for that runner instead
of waking a thread of its own: a runner takes the waiting tasks, oldest first, before
anything it claims next itself. Quick tasks (a durable run's trivial functions) thus run one
after another on one thread, with no hand-off of the GIL, no contention for the engine's lock
and no wake-up per task -- what made more slots slower than fewer.

Waiting never costs a task its concurrency: the engine's loop looks (``look``) whenever tasks
wait, at least every ``SPREAD_S``, and when every runner's task has run that long (it sleeps,
waits on the network or a lock, or computes at length) it starts threads for the waiting
tasks -- as many as runners are stuck (at least one), so a burst of sleeping tasks fans out in
a few rounds while one runner that was merely descheduled adds one thread, not all. A task
queued off the engine's thread wakes the engine (``wake``) so that it looks. Slots stay the
cap on concurrent tasks: what waits here already holds its slot.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import concurrent.futures

    from conveyor.runtime.executors import Launch

#: A runner whose current task began less than this long ago (seconds) is expected to be
#: free soon: a sync task that starts meanwhile waits for it. Also about the longest a task
#: waits for a runner that turns out to be stuck before it gets a thread of its own.
SPREAD_S = 0.001


@dataclass(eq=False, slots=True)
class Runner:
    """One pool thread running sync tasks. ``since``: when its current task began; ``None``
    between tasks (recording one, claiming the next: the engine's work, never stuck long)."""

    since: float | None


def _closed_pool() -> concurrent.futures.ThreadPoolExecutor:
    raise RuntimeError("the runners are closed")


def _closed_run(launch: Launch, runner: Runner) -> None:
    raise RuntimeError("the runners are closed")


class Runners:
    """Sync tasks on pool threads: a task waits for a runner with a fresh task, or gets a
    thread of its own (see the module docstring). ``run(launch, runner)`` is a thread's body:
    it runs ``launch``, sets ``runner.since = None`` after each task and goes on with what
    ``next_for`` hands it until that is ``None``."""

    def __init__(
        self,
        pool: Callable[[], concurrent.futures.ThreadPoolExecutor],
        run: Callable[[Launch, Runner], None],
        clock: Callable[[], float],
        wake: Callable[[], None] = lambda: None,
        spread_s: float = SPREAD_S,
    ) -> None:
        self._pool = pool
        self._run = run
        self.clock = clock
        #: Asks the thread that calls ``look`` to look soon (the engine's: a ``Wake``).
        self.wake = wake
        #: The thread that calls ``look`` (the engine's); ``None``: wake on every first wait.
        self.looker: int | None = None
        self.spread_s = spread_s
        self._lock = threading.Lock()
        self._waiting: deque[Launch] = deque()
        self._runners: list[Runner] = []
        self._closed = False
        #: Threads started for sync tasks (a task on a new thread or a woken idle one).
        self.threads_started = 0

    @property
    def waiting(self) -> int:
        """Tasks waiting for a runner."""
        return len(self._waiting)

    @property
    def runners(self) -> int:
        return len(self._runners)

    def start(self, launch: Launch) -> None:
        """Run ``launch`` on a pool thread: behind a runner whose task is fresh, else on a
        thread of its own."""
        with self._lock:
            if self._closed:
                return
            now = self.clock()
            if self._fresh_until(now) is not None:
                self._waiting.append(launch)
                first = len(self._waiting) == 1
            else:
                runner = Runner(now)
                self._runners.append(runner)
                self._spawn(launch, runner)
                return
        if first and threading.get_ident() != self.looker:
            self.wake()

    def next_for(self, runner: Runner, launch: Launch | None) -> Launch | None:
        """On a runner, after a task: what it runs next -- the oldest waiting task before
        ``launch`` (what it claimed itself, which then waits its turn), else ``launch``. With
        nothing to run the runner ends (under the lock ``start`` decides under, so a task
        never waits for a runner that is gone)."""
        if not self._waiting and launch is not None:
            runner.since = self.clock()
            return launch
        with self._lock:
            if launch is not None:
                self._waiting.append(launch)
            while self._waiting:
                nxt = self._waiting.popleft()
                if not nxt.run.abandoned:  # cancelled while it waited: it never runs
                    runner.since = self.clock()
                    return nxt
            self._runners.remove(runner)
            return None

    def look(self, now: float) -> float | None:
        """Start threads for waiting tasks when no runner is fresh (see the module
        docstring); returns when to look again (seconds from ``now``; ``None``: nothing
        waits)."""
        if not self._waiting:
            return None
        with self._lock:
            if not self._waiting:
                return None
            until = self._fresh_until(now)
            if until is not None:
                return until
            stuck = max(1, len(self._runners))
            while self._waiting and stuck > 0:
                launch = self._waiting.popleft()
                if launch.run.abandoned:
                    continue
                runner = Runner(now)
                self._runners.append(runner)
                self._spawn(launch, runner)
                stuck -= 1
            return self.spread_s if self._waiting else None

    def close(self) -> None:
        """Start nothing more; tasks still waiting are dropped (their runs were cancelled)."""
        with self._lock:
            self._closed = True
            self._waiting.clear()
            # (the executor's methods: no cycle keeps it, or the engine, alive once closed)
            self._pool, self._run = _closed_pool, _closed_run

    def _fresh_until(self, now: float) -> float | None:
        """With the lock held: how long until no runner is fresh any more (``None``: none
        is). A runner between tasks counts as fresh for another ``spread_s``."""
        best: float | None = None
        for r in self._runners:
            left = self.spread_s if r.since is None else r.since + self.spread_s - now
            if left > 0 and (best is None or left > best):
                best = left
        return best

    def _spawn(self, launch: Launch, runner: Runner) -> None:
        self.threads_started += 1
        launch.run.future = self._pool().submit(self._run, launch, runner)
