"""Properties of the pure victim choice (``core/preempt.py``)."""

from __future__ import annotations

import heapq

from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.core.ordering import band_from, rank_of
from conveyor.core.preempt import (
    PreemptPolicy,
    RunningTask,
    WaitingTask,
    best_ready,
    choose_preemptions,
    protected,
    victim_order,
)

WORKERS = ["w0", "w1", "w2"]
BANDS = [10, 20, 30, 15]
POLICY = PreemptPolicy(min_interval_s=60.0, max_preemptions=3)
NOW = 1000.0


@st.composite
def states(draw: st.DrawFn) -> tuple[list[WaitingTask], list[RunningTask], dict[str, int]]:
    running = []
    n_run = draw(st.integers(0, 12))
    gangs = draw(st.lists(st.sampled_from(["g1", "g2", None, None, None]), min_size=n_run,
                          max_size=n_run))  # fmt: skip
    for k in range(n_run):
        gang = gangs[k]
        last = draw(st.sampled_from([None, NOW - 10.0, NOW - 100.0]))
        running.append(RunningTask(
            f"r{k}", draw(st.sampled_from(WORKERS)), draw(st.sampled_from(BANDS)),
            draw(st.floats(0, NOW)), "default", gang, draw(st.booleans()), last,
            draw(st.integers(0, 4)) if last is not None else 0,
        ))  # fmt: skip
    waiting = [
        WaitingTask(f"q{k}", draw(st.sampled_from(BANDS)), draw(st.floats(0, NOW)),
                    frozenset(draw(st.sets(st.sampled_from(WORKERS), min_size=1))))
        for k in range(draw(st.integers(0, 6)))
    ]  # fmt: skip
    free = {w: draw(st.integers(0, 1)) for w in WORKERS}
    return waiting, running, free


PROPS = settings(max_examples=400, deadline=None)


def _gangs(running: list[RunningTask]) -> dict[str, list[RunningTask]]:
    gangs: dict[str, list[RunningTask]] = {}
    for t in running:
        if t.gang:
            gangs.setdefault(t.gang, []).append(t)
    return gangs


@PROPS
@given(state=states())
def test_victims_are_of_lower_bands_on_fitting_workers_and_unprotected(state) -> None:
    waiting, running, free = state
    by_id = {t.task: t for t in running}
    want = {w.task: w for w in waiting}
    seen: set[str] = set()
    for p in choose_preemptions(waiting, running, free, NOW, POLICY).preemptions:
        w = want[p.waiting]
        assert p.worker in w.fits
        victims = [by_id[v] for v in p.victims]
        assert any(v.worker == p.worker for v in victims)
        for v in victims:
            assert v.band > w.band, "only a strictly lower band is taken back"
            assert not protected(v, NOW, POLICY), "anti-thrash and aging hold"
            assert v.task not in seen, "a task is taken back once"
            seen.add(v.task)
        gang = victims[0].gang
        if gang is not None:  # a gang goes whole
            assert set(p.victims) == {t.task for t in running if t.gang == gang}
        else:
            assert len(victims) == 1


@PROPS
@given(state=states())
def test_a_higher_band_never_waits_while_a_lower_band_holds_a_slot_it_could_use(state) -> None:
    """Every waiting task is placed (on a fitting worker, within its slots: free ones, and
    those the preemptions free) or preempts, or else no slot is left on its fitting workers
    and every task there is of its band or higher, protected, or in a protected gang."""
    waiting, running, free = state
    plan = choose_preemptions(waiting, running, free, NOW, POLICY)
    want = {w.task: w for w in waiting}
    worker_of = {t.task: t.worker for t in running}
    served = [p.waiting for p in plan.preemptions]
    assert sorted([*served, *plan.placed, *plan.left]) == sorted(want)  # each task once
    capacity = dict(free)
    for p in plan.preemptions:
        for v in p.victims:
            capacity[worker_of[v]] = capacity.get(worker_of[v], 0) + 1
        capacity[p.worker] -= 1
    for task, worker in plan.placed.items():
        assert worker in want[task].fits
        capacity[worker] -= 1
    assert all(n >= 0 for n in capacity.values()), "no slot is given twice"
    taken = {v for p in plan.preemptions for v in p.victims}
    gangs = _gangs(running)
    for task in plan.left:
        w = want[task]
        assert all(capacity.get(k, 0) == 0 for k in w.fits), f"{task} waits beside a free slot"
        for t in running:
            if t.worker not in w.fits or t.task in taken:
                continue
            blocked = t.band <= w.band or protected(t, NOW, POLICY)
            if t.gang is not None:
                blocked = blocked or any(
                    m.band <= w.band or protected(m, NOW, POLICY) for m in gangs[t.gang]
                )
            assert blocked, f"{w.task} (band {w.band}) waits while {t.task} (band {t.band}) runs"


@PROPS
@given(state=states())
def test_borrowed_then_lowest_band_then_newest_is_taken_first(state) -> None:
    waiting, running, _free = state
    plan = choose_preemptions(waiting[:1], running, {w: 0 for w in WORKERS}, NOW, POLICY)
    if not plan.preemptions:
        return
    w = waiting[0]
    p = plan.preemptions[0]
    chosen = max((t for t in running if t.task in p.victims and t.worker == p.worker),
                 key=victim_order)  # fmt: skip
    gangs = _gangs(running)
    for t in running:
        eligible = t.worker in w.fits and t.band > w.band and not protected(t, NOW, POLICY)
        if t.gang is not None:
            eligible = eligible and all(
                m.band > w.band and not protected(m, NOW, POLICY) for m in gangs[t.gang]
            )
        if eligible:
            assert victim_order(t) <= victim_order(chosen), (t, chosen)


def test_a_waiting_task_with_a_free_fitting_slot_preempts_nothing() -> None:
    run = [RunningTask("low", "w0", 30, 5.0)]
    wait = [WaitingTask("hi", 10, 0.0, frozenset({"w0", "w1"}))]
    placed = choose_preemptions(wait, run, {"w0": 0, "w1": 1}, NOW)
    assert placed.preemptions == [] and placed.placed == {"hi": "w1"}
    got = choose_preemptions(wait, run, {"w0": 0, "w1": 0}, NOW).preemptions
    assert [(p.waiting, p.victims, p.worker) for p in got] == [("hi", ("low",), "w0")]


def test_of_one_band_a_task_that_can_be_stopped_goes_before_a_newer_thread_task() -> None:
    """A thread task can only be asked (it keeps its slot until it looks): a coroutine or a
    command of the same band is taken back first, even when it started earlier."""
    run = [RunningTask("cmd", "w0", 20, 1.0), RunningTask("thread", "w0", 20, 2.0, stoppable=False)]
    wait = [WaitingTask("hi", 10, 0.0, frozenset({"w0"}))]
    got = choose_preemptions(wait, run, {"w0": 0}, NOW).preemptions
    assert [p.victims for p in got] == [("cmd",)]
    lower = [*run, RunningTask("be-thread", "w0", 30, 0.5, stoppable=False)]
    got = choose_preemptions(wait, lower, {"w0": 0}, NOW).preemptions
    assert [p.victims for p in got] == [("be-thread",)], "the band comes first"


@st.composite
def key_heaps(draw: st.DrawFn) -> tuple[list[list[tuple[int, ...]]], list[int]]:
    """Heaps of keys ``(rank, root_seq, index[, gang])`` over one task table, with stale
    entries (tasks no longer ready) and gang entries, as the frontier's heaps hold them."""
    n = draw(st.integers(0, 30))
    state = [draw(st.sampled_from([0, 1, 1, 1, 2])) for _ in range(n)]  # pending/ready/running
    heaps: list[list[tuple[int, ...]]] = [[] for _ in range(draw(st.integers(1, 3)))]
    for i in range(n):
        band = draw(st.sampled_from([5, 10, 20, 30]))
        key: tuple[int, ...] = (rank_of(draw(st.integers(0, 5)), band), 0, i)
        if draw(st.integers(0, 9)) == 0:
            key = (*key, 1)  # a gang's entry
        heapq.heappush(heaps[draw(st.integers(0, len(heaps) - 1))], key)
    return heaps, state


@PROPS
@given(data=key_heaps(), below=st.sampled_from([5, 10, 20, 30, 100]), limit=st.integers(0, 8))
def test_best_ready_is_the_best_ready_single_tasks_of_higher_bands(data, below, limit) -> None:
    heaps, state = data
    want = sorted(
        e for h in heaps for e in h
        if len(e) == 3 and state[e[2]] == 1 and band_from(e[0]) < below
    )[:limit]  # fmt: skip
    got = best_ready(heaps, state, below, limit)
    assert got == [(e[2], band_from(e[0])) for e in want]
