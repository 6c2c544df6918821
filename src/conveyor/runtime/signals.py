"""Signals that make a durable worker hand its running tasks back and leave: ``SIGUSR2``
(what ``sbatch --signal=B:USR2@<margin>`` sends before a job's time limit) and ``SIGTERM``
(``scancel``, preemption, a requeue). The handler only posts ``Engine.hand_back``; the engine
acts between two steps (runtime/engine.py), so nothing is left half done.
"""

from __future__ import annotations

import signal
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from conveyor.runtime.engine import Engine

__all__ = ["HAND_BACK_SIGNALS", "HandBackOnSignals"]

HAND_BACK_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)


class HandBackOnSignals:
    """While open (a context manager, on the main thread), ``HAND_BACK_SIGNALS`` ask the
    attached engine to hand back with the reason ``"signal SIGUSR2"`` (or ``SIGTERM``). A
    signal that comes before an engine is attached is remembered and posted on ``attach``."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._engine: Engine | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> HandBackOnSignals:
        for sig in HAND_BACK_SIGNALS:
            self._old[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(
        self, tp: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def attach(self, engine: Engine) -> None:
        self._engine = engine
        if self.reason is not None:
            engine.hand_back(self.reason)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.reason is None:
            self.reason = f"signal {signal.Signals(signum).name}"
        if self._engine is not None:
            self._engine.hand_back(self.reason)
