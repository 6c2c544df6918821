"""The engine's side of rate-limited endpoints: it follows each endpoint's adaptive limit.

Tasks that declare an ``endpoint`` share one ``EndpointLimiter`` per engine
(``current().acquire()``). Every tick the engine caps the tasks it starts per endpoint at
``ceil(limit * (1 + headroom))``, so a 429-ing endpoint cannot hold slots that other endpoints'
tasks could use; on shared stores it also publishes the limiter's statistics for
``conveyor status``. The limiter module is imported only when a task names an endpoint.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from conveyor.clock import Clock
from conveyor.events import EventSink
from conveyor.store.base import Store

if TYPE_CHECKING:
    from conveyor.limiter import EndpointLimiter, EndpointStatistics

__all__ = ["EndpointFollower"]


def _load(st: EndpointStatistics) -> dict[str, Any]:
    """How busy one endpoint is, as events and ``Store.report_endpoints`` tell it."""
    return {
        "in_flight": st.in_flight, "waiting": st.waiting, "rate_limited": st.rate_limited,
        "cooldown_left": st.cooldown_left,
    }  # fmt: skip


class EndpointFollower:
    """Sets the store's per-endpoint task caps from one shared limiter."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        emit: EventSink | None,
        headroom: float,
        limiter: EndpointLimiter | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._emit = emit
        self.headroom = headroom
        self._limiter = limiter
        self._limits: dict[str, int] = {}  # the last limit seen per endpoint

    @property
    def limiter(self) -> EndpointLimiter:
        """The limiter tasks share; made (on the engine's clock) at first use."""
        if self._limiter is None:
            from conveyor.limiter import EndpointLimiter

            self._limiter = EndpointLimiter(clock=self._clock)
        return self._limiter

    def follow(self, now: float) -> None:
        """Cap each endpoint's tasks at its limit plus headroom; emit ``endpoint_limit_changed``
        when a limit moved. O(endpoints) per tick."""
        endpoints = self._store.endpoints()
        if not endpoints:
            return
        limiter = self.limiter
        for ep in endpoints:
            st = limiter.key_statistics(ep)
            cap = max(1, math.ceil(st.limit * (1.0 + self.headroom)))
            self._store.set_endpoint_cap(ep, cap)
            old = self._limits.get(ep)
            if old != st.limit:
                self._limits[ep] = st.limit
                if self._emit is not None and old is not None:
                    self._emit({"ts": now, "event": "endpoint_limit_changed", "endpoint": ep,
                                "old": old, "new": st.limit, "task_cap": cap,
                                **_load(st)})  # fmt: skip

    def report(self, worker: str, now: float) -> None:
        """Publish this worker's endpoint statistics (shared stores, for ``conveyor status``)."""
        if self._limiter is None:
            return
        seen = self._limiter.statistics()
        stats = {k: {"limit": st.limit, **_load(st)} for k, st in seen.items()}
        if stats:
            self._store.report_endpoints(worker, now, stats)
