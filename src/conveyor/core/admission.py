"""Admission: which ready task a worker with free capacity should start next. Pure.

Order of decisions (docs/architecture.md, "Admission"):
1. eligibility: parents done, backoff passed (the frontier), group below its cap, the task's
   shape fits the worker's offer (slots, resources, labels);
2. band: a task of a higher priority band goes before any of a lower one (``core/ordering.py``:
   the band is the first part of the key's first field), whatever its group's share;
3. group choice by weighted fair share (inside the band): among groups with eligible work,
   the lowest ``running / weight`` goes first (ties: the better depth-first head key). A group
   beyond its fair share borrows idle capacity as far as its borrow policy lets it
   (``core/borrow.py``: strict, bounded, work_conserving); it hands it back as its tasks end;
4. within the group, the depth-first key.

Tasks are bucketed by *shape* (group, resources, label constraints): every task of one shape fits
a given offer or none does, so a task that does not fit never blocks smaller ones behind it, and a
decision costs O(shapes + log n) — it never walks the pending tasks.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from conveyor.core.borrow import DEFAULT_POLICY, BorrowCheck, BorrowPolicy, borrow_check
from conveyor.core.constraints import Constraint, parse_constraints
from conveyor.core.offer import Offer as Offer  # (their home is core/offer.py)
from conveyor.core.offer import needs_admission as needs_admission
from conveyor.core.ordering import Key, band_from
from conveyor.errors import GraphError


@dataclass(frozen=True, slots=True)
class Shape:
    """What a task asks of a slot; tasks of one shape are interchangeable for fitting."""

    group: str
    resources: tuple[tuple[str, float], ...] = ()
    constraints: tuple[Constraint, ...] = ()
    endpoint: str | None = None  # a rate-limited service its tasks call (see EndpointLimiter)
    expected_s: float | None = None  # declared run time: fits a worker with the time left

    @classmethod
    def of(
        cls,
        group: str,
        resources: Mapping[str, float],
        labels: Mapping[str, Any],
        endpoint: str | None = None,
        expected_s: float | None = None,
    ) -> Shape:
        res = tuple(sorted((k, float(v)) for k, v in resources.items() if v))
        exp = None if expected_s is None else float(expected_s)
        return cls(group, res, parse_constraints(labels), endpoint, exp)


@dataclass(slots=True)
class GroupInfo:
    weight: float = 1.0
    cap: int | None = None
    running: int = 0
    borrow: BorrowPolicy | None = None  # None: the run's policy

    def share(self) -> float:
        return self.running / self.weight


@dataclass(frozen=True, slots=True)
class Pick:
    """A decision: start ``members`` (one task, or all tasks of a gang) of ``shape``."""

    shape: int
    members: tuple[int, ...]
    group: str


def plan_admission(
    tasks: Sequence[Any], cap_of: Callable[[str], int | None]
) -> tuple[list[Shape], dict[int, str], dict[str, int]]:
    """The shape of each task (``TaskSpec``-like), the gang of each gang member (by position)
    and each gang's size; refuses bad input with ``GraphError``: an unknown label operator, an
    ordered comparison on a string, a gang whose members ask different shapes, whose declared
    size disagrees with its member count, or larger than its group's cap (``cap_of(group)``).
    Shared by every store, so that a graph is refused the same way wherever it is submitted."""
    cache: dict[tuple[Any, ...], Shape] = {}
    shapes: list[Shape] = []
    gangs: dict[int, str] = {}
    sizes: dict[str, int] = {}
    declared: dict[str, int | None] = {}
    gang_shape: dict[str, tuple[Shape, str]] = {}
    for k, t in enumerate(tasks):
        sig = (t.group, tuple(sorted(t.resources.items())), repr(sorted(t.labels.items())),
               t.endpoint, t.expected_s)  # fmt: skip
        shape = cache.get(sig)
        if shape is None:
            try:
                shape = Shape.of(t.group, t.resources, t.labels, t.endpoint, t.expected_s)
            except GraphError as exc:
                raise GraphError(f"task {t.id!r}: {exc}") from None
            cache[sig] = shape
        shapes.append(shape)
        if t.gang:
            gangs[k] = t.gang
            sizes[t.gang] = sizes.get(t.gang, 0) + 1
            declared.setdefault(t.gang, t.gang_size)
            first = gang_shape.setdefault(t.gang, (shape, t.id))
            if first[0] != shape:  # one decision places a gang: one shape must fit them all
                raise GraphError(
                    f"gang {t.gang!r}: task {t.id!r} asks a different group, resources or "
                    f"labels than {first[1]!r}; members of a gang must ask the same"
                )
    for gang, n in sizes.items():
        size = declared[gang] or n
        if size != n:
            raise GraphError(f"gang {gang!r} declares size {size} but has {n} tasks")
        group = gang_shape[gang][0].group
        cap = cap_of(group)
        if cap is not None and cap < size:
            raise GraphError(
                f"gang {gang!r} needs {size} slots at once but group {group!r} is capped at {cap}"
            )
    return shapes, gangs, sizes


class AdmissionQueue:
    """Ready tasks bucketed by shape, each bucket a depth-first heap. Pure: no clock, no I/O.

    Gang members wait aside until the whole gang is ready; then one heap entry (the best member
    key, tagged with the gang) stands for the gang, which is placed all at once or not at all.
    When a gang heads the fair order but the free slots cannot hold it yet, those slots are held
    for it (a reservation) for at most ``gang_wait_s``; after that the reservation is released,
    other work may use the slots, and ``reservations`` records why.
    """

    def __init__(
        self, groups: Mapping[str, GroupInfo] | None = None, *, gang_wait_s: float = 30.0
    ) -> None:
        self.shapes: list[Shape] = []
        self.shape_ids: dict[Shape, int] = {}
        self.heaps: list[list[tuple[int, ...]]] = []  # (k0, k1, k2) or (k0, k1, k2, gang no)
        self.groups: dict[str, GroupInfo] = dict(groups or {})
        self.gang_wait_s = gang_wait_s
        self.gang_size: dict[str, int] = {}
        self.gang_ready: dict[str, list[int]] = {}
        self._gang_names: list[str] = []
        self._gang_no: dict[str, int] = {}
        self.endpoint_caps: dict[str, int] = {}
        self.endpoint_running: dict[str, int] = {}
        self.reservations: dict[str, float] = {}  # gang -> since (now of the first hold)
        self.released: set[str] = set()  # gangs whose reservation timed out
        self._member_key: dict[int, Key] = {}  # key of each ready gang member
        #: Borrowing (``core/borrow.py``): the run's policy, each group's unfinished tasks
        #: (a group with any is active: its fair share counts) and the slots of all workers
        #: (``None``: the offer's capacity).
        self.borrow: BorrowPolicy = DEFAULT_POLICY
        self.unfinished: dict[str, int] = {}
        self.total_slots: int | None = None

    def shape_id(self, shape: Shape) -> int:
        sid = self.shape_ids.get(shape)
        if sid is None:
            sid = len(self.shapes)
            self.shapes.append(shape)
            self.shape_ids[shape] = sid
            self.heaps.append([])
            self.groups.setdefault(shape.group, GroupInfo())
        return sid

    def add_bucket(self, shape: Shape) -> int:
        """A new bucket for ``shape`` even when an equal shape has one (a durable store keeps
        each gang in a bucket of its own)."""
        sid = len(self.shapes)
        self.shapes.append(shape)
        self.heaps.append([])
        self.groups.setdefault(shape.group, GroupInfo())
        return sid

    def declare_gang(self, gang: str, size: int) -> None:
        self.gang_size[gang] = size
        if gang not in self._gang_no:
            self._gang_no[gang] = len(self._gang_names)
            self._gang_names.append(gang)

    def push(self, i: int, key: Key, shape: int, gang: str | None = None) -> None:
        """Task ``i`` (key ``(k0, k1, i)``) became ready."""
        if gang is None:
            heapq.heappush(self.heaps[shape], key)
            return
        ready = self.gang_ready.setdefault(gang, [])
        ready.append(i)
        self._member_key[i] = key
        if len(ready) == self.gang_size[gang]:
            # The gang goes where its best member would: the depth-first key of the gang.
            best = min(self._member_key[m] for m in ready)  # O(gang size), once per gang
            heapq.heappush(self.heaps[shape], (*best, self._gang_no[gang]))

    def gang_of_entry(self, entry: tuple[int, ...]) -> str | None:
        return self._gang_names[entry[3]] if len(entry) > 3 else None

    def drop_gang_member(self, gang: str, i: int) -> None:
        """A waiting gang member left the ready set (skipped, cancelled)."""
        ready = self.gang_ready.get(gang)
        if ready and i in ready:
            ready.remove(i)
        self._member_key.pop(i, None)

    # -- the decision ---------------------------------------------------------------------
    def add_unfinished(self, sid: int, n: int) -> None:
        """``n`` tasks of shape ``sid`` were submitted (or, negative, reached a final state)."""
        group = self.shapes[sid].group
        self.unfinished[group] = self.unfinished.get(group, 0) + n

    def borrow_refusal(self, group: str, capacity: int) -> BorrowCheck | None:
        """Why ``group`` may not start another task (beyond its fair share by more than its
        policy lets it borrow), or ``None``. ``capacity``: the slots of this worker, used when
        ``total_slots`` is unknown."""
        g = self.groups.get(group) or GroupInfo()
        policy = g.borrow or self.borrow
        if policy.mode == "work_conserving":
            return None
        active = [name for name, n in self.unfinished.items() if n > 0]
        weights = {name: info.weight for name, info in self.groups.items()}
        total = self.total_slots if self.total_slots is not None else capacity
        return borrow_check(group, g.running, weights, active, total, policy)

    def candidates(self, offer: Offer, alive: Callable[[int], bool]) -> list[tuple[Any, ...]]:
        """Fitting bucket heads as ``(band, share, key, shape, fit)``: the head's band, then
        fair order.

        ``alive(i)`` says whether task ``i`` is still ready; dead heads are dropped here, lazily.
        O(shapes + dropped · log n).
        """
        out = []
        groups = self.groups
        capacity = offer.capacity if offer.capacity is not None else offer.slots
        refused: dict[str, bool] = {}
        for sid, heap in enumerate(self.heaps):
            if not heap:
                continue
            shape = self.shapes[sid]
            g = groups[shape.group]
            if g.cap is not None and g.running >= g.cap:
                continue
            no = refused.get(shape.group)
            if no is None:
                no = refused[shape.group] = self.borrow_refusal(shape.group, capacity) is not None
            if no:
                continue  # beyond its fair share by all its policy lets it borrow
            ep = shape.endpoint
            if ep is not None and self.endpoint_running.get(ep, 0) >= self.endpoint_caps.get(
                ep, 1 << 30
            ):
                continue  # the endpoint's adaptive limit allows no more waiting tasks
            fit = offer.fit_count(shape)
            if fit <= 0:
                continue
            while heap and not self._alive(heap[0], alive):
                heapq.heappop(heap)
            if heap:
                out.append((band_from(heap[0][0]), g.share(), heap[0][:3], sid, fit))
        out.sort()
        return out

    def _alive(self, entry: tuple[int, ...], alive: Callable[[int], bool]) -> bool:
        if len(entry) == 3:
            return alive(entry[2])
        gang = self._gang_names[entry[3]]
        members = self.gang_ready.get(gang, [])
        return len(members) == self.gang_size[gang] and all(alive(m) for m in members)

    def pick(self, offer: Offer, alive: Callable[[int], bool], now: float) -> Pick | None:
        """The next task (or whole gang) to start on ``offer``; pops it. ``None``: nothing fits,
        or free slots are held for a gang at the head of the fair order.

        A gang that cannot use this offer (larger than the worker, or its reservation ran out)
        is set aside for this decision, so the tasks of its shape behind it still start (no
        head-of-line blocking). O(shapes + set-aside gangs · log n).
        """
        capacity = offer.capacity if offer.capacity is not None else offer.slots
        order = self.candidates(offer, alive)  # sorted, hence already a heap
        aside: list[tuple[int, tuple[int, ...]]] = []
        try:
            while order:
                _band, share, _key, sid, fit = heapq.heappop(order)
                heap = self.heaps[sid]
                entry = heap[0]
                shape = self.shapes[sid]
                if len(entry) == 3:
                    heapq.heappop(heap)
                    return Pick(sid, (entry[2],), shape.group)
                gang = self._gang_names[entry[3]]
                size = self.gang_size[gang]
                g = self.groups[shape.group]
                room = size if g.cap is None else g.cap - g.running
                if fit >= size and room >= size:
                    heapq.heappop(heap)
                    members = tuple(sorted(self.gang_ready.pop(gang)))
                    for m in members:
                        self._member_key.pop(m, None)
                    self.reservations.pop(gang, None)
                    self.released.discard(gang)
                    return Pick(sid, members, shape.group)
                if size <= capacity and gang not in self.released:
                    since = self.reservations.setdefault(gang, now)
                    if now - since < self.gang_wait_s:
                        return None  # hold the free slots for the gang
                    self.reservations.pop(gang, None)
                    self.released.add(gang)
                # This gang cannot start here now: look behind it in its own heap.
                aside.append((sid, heapq.heappop(heap)))
                while heap and not self._alive(heap[0], alive):
                    heapq.heappop(heap)
                if heap:
                    heapq.heappush(order, (band_from(heap[0][0]), share, heap[0][:3], sid, fit))
            return None
        finally:
            for sid, entry in aside:
                heapq.heappush(self.heaps[sid], entry)

    def started(self, group: str, n: int = 1) -> None:
        self.groups.setdefault(group, GroupInfo()).running += n

    def finished(self, group: str, n: int = 1) -> None:
        self.groups[group].running -= n

    def started_shape(self, sid: int, n: int = 1) -> None:
        """``n`` tasks of shape ``sid`` started: count them for their group and endpoint."""
        shape = self.shapes[sid]
        self.started(shape.group, n)
        if shape.endpoint is not None:
            ep = self.endpoint_running
            ep[shape.endpoint] = ep.get(shape.endpoint, 0) + n

    def finished_shape(self, sid: int, n: int = 1) -> None:
        shape = self.shapes[sid]
        self.finished(shape.group, n)
        if shape.endpoint is not None:
            self.endpoint_running[shape.endpoint] -= n

    def set_endpoint_cap(self, endpoint: str, cap: int) -> None:
        """How many tasks calling ``endpoint`` may run at once (from its adaptive limit)."""
        self.endpoint_caps[endpoint] = max(1, cap)

    def ready_count(self) -> int:
        return sum(len(h) for h in self.heaps)


def fair_targets(weights: Mapping[str, float], slots: int) -> dict[str, float]:
    """Each group's share of ``slots`` by weight (for reports and ``why``)."""
    total = sum(weights.values())
    return {g: slots * w / total for g, w in weights.items()} if total else {}


def group_order(groups: Iterable[tuple[str, GroupInfo]]) -> list[str]:
    """Groups by fair-share position: lowest running/weight first."""
    return [name for name, _ in sorted(groups, key=lambda kv: (kv[1].share(), kv[0]))]
