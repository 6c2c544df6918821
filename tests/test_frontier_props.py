"""Hypothesis properties of the pure core: ``Frontier`` (readiness + depth-first heap) and
``layout`` (validation + depths), checked against an independent model kept in the test."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import networkx as nx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor.core.dag import layout
from conveyor.core.frontier import Frontier
from conveyor.errors import CycleError, GraphError
from conveyor.model import TaskState
from helpers import nx_depths

PROPS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FINAL = {TaskState.DONE, TaskState.FAILED, TaskState.SKIPPED}


@st.composite
def dags(draw: st.DrawFn, max_n: int = 24, prefix: str = "t") -> tuple[list[str], list[list[str]]]:
    """A random DAG given in a random submission order: (ids, parents per task)."""
    n = draw(st.integers(1, max_n))
    topo_parents = [
        sorted(draw(st.sets(st.integers(0, i - 1), max_size=min(i, 4)))) if i else []
        for i in range(n)
    ]
    perm = draw(st.permutations(range(n)))
    ids = [f"{prefix}{perm[k]}" for k in range(n)]
    parents = [[f"{prefix}{p}" for p in topo_parents[perm[k]]] for k in range(n)]
    return ids, parents


@dataclass
class Model:
    """What the frontier should know, computed the slow and obvious way."""

    ids: list[str] = field(default_factory=list)
    parents: list[list[int]] = field(default_factory=list)
    depth: list[int] = field(default_factory=list)
    root: list[int] = field(default_factory=list)
    status: list[str] = field(default_factory=list)  # open, running, retry, done, failed, skipped
    not_before: dict[int, float] = field(default_factory=dict)
    roots: int = 0

    def add(self, ids: Sequence[str], parents: Sequence[Sequence[str]], submitter: int | None):
        index = {t: i for i, t in enumerate(self.ids)}
        first = len(self.ids)
        index.update({t: first + k for k, t in enumerate(ids)})
        if submitter is None:
            self.roots += 1
            base, root = 0, self.roots
        else:
            base, root = self.depth[submitter] + 1, self.root[submitter]
        self.ids.extend(ids)
        self.parents.extend([sorted({index[p] for p in ps}) for ps in parents])
        self.depth.extend([-1] * len(ids))
        self.root.extend([root] * len(ids))
        self.status.extend(["open"] * len(ids))

        def depth_of(i: int) -> int:
            if self.depth[i] < 0:
                ps = self.parents[i]
                self.depth[i] = max([base, *(1 + depth_of(p) for p in ps)])
            return self.depth[i]

        for k in range(len(ids)):
            depth_of(first + k)
        return list(range(first, first + len(ids)))

    def key(self, i: int) -> tuple[int, int, int]:
        return (-self.depth[i], self.root[i], i)

    def ready(self) -> set[int]:
        return {
            i
            for i, s in enumerate(self.status)
            if s == "open" and all(self.status[p] == "done" for p in self.parents[i])
        }

    def best(self) -> int | None:
        r = self.ready()
        return min(r, key=self.key) if r else None

    def descendants(self, i: int) -> set[int]:
        kids: dict[int, list[int]] = {}
        for c, ps in enumerate(self.parents):
            for p in ps:
                kids.setdefault(p, []).append(c)
        out: set[int] = set()
        stack = list(kids.get(i, ()))
        while stack:
            c = stack.pop()
            if c not in out:
                out.add(c)
                stack.extend(kids.get(c, ()))
        return out


def check_counts(f: Frontier) -> None:
    for s in TaskState:
        assert f.counts[s.value] == f.state.count(s.value), s
    assert sum(f.counts) == len(f.ids)


# -- readiness: exactly once, parents first
@PROPS
@given(dag=dags(), data=st.data())
def test_frontier_random_interleaving_pops_each_task_once_after_parents(dag, data) -> None:
    ids, parents = dag
    f = Frontier()
    model = Model()
    model.add(ids, parents, None)
    new, ready = f.add(ids, parents)
    assert new == list(range(len(ids)))
    assert set(ready) == model.ready()
    running: list[int] = []
    popped: list[int] = []
    while running or f.ready_count():
        if running and (not f.ready_count() or data.draw(st.booleans(), label="finish")):
            i = running.pop(data.draw(st.integers(0, len(running) - 1), label="which"))
            before = model.ready()
            model.status[i] = "done"
            assert set(f.complete(i)) == model.ready() - before
        else:
            i = f.pop()
            assert i is not None
            # only after every parent completed, and the best key among the ready ones
            assert all(model.status[p] == "done" for p in model.parents[i])
            assert i == model.best()
            model.status[i] = "running"
            popped.append(i)
            running.append(i)
        check_counts(f)
    assert sorted(popped) == list(range(len(ids)))
    assert f.pop() is None
    assert f.unfinished() == 0
    assert set(f.state) == {TaskState.DONE.value}


@PROPS
@given(dag=dags())
def test_layout_random_dag_depth_equals_networkx_longest_path(dag) -> None:
    ids, parents = dag
    expected = nx_depths(ids, parents)
    lay = layout(ids, parents)
    assert dict(zip(ids, lay.depth, strict=True)) == expected
    f = Frontier()
    f.add(ids, parents)
    assert {t: f.depth[f.index[t]] for t in ids} == expected


# -- one worker: the start order is the key order, with roots and run-time children
@PROPS
@given(first=dags(max_n=12, prefix="a"), data=st.data())
def test_frontier_one_worker_pop_order_is_min_key_at_every_step(first, data) -> None:
    f = Frontier()
    model = Model()
    model.add(*first, None)
    f.add(*first)
    batches = 0
    steps = 0
    while True:
        action = data.draw(st.sampled_from(["step", "step", "step", "root", "child"]))
        if action == "root" and batches < 3:
            batches += 1
            ids, parents = data.draw(dags(max_n=8, prefix=f"r{batches}."))
            if data.draw(st.booleans()):  # a parent in an earlier graph, done or not
                parents[0] = [*parents[0], data.draw(st.sampled_from(model.ids))]
            model.add(ids, parents, None)
            f.add(ids, parents)
            continue
        i = f.pop()
        assert i == model.best()
        steps += 1
        if i is None:
            if batches >= 3 or steps > 200:
                break
            continue
        model.status[i] = "running"
        if action == "child" and batches < 6:
            batches += 1
            ids, parents = data.draw(dags(max_n=5, prefix=f"c{batches}."))
            if data.draw(st.booleans()):
                parents[-1] = [*parents[-1], data.draw(st.sampled_from(model.ids))]
            new = model.add(ids, parents, submitter=i)
            assert f.add(ids, parents, submitter=i)[0] == new
        model.status[i] = "done"
        f.complete(i)
        check_counts(f)
    assert f.depth == model.depth
    assert f.root_seq == model.root
    assert set(model.status) == {"done"}
    assert f.unfinished() == 0


def test_frontier_equal_depth_and_root_pops_in_submission_order() -> None:
    f = Frontier()
    # a, b roots; c waits on b, d waits on a: d becomes ready first, c was submitted first
    f.add(["a", "b", "c", "d"], [[], [], ["b"], ["a"]])
    a, b = f.pop(), f.pop()
    assert (a, b) == (0, 1)
    assert f.complete(a) == [3]
    assert f.complete(b) == [2]
    assert [f.ids[f.pop()], f.ids[f.pop()]] == ["c", "d"]


def test_frontier_many_roots_pop_fifo() -> None:
    f = Frontier()
    ids = [f"r{i}" for i in range(50)]
    f.add(ids, [[] for _ in ids])
    order = []
    while (i := f.pop()) is not None:
        order.append(f.ids[i])
        f.complete(i)
    assert order == ids


def test_frontier_deeper_task_of_newer_root_beats_shallower_older_root() -> None:
    f = Frontier()
    f.add(["old1", "old2"], [[], []])
    f.add(["new1", "new2"], [[], ["new1"]])
    assert f.ids[f.pop()] == "old1"  # same depth: older root first
    f.complete(0)
    assert f.ids[f.pop()] == "old2"
    f.complete(1)
    i = f.pop()
    assert f.ids[i] == "new1"
    f.complete(i)
    assert f.ids[f.pop()] == "new2"


# -- run-time children --
def test_frontier_runtime_child_job_gets_submitter_depth_plus_one_and_root_seq() -> None:
    f = Frontier()
    f.add(["a", "b", "c"], [[], ["a"], ["b"]])
    f.add(["x"], [[]])  # a newer root graph
    order = []
    for _ in range(2):
        i = f.pop()
        order.append(f.ids[i])
        f.complete(i)
    c = f.pop()
    assert f.ids[c] == "c" and f.depth[c] == 2
    new, ready = f.add(["c/1", "c/2", "c/3"], [[], ["c/1"], ["c/1", "x"]], submitter=c)
    assert [f.depth[i] for i in new] == [3, 4, 4]
    assert [f.root_seq[i] for i in new] == [1, 1, 1]
    assert f.root_seq[f.index["x"]] == 2
    assert ready == [new[0]]
    f.complete(c)
    assert f.ids[f.pop()] == "c/1"  # deeper work of the older root before the newer root


def test_frontier_child_depending_on_failed_task_is_skipped_at_once() -> None:
    f = Frontier()
    f.add(["a", "b"], [[], []])
    a = f.pop()
    assert f.fail(a) == []
    b = f.pop()
    new, ready = f.add(["b/1"], [["a"]], submitter=b)
    assert ready == []
    assert f.state[new[0]] == TaskState.SKIPPED.value
    check_counts(f)


# -- failure injection --
@PROPS
@given(dag=dags(), data=st.data())
def test_frontier_failure_injection_never_loses_or_duplicates_a_task(dag, data) -> None:
    ids, parents = dag
    f = Frontier()
    model = Model()
    model.add(ids, parents, None)
    f.add(ids, parents)
    now = 0.0
    pops = [0] * len(ids)
    retries = [0] * len(ids)
    failed: set[int] = set()
    while f.unfinished():
        i = f.pop()
        if i is None:
            due = f.next_due()
            assert due is not None, "unfinished tasks but nothing ready, running or waiting"
            assert due == min(model.not_before.values())
            now = max(now, due)
            expected = {k for k, nb in model.not_before.items() if nb <= now}
            released = f.release_due(now)
            assert set(released) == expected and len(released) == len(expected)
            for k in released:
                del model.not_before[k]
                model.status[k] = "open"
            check_counts(f)
            continue
        assert model.status[i] == "open"
        assert i == model.best()  # requeued and released tasks keep their original key
        model.status[i] = "running"
        pops[i] += 1
        choices = ["complete", "fail"] + (["defer", "requeue"] if retries[i] < 3 else [])
        action = data.draw(st.sampled_from(choices), label="action")
        if action == "complete":
            model.status[i] = "done"
            f.complete(i)
        elif action == "fail":
            expected = {k for k in model.descendants(i) if model.status[k] != "skipped"}
            skipped = f.fail(i)
            assert len(skipped) == len(set(skipped)) and set(skipped) == expected
            model.status[i] = "failed"
            failed.add(i)
            for k in skipped:
                model.status[k] = "skipped"
                model.not_before.pop(k, None)
        elif action == "defer":
            retries[i] += 1
            nb = now + data.draw(st.integers(0, 3), label="backoff")
            f.defer(i, nb)
            model.status[i] = "retry"
            model.not_before[i] = nb
        else:
            retries[i] += 1
            f.requeue(i)
            model.status[i] = "open"
        check_counts(f)
    states = [TaskState(s) for s in f.state]
    assert all(s in FINAL for s in states)
    skipped_expected = set().union(*(model.descendants(k) for k in failed)) - failed
    assert {i for i, s in enumerate(states) if s is TaskState.FAILED} == failed
    assert {i for i, s in enumerate(states) if s is TaskState.SKIPPED} == skipped_expected
    for i, s in enumerate(states):
        # popped once per attempt; a skipped task never ran
        assert pops[i] == (0 if s is TaskState.SKIPPED else 1 + retries[i])
    assert f.pop() is None and f.next_due() is None


# -- bad graphs --
@PROPS
@given(dag=dags(max_n=16), data=st.data())
def test_layout_cycle_raises_cycle_error_naming_a_real_cycle(dag, data) -> None:
    ids, parents = dag
    g = nx.DiGraph()
    g.add_nodes_from(ids)
    for t, ps in zip(ids, parents, strict=True):
        g.add_edges_from((p, t) for p in ps)
    b = data.draw(st.sampled_from(ids))
    a = data.draw(st.sampled_from(sorted(nx.ancestors(g, b) | {b})))
    parents = [list(ps) for ps in parents]
    parents[ids.index(a)].append(b)  # b -> a closes a cycle a ->* b -> a
    edges = {(p, t) for t, ps in zip(ids, parents, strict=True) for p in ps}
    with pytest.raises(CycleError) as info:
        layout(ids, parents)
    cycle = info.value.cycle
    assert cycle and len(set(cycle)) == len(cycle)
    for x, y in zip(cycle, [*cycle[1:], cycle[0]], strict=True):
        assert (x, y) in edges, f"{x} -> {y} is not an edge of the graph"
    assert all(t in str(info.value) for t in cycle)
    f = Frontier()
    with pytest.raises(CycleError):
        f.add(ids, parents)
    assert f.ids == [] and f.index == {} and f.pop() is None and f.roots_submitted == 0


@PROPS
@given(dag=dags(max_n=12), data=st.data())
def test_layout_duplicate_id_raises_graph_error(dag, data) -> None:
    ids, parents = dag
    dup = data.draw(st.sampled_from(ids))
    with pytest.raises(GraphError, match="duplicate"):
        layout([*ids, dup], [*parents, []])


@PROPS
@given(dag=dags(max_n=12), data=st.data())
def test_layout_unknown_parent_raises_graph_error_naming_it(dag, data) -> None:
    ids, parents = dag
    k = data.draw(st.integers(0, len(ids) - 1))
    parents = [list(ps) for ps in parents]
    parents[k].append("nope")
    with pytest.raises(GraphError, match="'nope'") as info:
        layout(ids, parents)
    assert not isinstance(info.value, CycleError)


def test_frontier_second_batch_with_existing_id_raises_and_changes_nothing() -> None:
    f = Frontier()
    f.add(["a", "b"], [[], ["a"]])
    with pytest.raises(GraphError, match="duplicate task id 'b'"):
        f.add(["c", "b"], [[], []])
    with pytest.raises(GraphError, match="unknown task 'zz'"):
        f.add(["c"], [["zz"]], submitter=0)
    assert f.ids == ["a", "b"] and f.roots_submitted == 1
    assert len(f.state) == 2 and f.ready_count() == 1
    check_counts(f)


def test_frontier_self_dependency_raises_cycle_error() -> None:
    with pytest.raises(CycleError) as info:
        layout(["a", "b"], [[], ["b"]])
    assert info.value.cycle == ["b"]


@pytest.mark.parametrize("bands", [None, [10, 30, None, 99, 20]])
def test_ready_heap_entries_are_the_ordering_key(bands: list[int | None] | None) -> None:
    """The hot loop writes the key inline: every entry it pushes equals ``priority_key`` (with
    the task's band when bands are in use)."""
    from conveyor.core.ordering import priority_key

    f = Frontier()
    ids = ["a", "b", "c", "d", "e"]
    f.add(ids, [(), ("a",), ("a",), ("b", "c"), ()], bands=bands)
    done = f.pop()  # "a" (the best key of the two roots): b and c become ready
    assert done is not None
    f.complete(done)
    entries = list(f.heap_keys())
    assert len(entries) >= 2
    for entry in entries:
        i = entry[2]
        assert entry == priority_key(f.depth[i], f.root_seq[i], i, f.band_of(i))


# -- no-ops finished in one loop: the same order and states as pop + complete, one by one
@PROPS
@given(dag=dags(), data=st.data())
def test_finish_ready_matches_pop_then_complete_step_by_step(dag, data) -> None:
    """``finish_ready`` finishes tasks in the order ``pop``/``complete`` would, leaves the
    frontier in the same state, and stops at the first ready task ``real`` names (leaving it
    ready at the head) or after ``limit`` tasks; a child job's extra edges are followed."""
    ids, parents = dag
    real = set(data.draw(st.sets(st.integers(0, len(ids) - 1), max_size=3), label="real"))
    fast, slow = Frontier(), Frontier()
    fast.add(ids, parents)
    slow.add(ids, parents)
    if data.draw(st.booleans(), label="child job"):  # an edge outside the flat arrays
        i = fast.pop()
        assert i is not None and slow.pop() == i
        kids = ([f"k{i}"], [[ids[-1]]])  # waits on the last task too
        fast.add(*kids, submitter=i)
        slow.add(*kids, submitter=i)
        fast.complete(i)
        slow.complete(i)
    while fast.ready_count():
        limit = data.draw(st.integers(1, len(ids) + 1), label="limit")
        # (no real task: ``None``, which takes the int-keyed loop when the limit allows)
        got = fast.finish_ready(limit, real.__contains__ if real else None)
        expected: list[int] = []
        while len(expected) < limit:
            head = slow.pop()
            if head is None:
                break
            if head in real:
                slow.requeue(head)
                break
            expected.append(head)
            slow.complete(head)
        assert got == expected
        assert fast.state == slow.state and fast.counts == slow.counts
        assert fast.waiting == slow.waiting
        check_counts(fast)
        if not got:  # a real task heads the ready order: it runs as usual
            i = fast.pop()
            assert i is not None and i in real and slow.pop() == i
            fast.complete(i)
            slow.complete(i)
    assert fast.unfinished() == 0 and slow.unfinished() == 0


def test_finish_ready_does_nothing_with_bands_or_admission() -> None:
    """Bands and admission keep their own keys and queues: those runs claim one by one."""
    f = Frontier()
    f.add(["a", "b"], [(), ("a",)], bands=[10, 20])
    assert f.finish_ready(10) == []
    assert f.counts[TaskState.READY.value] == 1


def test_finish_ready_of_no_ops_leaves_a_task_cancelled_while_ready() -> None:
    """The int-keyed loop (no ``real``, one graph) drops the heap entries of tasks cancelled
    or skipped while ready, as ``pop`` does, and finishes the rest in key order."""
    f = Frontier()
    f.add(["a", "b", "c", "d"], [(), (), ("a",), ("b",)])
    f.cancel(1)  # b: ready, cancelled before it ran (its entry stays in the heap)
    assert f.finish_ready(100) == [0, 2]  # a, then its child c (deeper) before anything else
    assert f.state[1] == TaskState.CANCELLED.value and f.state[3] == TaskState.PENDING.value
    check_counts(f)


def test_packed_heap_keeps_the_key_order_when_a_batch_outgrows_its_fields() -> None:
    """Ready entries pushed while the fields were narrow (2 tasks, 1 root) keep their order
    after later graphs need wider index and root fields: every pop is the best key left."""
    from conveyor.core.ordering import priority_key

    f = Frontier()
    f.add(["a", "b"], [(), ()])  # both ready, packed for 2 tasks of one root
    for r in range(1, 6):  # 5 more roots of 7 tasks each: index and root fields grow
        ids = [f"r{r}.{k}" for k in range(7)]
        f.add(ids, [()] + [[ids[k - 1]] for k in range(1, 7)])
    order = []
    while (i := f.pop()) is not None:
        ready = [j for j in range(len(f.ids)) if f.state[j] == TaskState.READY.value]
        assert all(priority_key(f.depth[i], f.root_seq[i], i) < f.key(j) for j in ready)
        order.append(f.ids[i])
        f.complete(i)
    assert order[:3] == ["a", "b", "r1.0"] and len(order) == 37
