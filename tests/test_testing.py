"""``conveyor.testing``: the fake clock and the event log that conveyor's tests (and users') use."""

from __future__ import annotations

import pytest

import conveyor
from conveyor.clock import SYSTEM_CLOCK, Clock
from conveyor.testing import EventLog, FakeClock


def test_fake_clock_runs_due_timers_in_time_order_and_skips_cancelled() -> None:
    clock = FakeClock(start=5.0, wall_offset=1000.0)
    fired: list[str] = []
    clock.call_at(8.0, lambda: fired.append("b"))
    clock.call_at(7.0, lambda: fired.append("a"))
    clock.call_at(9.0, lambda: fired.append("cancelled")).cancel()
    clock.call_at(20.0, lambda: fired.append("later"))
    assert (clock.now(), clock.wall()) == (5.0, 1005.0)
    clock.advance(4.0)
    assert fired == ["a", "b"]
    assert clock.pending_timers == 1
    clock.advance(11.0)
    assert fired == ["a", "b", "later"] and clock.pending_timers == 0
    with pytest.raises(ValueError):
        clock.advance(-1.0)


def test_fake_clock_timer_armed_by_a_timer_fires_in_the_same_advance() -> None:
    clock = FakeClock()
    fired: list[float] = []

    def first() -> None:
        fired.append(clock.now())
        clock.call_at(2.0, lambda: fired.append(clock.now()))

    clock.call_at(1.0, first)
    clock.advance(3.0)
    assert fired == [3.0, 3.0]


def test_clocks_satisfy_the_one_clock_protocol() -> None:
    clocks: list[Clock] = [FakeClock(), SYSTEM_CLOCK]
    for clock in clocks:
        assert clock.now() <= clock.now()
        assert clock.wall() > 1_600_000_000


def test_event_log_keeps_copies_and_answers_by_name_and_task() -> None:
    log = EventLog()
    g = conveyor.Graph("log")
    a = g.add(None, id="a")
    g.add(None, id="b", deps=[a])
    conveyor.run(g, workers=1, emit=log)
    assert log.tasks("task_started") == ["a", "b"]
    assert log.names("b")[-1] == "task_finished"
    event = {"event": "task_started", "task": "c"}
    log(event)
    event["task"] = "changed after emit"  # an emitter may reuse its dict: the log kept a copy
    assert log.tasks("task_started") == ["a", "b", "c"]
