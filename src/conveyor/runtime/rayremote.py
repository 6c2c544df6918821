"""What runs inside a Ray worker process for one conveyor task: a function or a shell command.

The driver (``rayexec.py``) submits ``run_function`` or ``run_command`` as Ray tasks; they
report ``(ok, value_or_error)`` as a plain tuple, so a task's own exception comes back as the
same one-line text the thread executor records, and only Ray's failures (a worker that died,
a cancelled task) surface as Ray errors.

A function task sees ``conveyor.current()`` as on a thread: its id, attempt, depth and its
parents' results. It may submit children when the run's store is durable: they go straight
into that store (``Store.submit_children``, from this Ray worker), and the engine claims them
like any other task. Waiting for a child from a task on Ray is refused: the task would hold
its Ray CPU while the child queues behind it.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, cast

from conveyor.errors import ConveyorError
from conveyor.imports import resolve_callable
from conveyor.runtime.context import TaskContext, _current
from conveyor.runtime.executors import Running, _kill, _run_command, describe

if TYPE_CHECKING:
    from conveyor.model import TaskResult, TaskSpec
    from conveyor.store.base import Claim, Store

__all__ = ["CommandCall", "FunctionCall", "TaskInfo", "function_task", "run_command"]

#: What a task reports: ``(True, value)`` or ``(False, one-line error)``.
Outcome = tuple[bool, Any]


class TaskInfo(NamedTuple):
    """What a task on Ray knows about itself (``conveyor.current()``). Sent as a plain tuple
    (``tuple(info)``; ``TaskInfo._make`` on the worker): Ray serializes it in a fraction of the
    time a class instance takes."""

    task_id: str
    attempt: int
    depth: int
    parents: Mapping[str, Any]
    worker: str
    #: The durable store children go to, with the claim they are submitted under; ``None``
    #: for an in-process store, which lives in the driver only.
    store_url: str | None = None
    claim: Claim | None = None


#: What the driver sends for one function task, as one argument (Ray serializes each argument
#: on its own): ``(args, kwargs, tuple(info))``. The function itself is not sent per task: it is
#: part of the Ray remote function made once for it (``function_task``).
FunctionCall = tuple[tuple[Any, ...], Mapping[str, Any], tuple[Any, ...]]
#: The same for a command: ``(cmd, env, cwd, timeout, tuple(info))``.
CommandCall = tuple[
    str | list[str], dict[str, str] | None, str | None, float | None, tuple[Any, ...]
]


def function_task(fn: Callable[..., Any] | str) -> Callable[[FunctionCall], Outcome]:
    """The body of the Ray remote function for ``fn`` (a callable, or an import path resolved
    on the worker), named after it (Ray shows tasks by this name)."""

    def conveyor_task(call: FunctionCall) -> Outcome:
        return run_function(fn, call)

    name = fn.rpartition(":")[2] if isinstance(fn, str) else getattr(fn, "__name__", None)
    if isinstance(name, str) and name.isidentifier():
        conveyor_task.__name__ = conveyor_task.__qualname__ = name
    return conveyor_task


def run_function(fn: Callable[..., Any] | str, call: FunctionCall) -> Outcome:
    """Call ``fn`` with ``current()`` set."""
    args, kwargs, info = call
    token = _current.set(_context(TaskInfo._make(info)))
    try:
        func = resolve_callable(fn) if isinstance(fn, str) else fn
        value = func(*args, **kwargs)
        if inspect.iscoroutine(value):
            value = asyncio.run(value)
        return True, value
    except Exception as exc:
        return False, describe(exc)
    finally:
        _current.reset(token)


def run_command(call: CommandCall) -> Outcome:
    """Run a shell command to its exit on this Ray node (its timeout kills its process group;
    so does a cancellation, which Ray delivers as ``KeyboardInterrupt``)."""
    cmd, env, cwd, timeout, packed = call
    info = TaskInfo._make(packed)
    full_env = dict(os.environ)
    full_env["CONVEYOR_TASK_ID"] = info.task_id
    full_env["CONVEYOR_ATTEMPT"] = str(info.attempt)
    run = Running(cast("Claim", None), time.time(), "cmd")
    try:
        if env:
            full_env.update(env)
        return _run_command(run, cmd, full_env, cwd, timeout)
    except KeyboardInterrupt:
        if run.proc is not None and run.proc.poll() is None:
            _kill(run.proc)
        raise
    except Exception as exc:  # bad arguments (an empty argv, a missing cwd), OSError
        return False, describe(exc)


# -- current() on a Ray worker -------------------------------------------------------------------
_STORES: dict[str, Store] = {}
_STORES_LOCK = threading.Lock()


def _context(info: TaskInfo) -> TaskContext:
    return TaskContext(
        info.task_id, info.attempt, info.depth, info.parents, info.worker,
        cast("Claim", info.claim), _make_submit(info), _refuse_wait,
    )  # fmt: skip


def _make_submit(info: TaskInfo) -> Callable[[TaskContext, list[TaskSpec]], list[str]]:
    def submit(ctx: TaskContext, specs: list[TaskSpec]) -> list[str]:
        if info.store_url is None or info.claim is None:
            raise ConveyorError(
                f"task {info.task_id!r} runs on Ray: it can submit children only to a durable "
                "store (run with --db sqlite:///... or postgresql://...)"
            )
        for spec in specs:
            spec.validate()
            if callable(spec.fn):
                raise ConveyorError(
                    f"child {spec.id!r} of a task on Ray: name its function by import path "
                    "('module:function'), which every worker can import"
                )
        return _store(info.store_url).submit_children(info.claim, specs, time.time())

    return submit


def _refuse_wait(ctx: TaskContext, task_id: str, timeout: float | None) -> TaskResult:
    raise ConveyorError(
        f"task {ctx.task_id!r} runs on Ray and cannot wait for child {task_id!r} (it would hold "
        "its Ray CPU while the child queues): submit the children and return; they run on "
        'their own (or run this task on threads: "executor": "thread")'
    )


def _store(url: str) -> Store:
    """One store connection per Ray worker process and URL, opened on first use."""
    with _STORES_LOCK:
        store = _STORES.get(url)
        if store is None:
            from conveyor.store.urls import open_store

            store = _STORES[url] = open_store(url)
        return store
