"""Adaptive request admission, measured against a real rate-limited HTTP server.

64 concurrent callers send requests to ``tests/rate_limited_server.py`` (its own process, so it
has its own core and GIL) which serves at most C at once with latency L and answers 429 +
Retry-After beyond that. A 429'd request is retried by its caller (each strategy paces retries
its own way); throughput counts 200s only. Strategies:

- ``conveyor``: ``conveyor.EndpointLimiter`` with its defaults (slow start from 4).
- ``fixed 4C`` / ``fixed C/4``: an ``asyncio.Semaphore`` guessed too high / too low; a 429 is
  retried after its Retry-After (else jittered backoff).
- ``aiolimiter``: ``AsyncLimiter(C, L)``, a leaky bucket set to the ideal rate C/L (the best
  guess a user could make), 429s retried like the fixed limits.
- ``DD 0.9``: Data Designer's ThrottleManager policy re-implemented: starts at its configured
  max (here 4C), x0.75 on the first 429 of a cascade, +1 per 25 successes up to the last 429's
  limit + 10 %, key-wide cooldown of Retry-After or 2 s, waiters poll every 50 ms.
- ``oracle C``: a semaphore of exactly C -- perfect knowledge; shows what this machine can do.

Reported: throughput as a share of the ideal C/L after warm-up (and over the whole run), share
of 429s among all responses after warm-up, and for the change scenario (C halves, then doubles
back, L = 50 ms): how long until the limit is at or below the new C ("follow"), and how long
until the rolling 1 s throughput is back to 90 % of the new ideal ("recover").

    python benchmarks/bench_limiter.py            # ~5 minutes
    python benchmarks/bench_limiter.py --quick    # ~2 minutes, shorter runs
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import math
import random
import subprocess
import sys
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from conveyor.core.limiter import parse_retry_after  # noqa: E402
from conveyor.core.retry import DEFAULT_RETRY  # noqa: E402
from conveyor.limiter import EndpointLimiter  # noqa: E402

CALLERS = 64
KEY = "bench/model/chat"


# -- the server, in its own process ------------------------------------------------------------


class ServerProcess:
    def __init__(self, capacity: int, latency: float, retry_after: str) -> None:
        cmd = [sys.executable, str(ROOT / "tests" / "rate_limited_server.py")]
        cmd += ["--capacity", str(capacity), "--latency", str(latency)]
        cmd += ["--retry-after", retry_after]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"server did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"

    async def set_capacity(self, session: aiohttp.ClientSession, capacity: int) -> None:
        async with session.post(f"{self.url}/admin?capacity={capacity}") as r:
            await r.read()

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


# -- strategies ----------------------------------------------------------------------------------

Send = Callable[[], Awaitable[tuple[int, str | None]]]


class Strategy:
    """``request(send)`` sends one logical request until it succeeds; returns 429s seen."""

    name = "?"

    def limit(self) -> float | None:
        return None

    async def request(self, send: Send, rec: Recorder) -> None:
        raise NotImplementedError


async def _backoff_after(retry_after: str | None, attempt: int) -> None:
    delay = parse_retry_after(retry_after, wall_now=time.time())
    if delay is None:
        delay = DEFAULT_RETRY.delay(attempt, random.random())
    await asyncio.sleep(delay)


class ConveyorStrategy(Strategy):
    name = "conveyor"

    def __init__(self) -> None:
        self.limiter = EndpointLimiter()

    def limit(self) -> float | None:
        return self.limiter.key_statistics(KEY).limit

    async def request(self, send: Send, rec: Recorder) -> None:
        attempt = 0
        while True:
            attempt += 1
            async with self.limiter.acquire(KEY) as slot:
                status, retry_after = await send()
                slot.report(status, retry_after=retry_after)
            rec.response(status)
            if status == 200:
                return
            delay = slot.retry_delay(attempt)
            if delay:
                await asyncio.sleep(delay)


class SemaphoreStrategy(Strategy):
    def __init__(self, name: str, limit: int) -> None:
        self.name, self._limit = name, limit
        self.sem = asyncio.Semaphore(limit)

    def limit(self) -> float | None:
        return self._limit

    async def request(self, send: Send, rec: Recorder) -> None:
        attempt = 0
        while True:
            attempt += 1
            async with self.sem:
                status, retry_after = await send()
            rec.response(status)
            if status == 200:
                return
            await _backoff_after(retry_after, attempt)


class AioLimiterStrategy(Strategy):
    name = "aiolimiter"

    def __init__(self, capacity: int, latency: float) -> None:
        from aiolimiter import AsyncLimiter

        self.bucket = AsyncLimiter(capacity, latency)

    async def request(self, send: Send, rec: Recorder) -> None:
        attempt = 0
        while True:
            attempt += 1
            async with self.bucket:
                pass  # a rate limiter paces starts; it does not hold a slot
            status, retry_after = await send()
            rec.response(status)
            if status == 200:
                return
            await _backoff_after(retry_after, attempt)


class DataDesignerStrategy(Strategy):
    """Data Designer 0.9's ThrottleManager policy, one domain, as its source reads."""

    name = "DD 0.9"
    REDUCE, WINDOW, COOLDOWN, OVERSHOOT, POLL = 0.75, 25, 2.0, 0.1, 0.05

    def __init__(self, max_parallel: int) -> None:
        self.max = max_parallel
        self.current = max_parallel  # starts at its configured max_parallel_requests
        self.in_flight = 0
        self.blocked_until = 0.0
        self.streak = 0
        self.ceiling = 0
        self.consecutive_429s = 0

    def limit(self) -> float | None:
        return self.current

    def _try_acquire(self) -> float:
        now = time.monotonic()
        if now < self.blocked_until:
            return self.blocked_until - now
        if self.in_flight >= self.current:
            return self.POLL
        self.in_flight += 1
        return 0.0

    def _success(self) -> None:
        self.in_flight -= 1
        self.consecutive_429s = 0
        self.streak += 1
        if self.streak >= self.WINDOW:
            cap = self.max
            if self.ceiling > 0:
                cap = min(self.ceiling + max(1, math.floor(self.ceiling * self.OVERSHOOT)), cap)
            if self.current < cap:
                self.current = min(self.current + 1, cap)
            self.streak = 0

    def _rate_limited(self, retry_after: float | None) -> None:
        self.in_flight -= 1
        prev = self.current
        first = self.consecutive_429s == 0
        self.consecutive_429s += 1
        cooldown = retry_after if retry_after is not None and retry_after > 0 else self.COOLDOWN
        self.blocked_until = time.monotonic() + cooldown
        self.streak = 0
        if first:
            self.current = max(1, math.floor(self.current * self.REDUCE))
            if self.current < prev:
                self.ceiling = prev if self.ceiling == 0 else min(self.ceiling, prev)

    async def request(self, send: Send, rec: Recorder) -> None:
        attempt = 0
        while True:
            attempt += 1
            wait = self._try_acquire()
            while wait > 0:
                await asyncio.sleep(wait)
                wait = self._try_acquire()
            try:
                status, retry_after = await send()
            except BaseException:
                self.in_flight -= 1
                raise
            rec.response(status)
            if status == 200:
                self._success()
                return
            self._rate_limited(parse_retry_after(retry_after, wall_now=time.time()))


# -- one run -------------------------------------------------------------------------------------


@dataclass
class Recorder:
    t0: float
    ok_times: list[float] = field(default_factory=list)
    r429_times: list[float] = field(default_factory=list)
    limits: list[tuple[float, float]] = field(default_factory=list)

    def response(self, status: int) -> None:
        t = time.monotonic() - self.t0
        (self.ok_times if status == 200 else self.r429_times).append(t)

    def count(self, times: list[float], start: float, end: float) -> int:
        return bisect_left(times, end) - bisect_left(times, start)


@dataclass(frozen=True)
class Phase:
    capacity: int
    seconds: float


async def run_one(
    strategy: Strategy, latency: float, phases: list[Phase], retry_after: str
) -> Recorder:
    server = ServerProcess(phases[0].capacity, latency, retry_after)
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            url = server.url + "/work"

            async def send() -> tuple[int, str | None]:
                async with session.get(url) as r:
                    await r.read()
                    return r.status, r.headers.get("Retry-After")

            rec = Recorder(time.monotonic())
            end = rec.t0 + sum(p.seconds for p in phases)

            async def caller() -> None:
                while time.monotonic() < end:
                    await strategy.request(send, rec)

            async def sampler() -> None:
                while time.monotonic() < end:
                    limit = strategy.limit()
                    if limit is not None:
                        rec.limits.append((time.monotonic() - rec.t0, limit))
                    await asyncio.sleep(0.05)

            async def changer() -> None:
                at = rec.t0
                for prev, phase in itertools.pairwise(phases):
                    at += prev.seconds
                    await asyncio.sleep(max(0.0, at - time.monotonic()))
                    await server.set_capacity(session, phase.capacity)

            tasks = [caller() for _ in range(CALLERS)]
            await asyncio.gather(*tasks, sampler(), changer())
            return rec
    finally:
        server.close()


# -- scenarios and the table ---------------------------------------------------------------------


def make(name: str, capacity: int, latency: float) -> Strategy:
    if name == "conveyor":
        return ConveyorStrategy()
    if name == "fixed 4C":
        return SemaphoreStrategy(name, 4 * capacity)
    if name == "fixed C/4":
        return SemaphoreStrategy(name, max(1, capacity // 4))
    if name == "aiolimiter":
        return AioLimiterStrategy(capacity, latency)
    if name == "DD 0.9":
        return DataDesignerStrategy(4 * capacity)
    if name == "oracle C":
        return SemaphoreStrategy(name, capacity)
    raise ValueError(name)


POINT_HEAD = (
    "| scenario | strategy | share of ideal (after warm-up) | share (whole run) "
    "| 429s after warm-up | limit range |\n|---|---|---|---|---|---|"
)
ALL = ["conveyor", "fixed 4C", "fixed C/4", "aiolimiter", "DD 0.9", "oracle C"]


def steady_row(name: str, c: int, lat: float, rec: Recorder, dur: float, warm: float) -> str:
    ideal = c / lat
    ok_all = rec.count(rec.ok_times, 0.0, dur) / dur / ideal
    ok_n = rec.count(rec.ok_times, warm, dur)
    r_n = rec.count(rec.r429_times, warm, dur)
    share = ok_n / (dur - warm) / ideal
    r429 = r_n / max(1, ok_n + r_n)
    limits = [v for t, v in rec.limits if t >= warm]
    lim = f"{min(limits):g}-{max(limits):g}" if limits else "-"
    return (
        f"| C={c}, L={lat * 1000:g} ms | {name} | {share:.1%} | {ok_all:.1%} | {r429:.2%} | {lim} |"
    )


def change_row(name: str, c: int, lat: float, rec: Recorder, phases: list[Phase]) -> str:
    t_half = phases[0].seconds
    t_back = t_half + phases[1].seconds
    end = t_back + phases[2].seconds
    follow = next((t - t_half for t, v in rec.limits if t >= t_half and v <= c // 2), None)
    hi = next((t - t_back for t, v in rec.limits if t >= t_back and v >= 0.9 * c), None)
    # "recover": the 1 s throughput is back to 90 % of what this run did at C before the halving
    # (on a busy 2-core machine C/L itself is out of reach even for the oracle)
    before = rec.count(rec.ok_times, t_half - 3.0, t_half) / 3.0
    recover = None
    t = t_back
    while t + 1.0 <= end:
        if rec.count(rec.ok_times, t, t + 1.0) >= 0.9 * before:
            recover = t + 1.0 - t_back
            break
        t += 0.1
    burst = rec.count(rec.r429_times, t_half, t_half + 1.0)
    r_n = rec.count(rec.r429_times, t_half + 1.0, t_back)
    ok_n = rec.count(rec.ok_times, t_half + 1.0, t_back)
    half_share = rec.count(rec.ok_times, t_half, t_back) / phases[1].seconds / (c // 2 / lat)
    back_share = rec.count(rec.ok_times, t_back, end) / phases[2].seconds / (c / lat)

    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f} s"

    return (
        f"| {name} | {fmt(follow)} | {burst} | {r_n / max(1, r_n + ok_n):.2%} | {half_share:.1%} "
        f"| {fmt(hi)} | {fmt(recover)} | {back_share:.1%} | {before / (c / lat):.1%} |"
    )


async def steady(c: int, lat: float, dur: float, warm: float, names: list[str], ra: str) -> None:
    async def one(name: str) -> str:
        rec = await run_one(make(name, c, lat), lat, [Phase(c, dur)], ra)
        return steady_row(name, c, lat, rec, dur, warm)

    if lat >= 0.5:  # light load: run the strategies side by side, each with its own server
        rows = await asyncio.gather(*(one(n) for n in names))
    else:
        rows = [await one(n) for n in names]
    for row in rows:
        print(row, flush=True)


async def main() -> None:
    global CALLERS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs (~2 minutes)")
    ap.add_argument("--only", default="", help="comma-separated strategies to run")
    ap.add_argument("--scenarios", default="slow,fast,noretry,ceil,change", help="tables to run")
    ap.add_argument(
        "--points",
        default="",
        help="instead of the tables: C:L:retry-after[,...] (e.g. 16:0.2:next_slot,32:0.5:none), "
        "each one run of --seconds after a warm-up of max(3 s, 5 L), as in tests/limiter_sim.py",
    )
    ap.add_argument("--seconds", type=float, default=20.0, help="measured seconds per point")
    ap.add_argument("--callers", type=int, default=CALLERS)
    args = ap.parse_args()
    CALLERS = args.callers
    names = [n for n in ALL if not args.only or n in args.only.split(",")]
    if args.points:
        print(f"\n### {CALLERS} callers\n\n{POINT_HEAD}")
        for point in args.points.split(","):
            c, lat, ra = point.split(":")
            warm = max(3.0, 5.0 * float(lat))
            await steady(int(c), float(lat), warm + args.seconds, warm, names, ra)
        return
    q = 0.5 if args.quick else 1.0
    names = [n for n in ALL if not args.only or n in args.only.split(",")]
    which = args.scenarios.split(",")
    head = "| scenario | strategy | share of ideal (after warm-up) | share (whole run) "
    head += "| 429s after warm-up | limit range |\n|---|---|---|---|---|---|"
    if "slow" in which:
        print(f"\n### L = 1 s, {CALLERS} callers, Retry-After = next free slot\n\n{head}")
        await asyncio.gather(
            steady(8, 1.0, 30 * q, 10 * q, names, "next_slot"),
            steady(64, 1.0, 30 * q, 10 * q, names, "next_slot"),
        )
    if "fast" in which:
        print(f"\n### L = 50 ms, {CALLERS} callers, Retry-After = next free slot\n\n{head}")
        await steady(8, 0.05, 10 * q, 2 * q, names, "next_slot")
        await steady(64, 0.05, 10 * q, 2 * q, names, "next_slot")
    if "noretry" in which:
        print(f"\n### L = 50 ms, {CALLERS} callers, no Retry-After header\n\n{head}")
        await steady(8, 0.05, 10 * q, 2 * q, names, "none")
    if "ceil" in which:
        print(f"\n### L = 50 ms, {CALLERS} callers, Retry-After in whole seconds (1)\n\n{head}")
        await steady(8, 0.05, 20 * q, 2 * q, names, "ceil")
    if "change" in which:
        c, lat = 32, 0.05
        phases = [Phase(c, 10 * q), Phase(c // 2, 10 * q), Phase(c, 15 * q)]
        print(
            f"\n### C = {c} -> {c // 2} -> {c}, L = 50 ms\n\n| strategy | follow (limit <= C/2) "
            "| 429s in the 1st s | 429s while halved, after 1 s | share of C/2 while halved "
            "| limit back >= 0.9 C | recover (1 s throughput >= 90 % of before) "
            "| share of C after doubling | share of C before |\n" + "|---" * 9 + "|"
        )
        for name in [n for n in names if n not in ("fixed C/4", "oracle C")]:
            rec = await run_one(make(name, c, lat), lat, phases, "next_slot")
            print(change_row(name, c, lat, rec, phases), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
