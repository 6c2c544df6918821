"""The pure AIMD policy (conveyor.core.limiter): properties under hypothesis, no clock, no I/O."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.core import limiter as core
from conveyor.core.limiter import AimdPolicy, KeyState, Outcome, Report

SUCCESS = Report(Outcome.SUCCESS)
POLICY = AimdPolicy(initial_limit=4, min_limit=1, max_limit=64, min_window=8, probe_factor=2)


def _fill(policy: AimdPolicy, state: KeyState, now: float, waiting: int = 0):
    """Admit until the key is full; returns the state and the tickets."""
    tickets = []
    while core.can_admit(policy, state, now):
        state, ticket = core.admit(policy, state, now, waiting=waiting)
        tickets.append(ticket)
    return state, tickets


# An action: ("admit", waiting) or ("release", index into in-flight tickets, outcome, retry_after)
outcomes = st.sampled_from(list(Outcome))
actions = st.one_of(
    st.tuples(st.just("admit"), st.integers(0, 100)),
    st.tuples(
        st.just("release"),
        st.integers(0, 1000),
        outcomes,
        st.one_of(st.none(), st.floats(0, 30)),
        st.integers(0, 100),
    ),
    st.tuples(st.just("tick"), st.floats(0, 5)),
)
policies = st.builds(
    AimdPolicy,
    initial_limit=st.integers(1, 8),
    min_limit=st.just(1),
    max_limit=st.integers(8, 200),
    decrease_factor=st.floats(0.3, 0.95),
    min_window=st.integers(1, 40),
    probe_factor=st.integers(1, 4),
)


@settings(max_examples=300, deadline=None)
@given(policy=policies, script=st.lists(actions, max_size=300))
def test_policy_any_sequence_keeps_invariants(policy, script):
    state = core.new_state(policy)
    now = 0.0
    live = []
    for action in script:
        if action[0] == "tick":
            now += action[1]
        elif action[0] == "admit":
            if core.can_admit(policy, state, now):
                state, ticket = core.admit(policy, state, now, waiting=action[1])
                live.append(ticket)
        elif live:
            _, index, outcome, retry_after, waiting = action
            ticket = live.pop(index % len(live))
            state = core.release(
                policy, state, ticket, Report(outcome, retry_after), now, waiting=waiting
            )
        limit = core.effective_limit(policy, state)
        assert policy.min_limit <= limit <= policy.max_limit
        assert policy.min_limit <= state.limit <= policy.max_limit + 1
        assert state.in_flight == len(live)
        assert state.in_flight <= state.next_seq


@settings(max_examples=200, deadline=None)
@given(limit=st.integers(2, 60), burst=st.integers(1, 60), retry_after=st.floats(0, 10))
def test_release_burst_of_429s_from_one_congestion_event_decreases_once(limit, burst, retry_after):
    policy = AimdPolicy(initial_limit=limit, max_limit=64)
    state, tickets = _fill(policy, core.new_state(policy), 0.0)
    before = state.limit
    for ticket in tickets[:burst]:
        state = core.release(policy, state, ticket, Report(Outcome.RATE_LIMITED, retry_after), 1.0)
    # the first event ends slow start: one slot per 429 of it, down to half, and one event
    floor = max(1.0, before * policy.slow_start_decrease)
    assert state.limit == pytest.approx(max(floor, before - burst))
    assert state.decrease_seq == state.next_seq
    assert not state.slow_start
    # a 429 from a request admitted *after* the decrease is a new event: it lowers it again
    state = KeyState(**{**_asdict(state), "cooldown_until": -math.inf})
    if core.can_admit(policy, state, 2.0):
        lowered = state.limit
        state, late = core.admit(policy, state, 2.0)
        state = core.release(policy, state, late, Report(Outcome.RATE_LIMITED), 2.0)
        assert state.limit == pytest.approx(max(1.0, lowered * policy.decrease_factor))


def _asdict(state: KeyState) -> dict:
    return {name: getattr(state, name) for name in KeyState.__slots__}


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(2, 60),
    demand=st.integers(0, 60),
    rounds=st.integers(1, 40),
)
def test_release_success_under_used_key_never_increases(limit, demand, rounds):
    """Demand below the limit (nobody waiting, slots free): the limit does not drift up."""
    policy = AimdPolicy(initial_limit=limit, max_limit=128, min_window=1)
    state = core.new_state(policy)
    demand = min(demand, limit - 1)
    for _ in range(rounds):
        tickets = []
        for _ in range(demand):
            state, ticket = core.admit(policy, state, 0.0)
            tickets.append(ticket)
        for ticket in tickets:
            state = core.release(policy, state, ticket, SUCCESS, 0.0)
    assert state.limit == limit


@settings(max_examples=200, deadline=None)
@given(
    retry_after=st.floats(0.001, 100),
    second=st.one_of(st.none(), st.floats(0, 100)),
    now=st.floats(0, 1e6),
)
def test_release_429_cooldown_ends_exactly_at_retry_after(retry_after, second, now):
    policy = AimdPolicy(initial_limit=4, max_cooldown=1000)
    state, tickets = _fill(policy, core.new_state(policy), now)
    state = core.release(policy, state, tickets[0], Report(Outcome.RATE_LIMITED, retry_after), now)
    until = now + retry_after
    if second is not None:  # another 429 of the same event: the latest deadline wins, no more
        state = core.release(policy, state, tickets[1], Report(Outcome.RATE_LIMITED, second), now)
        until = max(until, now + second)
    assert state.cooldown_until == until
    for ticket in tickets[2:]:  # free the other slots: only the cooldown can hold the key now
        state = core.release(policy, state, ticket, Report(Outcome.CANCELLED), now)
    assert core.cooldown_left(state, now) == pytest.approx(until - now)
    assert not core.can_admit(policy, state, math.nextafter(until, -math.inf))
    assert core.can_admit(policy, state, until)


@given(retry_after=st.floats(301, 1e9))
def test_release_429_cooldown_capped_by_max_cooldown(retry_after):
    policy = AimdPolicy(max_cooldown=300)
    state, tickets = _fill(policy, core.new_state(policy), 0.0)
    state = core.release(policy, state, tickets[0], Report(Outcome.RATE_LIMITED, retry_after), 0.0)
    assert state.cooldown_until == 300


@pytest.mark.parametrize(
    "outcome",
    [
        Outcome.TIMEOUT,
        Outcome.CLIENT_ERROR,
        Outcome.SERVER_ERROR,
        Outcome.ERROR,
        Outcome.CANCELLED,
        Outcome.QUOTA_EXHAUSTED,
    ],
)
def test_release_non_congestion_outcomes_leave_limit_and_cooldown_alone(outcome):
    state, tickets = _fill(POLICY, core.new_state(POLICY), 0.0, waiting=10)
    after = core.release(POLICY, state, tickets[0], Report(outcome, 5.0), 0.0, waiting=10)
    assert after.limit == state.limit
    assert after.cooldown_until == state.cooldown_until
    assert after.in_flight == state.in_flight - 1


def test_release_overload_decreases_only_when_configured():
    for decreases in (True, False):
        policy = AimdPolicy(overload_decreases=decreases)
        state, tickets = _fill(policy, core.new_state(policy), 0.0)
        after = core.release(policy, state, tickets[0], Report(Outcome.OVERLOADED, 2.0), 0.0)
        assert (after.limit < state.limit) is decreases
        assert (after.cooldown_until == 2.0) is decreases


def test_slow_start_doubles_per_round_trip_until_first_429():
    policy = AimdPolicy(initial_limit=4, max_limit=512)
    state = core.new_state(policy)
    for expected in (8, 16, 32):
        state, tickets = _fill(policy, state, 0.0, waiting=100)
        for ticket in tickets:
            state = core.release(policy, state, ticket, SUCCESS, 0.0, waiting=100)
        assert core.effective_limit(policy, state) == expected


def test_additive_increase_one_per_window_and_probe_window_at_last_ceiling():
    policy = AimdPolicy(initial_limit=10, max_limit=64, min_window=5, probe_factor=3)
    past_slow_start = KeyState(limit=10.0, cap=64, slow_start=False)
    state, live = _fill(policy, past_slow_start, 0.0, waiting=50)
    state = core.release(policy, state, live.pop(0), Report(Outcome.RATE_LIMITED), 0.0)
    assert core.effective_limit(policy, state) == 9  # 10 * 0.9
    assert state.ceiling == 10
    successes = 0
    reached: dict[int, int] = {}
    while core.effective_limit(policy, state) < 11:
        state = core.release(policy, state, live.pop(0), SUCCESS, 0.0, waiting=50)
        successes += 1
        reached.setdefault(core.effective_limit(policy, state), successes)
        state, more = _fill(policy, state, 0.0, waiting=50)
        live += more
    # 9 -> 10 steps back onto the level that drew the 429: probe_factor windows of 9 = 27;
    # 10 -> 11 is new ground: one window of max(10, min_window) = 10
    assert reached == {9: 1, 10: 27, 11: 37}


def test_probe_after_long_retry_after_waits_in_proportion_to_its_cost():
    """A 1 s Retry-After at 50 ms round trips: a probe freezes ~20 round trips, so probe only
    every 20 / probe_budget round trips; a 2 ms Retry-After keeps the normal probe window."""
    policy = AimdPolicy(min_window=5, probe_factor=4, probe_budget=0.02)
    for cooldown, expected in ((1.0, math.ceil(1.0 / 0.05 / 0.02) * 8), (0.002, 4 * 8)):
        state = KeyState(limit=8.0, cap=64, slow_start=False, ceiling=9, rtt=0.05)
        state = KeyState(**{**_asdict(state), "last_cooldown": cooldown})
        assert core._window_size(policy, state, 8) == pytest.approx(expected, rel=0.01)
    # the cooldown of the decrease is remembered, the rtt is learnt from successes
    state, live = _fill(policy, KeyState(limit=8.0, cap=64, slow_start=False), 0.0, waiting=9)
    state = core.release(policy, state, live.pop(), SUCCESS, 0.05, waiting=9)
    assert state.rtt == pytest.approx(0.05)
    state, more = _fill(policy, state, 0.05, waiting=9)
    state = core.release(policy, state, more[0], Report(Outcome.RATE_LIMITED, 1.0), 0.06)
    assert (state.last_cooldown, state.ceiling) == (1.0, 8)


def test_hard_cap_bounds_the_limit_and_aliases_resolve():
    policy = AimdPolicy(initial_limit=4, max_limit=100)
    state = core.new_state(policy, cap=6)
    for _ in range(10):
        state, tickets = _fill(policy, state, 0.0, waiting=100)
        for ticket in tickets:
            state = core.release(policy, state, ticket, SUCCESS, 0.0, waiting=100)
    assert core.effective_limit(policy, state) == 6
    aliases = {"azure/gpt4o-east/chat": "openai/gpt-4o/chat", "x/y/z": "azure/gpt4o-east/chat"}
    assert core.resolve_key("x/y/z", aliases) == "openai/gpt-4o/chat"
    with pytest.raises(ValueError, match="cycle"):
        core.resolve_key("a/b/c", {"a/b/c": "d/e/f", "d/e/f": "a/b/c"})
    for bad in ("openai", "openai/gpt", "openai//chat", ""):
        with pytest.raises(ValueError, match="provider/model/domain"):
            core.check_key(bad)
    assert core.check_key("together/meta-llama/Llama-3-70b/chat")


@pytest.mark.parametrize(
    ("status", "quota", "expected"),
    [
        (200, False, Outcome.SUCCESS),
        (204, False, Outcome.SUCCESS),
        (429, False, Outcome.RATE_LIMITED),
        (429, True, Outcome.QUOTA_EXHAUSTED),
        (503, False, Outcome.OVERLOADED),
        (529, False, Outcome.OVERLOADED),
        (408, False, Outcome.TIMEOUT),
        (504, False, Outcome.TIMEOUT),
        (400, False, Outcome.CLIENT_ERROR),
        (404, False, Outcome.CLIENT_ERROR),
        (500, False, Outcome.SERVER_ERROR),
        (502, False, Outcome.SERVER_ERROR),
    ],
)
def test_classify_status_maps_codes(status, quota, expected):
    assert core.classify_status(status, quota_exhausted=quota) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3", 3.0),
        ("0.25", 0.25),
        (2, 2.0),
        ("-5", 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 10.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
        ("Wednesday, 21-Oct-15 07:28:00 GMT", 10.0),
        ("Wed Oct 21 07:28:00 2015", 10.0),
        ("Wed, 32 Oct 2015 07:28:00 GMT", None),
        ("Wed, 21 Foo 2015 07:28:00 GMT", None),
        ("soon", None),
        ("", None),
        (None, None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_parse_retry_after_seconds_or_http_date(value, expected):
    assert core.parse_retry_after(value, wall_now=1445412470.0) == expected


def test_retry_delay_honours_cooldown_and_backs_off_5xx():
    policy = AimdPolicy()
    state, tickets = _fill(policy, core.new_state(policy), 0.0)
    state = core.release(policy, state, tickets[0], Report(Outcome.RATE_LIMITED, 1.5), 0.0)
    assert core.retry_delay(policy, state, Outcome.RATE_LIMITED, 1, 0.5, 0.3) == 1.0
    assert core.retry_delay(policy, state, Outcome.QUOTA_EXHAUSTED, 1, 0.5, 0.3) is None
    assert core.retry_delay(policy, state, Outcome.CLIENT_ERROR, 1, 0.5, 0.3) is None
    quiet = core.new_state(policy)
    first = core.retry_delay(policy, quiet, Outcome.SERVER_ERROR, 1, 0.0, 0.0)
    third = core.retry_delay(policy, quiet, Outcome.SERVER_ERROR, 3, 0.0, 0.0)
    jittered = core.retry_delay(policy, quiet, Outcome.SERVER_ERROR, 3, 0.0, 0.9)
    assert first is not None and third is not None and jittered is not None
    assert 0 < first < third and jittered < third


def test_policy_rejects_bad_knobs():
    with pytest.raises(ValueError):
        AimdPolicy(initial_limit=0)
    with pytest.raises(ValueError):
        AimdPolicy(decrease_factor=1.0)
    with pytest.raises(ValueError):
        AimdPolicy(min_window=0)
    with pytest.raises(ValueError):
        core.admit(POLICY, core.KeyState(limit=1, cap=1, in_flight=1), 0.0)


def test_core_limiter_imports_no_io_modules():
    path = Path(core.__file__)
    banned = {"asyncio", "threading", "time", "sqlite3", "socket", "random", "email"}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert name.split(".")[0] not in banned, f"{path.name} imports {name}"


def test_failed_probe_steps_back_one_but_a_level_that_held_cuts():
    """A 429 answering the last +1 (admitted in the first round at the new level) steps back onto
    the level below, which held for a whole window; a 429 from a request admitted before that
    +1 means the endpoint shrank: the multiplicative cut."""
    policy = AimdPolicy(initial_limit=10, max_limit=64, min_window=5, probe_factor=1)
    for answered_probe, expected in ((True, 10), (False, 9)):  # 10 * 0.9 = 9
        state, live = _fill(policy, KeyState(limit=10.0, cap=64, slow_start=False), 0.0, 50)
        while core.effective_limit(policy, state) == 10:  # one window of saturated successes
            state = core.release(policy, state, live.pop(0), SUCCESS, 0.0, waiting=50)
            state, more = _fill(policy, state, 0.0, waiting=50)
            live += more
        assert core.effective_limit(policy, state) == 11 and state.probe_seq >= 0
        ticket = live[-1] if answered_probe else live[0]  # after the +1 / before it
        assert (ticket.seq >= state.probe_seq) is answered_probe
        state = core.release(policy, state, ticket, Report(Outcome.RATE_LIMITED), 0.0)
        assert core.effective_limit(policy, state) == expected
        assert state.ceiling == 11 and state.probe_seq == -1
        # the next 429 of a new admission is news: the endpoint shrank, so it cuts
        state = KeyState(**{**_asdict(state), "in_flight": 0})
        state, late = core.admit(policy, state, 0.0)
        state = core.release(policy, state, late, Report(Outcome.RATE_LIMITED), 0.0)
        assert core.effective_limit(policy, state) == int(expected * 0.9)
