"""Hypothesis properties of the pure ``AdmissionQueue``: a discrete-event simulation under a
fake clock (random groups, weights, caps, shapes, gangs, workers, arrivals and durations)
checked after every decision against an independent model of what may run."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor.core.admission import (
    AdmissionQueue,
    Constraint,
    GroupInfo,
    Offer,
    Shape,
    parse_constraints,
)
from conveyor.errors import GraphError

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GANG_WAIT = 5.0
LABEL_ASKS: list[dict[str, Any]] = [
    {},
    {"gpu": "a100"},
    {"gpu": {"ne": "k80"}},
    {"gpu": {"exists": True}},
    {"zone": {"in": ["a", "b"]}},
    {"mem_gb": {">=": 64}},
]
WORKER_LABELS: list[dict[str, Any]] = [
    {},
    {"gpu": "a100", "zone": "a", "mem_gb": 128},
    {"gpu": "k80", "zone": "c", "mem_gb": 32},
]


@dataclass
class Task:
    i: int
    key: tuple[int, int, int]
    sid: int
    group: str
    arrive: float
    duration: float
    gang: str | None = None
    state: str = "future"  # future, ready, running, done
    worker: int = -1
    end: float = 0.0


@dataclass
class Worker:
    slots: int
    cpu: float | None  # None: resources not accounted on this worker
    labels: dict[str, Any]
    running: set[int] = field(default_factory=set)


@dataclass
class Scenario:
    groups: dict[str, GroupInfo]
    shapes: list[Shape]
    tasks: list[Task]
    gangs: dict[str, list[int]]
    workers: list[Worker]


@st.composite
def scenarios(draw: st.DrawFn, *, gangs: bool = True, arrivals: bool = True) -> Scenario:
    ng = draw(st.integers(1, 4))
    groups = {
        f"g{k}": GroupInfo(
            weight=draw(st.sampled_from([1.0, 2.0, 3.0])),
            cap=draw(st.one_of(st.none(), st.integers(1, 6))),
        )
        for k in range(ng)
    }
    shapes: list[Shape] = []
    for _ in range(draw(st.integers(1, 5))):
        group = f"g{draw(st.integers(0, ng - 1))}"
        cpu = draw(st.sampled_from([0, 0, 1, 2, 3]))
        labels = draw(st.sampled_from(LABEL_ASKS))
        shape = Shape.of(group, {"cpu": cpu} if cpu else {}, labels)
        if shape not in shapes:
            shapes.append(shape)
    workers = [
        Worker(
            draw(st.integers(1, 8)),
            draw(st.one_of(st.none(), st.integers(1, 8).map(float))),
            draw(st.sampled_from(WORKER_LABELS)),
        )
        for _ in range(draw(st.integers(1, 2)))
    ]
    tasks: list[Task] = []
    gang_members: dict[str, list[int]] = {}
    n = draw(st.integers(1, 40))
    while len(tasks) < n:
        sid = draw(st.integers(0, len(shapes) - 1))
        size = draw(st.integers(2, 4)) if gangs and draw(st.integers(0, 5)) == 0 else 1
        gang = f"G{len(gang_members)}" if size > 1 else None
        group = shapes[sid].group
        cap = groups[group].cap
        if gang is not None and cap is not None and cap < size:
            continue  # refused at submit by the stores; not the queue's concern
        for _ in range(size):
            i = len(tasks)
            depth = draw(st.integers(0, 3))
            arrive = draw(st.sampled_from([0.0, 0.0, 1.0, 2.5, 7.0])) if arrivals else 0.0
            duration = draw(st.sampled_from([0.5, 1.0, 2.0, 4.0, 9.0]))
            tasks.append(Task(i, (-depth, 1, i), sid, group, arrive, duration, gang))
            if gang is not None:
                gang_members.setdefault(gang, []).append(i)
    return Scenario(groups, shapes, tasks, gang_members, workers)


@st.composite
def contended(draw: st.DrawFn) -> Scenario:
    """Two to four uncapped groups of distinct weights and one worker with fewer slots than
    the work: nearly every decision is a choice between groups, which fair share settles."""
    weights = draw(
        st.lists(st.sampled_from([1.0, 2.0, 3.0, 5.0]), min_size=2, max_size=4, unique=True)
    )
    groups = {f"g{k}": GroupInfo(weight=w) for k, w in enumerate(weights)}
    shapes = [Shape(g) for g in groups]
    slots = draw(st.integers(2, 6))
    tasks = []
    for i in range(draw(st.integers(3 * slots, 40))):
        sid = draw(st.integers(0, len(shapes) - 1))
        arrive = draw(st.sampled_from([0.0, 0.0, 1.0, 2.5]))
        duration = draw(st.sampled_from([0.5, 1.0, 2.0, 4.0]))
        tasks.append(Task(i, (-draw(st.integers(0, 2)), 1, i), sid, shapes[sid].group, arrive,
                          duration))  # fmt: skip
    return Scenario(groups, shapes, tasks, {}, [Worker(slots, None, {})])


class Sim:
    """Runs a scenario on a real ``AdmissionQueue`` and checks every decision."""

    def __init__(self, sc: Scenario, gang_wait_s: float = GANG_WAIT) -> None:
        self.sc = sc
        self.q = AdmissionQueue(
            {g: GroupInfo(info.weight, info.cap) for g, info in sc.groups.items()},
            gang_wait_s=gang_wait_s,
        )
        for shape in sc.shapes:
            self.q.shape_id(shape)
        for gang, members in sc.gangs.items():
            self.q.declare_gang(gang, len(members))
        self.now = 0.0
        self.events: list[tuple[float, int, str, int]] = []  # (time, seq, kind, task)
        self.seq = 0
        for t in sc.tasks:
            self._at(t.arrive, "arrive", t.i)
        self.picks: list[tuple[float, tuple[int, ...]]] = []
        self.hold_since: dict[str, float] = {}
        self.ever_released: set[str] = set()
        self.longest_hold = 0.0  # longest time capacity sat idle for a gang reservation

    # -- the model ----------------------------------------------------------------------------
    def _at(self, when: float, kind: str, i: int) -> None:
        self.seq += 1
        heapq.heappush(self.events, (when, self.seq, kind, i))

    def offer(self, w: int) -> Offer:
        wk = self.sc.workers[w]
        free = wk.slots - len(wk.running)
        res: dict[str, float] = {}
        if wk.cpu is not None:
            used = sum(self._cpu(self.sc.tasks[i]) for i in wk.running)
            res = {"cpu": wk.cpu - used}
        return Offer(free, res, wk.labels, wk.slots)

    def _cpu(self, t: Task) -> float:
        return dict(self.sc.shapes[t.sid].resources).get("cpu", 0.0)

    def running_in(self, group: str) -> int:
        """Tasks of ``group`` running now, counted by the model (not the queue)."""
        return sum(t.state == "running" and t.group == group for t in self.sc.tasks)

    def alive(self, i: int) -> bool:
        return self.sc.tasks[i].state == "ready"

    def entries(self) -> list[tuple[tuple[int, int, int], str, list[int]]]:
        """Every ready unit of work: ``(key, group, members)``; a gang once all are ready."""
        out = []
        done_gangs: set[str] = set()
        for t in self.sc.tasks:
            if t.state != "ready":
                continue
            if t.gang is None:
                out.append((t.key, t.group, [t.i]))
            elif t.gang not in done_gangs:
                done_gangs.add(t.gang)
                members = self.sc.gangs[t.gang]
                if all(self.sc.tasks[m].state == "ready" for m in members):
                    best = min(self.sc.tasks[m].key for m in members)
                    out.append((best, t.group, members))
        return out

    def placeable(self, offer: Offer) -> list[tuple[tuple[int, int, int], str, list[int]]]:
        """Entries that could start on ``offer`` right now (fit, labels, cap room)."""
        out = []
        for key, group, members in self.entries():
            cap = self.sc.groups[group].cap
            room = len(members) if cap is None else cap - self.running_in(group)
            shape = self.sc.shapes[self.sc.tasks[members[0]].sid]
            if room >= len(members) and offer.fit_count(shape) >= len(members):
                out.append((key, group, members))
        return out

    def active_reservation(self) -> bool:
        return any(self.now - since < self.q.gang_wait_s for since in self.q.reservations.values())

    # -- the loop -----------------------------------------------------------------------------
    def fill(self, w: int) -> None:
        while True:
            offer = self.offer(w)
            can = self.placeable(offer)
            got = self.q.pick(offer, self.alive, self.now)
            self.ever_released |= self.q.released
            if got is None:
                if can and offer.slots > 0:
                    # Work conservation: idle capacity next to fitting work is only allowed
                    # while a gang reservation holds it, and never past gang_wait_s.
                    assert self.active_reservation(), (self.now, can, self.q.reservations)
                    for gang, since in self.q.reservations.items():
                        self.hold_since.setdefault(gang, since)
                    held = self.now - max(self.q.reservations.values())
                    self.longest_hold = max(self.longest_hold, held)
                return
            self.check_pick(w, offer, can, got.members, got.group)

    def check_pick(
        self, w: int, offer: Offer, can: list[Any], members: tuple[int, ...], group: str
    ) -> None:
        tasks = self.sc.tasks
        first = tasks[members[0]]
        gang = first.gang
        # A gang is placed whole, in one decision; a single task alone.
        if gang is None:
            assert len(members) == 1
        else:
            assert sorted(members) == sorted(self.sc.gangs[gang])
        assert all(tasks[m].state == "ready" and tasks[m].group == group for m in members)
        shape = self.sc.shapes[first.sid]
        assert offer.fit_count(shape) >= len(members)  # fits: slots, resources, labels
        # The model agrees it could start: fit and room under the group's cap.
        assert any(sorted(m) == sorted(members) for _k, _g, m in can), (members, can)

        # Fair choice: no group with placeable work runs fewer tasks per unit of weight than
        # the chosen one (running counted by the model, weights from the scenario).
        def share(g: str) -> float:
            return self.running_in(g) / self.sc.groups[g].weight

        assert all(share(g) >= share(group) for _k, g, _m in can), (group, can)
        # Depth-first within the group: the best key among the group's placeable work.
        key = min(tasks[m].key for m in members)
        assert key == min(k for k, g, _m in can if g == group), (key, can)
        self.q.started(group, len(members))
        self.picks.append((self.now, members))
        wk = self.sc.workers[w]
        for m in members:
            t = tasks[m]
            t.state, t.worker, t.end = "running", w, self.now + t.duration
            wk.running.add(m)
            self._at(t.end, "finish", m)
        cap = self.sc.groups[group].cap
        assert cap is None or self.running_in(group) <= cap  # caps never exceeded
        if wk.cpu is not None:
            assert sum(self._cpu(tasks[i]) for i in wk.running) <= wk.cpu + 1e-9

    def step(self) -> bool:
        """Advance the fake clock to the next event; False when nothing is left to happen."""
        wait = self.q.gang_wait_s  # a reservation running out is an event too (engine tick)
        due = [s + wait for s in self.q.reservations.values() if s + wait > self.now]
        if self.events:
            due.append(self.events[0][0])
        if not due:
            return False
        self.now = min(due)
        while self.events and self.events[0][0] <= self.now:
            _, _, kind, i = heapq.heappop(self.events)
            t = self.sc.tasks[i]
            if kind == "arrive":
                t.state = "ready"
                self.q.push(i, t.key, t.sid, t.gang)
            else:
                t.state = "done"
                self.sc.workers[t.worker].running.discard(i)
                self.q.finished(t.group)
        for w in range(len(self.sc.workers)):
            self.fill(w)
        return True

    def run(self, limit: int = 2000) -> None:
        for _ in range(limit):
            if not self.step():
                break
        else:
            raise AssertionError("simulation did not settle")

    def never_fits(self, members: list[int]) -> bool:
        shape = self.sc.shapes[self.sc.tasks[members[0]].sid]
        for wk in self.sc.workers:
            full = Offer(wk.slots, {"cpu": wk.cpu} if wk.cpu is not None else {}, wk.labels)
            if full.fit_count(shape) >= len(members):
                return False
        return True


# -- the properties ---------------------------------------------------------------------------
@PROPS
@given(scenarios())
def test_admission_random_workloads_keep_every_invariant(sc: Scenario) -> None:
    """Caps, fit, whole gangs, fair choice, depth-first order and work conservation at every
    decision; at the end everything that could ever fit has run."""
    sim = Sim(sc)
    sim.run()
    left = sim.entries()
    for _key, _group, members in left:
        assert sim.never_fits(members), f"left waiting though it fits: {members}"
    # Nothing is left half-way: a task that did not run waits whole (a gang with all its
    # members) and is accounted for above.
    waiting = {i for _k, _g, members in left for i in members}
    for t in sc.tasks:
        assert t.state in ("done", "ready"), (t.i, t.state)
        assert t.state == "done" or t.i in waiting, f"{t.i} is stranded outside its gang"
    # Every gang that started started in one decision.
    for _now, members in sim.picks:
        gangs = {sc.tasks[m].gang for m in members}
        assert len(gangs) == 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(contended())
def test_admission_contended_groups_choose_the_lowest_weighted_share(sc: Scenario) -> None:
    """Under contention every decision goes to a group with the fewest running tasks per unit
    of weight among those with work that fits (checked inside ``Sim``), and all work runs."""
    sim = Sim(sc)
    sim.run()
    assert all(t.state == "done" for t in sc.tasks)


@PROPS
@given(scenarios(gangs=True))
def test_admission_gang_reservation_is_bounded_by_gang_wait(sc: Scenario) -> None:
    """Capacity is held idle for a gang only within ``gang_wait_s`` of its first hold; every
    gang that held capacity later starts, has its hold released, or could never fit."""
    sim = Sim(sc)
    sim.run()
    assert sim.longest_hold < GANG_WAIT
    started = {sc.tasks[m[0]].gang for _now, m in sim.picks if len(m) > 1}
    for gang in sim.hold_since:
        released = gang in sim.ever_released
        assert gang in started or released or sim.never_fits(sc.gangs[gang])


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.sampled_from([0.25, 0.5, 1.0, 1.5]), min_size=40, max_size=40),
    st.permutations(range(3)),
)
def test_admission_saturating_demand_converges_to_weight_share(
    durations: list[float], order: list[int]
) -> None:
    """Weights 1:2:3 on 12 slots with every group always backlogged: after warm-up each
    group's running count stays within one slot of 2/4/6 at every decision."""
    names = ["a", "b", "c"]
    weights = {"a": 1.0, "b": 2.0, "c": 3.0}
    q = AdmissionQueue({g: GroupInfo(w) for g, w in weights.items()})
    sids = {g: q.shape_id(Shape(g)) for g in names}
    group_of: dict[int, str] = {}
    n = 0
    for k in order:  # groups submit in a random order; each has a deep backlog
        g = names[k]
        for _ in range(300):
            q.push(n, (0, 1, n), sids[g])
            group_of[n] = g
            n += 1
    running: list[tuple[float, int]] = []
    now = 0.0
    done = 0
    while done < 400:
        while len(running) < 12:
            got = q.pick(Offer(12 - len(running), capacity=12), lambda i: True, now)
            assert got is not None  # saturating demand: a free slot is always used
            (i,) = got.members
            q.started(got.group)
            heapq.heappush(running, (now + durations[i % len(durations)], i))
        if done >= 24:  # warm-up: the first tasks have turned over
            per_group = {g: sum(group_of[i] == g for _end, i in running) for g in names}
            for g, target in (("a", 2), ("b", 4), ("c", 6)):
                assert abs(per_group[g] - target) <= 1, per_group
        now, i = heapq.heappop(running)
        q.finished(group_of[i])
        done += 1


def test_admission_borrowed_capacity_is_handed_back_as_tasks_finish() -> None:
    """A lone group borrows every slot; when another group arrives it gets slots back as the
    borrowed tasks finish (no preemption), up to its share."""
    q = AdmissionQueue({"a": GroupInfo(1.0), "b": GroupInfo(1.0)})
    sa, sb = q.shape_id(Shape("a")), q.shape_id(Shape("b"))
    for i in range(20):
        q.push(i, (0, 1, i), sa)
    for _ in range(4):
        got = q.pick(Offer(4, capacity=4), lambda i: True, 0.0)
        assert got is not None and got.group == "a"
        q.started("a")
    for i in range(20, 40):
        q.push(i, (0, 1, i), sb)
    starts = []
    for _ in range(4):  # each finish of a borrowed "a" task frees a slot
        q.finished("a")
        got = q.pick(Offer(1, capacity=4), lambda i: True, 1.0)
        assert got is not None
        q.started(got.group)
        starts.append(got.group)
    assert starts == ["b", "b", "a", "a"]  # 2 and 2 now run: "a" handed back two slots


def test_admission_big_task_never_blocks_a_small_one_behind_it() -> None:
    """Head-of-line: the best-key task asks 8 cpu on a 4-cpu offer; the small ones behind it
    in the same group start."""
    q = AdmissionQueue()
    big = q.shape_id(Shape.of("default", {"cpu": 8}, {}))
    gpu = q.shape_id(Shape.of("default", {}, {"gpu": "a100"}))
    small = q.shape_id(Shape.of("default", {"cpu": 1}, {}))
    q.push(0, (-5, 1, 0), big)
    q.push(1, (-5, 1, 1), gpu)
    for i in range(2, 6):
        q.push(i, (0, 1, i), small)
    offer = Offer(4, {"cpu": 4.0}, {"gpu": "k80"}, 4)
    got = []
    while (p := q.pick(offer, lambda i: True, 0.0)) is not None:
        got.extend(p.members)
        offer = offer.take(q.shapes[p.shape])
    assert got == [2, 3, 4, 5]


def test_admission_gang_at_head_starts_within_gang_wait_despite_small_stream() -> None:
    """A 4-gang heads its group (share 0) while another group streams 1 s tasks into 4 slots:
    the reservation drains the slots and the gang starts within ``gang_wait_s``."""
    q = AdmissionQueue({"big": GroupInfo(1.0), "small": GroupInfo(1.0)}, gang_wait_s=10.0)
    sg, ss = q.shape_id(Shape("big")), q.shape_id(Shape("small"))
    q.declare_gang("G", 4)
    nxt = 100
    running: list[tuple[float, int, str]] = []
    for i in range(nxt):
        q.push(i + 1000, (0, 1, i + 1000), ss)
    for _ in range(4):
        got = q.pick(Offer(4 - len(running), capacity=4), lambda i: True, 0.0)
        assert got is not None
        q.started(got.group)
        heapq.heappush(running, (0.7 * (len(running) + 1), got.members[0], got.group))
    for i in range(4):  # the gang becomes ready with every slot busy
        q.push(i, (0, 1, i), sg, "G")
    now, started_at = 0.0, None
    while started_at is None:
        now, _, group = heapq.heappop(running)
        q.finished(group)
        while got := q.pick(Offer(4 - len(running), capacity=4), lambda i: True, now):
            q.started(got.group, len(got.members))
            if got.group == "big":
                assert got.members == (0, 1, 2, 3)
                started_at = now
                break
            heapq.heappush(running, (now + 1.0, got.members[0], got.group))
        assert now < 60
    assert started_at <= 10.0
    assert "G" not in q.released


def test_admission_gang_reservation_times_out_and_small_work_resumes() -> None:
    """Small tasks run longer than ``gang_wait_s``: after the wait the reservation is released
    (recorded in ``released``) and idle slots go back to small work; the gang starts later."""
    q = AdmissionQueue({"big": GroupInfo(1.0), "small": GroupInfo(1.0)}, gang_wait_s=2.0)
    sg, ss = q.shape_id(Shape("big")), q.shape_id(Shape("small"))
    q.declare_gang("G", 3)
    for i in range(10, 20):
        q.push(i, (0, 1, i), ss)
    for _ in range(3):
        got = q.pick(Offer(3, capacity=3), lambda i: True, 0.0)
        assert got is not None and got.group == "small"
        q.started("small")
    for i in range(3):
        q.push(i, (0, 1, i), sg, "G")
    q.finished("small")  # one slot frees at t=1: held for the gang
    assert q.pick(Offer(1, capacity=3), lambda i: True, 1.0) is None
    assert q.reservations == {"G": 1.0}
    assert q.pick(Offer(1, capacity=3), lambda i: True, 2.9) is None
    got = q.pick(Offer(1, capacity=3), lambda i: True, 3.0)  # the hold ran out
    assert got is not None and got.group == "small"
    assert "G" in q.released and "G" not in q.reservations
    q.started("small")
    for _ in range(3):
        q.finished("small")
    got = q.pick(Offer(3, capacity=3), lambda i: True, 9.0)
    assert got is not None and got.members == (0, 1, 2)


def test_admission_caps_hold_and_others_borrow() -> None:
    q = AdmissionQueue({"a": GroupInfo(5.0, cap=2), "b": GroupInfo(1.0)})
    sa, sb = q.shape_id(Shape("a")), q.shape_id(Shape("b"))
    for i in range(10):
        q.push(i, (0, 1, i), sa)
        q.push(10 + i, (0, 1, 10 + i), sb)
    groups = []
    for k in range(6):
        got = q.pick(Offer(6 - k, capacity=6), lambda i: True, 0.0)
        assert got is not None
        q.started(got.group)
        groups.append(got.group)
    assert groups.count("a") == 2 and groups.count("b") == 4


# -- constraint parsing -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("labels", "match"),
    [
        ({"gpu": {"gt": 3}}, "unknown operator 'gt'"),
        ({"gpu": {">=": "a100"}}, "needs a number"),
        ({"mem_gb": {"<": True}}, "needs a number"),
        ({"mem_gb": {"<=": float("nan")}}, "needs a number"),
        ({"zone": {"in": "a"}}, "in needs a list"),
        ({"zone": {"not_in": 3}}, "not_in needs a list"),
    ],
)
def test_parse_constraints_bad_input_is_a_graph_error(labels: dict[str, Any], match: str) -> None:
    with pytest.raises(GraphError, match=match):
        parse_constraints(labels)


def test_parse_constraints_each_operator_matches_as_documented() -> None:
    cs = parse_constraints(
        {
            "gpu": {"ne": "k80"},
            "zone": {"in": ["a", "b"]},
            "ssd": {"exists": True},
            "mem_gb": {">=": 64, "<": 512},
            "arch": "x86",
        }
    )
    assert Constraint("zone", "in", frozenset({"a", "b"})) in cs
    good = {"gpu": "a100", "zone": "a", "ssd": 1, "mem_gb": 128, "arch": "x86"}
    assert all(c.matches(good) for c in cs)
    for key, bad in [("gpu", "k80"), ("zone", "c"), ("mem_gb", 32), ("mem_gb", 512)]:
        assert not all(c.matches({**good, key: bad}) for c in cs), key
    assert not all(c.matches({k: v for k, v in good.items() if k != "ssd"}) for c in cs)
    no_gpu = {k: v for k, v in good.items() if k != "gpu"}
    assert all(c.matches(no_gpu) for c in cs)  # "ne" holds when the label is absent
    assert not parse_constraints({"mem_gb": {">=": 64}})[0].matches({"mem_gb": "lots"})


@given(
    st.dictionaries(
        st.sampled_from(["gpu", "zone", "mem_gb"]),
        st.one_of(st.integers(-5, 200), st.sampled_from(["a100", "k80", "a", "b"])),
    ),
    st.integers(0, 200),
)
def test_parse_constraints_numeric_bounds_agree_with_python(labels: dict[str, Any], x: int) -> None:
    (ge,) = parse_constraints({"mem_gb": {">=": x}})
    (le,) = parse_constraints({"mem_gb": {"<=": x}})
    have = labels.get("mem_gb")
    numeric = isinstance(have, int)
    assert ge.matches(labels) == (numeric and have >= x)
    assert le.matches(labels) == (numeric and have <= x)
