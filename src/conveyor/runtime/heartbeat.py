"""A worker's heartbeats on a shared store, from a thread of their own: the one home of lease
renewal for the engine (``conveyor worker``, ``conveyor run --db``) and the worker loop.

Every ``lease_s / 3`` the thread marks the worker seen, renews every lease it holds and reaps
leases that expired elsewhere, on a store handle of its own (a connection belongs to one
thread). So leases never depend on what the worker's own loop is doing: draining no-op tasks
for minutes, running an ``executor="inline"`` task longer than its lease, or waiting in the body
of a ``conveyor.worker`` loop.

Not starved: on SQLite the beat needs the store's writer lock, which a worker draining no-ops
takes again the moment it lets go. A beat that has waited ``YIELD_AFTER_S`` for the store is
``pending`` until it is done; a claim loop checks it between claims, stops claiming and calls
``wait`` (at most one beat period per beat), so the beat gets the lock next. A beat that gets
its store at once (PostgreSQL, a quiet SQLite) pauses nobody. A beat that fails (the lock
timed out, the server went away) is tried again at the next period: a lease outlives two
missed beats.
"""

from __future__ import annotations

import threading
import time

from conveyor.clock import Clock
from conveyor.events import EventSink
from conveyor.store.base import Store
from conveyor.store.urls import open_store

__all__ = ["YIELD_AFTER_S", "Heartbeat"]

#: Seconds a beat may wait for its store before claim loops yield to it: longer than a beat
#: takes on a store that is not starved (a few ms), far shorter than a lease.
YIELD_AFTER_S = 0.05


class Heartbeat:
    """Renews ``worker``'s leases in the store at ``url`` every ``lease_s / 3`` seconds."""

    __slots__ = (
        "_done", "_due", "_due_at", "_stop", "_thread", "clock", "emit", "lease_s", "url",
        "worker",
    )  # fmt: skip

    def __init__(
        self, url: str, worker: str, lease_s: float, clock: Clock, *, emit: EventSink | None = None
    ) -> None:
        self.url = url
        self.worker = worker
        self.lease_s = lease_s
        self.clock = clock
        #: Where reaping reports ``lease_expired``/``worker_lost`` (called from the thread).
        self.emit = emit
        self._stop = threading.Event()
        self._due = threading.Event()  # a beat wants the store: claim loops yield to it
        self._done = threading.Event()
        self._due_at = 0.0  # time.monotonic() when the beat in progress began
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> bool:
        """A beat has waited ``YIELD_AFTER_S`` for the store: stop claiming and ``wait``."""
        return self._due.is_set() and time.monotonic() - self._due_at >= YIELD_AFTER_S

    def wait(self, timeout: float | None = None) -> None:
        """Block until the pending beat is done, at most ``timeout`` (default a beat period).
        A beat that takes longer (its store is stuck) is waited for once: it is no longer
        ``pending``, and the claim loop goes on."""
        if not self._done.wait(self.lease_s / 3 if timeout is None else timeout):
            self._due.clear()

    def start(self) -> Heartbeat:
        """Start beating (after the worker registered: a beat marks a known worker seen)."""
        # Opened here, not in the thread: a store that cannot be opened fails the caller now.
        store = open_store(self.url, emit=self.emit, clock=self.clock)
        self._thread = threading.Thread(
            target=self._beat_forever, args=(store,), name="conveyor-heartbeat", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating and wait for a beat in progress (before the worker unregisters, so
        that a last beat does not mark it alive again). Idempotent."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(5.0, self.lease_s))

    def _beat_forever(self, store: Store) -> None:
        period = self.lease_s / 3
        try:
            while not self._stop.wait(period):
                self._done.clear()
                self._due_at = time.monotonic()
                self._due.set()
                try:
                    now = self.clock.wall()
                    store.heartbeat(self.worker, now, self.lease_s)
                    store.reap_expired(now)
                except Exception:  # the thread must outlive a failed beat
                    pass  # tried again next period; a lease outlives two missed beats
                finally:
                    self._due.clear()
                    self._done.set()
        finally:
            store.close()
