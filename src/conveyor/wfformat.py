"""WfCommons WfFormat files (https://github.com/wfcommons/WfFormat), read as graph files.

Two layouts, told apart by their structure (``schemaVersion`` must be a known one):

- 1.5 and later: ``workflow.specification.tasks`` (``id``, ``parents``, ``children``,
  ``inputFiles``, ``outputFiles``; tasks refer to each other by id) and
  ``workflow.execution.tasks`` (``id``, ``runtimeInSeconds``, ``coreCount``, ...).
- 1.4 and earlier: ``workflow.tasks`` (``workflow.jobs`` before 1.3), one list with ``name``,
  ``parents``/``children`` (by name), ``runtimeInSeconds`` (``runtime`` before 1.4), ``cores``,
  and ``files`` with ``link`` input/output.

A task's id is its ``id`` (1.5+) or its ``name`` (earlier: what parents name). Dependencies may
be declared on either end (``parents`` or ``children``); both are merged. A file that declares
no dependency at all gets them from its files (a task depends on the producers of its inputs),
as WfFormat's own migration tool infers them. The measured runtime becomes ``runtime_s`` and
the cores ``cores``: the task runs as a no-op (``conveyor run --speed`` sleeps for it) and
``conveyor simulate`` takes the runtime as its duration. The trace's command is not run: it
belongs to the traced system, not to this machine.

The result is a graph dict in conveyor's own format (structure-only), validated as any other.
Every error is one ``GraphError`` line that names the task and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from conveyor.errors import GraphError

#: The schema versions read here (WfFormat's own migration tool knows 1.0 to 1.6).
VERSIONS = ("1.0", "1.1", "1.2", "1.3", "1.4", "1.5", "1.6")


def is_wfformat(data: Any) -> bool:
    """Whether ``data`` (a decoded JSON document) is a WfFormat instance: a ``workflow`` object
    and a ``schemaVersion``, which conveyor's graph files never have."""
    return isinstance(data, dict) and "schemaVersion" in data and "workflow" in data


def to_graph_dict(data: Mapping[str, Any]) -> dict[str, Any]:
    """The conveyor graph dict of a WfFormat instance (``is_wfformat(data)``)."""
    version = data["schemaVersion"]
    if not isinstance(version, str) or version not in VERSIONS:
        raise GraphError(
            f"WfFormat schemaVersion {version!r} is not one conveyor reads "
            f"({VERSIONS[0]} to {VERSIONS[-1]})"
        )
    wf = data["workflow"]
    if not isinstance(wf, dict):
        raise GraphError(f"WfFormat {version}: 'workflow' must be an object")
    tasks = _tasks_v15(wf, version) if "specification" in wf else _tasks_v14(wf, version)
    out: dict[str, Any] = {"tasks": tasks}
    described = data.get("description")
    if isinstance(described, str):
        out["description"] = described
    source = f"WfFormat {version}"
    if isinstance(data.get("name"), str):
        source += f": {data['name']}"
    out["source"] = source
    return out


def _list(obj: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise GraphError(f"{where}, field {key!r}: expected a list, got {type(value).__name__}")
    return value


def _object(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise GraphError(f"{where}: expected an object, got {type(obj).__name__}")
    return obj


def _name(task: Mapping[str, Any], key: str, where: str) -> str:
    value = task.get(key)
    if not isinstance(value, str) or not value:
        raise GraphError(f"{where}: field {key!r} must be a non-empty string")
    return value


def _number(task: Mapping[str, Any], keys: tuple[str, ...], where: str) -> float | None:
    for key in keys:
        if key in task and task[key] is not None:
            value = task[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise GraphError(f"{where}, field {key!r}: expected a number >= 0, got {value!r}")
            return value
    return None


def _tasks_v15(wf: Mapping[str, Any], version: str) -> list[dict[str, Any]]:
    spec = _object(wf["specification"], f"WfFormat {version}: 'workflow.specification'")
    raw = _list(spec, "tasks", "WfFormat 'workflow.specification'")
    ids: list[str] = []
    parents: dict[str, list[str]] = {}
    children: dict[str, list[str]] = {}
    inputs: dict[str, list[str]] = {}
    producer: dict[str, str] = {}
    for k, t in enumerate(raw):
        where = f"WfFormat task #{k}"
        t = _object(t, where)
        tid = _name(t, "id", where)
        where = f"task {tid!r}"
        ids.append(tid)
        parents[tid] = [_ref(p, where, "parents") for p in _list(t, "parents", where)]
        children[tid] = [_ref(c, where, "children") for c in _list(t, "children", where)]
        inputs[tid] = [f for f in _list(t, "inputFiles", where) if isinstance(f, str)]
        for f in _list(t, "outputFiles", where):
            if isinstance(f, str):
                producer.setdefault(f, tid)
    runtime: dict[str, float | None] = {}
    cores: dict[str, float | None] = {}
    execution = wf.get("execution")
    if execution is not None:
        execution = _object(execution, f"WfFormat {version}: 'workflow.execution'")
        for k, t in enumerate(_list(execution, "tasks", "WfFormat 'workflow.execution'")):
            t = _object(t, f"WfFormat execution task #{k}")
            tid = _name(t, "id", f"WfFormat execution task #{k}")
            where = f"execution of task {tid!r}"
            if tid not in parents:
                raise GraphError(f"{where}: no task of that id in 'workflow.specification'")
            runtime[tid] = _number(t, ("runtimeInSeconds",), where)
            cores[tid] = _number(t, ("coreCount", "cores"), where)
    return _assemble(ids, parents, children, inputs, producer, runtime, cores)


def _tasks_v14(wf: Mapping[str, Any], version: str) -> list[dict[str, Any]]:
    key = "tasks" if "tasks" in wf else "jobs"
    raw = _list(wf, key, f"WfFormat {version}: 'workflow'")
    if not raw and key not in wf:
        raise GraphError(
            f"WfFormat {version}: 'workflow' has no 'specification', 'tasks' or 'jobs'"
        )
    ids: list[str] = []
    alias: dict[str, str] = {}  # old ids -> names (parents name tasks; an id is accepted too)
    parents: dict[str, list[str]] = {}
    children: dict[str, list[str]] = {}
    inputs: dict[str, list[str]] = {}
    producer: dict[str, str] = {}
    runtime: dict[str, float | None] = {}
    cores: dict[str, float | None] = {}
    for k, t in enumerate(raw):
        where = f"WfFormat task #{k}"
        t = _object(t, where)
        tid = _name(t, "name", where)
        where = f"task {tid!r}"
        if tid in parents:
            raise GraphError(f"duplicate task name {tid!r}")
        ids.append(tid)
        old = t.get("id")
        if isinstance(old, str) and old:
            alias.setdefault(old, tid)
        parents[tid] = [_ref(p, where, "parents") for p in _list(t, "parents", where)]
        children[tid] = [_ref(c, where, "children") for c in _list(t, "children", where)]
        ins: list[str] = []
        for f in _list(t, "files", where):
            if not isinstance(f, dict) or not isinstance(f.get("name"), str):
                continue
            name = f.get("path", "") + f["name"] if isinstance(f.get("path"), str) else f["name"]
            if str(f.get("link", "")).lower() == "input":
                ins.append(name)
            else:
                producer.setdefault(name, tid)
        inputs[tid] = ins
        runtime[tid] = _number(t, ("runtimeInSeconds", "runtime"), where)
        cores[tid] = _number(t, ("cores",), where)
    if alias:
        for refs in (*parents.values(), *children.values()):
            refs[:] = [r if r in parents else alias.get(r, r) for r in refs]
    return _assemble(ids, parents, children, inputs, producer, runtime, cores)


def _ref(value: Any, where: str, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise GraphError(f"{where}, field {field!r}: expected task names, got {value!r}")
    return value


def _assemble(
    ids: list[str],
    parents: dict[str, list[str]],
    children: dict[str, list[str]],
    inputs: dict[str, list[str]],
    producer: dict[str, str],
    runtime: dict[str, float | None],
    cores: dict[str, float | None],
) -> list[dict[str, Any]]:
    """Merge both ends of every dependency; infer a task's parents from its input files when no
    dependency names it at all. Unknown names are left for the graph checks to report."""
    merged = {tid: dict.fromkeys(ps) for tid, ps in parents.items()}
    declared = any(parents.values()) or any(children.values())
    for tid, kids in children.items():
        for c in kids:
            if c not in merged:
                raise GraphError(f"task {tid!r}, field 'children': unknown task {c!r}")
            merged[c].setdefault(tid)
    if not declared:
        for tid in ids:
            for f in inputs[tid]:
                made_by = producer.get(f)
                if made_by is not None and made_by != tid:
                    merged[tid].setdefault(made_by)
    out = []
    for tid in ids:
        task: dict[str, Any] = {"id": tid, "parents": list(merged[tid])}
        r = runtime.get(tid)
        if r is not None:
            task["runtime_s"] = r
        used = cores.get(tid)
        if used is not None:
            task["cores"] = used
        out.append(task)
    return out
