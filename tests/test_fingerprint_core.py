"""Fingerprints: canonical encoding is stable, Merkle parts, and plan decisions (pure core)."""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import conveyor
from conveyor.core.fingerprint import Parts, Stored, canonical, decide
from conveyor.errors import GraphError
from conveyor.fingerprints import FileHashes, graph_parts, plan

plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)


def reorder(value: Any, rnd: random.Random) -> Any:
    """An equal copy of ``value`` with every dict, at every depth, in another key order."""
    if isinstance(value, dict):
        items = [(k, reorder(v, rnd)) for k, v in value.items()]
        rnd.shuffle(items)
        return dict(items)
    if isinstance(value, list):
        return [reorder(v, rnd) for v in value]
    return value


def same(a: Any, b: Any) -> bool:
    """Equal in type and value at every depth (``1``, ``1.0`` and ``True`` differ; so do
    ``0.0`` and ``-0.0``); dicts compare without regard to order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack(">d", a) == struct.pack(">d", b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def twin(value: Any) -> Any:
    """``value`` with each leaf that has one replaced by an equal-looking value of another
    type: ``True`` -> ``1``, ``1`` -> ``1.0``, ``2.0`` -> ``2``, ``0.0`` -> ``-0.0``,
    ``"x"`` -> ``b"x"``."""
    if isinstance(value, dict):
        return {k: twin(v) for k, v in value.items()}
    if isinstance(value, list):
        return [twin(v) for v in value]
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return float(value) if abs(value) < 2**53 else value
    if isinstance(value, float):
        if value == 0.0:
            return -value
        return int(value) if value.is_integer() else value
    if isinstance(value, str):
        return value.encode()
    return value


@given(plain, st.randoms(use_true_random=False))
def test_canonical_dict_order_at_any_depth_does_not_matter(value: Any, rnd: random.Random):
    shuffled = reorder(value, rnd)
    assert same(shuffled, value)
    assert canonical(shuffled) == canonical(value)


@given(plain, plain, st.booleans(), st.randoms(use_true_random=False))
def test_canonical_bytes_equal_exactly_when_values_are_the_same(
    a: Any, b: Any, copy: bool, rnd: random.Random
):
    # Unrelated values rarely collide by chance: half the pairs are an equal copy built apart.
    if copy:
        b = reorder(a, rnd)
    assert (canonical(a) == canonical(b)) == same(a, b), (a, b)


@given(plain)
@example(True)
@example(0)
@example(0.0)
@example([2.0, "x"])
@example({"k": False})
def test_canonical_look_alikes_of_another_type_differ(value: Any):
    # ``1 == 1.0 == True`` in Python, not in a fingerprint.
    other = twin(value)
    assert (canonical(value) == canonical(other)) == same(value, other), (value, other)


def test_canonical_distinguishes_types():
    encodings = [canonical(v) for v in (1, 1.0, "1", True, b"1", [1], (1,), {1}, None)]
    assert len(set(encodings)) == len(encodings)
    assert canonical(0.0) != canonical(-0.0)
    assert canonical({1, 2}) == canonical({2, 1})


def test_canonical_unknown_object_is_a_clear_error():
    with pytest.raises(GraphError, match="cannot fingerprint"):
        canonical(object())


def test_fingerprint_same_across_interpreters_with_different_hash_seeds(tmp_path: Path):
    script = textwrap.dedent(
        """
        import conveyor
        from conveyor.fingerprints import graph_parts
        g = conveyor.Graph("x")
        a = g.add(sorted, [3, 1, 2], id="a", kwargs={"reverse": True})
        g.add(None, id="b", deps=[a], kwargs={"z": {"k", "j", "i"}, "y": {"b": 1, "a": 2}})
        g.cmd("echo hi", id="c", deps=["b"])
        print(graph_parts(g.spec())["c"].fingerprint)
        """
    )
    outs = set()
    for seed in ("1", "2", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        outs.add(out.stdout.strip())
    assert len(outs) == 1 and len(next(iter(outs))) == 32


def test_parts_merkle_chain_changes_downstream_only():
    def build(arg: int) -> conveyor.Graph:
        g = conveyor.Graph("m")
        a = g.add(sum, [arg], id="a")
        b = g.add(sum, [1], id="b")
        g.add(max, a, b, id="c")
        g.add(min, [0], id="d", deps=["b"])
        return g

    before = graph_parts(build(1).spec())
    after = graph_parts(build(2).spec())
    changed = {t for t in before if before[t].fingerprint != after[t].fingerprint}
    assert changed == {"a", "c"}


def test_decide_reasons_in_order():
    base = Parts.make("code", "args", [("f.txt", "d1")], [("p", "fp")])
    assert decide("t", base, None).reason == "new"
    assert decide("t", base, Stored("failed", base)).reason == "failed_before"
    assert decide("t", base, Stored("done", base)).action == "reuse"
    assert decide("t", base, Stored("done", base), cache=False).reason == "never_cached"
    code = Parts.make("code2", "args", [("f.txt", "d1")], [("p", "fp")])
    assert decide("t", code, Stored("done", base)).reason == "code_changed"
    args = Parts.make("code", "args2", [("f.txt", "d1")], [("p", "fp")])
    assert decide("t", args, Stored("done", base)).reason == "args_changed"
    files = Parts.make("code", "args", [("f.txt", "d2")], [("p", "fp")])
    d = decide("t", files, Stored("done", base))
    assert d.reason == "input_file_changed" and d.detail["files"] == ["f.txt"]
    up = Parts.make("code", "args", [("f.txt", "d1")], [("p", "fp2")])
    d = decide("t", up, Stored("done", base))
    assert d.reason == "upstream_changed" and d.detail["parents"] == ["p"]
    d = decide("t", base, Stored("done", base, ("out.bin",)))
    assert d.reason == "output_missing"


def test_file_hashes_touch_without_change_keeps_digest(tmp_path: Path):
    f = tmp_path / "in.txt"
    f.write_text("hello")
    hashes = FileHashes()
    d1 = hashes.digest(str(f))
    os.utime(f, ns=(1, 1))
    assert hashes.digest(str(f)) == d1
    f.write_text("hello!")
    assert hashes.digest(str(f)) != d1
    assert hashes.digest(str(tmp_path / "nope")) == "missing"


def test_plan_code_change_detected_through_same_module_callee(tmp_path: Path):
    mod = tmp_path / "fpmod.py"
    mod.write_text("def inner(x):\n    return x + 1\n\ndef outer(x):\n    return inner(x)\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import importlib

        import fpmod  # type: ignore[import-not-found]

        g = conveyor.Graph("p")
        g.add("fpmod:outer", 1, id="o")
        g.add(None, id="after", deps=["o"])
        decisions, parts = plan(g.spec(), {})
        assert [d.reason for d in decisions] == ["new", "new"]
        stored = {k: Stored("done", v) for k, v in parts.items()}
        mod.write_text("def inner(x):\n    return x + 2\n\ndef outer(x):\n    return inner(x)\n")
        importlib.reload(fpmod)
        from conveyor.imports import resolve_callable

        resolve_callable.cache_clear()
        decisions, _ = plan(g.spec(), stored)
        assert [(d.task, d.reason) for d in decisions] == [
            ("o", "code_changed"),
            ("after", "upstream_changed"),
        ]
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("fpmod", None)


def test_graph_parts_of_tasks_alike_are_those_of_each_task_alone():
    """Tasks without parents or input files share their parts (one per code and arguments):
    each still has the fingerprint it has in a graph of its own."""
    from conveyor.model import GraphSpec, TaskSpec

    tasks = [TaskSpec("a", version="1", args=(1,)), TaskSpec("b", version="1", args=(2,)),
             TaskSpec("c", version="1", args=(1,)), TaskSpec("d", version="2", args=(1,)),
             TaskSpec("e", version="1", args=(1,), deps=("a",))]  # fmt: skip
    parts = graph_parts(GraphSpec("g", tasks))
    alone = {t.id: graph_parts(GraphSpec("one", [t]))[t.id] for t in tasks[:4]}
    for tid, p in alone.items():
        assert parts[tid].fingerprint == p.fingerprint, tid
    assert parts["a"].fingerprint == parts["c"].fingerprint
    assert len({parts[t].fingerprint for t in "abde"}) == 4


def test_an_int_version_is_a_version():
    """``"version": 1`` in a graph file (the schema takes str or int) fingerprints."""
    from conveyor.model import GraphSpec, TaskSpec

    def fp(version: str | int) -> str:
        return graph_parts(GraphSpec("g", [TaskSpec("a", version=version)]))["a"].fingerprint

    assert fp(1) == fp(1) != fp(2)
    assert fp(1) != fp("1")
