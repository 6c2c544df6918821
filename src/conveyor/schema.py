"""The graph-file schema: every field a graph, a group and a task may have, with its type and
range, as msgspec structs. The one definition of those fields: graph files are decoded against
it, graph dicts converted to it, ``TaskSpec``s built in Python checked with it
(``check_task``), and the CLI's numeric options checked with its number types
(``check_value``). ``explain`` turns a msgspec error into one line that names the task (its id)
and the field. Pure: no I/O.

(No ``from __future__ import annotations`` here: the structs' annotations are objects when the
classes are made, so that reading their types at import compiles no annotation strings.)
"""

import functools
import re
import sys
import types
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from conveyor.model import PYTHON_ONLY

#: Counts (retries, gang sizes, group caps): a larger one is a typo, and it stays far inside
#: the SQL stores' integer columns.
MAX_COUNT = 1_000_000
#: Seconds (task timeouts, leases): the engine's waits end in ``poll()`` and condition waits,
#: which refuse more than 2**31 - 1 ms (~24.8 days) with an ``OverflowError``.
MAX_SECONDS = 2_000_000
#: Resource amounts and group weights: exact in a float (stores compare them as doubles).
MAX_AMOUNT = 2**53
#: Traced runtimes (``runtime_s``, ``cores``): informational, any finite number >= 0.
MAX_FINITE = sys.float_info.max

NonEmpty = Annotated[str, Meta(min_length=1)]
Count = Annotated[int, Meta(ge=0, le=MAX_COUNT)]
PositiveCount = Annotated[int, Meta(ge=1, le=MAX_COUNT)]
#: A number of seconds > 0 (int or float, kept as given).
Seconds = Union[  # noqa: UP007 (msgspec reads the annotation at run time)
    Annotated[int, Meta(gt=0, le=MAX_SECONDS)], Annotated[float, Meta(gt=0, le=MAX_SECONDS)]
]
#: A lease, at least ``MIN_LEASE_S``: a heartbeat renews it every third of it, and a shorter
#: one runs out while a busy store makes the renewal wait (tasks lost for nothing).
MIN_LEASE_S = 0.1
LeaseSeconds = Union[  # noqa: UP007
    Annotated[int, Meta(ge=1, le=MAX_SECONDS)],
    Annotated[float, Meta(ge=MIN_LEASE_S, le=MAX_SECONDS)],
]
#: An amount >= 0 of a resource.
Amount = Union[  # noqa: UP007
    Annotated[int, Meta(ge=0, le=MAX_AMOUNT)], Annotated[float, Meta(ge=0, le=MAX_AMOUNT)]
]
#: A group weight > 0.
Weight = Union[  # noqa: UP007
    Annotated[int, Meta(gt=0, le=MAX_AMOUNT)], Annotated[float, Meta(gt=0, le=MAX_AMOUNT)]
]
#: A wait in seconds >= 0 (``--idle-exit``).
Wait = Union[  # noqa: UP007
    Annotated[int, Meta(ge=0, le=MAX_SECONDS)], Annotated[float, Meta(ge=0, le=MAX_SECONDS)]
]
#: A finite number >= 0.
NonNegative = Union[  # noqa: UP007
    Annotated[int, Meta(ge=0)], Annotated[float, Meta(ge=0, le=MAX_FINITE)]
]
#: A label a task asks for: a value (equals), or ``{"op": value}`` constraints whose operators
#: ``core.constraints.parse_constraints`` checks.
LabelSpec = Union[str, int, float, bool, dict[str, Any]]  # noqa: UP007
#: A priority band: a name or a number (``core/ordering.py``: lower runs first).
BAND_NAMES = ("interactive", "batch", "best_effort")
Band = Union[  # noqa: UP007
    Annotated[str, Meta(pattern=f"^({'|'.join(BAND_NAMES)})$")], Annotated[int, Meta(ge=0, le=99)]
]
#: A borrow policy: ``strict``, ``work_conserving``, ``bounded``, ``bounded:N`` (slots) or
#: ``bounded:P%`` (of all slots); its grammar is ``core/borrow.py``'s (checked by the loaders).
Borrow = NonEmpty
Ids = tuple[NonEmpty, ...]
Paths = tuple[NonEmpty, ...]


class TaskFields(Struct, forbid_unknown_fields=True):
    """A task in a graph file (README.md, "Command line"; ``model.TaskSpec`` field by field,
    plus ``parents`` for ``deps`` and the WfCommons ``cores``)."""

    id: NonEmpty
    fn: NonEmpty | None = None  # an import path "pkg.mod:func"
    cmd: NonEmpty | Annotated[list[str], Meta(min_length=1)] | None = None
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    deps: Ids | None = None
    parents: Ids | None = None  # WfCommons' name for deps
    group: NonEmpty = "default"
    labels: dict[NonEmpty, LabelSpec] = {}
    resources: dict[NonEmpty, Amount] = {}
    retries: Count = 0
    timeout_s: Seconds | None = None
    gang: NonEmpty | None = None
    gang_size: PositiveCount | None = None
    endpoint: NonEmpty | None = None
    cache: bool = True
    version: NonEmpty | int | None = None
    inputs: Paths = ()
    outputs: Paths = ()
    runtime_s: NonNegative | None = None
    cores: NonNegative | None = None  # what a traced task used: informational, not a request
    executor: Literal["inline", "thread", "process"] | None = None
    env: dict[NonEmpty, str] | None = None
    cwd: NonEmpty | None = None
    meta: dict[str, Any] | None = None
    expected_s: Seconds | None = None  # a worker near its end does not start what cannot finish
    band: Band | None = None  # None: the graph's band (default batch)


class GroupFields(Struct, forbid_unknown_fields=True):
    """A group of ``"groups"``: its fair-share weight and its cap on running tasks."""

    weight: Weight = 1.0
    cap: PositiveCount | None = None
    borrow: Borrow | None = None  # None: the graph's policy


class GraphFields(Struct, forbid_unknown_fields=True):
    """A graph file. The optional keys are ``UNSET`` when absent (``meta`` keeps what was
    given)."""

    tasks: list[TaskFields]
    name: NonEmpty | UnsetType = UNSET
    groups: dict[NonEmpty, GroupFields] | UnsetType = UNSET
    band: Band | UnsetType = UNSET  # the band of every task that names none
    borrow: Borrow | UnsetType = UNSET  # how far a group may borrow beyond its fair share
    description: str | UnsetType = UNSET
    source: str | UnsetType = UNSET
    family: str | UnsetType = UNSET
    meta: dict[str, Any] | UnsetType = UNSET


#: The task fields of a structure-only task (a no-op: an id, parents, a traced runtime).
STRUCTURE_FIELDS = ("id", "deps", "parents", "runtime_s", "cores")


def _substruct(name: str, base: type[Struct], keep: Any, **options: Any) -> Any:
    """A struct of some of ``base``'s fields, with their types and defaults (so that the
    rules stay in ``base``); ``options`` are ``msgspec.defstruct``'s."""
    hints = _TASK_HINTS if base is TaskFields else get_type_hints(base, include_extras=True)
    fields: list[Any] = []
    for f in _TASK_FIELDS if base is TaskFields else msgspec.structs.fields(base):
        if not keep(f.name):
            continue
        if f.default is not msgspec.NODEFAULT:
            fields.append((f.name, hints[f.name], f.default))
        elif f.default_factory is not msgspec.NODEFAULT:
            default = msgspec.field(default_factory=f.default_factory)
            fields.append((f.name, hints[f.name], default))
        else:
            fields.append((f.name, hints[f.name]))
    return msgspec.defstruct(name, fields, forbid_unknown_fields=True, **options)


_TASK_HINTS = get_type_hints(TaskFields, include_extras=True)
_TASK_FIELDS = msgspec.structs.fields(TaskFields)

#: A structure-only task and graph: most large files are such graphs (a fifth of the fields to
#: fill); any other key makes the caller decode with ``GraphFields``. Not tracked by the
#: cyclic GC (``gc=False``: strings, numbers and tuples of strings hold no cycle), so no
#: collection walks a large file's decoded tasks.
BareTask: Any = _substruct("BareTask", TaskFields, lambda n: n in STRUCTURE_FIELDS, gc=False)
#: The plainest of them, decoded first: ids and ``deps`` alone (a graph whose tasks name
#: ``parents``, ``runtime_s`` or ``cores`` is then decoded as a ``BareGraph``).
IdTask: Any = _substruct("IdTask", TaskFields, lambda n: n in ("id", "deps"), gc=False)
_GRAPH_REST = [(n, t, UNSET) for n, t in get_type_hints(GraphFields, include_extras=True).items()
               if n != "tasks"]  # fmt: skip
BareGraph: Any = msgspec.defstruct(
    "BareGraph", [("tasks", list[BareTask]), *_GRAPH_REST], forbid_unknown_fields=True, gc=False
)
IdGraph: Any = msgspec.defstruct(
    "IdGraph", [("tasks", list[IdTask]), *_GRAPH_REST], forbid_unknown_fields=True, gc=False
)
#: What an ``IdGraph`` refuses that a ``BareGraph`` takes.
TRACED_FIELDS = frozenset(STRUCTURE_FIELDS) - {"id", "deps"}

TASK_KEYS = frozenset(f.name for f in _TASK_FIELDS)
GRAPH_KEYS = frozenset(f.name for f in msgspec.structs.fields(GraphFields))


# -- one line per error ----------------------------------------------------------------------
_STEP = re.compile(r"\.([A-Za-z_]\w*)|\[(\d+|\.\.\.)\]")
_TICKS = re.compile(r"`([^`]*)`")


def explain(exc: msgspec.ValidationError, raw: Any, root: str = "$") -> str:
    """msgspec's ``Expected `int` >= 0 - at `$.tasks[3].retries``` as ``task 'b', field
    'retries': expected int >= 0, got -1``, with the task's id and the bad value read from
    ``raw`` (the undecoded graph). ``root``: the path in ``raw`` of what was converted."""
    text, _, where = str(exc).partition(" - at `")
    where = where.replace("$", root, 1)
    steps = [(m[1] or m[2]) for m in _STEP.finditer(where.rstrip("`"))]
    what = _TICKS.sub(r"\1", text)
    what = what[:1].lower() + what[1:]
    what = re.sub(r"^object (?:contains )?(unknown|missing required) field (\S+)",
                  r"\1 field '\2'", what)  # fmt: skip
    if where.startswith("key`"):
        what = f"a key: {what}"
    if not steps:
        if what.startswith("expected object"):
            got = what.removeprefix("expected object, ")
            return f"a graph file must hold an object with a 'tasks' list, {got}"
        return f"graph: {what}"
    node, who, field = raw, "graph", ""
    schema: Any = GraphFields
    hints: dict[str, Any] = {}
    for i, step in enumerate(steps):
        if node is _MISSING:
            break
        if step == "...":  # a key of a mapping: find the first entry that does not convert
            key = _bad_key(node, _value_type(schema))
            if who == "groups" and i == 1:
                who = f"group {key!r}"
            else:
                field += f".{key}"
            node = node.get(key, _MISSING) if isinstance(node, Mapping) else _MISSING
            schema = _value_type(schema)
            continue
        if step.isdigit():
            pos = int(step)
            node = node[pos] if isinstance(node, list) and pos < len(node) else _MISSING
            if who == "tasks" and i == 1:
                tid = node.get("id") if isinstance(node, Mapping) else None
                who = f"task {tid!r}" if isinstance(tid, str) and tid else f"task #{pos + 1}"
            else:
                field += f"[{pos}]"
            schema = _item_type(schema)
            continue
        hints = _hints(schema)
        schema = hints.get(step, Any)
        node = node.get(step, _MISSING) if isinstance(node, Mapping) else _MISSING
        if i == 0 and step in ("tasks", "groups") and len(steps) > 1:
            who = step
        elif not field:
            field = step
        else:
            field += f".{step}"
    what = _plain(what, schema)
    shown = ""
    if node is not _MISSING and "got" not in what and "field" not in what:
        value = repr(node)
        shown = f", got {value if len(value) <= 60 else value[:57] + '...'}"
    if field:
        return f"{who}, field '{field}': {what}{shown}"
    return f"{who}: {what}{shown}"


_MISSING: Any = object()


def _plain(what: str, schema: Any) -> str:
    """msgspec's words for a choice (an enum, the band's regex) as the values a user may give."""
    if what.startswith("invalid enum value") and get_origin(_strip(schema)) is Literal:
        return f"expected one of {', '.join(map(str, get_args(_strip(schema))))}"
    if set(get_args(Band)) <= set(get_args(schema)):  # ``Band | None``: one flat union
        return f"expected {', '.join(BAND_NAMES)} or a number 0-99"
    return what


def _hints(schema: Any) -> dict[str, Any]:
    schema = _strip(schema)
    if isinstance(schema, type) and issubclass(schema, Struct):
        return get_type_hints(schema, include_extras=True)
    return {}


def _strip(tp: Any) -> Any:
    """``tp`` without ``Annotated``, ``None`` and ``UNSET`` around it."""
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    if get_origin(tp) in (Union, types.UnionType):
        rest = [a for a in get_args(tp) if a not in (type(None), UnsetType)]
        if len(rest) == 1:
            return _strip(rest[0])
    return tp


def _value_type(tp: Any) -> Any:
    tp = _strip(tp)
    return get_args(tp)[1] if get_origin(tp) is dict else Any


def _item_type(tp: Any) -> Any:
    tp = _strip(tp)
    args = get_args(tp)
    return args[0] if get_origin(tp) in (list, tuple) and args else Any


def _bad_key(node: Any, value_type: Any) -> Any:
    """The first key of ``node`` whose value (or the key itself) does not convert."""
    if not isinstance(node, Mapping):
        return "?"
    for key, value in node.items():
        try:
            msgspec.convert({key: value}, dict[NonEmpty, value_type])
        except msgspec.ValidationError:
            return key
    return "?"


# -- Python-built tasks and CLI options ------------------------------------------------------
def check_task(fields: dict[str, Any]) -> str | None:
    """The first error of a task built in Python (its set fields but ``fn``, ``args`` and
    ``kwargs``), or ``None``."""
    try:
        msgspec.convert(fields, _python_task())
    except msgspec.ValidationError as exc:
        return explain(exc, {"tasks": [fields]}, root="$.tasks[0]")
    return None


@functools.cache
def _python_task() -> Any:
    """A task built in Python (``fn``, ``args``, ``kwargs`` are checked by ``model.TaskSpec``):
    made when first needed (graph files never need it)."""
    return _substruct("PythonTask", TaskFields, lambda n: n not in PYTHON_ONLY)


def check_group(name: str, weight: Any, cap: Any, borrow: Any = None) -> str | None:
    """The error of a group's fields, or ``None``."""
    group = {"weight": weight, "cap": cap, "borrow": borrow}
    try:
        msgspec.convert(group, GroupFields)
    except msgspec.ValidationError as exc:
        return explain(exc, {"groups": {name: group}}, root="$.groups[...]")
    return None


def checked(value: Any, kind: str, name: str) -> Any:
    """``value`` if it is a ``kind`` of this module (``"Seconds"``, ``"LeaseSeconds"`` ...),
    else a ``UsageError`` naming ``name`` (a CLI option or an API argument)."""
    from conveyor.errors import UsageError

    error = check_value(value, globals()[kind])
    if error is not None:
        raise UsageError(f"{name}: {error}, got {value!r}")
    return value


def check_value(value: Any, kind: Any) -> str | None:
    """Why ``value`` is not a ``kind`` (``Seconds``, ``Amount``, ...), or ``None``."""
    try:
        msgspec.convert(value, kind)
    except msgspec.ValidationError as exc:
        return _TICKS.sub(r"\1", str(exc).partition(" - at `")[0]).lower()
    return None
