"""Preemption: which running tasks to take back so that ready tasks of a higher band start.
Pure: the state and ``now`` in, decisions out. The in-process engine acts on them
(``runtime/preemption.py``); docs/fairness.md states the rules for users.

When a ready task of a higher band fits a worker by labels and resources (``fits``) and no such
worker has a free slot, one running task on a fitting worker is chosen to make room:

1. only a task of a strictly lower band (a larger band number) than the waiting task;
2. not one preempted within ``min_interval_s`` (anti-thrash), and not one already preempted
   ``max_preemptions`` times (aging: after that it keeps its slot to the end, so best-effort
   work that keeps being started is never starved forever);
3. among those: **borrowed slots first** (a task of a group running beyond its fair share),
   then the **lowest band**, then one that **can be stopped** (a coroutine or a command, not a
   thread task that can only be asked), then the **most recently started**;
4. a gang is taken back whole: choosing one member takes every member (on any worker), and
   its slots count for the waiting tasks in order.

Waiting tasks are served best band first, then oldest ready. Each decision names the victims
(to cancel cooperatively and requeue with their original key, not counted against their
retries) and the waiting task they make room for. A waiting gang is not a trigger (only single
tasks are); the plan says where the other waiting tasks go and which still wait.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from conveyor.core.ordering import band_from
from conveyor.model import TaskState

#: A task is not preempted again within this many seconds of its last preemption.
MIN_INTERVAL_S = 60.0
#: After this many preemptions a task is not preempted any more.
MAX_PREEMPTIONS = 3


@dataclass(frozen=True, slots=True)
class RunningTask:
    task: str
    worker: str
    band: int
    started: float
    group: str = "default"
    gang: str | None = None
    borrowed: bool = False  # its group runs beyond its fair share (core/borrow.py)
    preempted_at: float | None = None  # its last preemption
    preemptions: int = 0
    #: It can be stopped from outside (a coroutine, a command); a thread task can only be
    #: asked, and keeps its slot until it returns.
    stoppable: bool = True


@dataclass(frozen=True, slots=True)
class WaitingTask:
    task: str
    band: int
    ready_since: float
    fits: frozenset[str]  # the workers whose labels and resources it fits


@dataclass(frozen=True, slots=True)
class Preemption:
    """Take back ``victims`` (a task, or a whole gang) so that ``waiting`` can start."""

    waiting: str
    victims: tuple[str, ...]
    worker: str  # where the slot for ``waiting`` frees


@dataclass(frozen=True, slots=True)
class PreemptPolicy:
    min_interval_s: float = MIN_INTERVAL_S
    max_preemptions: int = MAX_PREEMPTIONS


def protected(t: RunningTask, now: float, policy: PreemptPolicy) -> bool:
    """Whether ``t`` may not be preempted now (anti-thrash and aging)."""
    if t.preemptions >= policy.max_preemptions:
        return True
    return t.preempted_at is not None and now - t.preempted_at < policy.min_interval_s


def victim_order(t: RunningTask) -> tuple[bool, int, bool, float]:
    """Larger is taken first: borrowed, then lower band (larger number), then one that can be
    stopped (its slot frees now; a thread task may not look at its flag for long), then
    newer."""
    return (t.borrowed, t.band, t.stoppable, t.started)


@dataclass(slots=True)
class PreemptPlan:
    """The decisions: ``preemptions`` in order, where each waiting task without one goes
    (``placed``: on a free slot or one a gang's preemption freed) and who still waits."""

    preemptions: list[Preemption]
    placed: dict[str, str]
    left: list[str]


def choose_preemptions(
    waiting: Sequence[WaitingTask],
    running: Sequence[RunningTask],
    free_slots: Mapping[str, int],
    now: float,
    policy: PreemptPolicy = PreemptPolicy(),
) -> PreemptPlan:
    """The preemptions that let the waiting tasks of higher bands start, in order. A waiting
    task that fits a worker with a free slot needs none (admission places it). Slots a gang's
    preemption frees beyond the one it was taken for go to the next waiting tasks that fit
    them (an earlier one that fits would have taken the gang itself: its band is at least as
    high). O(w · r) for ``w`` waiting and ``r`` running tasks."""
    free = dict(free_slots)
    taken: set[str] = set()
    gangs: dict[str, list[RunningTask]] = {}
    for t in running:
        if t.gang is not None:
            gangs.setdefault(t.gang, []).append(t)
    plan = PreemptPlan([], {}, [])
    left: list[WaitingTask] = []  # waiting, in order, with nothing found
    for w in sorted(waiting, key=lambda w: (w.band, w.ready_since, w.task)):
        spot = next((k for k in sorted(w.fits) if free.get(k, 0) > 0), None)
        if spot is not None:
            free[spot] -= 1
            plan.placed[w.task] = spot
            continue
        best = _victim(w, running, taken, gangs, now, policy)
        if best is None:
            left.append(w)
            continue
        members = gangs[best.gang] if best.gang is not None else [best]
        for m in members:
            taken.add(m.task)
            free[m.worker] = free.get(m.worker, 0) + 1
        free[best.worker] -= 1  # the slot ``w`` takes
        plan.preemptions.append(
            Preemption(w.task, tuple(sorted(m.task for m in members)), best.worker)
        )
    plan.left = [w.task for w in left]
    return plan


def _victim(
    w: WaitingTask,
    running: Iterable[RunningTask],
    taken: set[str],
    gangs: Mapping[str, list[RunningTask]],
    now: float,
    policy: PreemptPolicy,
) -> RunningTask | None:
    best: RunningTask | None = None
    for t in running:
        if t.task in taken or t.worker not in w.fits or t.band <= w.band:
            continue
        if protected(t, now, policy):
            continue
        if t.gang is not None and any(
            m.band <= w.band or protected(m, now, policy) for m in gangs[t.gang]
        ):
            continue  # a gang goes whole or not at all
        if best is None or victim_order(t) > victim_order(best):
            best = t
    return best


def best_ready(
    heaps: Sequence[Sequence[tuple[int, ...]]], state: Sequence[int], below_band: int, limit: int
) -> list[tuple[int, int]]:
    """Up to ``limit`` ready single tasks of a band higher than ``below_band`` from key heaps
    (entries ``(rank, root_seq, index[, gang])``, maybe stale), best key first, as
    ``(index, band)``. Walks each heap's tree best first, so it costs O(k log k) for the k
    entries it looks at, not O(heap): a heap whose head is of ``below_band`` or lower costs
    one look. Gang entries are passed over (a waiting gang does not preempt)."""
    ready = TaskState.READY.value
    todo: list[tuple[tuple[int, ...], int, int]] = [(h[0], n, 0) for n, h in enumerate(heaps) if h]
    heapq.heapify(todo)
    out: list[tuple[int, int]] = []
    seen: set[int] = set()
    while todo and len(out) < limit:
        entry, n, pos = heapq.heappop(todo)
        band = band_from(entry[0])
        if band >= below_band:
            break  # every entry left (in every heap) has a key at least this one's
        i = entry[2]
        if len(entry) == 3 and state[i] == ready and i not in seen:
            seen.add(i)
            out.append((i, band))
        heap = heaps[n]
        for kid in (2 * pos + 1, 2 * pos + 2):
            if kid < len(heap):
                heapq.heappush(todo, (heap[kid], n, kid))
    return out
