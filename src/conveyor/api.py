"""The user-facing names: ``Graph``, ``task``, ``run``, ``run_iter``, ``current``."""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from conveyor.errors import GraphError, TaskFailed
from conveyor.events import EventSink, JsonlSink, combine
from conveyor.graphfile import graph_from_dict, graph_from_networkx, load_graph, validate_graph
from conveyor.model import GraphSpec, GroupSpec, TaskRef, TaskResult, TaskSpec, TaskState, find_refs
from conveyor.runtime.context import current
from conveyor.store.base import Store, open_store

__all__ = ["Graph", "RunResult", "current", "run", "run_iter", "task"]

_SPEC_FIELDS = {f.name for f in dataclasses.fields(TaskSpec)} - {"fn", "args", "kwargs"}
_active_graph: contextvars.ContextVar[Graph | None] = contextvars.ContextVar(
    "conveyor_graph", default=None
)


def spec_from_call(fn: Any, args: tuple[Any, ...], options: dict[str, Any]) -> TaskSpec:
    """A ``TaskSpec`` for ``fn(*args)`` with task options; ``TaskRef`` arguments become deps."""
    unknown = sorted(set(options) - _SPEC_FIELDS - {"kwargs"})
    if unknown:
        raise GraphError(f"unknown task option(s): {', '.join(unknown)}")
    kwargs = dict(options.pop("kwargs", {}) or {})
    fn = getattr(fn, "__wrapped_task__", fn)
    defaults = dict(getattr(fn, "__conveyor_options__", {}))
    defaults.update(options)
    deps = list(defaults.pop("deps", ()) or ())
    deps = [d.id if isinstance(d, TaskRef) else str(d) for d in deps]
    for r in find_refs(args, kwargs):
        if r not in deps:
            deps.append(r)
    if fn is not None and not callable(fn) and not isinstance(fn, str):
        raise GraphError(f"task {defaults.get('id')!r}: {fn!r} is not callable")
    for key in ("labels", "resources"):
        if key in defaults:
            defaults[key] = dict(defaults[key] or {})
    for key in ("inputs", "outputs"):
        if key in defaults:
            defaults[key] = tuple(defaults[key] or ())
    spec = TaskSpec(fn=fn, args=tuple(args), kwargs=kwargs, deps=tuple(deps), **defaults)
    spec.validate()
    return spec


class Graph:
    """A graph built in Python.

    >>> g = Graph("demo")
    >>> a = g.add(sum, [1, 2])
    >>> b = g.add(lambda x: x * 10, a)   # b depends on a and receives its result
    >>> run(g)[b.id]
    30
    """

    def __init__(self, name: str = "graph", *, groups: dict[str, dict[str, Any]] | None = None):
        self.name = name
        self.tasks: list[TaskSpec] = []
        self._ids: set[str] = set()
        self._names: dict[str, int] = {}
        self.groups: dict[str, GroupSpec] = {}
        self._token: contextvars.Token[Graph | None] | None = None
        for gname, g in (groups or {}).items():
            self.group(gname, **g)

    def add(
        self, fn: Callable[..., Any] | str | None = None, *args: Any, **options: Any
    ) -> TaskRef:
        """Add ``fn(*args, **kwargs)`` as a task. Options: ``id``, ``deps``, ``kwargs``,
        ``retries``, ``timeout_s``, ``group``, ``cmd`` ... (the fields of ``TaskSpec``)."""
        if "id" not in options:
            options["id"] = self._fresh_id(fn, options.get("cmd"))
        spec = spec_from_call(fn, args, options)
        return self.add_spec(spec)

    def cmd(self, command: str | list[str], **options: Any) -> TaskRef:
        """Add a shell command as a task; its stdout (stripped) is its result."""
        return self.add(None, cmd=command, **options)

    def add_spec(self, spec: TaskSpec) -> TaskRef:
        if spec.id in self._ids:
            raise GraphError(f"duplicate task id {spec.id!r}")
        missing = [d for d in spec.deps if d not in self._ids]
        if missing:
            raise GraphError(f"task {spec.id!r} depends on unknown task {missing[0]!r}")
        self._ids.add(spec.id)
        self.tasks.append(spec)
        return TaskRef(spec.id)

    def group(self, name: str, *, weight: float = 1.0, cap: int | None = None) -> None:
        g = GroupSpec(name, weight, cap)
        g.validate()
        self.groups[name] = g

    def _fresh_id(self, fn: Any, cmd: Any) -> str:
        fn = getattr(fn, "__wrapped_task__", fn)
        if fn is None:
            base = "cmd" if cmd is not None else "task"
        elif isinstance(fn, str):
            base = fn.rpartition(":")[2].rpartition(".")[2] or fn
        else:
            base = getattr(fn, "__name__", "task")
            if base == "<lambda>":
                base = "lambda"
        n = self._names.get(base, 0) + 1
        self._names[base] = n
        tid = base if n == 1 else f"{base}-{n}"
        while tid in self._ids:
            n += 1
            self._names[base] = n
            tid = f"{base}-{n}"
        return tid

    def spec(self) -> GraphSpec:
        spec = GraphSpec(self.name, list(self.tasks), dict(self.groups))
        validate_graph(spec)
        return spec

    def __len__(self) -> int:
        return len(self.tasks)

    def __enter__(self) -> Graph:
        self._token = _active_graph.set(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            _active_graph.reset(self._token)
            self._token = None

    @classmethod
    def from_networkx(cls, g: Any, name: str = "graph") -> GraphSpec:
        return graph_from_networkx(g, name)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> GraphSpec:
        return load_graph(path)


def task(fn: Callable[..., Any] | None = None, **options: Any) -> Any:
    """Declare a function as a task. Called inside ``with Graph() as g:`` it adds a task and
    returns a ``TaskRef``; called anywhere else it just runs.

    ``@task`` or ``@task(retries=2, group="alice", timeout_s=60)``.
    """

    def wrap(f: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            g = _active_graph.get()
            if g is None:
                return f(*args, **kwargs)
            return g.add(f, *args, kwargs=kwargs)

        f.__conveyor_options__ = dict(options)  # type: ignore[attr-defined]
        wrapper.__wrapped_task__ = f  # type: ignore[attr-defined]
        return wrapper

    return wrap(fn) if fn is not None else wrap


def as_graph(graph: Any) -> GraphSpec:
    """Accept a ``Graph``, ``GraphSpec``, ``networkx.DiGraph``, a dict, or a graph file path."""
    if isinstance(graph, Graph):
        return graph.spec()
    if isinstance(graph, GraphSpec):
        validate_graph(graph)
        return graph
    if isinstance(graph, str | os.PathLike):
        return load_graph(graph)
    if isinstance(graph, dict):
        return graph_from_dict(graph)
    try:
        import networkx as nx
    except ImportError:  # pragma: no cover
        nx = None
    if nx is not None and isinstance(graph, nx.DiGraph):
        return graph_from_networkx(graph)
    raise GraphError(f"cannot run a {type(graph).__name__}: give a Graph, a file or a DiGraph")


@dataclass
class RunResult:
    """What ``run`` returns: counts, and every task's result by id (``result["task"]``)."""

    store: Store
    stats: Any
    graph: GraphSpec

    def __getitem__(self, task_id: str) -> Any:
        res = self.store.result(task_id)
        if res.state is not TaskState.DONE:
            raise TaskFailed(f"task {task_id!r} is {res.state.label}: {res.error}")
        return res.value

    def result(self, task_id: str) -> TaskResult:
        return self.store.result(task_id)

    @property
    def counts(self) -> dict[str, int]:
        return self.store.counts()

    @property
    def ok(self) -> bool:
        c = self.counts
        return (
            self.store.unfinished() == 0
            and not any(c.get(k, 0) for k in ("failed", "skipped", "cancelled"))
            and not self.stats.interrupted
        )

    @property
    def failed(self) -> dict[str, str | None]:
        return {
            t.id: r.error
            for t in self.graph.tasks
            if (r := self.store.result(t.id)).state in (TaskState.FAILED, TaskState.SKIPPED)
        }

    @property
    def exit_code(self) -> int:
        if self.stats.interrupted:
            return 130
        return 0 if self.ok else 1


def _engine(graph: Any, opts: dict[str, Any]) -> tuple[Any, GraphSpec, list[Any]]:
    from conveyor.runtime.engine import Engine

    spec = as_graph(graph)
    closers: list[Any] = []
    events = opts.pop("events", None)
    sinks: list[EventSink | None] = [opts.pop("emit", None)]
    if events is not None:
        sink = JsonlSink(events)
        closers.append(sink)
        sinks.append(sink)
    emit = combine(sinks)
    store = opts.pop("store", None)
    db = opts.pop("db", None)
    replace = opts.pop("replace", False)
    fingerprints = opts.pop("fingerprints", True)
    if store is None:
        store = open_store(db, emit=emit)
    elif emit is not None:
        store.emit = emit
    import time

    store.open_graph(spec, time.time(), replace=replace, fingerprints=fingerprints)
    functions = {} if spec.structure_only else {t.id: t for t in spec.tasks if callable(t.fn)}
    engine = Engine(store, functions=functions, emit=emit, **opts)
    if not store.shared:
        engine.check_fit()
    return engine, spec, closers


def run(graph: Any, **options: Any) -> RunResult:
    """Run a graph to the end and return its results.

    Options: ``workers`` (default 4), ``db`` (store URL, default in memory), ``events`` (a
    JSONL path), ``fail_fast``, ``retry`` (a ``RetryPolicy``), ``executor`` ("inline",
    "thread", "process"), ``on_result`` (called with each ``TaskResult`` as it finishes),
    ``fingerprints`` (default ``True``: with a durable ``db``, a second run of the same graph
    runs only what changed and its downstream; docs/incremental.md).
    """
    engine, spec, closers = _engine(graph, dict(options))
    try:
        try:
            engine.run()
        except KeyboardInterrupt:
            pass
        return RunResult(engine.store, engine.stats, spec)
    finally:
        for c in closers:
            c.close()


def run_iter(graph: Any, **options: Any) -> Iterator[TaskResult]:
    """Run a graph, yielding each task's ``TaskResult`` as soon as it finishes."""
    engine, _spec, closers = _engine(graph, dict(options))
    try:
        yield from engine.run_iter()
    finally:
        for c in closers:
            c.close()
