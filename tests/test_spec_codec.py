"""Specs as stored (``store/codec.py``): the fast paths of ``encode_spec`` (a task whose fields
are all at their defaults but ``fn``, msgspec for plain JSON) store the same JSON values as the
plain rule, "every field that differs from its default, by the stdlib encoder with
``default=str``", for every kind of field value."""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path
from typing import Any

import pytest

from conveyor.model import TaskSpec
from conveyor.store.codec import decode_spec, encode_spec
from conveyor.store.sqlite import SqliteStore

T0 = 1_000_000.0


def _plain_rule(spec: TaskSpec) -> Any:
    """What a spec stores, by the rule itself (no fast path): the JSON value."""
    d: dict[str, Any] = {}
    if spec.fn is not None:
        d["fn"] = spec.fn
    if spec.args:
        d["args"] = list(spec.args)
    if spec.kwargs:
        d["kwargs"] = dict(spec.kwargs)
    for f in dataclasses.fields(TaskSpec):
        if f.name in ("id", "fn", "args", "kwargs"):
            continue
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        v = getattr(spec, f.name)
        if v != default:
            d[f.name] = list(v) if isinstance(v, tuple) else v
    return json.loads(json.dumps(d, default=str))


def _explicit_defaults() -> TaskSpec:
    t = TaskSpec("d", fn="m:f")
    t.group = "default"  # set, but to the default: not stored
    t.retries = 0
    return t


SPECS = [
    TaskSpec("bare"),
    TaskSpec("fn", fn="pkg.mod:func"),
    TaskSpec("fn-deps", fn="pkg.mod:func", deps=("a", "b")),
    TaskSpec("deps", deps=("a",)),
    _explicit_defaults(),
    TaskSpec("cmd", cmd=["echo", "hé"], env={"X": "1"}, cwd="/tmp", retries=2, timeout_s=1e-05),
    TaskSpec("args", fn="m:f", args=(1, 2.5, "x"), kwargs={"k": [1, None]}, band="batch"),
    TaskSpec("files", fn="m:f", inputs=("in é.txt",), outputs=("out",), cache=False),
    TaskSpec("res", fn="m:f", resources={"gpu": 1.0}, labels={"zone": "a"}, group="g"),
    TaskSpec("big", fn="m:f", meta={"n": 10**30, "x": 1e22, "u": "\u2028\x7f"}),
    # Not plain JSON: the stdlib's encoding (NaN; default=str for a datetime and a set)
    TaskSpec("nan", fn="m:f", runtime_s=float("nan")),
    TaskSpec("date", fn="m:f", meta={"when": datetime.datetime(2026, 12, 1, 0, 0)}),
    TaskSpec("set", fn="m:f", meta={"s": {1}}),
    TaskSpec("surrogate", fn="m:f", meta={"s": "\ud800"}),
]


@pytest.mark.parametrize("spec", SPECS, ids=[t.id for t in SPECS])
def test_a_spec_stores_what_the_plain_rule_stores(spec: TaskSpec) -> None:
    got = json.loads(encode_spec(spec))
    want = _plain_rule(spec)
    if spec.id == "nan":  # NaN != NaN: compare its text
        assert json.dumps(got) == json.dumps(want)
    else:
        assert got == want
    back = decode_spec(spec.id, encode_spec(spec))
    for f in dataclasses.fields(TaskSpec):
        if spec.id not in ("nan", "date", "set"):
            assert getattr(back, f.name) == getattr(spec, f.name), f.name


def test_a_spec_submitted_at_run_time_names_its_submitter() -> None:
    got = json.loads(encode_spec(TaskSpec("c", fn="m:f"), "parent"))
    assert got == {"submitted_by": "parent", "fn": "m:f"}


def test_a_resume_leaves_a_spec_whose_text_differs_but_not_its_value(tmp_path: Path) -> None:
    """A store written by the stdlib encoder (non-ASCII escaped) resumed with a changed parent:
    the child's fingerprint changed but its spec did not, so its row is not rewritten
    (``sqlfp.resume`` compares the values of texts that differ)."""
    from conveyor.fingerprints import open_graph
    from conveyor.model import GraphSpec

    def graph(version: int) -> GraphSpec:
        return GraphSpec("g", [TaskSpec("a", fn="m:f", version=version),
                               TaskSpec("b", fn="m:f", version=1, deps=("a",),
                                        env={"NAME": "\u00e9"})])  # fmt: skip

    store = SqliteStore(tmp_path / "s.db")
    try:
        open_graph(store, graph(1), T0)
        old = json.dumps(json.loads(encode_spec(graph(1).tasks[1])), separators=(",", ":"))
        assert "\\u00e9" in old
        with store.db.io.begin() as conn:
            conn.execute("UPDATE specs SET spec = ? WHERE seq = 2", (old,))
        opened = open_graph(store, graph(2), T0 + 1)
        assert opened.resumed
        with store.db.io.begin() as conn:
            fps = conn.execute("SELECT fp FROM fingerprints ORDER BY seq").fetchall()
            (text,) = conn.execute("SELECT spec FROM specs WHERE seq = 2").fetchone()
        assert len({fp for (fp,) in fps}) == 2  # (b's fingerprint did change)
        assert text == old
    finally:
        store.close()


def test_an_attribute_that_is_no_field_is_not_stored() -> None:
    t = TaskSpec("x", fn="m:f")
    t.note = "scratch"  # type: ignore[attr-defined]
    assert json.loads(encode_spec(t)) == {"fn": "m:f"}


def test_tasks_that_share_a_spec_each_get_their_own() -> None:
    # Scalar-only specs are decoded once and shared; each task still gets a spec of its own,
    # and a spec with containers is decoded afresh: one task changing its kwargs or labels
    # changes no other task's.
    plain = encode_spec(TaskSpec("x", fn="mod:fn", retries=2, group="g"))
    a, b = decode_spec("a", plain), decode_spec("b", plain)
    assert (a.id, b.id) == ("a", "b") and a is not b
    assert (a.fn, a.retries, a.group) == (b.fn, b.retries, b.group) == ("mod:fn", 2, "g")
    a.retries = 5
    assert decode_spec("c", plain).retries == 2
    nested = encode_spec(TaskSpec("x", fn="mod:fn", kwargs={"k": [1]}, labels={"zone": "a"}))
    c, d = decode_spec("c", nested), decode_spec("d", nested)
    c.kwargs["k"].append(2)
    assert d.kwargs == {"k": [1]} and c.labels is not d.labels and d.labels == {"zone": "a"}
    assert decode_spec("e", nested).kwargs == {"k": [1]}


def test_arguments_nested_past_what_can_be_stored_are_one_error_naming_the_task() -> None:
    # Python code can nest deeper than any graph file: one GraphError, not a RecursionError.
    from conveyor.errors import GraphError

    nested: list[object] = []
    for _ in range(5000):
        nested = [nested]
    with pytest.raises(GraphError, match="task 'deep': its arguments are nested too deeply"):
        encode_spec(TaskSpec(id="deep", fn="builtins:len", args=(nested,)))
