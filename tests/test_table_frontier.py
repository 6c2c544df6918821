"""Hypothesis properties of the table builder's pure core: ``TablePlan`` + ``TableFrontier``
driven by a scheduler simulated here, checked against a model kept in the test.

The simulation opens row groups (a short last one, then extra full ones, as ``group_span`` lays
them out) up to ``in_flight`` at a time, some of them reopened as ``--update`` does (rows already
left out, generators whose values stand). At each step it hands out a task, completes a running
one (a value, a drop of its row, a batch leaving rows out or failing its whole group), puts one
back (a retry), or sends a late or duplicate completion. After every step the frontier must agree
with the model: what is ready (and the order it comes out in), which groups completed, and that a
completion that no longer matters returns ``False`` and changes nothing.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor.core.tablefrontier import GroupSpan, TableFrontier, group_span
from conveyor.core.tableplan import CELL, FULL_COLUMN, NodeDecl, TablePlan, plan_table

PROPS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- random tables ---------------------------------------------------------------------------


@st.composite
def tables(draw: st.DrawFn) -> list[NodeDecl]:
    """1-6 generators, cell or full_column, some filling a side-effect column, each reading
    fields of earlier ones (its own or their side effects), declared in a random order."""
    n = draw(st.integers(1, 6))
    decls: list[NodeDecl] = []
    for i in range(n):
        fields = (f"c{i}", f"c{i}__side") if draw(st.booleans()) else (f"c{i}",)
        earlier = [f for d in decls for f in d.fields]
        deps = draw(st.lists(st.sampled_from(earlier), max_size=3, unique=True)) if earlier else []
        strategy = draw(st.sampled_from([CELL, CELL, FULL_COLUMN]))
        decls.append(NodeDecl(f"c{i}", fields, tuple(deps), strategy))
    return draw(st.permutations(decls))


@dataclass
class Build:
    decls: list[NodeDecl]
    records: int
    size: int
    groups: int  # row groups to open in all (the planned ones, then extra full ones)
    in_flight: int
    buckets: list[int]
    seed: int


@st.composite
def builds(draw: st.DrawFn) -> Build:
    decls = draw(tables())
    size = draw(st.integers(1, 6))
    records = draw(st.integers(1, 3 * size))
    planned = -(-records // size)
    groups = planned + draw(st.integers(0, 2))
    return Build(
        decls, records, size, groups, in_flight=draw(st.integers(1, 3)),
        buckets=draw(st.lists(st.integers(0, 2), min_size=len(decls), max_size=len(decls))),
        seed=draw(st.integers(0, 2**32 - 1)),
    )  # fmt: skip


# -- the model -------------------------------------------------------------------------------

WAIT, HANDED, DONE = "wait", "handed", "done"


@dataclass
class GroupModel:
    span: GroupSpan
    alive: list[bool]
    preset: set[int]
    #: per cell node, the rows preset done (``done_rows``)
    preset_rows: dict[int, list[bool]] = field(default_factory=dict)
    #: successful completions per (cell node, row)
    computed: dict[tuple[int, int], int] = field(default_factory=dict)
    batch: dict[int, str] = field(default_factory=dict)
    batch_calls: dict[int, int] = field(default_factory=dict)
    dropped: list[tuple[int, int]] = field(default_factory=list)
    complete: bool = False

    @property
    def kept(self) -> int:
        return sum(self.alive)


class Model:
    """What the frontier should know, computed the slow and obvious way (scanning rows)."""

    def __init__(self, plan: TablePlan, frontier: TableFrontier) -> None:
        self.plan = plan
        self.f = frontier
        self.n = len(plan.nodes)
        self.cell = [plan.nodes[i].strategy == CELL for i in range(self.n)]
        self.groups: dict[int, GroupModel] = {}
        self.running: dict[int, tuple[int, int, int]] = {}  # key -> (group, node, row)
        self.handed_rows: dict[int, list[int]] = {}  # batch key -> rows it was given

    # readiness
    def cell_done(self, g: GroupModel, i: int, r: int) -> bool:
        if i in g.preset_rows and g.preset_rows[i][r]:
            return True
        return i in g.preset or g.computed.get((i, r), 0) > 0

    def batch_done(self, g: GroupModel, b: int) -> bool:
        return b in g.preset or g.batch[b] == DONE

    def upstream_done(self, g: GroupModel, i: int, row: int | None) -> bool:
        # a batch also waits for every kept row of the cell generators it settles on
        for u in (*self.plan.up[i], *self.plan.settle[i]):
            if not self.cell[u]:
                if not self.batch_done(g, u):
                    return False
            elif row is not None:
                if not self.cell_done(g, u, row):
                    return False
            elif not all(
                self.cell_done(g, u, r) for r in range(g.span.rows) if g.alive[r]
            ):  # a batch: every kept row of every upstream cell generator
                return False
        return True

    def ready(self) -> set[tuple[int, int, int]]:
        """Tasks ready to hand out, as ``(group, node, row)``."""
        out: set[tuple[int, int, int]] = set()
        running = set(self.running.values())
        for gi, g in self.groups.items():
            if g.complete:
                continue
            for i in range(self.n):
                if i in g.preset:
                    continue
                if self.cell[i]:
                    for r in range(g.span.rows):
                        k = (gi, i, r)
                        if (g.alive[r] and not self.cell_done(g, i, r) and k not in running
                                and self.upstream_done(g, i, r)):  # fmt: skip
                            out.add(k)
                else:
                    k = (gi, i, 0)
                    if (g.batch[i] == WAIT and g.kept > 0 and k not in running
                            and self.upstream_done(g, i, None)):  # fmt: skip
                        out.add(k)
        return out

    # events
    def settle(self, g: GroupModel) -> None:
        """A group with no kept row left: its batches finish without a call (upstream batches
        first); then is it complete?"""
        if g.kept == 0:
            for b in range(self.n):  # topological order
                if not self.cell[b] and g.batch[b] != DONE:
                    ups = [u for u in self.plan.up[b] if not self.cell[u]]
                    if all(self.batch_done(g, u) for u in ups):
                        g.batch[b] = DONE
        rows_done = all(
            self.cell_done(g, i, r)
            for i in range(self.n) if self.cell[i]
            for r in range(g.span.rows) if g.alive[r]
        )  # fmt: skip
        if rows_done and all(self.batch_done(g, b) for b in range(self.n) if not self.cell[b]):
            g.complete = True

    def drop_row(self, g: GroupModel, r: int, by: int) -> None:
        if g.alive[r]:
            g.alive[r] = False
            g.dropped.append((r, by))


def snapshot(f: TableFrontier) -> Any:
    """Everything a completion could change."""
    groups = {
        k: (
            bytes(g.alive), g.kept, [None if w is None else bytes(w) for w in g.waiting],
            [None if d is None else bytes(d) for d in g.done], list(g.pending), bytes(g.batch),
            g.remaining, list(g.dropped),
        )
        for k, g in f.groups.items()
    }  # fmt: skip
    heaps = {b: sorted(h) for b, h in f.heaps.items()}
    return groups, heaps, [g.span.group for g in f.completed]


# -- the simulation --------------------------------------------------------------------------


def simulate(b: Build) -> None:
    rnd = random.Random(b.seed)
    plan = plan_table(b.decls)
    buckets = [b.buckets[i] for i in range(len(plan.nodes))]
    f = TableFrontier(plan, buckets)
    m = Model(plan, f)
    n = m.n
    next_group = 0
    completed: list[int] = []
    finished_keys: list[int] = []  # keys that completed (cells and batches), for duplicates
    p_drop = rnd.choice([0.0, 0.1, 0.3, 0.6])
    p_fail = rnd.choice([0.0, 0.1, 0.3])

    def collect() -> None:
        for gs in f.take_completed():
            gi = gs.span.group
            g = m.groups[gi]
            assert gi not in completed, f"row group {gi} completed twice"
            m.settle(g)
            assert g.complete, f"row group {gi} handed over before it was complete"
            completed.append(gi)
            assert [bool(a) for a in gs.alive] == g.alive
            assert sorted(gs.dropped) == sorted(g.dropped)
            assert gi not in f.groups
        for gi, g in m.groups.items():
            m.settle(g)
            if g.complete:
                assert gi in completed, f"row group {gi} is complete but was not handed over"

    def open_more() -> None:
        nonlocal next_group
        while (
            next_group < b.groups and sum(not g.complete for g in m.groups.values()) < b.in_flight
        ):
            span = group_span(next_group, b.records, b.size)
            if next_group > 0:  # spans tile the rows, the planned groups' last one short
                prev = group_span(next_group - 1, b.records, b.size)
                assert span.start == prev.start + prev.rows
            if rnd.random() < 0.25:  # reopened by --update: some rows gone, some columns stand
                alive = [rnd.random() < 0.7 for _ in range(span.rows)]
                preset: set[int] = set()
                for i in range(n):  # upstream-closed, as fingerprints make it
                    if (all(u in preset for u in (*plan.up[i], *plan.settle[i]))
                            and rnd.random() < 0.5):  # fmt: skip
                        preset.add(i)
                rows: dict[int, list[bool]] = {}
                if rnd.random() < 0.5:  # revived rows: the cells stand for some rows only
                    known = [rnd.random() < 0.6 for _ in range(span.rows)]
                    rows = {i: known for i in preset if m.cell[i]}
                    preset -= set(rows)
                g = GroupModel(span, alive, preset, rows)
                g.batch = {i: WAIT for i in range(n) if not m.cell[i]}
                m.groups[span.group] = g
                f.open(span, done_nodes=preset, alive=bytearray(alive),
                       done_rows={i: bytearray(k) for i, k in rows.items()})  # fmt: skip
            else:
                g = GroupModel(span, [True] * span.rows, set())
                g.batch = {i: WAIT for i in range(n) if not m.cell[i]}
                m.groups[span.group] = g
                f.open(span)
            next_group += 1
            collect()

    def late(key: int, *, batch_rows: list[int] | None = None) -> None:
        """A completion that must not matter: ``False`` and nothing changes."""
        before = snapshot(f)
        group, node, row = f.decode(key)
        assert not f.live(key)
        if m.cell[node]:
            assert f.cell_done(key) is False
            g = m.groups.get(group)
            if g is None or g.complete or not g.alive[row]:  # a drop for it is refused too
                assert f.drop(group, row, node) is False
        else:
            assert f.batch_done(key, batch_rows or []) is False
        assert snapshot(f) == before

    def pop(block: bool) -> bool:
        blocked = {bk for bk in set(buckets) if block and rnd.random() < 0.3}
        want = [t for t in m.ready() if buckets[t[1]] not in blocked]
        key = f.pop(blocked)
        if key is None:
            assert not want, f"ready tasks not handed out: {sorted(want)}"
            return False
        gi, node, row = f.decode(key)
        # the best: older row group first, then deeper generator, then lower row
        best = min(want, key=lambda t: (t[0], -plan.depth[t[1]], t[2], t[1]))
        assert (gi, node, row) == best, f"handed out {(gi, node, row)} before {best}"
        assert f.key(gi, node, row) == key
        g = m.groups[gi]
        assert not g.complete and node not in g.preset
        assert key not in m.running, "a task handed out while it runs"
        if m.cell[node]:
            assert g.alive[row], "a dropped row's cell handed out"
            assert not m.cell_done(g, node, row), "a computed cell handed out again"
            assert m.upstream_done(g, node, row), "a cell handed out before its upstreams"
        else:
            assert g.batch[node] == WAIT
            assert m.upstream_done(g, node, None), "a batch before all its upstream rows"
            assert g.kept > 0
            rows = f.rows_of(gi)
            assert rows == [r for r in range(g.span.rows) if g.alive[r]], (
                "a batch sees dropped rows"
            )
            m.handed_rows[key] = rows
            g.batch[node] = HANDED
        m.running[key] = (gi, node, row)
        if m.cell[node] and rnd.random() < 0.4:
            run(gi, node, rnd.randint(1, 4))
        return True

    def run(gi: int, node: int, limit: int) -> None:
        """More cells of the generator just handed out, for one engine task (a run): the
        next ready ones of its bucket in order, while they are of that generator and group."""
        order = sorted(
            (t for t in m.ready() if buckets[t[1]] == buckets[node]),
            key=lambda t: (t[0], -plan.depth[t[1]], t[2], t[1]),
        )
        expected = []
        for t in order[:limit]:
            if t[:2] != (gi, node):
                break
            expected.append(t[2])
        got = f.pop_run(gi, node, limit)
        rows = [r for _, r in got]
        assert rows == expected[: len(rows)], f"run {rows}, not the next ready cells {expected}"
        if len(rows) < len(expected):  # only a stale entry of another task may end it early
            heap = f.heaps[buckets[node]]
            assert heap and not f.live(heap[0]), f"run {rows} stopped short of {expected}"
        for k, r in got:
            assert f.decode(k) == (gi, node, r)
            m.running[k] = (gi, node, r)

    def finish(key: int) -> None:
        gi, node, row = m.running.pop(key)
        g = m.groups[gi]
        if m.cell[node]:
            live = not g.complete and g.alive[row] and not m.cell_done(g, node, row)
            if not live:
                late(key)
                return
            if rnd.random() < p_drop:
                assert f.drop(gi, row, node) is True
                m.drop_row(g, row, node)
            else:
                assert f.cell_done(key) is True
                g.computed[(node, row)] = g.computed.get((node, row), 0) + 1
                finished_keys.append(key)
        else:
            rows = m.handed_rows.pop(key)
            live = not g.complete and g.batch[node] == HANDED
            if not live:
                late(key, batch_rows=rows)
                return
            if rnd.random() < p_fail:
                expect = g.kept
                assert f.drop_group(gi, node) == expect
                for r in range(g.span.rows):
                    m.drop_row(g, r, node)
                g.batch[node] = DONE
                g.batch_calls[node] = g.batch_calls.get(node, 0) + 1
            else:
                drops = [r for r in rows if rnd.random() < p_drop]
                assert f.batch_done(key, drops) is True
                for r in drops:
                    m.drop_row(g, r, node)
                g.batch[node] = DONE
                g.batch_calls[node] = g.batch_calls.get(node, 0) + 1
            finished_keys.append(key)
        collect()

    def retry(key: int) -> None:
        """The task goes back (a retry after backoff, a claim released unrun)."""
        m.running.pop(key)
        m.handed_rows.pop(key, None)
        gi, node, _ = f.decode(key)
        g = m.groups[gi]
        if not m.cell[node]:
            if g.complete or g.batch[node] != HANDED:
                return  # finished meanwhile (its rows all dropped): nothing to retry
            g.batch[node] = WAIT
        f.push(key)

    def junk() -> None:
        """A late completion for a finished or unknown row group, or a duplicate."""
        choice = rnd.random()
        if choice < 0.4 and finished_keys:
            late(rnd.choice(finished_keys))
        elif choice < 0.7 and completed:
            gi = rnd.choice(completed)
            node = rnd.randrange(n)
            row = rnd.randrange(m.groups[gi].span.rows) if m.cell[node] else 0
            late(f.key(gi, node, row))
            assert f.drop_group(gi, node) == 0
        else:
            gi = b.groups + rnd.randrange(1, 5)  # never opened
            late(f.key(gi, rnd.randrange(n), 0))
            assert f.drop_group(gi, 0) == 0

    open_more()
    steps = 0
    while True:
        steps += 1
        assert steps < 20_000
        r = rnd.random()
        if r < 0.03:
            junk()
            continue
        if r < 0.5 or not m.running:
            if pop(block=bool(m.running)):
                continue
            if not m.running:  # nothing ready, nothing running: the build must be over
                assert next_group == b.groups and not f.groups, (
                    f"stalled: groups {sorted(f.groups)} open with nothing ready or running"
                )
                break
        key = rnd.choice(sorted(m.running))
        if r < 0.95:
            finish(key)
        else:
            retry(key)
        open_more()

    # every row group completed exactly once, in the order the model expects
    assert sorted(completed) == list(range(b.groups))
    assert all(not f.live(k) for h in f.heaps.values() for k in h)
    for gi, g in m.groups.items():
        for i in range(n):
            if i in g.preset:
                continue
            if m.cell[i]:
                for r in range(g.span.rows):
                    got = g.computed.get((i, r), 0)
                    if i in g.preset_rows and g.preset_rows[i][r]:
                        assert got == 0, f"preset cell {(gi, i, r)} computed {got} times"
                    elif g.alive[r]:
                        assert got == 1, f"kept cell {(gi, i, r)} computed {got} times"
                    else:
                        assert got <= 1
            else:
                calls = g.batch_calls.get(i, 0)
                assert calls <= 1, f"batch {(gi, i)} computed {calls} times"
                if any(g.alive):
                    assert calls == 1, f"batch {(gi, i)} of a group with kept rows never ran"


@PROPS
@given(builds())
def test_simulated_builds(b: Build) -> None:
    simulate(b)


# -- targeted cases (the Data Designer ExecutionGraph review pitfalls) -----------------------


def _plan(*decls: NodeDecl) -> TablePlan:
    return plan_table(list(decls))


def _drain(f: TableFrontier) -> list[tuple[int, int, int]]:
    out = []
    while (k := f.pop()) is not None:
        out.append(f.decode(k))
    return out


def test_full_column_waits_for_every_kept_row_not_one_cell() -> None:
    plan = _plan(NodeDecl("a", ("a",), ()), NodeDecl("b", ("b",), ("a",), FULL_COLUMN))
    f = TableFrontier(plan)
    f.open(GroupSpan(0, 0, 3))
    keys = [f.pop() for _ in range(3)]
    assert None not in keys and f.pop() is None
    assert f.cell_done(keys[0]) is True  # type: ignore[arg-type]
    assert f.pop() is None, "the batch was handed out after one upstream cell"
    assert f.cell_done(keys[0]) is False  # a duplicate does not count twice  # type: ignore[arg-type]
    assert f.pop() is None
    assert f.cell_done(keys[1]) is True  # type: ignore[arg-type]
    assert f.pop() is None
    assert f.drop(0, 2, 0) is True  # the last row dropped: the batch runs over rows 0 and 1
    batch = f.pop()
    assert batch is not None and f.decode(batch) == (0, 1, 0)
    assert f.rows_of(0) == [0, 1]


def test_short_last_group_and_extra_groups() -> None:
    assert [group_span(g, 10, 4) for g in range(5)] == [
        GroupSpan(0, 0, 4), GroupSpan(1, 4, 4), GroupSpan(2, 8, 2),
        GroupSpan(3, 10, 4), GroupSpan(4, 14, 4),
    ]  # fmt: skip
    plan = _plan(NodeDecl("a", ("a",), ()), NodeDecl("b", ("b",), ("a",), FULL_COLUMN))
    f = TableFrontier(plan)
    f.open(group_span(2, 10, 4))
    got = _drain(f)
    assert got == [(2, 0, 0), (2, 0, 1)]
    for g, node, row in got:
        f.cell_done(f.key(g, node, row))
    assert _drain(f) == [(2, 1, 0)]
    assert f.rows_of(2) == [0, 1]
    assert f.batch_done(f.key(2, 1, 0)) is True
    assert [g.span for g in f.take_completed()] == [GroupSpan(2, 8, 2)]


def test_late_completion_for_unknown_or_finished_group() -> None:
    plan = _plan(NodeDecl("a", ("a",), ()), NodeDecl("b", ("b",), ("a",), FULL_COLUMN))
    f = TableFrontier(plan)
    assert f.cell_done(f.key(7, 0, 0)) is False
    assert f.batch_done(f.key(7, 1, 0)) is False
    assert f.drop(7, 0, 0) is False
    f.open(GroupSpan(0, 0, 1))
    k = f.pop()
    assert k is not None and f.cell_done(k) is True
    bk = f.pop()
    assert bk is not None and f.batch_done(bk) is True
    assert [g.span.group for g in f.take_completed()] == [0]
    before = snapshot(f)
    assert f.cell_done(k) is False
    assert f.batch_done(bk) is False
    assert f.drop(0, 0, 0) is False
    assert f.drop_group(0, 1) == 0
    assert snapshot(f) == before and f.take_completed() == []


def test_batch_leaving_out_every_row_completes_its_group() -> None:
    """A full_column generator that drops every row it was given: its group completes once
    (the batch is not counted finished twice)."""
    plan = _plan(NodeDecl("a", ("a",), (), FULL_COLUMN), NodeDecl("b", ("b",), ("a",)))
    f = TableFrontier(plan)
    f.open(GroupSpan(0, 0, 2))
    bk = f.pop()
    assert bk is not None
    assert f.batch_done(bk, [0, 1]) is True
    done = f.take_completed()
    assert [g.span.group for g in done] == [0] and done[0].kept == 0
    assert f.pop() is None and not f.groups


def test_group_reopened_without_kept_rows_completes_at_once() -> None:
    """``--update`` of a row group whose rows were all dropped: its full_column generators
    downstream of cell ones have no row to wait for, and the group completes on open."""
    plan = _plan(NodeDecl("a", ("a",), ()), NodeDecl("b", ("b",), ("a",), FULL_COLUMN))
    f = TableFrontier(plan)
    f.open(GroupSpan(0, 0, 3), alive=bytearray(3))
    assert [g.span.group for g in f.take_completed()] == [0]
    assert f.pop() is None and not f.groups


def test_done_rows_preset_some_rows_of_a_generator() -> None:
    """``--update`` reviving rows: ``a`` and ``b`` stand for rows 1 and 3 only, ``c`` is
    computed for every kept row, ``d`` (a full_column over ``c``) once they are all done.
    Row 2 stays left out. Only the revived rows' ``a`` and ``b`` cells come out."""
    plan = _plan(
        NodeDecl("a", ("a",), ()), NodeDecl("b", ("b",), ("a",)),
        NodeDecl("c", ("c",), ("b",)), NodeDecl("d", ("d",), ("c",), FULL_COLUMN),
    )  # fmt: skip
    f = TableFrontier(plan)
    known = bytearray([0, 1, 0, 1])
    f.open(GroupSpan(0, 0, 4), alive=bytearray([1, 1, 0, 1]), done_rows={0: known, 1: known})
    g = f.groups[0]
    assert g.remaining == 3 * 3 - 4 + 1  # 3 cell generators x 3 kept rows, 4 preset, 1 batch
    got = _drain(f)
    assert sorted(got) == [(0, 0, 0), (0, 2, 1), (0, 2, 3)]  # row 0's a; c where b stands
    for t in got:
        f.cell_done(f.key(*t))
    assert _drain(f) == [(0, 1, 0)]
    f.cell_done(f.key(0, 1, 0))
    assert _drain(f) == [(0, 2, 0)]
    f.cell_done(f.key(0, 2, 0))
    assert _drain(f) == [(0, 3, 0)] and f.rows_of(0) == [0, 1, 3]
    assert f.batch_done(f.key(0, 3, 0)) is True
    assert [c.span.group for c in f.take_completed()] == [0]


def test_done_rows_only_for_cell_generators() -> None:
    plan = _plan(NodeDecl("a", ("a",), ()), NodeDecl("b", ("b",), ("a",), FULL_COLUMN))
    f = TableFrontier(plan)
    with pytest.raises(ValueError, match="is a batch"):
        f.open(GroupSpan(0, 0, 2), done_rows={1: bytearray(2)})
    with pytest.raises(ValueError, match="mask has 3 rows"):
        f.open(GroupSpan(0, 0, 2), done_rows={0: bytearray(3)})
