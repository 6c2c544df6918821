"""``conveyor.worker(graph, db=URL)``: the laufband-style loop over a shared durable store.

    for task in conveyor.worker(graph, db="sqlite:///run.db"):
        work_on(task.id, *task.args)        # asking for the next task completes this one
        task.result = ...                   # optional: stored, handed to children

Each task is handed to exactly one loop at a time across every process sharing the store,
parents before children. A background thread renews the leases while the body runs, on its own
connection (``runtime/heartbeat.py``).

**What happens to the task in hand** is decided by how the loop goes on or ends, never guessed:

- asking for the next task (the ``for`` loop going round) completes it, with ``task.result``;
- ``loop.fail(error)`` fails it now (retried per its ``retries``); the loop goes on;
- ``loop.close()`` gives it back unrun (it keeps its attempt count);
- in ``with conveyor.worker(...) as loop:``, leaving the block by an exception fails it with that
  exception (retried per its ``retries``) and the exception propagates; leaving it any other
  way (``break``, ``return``, the end of the loop) closes the loop and so gives it back unrun;
- a loop that is dropped still holding a task, never closed -- a bare ``for`` loop left by
  ``break``, ``return`` or an exception, which Python does not tell an iterator apart -- fails
  it (retried per its ``retries``), saying so in its error. Use the ``with`` form, or call
  ``close()``, to give a task back on purpose.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any

from conveyor.clock import SYSTEM_CLOCK, Clock
from conveyor.core.retry import DEFAULT_RETRY, RetryPolicy
from conveyor.model import DEFAULT_LEASE_S, TaskSpec, checked_lease
from conveyor.runtime.heartbeat import Heartbeat
from conveyor.runtime.idle import IdleBackoff
from conveyor.store.base import Claim, Store, WorkerProfile
from conveyor.store.urls import open_store
from conveyor.workerid import default_worker_id

if TYPE_CHECKING:
    from conveyor.observe.otel import RunTelemetry

__all__ = ["WorkItem", "WorkerLoop", "worker"]

#: The error of a task whose loop was dropped while it held the task (see the module docstring).
DROPPED = (
    "the worker loop was left while it held the task (break, return or an exception in a bare "
    "for loop); use `with conveyor.worker(...) as loop:` or loop.close() to give a task back"
)


@dataclass(eq=False)
class WorkItem:
    """One claimed task. Set ``result`` in the loop body to store a value for its children."""

    id: str
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    parents: Mapping[str, Any]
    spec: TaskSpec
    attempt: int
    result: Any = None
    claim: Claim | None = field(default=None, repr=False)


class WorkerLoop:
    """The iterator ``worker()`` returns; also a context manager (see the module docstring)."""

    def __init__(
        self,
        graph: Any = None,
        *,
        db: str,
        worker_id: str | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        labels: dict[str, str] | None = None,
        resources: dict[str, float] | None = None,
        idle_exit: float | None = None,
        max_tasks: int | None = None,
        replace: bool = False,
        retry: RetryPolicy = DEFAULT_RETRY,
        fingerprints: bool = True,
        clock: Clock = SYSTEM_CLOCK,
        telemetry: Any = False,
    ) -> None:
        lease_s = checked_lease(lease_s)
        self.worker_id = worker_id or default_worker_id()
        self.lease_s = lease_s
        self.idle_exit = idle_exit
        self.max_tasks = max_tasks
        self.retry = retry
        self.clock = clock
        self.db = db
        self.started = 0
        self._rng = random.Random()
        self._current: WorkItem | None = None
        self._closed = False
        self.store: Store = open_store(db, clock=clock)
        # Here the loop body is the work of every task: no-ops are handed out too, one at a time.
        self.store.configure(
            WorkerProfile(labels=labels or {}, resources=resources, max_batch=1,
                          complete_noops=False, lease_s=lease_s)
        )  # fmt: skip
        now = clock.wall()
        if graph is not None:
            from conveyor.fingerprints import open_graph
            from conveyor.graph import as_graph

            open_graph(self.store, as_graph(graph), now, replace=replace, fingerprints=fingerprints)
        #: OpenTelemetry spans and metrics (``telemetry=``; ``conveyor.observe.otel``).
        self.telemetry: RunTelemetry | None = None
        if telemetry:
            from conveyor.observe.otel import observe_store

            self.telemetry = observe_store(
                telemetry, self.store, worker=self.worker_id, clock=clock
            )
        self._stop = threading.Event()
        self._beat: Heartbeat | None = None
        if self.store.shared:
            self.store.register_worker(self.worker_id, now, {"loop": True})
            # Its thread does not hold ``self``: dropping the loop (break) closes it.
            self._beat = Heartbeat(db, self.worker_id, lease_s, clock).start()

    # -- the iterator ------------------------------------------------------------------------------
    def __iter__(self) -> WorkerLoop:
        return self

    def __next__(self) -> WorkItem:
        self._finish(ok=True)
        store = self.store
        idle = IdleBackoff(self.idle_exit)
        while not self._closed:
            if self.max_tasks is not None and self.started >= self.max_tasks:
                break
            now = self.clock.wall()
            got = store.claim(self.worker_id, 1, now, self.lease_s)
            if self.telemetry is not None:
                self.telemetry.tick(store)
            if got:
                claim = got[0]
                if self.telemetry is not None:
                    self.telemetry.on_claim(claim)
                self.started += 1
                spec = claim.spec
                parents = store.parent_values(claim) if claim.parents else {}
                item = WorkItem(spec.id, spec.args, spec.kwargs, parents, spec, claim.attempt,
                                claim=claim)  # fmt: skip
                self._current = item
                return item
            if store.unfinished() == 0:
                break
            wait = idle.next_wait(now, store.next_wakeup(), running=store.has_running())
            if wait is None:
                break
            # The wait bounds PostgreSQL's wake-up (LISTEN). A shared store with no wake signal
            # (SQLite) is asked again at once, as this loop always did: sleeping the back-off
            # there would delay the loop's exit and its pick-up of new work by up to MAX_POLL.
            if not store.wait_for_work(wait) and not store.shared:
                self._stop.wait(wait)
        self.close()
        raise StopIteration

    def _finish(self, ok: bool, error: str | None = None) -> None:
        """Complete (``ok``), fail (``error``) or give back (neither) the task in hand."""
        item, self._current = self._current, None
        if item is None or item.claim is None:
            return
        now = self.clock.wall()
        if ok:
            self.store.complete(item.claim, item.result, now)
            return
        if error is None:
            self.store.release(item.claim, now)
            return
        retry_at = None
        if item.attempt <= item.spec.retries:
            retry_at = now + self.retry.delay(item.attempt, self._rng.random())
        self.store.fail(item.claim, error, now, retry_at)

    def fail(self, error: str) -> None:
        """Fail the current task explicitly (the loop goes on with the next one)."""
        self._finish(ok=False, error=error)

    def close(self) -> None:
        """Give back the task in hand unrun, stop the heartbeats, close the store. Idempotent."""
        self._close(error=None)

    def _close(self, error: str | None) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._finish(ok=False, error=error)
        finally:
            self._stop.set()
            if self._beat is not None:
                self._beat.stop()
            if self.store.shared:
                self.store.unregister_worker(self.worker_id, self.clock.wall())
            if self.telemetry is not None:
                self.telemetry.close()
            self.store.close()

    def __enter__(self) -> WorkerLoop:
        return self

    def __exit__(
        self, tp: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._close(error=None if exc is None else f"{type(exc).__name__}: {exc}")

    def __del__(self) -> None:
        try:
            self._close(error=DROPPED)
        except Exception:
            pass


def worker(graph: Any = None, *, db: str, **options: Any) -> WorkerLoop:
    """Iterate over the tasks of ``graph`` in the store at ``db``, one claimed task at a time.

    ``graph`` (a ``Graph``, graph file, dict or ``GraphSpec``) is submitted, or resumed when the
    store already holds it; ``None`` works on whatever graph the store holds. Options:
    ``worker_id``, ``lease_s``, ``labels``, ``resources``, ``idle_exit``, ``max_tasks``,
    ``replace``, ``retry``, ``fingerprints`` (default ``True``: a graph the store holds is
    resumed incrementally, docs/incremental.md; every joining process resumes it, so a
    ``cache=False`` task re-runs per join unless joiners pass ``fingerprints=False``),
    ``clock`` (a ``conveyor.clock.Clock``), ``telemetry`` (``True`` or a
    ``conveyor.observe.otel.Telemetry``: a span per task, docs/telemetry.md). What happens to
    the task in hand when the loop goes on or ends: see ``conveyor.runtime.worker``.
    """
    return WorkerLoop(graph, db=db, **options)
