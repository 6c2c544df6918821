"""Building graphs in Python: ``Graph``, ``@task``, and ``as_graph`` for every accepted form.

Below the runtime: the runtime (``conveyor.current().submit``) builds child specs with
``spec_from_call`` and the worker loop accepts any graph form through ``as_graph``.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from conveyor.errors import GraphError
from conveyor.graphfile import (
    check_endpoint,
    graph_from_dict,
    graph_from_networkx,
    load_graph,
    validate_graph,
)
from conveyor.model import GraphSpec, GroupSpec, TaskRef, TaskSpec, find_refs

__all__ = ["Graph", "as_graph", "spec_from_call", "task"]

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
            value = defaults[key] or {}
            if not isinstance(value, Mapping):
                raise GraphError(f"task {defaults.get('id')!r}, field {key!r}: expected a "
                                 f"mapping such as {{'cpu': 2}}, got {value!r}")  # fmt: skip
            defaults[key] = dict(value)
    for key in ("inputs", "outputs"):
        if key in defaults:
            value = defaults[key] or ()
            if isinstance(value, str | bytes) or not isinstance(value, Iterable):
                raise GraphError(f"task {defaults.get('id')!r}, field {key!r}: expected a "
                                 f"list of paths, got {value!r}")  # fmt: skip
            defaults[key] = tuple(value)
    spec = TaskSpec(fn=fn, args=tuple(args), kwargs=kwargs, deps=tuple(deps), **defaults)
    spec.validate()
    if spec.endpoint is not None:
        check_endpoint(spec.id, spec.endpoint)
    return spec


class Graph:
    """A graph built in Python.

    >>> g = Graph("demo")
    >>> a = g.add(sum, [1, 2])
    >>> b = g.add(lambda x: x * 10, a)   # b depends on a and receives its result
    >>> run(g)[b.id]
    30
    """

    def __init__(
        self,
        name: str = "graph",
        *,
        groups: dict[str, dict[str, Any]] | None = None,
        band: str | int | None = None,
        borrow: str | None = None,
    ):
        self.name = name
        #: The band of each task added without one (``None``: batch).
        self.band = band
        if band is not None:
            from conveyor.core.ordering import band_number

            try:
                band_number(band)
            except ValueError as exc:
                raise GraphError(f"graph {name!r}: {exc}") from None
        #: How far a group may borrow beyond its fair share (``None``: ``bounded``).
        self.borrow = borrow
        if borrow is not None:
            check_borrow(borrow)
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
        if self.band is not None and options.get("band") is None:
            options["band"] = self.band
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

    def group(
        self, name: str, *, weight: float = 1.0, cap: int | None = None, borrow: str | None = None
    ) -> None:
        g = GroupSpec(name, weight, cap, borrow)
        if borrow is not None:
            check_borrow(borrow)
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
        spec = GraphSpec(self.name, list(self.tasks), dict(self.groups), borrow=self.borrow)
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


def check_borrow(value: Any) -> None:
    """A borrow policy (``core/borrow.py``) as the graph file takes it, else ``GraphError``."""
    from conveyor.core.borrow import BorrowPolicy

    try:
        BorrowPolicy.parse(value)
    except ValueError as exc:
        raise GraphError(f"borrow: {exc}") from None
