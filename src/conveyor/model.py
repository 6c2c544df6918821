"""What a task and a graph are: plain values, validated with clear errors.

``TaskSpec`` is what the user declared; scheduling state lives in ``core`` and ``store``.
Size: the task, graph and result values in one module (``GraphSpec`` holds no-op tasks as
columns until they are read, for the no-op run's speed and memory).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

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
    REMOVED = 9  # its graph was submitted again without it; never runs (until it is back)

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> TaskState:
        """The state a label names (``"retry_wait"``); ``ValueError`` for another word."""
        try:
            return cls[label.upper()]
        except KeyError:
            raise ValueError(f"unknown task state {label!r}") from None

    @property
    def finished(self) -> bool:
        return self in _FINISHED


_FINISHED = frozenset(
    {TaskState.DONE, TaskState.FAILED, TaskState.SKIPPED, TaskState.CANCELLED, TaskState.REMOVED}
)


@dataclass(init=False, repr=False, eq=False)
class TaskSpec:
    """One task as declared. ``fn`` is a callable or an import path ``"pkg.mod:func"``.

    Compact: ``id`` and ``deps`` live in slots; every other field reads its class-level default
    until it is set, and only fields set to something other than their default take room (in a
    per-task ``__dict__`` made on first use). A structure-only task costs ~64 bytes plus its
    ``deps`` tuple, which is what lets a million-task graph file load and run in little memory.
    Still a dataclass: ``dataclasses.fields``, ``replace`` and the constructor's keywords are
    those of the fields below, in this order.
    """

    __slots__ = ("__dict__", "deps", "id")

    id: str
    fn: Callable[..., Any] | str | None = None
    cmd: str | list[str] | None = None
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=_empty)
    if TYPE_CHECKING:
        deps: tuple[str, ...] = ()
    else:
        deps: tuple[str, ...]  # a slot: no class-level default (() in __init__ and fields())
    group: str = "default"
    labels: Mapping[str, Any] = field(default_factory=_empty)
    resources: Mapping[str, float] = field(default_factory=_empty)
    retries: int = 0
    timeout_s: float | None = None
    gang: str | None = None
    gang_size: int | None = None
    endpoint: str | None = None
    cache: bool = True
    version: str | int | None = None
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    runtime_s: float | None = None
    executor: str | None = None  # None: chosen by kind; "inline", "thread", "process"
    env: dict[str, str] | None = None
    cwd: str | None = None
    meta: dict[str, Any] | None = None
    #: Seconds the task is expected to run: a worker with an end (``--until``) does not start
    #: it when it could not finish in time (``core/timelimit.py``).
    expected_s: float | None = None
    #: Priority band: ``"interactive"``, ``"batch"``, ``"best_effort"`` or a number (lower runs
    #: first; ``core/ordering.py``). ``None``: the graph's band, a run-time child its
    #: submitter's, else ``batch``.
    band: str | int | None = None

    def __init__(
        self,
        id: str,
        fn: Callable[..., Any] | str | None = None,
        cmd: str | list[str] | None = None,
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] = EMPTY,
        deps: tuple[str, ...] = (),
        group: str = "default",
        labels: Mapping[str, Any] = EMPTY,
        resources: Mapping[str, float] = EMPTY,
        retries: int = 0,
        timeout_s: float | None = None,
        gang: str | None = None,
        gang_size: int | None = None,
        endpoint: str | None = None,
        cache: bool = True,
        version: str | int | None = None,
        inputs: tuple[str, ...] = (),
        outputs: tuple[str, ...] = (),
        runtime_s: float | None = None,
        executor: str | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        meta: dict[str, Any] | None = None,
        expected_s: float | None = None,
        band: str | int | None = None,
    ) -> None:
        self.id = id
        self.deps = deps
        # A field keeps its class-level default unless given another value (by identity: what
        # is read back is exactly what was passed).
        if fn is not None:
            self.fn = fn
        if cmd is not None:
            self.cmd = cmd
        if args is not _NO_ARGS:
            self.args = args
        if kwargs is not EMPTY:
            self.kwargs = kwargs
        if group != "default":
            self.group = group
        if labels is not EMPTY:
            self.labels = labels
        if resources is not EMPTY:
            self.resources = resources
        if retries != 0 or type(retries) is not int:
            self.retries = retries
        if timeout_s is not None:
            self.timeout_s = timeout_s
        if gang is not None:
            self.gang = gang
        if gang_size is not None:
            self.gang_size = gang_size
        if endpoint is not None:
            self.endpoint = endpoint
        if cache is not True:
            self.cache = cache
        if version is not None:
            self.version = version
        if inputs is not _NO_ARGS:
            self.inputs = inputs
        if outputs is not _NO_ARGS:
            self.outputs = outputs
        if runtime_s is not None:
            self.runtime_s = runtime_s
        if executor is not None:
            self.executor = executor
        if env is not None:
            self.env = env
        if cwd is not None:
            self.cwd = cwd
        if meta is not None:
            self.meta = meta
        if expected_s is not None:
            self.expected_s = expected_s
        if band is not None:
            self.band = band

    @classmethod
    def bare(cls, id: str, deps: tuple[str, ...] = ()) -> TaskSpec:
        """A task with every field but ``id`` and ``deps`` at its default (a no-op), made
        without the keyword checks of ``__init__``: the graph-file fast path makes millions."""
        spec = _new(cls)
        spec.id = id
        spec.deps = deps
        return spec

    def __repr__(self) -> str:
        cls = type(self)
        shown = ", ".join(
            f"{name}={value!r}"
            for name in _FIELD_NAMES
            if (value := getattr(self, name)) is not getattr(cls, name, None) or name == "id"
        )
        return f"TaskSpec({shown})"

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
        """Check the fields that do not need the rest of the graph against the graph-file
        schema (``conveyor.schema``, the one home of their types and ranges); ``fn`` may be
        any callable here and the arguments any Python values. Raises ``GraphError``."""
        if not isinstance(self.id, str) or not self.id:
            raise GraphError(f"task id must be a non-empty string, got {self.id!r}")
        if self.fn is not None and self.cmd is not None:
            raise GraphError(f"task {self.id!r}: give either 'fn' or 'cmd', not both")
        if isinstance(self.fn, str) and not self.fn:
            raise GraphError(f"task {self.id!r}, field 'fn': expected an import path")
        if not self.__dict__.keys() - PYTHON_ONLY:
            return  # only id, deps (checked by the layout), fn and arguments are set
        from conveyor import schema

        fields = {k: v for k, v in self.__dict__.items() if k not in PYTHON_ONLY}
        fields["id"] = self.id
        # Python may name paths by ``os.PathLike`` objects (kept as given in the spec).
        if isinstance(self.cwd, os.PathLike):
            fields["cwd"] = os.fspath(self.cwd)
        for name in ("inputs", "outputs"):
            if name in fields and isinstance(fields[name], list | tuple):
                fields[name] = [os.fspath(p) if isinstance(p, os.PathLike) else p
                                for p in fields[name]]  # fmt: skip
        error = schema.check_task(fields)
        if error is not None:
            raise GraphError(error)


#: A worker's lease on the tasks it runs, unless told (``--lease``, ``lease_s``): renewed every
#: third of it by heartbeats; at least ``schema.MIN_LEASE_S``.
DEFAULT_LEASE_S = 30.0


def checked_lease(lease_s: float, name: str = "lease_s") -> float:
    """``lease_s`` if it is a lease (``schema.LeaseSeconds``), else a ``UsageError`` naming
    ``name``. The default passes as it is: a plain run does not import the schema (msgspec)."""
    if lease_s == DEFAULT_LEASE_S:
        return lease_s
    from conveyor.schema import checked

    return float(checked(lease_s, "LeaseSeconds", name))


#: What a task built in Python may hold that a graph file cannot (any callable as ``fn``, any
#: Python values as arguments): checked here, not by the schema.
PYTHON_ONLY = frozenset({"fn", "args", "kwargs"})


_new = object.__new__
_NO_ARGS: tuple[Any, ...] = ()
# ``deps`` is a slot, so it cannot carry a class-level default; fields() still reports ``()``.
TaskSpec.__dataclass_fields__["deps"].default = ()
# The default_factory fields lose their class attribute in @dataclass: give the shared default.
TaskSpec.kwargs = TaskSpec.labels = TaskSpec.resources = EMPTY
_FIELD_NAMES = tuple(TaskSpec.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class GroupSpec:
    name: str
    weight: float = 1.0
    cap: int | None = None
    #: How far the group may borrow beyond its fair share (``core/borrow.py``); ``None``: the
    #: graph's policy.
    borrow: str | None = None

    def validate(self) -> None:
        """Check the weight, cap and borrow policy against the graph-file schema;
        ``GraphError``."""
        from conveyor import schema

        error = schema.check_group(self.name, self.weight, self.cap, self.borrow)
        if error is not None:
            raise GraphError(error)


class GraphSpec:
    """A whole graph: tasks in submission order, groups, and the name a store knows it by.

    A structure-only graph read from a file or a dict holds its tasks as two columns, ids and
    parents (``columns``), until ``tasks`` is first read: its ``TaskSpec``s are made then,
    once, and the columns are dropped (the specs may be changed from then on). An in-process
    store loads the columns and makes a task's spec only when it is claimed on its own: a run
    of no-ops makes none (~3,400 instructions and ~80 bytes per task less, from a file).
    """

    __slots__ = ("_columns", "_tasks", "borrow", "groups", "layout", "meta", "name",
                 "structure_only")  # fmt: skip
    __hash__ = None  # type: ignore[assignment]  # (compared by value, as a dataclass was)

    def __init__(
        self,
        name: str,
        tasks: list[TaskSpec],
        groups: dict[str, GroupSpec] | None = None,
        meta: Mapping[str, Any] | None = None,
        layout: Any = None,
        structure_only: bool = False,
        borrow: str | None = None,
    ) -> None:
        self.name = name
        self._tasks: list[TaskSpec] | None = tasks
        self._columns: tuple[list[str], Sequence[Any]] | None = None
        self.groups: dict[str, GroupSpec] = {} if groups is None else groups
        self.meta: Mapping[str, Any] = {} if meta is None else meta
        self.layout = layout  #: the validated ``core.dag.Layout``: a store need not redo it
        #: Every task is a structure-only no-op (``TaskSpec.bare``: an id, parents, at most
        #: ``runtime_s``): a store or engine may skip its per-task scans (functions, admission).
        self.structure_only = structure_only
        #: The run's borrow policy (``core/borrow.py``): ``None`` is the default, ``bounded``.
        self.borrow = borrow

    @classmethod
    def from_columns(
        cls,
        name: str,
        ids: list[str],
        parents: Sequence[Any],
        groups: dict[str, GroupSpec],
        meta: Mapping[str, Any],
        layout: Any,
    ) -> GraphSpec:
        """A structure-only graph of no-ops ``TaskSpec.bare(ids[i], parents[i])``, made when
        ``tasks`` is first read."""
        spec = cls(name, [], groups, meta, layout, structure_only=True)
        spec._tasks = None
        spec._columns = (ids, parents)
        return spec

    @property
    def tasks(self) -> list[TaskSpec]:
        if self._tasks is None:
            assert self._columns is not None
            ids, parents = self._columns
            self._tasks = list(map(TaskSpec.bare, ids, parents))
            self._columns = None
        return self._tasks

    @tasks.setter
    def tasks(self, tasks: list[TaskSpec]) -> None:
        self._tasks, self._columns = tasks, None

    @property
    def columns(self) -> tuple[list[str], Sequence[Any]] | None:
        """``(ids, parents)`` while the tasks are bare no-ops not made yet, else ``None``."""
        return self._columns

    def __len__(self) -> int:
        if self._tasks is not None:
            return len(self._tasks)
        assert self._columns is not None
        return len(self._columns[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GraphSpec):
            return NotImplemented
        return (self.name, self.tasks, self.groups, self.meta, self.borrow) == (
            other.name, other.tasks, other.groups, other.meta, other.borrow
        )  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"GraphSpec(name={self.name!r}, tasks={self.tasks!r}, groups={self.groups!r}, "
            f"meta={self.meta!r}, borrow={self.borrow!r})"
        )


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
