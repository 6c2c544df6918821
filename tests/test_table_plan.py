"""``plan_table`` (the column DAG checked and laid out) and ``Table.plan()`` over it: one-line
errors naming the problem, the topological order that keeps declaration order where it can,
depths, the critical path, Mermaid."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor.core.tableplan import CELL, FULL_COLUMN, NodeDecl, plan_table
from conveyor.errors import CycleError, GraphError, UsageError
from conveyor.table.samplers import category
from conveyor.table.spec import Table

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def d(name: str, *deps: str, fields: tuple[str, ...] = (), strategy: str = CELL) -> NodeDecl:
    return NodeDecl(name, fields or (name,), deps, strategy)


# -- errors ----------------------------------------------------------------------------------


def cycle_message(*flow: str) -> set[str]:
    """The messages naming the cycle ``flow[0] -> flow[1] -> ... -> flow[0]`` (data flows
    along the arrows), starting anywhere on it."""
    out = set()
    for k in range(len(flow)):
        names = [*flow[k:], *flow[:k]]
        out.add("the table's columns form a cycle: " + " -> ".join([*names, names[0]]))
    return out


def test_cycle_is_named_in_the_direction_data_flows() -> None:
    with pytest.raises(CycleError) as e:  # c feeds a, a feeds b, b feeds c
        plan_table([d("x"), d("a", "c", "x"), d("b", "a"), d("c", "b"), d("y", "c")])
    assert str(e.value) in cycle_message("a", "b", "c")


def test_cycle_through_a_side_effect_column() -> None:
    with pytest.raises(CycleError) as e:
        plan_table([d("a", "b__trace"), d("b", "a", fields=("b", "b__trace"))])
    assert str(e.value) in cycle_message("a", "b")


def test_a_column_reading_itself_is_a_cycle() -> None:
    with pytest.raises(CycleError, match=r"cycle: a -> a$"):
        plan_table([d("x"), d("a", "x", "a__side", fields=("a", "a__side"))])


def test_unknown_dependency_is_named() -> None:
    with pytest.raises(GraphError) as e:
        plan_table([d("a"), d("b", "a", "nope")])
    msg = str(e.value)
    assert msg.startswith("column 'b' depends on 'nope', which no column fills")
    assert "(columns: a, b)" in msg and "\n" not in msg


def test_two_generators_claiming_one_side_effect_column() -> None:
    with pytest.raises(GraphError) as e:
        plan_table([d("a", fields=("a", "trace")), d("b", fields=("b", "trace"))])
    assert str(e.value) == "columns 'a' and 'b' both fill column 'trace'"


def test_a_side_effect_column_named_like_another_column() -> None:
    with pytest.raises(GraphError, match="columns 'b' and 'a' both fill column 'b'"):
        plan_table([d("b"), d("a", fields=("a", "b"))])


def test_a_column_declared_twice_and_a_bad_strategy() -> None:
    with pytest.raises(GraphError, match="column 'a' is declared twice"):
        plan_table([d("a"), d("a")])
    with pytest.raises(GraphError, match="strategy 'rows' is not one of cell, full_column"):
        plan_table([d("a", strategy="rows")])
    with pytest.raises(GraphError, match="no columns"):
        plan_table([])


# -- the same through Table ------------------------------------------------------------------


def test_table_deps_inferred_from_parameters_and_overridden() -> None:
    t = Table("t")
    t.sampler("topic", category(["a", "b"]))

    @t.column
    def question(topic: str, rng: Any, row_index: int) -> str:  # rng, row_index are given
        return topic

    @t.column(deps={"q": "question"})
    def answer(q: str) -> str:
        return q

    @t.column(deps=["answer", "topic"])  # reads topic without a parameter for it: order only
    def score(answer: str) -> int:
        return 1

    plan = t.plan()
    up = {n.name: sorted(plan.nodes[u].name for u in plan.up[i]) for i, n in enumerate(plan.nodes)}
    assert up == {"topic": [], "question": ["topic"], "answer": ["question"],
                  "score": ["answer", "topic"]}  # fmt: skip
    cols = {c.name: c for c in t.columns}
    assert cols["question"].given == ("rng", "row_index")
    assert cols["answer"].params == {"q": "question"}


def test_table_errors_before_any_generator_runs() -> None:
    calls: list[str] = []
    t = Table("t")

    @t.column(side_effects=["trace"])
    def a() -> dict[str, str]:
        calls.append("a")
        return {"a": "x", "trace": "y"}

    @t.column(side_effects=["trace"])
    def b() -> dict[str, str]:
        calls.append("b")
        return {"b": "x", "trace": "y"}

    with pytest.raises(GraphError, match="columns 'a' and 'b' both fill column 'trace'"):
        t.plan()
    c = Table("c")

    @c.column
    def x(y: int) -> int:
        calls.append("x")
        return y

    @c.column
    def y(x: int) -> int:
        calls.append("y")
        return x

    with pytest.raises(CycleError) as e:
        c.plan()
    assert str(e.value) in cycle_message("x", "y")
    with pytest.raises(UsageError, match="deps names 'z', which is not a parameter"):
        c.column(name="w", deps={"z": "x"})(lambda q: q)
    assert calls == []


# -- layout ----------------------------------------------------------------------------------


def test_topological_order_keeps_declaration_order_where_it_can() -> None:
    plan = plan_table([d("c", "b"), d("a"), d("b"), d("e"), d("d", "a")])
    assert [n.name for n in plan.nodes] == ["a", "b", "c", "e", "d"]
    assert plan.fields == ["a", "b", "c", "e", "d"]
    assert plan.depth == [0, 0, 1, 0, 1]


@st.composite
def dags(draw: st.DrawFn) -> list[NodeDecl]:
    n = draw(st.integers(1, 6))
    decls = []
    for i in range(n):
        deps = draw(st.sets(st.integers(0, i - 1), max_size=3)) if i else set()
        strategy = draw(st.sampled_from([CELL, FULL_COLUMN]))
        decls.append(d(f"n{i}", *(f"n{j}" for j in sorted(deps)), strategy=strategy))
    return draw(st.permutations(decls))


@PROPS
@given(dags())
def test_layout_against_brute_force(decls: list[NodeDecl]) -> None:
    """The order is the topological order whose declaration indices are lexicographically
    smallest; depth is the longest path from a root; the critical path is a longest chain."""
    plan = plan_table(decls)
    pos = {x.name: k for k, x in enumerate(decls)}
    ups = {x.name: set(x.deps) for x in decls}
    valid = [
        perm for perm in itertools.permutations(range(len(decls)))
        if all(ups[decls[b].name].isdisjoint(decls[a].name for a in perm[i + 1:])
               for i, b in enumerate(perm))
    ]  # fmt: skip
    assert [pos[x.name] for x in plan.nodes] == list(min(valid))
    names = [x.name for x in plan.nodes]
    depth: dict[str, int] = {}
    for name in names:  # a topological order: upstreams first
        depth[name] = 1 + max((depth[u] for u in ups[name]), default=-1)
    assert plan.depth == [depth[n] for n in names]
    assert [sorted(names[u] for u in plan.up[i]) for i in range(len(names))] == [
        sorted(ups[n]) for n in names
    ]
    for i, x in enumerate(plan.nodes):
        want_cell = sorted(j for j, y in enumerate(plan.nodes) if x.name in ups[y.name]
                           and y.strategy == CELL)  # fmt: skip
        want_batch = sorted(j for j, y in enumerate(plan.nodes) if x.name in ups[y.name]
                            and y.strategy == FULL_COLUMN)  # fmt: skip
        assert list(plan.down_cell[i]) == want_cell and list(plan.down_batch[i]) == want_batch
    path = plan.critical_path()
    assert len(path) == max(depth.values()) + 1
    assert all(a in ups[b] for a, b in itertools.pairwise(path)), "not a chain"
    assert not ups[path[0]]


def test_critical_path_and_tasks_per_group() -> None:
    plan = plan_table([
        d("topic"), d("q", "topic"), d("a", "q"), d("emb", "a", strategy=FULL_COLUMN),
        d("score", "a", "emb"), d("side", "topic"),
    ])  # fmt: skip
    assert plan.critical_path() == ["topic", "q", "a", "emb", "score"]
    assert [n.name for n in plan.nodes] == ["topic", "q", "a", "emb", "score", "side"]
    assert plan.tasks_per_group(7) == [7, 7, 7, 1, 7, 7]


def test_mermaid() -> None:
    plan = plan_table([
        d("topic", strategy=FULL_COLUMN), d("a", "topic", fields=("a", "a__trace")),
        d("b", "a__trace", "topic"),
    ])  # fmt: skip
    assert plan.mermaid() == "\n".join([
        "flowchart LR",
        '  n0("topic")',
        '  n1["a: a, a__trace"]',
        '  n2["b"]',
        "  n0 --> n1",
        "  n0 --> n2",
        "  n1 --> n2",
    ])  # fmt: skip


def test_endpoint_key_checked_when_the_column_is_declared() -> None:
    t = Table("t")

    def gen() -> int:
        return 1

    with pytest.raises(UsageError) as e:
        t.column(endpoint="api")(gen)
    assert str(e.value) == (
        "column 'gen': an endpoint key reads 'provider/model/domain', got 'api'"
    )
    t.column(endpoint="openai/gpt-4o/chat")(gen)


def test_given_parameters_match_the_strategy() -> None:
    t = Table("t")

    def cell(row_indices: list[int]) -> int:
        return 1

    def batch(row_index: int) -> list[int]:
        return [1]

    with pytest.raises(UsageError) as e:
        t.column(cell)
    assert str(e.value) == "column 'cell': a cell generator is given 'row_index', not 'row_indices'"
    with pytest.raises(UsageError) as e:
        t.column(strategy="full_column")(batch)
    assert str(e.value) == (
        "column 'batch': a full_column generator is given 'row_indices', not 'row_index'"
    )
    assert t.columns == []


def test_deps_list_must_feed_every_required_parameter() -> None:
    t = Table("t")

    def x() -> int:
        return 1

    def y(x: int, z: int) -> int:
        return x + z

    def w(x: int, z: int = 0) -> int:
        return x + z

    t.column(x)
    with pytest.raises(UsageError) as e:
        t.column(deps=["x"])(y)
    assert str(e.value) == (
        "column 'y': parameter 'z' is not among its deps ['x'] (name it there, map it with"
        " deps={parameter: column}, or give it a default)"
    )
    t.column(deps=["x"])(w)  # z has a default: not read from a column
    assert [c.name for c in t.columns] == ["x", "w"] and t.columns[1].deps == ("x",)


def test_a_column_named_like_a_given_parameter() -> None:
    t = Table("t")

    def gen() -> int:
        return 1

    with pytest.raises(UsageError) as e:
        t.column(name="rng")(gen)
    assert str(e.value) == (
        "column 'rng': 'rng' is a parameter generators are given (rng, row_index, row_indices),"
        " not a column name"
    )
    with pytest.raises(UsageError, match="column 'gen': 'row_index' is a parameter"):
        t.column(side_effects=["row_index"])(gen)
    with pytest.raises(UsageError, match="column 'row_indices': 'row_indices' is a parameter"):
        t.sampler("row_indices", category(["a"]))
    assert t.columns == []
