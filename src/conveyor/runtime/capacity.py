"""What one worker offers (slots, resources, labels) and what its running tasks use.

Admission judges fit against an ``Offer``: the free slots (a parent waiting on its children
lends its slot), the resources not in use, the labels. ``unfit`` refuses up front a task the
worker could never run even when idle (in-process runs, where the engine is the only worker).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from conveyor.core.offer import Offer
from conveyor.errors import GraphError
from conveyor.model import TaskSpec
from conveyor.store.base import Store

__all__ = ["Capacity"]


class Capacity:
    """One worker's capacity; ``resources`` empty means resources are not accounted."""

    __slots__ = ("_used", "labels", "resources", "slots")

    def __init__(
        self, slots: int, resources: Mapping[str, float] | None, labels: Mapping[str, Any] | None
    ) -> None:
        self.slots = slots
        self.resources = dict(resources or {})
        self.labels = dict(labels or {})
        self._used: dict[str, float] = {}

    def offer(self, busy: int, lent: int, time_left: float | None = None) -> Offer:
        """What the worker can take now, with ``busy`` tasks running, ``lent`` slots lent and
        ``time_left`` seconds to its end (``None``: no end)."""
        res = self.resources
        if res and self._used:
            res = {k: v - self._used.get(k, 0.0) for k, v in res.items()}
        return Offer(
            self.slots + lent - busy, res, self.labels, self.slots, self.resources, time_left
        )

    def take(self, spec: TaskSpec) -> None:
        """``spec`` starts: its resources are in use."""
        if self.resources and spec.resources:
            self._count(spec.resources, 1.0)

    def give_back(self, spec: TaskSpec) -> None:
        """``spec`` ended: its resources are free again."""
        if self.resources and spec.resources:
            self._count(spec.resources, -1.0)

    def _count(self, resources: Mapping[str, float], sign: float) -> None:
        used = self._used
        for k, v in resources.items():
            used[k] = used.get(k, 0.0) + sign * v

    def check_fit(self, store: Store, now: float) -> None:
        """Raise ``GraphError`` naming a task this worker could never run, even when idle."""
        idle = Offer(self.slots, dict(self.resources), self.labels, self.slots)
        message = store.unfit(idle, now)
        if message is not None:
            raise GraphError(message)
