"""How a worker waits when a shared store has nothing claimable for it: the one back-off and
idle rule of the engine and the worker loop.

Polls start at ``first`` seconds and double up to ``cap`` (PostgreSQL wakes idle workers
earlier through ``Store.wait_for_work``); a retry coming due shortens the wait. A worker is
idle only while nothing is claimable for it *and* nothing it could wait for is on its way: no
task running anywhere (its end may make children ready; a lease that expires makes it
claimable again, so a running task counts until it is reaped) and no retry waiting to come
due. Once idle for ``idle_exit`` seconds the worker gives up. Finding work, or seeing work on
its way, starts it all over.
"""

from __future__ import annotations

__all__ = ["IdleBackoff"]

FIRST_POLL = 0.005  # s: first re-poll of a shared store that had nothing claimable
MAX_POLL = 0.5  # s: back-off cap


class IdleBackoff:
    __slots__ = ("_poll", "_since", "cap", "first", "idle_exit")

    def __init__(
        self, idle_exit: float | None, *, first: float = FIRST_POLL, cap: float = MAX_POLL
    ) -> None:
        self.idle_exit = idle_exit
        self.first = first
        self.cap = cap
        self._poll = first
        self._since: float | None = None

    def busy(self) -> None:
        """Work was found: the next idle spell starts from the first poll."""
        self._since = None
        self._poll = self.first

    def next_wait(self, now: float, wakeup: float | None, *, running: bool = False) -> float | None:
        """Seconds to wait before looking again (``now`` and ``wakeup``, the earliest retry
        coming due, in the same unix seconds); ``None`` once idle for ``idle_exit``. With a
        retry waiting or a task ``running`` anywhere (``Store.has_running``) the worker is not
        idle: the idle spell starts over."""
        if running or wakeup is not None:
            self._since = None
        elif self._since is None:
            self._since = now
        elif self.idle_exit is not None and now - self._since >= self.idle_exit:
            return None
        wait = self._poll
        self._poll = min(wait * 2, self.cap)
        if wakeup is not None:
            wait = min(wait, max(0.0, wakeup - now))
        return wait
