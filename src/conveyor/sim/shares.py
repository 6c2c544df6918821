"""Per-group figures of a simulation: each group's share of the slots over time, how long a
group took, after it arrived, to run its fair share, and how long it waited below it.

Both read the admission queue's own counts (``GroupInfo.running``, ``AdmissionQueue.unfinished``)
and the one fair-share rule (``core/borrow.py``: ``fair_share``), so what they report is what
admission decided on. On only with two groups or more (besides ``default``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from conveyor.core.admission import AdmissionQueue
from conveyor.core.borrow import fair_share


class Shares:
    """Each group's average share of the slots per time window, its time to share and the time
    it waited below its share.

    A group *reaches its share* the first time, at or after its arrival, that it runs at least
    its fair share of the slots among the groups active then, rounded down (a group with fewer
    unfinished tasks than that: all of them). ``time_to_share[g]`` is that moment less the
    group's arrival; a group that never does has none. ``below_share[g]`` adds up the time the
    group had ready tasks waiting while it ran fewer than its share (rounded down): the time
    it was owed slots that others held."""

    def __init__(
        self,
        q: AdmissionQueue | None,
        slots: int,
        horizon: float,
        windows: int,
        arrivals: Mapping[str, float],
    ) -> None:
        self.on = q is not None and len([g for g in q.groups if g != "default"]) > 1
        self.q = q
        self.slots = slots
        self.width = max(horizon / max(windows, 1), 1e-9)
        self.acc: list[dict[str, float]] = []
        self.arrivals = dict(arrivals)
        self.time_to_share: dict[str, float] = {}
        self.below_share: dict[str, float] = {}
        self._waiting = {g for g in self.arrivals if g != "default"} if self.on else set()
        self._owed: list[str] = []

    def check(self, now: float) -> None:
        """Note which groups run their share now (called after each round of starts)."""
        q = self.q
        if q is None:
            return
        unfinished = q.unfinished
        active = [g for g, n in unfinished.items() if n > 0]
        weights = {g: info.weight for g, info in q.groups.items()}
        ready = {q.shapes[sid].group for sid, heap in enumerate(q.heaps) if heap}
        self._owed = []
        for g in active:
            if g == "default" or now < self.arrivals.get(g, 0.0):
                continue
            floor = math.floor(fair_share(g, weights, active, self.slots) + 1e-9)
            running = q.groups[g].running
            if g in self._waiting and running >= min(floor, unfinished[g]):
                self.time_to_share[g] = now - self.arrivals[g]
                self._waiting.discard(g)
            if g in ready and running < floor:
                self._owed.append(g)

    def advance(self, t0: float, t1: float) -> None:
        """Add the running counts times the time from ``t0`` to ``t1`` to their windows, and
        that time to the groups owed slots."""
        assert self.q is not None
        for g in self._owed:
            self.below_share[g] = self.below_share.get(g, 0.0) + (t1 - t0)
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
        names = self.names()
        out: list[tuple[float, float, dict[str, float]]] = []
        for k, acc in enumerate(self.acc):
            start, end = k * self.width, min((k + 1) * self.width, makespan)
            if start >= makespan and out:
                break
            span = (end - start) * self.slots
            out.append((start, end, {g: acc.get(g, 0.0) / span if span > 0 else 0.0
                                     for g in names}))  # fmt: skip
        return out

    def names(self) -> list[str]:
        assert self.q is not None
        return sorted(g for g in self.q.groups if g != "default")
