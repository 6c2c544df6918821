"""``conveyor.worker(graph, db=URL)``: the laufband-style loop over a shared durable store.

    for task in conveyor.worker(graph, db="sqlite:///run.db"):
        work_on(task.id, *task.args)        # returning to the loop completes the task
        task.result = ...                   # optional: stored, handed to children

Each task is handed to exactly one loop at a time across every process sharing the store,
parents before children. An exception in the body fails the task (retried per its
``retries``) and propagates; ``break`` (or ``return``) gives the task back unrun. A background
thread renews the leases while the body runs, on its own connection.
"""

from __future__ import annotations

import dis
import random
import sys
import threading
import time
import types
from dataclasses import dataclass, field
from typing import Any

from conveyor.core.retry import DEFAULT_RETRY, RetryPolicy
from conveyor.errors import ConveyorError
from conveyor.model import TaskSpec
from conveyor.store.base import Claim, Store, WorkerProfile
from conveyor.store.urls import open_store
from conveyor.workerid import default_worker_id

__all__ = ["WorkItem", "WorkerLoop", "worker"]

# Where the consumer's frame stands when the loop is left without an exception: the iterator
# is popped (break, return) or exhausted. Anything else (a RAISE, a call...) means the body
# raised while it held the task.
_CLEAN_EXITS = frozenset(
    {"POP_TOP", "FOR_ITER", "END_FOR", "POP_ITER", "RETURN_VALUE", "RETURN_CONST", "POP_BLOCK",
     "JUMP_FORWARD", "JUMP_BACKWARD", "JUMP_ABSOLUTE", "SWAP"}
)  # fmt: skip
_MAX_IDLE_WAIT = 0.5


@dataclass(eq=False)
class WorkItem:
    """One claimed task. Set ``result`` in the loop body to store a value for its children."""

    id: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    parents: dict[str, Any]
    spec: TaskSpec
    attempt: int
    result: Any = None
    claim: Claim | None = field(default=None, repr=False)


class WorkerLoop:
    """The iterator ``worker()`` returns; also a context manager (``close()`` on exit)."""

    def __init__(
        self,
        graph: Any = None,
        *,
        db: str,
        worker_id: str | None = None,
        lease_s: float = 30.0,
        labels: dict[str, str] | None = None,
        resources: dict[str, float] | None = None,
        idle_exit: float | None = None,
        max_tasks: int | None = None,
        replace: bool = False,
        retry: RetryPolicy = DEFAULT_RETRY,
        fingerprints: bool = True,
    ) -> None:

        self.worker_id = worker_id or default_worker_id()
        self.lease_s = lease_s
        self.idle_exit = idle_exit
        self.max_tasks = max_tasks
        self.retry = retry
        self.db = db
        self.started = 0
        self._rng = random.Random()
        self._current: WorkItem | None = None
        self._frame: types.FrameType | None = None
        self._closed = False
        self.store: Store = open_store(db)
        # Here the loop body is the work of every task: no-ops are handed out too, one at a time.
        self.store.configure(
            WorkerProfile(labels=labels or {}, resources=resources, max_batch=1,
                          complete_noops=False, lease_s=lease_s)
        )  # fmt: skip
        now = time.time()
        if graph is not None:
            from conveyor.graph import as_graph
            from conveyor.fingerprints import open_graph

            open_graph(self.store, as_graph(graph), now, replace=replace, fingerprints=fingerprints)
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        if self.store.shared:
            self.store.register_worker(self.worker_id, now, {"loop": True})
            # The thread must not hold ``self``: dropping the loop (break) closes it.
            self._beat = threading.Thread(
                target=_heartbeats, args=(db, self.worker_id, lease_s, self._stop),
                name="conveyor-heartbeat", daemon=True,
            )  # fmt: skip
            self._beat.start()

    # -- the iterator ------------------------------------------------------------------------------
    def __iter__(self) -> WorkerLoop:
        return self

    def __next__(self) -> WorkItem:
        self._finish(ok=True)
        if self._closed:
            raise StopIteration
        idle_since: float | None = None
        wait = 0.005
        while True:
            if self.max_tasks is not None and self.started >= self.max_tasks:
                self.close()
                raise StopIteration
            now = time.time()
            got = self.store.claim(self.worker_id, 1, now, self.lease_s)
            if got:
                claim = got[0]
                self.started += 1
                spec = claim.spec
                parents = self.store.parent_values(claim) if claim.parents else {}
                item = WorkItem(spec.id, spec.args, spec.kwargs, parents, spec, claim.attempt,
                                claim=claim)  # fmt: skip
                self._current = item
                self._frame = sys._getframe(1)
                return item
            if self.store.unfinished() == 0:
                self.close()
                raise StopIteration
            if idle_since is None:
                idle_since = now
            elif self.idle_exit is not None and now - idle_since >= self.idle_exit:
                self.close()
                raise StopIteration
            wake = self.store.next_wakeup()
            timeout = wait if wake is None else min(wait, max(0.0, wake - now))
            wait = min(wait * 2, _MAX_IDLE_WAIT)
            if not self.store.wait_for_work(timeout):
                self._stop.wait(timeout if not self.store.shared else 0)

    def _finish(self, ok: bool, error: str | None = None) -> None:
        item, self._current, self._frame = self._current, None, None
        if item is None or item.claim is None:
            return
        now = time.time()
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

    def _left_by_exception(self) -> bool:
        """Whether the consumer left the loop by an exception (see ``_CLEAN_EXITS``)."""
        frame = self._frame
        if frame is None:
            return False
        try:
            op = dis.opname[frame.f_code.co_code[frame.f_lasti]]
        except (IndexError, ValueError):
            return False
        return op not in _CLEAN_EXITS

    def fail(self, error: str) -> None:
        """Fail the current task explicitly (the loop goes on with the next one)."""
        self._finish(ok=False, error=error)

    def close(self) -> None:
        """Give back the task in hand (or fail it, if the loop body raised), stop the
        heartbeats, close the store. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._current is not None:
                raised = self._left_by_exception()
                self._finish(ok=False, error="the worker loop body raised" if raised else None)
        finally:
            self._stop.set()
            if self._beat is not None:
                self._beat.join(timeout=5)
            if self.store.shared:
                self.store.unregister_worker(self.worker_id, time.time())
            self.store.close()

    def __enter__(self) -> WorkerLoop:
        return self

    def __exit__(self, tp: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None and self._current is not None:
            self._finish(ok=False, error=f"{type(exc).__name__}: {exc}")
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _heartbeats(db: str, worker_id: str, lease_s: float, stop: threading.Event) -> None:
    """Renew ``worker_id``'s leases every ``lease_s / 3`` on a connection of its own."""
    store = open_store(db)
    try:
        while not stop.wait(lease_s / 3):
            now = time.time()
            try:
                store.heartbeat(worker_id, now, lease_s)
                store.reap_expired(now)
            except ConveyorError:
                continue  # the next beat tries again; a lease outlives a few misses
    finally:
        store.close()


def worker(graph: Any = None, *, db: str, **options: Any) -> WorkerLoop:
    """Iterate over the tasks of ``graph`` in the store at ``db``, one claimed task at a time.

    ``graph`` (a ``Graph``, graph file, dict or ``GraphSpec``) is submitted, or resumed when the
    store already holds it; ``None`` works on whatever graph the store holds. Options:
    ``worker_id``, ``lease_s``, ``labels``, ``resources``, ``idle_exit``, ``max_tasks``,
    ``replace``, ``retry``, ``fingerprints`` (default ``True``: a graph the store holds is
    resumed incrementally, docs/incremental.md; every joining process resumes it, so a
    ``cache=False`` task re-runs per join unless joiners pass ``fingerprints=False``).
    """
    return WorkerLoop(graph, db=db, **options)
