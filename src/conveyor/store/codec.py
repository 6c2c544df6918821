"""How task specs and results become bytes in a durable store, and back. Pure but for files.

Specs are JSON: functions travel as import paths (``"pkg.mod:func"``), ``TaskRef`` arguments
as ``{"__ref__": id}``; arguments that are not plain JSON are pickled (base64 in the JSON).
Results are JSON when the value is plain JSON (so nothing is silently turned from a tuple into
a list), else pickle; ``results="json"`` refuses anything else, ``results="pickle"`` always
pickles. Results larger than ``inline_max`` bytes go to a file in ``results_dir`` and the row
keeps the file name.

A store may come from someone else, so reading one must not run code or reach other files:
only ``ResultCodec.decode`` and ``decode_spec`` unpickle, and only a process that runs the
graph's own functions calls them (a worker claiming a task, a run asking for its results;
read-only commands never ask for values or specs); a file name in a row is one plain name inside
``results_dir`` (``result_path``). Result files are created ``0600`` in a ``0700`` directory.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conveyor.errors import ConveyorError, GraphError, ResultError, StoreCorruptError
from conveyor.imports import import_path
from conveyor.model import TaskRef, TaskSpec

_FIELDS = [f for f in dataclasses.fields(TaskSpec) if f.name not in ("id", "fn", "args", "kwargs")]


#: ``json.dumps(x, separators=(",", ":"))`` (and with ``default=str``) without making an
#: encoder per call: a large submission encodes a spec per task.
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":")).encode
_SPEC_JSON = json.JSONEncoder(separators=(",", ":"), default=str).encode


def _default(f: dataclasses.Field[Any]) -> Any:
    factory = f.default_factory
    return f.default if factory is dataclasses.MISSING else factory()


_DEFAULTS = {f.name: _default(f) for f in _FIELDS}
_NAMES = tuple(f.name for f in _FIELDS)  # in field order: the order of a spec's keys
#: Fields ``encode_spec`` writes before the others (``TaskSpec``'s slots hold id and deps).
_FIRST = frozenset({"fn", "args", "kwargs"})
_ALL_DEFAULTS = {f.name: _default(f) for f in dataclasses.fields(TaskSpec)}
_NOT_A_FIELD = object()  # an attribute set on a spec that is none of its fields: not stored
_TUPLES = frozenset({"deps", "inputs", "outputs"})
RESULT_MODES = ("auto", "json", "pickle")
#: The spec key that marks a task submitted at run time, with the id of the task that did.
SUBMITTED_BY = "submitted_by"
#: Result files and their directory are private: a result may hold secrets.
FILE_MODE, DIR_MODE = 0o600, 0o700


# -- specs -----------------------------------------------------------------------------------
def fn_path(spec: TaskSpec) -> str | None:
    """The import path stored for ``spec.fn``; callables that cannot be imported back keep a
    ``__main__``-style path that only the submitting process (``Engine.functions``) resolves."""
    fn = spec.fn
    if fn is None or isinstance(fn, str):
        return fn
    fn = getattr(fn, "__wrapped_task__", fn)
    path = import_path(fn)
    if path is not None:
        return path
    return f"{getattr(fn, '__module__', None) or '__main__'}:{getattr(fn, '__qualname__', 'fn')}"


def _is_plain(v: Any) -> bool:
    """JSON that decodes back to an equal value of the same types. (Loops, not ``all()`` of a
    generator: one frame per level of nesting, as deep as a graph file may nest.)"""
    t = type(v)
    if v is None or t is bool or t is int or t is str:
        return True
    if t is float:
        return v == v and v not in (float("inf"), float("-inf"))
    if t is list:
        for x in v:  # noqa: SIM110 (all() of a generator: two frames per level)
            if not _is_plain(x):
                return False
        return True
    if t is dict:
        for k, x in v.items():  # noqa: SIM110
            if type(k) is not str or not _is_plain(x):
                return False
        return True
    return False


def _refs_out(v: Any) -> Any:
    """``v`` with each ``TaskRef`` as ``{"__ref__": id}`` (one frame per level, as above)."""
    if isinstance(v, TaskRef):
        return {"__ref__": v.id}
    if type(v) is list:
        out = []
        for x in v:
            out.append(_refs_out(x))
        return out
    if type(v) is dict:
        d = {}
        for k, x in v.items():
            d[k] = _refs_out(x)
        return d
    return v


def _refs_in(v: Any) -> Any:
    """``_refs_out`` undone."""
    if type(v) is dict:
        if len(v) == 1 and "__ref__" in v:
            return TaskRef(v["__ref__"])
        d = {}
        for k, x in v.items():
            d[k] = _refs_in(x)
        return d
    if type(v) is list:
        out = []
        for x in v:
            out.append(_refs_in(x))
        return out
    return v


def encode_spec(spec: TaskSpec, submitted_by: str | None = None) -> str:
    """JSON of the fields that differ from their defaults; ``submitted_by`` marks a task
    submitted at run time by that task (not one of the graph file's)."""
    fn = fn_path(spec)
    # A TaskSpec holds the fields set to a value in its __dict__ (and deps in a slot): a task
    # whose fields are all at their defaults but fn (most of a big graph's) is quickly told.
    own = spec.__dict__ if type(spec) is TaskSpec else None
    if own is not None and submitted_by is None and not spec.deps:
        for name, v in own.items():
            if name != "fn" and v != _ALL_DEFAULTS.get(name, _NOT_A_FIELD):
                break
        else:
            return _fn_only(fn)
    # Arguments nested a few hundred levels deep (a graph file allows ~1,000) exceed what the
    # checks and encoders below recurse through: one line about the task, not a traceback.
    try:
        d: dict[str, Any] = {} if submitted_by is None else {SUBMITTED_BY: submitted_by}
        if fn is not None:
            d["fn"] = fn
        if spec.args or spec.kwargs:
            args, kwargs = list(spec.args), dict(spec.kwargs)
            a, k = _refs_out(args), _refs_out(kwargs)
            if _is_plain(a) and _is_plain(k):
                if a:
                    d["args"] = a
                if k:
                    d["kwargs"] = k
            else:
                blob = pickle.dumps((spec.args, spec.kwargs), protocol=pickle.HIGHEST_PROTOCOL)
                d["args_pickle"] = base64.b64encode(blob).decode("ascii")
        if own is None or (own.keys() - _FIRST) or spec.deps:
            for name in _NAMES:
                if own is not None and name != "deps" and name not in own:
                    continue
                v = getattr(spec, name)
                if v != _DEFAULTS[name]:
                    d[name] = list(v) if name in _TUPLES else v
        return to_json(d)
    except RecursionError:
        raise GraphError(
            f"task {spec.id!r}: its arguments are nested too deeply to be stored"
        ) from None


@functools.cache
def _fast_json() -> Callable[[Any], bytes]:
    """msgspec's JSON encoder: the same JSON values as the stdlib's ~20x faster, for values
    that are plain JSON (it writes NaN as null and encodes dates, sets and dataclasses its own
    way, where ``default=str`` stringifies them). Imported when first needed: a worker that
    only decodes specs need not load it."""
    import msgspec

    return msgspec.json.Encoder().encode


def plain_json(value: Any) -> str:
    """Compact JSON of plain data (``_is_plain``, tuples as arrays too: the caller checked)."""
    try:
        return _fast_json()(value).decode()
    except ValueError:  # a lone surrogate: UTF-8 has none; the stdlib escapes it
        return _COMPACT_JSON(value)


@functools.lru_cache(maxsize=256)
def _fn_only(fn: str | None) -> str:
    """The spec of a task whose fields are all at their defaults but ``fn``."""
    return to_json({} if fn is None else {"fn": fn})


def to_json(d: dict[str, Any]) -> str:
    """Compact JSON of ``d``, non-JSON values as ``str(value)`` (``_SPEC_JSON``): by msgspec
    when ``d`` is plain JSON, else by the stdlib. Equal values either way (not always equal
    bytes: msgspec writes non-ASCII characters unescaped and ``1e-05`` as ``0.00001``)."""
    if _is_plain(d):
        return plain_json(d)
    return _SPEC_JSON(d)


def encode_bare_spec(spec: TaskSpec) -> str:
    """``encode_spec`` of a task that has only an id, parents and maybe ``runtime_s`` (every
    task of a graph loaded ``structure_only``), without looking at every field."""
    d: dict[str, Any] = {}
    deps = spec.deps
    if deps:
        d["deps"] = list(deps)
    runtime = spec.runtime_s
    if runtime is not None:
        d["runtime_s"] = runtime
    # Ids are strings: told by one pass in C, not ``_is_plain``'s call per parent.
    if (runtime is None or _is_plain(runtime)) and set(map(type, deps)) <= {str}:
        return plain_json(d)
    return to_json(d)


#: Specs up to this long are looked up in ``_scalar_fields``'s cache first.
_SCALAR_MAX = 512
_SCALAR = (str, int, float, bool, type(None))


@functools.lru_cache(maxsize=256)
def _scalar_fields(text: str) -> dict[str, Any] | None:
    """The fields of a stored spec whose every value is a scalar (``{"fn": "mod:fn"}``, a
    group, retries ...: the spec many tasks of a graph share, decoded once), else ``None``
    (containers are decoded afresh for each task: a task may change its own). Not to be
    changed by the caller."""
    d = json.loads(text)
    if type(d) is not dict or SUBMITTED_BY in d or "args_pickle" in d:
        return None
    if not all(type(v) in _SCALAR for v in d.values()):
        return None
    return d


def stored_spec(text: str | None) -> dict[str, Any]:
    """A stored spec's JSON as shown: pickled arguments are never decoded (a store may come
    from someone else), only said to be there."""
    d: dict[str, Any] = json.loads(text) if text else {}
    if d.pop("args_pickle", None) is not None:
        d["args"] = "(pickled, not shown)"
    return d


def decode_spec(task_id: str, text: str) -> TaskSpec:
    # (a spec with no bracket but its own braces holds no container: worth looking up)
    flat = len(text) <= _SCALAR_MAX and "[" not in text and text.count("{") == 1
    fields = _scalar_fields(text) if flat else None
    if fields is not None:
        # (``TaskSpec`` keeps a scalar as it is given: one decoded value serves every task)
        return TaskSpec(task_id, **fields)
    d = json.loads(text)
    d.pop(SUBMITTED_BY, None)
    if "args_pickle" in d:
        args, kwargs = pickle.loads(base64.b64decode(d.pop("args_pickle")))
    else:
        # (most specs have neither: a claim decodes one per task)
        args = tuple(_refs_in(d.pop("args"))) if "args" in d else ()
        kwargs = _refs_in(d.pop("kwargs")) if "kwargs" in d else {}
    for name in _TUPLES:
        if name in d:
            d[name] = tuple(d[name])
    return TaskSpec(id=task_id, args=tuple(args), kwargs=kwargs, **d)


# -- results ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, slots=True)
class ResultCodec:
    """Turns a task's value into ``(kind, bytes)`` for the ``result`` column, and back."""

    mode: str = "auto"  # auto | json | pickle
    inline_max: int = 1 << 20  # bytes kept in the row; larger results go to results_dir
    results_dir: str | None = None

    def encode(self, value: Any, name: str) -> tuple[str | None, bytes | None]:
        if value is None:
            return None, None
        if self.mode != "pickle" and _is_plain(value):
            kind, data = "json", _COMPACT_JSON(value).encode()
        elif self.mode == "json":
            raise ResultError(
                f"result of type {type(value).__name__} is not JSON; "
                "open the store with ?results=pickle to store it"
            )
        else:
            try:
                data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                raise ResultError(f"result cannot be pickled: {exc}") from None
            kind = "pickle"
        if self.results_dir is not None and len(data) > self.inline_max:
            d = Path(self.results_dir)
            d.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            fname = f"{name}.{kind}"
            tmp = d / (fname + f".tmp{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
            with open(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, d / fname)  # atomic: a reader never sees half a file
            return "file:" + kind, fname.encode()
        return kind, data

    def result_path(self, data: bytes) -> Path:
        """The file a ``file:`` row names: one plain name inside ``results_dir``, never a path
        that leads elsewhere (``/etc/passwd``, ``../x``, a symlink out)."""
        if self.results_dir is None:
            raise ConveyorError("the result is stored in a file but no results_dir is set")
        name = data.decode("utf-8", "replace")
        root = Path(self.results_dir).resolve()
        path = (root / name).resolve()
        if name in ("", ".", "..") or "/" in name or "\\" in name or path.parent != root:
            raise StoreCorruptError(
                f"a result row names the file {name!r}, outside the store's results directory "
                f"{str(root)!r}: refused"
            )
        return path

    def decode(self, kind: str | None, data: bytes | memoryview | None) -> Any:
        if kind is None or data is None:
            return None
        raw = bytes(data)
        if kind.startswith("file:"):
            kind = kind[5:]
            raw = self.result_path(raw).read_bytes()
        if kind == "json":
            return json.loads(raw)
        return pickle.loads(raw)

    def discard(self, kind: str | None, data: bytes | None) -> None:
        """Remove the file of a result whose completion the store refused."""
        if kind and kind.startswith("file:") and data and self.results_dir:
            try:
                self.result_path(data).unlink()
            except (OSError, StoreCorruptError):
                pass
