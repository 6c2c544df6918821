"""A deterministic discrete-event simulation of the adaptive limiter against a hidden capacity.

The endpoint serves at most ``capacity`` requests at once, each for ``latency`` seconds
(optionally jittered), and answers 429 at once beyond that, with a Retry-After of the time to
its next free slot (``"next_slot"``), none (``"none"``) or a fixed number of seconds. The
client has plenty of work (``callers`` logical callers, far more than the capacity, so some are
always queued) and drives the pure core (``conveyor.core.limiter``) exactly as
``conveyor.limiter.EndpointLimiter`` does: a caller that finds no queue and a free slot is
admitted with ``waiting=0``; otherwise it joins a FIFO queue, and every release (with the queue
length as ``waiting``) hands freed slots to the oldest waiters; a cooldown arms a timer that
wakes the queue when it ends. A 429'd caller waits ``retry_delay`` (the key's cooldown, or the
jittered backoff) and retries, as the README's loop does. No threads, no sleeps: time is a
number that jumps from event to event, so 60 simulated seconds at C = 64, L = 50 ms take about a
second.

    python tests/limiter_sim.py            # the grid: C x L x Retry-After mode, as a table
    python tests/limiter_sim.py --compact  # the same as one C x L table per Retry-After mode
    python tests/limiter_sim.py --jitter 0.3 --duration 120
    python tests/limiter_sim.py --compact --processes 2,4,8 [--share-every 1]

Several processes (``processes``): each has its own limiter edge and its own callers (4 C + 64
each) and they share only the endpoint, as ``conveyor worker`` processes on one store do. With
``share_every`` each process, staggered, publishes its limit and 429 count and reads the
others' last ones every that many seconds, and hands them to ``core.tally_peers`` and
``core.share`` as ``runtime/endpoints.py`` does through the store; without it they know nothing
of each other. The limit columns are then the processes' summed limit.

Measured after the warm-up (``warmup_for``): throughput as a share of the ideal C / L, the share
of 429s among all responses, and from the cold start: the time until the endpoint first has
90 % of its slots busy (``t90``).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import random
import sys
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from conveyor.core import limiter as core
from conveyor.core.limiter import AimdPolicy, Outcome, Report

CAPACITIES = (4, 8, 16, 32, 64)
LATENCIES = (0.05, 0.2, 0.5, 1.0, 2.0)
RETRY_AFTER_MODES: tuple[str | float, ...] = ("next_slot", "none", 1.0)

# The targets of issue 12, per cell.
MIN_THROUGHPUT = 0.90
MAX_429_SHARE = 0.03


def warmup_for(latency: float) -> float:
    """The warm-up allowed before measuring: 3 s, or 5 round trips when that is longer.

    "A few seconds" for fast endpoints (60 round trips at 50 ms, 6 at 500 ms); at L = 2 s a few
    seconds is not even two round trips, so there it is a few round trips: 5 (10 s).
    """
    return max(3.0, 5.0 * latency)


@dataclass(frozen=True)
class Scenario:
    capacity: int
    latency: float
    retry_after: str | float = "next_slot"  # "next_slot", "ceil", "none", or fixed seconds
    jitter: float = 0.0  # service time uniform in latency * [1 - jitter, 1 + jitter]
    network: float = 0.002  # network round trip: part of L for a success; all a 429 takes
    callers: int = 0  # per process; 0: 4 C + 64 (plenty: some always queued)
    processes: int = 1  # limiters (processes) sharing the endpoint, each with its own callers
    share_every: float = 0.0  # > 0: each process reports to and reads its peers this often
    duration: float = 60.0  # measured seconds after the warm-up
    warmup: float | None = None  # None: warmup_for(latency)
    seed: int = 0

    @property
    def label(self) -> str:
        ra = self.retry_after if isinstance(self.retry_after, str) else f"{self.retry_after:g} s"
        procs = f", {self.processes} processes" if self.processes > 1 else ""
        return f"C={self.capacity}, L={self.latency * 1000:g} ms, Retry-After {ra}{procs}"


@dataclass
class Result:
    scenario: Scenario
    throughput: float  # requests served per second after warm-up / (C / L)
    whole_run: float  # the same over the whole run, warm-up included
    rejected_share: float  # 429s / responses after warm-up
    t90: float  # seconds from the cold start until 90 % of C was first busy (inf: never)
    limit_min: int  # the effective limit's range after warm-up
    limit_max: int
    responses: int

    @property
    def t90_rtts(self) -> float:
        return self.t90 / self.scenario.latency

    def misses(self) -> list[str]:
        """What this cell misses of the targets (empty: it passes)."""
        sc = self.scenario
        out = []
        if self.throughput < MIN_THROUGHPUT:
            out.append(f"throughput {self.throughput:.1%}")
        if self.rejected_share > MAX_429_SHARE:
            out.append(f"429s {self.rejected_share:.1%}")
        warm = sc.warmup if sc.warmup is not None else warmup_for(sc.latency)
        if self.t90 > warm:
            out.append(f"t90 {self.t90:.1f} s > warm-up {warm:g} s")
        return out


@dataclass(order=True)
class _Event:
    at: float
    seq: int
    fn: Callable[..., None] = field(compare=False)
    args: tuple[object, ...] = field(compare=False, default=())


class _Client:
    """One process's limiter edge (``conveyor.limiter.EndpointLimiter``, one key): its state,
    its FIFO of waiting callers and its cooldown timer."""

    __slots__ = ("policy", "rejected", "report", "seen", "state", "timer_at", "waiters")

    def __init__(self, policy: AimdPolicy) -> None:
        self.policy = policy
        self.state = core.new_state(policy)
        self.waiters: deque[int] = deque()
        self.timer_at = -math.inf
        self.rejected = 0  # 429s this process saw
        self.report = (0, 0)  # (limit, 429s) as last published (the store's endpoint report)
        self.seen: dict[str, int] = {}  # peer -> its 429 count at this process's last look


class Simulation:
    """One run: the endpoint, ``scenario.processes`` limiter edges around the pure core (each a
    process with its own callers and its own state, sharing nothing but the endpoint), and the
    callers."""

    def __init__(self, scenario: Scenario, policy: AimdPolicy | None = None) -> None:
        self.sc = scenario
        self.policy = policy or AimdPolicy()
        self.rng = random.Random(scenario.seed)
        self.now = 0.0
        self._events: list[_Event] = []
        self._seq = itertools.count()
        # the limiter edges (conveyor.limiter), one key each
        self.clients = [_Client(self.policy) for _ in range(scenario.processes)]
        self.per_client = scenario.callers or 4 * scenario.capacity + 64
        # the endpoint
        self.busy_until: list[float] = []  # heap of the finish times of requests being served
        # measurements
        self.warm = scenario.warmup if scenario.warmup is not None else warmup_for(scenario.latency)
        self.end = self.warm + scenario.duration
        self.rejected_after = self.responses_after = 0
        self.work_after = self.work_total = 0.0
        self.t90 = math.inf
        self.need90 = math.ceil(0.9 * scenario.capacity)
        self.limit_seen: list[int] = []

    # -- the event loop -------------------------------------------------------------------

    def at(self, when: float, fn: Callable[..., None], *args: object) -> None:
        heapq.heappush(self._events, _Event(when, next(self._seq), fn, args))

    def run(self) -> Result:
        for caller in range(self.per_client * len(self.clients)):
            self.at(0.0, self.acquire, caller, 1)
        n, every = len(self.clients), self.sc.share_every
        if n > 1 and every > 0:
            for i in range(n):  # staggered, as workers' heartbeats are
                self.at(every * (i + 1) / n, self.exchange, i)
        while self._events:
            event = heapq.heappop(self._events)
            if event.at >= self.end:
                break
            self.now = event.at
            event.fn(*event.args)
        sc = self.sc
        ideal = sc.capacity / sc.latency
        return Result(
            scenario=sc,
            throughput=self.work_after / (ideal * sc.duration),
            whole_run=self.work_total / (ideal * self.end),
            rejected_share=self.rejected_after / max(1, self.responses_after),
            t90=self.t90,
            limit_min=min(self.limit_seen, default=0),
            limit_max=max(self.limit_seen, default=0),
            responses=self.responses_after,
        )

    # -- the limiter edge: what EndpointLimiter does around the core ----------------------

    def client_of(self, caller: int) -> _Client:
        return self.clients[caller // self.per_client]

    def acquire(self, caller: int, attempt: int) -> None:
        """``limiter.acquire(key)``: admit at once if nobody waits and a slot is free."""
        cl = self.client_of(caller)
        if not cl.waiters and core.can_admit(cl.policy, cl.state, self.now):
            cl.state, ticket = core.admit(cl.policy, cl.state, self.now)
            self.send(caller, attempt, ticket)
            return
        cl.waiters.append(caller * 1_000_000 + attempt)
        self.dispatch(cl)

    def dispatch(self, cl: _Client) -> None:
        """``_dispatch_locked``: hand free slots to the oldest waiters; arm the cooldown timer."""
        now = self.now
        while cl.waiters and core.can_admit(cl.policy, cl.state, now):
            caller, attempt = divmod(cl.waiters.popleft(), 1_000_000)
            cl.state, ticket = core.admit(cl.policy, cl.state, now, waiting=len(cl.waiters))
            self.send(caller, attempt, ticket)
        until = cl.state.cooldown_until
        if cl.waiters and until > now and cl.timer_at != until:
            cl.timer_at = until
            self.at(until, self.on_timer, cl, until)

    def on_timer(self, cl: _Client, until: float) -> None:
        if cl.timer_at == until:
            cl.timer_at = -math.inf
            self.dispatch(cl)

    def exchange(self, i: int) -> None:
        """Process ``i`` publishes its limit and 429 count, reads its peers' last reports and
        hands them to ``core.share`` (what the engine does through the store)."""
        cl = self.clients[i]
        limit = core.effective_limit(cl.policy, cl.state)
        cl.report = (limit, cl.rejected)
        others = {  # every process always has work waiting: all are users of the endpoint
            str(j): {"limit": peer.report[0], "rate_limited": peer.report[1], "waiting": 1}
            for j, peer in enumerate(self.clients)
            if j != i
        }
        peers, cl.seen = core.tally_peers(limit, others, cl.seen)
        cl.state = core.share(cl.policy, cl.state, peers, self.now)
        self.dispatch(cl)
        self.at(self.now + self.sc.share_every, self.exchange, i)

    def total_limit(self) -> int:
        return sum(core.effective_limit(cl.policy, cl.state) for cl in self.clients)

    def release(self, caller: int, attempt: int, ticket: core.Ticket, report: Report) -> None:
        """The answer is back: report, release (then hand-off), and the caller's next step."""
        now = self.now
        cl = self.client_of(caller)
        cl.state = core.release(cl.policy, cl.state, ticket, report, now, waiting=len(cl.waiters))
        self.dispatch(cl)
        if now >= self.warm:
            self.limit_seen.append(self.total_limit())
            self.responses_after += 1
        if report.outcome is Outcome.SUCCESS:
            self.acquire(caller, 1)  # plenty of work: the next request at once
            return
        cl.rejected += 1
        if now >= self.warm:
            self.rejected_after += 1
        delay = core.retry_delay(
            cl.policy, cl.state, report.outcome, attempt, now, self.rng.random()
        )
        self.at(now + (delay or 0.0), self.acquire, caller, attempt + 1)

    # -- the endpoint ---------------------------------------------------------------------

    def send(self, caller: int, attempt: int, ticket: core.Ticket) -> None:
        self.at(self.now + self.sc.network / 2, self.arrive, caller, attempt, ticket)

    def arrive(self, caller: int, attempt: int, ticket: core.Ticket) -> None:
        sc, now, busy = self.sc, self.now, self.busy_until
        while busy and busy[0] <= now:
            heapq.heappop(busy)
        back = now + sc.network / 2
        if len(busy) >= sc.capacity:
            retry_after: float | None
            if sc.retry_after == "none":
                retry_after = None
            elif sc.retry_after == "next_slot":
                retry_after = round(max(0.0, busy[0] - now), 3)  # as the real server: ms
            elif sc.retry_after == "ceil":  # whole seconds, at least 1 (strict RFC 9110)
                retry_after = float(max(1, math.ceil(busy[0] - now)))
            else:
                retry_after = float(sc.retry_after)
            report = Report(Outcome.RATE_LIMITED, retry_after)
            self.at(back, self.release, caller, attempt, ticket, report)
            return
        service = sc.latency - sc.network  # the client sees L from sending to the answer
        if sc.jitter:
            service *= 1.0 + sc.jitter * (2.0 * self.rng.random() - 1.0)
        heapq.heappush(busy, now + service)
        # throughput as work done inside each window: a request counts as the share of its
        # service time that falls inside (no quantisation when answers come back in rounds)
        self.work_after += _overlap(now, now + service, self.warm, self.end) / service
        self.work_total += _overlap(now, now + service, 0.0, self.end) / service
        if len(busy) >= self.need90 and self.t90 == math.inf:
            self.t90 = now
        self.at(back + service, self.release, caller, attempt, ticket, Report(Outcome.SUCCESS))


def _overlap(a: float, b: float, lo: float, hi: float) -> float:
    return max(0.0, min(b, hi) - max(a, lo))


def simulate(scenario: Scenario, policy: AimdPolicy | None = None) -> Result:
    return Simulation(scenario, policy).run()


def grid(
    *,
    capacities: Iterable[int] = CAPACITIES,
    latencies: Iterable[float] = LATENCIES,
    modes: Iterable[str | float] = RETRY_AFTER_MODES,
    **kwargs: object,
) -> list[Scenario]:
    return [
        Scenario(capacity=c, latency=lat, retry_after=mode, **kwargs)  # type: ignore[arg-type]
        for mode in modes
        for lat in latencies
        for c in capacities
    ]


def table(results: list[Result]) -> str:
    lines = [
        "| Retry-After | C | L | share of ideal | whole run | 429s | t90 | t90 (round trips) "
        "| limit after warm-up | misses |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        sc = r.scenario
        ra = sc.retry_after if isinstance(sc.retry_after, str) else f"{sc.retry_after:g} s"
        t90 = f"{r.t90:.2f} s" if r.t90 < math.inf else "never"
        lines.append(
            f"| {ra} | {sc.capacity} | {sc.latency * 1000:g} ms | {r.throughput:.1%} "
            f"| {r.whole_run:.1%} | {r.rejected_share:.2%} | {t90} | {r.t90_rtts:.1f} "
            f"| {r.limit_min}-{r.limit_max} | {', '.join(r.misses()) or '-'} |"
        )
    return "\n".join(lines)


def matrix(results: list[Result]) -> str:
    """The grid compactly: one table per Retry-After mode, L down, C across; each cell reads
    share of ideal / 429s / round trips to 90 % of C, bold where it misses a target."""
    out = []
    modes = list(dict.fromkeys(r.scenario.retry_after for r in results))
    caps = sorted({r.scenario.capacity for r in results})
    for mode in modes:
        ra = mode if isinstance(mode, str) else f"{mode:g} s"
        out.append(f"Retry-After {ra}:\n")
        out.append("| L \\ C | " + " | ".join(map(str, caps)) + " |")
        out.append("|---" * (len(caps) + 1) + "|")
        rows: dict[float, dict[int, Result]] = {}
        for r in results:
            if r.scenario.retry_after == mode:
                rows.setdefault(r.scenario.latency, {})[r.scenario.capacity] = r
        for lat, by_cap in rows.items():
            cells = []
            for c in caps:
                r = by_cap[c]
                cell = f"{r.throughput:.1%} / {r.rejected_share:.1%} / {r.t90_rtts:.0f}"
                cells.append(f"**{cell}**" if r.misses() else cell)
            out.append(f"| {lat * 1000:g} ms | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def summary(results: list[Result]) -> str:
    """One row per number of processes: cells that meet the targets, the worst and the median
    share of ideal and of 429s (after warm-up), and the range of the processes' summed limit."""
    lines = [
        "| processes | cells meeting targets | share of ideal: min / median "
        "| 429s: median / max | summed limit after warm-up |",
        "|---|---|---|---|---|",
    ]
    by_n: dict[int, list[Result]] = {}
    for r in results:
        by_n.setdefault(r.scenario.processes, []).append(r)
    for n, rs in sorted(by_n.items()):
        tp = sorted(r.throughput for r in rs)
        rej = sorted(r.rejected_share for r in rs)
        ok = sum(1 for r in rs if not r.misses())
        over = [r.limit_max / r.scenario.capacity for r in rs]
        under = [r.limit_min / r.scenario.capacity for r in rs]
        lines.append(
            f"| {n} | {ok} of {len(rs)} | {tp[0]:.1%} / {tp[len(tp) // 2]:.1%} "
            f"| {rej[len(rej) // 2]:.2%} / {rej[-1]:.2%} "
            f"| {min(under):.2f}-{max(over):.2f} x C |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--jitter", type=float, default=0.0)
    parser.add_argument("--network", type=float, default=0.002)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warmup", type=float, default=None, help="default: warmup_for(L)")
    parser.add_argument("--capacities", default=",".join(map(str, CAPACITIES)))
    parser.add_argument("--latencies", default=",".join(f"{x:g}" for x in LATENCIES))
    parser.add_argument("--modes", default="next_slot,none,1", help="next_slot,ceil,none,<s>")
    parser.add_argument("--processes", default="1", help="limiters sharing the endpoint: 1,2,4,8")
    parser.add_argument("--share-every", type=float, default=0.0, help="s between peer looks")
    parser.add_argument("--compact", action="store_true", help="one C x L table per mode")
    args = parser.parse_args(argv)
    modes = [m if m in ("next_slot", "ceil", "none") else float(m) for m in args.modes.split(",")]
    results: list[Result] = []
    counts = [int(x) for x in args.processes.split(",")]
    for n in counts:
        scenarios = grid(
            capacities=[int(x) for x in args.capacities.split(",")],
            latencies=[float(x) for x in args.latencies.split(",")],
            modes=modes,
            duration=args.duration,
            jitter=args.jitter,
            network=args.network,
            seed=args.seed,
            warmup=args.warmup,
            processes=n,
            share_every=args.share_every,
        )
        part = [simulate(sc) for sc in scenarios]
        if len(counts) > 1:
            print(f"\n## {n} process{'es' if n > 1 else ''}\n")
        print(matrix(part) if args.compact else table(part))
        results += part
    failed = [r for r in results if r.misses()]
    if len(counts) > 1:
        print("\n" + summary(results))
    print(f"\n{len(results) - len(failed)} of {len(results)} cells meet the targets")


if __name__ == "__main__":
    main()
