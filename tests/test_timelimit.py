"""A worker with an end starts only tasks whose ``expected_s`` fits before it: the pure rule
(``core/timelimit.py``), admission's fit, and ``explain``'s ``would_not_finish``."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from conveyor.core.admission import Offer, Shape
from conveyor.core.explain import GroupInfo, ready_reason
from conveyor.core.timelimit import (
    MARGIN_S,
    SLACK,
    estimate,
    fits_in,
    merge_runtimes,
    runtime_key,
    would_finish,
)
from conveyor.graphfile import graph_from_dict
from conveyor.store.memory import MemoryStore

T0 = 1_000_000.0


def test_would_finish_needs_the_expected_time_with_slack_and_margin() -> None:
    assert would_finish(T0, T0 + 30, 1)
    assert not would_finish(T0, T0 + 30, 3600)
    edge = 20 * SLACK + MARGIN_S
    assert would_finish(T0, T0 + edge, 20) and not would_finish(T0, T0 + edge - 0.01, 20)
    assert would_finish(T0, None, 3600)  # no end: anything goes
    assert would_finish(T0, T0 + 1, None)  # nothing declared: no guess
    assert not would_finish(T0, T0 - 5, 1)  # past the end


@given(st.floats(0.001, 1e6), st.floats(-1e6, 1e7), st.floats(0, 1e6))
def test_fits_in_is_monotone_in_time_left(expected: float, left: float, more: float) -> None:
    if fits_in(expected, left):
        assert fits_in(expected, left + more)


def test_offer_with_little_time_left_fits_only_short_tasks() -> None:
    long, short, plain = (Shape.of("default", {}, {}, expected_s=e) for e in (3600, 1, None))
    offer = Offer(4, time_left=30.0)
    assert (offer.fit_count(long), offer.fit_count(short), offer.fit_count(plain)) == (0, 4, 4)
    assert offer.take(short).time_left == 30.0
    assert Offer(4).fit_count(long) == 4  # a worker with no end


def test_explain_says_would_not_finish_with_numbers() -> None:
    shape = Shape.of("default", {}, {}, expected_s=3600)
    why = ready_reason("long", shape, {"default": GroupInfo()}, [Offer(2, time_left=30.0)],
                       has_ready=lambda g: False, behind=lambda: None)  # type: ignore[arg-type,return-value]  # fmt: skip
    assert why.code == "would_not_finish"
    assert why.details == {"expected_s": 3600.0, "most_time_left_s": 30.0}


def test_memory_store_claims_past_a_task_that_would_not_finish() -> None:
    store = MemoryStore()
    store.open_graph(graph_from_dict({"name": "g", "tasks": [
        {"id": "long", "cmd": "true", "expected_s": 3600},
        {"id": "short", "cmd": "true", "expected_s": 1},
    ]}), T0)  # fmt: skip
    assert store.admission  # expected_s switches admission on
    got = store.claim("w", 2, T0, 10, offer=Offer(2, time_left=30.0))
    assert [c.id for c in got] == ["short"]
    assert store.explain("long", T0, [Offer(1, time_left=30.0)]).code == "would_not_finish"
    assert [c.id for c in store.claim("w", 1, T0, 10, offer=Offer(1, time_left=7200.0))] == ["long"]


def test_runtime_key_names_a_function_or_a_commands_program_or_script() -> None:
    assert runtime_key("jobs:simulate", None) == "fn:jobs:simulate"
    assert runtime_key(None, "sleep 3; echo done") == "cmd:sleep"
    assert runtime_key(None, "python sim.py --seed 4") == "cmd:python sim.py"
    assert (
        runtime_key(None, "/usr/bin/python3 -u -m sim.run --x 1")
        == "cmd:/usr/bin/python3 -u -m sim.run"
    )
    assert runtime_key(None, ["bash", "run.sh", "7"]) == "cmd:bash run.sh"
    assert runtime_key(None, None) is None


def test_estimate_is_the_mean_of_every_workers_runs() -> None:
    merged = merge_runtimes([{"k": [2, 10.0, 6.0]}, {"k": [2, 2.0, 1.5], "j": [1, 4.0, 4.0]}])
    assert merged == {"k": [4.0, 12.0, 6.0], "j": [1.0, 4.0, 4.0]}
    assert estimate(merged["k"]) == 3.0
    assert estimate(None) is None and estimate([0, 0.0, 0.0]) is None
