"""Which pool thread runs a sync task: as few threads as keep the tasks moving.

A sync task that starts while a pool thread is running a task that began less than
``SPREAD_S`` ago waits for that thread (a *runner*) instead of waking a thread of its own: a
runner takes the waiting tasks, oldest first, before anything it claims next itself. Quick
tasks (most of a durable run's trivial functions) thus run one after another on one thread,
with no hand-off of the GIL, no contention for the engine's lock and no wake-up per task --
the costs that made more slots slower than fewer.

Waiting never costs a task its concurrency: when every runner's task has run for
``SPREAD_S`` or more (it sleeps, waits on the network or a lock, or computes at length),
a watcher thread starts new threads for the waiting tasks -- as many as runners are stuck
(at least one), so a burst of sleeping tasks fans out in a few rounds while one runner that
is merely descheduled adds one thread, not all. Slots stay the cap on concurrent tasks: what
waits here already holds its slot.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import concurrent.futures

    from conveyor.runtime.executors import Launch

#: A runner whose current task began less than this long ago (seconds) is expected to be
#: free soon: a sync task that starts meanwhile waits for it. Also the longest a task waits
#: for a runner that turns out to be stuck before it gets a thread of its own.
SPREAD_S = 0.001


@dataclass(eq=False, slots=True)
class Runner:
    """One pool thread running sync tasks; ``since``: when its current task began."""

    since: float


class Runners:
    """Sync tasks on pool threads: a task waits for a runner with a fresh task, or gets a
    thread of its own (see the module docstring). ``run(launch, runner)`` is the thread's
    body: it runs ``launch`` and then what ``next_for`` hands it, until that is ``None``."""

    def __init__(
        self,
        pool: Callable[[], concurrent.futures.ThreadPoolExecutor],
        run: Callable[[Launch, Runner], None],
        clock: Callable[[], float],
        spread_s: float = SPREAD_S,
    ) -> None:
        self._pool = pool
        self._run = run
        self.clock = clock
        self.spread_s = spread_s
        self._cond = threading.Condition(threading.Lock())
        self._waiting: deque[Launch] = deque()
        self._runners: list[Runner] = []
        self._watcher: threading.Thread | None = None
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
        with self._cond:
            if self._closed:
                return
            now = self.clock()
            if any(now - r.since < self.spread_s for r in self._runners):
                self._waiting.append(launch)
                if self._watcher is None:
                    self._watcher = threading.Thread(
                        target=self._watch, name="conveyor-spread", daemon=True
                    )
                    self._watcher.start()
                elif len(self._waiting) == 1:
                    self._cond.notify()
                return
            runner = Runner(now)
            self._runners.append(runner)
        self._spawn(launch, runner)

    def next_for(self, runner: Runner, launch: Launch | None) -> Launch | None:
        """On a runner, after a task: what it runs next -- the oldest waiting task before
        ``launch`` (what it claimed itself, which then waits its turn), else ``launch``. With
        nothing to run the runner ends (under the lock that ``start`` decides under, so a
        task never waits for a runner that is gone)."""
        if not self._waiting and launch is not None:
            runner.since = self.clock()
            return launch
        with self._cond:
            if launch is not None:
                self._waiting.append(launch)
            while self._waiting:
                nxt = self._waiting.popleft()
                if not nxt.run.abandoned:  # cancelled while it waited: it never runs
                    runner.since = self.clock()
                    return nxt
            self._runners.remove(runner)
            return None

    def close(self) -> None:
        """Start nothing more; tasks still waiting are dropped (their runs were cancelled)."""
        with self._cond:
            self._closed = True
            self._waiting.clear()
            self._cond.notify()

    def spread(self, now: float) -> float | None:
        """With the lock held: start threads for waiting tasks when no runner's task is fresh;
        returns how long until the next look (``None``: nothing waits)."""
        if not self._waiting:
            return None
        freshest = max((r.since for r in self._runners), default=None)
        if freshest is not None and now - freshest < self.spread_s:
            return freshest + self.spread_s - now
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

    def _spawn(self, launch: Launch, runner: Runner) -> None:
        self.threads_started += 1
        launch.run.future = self._pool().submit(self._run, launch, runner)

    def _watch(self) -> None:
        cond = self._cond
        with cond:
            while not self._closed:
                wait = self.spread(self.clock())
                cond.wait(wait)

    def _describe(self) -> dict[str, Any]:  # for a debugger or a test's failure message
        return {"waiting": len(self._waiting), "runners": [r.since for r in self._runners]}
