"""Fingerprints: a stable hash of what a task's result depends on, and the incremental plan.

A task's fingerprint hashes its code identity, its canonicalised arguments, the content hashes of
the files it declares as inputs, and its parents' fingerprints (a Merkle chain): a change
anywhere upstream changes every fingerprint below it, so invalidation follows the chain without
a scan of the store. Pure: the edge (``conveyor.fingerprints``) reads sources and files.

The canonical encoding never uses ``hash()``, dict or set iteration order, or ``repr`` of
objects whose repr holds an address, so it is the same across processes and Python runs.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain
from typing import Any

from conveyor.errors import GraphError

_SEP = b"\x1f"


def canonical(obj: Any) -> bytes:
    """A deterministic, type-tagged byte encoding of plain data."""
    out: list[bytes] = []
    _encode(obj, out)
    return b"".join(out)


def _encode(obj: Any, out: list[bytes]) -> None:
    if obj is None:
        out.append(b"N")
    elif obj is True or obj is False:
        out.append(b"T" if obj else b"F")
    elif isinstance(obj, enum.Enum):
        out.append(b"E" + type(obj).__qualname__.encode() + _SEP)
        _encode(obj.value, out)
    elif isinstance(obj, int):
        out.append(b"i" + str(obj).encode() + _SEP)
    elif isinstance(obj, float):
        if math.isnan(obj):
            out.append(b"fnan" + _SEP)
        else:
            out.append(b"f" + struct.pack(">d", obj))
    elif isinstance(obj, str):
        b = obj.encode("utf-8")
        out.append(b"s" + str(len(b)).encode() + _SEP + b)
    elif isinstance(obj, bytes | bytearray):
        out.append(b"b" + str(len(obj)).encode() + _SEP + bytes(obj))
    elif isinstance(obj, list | tuple):
        out.append((b"l" if isinstance(obj, list) else b"t") + str(len(obj)).encode() + _SEP)
        for x in obj:
            _encode(x, out)
    elif isinstance(obj, Mapping):
        items = sorted((canonical(k), v) for k, v in obj.items())
        out.append(b"d" + str(len(items)).encode() + _SEP)
        for k, v in items:
            out.append(k)
            _encode(v, out)
    elif isinstance(obj, set | frozenset):
        parts = sorted(canonical(x) for x in obj)
        out.append(b"S" + str(len(parts)).encode() + _SEP)
        out.extend(parts)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out.append(b"D" + type(obj).__qualname__.encode() + _SEP)
        _encode({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}, out)
    elif hasattr(obj, "__fspath__"):
        out.append(b"p")
        _encode(str(obj.__fspath__()), out)
    elif hasattr(obj, "id") and type(obj).__name__ == "TaskRef":
        out.append(b"R")
        _encode(obj.id, out)
    else:
        raise GraphError(
            f"cannot fingerprint a {type(obj).__name__}: use plain data (str, int, float, list, "
            "dict, ...), give the task a 'version', or set cache=False"
        )


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class Parts:
    """What a fingerprint is made of, kept so a plan can say *what* changed."""

    code: str  # digest of the code identity (or the declared version / the command)
    args: str  # digest of the canonical arguments
    inputs: tuple[tuple[str, str], ...] = ()  # (path, content digest) of declared input files
    parents: tuple[tuple[str, str], ...] = ()  # (parent id, parent fingerprint)
    fingerprint: str = ""

    @classmethod
    def make(
        cls,
        code: str,
        args: str,
        inputs: Sequence[tuple[str, str]] = (),
        parents: Sequence[tuple[str, str]] = (),
        parent_texts: Sequence[str] | None = None,
    ) -> Parts:
        """``parent_texts``: each parent's ``pair_text``, made once per parent rather than
        once per edge (a graph's fingerprints, ``graph_parts``); ``parents`` are then given
        sorted, in their order."""
        ins = tuple(sorted(inputs))
        ps = tuple(parents) if parent_texts is not None else tuple(sorted(parents))
        try:  # the same bytes as canonical(...), built directly: ~10x faster for big graphs
            data = _head(code, args) + _pairs(ins) + _pairs(ps, parent_texts)
        except (AttributeError, TypeError, ValueError):
            data = canonical(("conveyor-fp-1", code, args, ins, ps))
        fp = digest(data)
        return cls(code, args, ins, ps, fp)


def pair_text(a: str, b: str) -> str:
    """A pair of strings (a parent's id and fingerprint, an input's path and digest) as it
    enters fingerprint data: ``canonical((a, b))`` when ASCII (``_pairs`` checks)."""
    return f"t2\x1fs{len(a)}\x1f{a}s{len(b)}\x1f{b}"


def _str(x: str) -> bytes:
    b = x.encode("utf-8")
    return b"s%d\x1f%b" % (len(b), b)


def _pairs(pairs: tuple[tuple[str, str], ...], texts: Sequence[str] | None = None) -> bytes:
    """``texts``: the pairs' ``pair_text``, made of strings by the caller (task ids are)."""
    if not pairs:
        return b"t0\x1f"
    # Fast path: ASCII strings (ids, paths, hex digests) whose character counts are byte counts.
    if texts is not None:
        text = "".join(texts)
        ascii_ = text.isascii()
    else:
        text = "".join([pair_text(a, b) for a, b in pairs])
        # str.join refuses anything but str (in C: cheaper than a type check per item).
        ascii_ = text.isascii() and "".join(chain.from_iterable(pairs)).isascii()
    if ascii_:
        return b"t%d\x1f" % len(pairs) + text.encode()
    out = [b"t%d\x1f" % len(pairs)]
    for pair in pairs:
        a, b = pair  # ValueError for anything but a pair
        if type(pair) is not tuple or type(a) is not str or type(b) is not str:
            raise TypeError
        out.append(b"t2\x1f" + _str(a) + _str(b))
    return b"".join(out)


@lru_cache(maxsize=4096)
def _head(code: str, args: str) -> bytes:
    """The data every fingerprint of this code and these arguments starts with (most tasks
    of a big graph share one)."""
    return _FP_HEAD + _str(code) + _str(args)


_FP_HEAD = b"t5\x1f" + _str("conveyor-fp-1")


@dataclass(frozen=True, slots=True)
class Stored:
    """What the store remembers of a task's last run."""

    state: str  # state label: done, failed, pending ...
    parts: Parts | None  # None: ran without fingerprints (or never ran)
    outputs_missing: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    task: str
    action: str  # "run" or "reuse" ("remove": a stored task the graph no longer has)
    reason: str  # new, code_changed, args_changed, input_file_changed, upstream_changed,
    # failed_before, never_cached, output_missing, not_finished, unchanged
    detail: dict[str, Any] = field(default_factory=dict)


def decide(task: str, new: Parts, old: Stored | None, *, cache: bool = True) -> Decision:
    """Whether ``task`` runs again, and the first reason why. Pure and O(1) per task."""
    if old is None:
        return Decision(task, "run", "new")
    if old.state != "done":
        reason = (
            "failed_before" if old.state in ("failed", "skipped", "cancelled") else ("not_finished")
        )
        return Decision(task, "run", reason, {"state": old.state})
    if not cache:
        return Decision(task, "run", "never_cached")
    if old.outputs_missing:
        return Decision(task, "run", "output_missing", {"files": list(old.outputs_missing)})
    p = old.parts
    if p is None:
        return Decision(task, "reuse", "unchanged", {"note": "finished before fingerprints"})
    if p.fingerprint == new.fingerprint:
        return Decision(task, "reuse", "unchanged")
    if p.code != new.code:
        return Decision(task, "run", "code_changed")
    if p.args != new.args:
        return Decision(task, "run", "args_changed")
    if p.inputs != new.inputs:
        before = dict(p.inputs)
        changed = [path for path, d in new.inputs if before.get(path) != d]
        changed += [path for path in before if path not in dict(new.inputs)]
        return Decision(task, "run", "input_file_changed", {"files": sorted(set(changed))})
    before_parents = dict(p.parents)
    changed = [pid for pid, fp in new.parents if before_parents.get(pid) != fp]
    changed += [pid for pid in before_parents if pid not in dict(new.parents)]
    return Decision(task, "run", "upstream_changed", {"parents": sorted(set(changed))})


def decide_all(
    tasks: Sequence[Any],
    parts: Mapping[str, Parts],
    stored: Mapping[str, Stored],
    missing: Mapping[str, tuple[str, ...]],
    *,
    only: Sequence[bool] | None = None,
) -> list[Decision]:
    """``decide`` for every task in graph order (or those whose ``only`` flag is set).
    ``missing``: declared outputs not on disk, by task id (the caller looked)."""
    decisions = []
    for i, t in enumerate(tasks):
        if only is not None and not only[i]:
            continue
        old = stored.get(t.id)
        if old is not None and old.state == "done":
            miss = missing.get(t.id)
            if miss:
                old = Stored(old.state, old.parts, miss)
        decisions.append(decide(t.id, parts[t.id], old, cache=t.cache))
    return decisions
