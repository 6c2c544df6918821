"""Graph input: JSON/YAML graph files (the format in README.md, "Command line") and networkx
graphs (``networkx.DiGraph``).

Everything is checked before anything runs: unknown keys, cycles (named), unknown or duplicate
ids, functions that do not import or are not callable, arguments that are not JSON.
"""

from __future__ import annotations

import json
import math
import operator
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from conveyor.bulk import paused_gc
from conveyor.core.dag import layout
from conveyor.errors import GraphError
from conveyor.imports import resolve_callable
from conveyor.model import TASK_KEYS, GraphSpec, GroupSpec, TaskSpec

GRAPH_KEYS = frozenset({"name", "tasks", "groups", "description", "source", "family", "meta"})
GROUP_KEYS = frozenset({"weight", "cap"})


def load_graph(path: str | os.PathLike[str], *, check_functions: bool = True) -> GraphSpec:
    """Read and validate a graph file (``.json``, ``.yaml`` or ``.yml``)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GraphError(f"graph file {str(p)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GraphError(f"cannot read graph file {str(p)!r}: {exc}") from None
    if p.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise GraphError(f"{p.name}: not valid YAML: {exc}") from None
    else:
        try:
            with paused_gc():
                data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise GraphError(f"{p.name}: not valid JSON: {exc.msg} (line {exc.lineno})") from None
    # A parser makes a new string for every mention of an id: the parents are made to share
    # the tasks' own id strings (~190 B per task less at three parents, and faster lookups).
    return _from_data(data, p.stem, check_functions, share_ids=True)


def graph_from_dict(
    data: Any, *, default_name: str = "graph", check_functions: bool = True
) -> GraphSpec:
    """Validate a graph given as a dict in the graph-file format (tasks listed parents first
    load fastest; any order is accepted)."""
    return _from_data(data, default_name, check_functions, share_ids=False)


def _from_data(data: Any, default_name: str, check_functions: bool, share_ids: bool) -> GraphSpec:
    if not isinstance(data, Mapping):
        raise GraphError("a graph file must hold an object with a 'tasks' list")
    unknown = sorted(set(data) - GRAPH_KEYS)
    if unknown:
        raise GraphError(f"unknown key(s) in graph: {', '.join(unknown)}")
    raw_tasks = data.get("tasks")
    if not isinstance(raw_tasks, list):
        raise GraphError("the graph needs a 'tasks' list")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise GraphError("'name' must be a non-empty string")
    groups = _groups(data.get("groups") or {})
    meta = {k: data[k] for k in data if k != "tasks"}
    with paused_gc():
        spec = _structure_only(name, raw_tasks, groups, meta, share_ids)
        if spec is not None:
            return spec
        tasks = [_task(i, t, check_functions) for i, t in enumerate(raw_tasks)]
        spec = GraphSpec(name, tasks, groups, meta)
        validate_graph(spec)
    return spec


#: Keys of a structure-only task: no-ops and WfCommons traces. Such graphs load column-wise.
_SIMPLE_KEYS = frozenset({"id", "deps", "parents", "runtime_s", "cores"})
_get_id = operator.itemgetter("id")


def _structure_only(
    name: str,
    raw: list[Any],
    groups: dict[str, GroupSpec],
    meta: dict[str, Any],
    share_ids: bool = False,
) -> GraphSpec | None:
    """The graph when every task is structure-only and well formed, checked column-wise (a
    few C-level passes instead of per-task checks), else ``None``: the per-task path then
    finds and names what is wrong. Same ``GraphSpec`` as the per-task path."""
    if not raw:
        return None
    if set(map(type, raw)) != {dict}:
        return None
    keys = set().union(*raw)  # (dicts: the keys' stored hashes, no re-hashing)
    if not keys <= _SIMPLE_KEYS or ("deps" in keys and "parents" in keys):
        return None
    try:
        ids = list(map(_get_id, raw))
    except KeyError:
        return None
    if set(map(type, ids)) != {str} or not all(ids):
        return None
    key = "parents" if "parents" in keys else "deps"
    if key not in keys:
        deps: list[Any] = [()] * len(raw)
    else:
        try:
            deps = list(map(operator.itemgetter(key), raw))
        except KeyError:
            deps = [t.get(key, _NO_DEPS) for t in raw]
        if not set(map(type, deps)) <= _DEP_TYPES:
            return None
        if share_ids:
            canon = dict(zip(ids, ids, strict=True)).__getitem__
            try:
                deps = [tuple(map(canon, d)) if d else () for d in deps]
            except (KeyError, TypeError):
                return None  # an unknown parent: the per-task path names it in file order
        else:
            deps = list(map(tuple, deps))  # each parent is checked by layout: a known id
    runtimes: list[Any] | None = None
    if "runtime_s" in keys or "cores" in keys:
        runtimes = [t.get("runtime_s") for t in raw]
        for t, r in zip(raw, runtimes, strict=True):
            if r is not None and (not isinstance(r, int | float) or not math.isfinite(r) or r < 0):
                return None
            c = t.get("cores")
            if c is not None and (not isinstance(c, int | float) or c < 0):
                return None
    # The layout checks parents (each a known id: so a string), repeated ids and cycles. On
    # any error the per-task path runs instead, to report the first error in file order.
    try:
        lay = layout(ids, deps)
    except (GraphError, TypeError):
        return None
    bare = TaskSpec.bare
    tasks = list(map(bare, ids, deps))
    if runtimes is not None:
        for t, r in zip(tasks, runtimes, strict=True):
            if r is not None:
                t.runtime_s = r
    return GraphSpec(name, tasks, groups, meta, lay, structure_only=True)


_DEP_TYPES = frozenset({list})  # as on the per-task path: null and tuples go there
_NO_DEPS: list[str] = []


def validate_graph(spec: GraphSpec) -> None:
    """Checks across tasks: ids, parents, cycles, groups. O(V + E)."""
    for t in spec.tasks:
        t.validate()
    spec.layout = layout([t.id for t in spec.tasks], [t.deps for t in spec.tasks])
    if spec.groups:
        for t in spec.tasks:
            if t.group != "default" and t.group not in spec.groups:
                raise GraphError(
                    f"task {t.id!r} names unknown group {t.group!r}; "
                    f"declared groups: {', '.join(sorted(spec.groups))}"
                )


def _groups(raw: Any) -> dict[str, GroupSpec]:
    if not isinstance(raw, Mapping):
        raise GraphError("'groups' must map group names to {weight, cap}")
    out = {}
    for name, g in raw.items():
        if not isinstance(g, Mapping):
            raise GraphError(f"group {name!r} must be an object like {{'weight': 1, 'cap': 8}}")
        unknown = sorted(set(g) - GROUP_KEYS)
        if unknown:
            raise GraphError(f"group {name!r}: unknown key(s) {', '.join(unknown)}")
        spec = GroupSpec(str(name), g.get("weight", 1.0), g.get("cap"))
        spec.validate()
        out[str(name)] = spec
    return out


def _task(pos: int, raw: Any, check_functions: bool) -> TaskSpec:
    if not isinstance(raw, Mapping):
        raise GraphError(f"task #{pos + 1} must be an object")
    if raw.keys() <= _SIMPLE_KEYS:
        simple = _simple_task(raw)
        if simple is not None:
            return simple
    tid = raw.get("id")
    where = f"task {tid!r}" if isinstance(tid, str) else f"task #{pos + 1}"
    if not isinstance(tid, str) or not tid:
        raise GraphError(f"{where}: 'id' must be a non-empty string")
    unknown = sorted(set(raw) - TASK_KEYS)
    if unknown:
        raise GraphError(f"{where}: unknown key(s) {', '.join(unknown)}")
    if "deps" in raw and "parents" in raw:
        raise GraphError(f"{where}: give 'deps' or 'parents', not both")
    deps = raw.get("deps", raw.get("parents", [])) or []
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise GraphError(f"{where}: 'deps' must be a list of task ids")
    args = raw.get("args", [])
    kwargs = raw.get("kwargs", {})
    if not isinstance(args, list):
        raise GraphError(f"{where}: 'args' must be a list")
    if not isinstance(kwargs, Mapping):
        raise GraphError(f"{where}: 'kwargs' must be an object")
    try:
        json.dumps([args, kwargs], allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise GraphError(f"{where}: arguments must be JSON values: {exc}") from None
    fn = raw.get("fn")
    if fn is not None:
        if not isinstance(fn, str):
            raise GraphError(f"{where}: 'fn' must be an import path like 'pkg.mod:func'")
        if check_functions:
            try:
                resolve_callable(fn)
            except GraphError as exc:
                raise GraphError(f"{where}: {exc}") from None
    cmd = raw.get("cmd")
    if cmd is not None and not (
        isinstance(cmd, str) or (isinstance(cmd, list) and all(isinstance(c, str) for c in cmd))
    ):
        raise GraphError(f"{where}: 'cmd' must be a string or a list of strings")
    # "cores" (WfCommons traces) is what the traced task used: informational, not a request.
    resources = dict(raw.get("resources") or {})
    runtime = raw.get("runtime_s")
    if runtime is not None and (
        not isinstance(runtime, int | float) or not math.isfinite(runtime) or runtime < 0
    ):
        raise GraphError(f"{where}: 'runtime_s' must be a number >= 0")
    labels = raw.get("labels") or {}
    if not isinstance(labels, Mapping):
        raise GraphError(f"{where}: 'labels' must be an object")
    try:
        spec = TaskSpec(
            id=tid,
            fn=fn,
            cmd=cmd,
            args=tuple(args),
            kwargs=dict(kwargs),
            deps=tuple(deps),
            group=str(raw.get("group", "default")),
            labels=dict(labels),
            resources=resources,
            retries=raw.get("retries", 0),
            timeout_s=raw.get("timeout_s"),
            gang=raw.get("gang"),
            gang_size=raw.get("gang_size"),
            endpoint=raw.get("endpoint"),
            cache=bool(raw.get("cache", True)),
            version=raw.get("version"),
            inputs=tuple(raw.get("inputs") or ()),
            outputs=tuple(raw.get("outputs") or ()),
            runtime_s=runtime,
            executor=raw.get("executor"),
            env=raw.get("env"),
            cwd=raw.get("cwd"),
            meta=raw.get("meta"),
        )
    except TypeError as exc:
        raise GraphError(f"{where}: {exc}") from None
    spec.validate()
    return spec


def _simple_task(raw: Mapping[str, Any]) -> TaskSpec | None:
    """A structure-only task in a graph that also has other kinds (such a graph takes the
    per-task path). ``None`` sends anything unusual down the general path for its error."""
    tid = raw.get("id")
    deps = raw.get("deps", raw.get("parents", _NO_DEPS))
    if not isinstance(tid, str) or not tid or not isinstance(deps, list):
        return None
    if ("deps" in raw and "parents" in raw) or not all(isinstance(d, str) for d in deps):
        return None
    runtime = raw.get("runtime_s")
    if runtime is not None and (
        not isinstance(runtime, int | float) or not math.isfinite(runtime) or runtime < 0
    ):
        return None
    cores = raw.get("cores")
    if cores is not None and (not isinstance(cores, int | float) or cores < 0):
        return None
    spec = TaskSpec.bare(tid, tuple(deps))
    if runtime is not None:
        spec.runtime_s = runtime
    return spec


def graph_from_networkx(g: Any, name: str = "graph") -> GraphSpec:
    """Nodes are tasks (node attributes are task fields); an edge ``u -> v`` makes ``v`` depend
    on ``u``. Node ids become strings."""
    import networkx as nx

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
