"""Library use leaves the cyclic garbage collector as it found it (issue 16, point 18): a run
(graph file load, bulk submission, children submitted at run time) freezes nothing, so the
caller's cyclic garbage is collected, whether it was made before, during or after a run."""

from __future__ import annotations

import gc
import json
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import conveyor


class Node:
    """A self-referencing object: only the cyclic GC frees it."""

    def __init__(self) -> None:
        self.me = self


REFS: list[weakref.ref[Node]] = []


def cyclic_garbage() -> None:
    REFS.append(weakref.ref(Node()))


def make_garbage_and_a_child() -> None:
    cyclic_garbage()
    conveyor.current().submit(cyclic_garbage).result()  # a run-time child (a bulk submission)


@pytest.fixture
def no_automatic_gc() -> Iterator[None]:
    """No collection happens unless the test asks for one, so garbage is still there when the
    runs load and submit (where a freeze would have caught it)."""
    REFS.clear()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()  # a failing run must not leave this process's objects frozen
        if enabled:
            gc.enable()
        REFS.clear()


def test_library_runs_leave_cyclic_garbage_collectable(
    tmp_path: Path, no_automatic_gc: None
) -> None:
    graph = tmp_path / "g.json"
    tasks = [{"id": f"t{i}", "fn": "test_gc:cyclic_garbage"} for i in range(50)]
    graph.write_text(json.dumps({"name": "gc", "tasks": tasks}))
    cyclic_garbage()  # before any run
    assert conveyor.run(str(graph), workers=2).ok  # a graph file, loaded in bulk
    cyclic_garbage()  # between runs
    g = conveyor.Graph("gc2")
    g.add(make_garbage_and_a_child, id="parent")
    assert conveyor.run(g, workers=2).ok  # a Graph, and a child submitted at run time
    assert len(REFS) == 2 + 50 + 2
    assert all(ref() is not None for ref in REFS)  # nothing was collected behind our back
    gc.collect()
    alive: list[Callable[[], Node | None]] = [ref for ref in REFS if ref() is not None]
    assert not alive, f"{len(alive)} of {len(REFS)} garbage cycles were not collected"


def _double(x: int) -> int:
    return 2 * x


@pytest.mark.parametrize("kind", ["no-ops", "functions"])
def test_a_finished_run_is_freed_when_its_result_goes(kind: str) -> None:
    # No cycle keeps the engine (and through it the store and the graph) alive after the run:
    # dropping the result frees them at once, not at the collector's next full pass, which
    # in a long process running many graphs could come after several graphs' worth of memory.
    g = conveyor.Graph("freed")
    for i in range(20):
        fn = _double if kind == "functions" else None  # (functions: pool threads, runners)
        g.add(fn, *([i] if fn else []), id=f"t{i}", deps=[f"t{i - 1}"] if i % 2 else [])
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        res = conveyor.run(g, workers=4)
        assert res.ok
        store = weakref.ref(res.store)
        del res
        assert store() is None, "the run's store outlived its result: a reference cycle"
    finally:
        if enabled:
            gc.enable()
