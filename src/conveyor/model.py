"""What a task and a graph are: plain values, validated with clear errors.

``TaskSpec`` is what the user declared; scheduling state lives in ``core`` and ``store``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from conveyor.errors import GraphError

#: The shared empty mapping of unset task fields (a million tasks need not own a million dicts).
EMPTY: Mapping[str, Any] = MappingProxyType({})


def _empty() -> Mapping[str, Any]:
    return EMPTY


class TaskState(enum.IntEnum):
    """Lifecycle of a task. Stored as small ints (``state`` columns, bytearrays)."""

    PENDING = 0  # waiting on unfinished parents
    READY = 1  # all parents done; in the ready heap
    RUNNING = 2  # claimed by a worker
    DONE = 3
    FAILED = 4  # failed for good (retries spent)
    SKIPPED = 5  # an upstream task failed
    RETRY_WAIT = 6  # failed, waiting for its backoff to pass
    CANCELLED = 7
    INVALIDATED = 8  # was done, its fingerprint changed; waits to run again

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def finished(self) -> bool:
        return self in _FINISHED


_FINISHED = frozenset({TaskState.DONE, TaskState.FAILED, TaskState.SKIPPED, TaskState.CANCELLED})

#: The keys a task may have in a graph file (DESIGN.md section 4), plus the WfCommons ones.
TASK_KEYS = frozenset(
    {
        "id", "cmd", "fn", "args", "kwargs", "deps", "parents", "group", "labels", "resources",
        "retries", "timeout_s", "gang", "gang_size", "endpoint", "cache", "version", "inputs",
        "outputs", "runtime_s", "cores", "executor", "env", "cwd", "meta",
    }
)  # fmt: skip


@dataclass(slots=True, eq=False)
class TaskSpec:
    """One task as declared. ``fn`` is a callable or an import path ``"pkg.mod:func"``."""

    id: str
    fn: Callable[..., Any] | str | None = None
    cmd: str | list[str] | None = None
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=_empty)
    deps: tuple[str, ...] = ()
    group: str = "default"
    labels: Mapping[str, Any] = field(default_factory=_empty)
    resources: Mapping[str, float] = field(default_factory=_empty)
    retries: int = 0
    timeout_s: float | None = None
    gang: str | None = None
    gang_size: int | None = None
    endpoint: str | None = None
    cache: bool = True
    version: str | None = None
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    runtime_s: float | None = None
    executor: str | None = None  # None: chosen by kind; "inline", "thread", "process"
    env: dict[str, str] | None = None
    cwd: str | None = None
    meta: dict[str, Any] | None = None

    @property
    def is_noop(self) -> bool:
        return self.fn is None and self.cmd is None

    @property
    def kind(self) -> str:
        if self.cmd is not None:
            return "cmd"
        if self.fn is None:
            return "noop"
        return "fn"

    def validate(self) -> None:
        """Check the fields that do not need the rest of the graph."""
        if not isinstance(self.id, str) or not self.id:
            raise GraphError(f"task id must be a non-empty string, got {self.id!r}")
        if self.fn is not None and self.cmd is not None:
            raise GraphError(f"task {self.id!r}: give either 'fn' or 'cmd', not both")
        if not isinstance(self.retries, int) or self.retries < 0:
            raise GraphError(f"task {self.id!r}: 'retries' must be an integer >= 0")
        if self.timeout_s is not None and (
            not isinstance(self.timeout_s, int | float)
            or not math.isfinite(self.timeout_s)
            or self.timeout_s <= 0
        ):
            raise GraphError(f"task {self.id!r}: 'timeout_s' must be a number > 0")
        if self.executor not in (None, "inline", "thread", "process"):
            raise GraphError(
                f"task {self.id!r}: 'executor' must be inline, thread or process, "
                f"not {self.executor!r}"
            )
        for name, value in self.resources.items():
            if not isinstance(value, int | float) or value < 0:
                raise GraphError(f"task {self.id!r}: resource {name!r} must be a number >= 0")


@dataclass(frozen=True, slots=True)
class GroupSpec:
    name: str
    weight: float = 1.0
    cap: int | None = None

    def validate(self) -> None:
        if not isinstance(self.weight, int | float) or not self.weight > 0:
            raise GraphError(f"group {self.name!r}: weight must be > 0, got {self.weight!r}")
        if self.cap is not None and (not isinstance(self.cap, int) or self.cap < 1):
            raise GraphError(f"group {self.name!r}: cap must be an integer >= 1")


@dataclass(slots=True)
class GraphSpec:
    """A whole graph: tasks in submission order, groups, and the name a store knows it by."""

    name: str
    tasks: list[TaskSpec]
    groups: dict[str, GroupSpec] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)
    #: The validated ``core.dag.Layout`` (depths, parents), kept so a store need not redo it.
    layout: Any = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.tasks)


@dataclass(frozen=True, slots=True)
class TaskResult:
    """What a finished task produced, handed out as soon as it finishes."""

    id: str
    state: TaskState
    value: Any = None
    error: str | None = None
    attempt: int = 1

    @property
    def ok(self) -> bool:
        return self.state is TaskState.DONE


@dataclass(frozen=True, slots=True)
class TaskRef:
    """A handle to a declared task. Passed as an argument to another task, it becomes a
    dependency, and the parent's result is substituted for it when the child runs."""

    id: str

    def __repr__(self) -> str:
        return f"TaskRef({self.id!r})"


def find_refs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[str]:
    """Ids of the ``TaskRef``s in arguments, one level into lists, tuples and dicts."""
    out: list[str] = []
    for v in (*args, *kwargs.values()):
        if isinstance(v, TaskRef):
            out.append(v.id)
        elif isinstance(v, list | tuple):
            out.extend(x.id for x in v if isinstance(x, TaskRef))
        elif isinstance(v, dict):
            out.extend(x.id for x in v.values() if isinstance(x, TaskRef))
    return out


def substitute_refs(value: Any, results: Mapping[str, Any]) -> Any:
    """Replace ``TaskRef``s (one level into containers) by their results."""
    if isinstance(value, TaskRef):
        return results[value.id]
    if isinstance(value, list):
        return [results[x.id] if isinstance(x, TaskRef) else x for x in value]
    if isinstance(value, tuple):
        return tuple(results[x.id] if isinstance(x, TaskRef) else x for x in value)
    if isinstance(value, dict):
        return {k: results[x.id] if isinstance(x, TaskRef) else x for k, x in value.items()}
    return value
