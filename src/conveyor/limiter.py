"""Adaptive request admission per endpoint, at the edge: queues, wake-ups and clocks.

``EndpointLimiter`` keeps one ``conveyor.core.limiter.KeyState`` per endpoint key and lets
callers in through it::

    limiter = EndpointLimiter()
    async with limiter.acquire("openai/gpt-4o/chat") as slot:
        response = await client.post(...)
        slot.report(response.status_code, retry_after=response.headers.get("retry-after"))

The policy (slow start, AIMD, Retry-After) is decided in ``conveyor.core.limiter``; this module
only queues callers FIFO per key, hands freed slots to the oldest waiter, and wakes waiters when
a cooldown ends (a timer on the injected ``Clock``, so no release is needed to get going again).

Threads and event loops: one ``threading.Lock`` guards all state; an async waiter is a future on
its own loop, woken with ``call_soon_threadsafe``, a sync waiter a ``threading.Event``. So one
limiter serves asyncio tasks on several loops and plain threads at once. Every admitted slot is
released exactly once: by leaving its block (reported or not), by ``release()``, or -- for a
waiter cancelled just as a slot was handed to it -- by the cancellation itself.

(Over 400 lines on purpose: waiters, slots and the limiter read and change one state under that
one lock; split apart, each would reach into the others' private state.)

Size: async, sync and non-blocking acquisition share one waiter queue per endpoint and one wake-
up rule, so they live together; the policy itself is the pure ``core/limiter.py``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import math
import random
import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar, cast

from conveyor import http as _http
from conveyor.clock import SYSTEM_CLOCK, Clock, TimerHandle
from conveyor.core import limiter as core
from conveyor.core.limiter import AimdPolicy, Outcome, Report
from conveyor.core.retry import DEFAULT_RETRY, RetryPolicy
from conveyor.errors import WouldBlock

__all__ = [
    "Acquire",
    "EndpointLimiter",
    "EndpointStatistics",
    "Outcome",
    "Slot",
    "WouldBlock",
]

F = TypeVar("F", bound=Callable[..., Any])
OnChange = Callable[[str, int, int, str], None]
_CANCELLED_EXC = (asyncio.CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit)


@dataclass(frozen=True, slots=True)
class EndpointStatistics:
    """A snapshot of one endpoint key, as ``conveyor status`` shows it."""

    key: str
    limit: int
    in_flight: int
    waiting: int
    cooldown_left: float
    slow_start: bool
    admitted: int
    successes: int
    rate_limited: int  # 429s
    overloaded: int  # 503/529s
    failures: int
    cancelled: int
    decreases: int
    increases: int
    peers: int = 1  # processes using this endpoint as last told (``share``), this one included


class _Waiter:
    __slots__ = ("ticket",)

    def __init__(self) -> None:
        self.ticket: core.Ticket | None = None

    def wake(self) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError


class _SyncWaiter(_Waiter):
    __slots__ = ("event",)

    def __init__(self) -> None:
        super().__init__()
        self.event = threading.Event()

    def wake(self) -> bool:
        self.event.set()
        return True


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _AsyncWaiter(_Waiter):
    __slots__ = ("fut", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.fut: asyncio.Future[None] = loop.create_future()

    def wake(self) -> bool:
        try:
            if _running_loop() is self.loop:  # same thread: no self-pipe write needed
                _resolve(self.fut)  # only schedules the waiter's callbacks
            else:
                self.loop.call_soon_threadsafe(_resolve, self.fut)
        except RuntimeError:  # its loop is closed: nobody will take the slot
            return False
        return True


class _Endpoint:
    __slots__ = ("counts", "decreases", "increases", "key", "state", "timer", "timer_at", "waiters")

    def __init__(self, key: str, state: core.KeyState) -> None:
        self.key = key
        self.state = state
        self.waiters: deque[_Waiter] = deque()
        self.timer: TimerHandle | None = None
        self.timer_at = -math.inf
        self.counts = dict.fromkeys(Outcome, 0)  # released slots by outcome
        self.decreases = 0
        self.increases = 0


class Slot:
    """One admitted request. Report how it went, then leave the block (or call ``release``)."""

    __slots__ = ("_ep", "_limiter", "_released", "_report", "key", "ticket")

    def __init__(self, limiter: EndpointLimiter, ep: _Endpoint, ticket: core.Ticket) -> None:
        self._limiter = limiter
        self._ep = ep
        self.key = ep.key
        self.ticket = ticket
        self._report: Report | None = None
        self._released = False

    @property
    def outcome(self) -> Outcome | None:
        return None if self._report is None else self._report.outcome

    def report(
        self, result: object, retry_after: object = None, *, quota_exhausted: bool = False
    ) -> Outcome:
        """Record how the request ended: a status code, an exception, a response, an Outcome.

        ``retry_after``: the Retry-After header as sent (seconds or HTTP date) or None.
        ``quota_exhausted``: a 429 whose body says ``insufficient_quota`` (not retryable).
        Responses and exceptions are classified by ``conveyor.http``. Returns the outcome.
        """
        if self._report is not None:
            raise RuntimeError(f"slot for {self.key!r} was already reported")
        if self._released:
            raise RuntimeError(f"slot for {self.key!r} was already released")
        wall = self._limiter.clock.wall()
        if isinstance(result, Report):
            rep = result
        elif isinstance(result, Outcome):
            rep = Report(result, core.parse_retry_after(retry_after, wall_now=wall))
        elif isinstance(result, int) and not isinstance(result, bool):
            outcome = core.classify_status(result, quota_exhausted=quota_exhausted)
            rep = Report(outcome, core.parse_retry_after(retry_after, wall_now=wall))
        elif isinstance(result, BaseException):
            rep = _http.classify_exception(result, wall_now=wall)
        else:
            rep = _http.classify_response(result, wall_now=wall)
        self._report = rep
        return rep.outcome

    def retry_delay(self, attempt: int) -> float | None:
        """Seconds to wait before retry ``attempt`` of this request; None: do not retry."""
        outcome = self.outcome or Outcome.CANCELLED
        return self._limiter.retry_delay(self.key, attempt, outcome)

    def release(self) -> None:
        """Give the slot back (idempotent); unreported counts as cancelled."""
        self._limiter._release(self, self._report or Report(Outcome.CANCELLED))

    def _exit(self, exc: BaseException | None) -> None:
        if self._report is None and exc is not None and not isinstance(exc, _CANCELLED_EXC):
            self._report = _http.classify_exception(exc, wall_now=self._limiter.clock.wall())
        self.release()

    def __enter__(self) -> Slot:
        return self

    def __exit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._exit(exc)

    async def __aenter__(self) -> Slot:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._exit(exc)


class Acquire:
    """``async with limiter.acquire(key) as slot:``: waits for a slot on entry, releases it on
    exit (an exception leaving the block is classified first, unless the slot was reported)."""

    __slots__ = ("_key", "_limiter", "_slot")

    def __init__(self, limiter: EndpointLimiter, key: str) -> None:
        self._limiter, self._key = limiter, key
        self._slot: Slot | None = None

    async def __aenter__(self) -> Slot:
        self._slot = await self._limiter.acquire_async(self._key)
        return self._slot

    async def __aexit__(
        self, et: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._slot is not None
        self._slot._exit(exc)


class EndpointLimiter:
    """Adaptive per-endpoint concurrency limits (AIMD), shared by tasks, threads and loops.

    Knobs (keyword arguments) are those of ``conveyor.core.limiter.AimdPolicy``; ``aliases``
    maps other keys onto a canonical key (they share its limit, cooldown and hard cap);
    ``caps`` sets per-key hard caps; ``on_change(key, old, new, reason)`` is called outside the
    lock whenever a key's effective limit changes (reason: ``slow_start``, ``increase``,
    ``peers`` (another process's 429: ``share``) or the outcome that lowered it); ``clock`` and
    ``rng`` make it deterministic in tests.
    """

    def __init__(
        self,
        *,
        initial_limit: int = 8,
        min_limit: int = 1,
        max_limit: int = 512,
        decrease_factor: float = 0.9,
        slow_start_decrease: float = 0.5,
        min_window: int = 32,
        probe_factor: int = 4,
        probe_budget: float = 0.02,
        max_cooldown: float = 300.0,
        overload_decreases: bool = True,
        retry: RetryPolicy | None = None,
        aliases: Mapping[str, str] | None = None,
        caps: Mapping[str, int] | None = None,
        on_change: OnChange | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = AimdPolicy(
            initial_limit=min(initial_limit, max_limit),
            min_limit=min_limit,
            max_limit=max_limit,
            decrease_factor=decrease_factor,
            slow_start_decrease=slow_start_decrease,
            min_window=min_window,
            probe_factor=probe_factor,
            probe_budget=probe_budget,
            max_cooldown=max_cooldown,
            overload_decreases=overload_decreases,
            retry=retry or DEFAULT_RETRY,
        )
        self.clock: Clock = clock or SYSTEM_CLOCK
        self._aliases = dict(aliases or {})
        for alias in self._aliases:
            core.resolve_key(alias, self._aliases)  # fail early on bad keys or cycles
        self._caps = {core.resolve_key(k, self._aliases): int(v) for k, v in (caps or {}).items()}
        self._on_change = on_change
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._endpoints: dict[str, _Endpoint] = {}  # canonical key -> endpoint
        self._by_name: dict[str, _Endpoint] = {}  # any key seen (aliases too) -> endpoint

    # -- acquiring --------------------------------------------------------------------------

    def acquire(self, key: str) -> Acquire:
        """``async with limiter.acquire(key) as slot:`` waits for a slot (FIFO per key)."""
        return Acquire(self, key)

    async def acquire_async(self, key: str) -> Slot:
        """Wait for a slot; the caller must ``release()`` it (or use it as a context manager)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            ep = self._endpoint(key)
            slot = self._try_admit_locked(ep)
            if slot is not None:
                return slot
            waiter = _AsyncWaiter(loop)
            self._enqueue_locked(ep, waiter)
        try:
            await waiter.fut
        except BaseException:
            self._abandon(ep, waiter)
            raise
        assert waiter.ticket is not None
        return Slot(self, ep, waiter.ticket)

    def acquire_sync(self, key: str, timeout: float | None = None) -> Slot:
        """``with limiter.acquire_sync(key) as slot:`` blocks this thread for a slot.

        ``timeout`` (real seconds) raises ``TimeoutError``; the place in the queue is given up.
        """
        with self._lock:
            ep = self._endpoint(key)
            slot = self._try_admit_locked(ep)
            if slot is not None:
                return slot
            waiter = _SyncWaiter()
            self._enqueue_locked(ep, waiter)
        try:
            if not waiter.event.wait(timeout):
                raise TimeoutError(f"no slot for {ep.key!r} within {timeout} s")
        except BaseException:
            self._abandon(ep, waiter)
            raise
        assert waiter.ticket is not None
        return Slot(self, ep, waiter.ticket)

    def acquire_nowait(self, key: str) -> Slot:
        """A slot now, or ``WouldBlock`` (full, cooling down, or others already waiting)."""
        with self._lock:
            ep = self._endpoint(key)
            slot = self._try_admit_locked(ep)
        if slot is None:
            raise WouldBlock(f"endpoint {ep.key!r} has no free slot now")
        return slot

    def limited(self, key: str) -> Callable[[F], F]:
        """Decorator: each call of the function holds one slot of ``key``.

        A returned response object is classified (status, Retry-After); any other value is a
        success; a raised exception is classified and re-raised.
        """

        def decorate(fn: F) -> F:
            if inspect.iscoroutinefunction(fn):

                @functools.wraps(fn)
                async def run_async(*args: Any, **kwargs: Any) -> Any:
                    async with self.acquire(key) as slot:
                        result = await fn(*args, **kwargs)
                        slot.report(_http.classify_result(result, wall_now=self.clock.wall()))
                        return result

                return cast(F, run_async)

            @functools.wraps(fn)
            def run_sync(*args: Any, **kwargs: Any) -> Any:
                with self.acquire_sync(key) as slot:
                    result = fn(*args, **kwargs)
                    slot.report(_http.classify_result(result, wall_now=self.clock.wall()))
                    return result

            return cast(F, run_sync)

        return decorate

    # -- reading ----------------------------------------------------------------------------

    def retry_delay(
        self, key: str, attempt: int, outcome: Outcome = Outcome.RATE_LIMITED
    ) -> float | None:
        """Seconds before retry ``attempt`` (1-based) after ``outcome``; None: do not retry.

        Waits out the key's cooldown (Retry-After) exactly when there is one; jittered
        exponential backoff for 5xx, timeouts and 429s that came without Retry-After.
        """
        with self._lock:
            ep = self._endpoint(key)
            now = self.clock.now()
            return core.retry_delay(
                self.policy, ep.state, outcome, attempt, now, self._rng.random()
            )

    def statistics(self) -> dict[str, EndpointStatistics]:
        """A frozen record per key seen so far (canonical keys; aliases fold in)."""
        with self._lock:
            now = self.clock.now()
            return {k: self._stats_locked(ep, now) for k, ep in self._endpoints.items()}

    def key_statistics(self, key: str) -> EndpointStatistics:
        with self._lock:
            return self._stats_locked(self._endpoint(key), self.clock.now())

    def _stats_locked(self, ep: _Endpoint, now: float) -> EndpointStatistics:
        s, n = ep.state, ep.counts
        return EndpointStatistics(
            key=ep.key,
            limit=core.effective_limit(self.policy, s),
            in_flight=s.in_flight,
            waiting=len(ep.waiters),
            cooldown_left=core.cooldown_left(s, now),
            slow_start=s.slow_start,
            admitted=s.next_seq,
            successes=n[Outcome.SUCCESS],
            rate_limited=n[Outcome.RATE_LIMITED],
            overloaded=n[Outcome.OVERLOADED],
            failures=sum(n.values())
            - n[Outcome.SUCCESS]
            - n[Outcome.RATE_LIMITED]
            - n[Outcome.OVERLOADED]
            - n[Outcome.CANCELLED],
            cancelled=n[Outcome.CANCELLED],
            decreases=ep.decreases,
            increases=ep.increases,
            peers=s.peers,
        )

    # -- other processes ----------------------------------------------------------------------

    def share(self, key: str, peers: core.Peers) -> None:
        """Take in what the other processes using ``key``'s endpoint reported (the engine
        reads it from a shared store, ``runtime/endpoints.py``): they scale this process's
        additive increase, and another's 429 makes one holding more than an equal part give
        some back (``conveyor.core.limiter.share``). Nothing here waits on the store."""
        with self._lock:
            ep = self._endpoint(key)
            before = ep.state
            old = core.effective_limit(self.policy, before)
            ep.state = core.share(self.policy, before, peers, self.clock.now())
            new = core.effective_limit(self.policy, ep.state)
            if ep.state.decrease_seq != before.decrease_seq:
                ep.decreases += 1
            self._dispatch_locked(ep)
        self._notify(ep.key, old, new, "peers")

    # -- internals (callers hold self._lock where the name says _locked) -----------------------

    def _endpoint(self, key: str) -> _Endpoint:
        ep = self._by_name.get(key)
        if ep is not None:
            return ep
        canonical = core.resolve_key(key, self._aliases)
        ep = self._endpoints.get(canonical)
        if ep is None:
            state = core.new_state(self.policy, self._caps.get(canonical))
            ep = self._endpoints[canonical] = _Endpoint(canonical, state)
        self._by_name[key] = ep
        return ep

    def _try_admit_locked(self, ep: _Endpoint) -> Slot | None:
        now = self.clock.now()
        if ep.waiters or not core.can_admit(self.policy, ep.state, now):
            return None
        ep.state, ticket = core.admit(self.policy, ep.state, now)
        return Slot(self, ep, ticket)

    def _enqueue_locked(self, ep: _Endpoint, waiter: _Waiter) -> None:
        ep.waiters.append(waiter)
        self._dispatch_locked(ep)  # arms the cooldown timer if that is what holds us

    def _dispatch_locked(self, ep: _Endpoint) -> None:
        """Hand free slots to the oldest waiters; arm a wake-up for the end of a cooldown."""
        now = self.clock.now()
        while ep.waiters and core.can_admit(self.policy, ep.state, now):
            waiter = ep.waiters.popleft()
            ep.state, ticket = core.admit(self.policy, ep.state, now, waiting=len(ep.waiters))
            waiter.ticket = ticket
            if not waiter.wake():  # its loop is gone: undo the admission
                waiter.ticket = None
                report = Report(Outcome.CANCELLED)
                ep.state = core.release(self.policy, ep.state, ticket, report, now)
                ep.counts[Outcome.CANCELLED] += 1
        until = ep.state.cooldown_until
        if ep.waiters and until > now and ep.timer_at != until:
            if ep.timer is not None:
                ep.timer.cancel()
            ep.timer_at = until
            ep.timer = self.clock.call_at(until, functools.partial(self._on_timer, ep, until))

    def _on_timer(self, ep: _Endpoint, until: float) -> None:
        with self._lock:
            if ep.timer_at == until:
                ep.timer, ep.timer_at = None, -math.inf
            self._dispatch_locked(ep)

    def _abandon(self, ep: _Endpoint, waiter: _Waiter) -> None:
        """A waiter left (cancelled, timed out): drop it, or give back a slot handed to it."""
        with self._lock:
            ticket = waiter.ticket
            if ticket is None:
                ep.waiters.remove(waiter)
                return
            waiter.ticket = None
            change = self._give_back_locked(ep, ticket, Report(Outcome.CANCELLED))
        self._notify(ep.key, *change)

    def _release(self, slot: Slot, report: Report) -> None:
        ep = slot._ep
        with self._lock:
            if slot._released:
                return
            slot._released = True
            change = self._give_back_locked(ep, slot.ticket, report)
        self._notify(ep.key, *change)

    def _give_back_locked(
        self, ep: _Endpoint, ticket: core.Ticket, report: Report
    ) -> tuple[int, int, str]:
        """The one place a slot returns: policy, counters, hand-off. Returns (old, new, why)."""
        before = ep.state
        old = core.effective_limit(self.policy, before)
        now = self.clock.now()
        waiting = len(ep.waiters)
        ep.state = core.release(self.policy, before, ticket, report, now, waiting=waiting)
        ep.counts[report.outcome] += 1
        new = core.effective_limit(self.policy, ep.state)
        if ep.state.decrease_seq != before.decrease_seq:
            ep.decreases += 1
        if ep.state.limit > before.limit:
            ep.increases += 1
        self._dispatch_locked(ep)
        grew = "slow_start" if before.slow_start else "increase"
        return old, new, report.outcome.value if new < old else grew

    def _notify(self, key: str, old: int, new: int, reason: str) -> None:
        if self._on_change is not None and old != new:
            self._on_change(key, old, new, reason)
