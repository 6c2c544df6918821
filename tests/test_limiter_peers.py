"""Several processes on one endpoint: the pure rules (``core.share``, ``core.tally_peers``, the
window and the 429 rules with peers), the limiter's edge (``EndpointLimiter.share``) and the
exchange through a real SQLite store (``runtime/endpoints.py``). The processes themselves:
tests/test_limiter_processes.py; the whole grid: ``python tests/limiter_sim.py --processes``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from conveyor.core import limiter as core
from conveyor.core.limiter import AimdPolicy, KeyState, Outcome, Peers, Report
from conveyor.limiter import EndpointLimiter
from conveyor.runtime.endpoints import EndpointFollower
from conveyor.store.urls import open_store
from conveyor.testing import FakeClock

POLICY = AimdPolicy()
SUCCESS = Report(Outcome.SUCCESS)
KEY = "fake/model/chat"


def steady(limit: int, **fields: object) -> KeyState:
    """A key past slow start, ``limit`` requests in flight (a long way from its last ceiling)."""
    state = KeyState(limit=float(limit), cap=512, slow_start=False, in_flight=0)
    return dataclasses.replace(state, **fields)  # type: ignore[arg-type]


def successes_per_step(state: KeyState) -> int:
    """Saturated successes until the limit grows by one."""
    start = core.effective_limit(POLICY, state)
    for n in range(1, 10_000):
        state, ticket = core.admit(POLICY, state, 0.0, waiting=100)
        state = core.release(POLICY, state, ticket, SUCCESS, 0.1, waiting=100)
        if core.effective_limit(POLICY, state) > start:
            return n
    raise AssertionError("never grew")


def test_share_alone_changes_nothing_but_the_count() -> None:
    state = steady(40)
    alone = core.share(POLICY, state, Peers(count=1, limit=40, congested=True), 0.0)
    assert alone == state
    assert successes_per_step(alone) == 40  # one window of the limit


def test_peers_scale_the_window_so_together_they_step_like_one() -> None:
    # two processes at 40 each: each steps after 80 of its own successes, so the pair steps
    # once per 80 successes of the endpoint, as one process at 80 would
    even = core.share(POLICY, steady(40), Peers(count=2, limit=80, congested=False), 0.0)
    assert successes_per_step(even) == 80
    # below an equal part a process grows faster, above it slower: AIMD drifts to fair
    low = core.share(POLICY, steady(20), Peers(count=2, limit=80, congested=False), 0.0)
    high = core.share(POLICY, steady(60), Peers(count=2, limit=80, congested=False), 0.0)
    assert successes_per_step(low) == 40 < successes_per_step(high) == 120


def test_another_processes_429_cuts_one_holding_more_than_an_equal_part() -> None:
    hog = steady(64, next_seq=1000)
    cut = core.share(POLICY, hog, Peers(count=2, limit=65, congested=True), 0.0)
    # half of what it holds above the equal part (32.5) goes back, once
    assert core.effective_limit(POLICY, cut) == 48
    assert cut.decrease_seq == 1000 and cut.ceiling == 64
    again = core.share(POLICY, cut, Peers(count=2, limit=49, congested=True), 0.0)
    assert again.limit == cut.limit  # decreased less than a round ago: the same event
    fair = steady(8, next_seq=1000)
    assert core.share(POLICY, fair, Peers(count=2, limit=16, congested=True), 0.0).limit == 8
    calm = core.share(POLICY, hog, Peers(count=2, limit=65, congested=False), 0.0)
    assert calm.limit == 64  # nobody met a 429: nothing to give back


def test_own_429_at_an_equal_part_with_peers_steps_back_one() -> None:
    policy = AimdPolicy()
    state = core.share(policy, steady(20, next_seq=500, decrease_seq=0),
                       Peers(count=2, limit=40, congested=False), 0.0)  # fmt: skip
    state, ticket = core.admit(policy, state, 1.0)
    after = core.release(policy, state, ticket, Report(Outcome.RATE_LIMITED), 1.0)
    assert after.limit == 19.0  # another's step most likely drew it: one back, not x0.9
    alone, ticket = core.admit(policy, steady(20, next_seq=500), 1.0)
    assert core.release(policy, alone, ticket, Report(Outcome.RATE_LIMITED), 1.0).limit == 18.0


def test_429_without_retry_after_at_the_lowest_limit_pauses_a_round_trip() -> None:
    state = steady(1, rtt=0.3)
    state, ticket = core.admit(POLICY, state, 10.0)
    after = core.release(POLICY, state, ticket, Report(Outcome.RATE_LIMITED), 10.0)
    assert after.cooldown_until == 10.3  # the limit cannot go lower: the pause is the back-off
    state, ticket = core.admit(POLICY, steady(2, rtt=0.3), 10.0)
    after = core.release(POLICY, state, ticket, Report(Outcome.RATE_LIMITED), 10.0)
    assert after.cooldown_until == -float("inf")  # above it the decrease is the back-off


def test_tally_peers_counts_users_and_new_429s() -> None:
    others = {
        "w2": {"limit": 5, "in_flight": 5, "waiting": 3, "rate_limited": 7},
        "w3": {"limit": 4, "in_flight": 0, "waiting": 0, "rate_limited": 2},  # idle: no user
    }
    peers, seen = core.tally_peers(6, others, {})
    assert peers == Peers(count=2, limit=11, congested=False)  # first look: a baseline
    assert seen == {"w2": 7, "w3": 2}
    others["w3"]["rate_limited"] = 3
    peers, seen = core.tally_peers(6, others, seen)
    assert peers.congested and seen["w3"] == 3
    assert core.tally_peers(6, {}, seen)[0] == Peers(count=1, limit=6, congested=False)


def test_limiter_share_reports_peers_and_the_change() -> None:
    changes: list[tuple[str, int, int, str]] = []
    limiter = EndpointLimiter(clock=FakeClock(), on_change=lambda *c: changes.append(c))
    limiter.acquire_nowait(KEY).release()  # the key exists, at its initial limit of 8
    limiter.share(KEY, Peers(count=3, limit=12, congested=True))
    st = limiter.key_statistics(KEY)
    assert st.peers == 3
    assert st.limit == 6 and st.decreases == 1  # 8 > 12 / 3 + 1: half the excess went back
    assert changes == [(KEY, 8, 6, "peers")]


def test_followers_on_one_sqlite_store_learn_of_each_other(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/run.db"
    clock = FakeClock()
    stores = [open_store(url), open_store(url)]
    try:
        limiters = [EndpointLimiter(clock=clock), EndpointLimiter(clock=clock)]
        followers = [
            EndpointFollower(s, clock, None, 0.5, lim)
            for s, lim in zip(stores, limiters, strict=True)
        ]
        held = [lim.acquire_nowait(KEY) for lim in limiters]  # each uses the endpoint
        now = 1_000.0
        for i, follower in enumerate(followers):
            assert follower.exchange_due(now, 30.0)
            follower.exchange(f"w{i}", now)
        assert limiters[0].key_statistics(KEY).peers == 1  # it looked before w1 reported
        assert limiters[1].key_statistics(KEY).peers == 2
        assert not followers[0].exchange_due(now + 0.5, 30.0)  # every SHARE_EVERY_S = 1 s
        followers[0].exchange("w0", now + 1.0)
        assert limiters[0].key_statistics(KEY).peers == 2
        # a report older than STALE_AFTER exchanges is from a worker that left
        followers[0].exchange("w0", now + 10.0)
        assert limiters[0].key_statistics(KEY).peers == 1
        for slot in held:
            slot.release()
    finally:
        for s in stores:
            s.close()
