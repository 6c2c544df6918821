"""The discrete-event simulation: the engine's pure core on a simulated clock.

What decides is the engine's own code: ``core.frontier.Frontier`` (readiness, the depth-first
heap), and, when the graph needs it or another policy is asked, ``core.admission`` (the
per-shape heaps, weighted fair share between groups, group caps, gangs) through
``Frontier.pick`` with an ``Offer`` per worker, exactly as ``MemoryStore.claim`` calls it.
What is simulated is only time: a started task finishes ``duration / speed`` seconds later, an
event on a heap. Nothing here reads a clock, starts a thread or sleeps; the same input gives the
same output, byte for byte.

A policy other than ``depth_first`` replaces the key a task enters the admission queue with
(``core/policies.py``); everything else (fair share, caps, gangs) stays the engine's.

Roots: a task without parents is a root. Every other task joins the root of the parent whose
completion made it ready (the last of its parents to finish), so each root has a tree that
grows as its tasks finish; the root is *in progress* from the start of its root task until its
tree has no unfinished task left, and its *latency* is that moment (all graphs are submitted at
0). The depth-first rule keeps few roots in progress, so little of their intermediate output is
alive at once; FIFO starts every root first.
"""

from __future__ import annotations

import heapq
import time
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from conveyor.core.admission import (
    AdmissionQueue,
    GroupInfo,
    Offer,
    Shape,
    needs_admission,
    plan_admission,
)
from conveyor.core.dag import Layout, layout
from conveyor.core.frontier import READY, Frontier
from conveyor.core.ordering import Key
from conveyor.core.policies import (
    POLICIES,
    breadth_first_key,
    critical_path_key,
    fifo_key,
    shortest_first_key,
    upward_ranks,
)
from conveyor.errors import ConveyorError, UsageError


class SimulationStuck(ConveyorError):
    """Tasks are left that can never start (a gang larger than a worker, a zero cap...)."""

    exit_code = 2  # the graph cannot run on the workers asked for: bad input


@dataclass
class Batch:
    """One graph to submit at time 0: ids and parents in graph-file order, each task's
    duration in seconds at speed 1, its ``TaskSpec`` when admission needs one (group,
    resources, labels, gang), and the layout when the loader already made it."""

    name: str
    ids: Sequence[str]
    parents: Sequence[Sequence[str]]
    durations: Sequence[float]
    tasks: Sequence[Any] | None = None
    layout: Layout | None = None


@dataclass(frozen=True)
class SimConfig:
    workers: int
    slots_per_worker: int = 1
    policy: str = "depth_first"
    speed: float = 1.0
    record_starts: bool = False
    #: Windows of the per-group shares over time (when there are several groups).
    share_windows: int = 10
    gang_wait_s: float = 30.0


@dataclass
class SimResult:
    policy: str
    tasks: int
    workers: int
    slots: int
    makespan: float
    busy: float  # slot-seconds of work
    root_done: list[float]  # completion time of every root's tree, in completion order
    peak_roots: int
    #: ``(start, end, {group: average running share of the slots})`` per window.
    shares: list[tuple[float, float, dict[str, float]]] = field(default_factory=list)
    starts: list[str] | None = None
    wall_s: float = 0.0

    @property
    def utilisation(self) -> float:
        return self.busy / (self.makespan * self.slots) if self.makespan > 0 else 0.0


class PolicyQueue(AdmissionQueue):
    """The engine's admission queue with another ordering key: ``key_of(i, engine_key)``."""

    def __init__(
        self, groups: Mapping[str, GroupInfo], key_of: Callable[[int, Key], Key], **kw: Any
    ) -> None:
        super().__init__(groups, **kw)
        self.key_of = key_of

    def push(self, i: int, key: Key, shape: int, gang: str | None = None) -> None:
        super().push(i, self.key_of(i, key), shape, gang)


def _key_function(
    policy: str, f: Frontier, durations: Sequence[float], ranks: Sequence[float] | None
) -> Callable[[int, Key], Key]:
    """The key a task enters the queue with under ``policy`` (from ``core/policies.py``). The
    facts come from the frontier (``depth``, ``root_seq``), not from the engine's key, so a
    change of that key's form leaves these policies as they are."""
    if policy == "depth_first":
        return lambda i, key: key
    if policy == "breadth_first":
        return lambda i, key: breadth_first_key(f.depth[i], f.root_seq[i], i)
    if policy == "fifo":
        counter = iter(range(1 << 62))
        return lambda i, key: fifo_key(next(counter), i)
    if policy == "critical_path":
        assert ranks is not None
        return lambda i, key: critical_path_key(ranks[i], f.root_seq[i], i)
    if policy == "shortest_first":
        return lambda i, key: shortest_first_key(durations[i], i)
    raise UsageError(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")


def simulate(
    batches: Sequence[Batch],
    config: SimConfig,
    groups: Mapping[str, tuple[float, int | None]] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> SimResult:
    """Run ``batches`` (submitted together at 0) on ``config.workers`` simulated workers.

    ``groups`` maps group names to ``(weight, cap)``. ``on_progress(done, total)`` is called
    every 65,536 finished tasks.
    """
    if config.policy not in POLICIES:
        raise UsageError(f"unknown policy {config.policy!r}; known: {', '.join(POLICIES)}")
    wall0 = time.perf_counter()
    groups = dict(groups or {})
    speed = config.speed
    given = batches[0].durations if len(batches) == 1 else None
    if isinstance(given, array) and given.typecode == "d" and speed == 1.0:
        dur = given  # (read only: no copy of a large graph's durations)
    else:
        dur = array("d")
        for b in batches:
            if speed == 1.0:
                dur.extend(b.durations)
            else:
                dur.extend(d / speed for d in b.durations)
    n = len(dur)
    use_queue = (
        config.policy != "depth_first"
        or bool(groups)
        or any(b.tasks is not None and needs_admission(b.tasks, groups) for b in batches)
    )
    layouts = [b.layout for b in batches]
    ranks: list[float] | None = None
    if config.policy == "critical_path" or (use_queue and len(groups) > 1):
        ranks = []
        for k, b in enumerate(batches):
            lay = layouts[k] = layouts[k] or layout(b.ids, b.parents)
            off = len(ranks)
            ranks.extend(upward_ranks(lay.children, lay.depth, dur[off : off + len(b.ids)]))
    f = Frontier()
    q: AdmissionQueue | None = None
    if use_queue:
        infos = {name: GroupInfo(weight, cap) for name, (weight, cap) in groups.items()}
        q = PolicyQueue(
            infos, _key_function(config.policy, f, dur, ranks), gang_wait_s=config.gang_wait_s
        )
        q.total_slots = config.workers * config.slots_per_worker  # fair shares of the pool
        f.enable_admission(q, q.shape_id(Shape("default")))
    root_of = array("i", [0]) * n
    left: dict[int, int] = {}  # unfinished tasks of each root's tree, by the root's index
    for k, b in enumerate(batches):
        shapes = None
        gangs: dict[int, str] = {}
        if q is not None and b.tasks is not None:
            planned, gangs, sizes = plan_admission(b.tasks, lambda g: groups.get(g, (1.0, None))[1])
            shapes = [q.shape_id(s) for s in planned]
            for gang, size in sizes.items():
                q.declare_gang(gang, size)
        # A frontier adopts its first batch's layout lists and extends them with the next
        # batches: a layout others read again (several batches) is not handed over.
        known = layouts[k] if len(batches) == 1 else None
        _new, ready = f.add(b.ids, b.parents, shapes=shapes, gangs=gangs, known_layout=known)
        for i in ready:
            root_of[i] = i
            left[i] = 1
    del layouts
    return _run(f, q, dur, root_of, left, config, ranks, on_progress, wall0)


def _run(
    f: Frontier,
    q: AdmissionQueue | None,
    dur: array[float],
    root_of: array[int],
    left: dict[int, int],
    config: SimConfig,
    ranks: list[float] | None,
    on_progress: Callable[[int, int], None] | None,
    wall0: float,
) -> SimResult:
    n = len(dur)
    workers, per = config.workers, config.slots_per_worker
    slots = workers * per
    heappush, heappop = heapq.heappush, heapq.heappop
    events: list[tuple[float, int, int]] = []  # (finish, task, worker)
    free = [per] * workers
    free_total = slots
    starts: list[str] | None = [] if config.record_starts else None
    ids = f.ids
    root_done: list[float] = []
    in_progress = peak = 0
    done = 0
    now = 0.0
    counts = f.counts
    shares = _Shares(q, ranks, dur, slots, config.share_windows)
    next_report = 1 << 16
    pop = f.pop
    complete = f.complete

    while True:
        # Fill free slots: the engine's claim, one decision at a time.
        if free_total and counts[READY]:
            if q is None:
                # The fast path (no admission): which worker runs a task changes nothing.
                while free_total:
                    i = pop()
                    if i is None:
                        break
                    free_total -= 1
                    heappush(events, (now + dur[i], i, -1))
                    if root_of[i] == i:
                        in_progress += 1
                        if in_progress > peak:
                            peak = in_progress
                    if starts is not None:
                        starts.append(ids[i])
            else:
                for w in range(workers):
                    while free[w] and counts[READY]:
                        got = f.pick(Offer(free[w], capacity=per), now)
                        if not got:
                            break
                        free[w] -= len(got)
                        free_total -= len(got)
                        for i in got:
                            heappush(events, (now + dur[i], i, w))
                            if root_of[i] == i:
                                in_progress += 1
                                if in_progress > peak:
                                    peak = in_progress
                            if starts is not None:
                                starts.append(ids[i])
        if not events:
            if f.unfinished() == 0:
                break
            wake = _reservation_end(q, config.gang_wait_s)
            if wake is None or wake <= now:
                raise SimulationStuck(
                    f"{f.unfinished()} task(s) can never start on {workers} worker(s) of "
                    f"{per} slot(s) (a gang larger than a worker, or a group capped at 0?)"
                )
            now = wake
            continue
        # The next finish, and every other one at the same moment.
        t = events[0][0]
        if shares.on:
            shares.advance(now, t)
        now = t
        while events and events[0][0] == t:
            _, i, w = heappop(events)
            if w >= 0:
                free[w] += 1
            free_total += 1
            r = root_of[i]
            kids = complete(i)
            for k in kids:
                root_of[k] = r
            rest = left[r] + len(kids) - 1
            left[r] = rest
            if rest == 0:
                root_done.append(t)
                in_progress -= 1
            done += 1
        if on_progress is not None and done >= next_report:
            on_progress(done, n)
            next_report += 1 << 16
    if on_progress is not None:
        on_progress(done, n)
    return SimResult(
        policy=config.policy, tasks=n, workers=workers, slots=slots, makespan=now, busy=sum(dur),
        root_done=root_done, peak_roots=peak, shares=shares.result(now), starts=starts,
        wall_s=time.perf_counter() - wall0,
    )  # fmt: skip


def _reservation_end(q: AdmissionQueue | None, wait_s: float) -> float | None:
    """When the earliest gang reservation runs out (then other work may use its slots)."""
    if q is None or not q.reservations:
        return None
    return min(q.reservations.values()) + wait_s


class _Shares:
    """Each group's average share of the slots per time window, from the admission queue's
    own running counts (``GroupInfo.running``). On only with two groups or more."""

    def __init__(
        self,
        q: AdmissionQueue | None,
        ranks: list[float] | None,
        dur: Sequence[float],
        slots: int,
        windows: int,
    ) -> None:
        self.on = q is not None and len([g for g in q.groups if g != "default"]) > 1
        self.q = q
        self.slots = slots
        self.width = 1.0
        self.acc: list[dict[str, float]] = []
        if self.on and q is not None:
            bound = max(max(ranks or [0.0]), sum(dur) / slots)
            self.width = max(bound / max(windows, 1), 1e-9)

    def advance(self, t0: float, t1: float) -> None:
        """Add the running counts times the time from ``t0`` to ``t1`` to their windows."""
        assert self.q is not None
        running = [(g, info.running) for g, info in self.q.groups.items() if info.running]
        width = self.width
        t = t0
        k = int(t0 // width)
        while t < t1:
            end = min(t1, (k + 1) * width)
            if end > t:
                while len(self.acc) <= k:
                    self.acc.append({})
                acc = self.acc[k]
                for g, r in running:
                    acc[g] = acc.get(g, 0.0) + r * (end - t)
                t = end
            k += 1

    def result(self, makespan: float) -> list[tuple[float, float, dict[str, float]]]:
        if not self.on or self.q is None:
            return []
        names = sorted(g for g in self.q.groups if g != "default")
        out = []
        for k, acc in enumerate(self.acc):
            start, end = k * self.width, min((k + 1) * self.width, makespan)
            span = (end - start) * self.slots
            out.append((start, end, {g: acc.get(g, 0.0) / span if span > 0 else 0.0
                                     for g in names}))  # fmt: skip
        return out
