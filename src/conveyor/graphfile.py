"""Graph input: JSON/YAML graph files and graph dicts, decoded against ``conveyor.schema`` (the
one definition of their fields: types and ranges), and networkx graphs (``networkx.DiGraph``).

Everything is checked before anything runs: every field's type and range, unknown keys, cycles
(named), unknown or duplicate ids, unknown groups, label operators, functions that do not
import or are not callable, arguments that are not JSON. Every error is one ``GraphError``
line that names the file (with line and column for a syntax error), the task and the field.

Structure-only graphs (ids and parents: no-ops and WfCommons traces, the large ones) decode
into a struct of those fields alone and load column-wise; any other key sends the file to the
full schema, whose error is the one reported, unless the file is a WfCommons WfFormat instance
(``wfformat.py``), which is converted to a structure-only graph first.
"""

from __future__ import annotations

import operator
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.bulk import paused_gc
from conveyor.core.constraints import parse_constraints
from conveyor.core.dag import layout
from conveyor.errors import GraphError
from conveyor.imports import resolve_callable
from conveyor.model import GraphSpec, GroupSpec, TaskSpec

if TYPE_CHECKING:
    from conveyor.schema import TaskFields


def load_graph(path: str | os.PathLike[str], *, check_functions: bool = True) -> GraphSpec:
    """Read and validate a graph file (``.json``, ``.yaml`` or ``.yml``)."""
    p = Path(path)
    where = str(p)
    try:
        with open(p, "rb") as f:
            if stat.S_ISCHR(mode := os.fstat(f.fileno()).st_mode) or stat.S_ISBLK(mode):
                # (/dev/zero never ends: reading it would fill the memory; a FIFO is read)
                raise GraphError(f"{where}: is a device, not a graph file")
            data = f.read()
    except FileNotFoundError:
        raise GraphError(f"graph file {where!r} does not exist") from None
    except IsADirectoryError:
        raise GraphError(f"{where}: is a directory, not a graph file") from None
    except OSError as exc:
        raise GraphError(f"{where}: cannot read the graph file: {exc.strerror or exc}") from None
    if not data.strip():
        raise GraphError(f"{where}: the graph file is empty")
    yaml = p.suffix.lower() in (".yaml", ".yml")
    raw = _parse_yaml(data, where) if yaml else data
    try:
        # A parser makes a new string for every mention of an id: the parents are made to
        # share the tasks' own id strings (~190 B per task less at three parents).
        return _from_data(raw, p.stem, check_functions, share_ids=True)
    except GraphError as exc:
        exc.args = (f"{where}: {exc}",)
        raise


def graph_from_dict(
    data: Any, *, default_name: str = "graph", check_functions: bool = True
) -> GraphSpec:
    """Validate a graph given as a dict in the graph-file format (tasks listed parents first
    load fastest; any order is accepted)."""
    return _from_data(data, default_name, check_functions, share_ids=False)


def _parse_yaml(data: bytes, where: str) -> Any:
    """The YAML document in ``data``; a syntax error is one line ``FILE:LINE:COLUMN: ...``."""
    import yaml

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GraphError(f"{where}: not UTF-8 text (byte {exc.start})") from None
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = " ".join(filter(None, (exc.context, exc.problem)))
        raise GraphError(f"{where}{at}: not valid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise GraphError(f"{where}: not valid YAML: {exc}") from None
    except RecursionError:
        raise GraphError(f"{where}: nested too deeply") from None


def _decode(data: Any) -> Any:
    """``data`` (JSON bytes, or what a YAML file or the caller gave) as an ``IdGraph`` (ids and
    deps) or a ``BareGraph`` (with traced fields) when it is structure-only, else as
    ``GraphFields``. One ``GraphError`` line for what is wrong."""
    import msgspec

    from conveyor import schema

    is_json = isinstance(data, bytes)

    def typed(kind: Any) -> Any:
        return msgspec.json.decode(data, type=kind) if is_json else msgspec.convert(data, kind)

    try:
        with paused_gc():
            try:
                return typed(schema.IdGraph)
            except msgspec.ValidationError as exc:
                if _unknown_field(exc) in schema.TRACED_FIELDS:  # a trace: runtimes, cores
                    try:
                        return typed(schema.BareGraph)
                    except msgspec.ValidationError:
                        pass
            # (any other error: a ``BareGraph`` would refuse it too)
            return typed(schema.GraphFields)
    except msgspec.ValidationError as exc:
        from conveyor import wfformat  # (a graph the schema refused may be a WfFormat file)

        try:
            raw = msgspec.json.decode(data) if is_json else data
        except RecursionError:  # (deep in a field of the wrong type: not caught below)
            raise GraphError("nested too deeply") from None
        if wfformat.is_wfformat(raw):  # a WfCommons WfFormat file: read as what it says
            return _decode(wfformat.to_graph_dict(raw))
        raise GraphError(schema.explain(exc, raw)) from None
    except msgspec.DecodeError:
        # Python's parser, on this error path only: it places the error by line and column,
        # and it reads NaN and Infinity (not JSON, but Python writes them): the schema then
        # names the field that holds one.
        import json

        try:
            lenient = json.loads(data)
        except json.JSONDecodeError as exc:
            where = f"line {exc.lineno}, column {exc.colno}"
            raise GraphError(f"{where}: not valid JSON: {exc.msg}") from None
        except UnicodeDecodeError as exc:
            raise GraphError(f"not UTF-8 text (byte {exc.start})") from None
        except RecursionError:
            raise GraphError("nested too deeply") from None
        return _decode(lenient)
    except RecursionError:
        raise GraphError("nested too deeply") from None


def _unknown_field(exc: Exception) -> str | None:
    """The key msgspec's "Object contains unknown field `KEY`" error names, else ``None``."""
    text = str(exc)
    head = "Object contains unknown field `"
    return text[len(head) : text.find("`", len(head))] if text.startswith(head) else None


def _from_data(data: Any, default_name: str, check_functions: bool, share_ids: bool) -> GraphSpec:
    # One pause of the collector for decoding and building, the decoded structs gone before
    # it ends; the graph it built is promoted, not walked, at its end.
    with paused_gc(promote=True):
        return _build(data, default_name, check_functions, share_ids)


def _build(data: Any, default_name: str, check_functions: bool, share_ids: bool) -> GraphSpec:
    from msgspec import UNSET, to_builtins

    from conveyor import schema

    g = _decode(data)
    name = default_name if g.name is UNSET else g.name
    groups = {n: GroupSpec(n, f.weight, f.cap, f.borrow) for n, f in (g.groups or {}).items()}
    _check_borrows(g.borrow, groups)
    meta = {
        k: to_builtins(v)
        for k in schema.GRAPH_KEYS - {"tasks"}
        if (v := getattr(g, k)) is not UNSET
    }
    if isinstance(g, schema.IdGraph | schema.BareGraph) and g.tasks:
        traced = isinstance(g, schema.BareGraph)
        spec = _structure_only(name, g.tasks, groups, meta, share_ids, traced)
    else:
        try:
            tasks = [_task(t, check_functions) for t in g.tasks]
        except RecursionError:
            raise GraphError("nested too deeply") from None
        spec = GraphSpec(name, tasks, groups, meta)
        _check_across(spec)
    if g.borrow is not UNSET:
        spec.borrow = g.borrow
    if g.band is not UNSET:
        _default_band(spec.tasks, g.band)
        spec.structure_only = False  # (its tasks carry a band: no longer bare)
    return spec


def _check_borrows(run: Any, groups: dict[str, GroupSpec]) -> None:
    """The graph's and the groups' borrow policies parse (``core/borrow.py``)."""
    from msgspec import UNSET

    named = [("graph", run)] if run is not UNSET and run is not None else []
    named += [(f"group {n!r}", g.borrow) for n, g in groups.items() if g.borrow is not None]
    if not named:
        return
    from conveyor.core.borrow import BorrowPolicy

    for where, text in named:
        try:
            BorrowPolicy.parse(text)
        except ValueError as exc:
            raise GraphError(f"{where}, field 'borrow': {exc}") from None


def _default_band(tasks: list[TaskSpec], band: str | int) -> None:
    """The graph's ``band`` is the band of each of its tasks that names none."""
    for t in tasks:
        if t.band is None:
            t.band = band


_get_id = operator.attrgetter("id")
_get_deps = operator.attrgetter("deps")
_get_parents = operator.attrgetter("parents")
_get_runtime = operator.attrgetter("runtime_s")


def _structure_only(
    name: str,
    raw: list[Any],
    groups: dict[str, GroupSpec],
    meta: dict[str, Any],
    share_ids: bool,
    traced: bool,
) -> GraphSpec:
    """A graph of ``schema.IdTask``s or (``traced``) ``schema.BareTask``s, checked by the
    schema, built column-wise: a few C-level passes instead of per-task work. Same
    ``GraphSpec`` as the per-task path."""
    ids = list(map(_get_id, raw))
    deps: list[Any] = list(map(_get_deps, raw))
    parents = list(map(_get_parents, raw)) if traced else [None]
    if parents.count(None) != len(parents):
        for i, p in enumerate(parents):
            if p is not None:
                if deps[i] is not None:
                    raise GraphError(f"task {ids[i]!r}: give 'deps' or 'parents', not both")
                deps[i] = p
    if deps.count(None):
        deps = [() if d is None else d for d in deps]
    # The layout checks parents (each a known id), repeated ids and cycles.
    lay = layout(ids, deps, share_ids=share_ids)
    # (shared: the tasks' own id strings, not the parser's copies)
    own: Sequence[Any] = lay.parents if share_ids else deps
    runtimes = list(map(_get_runtime, raw)) if traced else [None]
    if runtimes.count(None) == len(runtimes):  # no-ops: their specs are made when read
        return GraphSpec.from_columns(name, ids, own, groups, meta, lay)
    tasks = list(map(TaskSpec.bare, ids, own))
    for t, r in zip(tasks, runtimes, strict=True):
        if r is not None:
            t.runtime_s = r
    return GraphSpec(name, tasks, groups, meta, lay, structure_only=True)


def _task(t: TaskFields, check_functions: bool) -> TaskSpec:
    """A ``TaskSpec`` of a task the schema accepted: the checks that span fields."""
    where = f"task {t.id!r}"
    if t.fn is not None and t.cmd is not None:
        raise GraphError(f"{where}: give either 'fn' or 'cmd', not both")
    deps = t.deps
    if t.parents is not None:
        if deps is not None:
            raise GraphError(f"{where}: give 'deps' or 'parents', not both")
        deps = t.parents
    if t.args or t.kwargs:  # (a file's are JSON already, but YAML has dates and .nan)
        import json

        try:
            json.dumps([t.args, t.kwargs], allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise GraphError(
                f"{where}, field 'args': arguments must be JSON values: {exc}"
            ) from None
    if t.fn is not None and check_functions:
        try:
            resolve_callable(t.fn)
        except GraphError as exc:
            raise GraphError(f"{where}, field 'fn': {exc}") from None
    if t.labels:
        parse_constraints(t.labels, where=f"{where}, field 'labels'")
    if t.endpoint is not None:
        check_endpoint(t.id, t.endpoint)
    for i, path in enumerate(t.inputs):
        if os.path.isdir(path):  # inputs are hashed as files: a folder cannot be
            raise GraphError(f"{where}, field 'inputs[{i}]': {path!r} is a directory, not a file")
    return TaskSpec(
        id=t.id, fn=t.fn, cmd=t.cmd, args=tuple(t.args), kwargs=t.kwargs,
        deps=deps or (), group=t.group, labels=t.labels,
        resources=t.resources, retries=t.retries, timeout_s=t.timeout_s,
        gang=t.gang, gang_size=t.gang_size, endpoint=t.endpoint, cache=t.cache,
        version=t.version, inputs=t.inputs, outputs=t.outputs, runtime_s=t.runtime_s,
        executor=t.executor, env=t.env, cwd=t.cwd, meta=t.meta, expected_s=t.expected_s,
        band=t.band,
    )  # fmt: skip


def check_endpoint(task_id: str, endpoint: str) -> None:
    """A task's endpoint key reads ``provider/model/domain`` (``core/limiter.check_key``, the
    one home of the rule): checked when the graph is built or loaded, not when the task runs."""
    from conveyor.core.limiter import check_key  # (imported for graphs with endpoints only)

    try:
        check_key(endpoint)
    except (TypeError, ValueError) as exc:
        raise GraphError(f"task {task_id!r}, field 'endpoint': {exc}") from None


def _check_across(spec: GraphSpec) -> None:
    """Checks across tasks: ids, parents, cycles, groups. O(V + E)."""
    spec.layout = layout([t.id for t in spec.tasks], [t.deps for t in spec.tasks])
    if spec.groups:
        for t in spec.tasks:
            if t.group != "default" and t.group not in spec.groups:
                raise GraphError(
                    f"task {t.id!r}, field 'group': unknown group {t.group!r}; "
                    f"declared groups: {', '.join(sorted(spec.groups))}"
                )


def validate_graph(spec: GraphSpec) -> None:
    """Check a graph built in Python: each task's fields (``TaskSpec.validate``), then ids,
    parents, cycles, groups. O(V + E)."""
    for t in spec.tasks:
        t.validate()
        if t.endpoint is not None:
            check_endpoint(t.id, t.endpoint)
    _check_borrows(spec.borrow, spec.groups)
    _check_across(spec)


def graph_from_networkx(g: Any, name: str = "graph") -> GraphSpec:
    """Nodes are tasks (node attributes are task fields); an edge ``u -> v`` makes ``v`` depend
    on ``u``. Node ids become strings."""
    import networkx as nx

    from conveyor.schema import TASK_KEYS

    if not isinstance(g, nx.DiGraph):
        raise GraphError("expected a networkx.DiGraph")
    tasks = []
    for node, attrs in g.nodes(data=True):
        raw = {k: v for k, v in attrs.items() if k in TASK_KEYS and k not in ("id", "deps")}
        unknown = sorted(set(attrs) - TASK_KEYS)
        if unknown:
            raise GraphError(f"node {node!r}: unknown attribute(s) {', '.join(unknown)}")
        fn = raw.pop("fn", None)
        raw.pop("parents", None)
        raw.pop("cores", None)
        deps = tuple(str(p) for p in g.predecessors(node))
        args = raw.pop("args", ())
        kwargs = raw.pop("kwargs", {})
        try:
            spec = TaskSpec(id=str(node), fn=fn, args=tuple(args), kwargs=dict(kwargs),
                            deps=deps, **raw)  # fmt: skip
        except TypeError as exc:
            raise GraphError(f"node {node!r}: {exc}") from None
        tasks.append(spec)
    graph = GraphSpec(name, tasks)
    validate_graph(graph)
    return graph
