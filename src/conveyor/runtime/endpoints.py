"""The engine's side of rate-limited endpoints: it follows each endpoint's adaptive limit.

Tasks that declare an ``endpoint`` share one ``EndpointLimiter`` per engine
(``current().acquire()``). Every tick the engine caps the tasks it starts per endpoint at
``ceil(limit * (1 + headroom))``, so a 429-ing endpoint cannot hold slots that other endpoints'
tasks could use; on shared stores it also publishes the limiter's statistics for
``conveyor status`` and for the other workers, and reads theirs (``exchange``): each process
keeps its own limit, and what the others report keeps their sum near the endpoint's capacity
(docs/architecture.md, "Endpoint limits across processes"). The limiter module is imported only
when a task names an endpoint.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from conveyor.clock import Clock
from conveyor.events import EventSink
from conveyor.store.base import Store

if TYPE_CHECKING:
    from conveyor.limiter import EndpointLimiter, EndpointStatistics

__all__ = ["SHARE_EVERY_S", "EndpointFollower"]

#: Seconds between a worker's endpoint exchanges (its report written, the others' read) while
#: it uses an endpoint: a round trip or a few of an LLM API, so another process's 429 reaches
#: the ones holding more than their part within about a second; one small write and one read
#: of a row per worker each time. Without an endpoint the report rides the lease beat.
SHARE_EVERY_S = 1.0
#: A report older than this many exchanges is from a worker that left or hangs: not a peer.
STALE_AFTER = 5


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
        self._seen: dict[str, dict[str, int]] = {}  # endpoint -> worker -> 429s at last look
        self._exchanged = -math.inf  # when this worker last exchanged endpoint reports

    @property
    def limiter(self) -> EndpointLimiter:
        """The limiter tasks share; made (on the engine's clock) at first use."""
        if self._limiter is None:
            from conveyor.limiter import EndpointLimiter

            self._limiter = EndpointLimiter(clock=self._clock)
        return self._limiter

    def statistics(self) -> dict[str, EndpointStatistics]:
        """The limiter's statistics per endpoint, ``{}`` before any task made it. Thread-safe."""
        return {} if self._limiter is None else self._limiter.statistics()

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

    def exchange_due(self, now: float, lease_s: float) -> bool:
        """Whether to ``exchange`` now: every ``SHARE_EVERY_S`` once a task used an endpoint,
        else every third of the lease (the report then only serves ``conveyor status``)."""
        every = lease_s / 3 if self._limiter is None else min(lease_s / 3, SHARE_EVERY_S)
        return now - self._exchanged >= every

    def exchange(self, worker: str, now: float, *, learn: bool = True) -> None:
        """Publish this worker's endpoint statistics (shared stores: for ``conveyor status``
        and the other workers); with ``learn``, read the other workers' fresh reports and hand
        each endpoint's ``Peers`` to the limiter. O(workers x endpoints) per call."""
        self._exchanged = now
        if self._limiter is None:
            return
        seen = self._limiter.statistics()
        stats = {k: {"limit": st.limit, "peers": st.peers, **_load(st)} for k, st in seen.items()}
        if not stats:
            return
        self._store.report_endpoints(worker, now, stats)
        if not learn:
            return
        from conveyor.core.limiter import tally_peers  # (not imported by runs without endpoints)

        reports = self._store.endpoint_reports(now, STALE_AFTER * SHARE_EVERY_S)
        for key, st in seen.items():
            others = {w: rep[key] for w, rep in reports.items() if w != worker and key in rep}
            peers, self._seen[key] = tally_peers(st.limit, others, self._seen.get(key, {}))
            self._limiter.share(key, peers)
