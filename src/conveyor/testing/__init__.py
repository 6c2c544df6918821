"""Helpers for testing code that uses conveyor: a clock that moves only when told to, and an
event sink that keeps what it is given. Both are what conveyor's own tests use.

    from conveyor.testing import EventLog, FakeClock

    clock, log = FakeClock(), EventLog()
    limiter = EndpointLimiter(clock=clock)          # cooldowns end when the test says so
    conveyor.run(graph, emit=log)
    assert log.tasks("task_started") == ["a", "b"]

Nothing here sleeps: ``FakeClock.advance`` runs the timers that fall due, in time order, on the
calling thread.

A fake OpenAI-compatible server for LLM columns lives in ``conveyor.testing.fake_llm`` (it needs
aiohttp: ``pip install -e '.[llm]'``); importing this package does not load it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from conveyor.clock import TimerHandle
from conveyor.events import Event

__all__ = ["EventLog", "FakeClock"]


class _FakeTimer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when, self.callback, self.cancelled = when, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """A ``conveyor.clock.Clock`` that moves only by ``advance(seconds)``; thread-safe.

    ``now()`` starts at ``start``; ``wall()`` is ``wall_offset + now()`` (by default a fixed
    date in November 2023, so HTTP dates and store timestamps look real).
    """

    def __init__(self, start: float = 0.0, wall_offset: float = 1_700_000_000.0) -> None:
        self._now = start
        self._wall_offset = wall_offset
        self._timers: list[_FakeTimer] = []
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._wall_offset + self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        timer = _FakeTimer(when, callback)
        with self._lock:
            self._timers.append(timer)
        return timer

    @property
    def pending_timers(self) -> int:
        """Timers armed and neither run nor cancelled."""
        with self._lock:
            return sum(not t.cancelled for t in self._timers)

    def advance(self, seconds: float) -> None:
        """Move time forward, then run every timer now due (earliest first)."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        with self._lock:
            self._now += seconds
        while True:
            with self._lock:
                now = self._now
                due = sorted((t for t in self._timers if t.when <= now), key=lambda t: t.when)
                self._timers = [t for t in self._timers if t.when > now]
            if not due:
                return
            for timer in due:  # outside our lock: a callback may take its own locks
                if not timer.cancelled:
                    timer.callback()


class EventLog:
    """An ``emit=`` sink that keeps a copy of every event; thread-safe."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.events.append(dict(event))

    def of(self, name: str) -> list[Event]:
        """The events called ``name``, in the order they came."""
        with self._lock:
            return [e for e in self.events if e["event"] == name]

    def tasks(self, name: str) -> list[str]:
        """The ``task`` of each event called ``name`` (e.g. the start order)."""
        return [e["task"] for e in self.of(name)]

    def names(self, task: str) -> list[str]:
        """The names of one task's events, in order."""
        with self._lock:
            return [e["event"] for e in self.events if e.get("task") == task]
