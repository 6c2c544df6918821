"""The tasks running in one engine, and how each one's end is recorded in the store.

``InFlight`` registers a started task (it holds a slot and its resources, maybe a deadline) and
records its end exactly once: done; failed, and retried after a backoff while attempts remain;
given back unrun (shutdown, Ctrl-C, a gang retried together); handed back while it runs (a
signal, the worker's end: ``hand_back``); or timed out. The engine calls it
with its lock held, from the engine thread or from a pool thread that chains.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from conveyor.core.retry import RetryPolicy
from conveyor.model import TaskResult, TaskSpec, TaskState
from conveyor.runtime.capacity import Capacity
from conveyor.runtime.children import Children
from conveyor.runtime.context import PREEMPT_REQUEST, PREEMPT_WITHDRAWN
from conveyor.runtime.deadlines import Deadlines
from conveyor.runtime.executors import Executors, Kind, Running
from conveyor.runtime.runtimes import Runtimes
from conveyor.store.base import Claim, Store

__all__ = ["InFlight", "RunStats"]


@dataclass(slots=True)
class RunStats:
    started: int = 0
    done: int = 0
    failed: int = 0
    retried: int = 0
    refused: int = 0  # completions the store refused (lease taken over)
    released: int = 0  # running tasks handed back to the store (``hand_back``)
    preempted: int = 0  # running tasks taken back for a higher band (``preempt``)
    #: Tasks a pool thread took from the claims ahead and ran itself, with no hop to the
    #: engine thread (shared stores; ``Engine._run_ahead``).
    ran_ahead: int = 0
    #: Function tasks prepared to run in this process: user code was imported (and may have
    #: left ``atexit`` work or open files) here. With none, a CLI process may skip teardown.
    functions: int = 0
    interrupted: bool = False


class InFlight:
    """Running tasks by the store's handle, with the run's counts."""

    def __init__(
        self,
        store: Store,
        executors: Executors,
        capacity: Capacity,
        children: Children,
        retry: RetryPolicy,
        rng: random.Random,
        fail_fast: bool,
    ) -> None:
        self.store = store
        self.stats = RunStats()
        self.running: dict[int, Running] = {}
        #: Successes not yet recorded in the store (``park``/``flush``), and since when.
        self.parked: list[tuple[Claim, Any]] = []
        self.parked_since = 0.0
        self.deadlines = Deadlines()
        #: Start nothing new (stop, Ctrl-C, fail_fast, max_tasks); failures are not retried.
        self.stopping = False
        #: A task failed for good under ``fail_fast``: what is left is cancelled at the end.
        self.failed_fast = False
        #: A timed-out thread or process task may still be running (it cannot be stopped).
        self.stuck = False
        self._executors = executors
        self._capacity = capacity
        self._children = children
        self._retry = retry
        self._rng = rng
        self._fail_fast = fail_fast
        #: How long tasks ran, per kind (shared stores; ``runtime/runtimes.py``).
        self.runtimes: Runtimes | None = None

    def register(self, claim: Claim, kind: Kind, now: float) -> Running:
        run = Running(claim, now, kind)
        self.running[claim.handle] = run
        self._capacity.take(claim.spec)
        return run

    def is_current(self, run: Running) -> bool:
        """Whether a report on ``run`` still counts (not timed out, cancelled or replaced)."""
        return not run.abandoned and self.running.get(run.claim.handle) is run

    def record(self, run: Running, ok: bool, value: Any, now: float) -> TaskResult | None:
        """An executor's report on ``run``; ``None`` when it no longer counts (see
        ``is_current``) or when it was cancelled while stopping (then the task is given back
        unrun, not failed)."""
        if run.abandoned or self.running.get(run.claim.handle) is not run:
            return None
        if (
            not ok
            and self.stopping
            and (value == "cancelled" or run.claim.handle in self._children.interrupted)
        ):  # (a parent whose wait for a child Ctrl-C cut is cancelled with the rest)
            self.release(run, now)
            return None
        extra = run.claim.extra
        if not ok and (PREEMPT_REQUEST in extra or PREEMPT_WITHDRAWN in extra):
            self._give_up(run, now)  # a thread task asked to give its slot up did so
            return None
        return self.finish(run, ok, value, now)

    def preempt(self, runs: list[Running], waiting: str, now: float) -> int:
        """Take ``runs`` back for the higher-band task ``waiting``: coroutines are cancelled,
        commands killed, process-pool tasks cancelled (one already running in the pool is
        abandoned: its late result is dropped) and each goes back to the store at once
        (``Store.preempt``: ready again, not a failure). A thread cannot be stopped: it is
        asked (``conveyor.current().preempted``) and keeps its slot until it returns or
        raises; raising then gives it back the same way. Returns how many went back now."""
        now_back = []
        for run in runs:
            run.claim.extra[PREEMPT_REQUEST] = waiting
            if run.kind == "thread":
                continue
            self._executors.cancel(run)
            if run.kind == "process" and run.future is not None and run.future.running():
                self.stuck = True
            del self.running[run.claim.handle]
            self._capacity.give_back(run.claim.spec)
            now_back.append(run)
        if not now_back:
            return 0
        taken = sum(self.store.preempt([r.claim for r in now_back], now, waiting))
        self.stats.preempted += taken
        return taken

    def _give_up(self, run: Running, now: float) -> None:
        del self.running[run.claim.handle]
        self._capacity.give_back(run.claim.spec)
        extra = run.claim.extra
        waiting = str(extra.get(PREEMPT_REQUEST) or extra.get(PREEMPT_WITHDRAWN))
        self.stats.preempted += sum(self.store.preempt([run.claim], now, waiting))

    def park(self, reports: list[tuple[Running, bool, Any]], now: float) -> list[TaskResult]:
        """Take executors' reports: successes are parked (their slots are free at once; the
        store hears of them at the next ``flush``), anything else is recorded now. Returns
        what was recorded."""
        out: list[TaskResult] = []
        for run, ok, value in reports:
            if ok and self.is_current(run):
                del self.running[run.claim.handle]
                self._capacity.give_back(run.claim.spec)
                if not self.parked:
                    self.parked_since = now
                run.claim.extra["finished"] = now  # how long it ran, not how long it waited
                if self.runtimes is not None:
                    self.runtimes.record(run.claim.spec, now - run.started)
                self.parked.append((run.claim, value))
            else:
                res = self.record(run, ok, value, now)
                if res is not None:
                    out.append(res)
        return out

    def flush(self, now: float, refill: int) -> list[TaskResult]:
        """Record the parked successes in one ``Store.complete_many`` call (one transaction on
        a durable store), which may also claim ``refill`` tasks for the slots that are free."""
        if not self.parked:
            return []
        done, self.parked = self.parked, []
        flags = self.store.complete_many(done, now, refill=0 if self.stopping else refill)
        return [self._done(c, v, ok) for (c, v), ok in zip(done, flags, strict=True)]

    def _done(self, claim: Claim, value: Any, accepted: bool) -> TaskResult:
        if accepted:
            self.stats.done += 1
        else:
            self.stats.refused += 1
        if self._children.watchers:
            self._children.finished(claim.spec.id, failed=False)
        return TaskResult(claim.spec.id, TaskState.DONE, value, None, claim.attempt)

    def finish(self, run: Running, ok: bool, value: Any, now: float) -> TaskResult:
        """Record a run's end: done with ``value``, or failed with the error text ``value``."""
        claim = run.claim
        spec = claim.spec
        stats = self.stats
        del self.running[claim.handle]
        self._capacity.give_back(spec)
        if ok:
            if self.runtimes is not None:
                self.runtimes.record(spec, now - run.started)
            return self._done(claim, value, self.store.complete(claim, value, now))
        error = str(value)
        retry_at = None
        if claim.attempt <= spec.retries and not self.stopping:
            retry_at = now + self._retry.delay(claim.attempt, self._rng.random())
        accepted = self.store.fail(claim, error, now, retry_at)
        state = TaskState.RETRY_WAIT if retry_at is not None else TaskState.FAILED
        if accepted:
            if retry_at is not None:
                stats.retried += 1
            else:
                stats.failed += 1
                if self._fail_fast:
                    self.stopping = self.failed_fast = True
            if spec.gang is not None:
                self._stop_gang(spec, retry_at is None, now)
        if not accepted:
            stats.refused += 1
        if self._children.watchers:
            self._children.finished(spec.id, failed=state is TaskState.FAILED)
        return TaskResult(spec.id, state, None, error, claim.attempt)

    def release(self, run: Running, now: float) -> None:
        """Give a run's task back to the store unrun."""
        if self.running.pop(run.claim.handle, None) is not None:
            self._capacity.give_back(run.claim.spec)
            self.store.release(run.claim, now)

    def cancel_all(self, now: float, *, threads: bool) -> None:
        """Cancel and give back every run (``threads=False``: all but thread tasks, which
        cannot be stopped and are left to finish)."""
        for run in list(self.running.values()):
            if threads or run.kind != "thread":
                self._executors.cancel(run)
                self.release(run, now)

    def hand_back(self, now: float, reason: str) -> int:
        """Hand every run back to the store at once (``Store.hand_back``: ready again, not a
        failure) and start nothing more; returns how many the store took back. Coroutines are
        cancelled and commands killed; a thread (or a process-pool task) cannot be stopped: it
        is abandoned -- its late result is dropped here and refused by the store -- and
        ``stuck`` says not to wait for it."""
        self.stopping = True
        runs = list(self.running.values())
        for run in runs:
            self._executors.cancel(run)
            if run.kind in ("thread", "process"):
                self.stuck = True
            del self.running[run.claim.handle]
            self._capacity.give_back(run.claim.spec)
        if not runs:
            return 0
        taken = sum(self.store.hand_back([r.claim for r in runs], now, reason))
        self.stats.released += taken
        return taken

    def _stop_gang(self, failed: TaskSpec, fatal: bool, now: float) -> None:
        """A gang member failed: its running siblings stop. After a fatal failure they fail
        too; otherwise they go back unrun so the whole gang is retried together."""
        for run in [r for r in self.running.values() if r.claim.spec.gang == failed.gang]:
            self._executors.cancel(run)
            if fatal:
                del self.running[run.claim.handle]
                self._capacity.give_back(run.claim.spec)
                msg = f"cancelled: gang member {failed.id!r} failed"
                if self.store.fail(run.claim, msg, now, None):
                    self.stats.failed += 1
            else:
                self.release(run, now)

    def expire(self, now: float) -> list[TaskResult]:
        """Fail the runs whose timeout passed. A thread cannot be stopped: ``stuck``, so that
        shutdown does not wait for it."""
        out = []
        for run in self.deadlines.due(now, self.running):
            self._executors.cancel(run)
            if run.kind in ("thread", "process"):
                self.stuck = True
            timeout = run.claim.spec.timeout_s
            out.append(self.finish(run, False, f"timeout: no result after {timeout:g} s", now))
        return out
