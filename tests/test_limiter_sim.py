"""The limiter policy over the whole range of issue 12, in simulated time (tests/limiter_sim.py).

Capacities 4-64 x service times 50 ms-2 s x Retry-After (next free slot, none, a fixed 1 s):
after the warm-up (``limiter_sim.warmup_for``: 3 s, or 5 round trips when longer) each cell must
get >= 90 % of the ideal C / L with <= 3 % 429s, and reach 90 % of C within the warm-up; and the
limit, once found, stays at C (probes go to C + 1 and step back) instead of sawtoothing below.
Several processes on one endpoint: in a few cells where independent limiters draw more than 3 %
429s, processes that exchange reports (as workers do through the store) meet both targets.
Deterministic (seeded, no threads, no sleeps): a failure names the cell and what it missed.
"""

from __future__ import annotations

import dataclasses

import pytest

import limiter_sim as sim
from conveyor.core.limiter import AimdPolicy

CELLS = sim.grid()


@pytest.mark.parametrize("scenario", CELLS, ids=[sc.label for sc in CELLS])
def test_limiter_meets_targets_across_the_grid(scenario: sim.Scenario) -> None:
    result = sim.simulate(scenario)
    assert not result.misses(), f"{scenario.label}: {', '.join(result.misses())}"
    # against a steady capacity a failed probe steps back onto C: no sawtooth below it
    assert result.limit_min >= scenario.capacity, f"{scenario.label}: limit {result.limit_min}"


@pytest.mark.parametrize("retry_after", ["next_slot", "none", 1.0])
def test_limiter_meets_targets_with_jittered_service_times(retry_after: str | float) -> None:
    for capacity, latency in ((8, 0.05), (32, 0.2), (16, 1.0), (64, 2.0)):
        scenario = sim.Scenario(capacity, latency, retry_after, jitter=0.5, seed=7)
        result = sim.simulate(scenario)
        assert not result.misses(), f"{scenario.label}, jitter 0.5: {result.misses()}"


def test_simulated_endpoint_with_an_exact_limit_is_the_ideal() -> None:
    """The simulation itself: a fixed limit of exactly C never draws a 429 and gets the ideal
    C / L (the client sees L per request, network included); a fixed limit of 2 C floods it."""
    for capacity, latency in ((4, 0.05), (64, 1.0)):
        exact = AimdPolicy(initial_limit=capacity, max_limit=capacity)
        result = sim.simulate(sim.Scenario(capacity, latency, duration=20), exact)
        assert result.rejected_share == 0
        assert result.throughput == pytest.approx(1.0, abs=0.001)
        assert result.limit_min == result.limit_max == capacity
        n = 2 * capacity
        double = AimdPolicy(initial_limit=n, min_limit=n, max_limit=n)
        flooded = sim.simulate(sim.Scenario(capacity, latency, "none", duration=20), double)
        assert flooded.rejected_share > 0.1  # (a 429 without Retry-After backs off 0.5 s+)


def test_simulation_is_deterministic() -> None:
    scenario = sim.Scenario(16, 0.2, "next_slot", jitter=0.3, duration=10, seed=3)
    assert sim.simulate(scenario) == sim.simulate(scenario)


# Several processes on one endpoint (docs/architecture.md, "Endpoint limits across processes"):
# cells where independent limiters miss the 429 target and exchanging reports meets both.
PROCESS_CELLS = [
    sim.Scenario(16, 0.2, "next_slot", processes=2, duration=30),
    sim.Scenario(32, 0.2, "next_slot", processes=4, duration=30),
    sim.Scenario(64, 0.05, "next_slot", processes=8, duration=30),
    sim.Scenario(16, 1.0, 1.0, processes=4, jitter=0.5),  # a fixed 1 s Retry-After
]


@pytest.mark.parametrize("scenario", PROCESS_CELLS, ids=[sc.label for sc in PROCESS_CELLS])
def test_processes_sharing_reports_meet_targets_where_independent_ones_miss(
    scenario: sim.Scenario,
) -> None:
    alone = sim.simulate(scenario)
    assert alone.rejected_share > sim.MAX_429_SHARE, f"{scenario.label}: {alone.rejected_share}"
    shared = sim.simulate(dataclasses.replace(scenario, share_every=1.0))
    assert not shared.misses(), f"{scenario.label}, sharing: {', '.join(shared.misses())}"
    # the processes' summed limit stays within a probe per process of C
    assert shared.limit_max <= scenario.capacity + scenario.processes, shared.limit_max
