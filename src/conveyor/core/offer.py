"""The two parts of admission (``core/admission.py``) every in-process run touches, in a module
of their own: what one worker has free right now (``Offer``; the engine's fit check makes
one), and whether a graph needs admission at all (``needs_admission``). The rest of admission
(shapes, the queue, borrowing) is imported only for graphs with groups, resources, labels,
gangs, endpoints or expected run times. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conveyor.core.timelimit import fits_in

if TYPE_CHECKING:
    from conveyor.core.admission import Shape

__all__ = ["Offer", "needs_admission"]


@dataclass(frozen=True, slots=True)
class Offer:
    """What one worker has free right now. ``resources`` empty means resources are not
    accounted on this worker (only slots are)."""

    slots: int
    resources: Mapping[str, float] = field(default_factory=dict)
    labels: Mapping[str, Any] = field(default_factory=dict)
    capacity: int | None = None  # total slots of the worker (None: same as ``slots``)
    total: Mapping[str, float] | None = None  # resources when idle (None: same as ``resources``)
    #: Seconds until the worker's end (``None``: no end); see ``core/timelimit.py``.
    time_left: float | None = None

    def fit_count(self, shape: Shape) -> int:
        """How many tasks of ``shape`` fit at once (0: none)."""
        if self.slots <= 0 or not all(c.matches(self.labels) for c in shape.constraints):
            return 0
        if not fits_in(shape.expected_s, self.time_left):
            return 0
        n = self.slots
        if self.resources:
            for name, need in shape.resources:
                have = self.resources.get(name, 0.0)
                n = min(n, int(have // need + 1e-9))
                if n <= 0:
                    return 0
        return n

    def take(self, shape: Shape, count: int = 1) -> Offer:
        res = dict(self.resources)
        if res:
            for name, need in shape.resources:
                res[name] = res.get(name, 0.0) - need * count
        return Offer(
            self.slots - count, res, self.labels, self.capacity, self.total, self.time_left
        )


def needs_admission(tasks: Iterable[Any], groups: Mapping[str, Any]) -> bool:
    """Whether a graph needs admission at all: declared groups, or a task with a group other
    than ``default``, resources, labels, a gang or an endpoint. Plain graphs keep the
    depth-first fast path."""
    return bool(groups) or any(
        t.group != "default" or t.resources or t.labels or t.gang or t.endpoint
        or t.expected_s is not None
        for t in tasks
    )  # fmt: skip
