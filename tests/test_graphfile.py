"""The graph-file contract on both loading paths: structure-only graphs (checked column-wise)
and the per-task path (any other key), which must accept and refuse the same graphs with the
same errors. Plus the one-pass ``layout`` against Kahn's algorithm."""

from __future__ import annotations

import dataclasses
import json
import pickle
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import conveyor
from conveyor.core import dag
from conveyor.core.dag import layout
from conveyor.core.frontier import Frontier
from conveyor.errors import CycleError, GraphError
from conveyor.graphfile import graph_from_dict, load_graph
from conveyor.model import EMPTY, TaskSpec

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def per_task(graph: dict[str, Any]) -> dict[str, Any]:
    """The same graph sent down the per-task path: one extra task with a command (a no-op
    for the checks below, which drop it again)."""
    return {**graph, "tasks": [*graph["tasks"], {"id": "zz-extra", "cmd": "true"}]}


def both(graph: dict[str, Any]) -> list[Any]:
    """The graph loaded by both paths (the per-task one without its extra task)."""
    fast = graph_from_dict(graph)
    slow = graph_from_dict(per_task(graph))
    slow.tasks = [t for t in slow.tasks if t.id != "zz-extra"]
    return [fast, slow]


def fields(t: TaskSpec) -> dict[str, Any]:
    return {f.name: getattr(t, f.name) for f in dataclasses.fields(TaskSpec)}


def error_of(graph: Any) -> str:
    with pytest.raises(GraphError) as info:
        graph_from_dict(graph)
    return str(info.value)


# -- the two paths agree -------------------------------------------------------------------------
def test_structure_only_graph_same_specs_on_both_paths() -> None:
    g = {
        "name": "g",
        "tasks": [
            {"id": "a"},
            {"id": "b", "deps": ["a"]},
            {"id": "c", "deps": ["a", "b", "a"]},  # a repeat is kept as declared
            {"id": "d", "deps": []},
        ],
    }
    fast, slow = both(g)
    assert [fields(t) for t in fast.tasks] == [fields(t) for t in slow.tasks]
    assert fast.tasks[2].deps == ("a", "b", "a")
    assert fast.layout.local_parents == [[], [0], [0, 1], []]
    assert fast.layout.depth == [0, 1, 2, 0]


def test_wfcommons_parents_runtime_and_cores_on_both_paths() -> None:
    g = {
        "name": "wf",
        "tasks": [
            {"id": "a", "runtime_s": 1.5, "cores": 2},
            {"id": "b", "parents": ["a"], "runtime_s": 0},
            {"id": "c", "parents": ["b"]},
        ],
    }
    for spec in both(g):
        assert [t.deps for t in spec.tasks] == [(), ("a",), ("b",)]
        assert [t.runtime_s for t in spec.tasks] == [1.5, 0, None]
        assert all(t.resources == {} for t in spec.tasks)  # cores is informational


@pytest.mark.parametrize("source", ["dict", "file"])
def test_ids_and_deps_first_then_traced_then_full_schema(tmp_path: Path, source: str) -> None:
    # Ids and deps alone decode first; a trace's key (here on a later task) takes the traced
    # struct, still column-wise; any other key the full schema.
    def load(g: dict[str, Any]) -> Any:
        if source == "dict":
            return graph_from_dict(g)
        path = tmp_path / "g.json"
        path.write_text(json.dumps(g))
        return load_graph(path)

    plain = [{"id": "a"}, {"id": "b", "deps": ["a"]}]
    spec = load({"tasks": plain})
    assert spec.structure_only and [t.deps for t in spec.tasks] == [(), ("a",)]
    traced = load({"tasks": [*plain, {"id": "c", "parents": ["b"], "runtime_s": 2}]})
    assert traced.structure_only
    assert [(t.deps, t.runtime_s) for t in traced.tasks] == [((), None), (("a",), None),
                                                             (("b",), 2)]  # fmt: skip
    full = load({"tasks": [*plain, {"id": "c", "runtime_s": 2}, {"id": "d", "cmd": "true"}]})
    assert not full.structure_only and full.tasks[2].runtime_s == 2
    assert full.tasks[3].cmd == "true"


def test_tasks_listed_children_first_are_accepted() -> None:
    g = {"tasks": [{"id": "c", "deps": ["b"]}, {"id": "b", "deps": ["a"]}, {"id": "a"}]}
    spec = graph_from_dict(g)
    assert spec.layout.depth == [2, 1, 0]
    assert conveyor.run(g, workers=1).ok


def test_some_tasks_without_deps_key() -> None:
    spec = graph_from_dict({"tasks": [{"id": "a"}, {"id": "b", "deps": ["a"]}, {"id": "c"}]})
    assert [t.deps for t in spec.tasks] == [(), ("a",), ()]


@pytest.mark.parametrize(
    ("tasks", "words"),
    [
        ([{"id": "a"}, {"id": "a"}], ["duplicate", "'a'"]),
        ([{"id": "a", "deps": ["ghost"]}], ["'ghost'"]),
        ([{"id": "x", "deps": ["z"]}, {"id": "y", "deps": ["x"]}, {"id": "z", "deps": ["y"]}],
         ["cycle", "x", "y", "z"]),
        ([{"id": "a", "deps": ["a"]}], ["cycle", "a"]),
        ([{"id": "a", "colour": "red"}], ["colour"]),
        ([{"id": "a", "deps": ["b"], "parents": ["b"]}, {"id": "b"}], ["'deps' or 'parents'"]),
        ([{"id": ""}], ["id"]),
        ([{"id": 3}], ["id"]),
        ([{"deps": []}], ["id", "#1"]),
        ([{"id": "a"}, "b"], ["#2", "object"]),
        ([{"id": "a", "deps": "b"}], ["'a'", "field 'deps'"]),
        ([{"id": "a"}, {"id": "b", "deps": ["a", 1]}], ["'b'", "field 'deps[1]'"]),
        ([{"id": "a", "cores": -1}], ["'a'", "cores"]),
        ([{"id": "a", "runtime_s": -1}], ["'a'", "runtime_s"]),
        ([{"id": "a", "runtime_s": float("nan")}], ["'a'", "runtime_s"]),
        ([{"id": "a", "runtime_s": "1"}], ["'a'", "runtime_s"]),
    ],
)  # fmt: skip
def test_bad_structure_only_graphs_named_errors_on_both_paths(
    tasks: list[Any], words: list[str]
) -> None:
    for g in ({"tasks": tasks}, per_task({"tasks": tasks})):
        msg = error_of(g)
        for w in words:
            assert w in msg, (w, msg)


def test_tuple_or_null_deps_accepted_in_a_dict_on_both_paths() -> None:
    # A dict built in Python may hold a tuple where a file has a list (the schema converts it).
    for g in both({"tasks": [{"id": "b"}, {"id": "a", "deps": ("b",)}, {"id": "c", "deps": None}]}):
        assert [t.deps for t in g.tasks] == [(), ("b",), ()]


def test_graph_keys_and_meta_kept() -> None:
    spec = graph_from_dict({"name": "n", "description": "d", "tasks": [{"id": "a"}]})
    assert spec.name == "n" and spec.meta == {"name": "n", "description": "d"}
    assert "extra" in error_of({"tasks": [{"id": "a"}], "extra": 1})


def test_json_file_loads_and_runs(tmp_path: Path) -> None:
    path = tmp_path / "g.json"
    tasks = [{"id": f"t{i}", "deps": [f"t{i - 1}"] if i else []} for i in range(50)]
    path.write_text(json.dumps({"tasks": tasks}))
    spec = load_graph(path)
    assert spec.name == "g" and len(spec) == 50
    assert spec.tasks[1].deps[0] is spec.tasks[0].id  # one string per id, not per mention
    res = conveyor.run(path, workers=1)
    assert res.ok and res.counts["done"] == 50


# -- TaskSpec stays a dataclass with compact storage ----------------------------------------
def test_taskspec_defaults_fields_replace_pickle() -> None:
    bare = TaskSpec.bare("a", ("b",))
    full = TaskSpec("a", deps=("b",))
    assert fields(bare) == fields(full)
    assert bare.kwargs is EMPTY and bare.group == "default" and bare.fn is None
    assert bare.is_noop and bare.kind == "noop"
    t = TaskSpec("x", fn="m:f", args=(1,), retries=2, labels={"gpu": "a100"})
    r = dataclasses.replace(t, retries=3)
    assert (r.fn, r.args, r.retries, r.labels, r.deps) == ("m:f", (1,), 3, {"gpu": "a100"}, ())
    back = pickle.loads(pickle.dumps(t))
    assert fields(back) == fields(t)
    assert [f.default for f in dataclasses.fields(TaskSpec) if f.name == "deps"] == [()]
    t.retries = 5  # fields stay assignable
    assert t.retries == 5 and TaskSpec("y").retries == 0
    assert "retries=5" in repr(t) and "cmd" not in repr(t)
    with pytest.raises(TypeError):
        TaskSpec("z", colour="red")  # type: ignore[call-arg]


def test_taskspec_keeps_what_was_given_even_when_equal_to_default() -> None:
    assert TaskSpec("a", retries=0.0).retries == 0.0  # type: ignore[arg-type]
    with pytest.raises(GraphError, match="retries"):
        TaskSpec("a", retries=0.0).validate()  # type: ignore[arg-type]


# -- layout: the one-pass path agrees with Kahn's algorithm ------------------------------------
@st.composite
def ordered_dags(draw: st.DrawFn) -> tuple[list[str], list[list[str]]]:
    """A DAG listed parents first, sometimes naming a parent twice."""
    n = draw(st.integers(1, 30))
    ids = [f"t{i}" for i in range(n)]
    parents = []
    for i in range(n):
        ps = draw(st.lists(st.integers(0, i - 1), max_size=4)) if i else []
        parents.append([ids[p] for p in ps])
    return ids, parents


@PROPS
@given(g=ordered_dags(), base=st.integers(0, 3))
def test_one_pass_layout_equals_kahn(g: tuple[list[str], list[list[str]]], base: int) -> None:
    ids, parents = g
    fast = layout(ids, parents, base_depth=base)
    rng = list(range(len(ids)))
    kahn = dag._general(ids, parents, rng, dict(zip(ids, rng, strict=True)), None, base)
    assert fast.depth == kahn.depth
    assert fast.local_parents == kahn.local_parents
    shared = layout(ids, parents, base_depth=base, share_ids=True)
    assert list(shared.parents) == [tuple(ps) for ps in parents] and shared.depth == fast.depth
    assert shared.local_parents == kahn.local_parents  # (from the positions, repeats once)
    # Repeats: a child is listed once per naming, and waits for as many completions.
    for i, ps in enumerate(parents):
        assert fast.waiting[i] == len(ps)
    for j in rng:  # (in declared order: the children's order, each repeat where named)
        assert list(fast.children[j] or []) == [
            i for i, ps in enumerate(parents) for p in ps if p == ids[j]
        ]
    # A frontier given either runs every task once, parents first.
    f = Frontier()
    f.add(ids, parents, known_layout=fast)
    order = []
    while (i := f.pop()) is not None:
        order.append(i)
        f.complete(i)
    assert sorted(order) == rng
    pos = {i: k for k, i in enumerate(order)}
    assert all(pos[ids.index(p)] < pos[i] for i, ps in enumerate(parents) for p in ps)


@pytest.mark.parametrize("shape", ["layered", "mixed"])
def test_shared_parents_are_each_tasks_own_ids(shape: str) -> None:
    # Layered (roots, then 3 parents each, with a task of 1 and one of 2 between) and varied
    # counts (0-4, repeats allowed): each task's parents, in declared order, as the ids'
    # own strings, and read by position as by iteration.
    rnd = random.Random(7)
    ids = [f"task-{i}" for i in range(400)]
    parents: list[list[str]] = []
    for i in range(400):
        k = 0 if i < 20 else (1 if i == 200 else 2 if i == 201 else 3)
        if shape == "mixed" and i >= 20:
            k = rnd.randint(0, 4)
        parents.append([ids[rnd.randrange(i)] for _ in range(k)] if i else [])
    copies = [[str(p + " ")[:-1] for p in ps] for ps in parents]  # equal, not the same
    lay = layout(ids, copies, share_ids=True)
    assert list(lay.parents) == [tuple(ps) for ps in parents]
    assert [lay.parents[i] for i in range(400)] == [tuple(ps) for ps in parents]
    assert lay.parents[-1] == tuple(parents[-1]) and len(lay.parents) == 400
    own = {id(t) for t in ids}
    assert all(id(p) in own for ps in lay.parents for p in ps)


def test_layout_given_to_a_second_frontier_is_recomputed() -> None:
    ids, parents = ["a", "b", "c"], [[], ["a"], ["a", "b"]]
    lay = layout(ids, parents)
    first, second = Frontier(), Frontier()
    first.add(ids, parents, known_layout=lay)
    assert lay.taken
    while (i := first.pop()) is not None:
        first.complete(i)
    second.add(ids, parents, known_layout=lay)  # not the first frontier's mutated lists
    assert second.waiting == [0, 1, 2] and second.ready_count() == 1
    assert lay.depth == [0, 1, 2]


def test_layout_errors_name_the_task() -> None:
    with pytest.raises(GraphError, match="'b' depends on unknown task 'x'"):
        layout(["a", "b"], [[], ["x"]])
    with pytest.raises(CycleError) as info:
        layout(["a", "b"], [["b"], ["a"]])
    assert set(info.value.cycle) == {"a", "b"}


@pytest.mark.parametrize(
    ("tasks", "words"),
    [
        ([{"id": "a", "deps": ["ghost"]}], ["'ghost'"]),
        ([{"id": "a", "deps": [["x"]]}], ["'a'", "field 'deps[0]'"]),
        ([{"id": "b", "deps": ["a"]}, {"id": "a", "deps": ["b"]}], ["cycle"]),
    ],
)
def test_json_file_errors_as_for_a_dict(tmp_path: Path, tasks: list[Any], words: list[str]) -> None:
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"tasks": tasks}))
    with pytest.raises(GraphError) as info:
        load_graph(path)
    assert all(w in str(info.value) for w in words), str(info.value)


@pytest.mark.parametrize("order", ["parents first", "children first"])
def test_a_file_names_parents_by_the_tasks_own_id_strings(tmp_path: Path, order: str) -> None:
    # The parser makes a new string per mention of an id; the loaded tasks keep only the ids'
    # own (memory), on the one-pass layout and on Kahn's path alike.
    a, b, c = "task-a", "task-b", "task-c"  # (not one character: those are cached singletons)
    tasks = [{"id": a}, {"id": b, "deps": [a]}, {"id": c, "deps": [a, b, a]}]
    if order == "children first":
        tasks.reverse()
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"tasks": tasks}))
    spec = load_graph(path)
    own = {t.id: t.id for t in spec.tasks}
    deps = {t.id: t.deps for t in spec.tasks}
    assert deps == {a: (), b: (a,), c: (a, b, a)}
    assert all(p is own[p] for t in spec.tasks for p in t.deps)
    assert spec.layout is not None and spec.layout.parents[-1] == spec.tasks[-1].deps


# -- tasks built in Python: the same schema ------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"retries": True}, "'retries'"),
        ({"resources": {"gpu": float("nan")}}, "'resources.gpu'"),
        ({"env": {"X": 1}}, "'env.X'"),
        ({"timeout_s": float("inf")}, "'timeout_s'"),
        ({"cache": "no"}, "'cache'"),
        ({"group": {"name": "a"}}, "'group'"),
        ({"inputs": [0]}, "'inputs[0]'"),
    ],
)
def test_python_built_task_checked_by_the_schema(options: dict[str, Any], field: str) -> None:
    with pytest.raises(GraphError) as info:
        conveyor.Graph("g").add(print, id="t", **options)
    assert f"task 't', field {field}" in str(info.value)


def test_python_built_task_may_name_paths_by_pathlike() -> None:
    g = conveyor.Graph("g")
    g.add(print, id="t", inputs=[Path("in.txt")], cwd=Path("/"))
    assert g.spec().tasks[0].inputs == (Path("in.txt"),)


# -- loading a large structure-only file: no collection walks what it decodes or builds ----------
def test_a_structure_only_file_loads_without_a_collection(tmp_path: Path) -> None:
    # One pause of the collector over decoding and building; the decoded structs are not
    # tracked, and what the load built is promoted to the oldest generation, not walked.
    import gc

    import msgspec

    from conveyor import schema

    text = b'{"tasks": [{"id": "a"}, {"id": "b", "deps": ["a"]}]}'
    decoded = msgspec.json.decode(text, type=schema.BareGraph)
    assert not gc.is_tracked(decoded) and not gc.is_tracked(decoded.tasks[1])
    tasks = [{"id": f"t{i}", "deps": [f"t{i - 1}"] if i else []} for i in range(3000)]
    path = tmp_path / "g.json"
    path.write_text(json.dumps({"tasks": tasks}))
    collections: list[int] = []

    def note(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.collect()  # (what the test made so far is not the load's to collect)
    gc.callbacks.append(note)
    try:
        spec = load_graph(path)
    finally:
        gc.callbacks.remove(note)
    assert len(spec) == 3000 and spec.structure_only and gc.isenabled()
    assert collections == []
    oldest = {id(o) for o in gc.get_objects(generation=2)}
    assert spec.columns is not None  # (bare no-ops: their specs are made when read)
    assert id(spec.columns[0]) in oldest and id(spec.layout.depth) in oldest
    assert gc.get_freeze_count() == 0


def test_a_load_leaves_what_the_process_froze_frozen() -> None:
    import gc

    gc.freeze()  # (as a server that forks does)
    try:
        frozen = gc.get_freeze_count()
        spec = graph_from_dict({"tasks": [{"id": "a"}, {"id": "b", "deps": ["a"]}]})
        assert len(spec.tasks) == 2 and gc.get_freeze_count() >= frozen > 0
    finally:
        gc.unfreeze()
