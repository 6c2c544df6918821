"""Typed events and where they go (JSON Lines files, callbacks).

An event records one committed transition: ``{"ts", "event", "task", "worker", "attempt", ...}``.
Event names are a public contract: ``EVENT_NAMES`` is every kind the code emits and README.md
lists the same (``tests/test_events_contract.py`` checks both against the code).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import IO, Any

EVENT_NAMES = frozenset(
    {
        "task_submitted", "task_ready", "task_started", "task_finished", "task_failed",
        "task_retrying", "task_skipped", "task_cancelled", "task_invalidated", "task_removed",
        "task_released", "task_preempted", "lease_expired",
        "worker_joined", "worker_lost", "admission_blocked", "group_capped", "gang_reserved",
        "gang_started", "endpoint_limit_changed",
        "build_started", "row_group_started", "row_group_written", "row_dropped", "build_finished",
    }
)  # fmt: skip

Event = dict[str, Any]
EventSink = Callable[[Event], None]


class JsonlSink:
    """Appends one JSON object per line. Thread-safe; flushes each line so a crash loses none
    already written (the store, not this file, is the source of truth for durable runs).
    A new file is readable by its owner only (``0600``): events carry errors and ids."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            self._file: IO[str] = open(fd, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        except OSError as exc:  # a file that cannot be appended to (/proc/version): say which
            os.close(fd)
            raise OSError(exc.errno, exc.strerror, os.fspath(path)) from None
        self._path = os.fspath(path)
        self._lock = threading.Lock()
        import json  # (here: a run that writes no event file need not import it)

        self._dumps = json.dumps

    def __call__(self, event: Event) -> None:
        line = self._dumps(event, default=str, separators=(",", ":"))
        with self._lock:
            try:
                self._file.write(line + "\n")
                self._file.flush()
            except OSError as exc:  # a full disk: say which file
                raise OSError(exc.errno, exc.strerror, self._path) from None

    def close(self) -> None:
        with self._lock:
            try:
                self._file.close()
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, self._path) from None


class FanOut:
    """Several sinks as one."""

    def __init__(self, sinks: list[EventSink]) -> None:
        self.sinks = sinks

    def __call__(self, event: Event) -> None:
        for sink in self.sinks:
            sink(event)


def combine(sinks: list[EventSink | None]) -> EventSink | None:
    real = [s for s in sinks if s is not None]
    if not real:
        return None
    return real[0] if len(real) == 1 else FanOut(real)
