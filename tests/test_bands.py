"""Priority bands (``core/ordering.py``): the packed key, the graph file and the Python API,
and the start order of a real in-process run against an independent model."""

from __future__ import annotations

import typing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import conveyor
from conveyor import schema
from conveyor.core.ordering import (
    BAND_STRIDE,
    BANDS,
    DEFAULT_BAND,
    MAX_BAND,
    MIN_BAND,
    PriorityKey,
    band_floor,
    band_from,
    band_number,
    depth_from,
    rank_of,
)
from conveyor.errors import GraphError
from conveyor.graphfile import graph_from_dict
from conveyor.testing import EventLog
from helpers import expected_start_order

bands = st.integers(MIN_BAND, MAX_BAND)
depths = st.integers(0, BAND_STRIDE + 10)


@given(b1=bands, d1=depths, b2=bands, d2=depths)
def test_rank_orders_band_first_then_depth(b1: int, d1: int, b2: int, d2: int) -> None:
    r1, r2 = rank_of(d1, b1), rank_of(d2, b2)
    cap = BAND_STRIDE - 1
    assert (r1 < r2) == ((b1, -min(d1, cap)) < (b2, -min(d2, cap)))
    assert band_from(r1) == b1 and depth_from(r1) == min(d1, cap)
    assert band_floor(b1) <= r1 and -(2**31) <= r1 < 2**31  # a 32-bit key column holds it
    assert PriorityKey.of(d1, 1, 2, b1).band == b1


def test_default_band_keeps_the_key_of_before_bands() -> None:
    """Rows a store wrote before bands existed are batch rows: their rank is ``-depth``."""
    assert BANDS["batch"] == DEFAULT_BAND
    assert all(rank_of(d) == -d for d in (0, 1, 7, 10**6))


def test_schema_band_is_the_ordering_bands() -> None:
    _named, numbered = typing.get_args(schema.Band)
    assert set(schema.BAND_NAMES) == set(BANDS)
    meta = typing.get_args(numbered)[1]
    assert (meta.ge, meta.le) == (MIN_BAND, MAX_BAND)


def test_band_number_names_numbers_and_inheritance() -> None:
    assert band_number("interactive") == 10 and band_number(15) == 15
    assert band_number(None) == DEFAULT_BAND and band_number(None, inherited=30) == 30
    for bad in ("urgent", 100, -1, True):
        with pytest.raises(ValueError):
            band_number(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("band", ["urgent", 100, -3, 2.5])
def test_graph_file_refuses_a_bad_band_in_one_line(band: object) -> None:
    with pytest.raises(GraphError) as info:
        graph_from_dict({"tasks": [{"id": "a", "band": band}]}, check_functions=False)
    assert "band" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(GraphError):
        graph_from_dict({"band": band, "tasks": [{"id": "a"}]}, check_functions=False)


def test_graph_band_is_each_unbanded_tasks_band() -> None:
    spec = graph_from_dict({"band": "best_effort", "tasks": [{"id": "a"}, {"id": "b", "band": 5}]})
    assert [t.band for t in spec.tasks] == ["best_effort", 5]
    g = conveyor.Graph("g", band="interactive")
    a = g.add(None, id="a")
    g.add(None, id="b", band="batch", deps=[a])
    assert [t.band for t in g.tasks] == ["interactive", "batch"]


@st.composite
def banded_dags(draw: st.DrawFn) -> tuple[list[str], list[list[str]], dict[str, int | str]]:
    n = draw(st.integers(1, 25))
    topo = [sorted(draw(st.sets(st.integers(0, i - 1), max_size=3))) if i else [] for i in range(n)]
    ids = [f"t{k}" for k in range(n)]
    choice = st.sampled_from([*BANDS, 0, 15, 99])
    given_bands = {t: draw(choice) for t in ids if draw(st.booleans())}
    return ids, [[f"t{p}" for p in topo[k]] for k in range(n)], given_bands


@pytest.mark.parametrize("groups", [False, True])
@settings(max_examples=30, deadline=None)
@given(dag=banded_dags())
def test_run_one_worker_starts_in_band_then_depth_first_order(dag, groups: bool) -> None:
    ids, parents, given_bands = dag
    tasks = []
    for t, ps in zip(ids, parents, strict=True):
        task: dict[str, object] = {"id": t, "deps": ps}
        if t in given_bands:
            task["band"] = given_bands[t]
        tasks.append(task)
    spec: dict[str, object] = {"tasks": tasks}
    if groups:  # admission on: per-shape heaps, bands still first
        spec["groups"] = {"default": {"weight": 1}}
    log = EventLog()
    result = conveyor.run(spec, workers=1, emit=log)
    assert result.exit_code == 0
    numbers = {t: band_number(given_bands.get(t)) for t in ids}
    assert log.tasks("task_started") == expected_start_order(ids, parents, numbers)


def test_run_children_inherit_their_submitters_band() -> None:
    """A real run on one slot: the interactive task submits two children, one naming no band
    (it inherits interactive: a ready batch task waits behind its band) and one best-effort
    (it runs last)."""
    import threading

    from conveyor.api import open_run
    from helpers import wait_until

    release = threading.Event()

    def boss() -> None:
        ctx = conveyor.current()
        ctx.submit(None, id="kid")
        ctx.submit(None, id="low", band="best_effort")
        release.wait(60)

    g = conveyor.Graph("inherit")
    g.add(boss, id="boss", band="interactive")
    g.add(None, id="x")
    log = EventLog()
    run = open_run(g, workers=1, emit=log)
    thread = threading.Thread(target=run.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: "low" in log.tasks("task_submitted"), 10, "boss's children")
        why = run.engine.explain("x")
        assert why.code == "behind_higher_band" and why.details["first"] == "kid", why
        assert why.details["higher_band"] == 10
    finally:
        release.set()
        thread.join(60)
        run.close()
    assert log.tasks("task_started") == ["boss", "kid", "x", "low"]


def test_frontier_ages_a_waiting_best_effort_task_into_batch_once() -> None:
    """Aging (``ordering.AGE_AFTER_S``): a best-effort task ready that long orders as batch
    at its depth; a child that becomes ready later waits its own time."""
    from conveyor.core.frontier import Frontier
    from conveyor.core.ordering import AGE_AFTER_S

    f = Frontier()
    f.add(["e", "b1", "b2", "e2"], [[], [], [], ["b2"]], bands=[30, None, None, 30])
    assert f.age(0.0) == []
    assert f.age(AGE_AFTER_S / 2) == [], "not waited long enough"
    assert [f.ids[i] for i in f.age(AGE_AFTER_S * 1.5)] == ["e"]
    assert f.age(AGE_AFTER_S * 1.5 + 1) == [], "aged once"
    assert f.band_of(0) == 20 and f.band_of(3) == 30
    order = [f.pop() for _ in range(3)]
    assert [f.ids[i] for i in order if i is not None] == ["e", "b1", "b2"]
    f.complete(2)  # b2 done: e2 ready now, at 1.5 x AGE_AFTER_S
    assert f.pop() == 3  # (nothing else ready)
    f.requeue(3)  # given back: it waits again, still best effort
    assert f.age(AGE_AFTER_S * 2) == []
    assert [f.ids[i] for i in f.age(AGE_AFTER_S * 3)] == ["e2"]


def test_a_bad_graph_band_is_refused_naming_the_graph() -> None:
    with pytest.raises(GraphError, match=r"graph 'y'.*out of range"):
        conveyor.Graph("y", band=200)
