"""Time as a parameter: the one ``Clock`` the engine, the worker loop and the limiter are given.

Two scales, because callers need both: ``now()`` is monotonic seconds (cooldowns, back-off,
timers: immune to the wall clock being set), ``wall()`` is unix seconds (what stores record and
compare across processes, and what HTTP dates mean). ``call_at`` runs a callback once ``now()``
reaches a time, so a test can drive timers with ``conveyor.testing.FakeClock`` instead of sleeping.

Nothing here imports more than the standard library: every layer may depend on it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock", "TimerHandle"]


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    """What every clock offers; ``SystemClock`` is the real one."""

    def now(self) -> float:
        """Monotonic seconds (any origin): for durations, deadlines and timers."""
        ...

    def wall(self) -> float:
        """Unix seconds: for timestamps a store keeps, events and HTTP dates."""
        ...

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` (from any thread) once ``now() >= when``."""
        ...


class SystemClock:
    """The real clock; ``call_at`` runs the callback on a daemon timer thread."""

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        timer = threading.Timer(max(0.0, when - time.monotonic()), callback)
        timer.daemon = True
        timer.start()
        return timer


SYSTEM_CLOCK = SystemClock()
