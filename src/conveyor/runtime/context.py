"""``conveyor.current()``: what a running task knows about itself, and how it submits children."""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conveyor.errors import ConveyorError, TaskFailed
from conveyor.model import TaskResult, TaskSpec, TaskState
from conveyor.store.base import Claim

if TYPE_CHECKING:
    from conveyor.graph import Graph
    from conveyor.limiter import Acquire, EndpointLimiter, Slot

#: Set in ``Claim.extra`` (to the waiting task's id) when a running thread task is asked to
#: give its slot up; ``TaskContext.preempted`` reads it.
PREEMPT_REQUEST = "preempt_for"
#: Where the request moves when it is withdrawn (the waiting task started elsewhere before the
#: thread gave up): ``preempted`` reads ``False`` again, and a thread that raised on seeing it
#: is still given back, not failed.
PREEMPT_WITHDRAWN = "preempt_withdrawn"

_current: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "conveyor_current", default=None
)


def current() -> TaskContext:
    """The context of the task running in this thread or coroutine."""
    ctx = _current.get()
    if ctx is None:
        raise ConveyorError("conveyor.current() called outside a running task")
    return ctx


@dataclass(eq=False)
class ChildHandle:
    """A child task submitted at run time. ``result()`` waits for it without starving it: while
    the parent waits, its worker slot is lent to the children."""

    id: str
    _ctx: TaskContext = field(repr=False)

    def result(self, timeout: float | None = None) -> Any:
        res = self._ctx._wait_for(self.id, timeout)
        if res.state is not TaskState.DONE:
            raise TaskFailed(f"child task {self.id!r} ended {res.state.label}: {res.error}")
        return res.value

    async def wait(self) -> Any:
        import asyncio

        return await asyncio.to_thread(self.result)


_CHILD_IDS = threading.Lock()


@dataclass(eq=False)
class TaskContext:
    """Handed to the running task through a context variable; see :func:`current`."""

    task_id: str
    attempt: int
    depth: int
    #: The parents' results by parent id (read from the store when first looked at).
    parent_results: Mapping[str, Any]
    worker: str
    claim: Claim = field(repr=False)
    # Set by the engine: submit(tasks) -> ids; wait(id, timeout) -> TaskResult
    _submit: Callable[[TaskContext, list[TaskSpec]], list[str]] = field(repr=False)
    _wait: Callable[[TaskContext, str, float | None], TaskResult] = field(repr=False)
    endpoint: str | None = None  # the rate-limited service this task declared it calls
    _limiter: Callable[[], EndpointLimiter] | None = field(default=None, repr=False)
    _counter: int = 0

    @property
    def preempted(self) -> bool:
        """Whether a task of a higher band asked for this task's slot (docs/fairness.md). A
        thread task cannot be stopped from outside: it should look at this now and then and
        return or raise; its slot frees when it does. Raising then is not a failure: the task
        goes back to ready with its original key and runs again later (``task_preempted``)."""
        return PREEMPT_REQUEST in self.claim.extra

    @property
    def limiter(self) -> EndpointLimiter:
        """The run's shared ``EndpointLimiter`` (one per engine: limits adapt across tasks)."""
        if self._limiter is None:
            raise ConveyorError(f"task {self.task_id!r} declared no endpoint")
        return self._limiter()

    def acquire(self) -> Acquire:
        """``async with conveyor.current().acquire() as slot:`` a slot of this task's endpoint;
        then ``slot.report(status_code, retry_after=...)``."""
        return self.limiter.acquire(self._endpoint_key())

    def acquire_sync(self, timeout: float | None = None) -> Slot:
        """``with conveyor.current().acquire_sync() as slot:`` for sync tasks."""
        return self.limiter.acquire_sync(self._endpoint_key(), timeout)

    def _endpoint_key(self) -> str:
        if self.endpoint is None:
            raise ConveyorError(f"task {self.task_id!r} declared no endpoint")
        return self.endpoint

    def submit(
        self, fn: Callable[..., Any] | str | None = None, *args: Any, **options: Any
    ) -> ChildHandle:
        """Submit one child task: ``fn(*args)`` (or ``cmd=...``) one level deeper than this task.

        Options are ``TaskSpec`` fields (``id``, ``deps``, ``retries``, ``group`` ...); ``id``
        defaults to ``"<this task>/<n>"``.
        """
        spec = self._child_spec(fn, args, options)
        (tid,) = self._submit(self, [spec])
        return ChildHandle(tid, self)

    def submit_job(self, graph: Graph) -> list[ChildHandle]:
        """Submit a whole child job (a ``Graph``): its roots sit one level below this task and
        it keeps this task's root order. Task ids are prefixed with ``"<this task>/"``."""
        from conveyor.model import TaskRef, find_refs, substitute_refs

        prefix = f"{self.task_id}/"
        specs = []
        for t in graph.tasks:
            deps = tuple(prefix + d for d in t.deps)
            args, kwargs = t.args, t.kwargs
            refs = find_refs(args, dict(kwargs))
            if refs:  # TaskRef arguments follow their tasks to the prefixed ids
                renamed = {r: TaskRef(prefix + r) for r in refs}
                args = tuple(substitute_refs(a, renamed) for a in args)
                kwargs = {k: substitute_refs(v, renamed) for k, v in kwargs.items()}
            specs.append(_replace_spec(t, id=prefix + t.id, deps=deps, args=args, kwargs=kwargs))
        ids = self._submit(self, specs)
        return [ChildHandle(i, self) for i in ids]

    def _child_spec(self, fn: Any, args: tuple[Any, ...], options: dict[str, Any]) -> TaskSpec:
        from conveyor.graph import spec_from_call

        with _CHILD_IDS:  # one lock for all tasks: made per child submitted, not per task
            self._counter += 1
            n = self._counter
        options.setdefault("id", f"{self.task_id}/{n}")
        return spec_from_call(fn, args, options)

    def _wait_for(self, task_id: str, timeout: float | None) -> TaskResult:
        return self._wait(self, task_id, timeout)


def _replace_spec(spec: TaskSpec, **changes: Any) -> TaskSpec:
    import dataclasses

    return dataclasses.replace(spec, **changes)
