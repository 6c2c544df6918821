"""A structure-only graph keeps its tasks as columns (ids, parents) until ``tasks`` is read,
and the memory store runs it without making a ``TaskSpec`` per task: one is made only for a
task claimed on its own (events on), or asked about."""

from __future__ import annotations

import json
from pathlib import Path

import conveyor
from conveyor.graphfile import graph_from_dict, load_graph
from conveyor.model import GraphSpec, TaskSpec
from conveyor.store.memory import MemoryStore

GRAPH = {
    "name": "g",
    "tasks": [{"id": "a"}, {"id": "b", "deps": ["a"]}, {"id": "c", "deps": ["a", "b"]}],
}


def test_columns_become_tasks_once_when_read(tmp_path: Path) -> None:
    path = tmp_path / "g.json"
    path.write_text(json.dumps(GRAPH))
    for spec in (graph_from_dict(GRAPH), load_graph(path)):
        assert spec.columns is not None and len(spec) == 3  # (no spec made for len)
        tasks = spec.tasks
        assert spec.columns is None and spec.tasks is tasks  # made once, then kept
        assert [(t.id, tuple(t.deps), t.is_noop) for t in tasks] == [
            ("a", (), True), ("b", ("a",), True), ("c", ("a", "b"), True)
        ]  # fmt: skip
        eager = GraphSpec("g", tasks, {}, dict(spec.meta))
        assert spec == eager and len(eager) == 3
        tasks[0].retries = 2  # a change made after reading stays: the specs are kept
        assert spec.tasks[0].retries == 2


def test_assigning_tasks_drops_the_columns() -> None:
    spec = graph_from_dict(GRAPH)
    spec.tasks = [TaskSpec("x")]
    assert spec.columns is None and [t.id for t in spec.tasks] == ["x"] and len(spec) == 1


def test_a_no_op_run_makes_no_spec_and_keeps_every_result() -> None:
    res = conveyor.run(GRAPH, workers=1)
    assert res.ok and res.counts["done"] == 3
    assert res.graph is not None and res.graph.columns is not None  # no TaskSpec was made
    assert [res.result(t).attempt for t in ("a", "b", "c")] == [1, 1, 1]
    assert res["c"] is None


def test_claimed_one_by_one_a_bare_task_gets_its_spec_with_its_parents() -> None:
    """With events on, each task is claimed on its own: its spec is made then, with the
    parents the columns gave; ``task_info``, ``explain`` and ``status`` answer as well."""
    events: list[dict[str, object]] = []
    store = MemoryStore()
    store.emit = events.append
    store.open_graph(graph_from_dict(GRAPH), 0.0)
    assert store.task_info("c")["parents"] == ["a", "b"]
    assert store.explain("c", 0.0).code == "waiting_on_parents"
    assert store.status(0.0)["groups"] == {"default": {"ready": 1, "pending": 2}}
    order = []
    while (claim := store.claim_one("w", 1.0)) is not None:
        assert isinstance(claim.spec, TaskSpec) and claim.spec.is_noop
        order.append((claim.spec.id, tuple(claim.parents)))
        store.complete(claim, None, 1.0)
    assert order == [("a", ()), ("b", ("a",)), ("c", ("a", "b"))]
    started = [e["task"] for e in events if e["event"] == "task_started"]
    assert started == ["a", "b", "c"]


def test_after_a_run_from_a_file_each_task_still_names_its_parents(tmp_path: Path) -> None:
    # A file's parents are kept as positions (``ParentIds``) and the counts they are cut by
    # are the layout's own, which the run counts down: read after the run, they still hold.
    path = tmp_path / "g.json"
    path.write_text(json.dumps(GRAPH))
    res = conveyor.run(str(path), workers=1)
    assert res.ok and res.graph is not None and res.graph.columns is not None
    info = {t: res.store.task_info(t)["parents"] for t in ("a", "b", "c")}
    assert info == {"a": [], "b": ["a"], "c": ["a", "b"]}
