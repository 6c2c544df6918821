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
tree has no unfinished task left, and its *latency* is that moment less its graph's arrival.
The depth-first rule keeps few roots in progress, so little of their intermediate output is
alive at once; FIFO starts every root first.

A graph may arrive later than 0 (``Batch.arrive``): it is added to the frontier at that moment,
as a store adds a graph submitted while another runs. Borrowing (``core/borrow.py``) is the
admission queue's: the run's policy (``SimConfig.borrow``) and each group's own.
"""

from __future__ import annotations

import heapq
import math
import time
from array import array
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from conveyor.core.admission import (
    AdmissionQueue,
    GroupInfo,
    Offer,
    Shape,
    needs_admission,
    plan_admission,
)
from conveyor.core.borrow import DEFAULT_POLICY, BorrowPolicy
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
from conveyor.sim.shares import Shares


class SimulationStuck(ConveyorError):
    """Tasks are left that can never start (a gang larger than a worker, a zero cap...)."""

    exit_code = 2  # the graph cannot run on the workers asked for: bad input


@dataclass
class Batch:
    """One graph to submit at ``arrive`` seconds: ids and parents in graph-file order, each
    task's duration in seconds at speed 1, its ``TaskSpec`` when admission needs one (group,
    resources, labels, gang), the layout when the loader already made it, and each task's band
    number (``None``: the default) when any names one."""

    name: str
    ids: Sequence[str]
    parents: Sequence[Sequence[str]]
    durations: Sequence[float]
    tasks: Sequence[Any] | None = None
    layout: Layout | None = None
    bands: Sequence[int | None] | None = None
    arrive: float = 0.0


class SimGroup(NamedTuple):
    """A group's weight, cap on running tasks and own borrow policy (``None``: the run's)."""

    weight: float = 1.0
    cap: int | None = None
    borrow: BorrowPolicy | None = None


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
    #: The run's borrow policy (``None``: ``core.borrow.DEFAULT_POLICY``, bounded).
    borrow: BorrowPolicy | None = None


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
    borrow: str = str(DEFAULT_POLICY)
    #: Each root's latency (completion less its graph's arrival), parallel to ``root_done``.
    root_latency: list[float] = field(default_factory=list)
    #: Each root's group, parallel to ``root_done`` (with admission; else empty).
    root_groups: list[str] = field(default_factory=list)
    #: With two groups or more: each group's arrival and time to reach its fair share.
    arrivals: dict[str, float] = field(default_factory=dict)
    time_to_share: dict[str, float] = field(default_factory=dict)
    #: Time each group had ready work waiting while it ran below its share (``sim/shares.py``).
    below_share: dict[str, float] = field(default_factory=dict)

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
    """The key a task enters the queue with under ``policy`` (from ``core/policies.py``), its
    band first. The facts come from the frontier (``depth``, ``band_of``), not from the
    engine's key, so a change of that key's form leaves these policies as they are."""
    band = f.band_of
    if policy == "depth_first":
        return lambda i, key: key
    if policy == "breadth_first":
        return lambda i, key: breadth_first_key(f.depth[i], i, band(i))
    if policy == "fifo":
        counter = iter(range(1 << 62))
        return lambda i, key: fifo_key(next(counter), i, band(i))
    if policy == "critical_path":
        assert ranks is not None
        return lambda i, key: critical_path_key(ranks[i], i, band(i))
    if policy == "shortest_first":
        return lambda i, key: shortest_first_key(durations[i], i, band(i))
    raise UsageError(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")


def simulate(
    batches: Sequence[Batch],
    config: SimConfig,
    groups: Mapping[str, tuple[Any, ...]] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> SimResult:
    """Run ``batches`` (each submitted at its ``arrive``) on ``config.workers`` workers.

    ``groups`` maps group names to ``SimGroup`` (or a tuple of its fields: ``(weight, cap)``).
    ``on_progress(done, total)`` is called every 65,536 finished tasks.
    """
    if config.policy not in POLICIES:
        raise UsageError(f"unknown policy {config.policy!r}; known: {', '.join(POLICIES)}")
    for b in batches:
        if not 0 <= b.arrive < math.inf:
            raise UsageError(f"{b.name}: an arrival time must be a number >= 0, got {b.arrive}")
    wall0 = time.perf_counter()
    batches = sorted(batches, key=lambda b: b.arrive)  # (stable) frontier order = arrival
    settings = {name: SimGroup(*g) for name, g in (groups or {}).items()}
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
    use_queue = (
        config.policy != "depth_first"
        or bool(settings)
        or any(b.tasks is not None and needs_admission(b.tasks, settings) for b in batches)
    )
    layouts = [b.layout for b in batches]
    ranks: list[float] | None = None
    if config.policy == "critical_path" or (use_queue and len(settings) > 1):
        ranks = []
        for k, b in enumerate(batches):
            lay = layouts[k] = layouts[k] or layout(b.ids, b.parents)
            off = len(ranks)
            ranks.extend(upward_ranks(lay.children, lay.depth, dur[off : off + len(b.ids)]))
    f = Frontier()
    q: AdmissionQueue | None = None
    if use_queue:
        infos = {n: GroupInfo(g.weight, g.cap, borrow=g.borrow) for n, g in settings.items()}
        q = PolicyQueue(
            infos, _key_function(config.policy, f, dur, ranks), gang_wait_s=config.gang_wait_s
        )
        q.borrow = config.borrow or DEFAULT_POLICY
        q.total_slots = config.workers * config.slots_per_worker  # fair shares of the pool
        f.enable_admission(q, q.shape_id(Shape("default")))

    def submit(k: int) -> list[int]:
        """Add batch ``k`` to the frontier, as ``MemoryStore._add`` does; its ready tasks."""
        b = batches[k]
        shapes = None
        gangs: dict[int, str] = {}
        if q is not None and b.tasks is not None:
            cap_of = lambda g: settings.get(g, SimGroup()).cap  # noqa: E731
            planned, gangs, sizes = plan_admission(b.tasks, cap_of)
            shapes = [q.shape_id(s) for s in planned]
            for gang, size in sizes.items():
                q.declare_gang(gang, size)
        # A frontier adopts its first batch's layout lists and extends them with the next
        # batches: a layout others read again (several batches) is not handed over.
        known = layouts[k] if len(batches) == 1 else None
        _new, ready = f.add(
            b.ids, b.parents, shapes=shapes, gangs=gangs, known_layout=known, bands=b.bands
        )
        return ready

    arrivals: dict[str, float] = {}
    for b in batches:
        for g in {t.group for t in b.tasks} if b.tasks is not None else {"default"}:
            arrivals.setdefault(g, b.arrive)
    horizon = batches[-1].arrive + max(max(ranks or [0.0]), sum(dur) / max(1, _slots(config)))
    shares = Shares(q, _slots(config), horizon, config.share_windows, arrivals)
    result = _run(f, q, dur, submit, [b.arrive for b in batches], config, shares, on_progress)
    result.wall_s = time.perf_counter() - wall0
    result.borrow = str(config.borrow or DEFAULT_POLICY)
    if shares.on:
        result.arrivals = {g: arrivals.get(g, 0.0) for g in shares.names()}
        result.time_to_share = dict(shares.time_to_share)
        result.below_share = {g: shares.below_share.get(g, 0.0) for g in shares.names()}
    return result


def _slots(config: SimConfig) -> int:
    return config.workers * config.slots_per_worker


def _run(
    f: Frontier,
    q: AdmissionQueue | None,
    dur: array[float],
    submit: Callable[[int], list[int]],
    arrive: list[float],
    config: SimConfig,
    shares: Shares,
    on_progress: Callable[[int, int], None] | None,
) -> SimResult:
    n = len(dur)
    workers, per = config.workers, config.slots_per_worker
    slots = workers * per
    heappush, heappop = heapq.heappush, heapq.heappop
    events: list[tuple[float, int, int]] = []  # (finish, task, worker)
    free = [per] * workers
    free_total = slots
    starts: list[str] | None = [] if config.record_starts else None
    root_of = array("i", [0]) * n
    left: dict[int, int] = {}  # unfinished tasks of each root's tree, by the root's index
    born: dict[int, float] = {}  # each root's arrival
    root_done: list[float] = []
    latency: list[float] = []
    root_groups: list[str] = []
    in_progress = peak = 0
    done = 0
    now = 0.0
    counts = f.counts
    next_report = 1 << 16
    pop = f.pop
    complete = f.complete
    batch = 0  # the next batch to arrive

    batches = len(arrive)
    ids = f.ids
    just_started: list[int] = []  # the tasks this fill started, in order
    started, started_all = just_started.append, just_started.extend
    while True:
        # Graphs arriving now join the frontier; their ready tasks are roots.
        while batch < batches and arrive[batch] <= now:
            for root in submit(batch):
                root_of[root] = root
                left[root] = 1
                born[root] = arrive[batch]
            batch += 1
            ids = f.ids  # (the frontier adopts its first batch's list of ids)
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
                    started(i)
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
                        started_all(got)
            for i in just_started:  # the roots among them are in progress from now
                if root_of[i] == i:
                    in_progress += 1
                    if in_progress > peak:
                        peak = in_progress
            if starts is not None:
                starts.extend(map(ids.__getitem__, just_started))
            just_started.clear()
        if shares.on:
            shares.check(now)
        # The next moment: a finish, a graph's arrival, or a gang's reservation running out.
        t = events[0][0] if events else math.inf
        if batch < batches:
            t = min(t, arrive[batch])
        if not events and f.unfinished():
            wake = _reservation_end(q, config.gang_wait_s)
            if wake is not None and wake > now:
                t = min(t, wake)
        if t == math.inf:
            if f.unfinished() == 0:
                break
            raise SimulationStuck(
                f"{f.unfinished()} task(s) can never start on {workers} worker(s) of "
                f"{per} slot(s) (a gang larger than a worker, or a group capped at 0?)"
            )
        if shares.on:
            shares.advance(now, t)
        now = t
        # Every finish at this moment, before the next claim.
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
                latency.append(t - born[r])
                if q is not None:
                    root_groups.append(q.shapes[f.shape[r]].group)
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
        root_latency=latency, root_groups=root_groups,
    )  # fmt: skip


def _reservation_end(q: AdmissionQueue | None, wait_s: float) -> float | None:
    """When the earliest gang reservation runs out (then other work may use its slots)."""
    if q is None or not q.reservations:
        return None
    return min(q.reservations.values()) + wait_s
