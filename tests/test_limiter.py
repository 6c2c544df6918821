"""EndpointLimiter, the edge: queues, hand-off, cooldown wake-ups, slot accounting.

Deterministic: a FakeClock drives cooldowns; tasks wait on events, never on sleeps.
"""

from __future__ import annotations

import asyncio
import functools
import threading

import pytest

from conveyor.errors import WouldBlock
from conveyor.limiter import EndpointLimiter, EndpointStatistics, Outcome
from conveyor.testing import FakeClock

KEY = "openai/gpt-4o/chat"


def run(test):
    """Run an async test on a fresh event loop (no pytest plugin needed)."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return wrapper


def make(**kwargs) -> tuple[EndpointLimiter, FakeClock]:
    clock = FakeClock()
    kwargs.setdefault("initial_limit", 2)
    return EndpointLimiter(clock=clock, **kwargs), clock


def assert_no_leak(limiter: EndpointLimiter) -> None:
    for stats in limiter.statistics().values():
        released = (
            stats.successes
            + stats.rate_limited
            + stats.overloaded
            + stats.failures
            + stats.cancelled
        )
        assert stats.in_flight == 0, stats
        assert stats.admitted == released, stats


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# -- the basics ----------------------------------------------------------------------------------


@run
async def test_acquire_report_success_releases_slot():
    limiter, _ = make()
    async with limiter.acquire(KEY) as slot:
        assert limiter.key_statistics(KEY).in_flight == 1
        assert slot.report(200) is Outcome.SUCCESS
    stats = limiter.statistics()[KEY]
    assert isinstance(stats, EndpointStatistics)
    assert (stats.in_flight, stats.successes, stats.limit) == (0, 1, 2)


def test_acquire_nowait_full_key_raises_would_block():
    limiter, _ = make()
    first, second = limiter.acquire_nowait(KEY), limiter.acquire_nowait(KEY)
    with pytest.raises(WouldBlock):
        limiter.acquire_nowait(KEY)
    with first:
        first.report(200)
    with limiter.acquire_nowait(KEY) as third:
        third.report(200)
    second.release()
    second.release()  # idempotent: released exactly once
    assert_no_leak(limiter)
    assert limiter.key_statistics(KEY).cancelled == 1


@run
async def test_acquire_waiters_served_fifo_on_release():
    limiter, _ = make(initial_limit=1)
    order: list[int] = []
    holder = await limiter.acquire_async(KEY)

    async def waiter(i: int) -> None:
        async with limiter.acquire(KEY) as slot:
            order.append(i)
            slot.report(200)

    tasks = [asyncio.create_task(waiter(i)) for i in range(5)]
    await settle()
    assert limiter.key_statistics(KEY).waiting == 5
    with pytest.raises(WouldBlock):  # a newcomer does not jump the queue
        limiter.acquire_nowait(KEY)
    holder.report(200)
    holder.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]
    assert_no_leak(limiter)


# -- cooldowns -----------------------------------------------------------------------------------


@run
async def test_retry_after_cooldown_wakes_waiters_without_release():
    limiter, clock = make(initial_limit=4)
    async with limiter.acquire(KEY) as slot:
        slot.report(429, retry_after="3")
    stats = limiter.key_statistics(KEY)
    # the first 429 ends slow start, one slot off: 4 -> 3
    assert stats.cooldown_left == 3.0 and stats.limit == 3 and stats.in_flight == 0

    done = asyncio.Event()

    async def waiter() -> None:
        async with limiter.acquire(KEY) as s:
            s.report(200)
        done.set()

    task = asyncio.create_task(waiter())
    await settle()
    assert limiter.key_statistics(KEY).waiting == 1
    clock.advance(2.999)
    await settle()
    assert not done.is_set()  # not a moment early
    clock.advance(0.001)  # the cooldown ends: the timer hands the slot over, no release needed
    await asyncio.wait_for(done.wait(), timeout=10)
    await task
    assert limiter.key_statistics(KEY).cooldown_left == 0
    assert_no_leak(limiter)


@run
async def test_retry_after_http_date_resolved_against_wall_clock():
    limiter, clock = make()
    async with limiter.acquire(KEY) as slot:
        # FakeClock's wall time starts at 1_700_000_000 = Tue, 14 Nov 2023 22:13:20 GMT
        slot.report(429, retry_after="Tue, 14 Nov 2023 22:13:25 GMT")
    assert limiter.key_statistics(KEY).cooldown_left == 5.0
    assert limiter.retry_delay(KEY, 1) == 5.0
    clock.advance(5)
    backoff = limiter.retry_delay(KEY, 1, Outcome.RATE_LIMITED)
    assert backoff is not None and backoff > 0  # no cooldown: backoff
    assert limiter.retry_delay(KEY, 1, Outcome.CLIENT_ERROR) is None


@run
async def test_burst_of_429s_lowers_limit_once_and_reports_on_change():
    changes: list[tuple[str, int, int, str]] = []
    limiter, _ = make(initial_limit=10, on_change=lambda *c: changes.append(c))
    slots = [limiter.acquire_nowait(KEY) for _ in range(10)]
    for slot in slots:
        slot.report(429)
        slot.release()
    stats = limiter.key_statistics(KEY)
    # one event; it ends slow start, so each of its 429s takes one slot, down to half
    assert (stats.limit, stats.decreases, stats.rate_limited) == (5, 1, 10)
    assert changes == [(KEY, n, n - 1, "rate_limited") for n in (10, 9, 8, 7, 6)]
    # past slow start, a new event (a request admitted after the cut) multiplies by 0.9
    with limiter.acquire_nowait(KEY) as slot:
        slot.report(429)
    assert changes[-1] == (KEY, 5, 4, "rate_limited")  # 5 * 0.9 = 4.5
    assert_no_leak(limiter)


def test_insufficient_quota_is_not_congestion():
    limiter, _ = make(initial_limit=4)
    with limiter.acquire_sync(KEY) as slot:
        assert slot.report(429, quota_exhausted=True) is Outcome.QUOTA_EXHAUSTED
        assert slot.retry_delay(1) is None
    stats = limiter.key_statistics(KEY)
    assert (stats.limit, stats.failures, stats.rate_limited, stats.cooldown_left) == (4, 1, 0, 0)


@pytest.mark.parametrize(
    ("status", "limit"), [(500, 4), (404, 4), (408, 4), (503, 3), (529, 3), (200, 4)]
)
def test_status_outcomes_move_limit_as_documented(status, limit):
    limiter, _ = make(initial_limit=4)
    with limiter.acquire_sync(KEY) as slot:
        slot.report(status)
    assert limiter.key_statistics(KEY).limit == limit


# -- growth --------------------------------------------------------------------------------------


@run
async def test_slow_start_grows_only_while_demand_fills_the_limit():
    changes: list[tuple[str, int, int, str]] = []
    limiter, _ = make(initial_limit=2, on_change=lambda *c: changes.append(c))
    for _ in range(20):  # one caller at a time: demand 1 < limit 2, no drift up
        async with limiter.acquire(KEY) as slot:
            slot.report(200)
    assert limiter.key_statistics(KEY).limit == 2

    gate = asyncio.Event()

    async def busy() -> None:
        async with limiter.acquire(KEY) as slot:
            await gate.wait()
            slot.report(200)

    tasks = [asyncio.create_task(busy()) for _ in range(8)]
    await settle()
    gate.set()
    await asyncio.gather(*tasks)
    assert limiter.key_statistics(KEY).limit > 2
    assert changes[0] == (KEY, 2, 3, "slow_start")
    assert_no_leak(limiter)


def test_aliases_share_one_state_and_caps_bound_it():
    limiter, _ = make(
        initial_limit=4, aliases={"azure/gpt-4o-east/chat": KEY}, caps={"azure/gpt-4o-east/chat": 3}
    )
    a = limiter.acquire_nowait(KEY)
    b = limiter.acquire_nowait("azure/gpt-4o-east/chat")
    c = limiter.acquire_nowait(KEY)
    with pytest.raises(WouldBlock):  # the cap (3) is below initial_limit and shared
        limiter.acquire_nowait("azure/gpt-4o-east/chat")
    for slot in (a, b, c):
        slot.release()
    assert list(limiter.statistics()) == [KEY]
    with pytest.raises(ValueError, match="provider/model/domain"):
        limiter.acquire_nowait("not-a-key")


# -- every path releases exactly once ------------------------------------------------------------


class Boom(Exception):
    pass


@run
async def test_slots_never_leak_across_all_exit_paths():
    limiter, clock = make(initial_limit=3)

    async def reported():
        async with limiter.acquire(KEY) as slot:
            slot.report(200)

    async def raised():
        with pytest.raises(Boom):
            async with limiter.acquire(KEY):
                raise Boom

    async def unreported():
        async with limiter.acquire(KEY):
            pass

    async def reported_then_raised():
        with pytest.raises(Boom):
            async with limiter.acquire(KEY) as slot:
                slot.report(500)
                raise Boom

    gate = asyncio.Event()

    async def cancelled_inside():
        async with limiter.acquire(KEY):
            await gate.wait()

    for path in (reported, raised, unreported, reported_then_raised):
        await path()
    assert_no_leak(limiter)

    # cancelled while holding a slot, and cancelled while queued behind them
    holders = [asyncio.create_task(cancelled_inside()) for _ in range(3)]
    queued = [asyncio.create_task(cancelled_inside()) for _ in range(4)]
    await settle()
    assert limiter.key_statistics(KEY).waiting == 4
    for task in holders + queued:
        task.cancel()
    await asyncio.gather(*holders, *queued, return_exceptions=True)
    assert_no_leak(limiter)
    assert limiter.key_statistics(KEY).waiting == 0

    # cancelled in the gap between the hand-off and waking up: the slot comes back
    holder = await limiter.acquire_async(KEY)
    others = [await limiter.acquire_async(KEY) for _ in range(2)]
    late = asyncio.create_task(limiter.acquire_async(KEY))
    await settle()
    holder.release()  # hands the slot to `late` ...
    late.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await late
    for slot in others:
        slot.release()
    assert_no_leak(limiter)

    # cancelled while waiting out a cooldown
    async with limiter.acquire(KEY) as slot:
        slot.report(429, retry_after=10)
    waiting = asyncio.create_task(reported())
    await settle()
    waiting.cancel()
    await asyncio.gather(waiting, return_exceptions=True)
    clock.advance(10)
    assert_no_leak(limiter)
    stats = limiter.key_statistics(KEY)
    assert stats.admitted == stats.successes + stats.failures + stats.cancelled + 1


def test_sync_threads_share_the_limit_and_release_everything():
    limiter, _ = make(initial_limit=2)
    peak = 0
    inside = 0
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        nonlocal peak, inside
        try:
            for i in range(25):
                with limiter.acquire_sync(KEY) as slot:
                    with lock:
                        inside += 1
                        peak = max(peak, inside)
                    with lock:
                        inside -= 1
                    if i % 5 == 0:
                        raise Boom
                    slot.report(200)
        except Boom:
            pass
        except BaseException as exc:  # pragma: no cover - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert peak <= limiter.policy.max_limit
    assert_no_leak(limiter)


def test_acquire_sync_timeout_gives_up_its_place():
    limiter, _ = make(initial_limit=1)
    held = limiter.acquire_sync(KEY)
    with pytest.raises(TimeoutError):
        limiter.acquire_sync(KEY, timeout=0.01)
    assert limiter.key_statistics(KEY).waiting == 0
    held.release()
    assert_no_leak(limiter)


def test_one_limiter_serves_two_event_loops_in_two_threads():
    limiter, _ = make(initial_limit=1)
    holder = limiter.acquire_nowait(KEY)
    results: list[str] = []
    queued = threading.Barrier(3)

    def run_loop(name: str) -> None:
        async def main() -> None:
            task = asyncio.create_task(limiter.acquire_async(KEY))
            while limiter.key_statistics(KEY).waiting < 1:
                await asyncio.sleep(0)
            queued.wait()
            slot = await task
            results.append(name)
            slot.report(200)
            slot.release()

        asyncio.run(main())

    threads = [threading.Thread(target=run_loop, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    queued.wait()
    holder.release()
    for t in threads:
        t.join()
    assert sorted(results) == ["a", "b"]
    assert_no_leak(limiter)


@run
async def test_decorator_classifies_results_and_exceptions():
    limiter, _ = make(initial_limit=4)

    class Response:
        status_code = 429
        headers = {"Retry-After": "2"}

    @limiter.limited(KEY)
    async def call_async(fail: bool) -> object:
        if fail:
            raise TimeoutError
        return "text"

    @limiter.limited(KEY)
    def call_sync() -> Response:
        return Response()

    assert await call_async(False) == "text"
    with pytest.raises(TimeoutError):
        await call_async(True)
    assert isinstance(call_sync(), Response)
    stats = limiter.key_statistics(KEY)
    assert (stats.successes, stats.failures, stats.rate_limited) == (1, 1, 1)
    assert stats.cooldown_left == 2.0
    assert_no_leak(limiter)


def test_report_twice_or_after_release_is_an_error():
    limiter, _ = make()
    slot = limiter.acquire_nowait(KEY)
    slot.report(200)
    with pytest.raises(RuntimeError, match="already reported"):
        slot.report(200)
    slot.release()
    other = limiter.acquire_nowait(KEY)
    other.release()
    with pytest.raises(RuntimeError, match="already released"):
        other.report(200)
