"""Adaptive (AIMD) request admission per endpoint: the policy as a pure state machine.

Owns the decision "may one more request go to this endpoint now?" and how each finished request
moves the endpoint's concurrency limit. Pure: every function takes a frozen ``KeyState`` and
``now`` (seconds on the caller's monotonic clock) and returns a new state; nothing here waits,
sleeps, locks or reads a clock. ``conveyor.limiter`` is the edge that queues callers and wakes
them; it calls only ``admit``, ``release`` and the read-only helpers below.

The policy (see docs/limiter.md for the reasoning and the benchmark):

- **Slow start.** A key starts at ``initial_limit`` and grows by one per success of a fully used
  key (the limit doubles per round trip) until the first congestion signal. Its overshoot is
  the number of requests the endpoint refuses, so that first event takes one slot off per 429
  (down to ``slow_start_decrease`` x the limit) instead of one multiplicative cut.
- **Additive increase, only when used.** After that it grows by one per *window* of successes:
  ``max(limit, min_window)`` of them, i.e. about one step per round trip on a busy key. Only
  successes that come back while the key is fully used count (in flight + waiting >= limit): a
  key whose demand is below its limit never drifts up.
- **Careful probing at the last ceiling.** The step that would take the limit back to the level
  that last drew a 429 needs ``probe_factor`` windows: a steady endpoint is probed rarely (few
  429s), while growth beyond that level runs at the normal pace again (fast recovery when the
  endpoint gets more capacity).
- **A failed probe steps back one.** A 429 that answers the last +1 (its request was admitted
  in the first round at the new level, ``probe_seq``) means the level below, which just held
  for a whole window, is the capacity: the limit steps back onto it. No sawtooth below C.
- **Multiplicative decrease once per congestion event.** Any other 429 (or a 503/529 overload,
  when ``overload_decreases``) means a level that held before fails now -- the endpoint shrank
  -- and multiplies the limit by ``decrease_factor``, unless its request was admitted before
  the last decrease: a burst of 429s from requests sent at the old limit lowers it once.
  Admissions are numbered; ``decrease_seq`` marks the first admission after a decrease.
- **Retry-After honoured exactly.** A 429/503/529 with ``retry_after`` closes the key until
  ``now + retry_after`` (capped at ``max_cooldown``); several answers keep the latest deadline,
  never more. Without Retry-After there is no key-wide pause: the decrease is the back-off.
- **Several processes on one endpoint** (``share``, from what the others reported through a
  shared store): the window is scaled so that together they step like one process, another's
  429 makes one holding more than an equal part give back, its own 429 at an equal part steps
  back one before it cuts. A 429 without Retry-After at ``min_limit`` pauses the key one round
  trip, as the limit cannot go lower.
- **Everything else leaves the limit alone**: timeouts, other 4xx and 5xx, errors raised by the
  caller, cancellations, and an ``insufficient_quota`` 429 (a billing stop, not congestion: the
  request is not retryable). Every outcome frees the slot.

Size: the whole AIMD state machine (admission, the probe, Retry-After, cooldown, sharing among
peers, classifying replies) as pure functions with their docstrings: the policy has one home.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from conveyor.core.retry import DEFAULT_RETRY, RetryPolicy


class Outcome(enum.Enum):
    """How a request ended, as far as admission cares."""

    SUCCESS = "success"
    RATE_LIMITED = "rate_limited"  # 429: congestion; retry after the key's cooldown
    OVERLOADED = "overloaded"  # 503 / 529: the server sheds load; congestion when configured
    QUOTA_EXHAUSTED = "quota_exhausted"  # 429 insufficient_quota: stop, do not retry
    TIMEOUT = "timeout"  # the client gave up waiting (or 408 / 504)
    CLIENT_ERROR = "client_error"  # other 4xx: the request is wrong, retrying will not help
    SERVER_ERROR = "server_error"  # other 5xx and transport failures: retry with backoff
    ERROR = "error"  # an exception that is not about the endpoint at all
    CANCELLED = "cancelled"  # the caller left before an answer (or never reported one)

    @property
    def retryable(self) -> bool:
        return self in _RETRYABLE


_RETRYABLE = frozenset(
    {Outcome.RATE_LIMITED, Outcome.OVERLOADED, Outcome.TIMEOUT, Outcome.SERVER_ERROR}
)


@dataclass(frozen=True, slots=True)
class Report:
    """An outcome plus the server's Retry-After, already in seconds."""

    outcome: Outcome
    retry_after: float | None = None


def classify_status(status: int, *, quota_exhausted: bool = False) -> Outcome:
    """Map an HTTP status code to an ``Outcome``.

    ``quota_exhausted`` marks a 429 whose body says ``insufficient_quota`` (OpenAI's billing
    stop); the caller decides that from the body, as only it has one.
    """
    if status < 400:
        return Outcome.SUCCESS
    if status == 429:
        return Outcome.QUOTA_EXHAUSTED if quota_exhausted else Outcome.RATE_LIMITED
    if status in (503, 529):
        return Outcome.OVERLOADED
    if status in (408, 504):
        return Outcome.TIMEOUT
    if status < 500:
        return Outcome.CLIENT_ERROR
    return Outcome.SERVER_ERROR


def parse_retry_after(value: object, *, wall_now: float) -> float | None:
    """Seconds to wait from a Retry-After value: delta-seconds or an HTTP date.

    Accepts numbers and numeric strings (fractions too: several APIs send them) and RFC 9110
    dates, resolved against ``wall_now`` (unix seconds). Returns None for anything unreadable;
    never a negative delay.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        text = str(value).strip()
        if not text:
            return None
        try:
            seconds = float(text)
        except ValueError:
            when = _parse_http_date(text)
            if when is None:
                return None
            seconds = when - wall_now
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


# RFC 9110 section 5.6.7: IMF-fixdate, the obsolete RFC 850 form, and asctime. (email.utils
# would parse them too, but importing it loads socket: not in the pure core.)
_MONTHS = {
    m: i
    for i, m in enumerate(
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"], 1
    )
}
_HTTP_DATES = (
    re.compile(r"^\w{3}, (\d{2}) (\w{3}) (\d{4}) (\d{2}):(\d{2}):(\d{2}) GMT$"),
    re.compile(r"^\w{6,9}, (\d{2})-(\w{3})-(\d{2}) (\d{2}):(\d{2}):(\d{2}) GMT$"),
    re.compile(r"^\w{3} (\w{3}) ([ \d]\d) (\d{2}):(\d{2}):(\d{2}) (\d{4})$"),
)


def _parse_http_date(text: str) -> float | None:
    """Unix seconds of an HTTP date, or None."""
    for form, pattern in enumerate(_HTTP_DATES):
        m = pattern.match(text)
        if m is None:
            continue
        if form == 2:  # asctime: month day time year
            mon, day, hh, mm, ss, year = m.groups()
        else:
            day, mon, year, hh, mm, ss = m.groups()
        if mon not in _MONTHS:
            return None
        y = int(year)
        if form == 1:  # two-digit year: RFC 9110 says read it as within 50 years of now
            y += 2000 if y < 70 else 1900
        try:
            when = datetime(y, _MONTHS[mon], int(day), int(hh), int(mm), int(ss), tzinfo=UTC)
        except ValueError:
            return None
        return when.timestamp()
    return None


@dataclass(frozen=True, slots=True)
class AimdPolicy:
    """The knobs. Defaults suit LLM-style endpoints from 1 to a few hundred requests in flight."""

    initial_limit: int = 8  # slow start finds C in log2(C / 8) round trips; overshoots C < 8 once
    min_limit: int = 1
    max_limit: int = 512  # the hard cap unless a key has its own (``caps``)
    decrease_factor: float = 0.9  # Netflix's ratio: a gentle cut keeps throughput near C
    slow_start_decrease: float = 0.5  # floor of the cut that ends slow start (overshoot <= 2x)
    min_window: int = 32  # successes per +1 at least: slows probing on small limits (few 429s)
    probe_factor: int = 4  # windows needed to step back onto the level that last drew a 429
    probe_budget: float = 0.02  # share of time a probe's Retry-After freeze may cost at most
    max_cooldown: float = 300.0  # never trust a Retry-After beyond five minutes
    overload_decreases: bool = True  # 503/529 count as congestion (decrease + Retry-After)
    retry: RetryPolicy = DEFAULT_RETRY  # jittered backoff for 5xx / timeouts / bare 429s

    def __post_init__(self) -> None:
        if not 1 <= self.min_limit <= self.initial_limit <= self.max_limit:
            raise ValueError(
                "limits must satisfy 1 <= min_limit <= initial_limit <= max_limit, got "
                f"{self.min_limit}, {self.initial_limit}, {self.max_limit}"
            )
        for name in ("decrease_factor", "slow_start_decrease"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        if not 0.0 < self.probe_budget <= 1.0:
            raise ValueError(f"probe_budget must be in (0, 1], got {self.probe_budget}")
        if self.min_window < 1 or self.probe_factor < 1:
            raise ValueError("min_window and probe_factor must be at least 1")
        if self.max_cooldown < 0:
            raise ValueError(f"max_cooldown must be >= 0, got {self.max_cooldown}")


@dataclass(frozen=True, slots=True)
class KeyState:
    """One endpoint's admission state. ``limit`` is a float; ``effective_limit`` floors it.

    Counters (successes, 429s, ...) live at the edge: this stays small because every admission
    and release builds a new one (one ``replace`` each, ~3 us).
    """

    limit: float
    cap: int  # hard cap for this key (shared by its aliases)
    in_flight: int = 0
    slow_start: bool = True
    next_seq: int = 0  # admission number the next ticket gets (= admissions so far)
    decrease_seq: int = 0  # tickets numbered below this were admitted before the last decrease
    window: int = 0  # saturated successes counted toward the next +1
    ceiling: int = 0  # the effective limit that last drew a 429 (0: none yet)
    cooldown_until: float = -math.inf
    rtt: float = 0.0  # smoothed seconds from admission to success (0: no sample yet)
    last_cooldown: float = 0.0  # the Retry-After that came with the last decrease
    exit_floor: float = 0.0  # > 0: the last cut ended slow start; its 429s trim down to this
    probe_seq: int = -1  # admission number at the last +1 since the last decrease (-1: none)
    peers: int = 1  # processes using this endpoint, this one included (``share``)
    peer_limit: int = 0  # their effective limits summed, as last seen (0: alone)
    stepped_back: bool = False  # the last decrease was a step back for another's 429


@dataclass(frozen=True, slots=True)
class Ticket:
    """Handed out by ``admit`` and given back to ``release``."""

    seq: int
    saturated: bool  # every slot was taken (or callers waited) when this one was admitted
    admitted_at: float


def new_state(policy: AimdPolicy, cap: int | None = None) -> KeyState:
    hard = policy.max_limit if cap is None else max(policy.min_limit, cap)
    return KeyState(limit=float(min(policy.initial_limit, hard)), cap=hard)


def effective_limit(policy: AimdPolicy, state: KeyState) -> int:
    return max(policy.min_limit, min(state.cap, math.floor(state.limit)))


def cooldown_left(state: KeyState, now: float) -> float:
    return max(0.0, state.cooldown_until - now)


def can_admit(policy: AimdPolicy, state: KeyState, now: float) -> bool:
    return now >= state.cooldown_until and state.in_flight < effective_limit(policy, state)


def admit(
    policy: AimdPolicy, state: KeyState, now: float, *, waiting: int = 0
) -> tuple[KeyState, Ticket]:
    """Take a slot. ``waiting``: callers still queued behind this one (they make it saturated).

    Raises ValueError when ``can_admit`` is false: the edge must ask first.
    """
    if not can_admit(policy, state, now):
        raise ValueError("admit() called while the key cannot admit")
    in_flight = state.in_flight + 1
    saturated = in_flight + waiting >= effective_limit(policy, state)
    ticket = Ticket(seq=state.next_seq, saturated=saturated, admitted_at=now)
    return replace(state, in_flight=in_flight, next_seq=state.next_seq + 1), ticket


def is_congestion(policy: AimdPolicy, outcome: Outcome) -> bool:
    return outcome is Outcome.RATE_LIMITED or (
        outcome is Outcome.OVERLOADED and policy.overload_decreases
    )


def release(
    policy: AimdPolicy,
    state: KeyState,
    ticket: Ticket,
    report: Report,
    now: float,
    *,
    waiting: int = 0,
) -> KeyState:
    """Give a slot back with how its request ended; returns the next state. O(1).

    ``waiting``: callers queued for this key right now. A success grows the limit only if the
    key is fully used as it comes back (in flight + waiting >= limit): demand below the limit
    never pushes it up, and the successes of a slow-start burst stop growing it as soon as the
    demand that produced them is met. (Judging at admission instead would miss the first round
    of a burst, whose callers are admitted one by one before the others arrive.)
    """
    in_flight = max(0, state.in_flight - 1)
    outcome = report.outcome
    if outcome is Outcome.SUCCESS:
        current = effective_limit(policy, state)
        used = state.in_flight + waiting >= current
        sample = max(0.0, now - ticket.admitted_at)
        rtt = sample if state.rtt == 0.0 else 0.875 * state.rtt + 0.125 * sample  # TCP's SRTT
        if not (used and current < state.cap):
            return replace(state, in_flight=in_flight, rtt=rtt)
        if state.slow_start:
            return replace(state, in_flight=in_flight, rtt=rtt, limit=float(current + 1))
        window = state.window + 1
        if window < _window_size(policy, state, current):
            return replace(state, in_flight=in_flight, rtt=rtt, window=window)
        return replace(
            state,
            in_flight=in_flight,
            rtt=rtt,
            limit=float(current + 1),
            window=0,
            probe_seq=state.next_seq,
            stepped_back=False,
        )
    if not is_congestion(policy, outcome):
        return replace(state, in_flight=in_flight)
    cooldown_until = state.cooldown_until
    cooldown = 0.0
    if report.retry_after is not None:
        cooldown = min(report.retry_after, policy.max_cooldown)
        cooldown_until = max(cooldown_until, now + cooldown)
    elif effective_limit(policy, state) <= policy.min_limit:
        # At the lowest limit a decrease cannot be the back-off (several processes on one
        # endpoint can hold it there): pause the key for a round trip instead, so a 429 that
        # comes back at once is not followed by the next request at once.
        pause = state.rtt if state.rtt > 0 else policy.retry.base
        cooldown_until = max(cooldown_until, now + pause)
    if ticket.seq < state.decrease_seq:  # same congestion event: its decrease already happened
        if state.exit_floor > 0:  # ... except at the end of slow start, see below
            limit = max(state.exit_floor, state.limit - 1.0)
            return replace(state, in_flight=in_flight, cooldown_until=cooldown_until, limit=limit)
        return replace(state, in_flight=in_flight, cooldown_until=cooldown_until)
    if state.slow_start:
        # Slow start overshoots the endpoint's capacity by as many requests as the endpoint
        # refuses (up to 2x: the limit doubles per round trip). So the first 429 takes one slot
        # off and each further 429 of the same event another, down to slow_start_decrease x the
        # limit: this lands on the capacity whether the overshoot was 2x or a few requests.
        return replace(
            state,
            in_flight=in_flight,
            cooldown_until=cooldown_until,
            limit=max(float(policy.min_limit), state.limit - 1.0),
            slow_start=False,
            window=0,
            ceiling=effective_limit(policy, state),
            decrease_seq=state.next_seq,
            last_cooldown=cooldown,
            exit_floor=max(float(policy.min_limit), state.limit * policy.slow_start_decrease),
        )
    current = effective_limit(policy, state)
    stepped_back = False
    if 0 <= state.probe_seq <= ticket.seq < state.probe_seq + current:
        # The 429 answers the last +1: a request admitted in the first round at the new level,
        # after a whole window of the level below came back fine. That level still holds; the
        # step was one too many. Step back onto it instead of cutting (no sawtooth below C).
        limit = float(current - 1)
    elif state.peers > 1 and not state.stepped_back and current * state.peers <= state.peer_limit:
        # Other processes share the endpoint and this one holds no more than an equal part:
        # the 429 most likely answers another's +1 (whoever meets the full endpoint gets it).
        # Step back one; the ones above an equal part give back (``share``). A second event
        # before this one grows again is an overload after all: it cuts, as below.
        limit, stepped_back = float(current - 1), True
    else:  # a level that held before draws 429s now: the endpoint shrank
        limit = state.limit * policy.decrease_factor
    return replace(
        state,
        in_flight=in_flight,
        cooldown_until=cooldown_until,
        limit=max(float(policy.min_limit), limit),
        slow_start=False,
        window=0,
        ceiling=current,
        decrease_seq=state.next_seq,
        last_cooldown=cooldown,
        exit_floor=0.0,
        probe_seq=-1,
        stepped_back=stepped_back,
    )


def _window_size(policy: AimdPolicy, state: KeyState, current: int) -> int:
    size = max(current, policy.min_window)
    if state.peers > 1 and state.peer_limit > 0:
        # Several processes share the endpoint: the window is the one a lone process at their
        # summed limit would have, weighted by this process's part of it against an equal part
        # (count x limit / total). Together they then step about once per round trip of the
        # endpoint, as one process would (N unscaled processes probe N times as often), and a
        # process below its equal part grows faster than one above it: AIMD drifts to fair.
        total = max(state.peer_limit, current)
        size = max(1, math.ceil(max(total, policy.min_window) * current * state.peers / total))
    if current + 1 != state.ceiling:
        return size
    # Stepping back onto the level that drew the last 429: a probe. If that 429 froze the key
    # for a Retry-After of D seconds, a probe costs about D / rtt round trips of nothing, so
    # probe at most once per (D / rtt) / probe_budget round trips (of `current` successes each).
    size *= policy.probe_factor
    if state.last_cooldown > 0 and state.rtt > 0:
        rounds = state.last_cooldown / state.rtt / policy.probe_budget
        size = max(size, math.ceil(min(rounds, 1e6) * current))
    return size


@dataclass(frozen=True, slots=True)
class Peers:
    """What the processes using one endpoint told each other (through a shared store)."""

    count: int  # processes using the endpoint, this one included
    limit: int  # their effective limits summed, this one's included
    congested: bool  # another process saw a 429 / overload since the last look


def share(policy: AimdPolicy, state: KeyState, peers: Peers, now: float) -> KeyState:
    """Take in what the other processes on this endpoint reported; returns the next state.

    Each process keeps its own AIMD (no store round trip per request); this is how they stay
    one controller's worth of load together. The count and summed limit scale the additive
    increase (``_window_size``). A 429 goes to whichever request meets the full endpoint, often
    not the one of the process that pushed it over (a process that holds its slots re-sends
    into them first), so a process that holds more than an equal part of the summed limit
    treats another's 429 as its own congestion event: one multiplicative decrease (not below
    the equal part), once per look, unless it decreased itself since the last look. Pure.
    """
    count = max(1, peers.count)
    state = replace(state, peers=count, peer_limit=max(0, peers.limit) if count > 1 else 0)
    if count == 1 or not peers.congested:
        return state
    current = effective_limit(policy, state)
    fair = peers.limit / count
    recent = state.decrease_seq > 0 and state.next_seq - state.decrease_seq < current
    if current <= fair + 1 or recent:
        return state  # (about) an equal part or less, or decreased less than a round ago
    limit = max(math.ceil(fair), current - max(1.0, (current - fair) / 2), float(policy.min_limit))
    return replace(
        state,
        limit=limit,
        slow_start=False,
        window=0,
        ceiling=current,
        decrease_seq=state.next_seq,
        exit_floor=0.0,
        probe_seq=-1,
    )


def tally_peers(
    own_limit: int, others: Mapping[str, Mapping[str, Any]], seen: Mapping[str, int]
) -> tuple[Peers, dict[str, int]]:
    """``Peers`` for one endpoint from the other processes' latest reports.

    ``others``: worker -> its report for this endpoint (``limit``, ``in_flight``, ``waiting``,
    ``rate_limited``), fresh ones only; ``seen``: worker -> its 429 count at the last look.
    A process counts as a user while it has requests in flight or waiting; congestion is any
    other process's 429 count grown since the last look (a process first seen sets its
    baseline). Returns the peers and the counts to pass as ``seen`` next time. Pure.
    """
    count, limit, congested = 1, own_limit, False
    counts: dict[str, int] = {}
    for worker, st in others.items():
        rejected = int(st.get("rate_limited", 0))
        counts[worker] = rejected
        congested |= rejected > seen.get(worker, rejected)
        if int(st.get("in_flight", 0)) + int(st.get("waiting", 0)) > 0:
            count += 1
            limit += int(st.get("limit", 0))
    return Peers(count=count, limit=limit, congested=congested), counts


def retry_delay(
    policy: AimdPolicy, state: KeyState, outcome: Outcome, attempt: int, now: float, rand: float
) -> float | None:
    """Seconds to wait before retry ``attempt`` (1-based) of a request that ended in ``outcome``.

    None: do not retry (success, quota, 4xx, caller errors, cancellation). A rate-limited or
    overloaded request waits out the key's cooldown when there is one (exactly, no more), else
    the jittered backoff; 5xx and timeouts take the jittered backoff. ``rand`` in [0, 1).
    """
    if not outcome.retryable:
        return None
    left = cooldown_left(state, now)
    if outcome in (Outcome.RATE_LIMITED, Outcome.OVERLOADED) and left > 0:
        return left
    return max(left, policy.retry.delay(attempt, rand))


def resolve_key(key: str, aliases: Mapping[str, str]) -> str:
    """The canonical key behind ``key`` (aliases may chain); aliases share one state and cap."""
    check_key(key)
    seen = {key}
    while key in aliases:
        key = aliases[key]
        if key in seen:
            raise ValueError(f"endpoint aliases form a cycle at {key!r}")
        seen.add(key)
    return check_key(key)


def check_key(key: str) -> str:
    """Keys read ``provider/model/domain``; the model part may itself contain slashes."""
    if not isinstance(key, str):
        raise TypeError(f"an endpoint key is a str, got {type(key).__name__}")
    parts = key.split("/")
    if len(parts) < 3 or not all(parts):
        raise ValueError(f"an endpoint key reads 'provider/model/domain', got {key!r}")
    return key
