"""The edge of fingerprinting: read function sources and input files, then let the pure core
(``conveyor.core.fingerprint``) hash and decide.

``graph_parts(spec)`` computes every task's fingerprint parts in one O(V + E) pass (functions
and files are hashed once each, whatever the number of tasks using them); ``plan`` compares them
with what a store remembers.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from conveyor.core.dag import layout
from conveyor.core.fingerprint import (
    Decision,
    Parts,
    Stored,
    canonical,
    decide_all,
    digest,
    pair_text,
)
from conveyor.errors import GraphError
from conveyor.imports import resolve_callable
from conveyor.model import GraphSpec, TaskSpec
from conveyor.store.base import GraphFingerprints, OpenedGraph, Store


@dataclass
class FileHashes:
    """Content hashes of files with an (mtime, size) shortcut: a file whose mtime and size did
    not change is not read again. ``entries`` is what a store persists between runs."""

    entries: dict[str, tuple[int, int, str]] = field(default_factory=dict)

    def digest(self, path: str) -> str:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return "missing"
        known = self.entries.get(path)
        if known is not None and known[0] == st.st_mtime_ns and known[1] == st.st_size:
            return known[2]
        h = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        d = h.hexdigest()
        self.entries[path] = (st.st_mtime_ns, st.st_size, d)
        return d


class CodeHashes:
    """Code identity of callables: qualified name + source, and the sources of functions of the
    same module that it calls (one pass over names, transitively, each function once)."""

    def __init__(self) -> None:
        self._cache: dict[Any, str] = {}

    def of_spec(self, spec: TaskSpec, fn: Callable[..., Any] | None = None) -> str:
        if spec.version is not None:
            return self._of_data("version", spec.version)
        if spec.cmd is not None:
            return self._of_data("cmd", spec.cmd)
        target = fn if fn is not None else spec.fn
        if target is None:
            return _NOOP
        if isinstance(target, str):
            key: Any = target
            if key in self._cache:
                return self._cache[key]
            d = self.of_callable(resolve_callable(target))
            self._cache[key] = d
            return d
        return self.of_callable(target)

    def _of_data(self, kind: str, value: Any) -> str:
        key = (kind, type(value), tuple(value) if isinstance(value, list) else value)
        d = self._cache.get(key)
        if d is None:
            d = self._cache[key] = digest(canonical((kind, value)))
        return d

    def of_callable(self, fn: Callable[..., Any]) -> str:
        fn = getattr(fn, "__wrapped_task__", fn)
        try:
            return self._cache[fn]
        except (KeyError, TypeError):
            pass
        parts = []
        for f in _same_module_closure(fn):
            name = f"{getattr(f, '__module__', '?')}:{getattr(f, '__qualname__', '?')}"
            try:
                src = inspect.getsource(f)
            except (OSError, TypeError):
                code = getattr(f, "__code__", None)
                src = code.co_code.hex() if code is not None else repr(type(f))
            parts.append((name, src))
        d = digest(canonical(parts))
        try:
            self._cache[fn] = d
        except TypeError:
            pass
        return d


def _same_module_closure(fn: Callable[..., Any]) -> list[Callable[..., Any]]:
    module = getattr(fn, "__module__", None)
    seen: dict[int, Callable[..., Any]] = {}
    stack = [fn]
    while stack:
        f = stack.pop()
        if id(f) in seen:
            continue
        seen[id(f)] = f
        code = getattr(f, "__code__", None)
        glb = getattr(f, "__globals__", None)
        if code is None or glb is None:
            continue
        for name in _names(code):
            g = glb.get(name)
            g = getattr(g, "__wrapped_task__", g)
            if isinstance(g, types.FunctionType) and g.__module__ == module and id(g) not in seen:
                stack.append(g)
    return sorted(seen.values(), key=lambda f: getattr(f, "__qualname__", ""))


def _names(code: types.CodeType) -> set[str]:
    out = set(code.co_names)
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            out |= _names(c)
    return out


_NO_ARGS = digest(canonical(((), {})))
_NOOP = digest(b"noop")


def args_digest(spec: TaskSpec) -> str:
    if not spec.args and not spec.kwargs:
        return _NO_ARGS  # most tasks of big graphs: no canonical encoding, no hashing
    return digest(canonical((spec.args, spec.kwargs)))


def graph_parts(
    spec: GraphSpec,
    *,
    files: FileHashes | None = None,
    functions: Mapping[str, Callable[..., Any]] | None = None,
) -> dict[str, Parts]:
    """Fingerprint parts of every task, parents before children."""
    files = files if files is not None else FileHashes()
    code = CodeHashes()
    tasks = spec.tasks
    lay = spec.layout
    if lay is None or len(lay.depth) != len(tasks):
        lay = layout([t.id for t in tasks], [t.deps for t in tasks])
    order = sorted(range(len(tasks)), key=lay.depth.__getitem__)
    out: dict[str, Parts] = {}
    fps: dict[str, str] = {}
    texts: dict[str, str] = {}  # each task's pair_text, for its children
    fns = functions or {}
    make = Parts.make
    # Tasks with neither parents nor input files have the parts of their code and arguments
    # alone: tasks alike (10,000 calls of one function) share one ``Parts``.
    alone: dict[tuple[str, str], Parts] = {}
    for i in order:
        t = tasks[i]
        try:
            c = code.of_spec(t, fns.get(t.id))
        except GraphError as exc:
            raise GraphError(f"task {t.id!r}: {exc}") from None
        try:
            a = args_digest(t)
        except GraphError:
            # Not plain data: no stable digest, so the task counts as changed every time.
            a = "volatile:" + os.urandom(8).hex()
        if not t.inputs and not t.deps:
            shared = alone.get((c, a))
            if shared is None:
                shared = alone[c, a] = make(c, a)
            p = shared
        else:
            ins = [(p, files.digest(p)) for p in t.inputs] if t.inputs else ()
            deps = sorted(t.deps)
            p = make(c, a, ins, list(zip(deps, map(fps.__getitem__, deps), strict=True)),
                     list(map(texts.__getitem__, deps)))  # fmt: skip
        out[t.id] = p
        fps[t.id] = fp = p.fingerprint
        texts[t.id] = pair_text(t.id, fp)
    return out


def missing_outputs(spec: TaskSpec) -> tuple[str, ...]:
    return tuple(p for p in spec.outputs if not os.path.exists(p))


def missing_of(spec: GraphSpec) -> dict[str, tuple[str, ...]]:
    """Declared outputs not on disk, by task id (tasks with none missing are left out)."""
    out = {}
    for t in spec.tasks:
        if t.outputs:
            miss = missing_outputs(t)
            if miss:
                out[t.id] = miss
    return out


def fingerprints_for(
    store: Store, graph: GraphSpec, functions: Mapping[str, Callable[..., Any]] | None = None
) -> GraphFingerprints:
    """What a store needs to resume ``graph`` incrementally: every task's fingerprint parts
    (input files whose mtime and size the store remembers unchanged are not read again) and
    the declared outputs missing on disk. Reads sources and files; the store does neither."""
    known = store.file_hashes()
    files = FileHashes(dict(known))
    parts = graph_parts(graph, files=files, functions=functions)
    return GraphFingerprints(parts, files.entries, missing_of(graph))


def open_graph(
    store: Store, graph: GraphSpec, now: float, *, replace: bool = False, fingerprints: bool = True
) -> OpenedGraph:
    """Submit ``graph`` to ``store``, or resume it: with ``fingerprints`` a durable store also
    runs again what changed and its downstream (an in-process store has nothing to resume, so
    nothing is computed for it)."""
    fps = fingerprints_for(store, graph) if fingerprints and store.shared else None
    return store.open_graph(graph, now, replace=replace, fingerprints=fps)


def plan_graph(store: Store, graph: GraphSpec) -> list[Decision]:
    """What ``open_graph`` of ``graph`` would run again and why; changes nothing."""
    return store.plan_graph(graph, fingerprints_for(store, graph))


def plan(
    spec: GraphSpec,
    stored: Mapping[str, Stored],
    *,
    files: FileHashes | None = None,
    functions: Mapping[str, Callable[..., Any]] | None = None,
) -> tuple[list[Decision], dict[str, Parts]]:
    """What would run and why, per task, in graph order; and the new fingerprint parts."""
    parts = graph_parts(spec, files=files, functions=functions)
    return decide_all(spec.tasks, parts, stored, missing_of(spec)), parts
