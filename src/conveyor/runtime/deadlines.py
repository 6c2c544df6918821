"""Timeouts of running tasks that nothing else enforces (thread, process and inline tasks;
coroutines use ``asyncio.wait_for`` and commands ``communicate(timeout=)``).

A heap of ``(deadline, handle, id(run))``; an entry whose run finished, or whose deadline was
dropped, no longer matches and is skipped when it comes due.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping

from conveyor.runtime.executors import Running

__all__ = ["Deadlines"]


class Deadlines:
    __slots__ = ("_heap",)

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int]] = []

    def add(self, run: Running, deadline: float) -> None:
        run.deadline = deadline
        heapq.heappush(self._heap, (deadline, run.claim.handle, id(run)))

    @staticmethod
    def drop(run: Running) -> None:
        """Something else enforces this run's timeout: its heap entry no longer matches."""
        run.deadline = None

    def wait(self, now: float, longest: float) -> float:
        """Seconds until the earliest deadline, at most ``longest``."""
        heap = self._heap
        return min(longest, max(0.0, heap[0][0] - now)) if heap else longest

    def due(self, now: float, running: Mapping[int, Running]) -> list[Running]:
        """The runs still in ``running`` whose deadline has passed (each returned once)."""
        out = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, handle, rid = heapq.heappop(heap)
            run = running.get(handle)
            if run is not None and id(run) == rid and run.deadline is not None:
                out.append(run)
        return out
