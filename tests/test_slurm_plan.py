"""The pure SLURM planning (``conveyor.core.slurmplan``): splitting workers into job arrays
under ``MaxArraySize``, choosing what ``scale`` cancels, reading ``--time``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conveyor.core.slurmplan import (
    ArrayPart,
    Element,
    next_offset,
    parse_time_limit,
    plan_arrays,
    surplus,
)


@given(
    workers=st.integers(1, 5000),
    max_size=st.integers(1, 1200),
    first=st.integers(0, 3000),
    max_parallel=st.none() | st.integers(1, 50),
)
def test_plan_arrays_any_size_fits_the_limit_and_numbers_every_worker_once(
    workers: int, max_size: int, first: int, max_parallel: int | None
) -> None:
    parts = plan_arrays(workers, max_size, first=first, max_parallel=max_parallel)
    # every index SLURM sees is below MaxArraySize: the limit caps the highest index
    assert all(p.count - 1 < max_size for p in parts)
    assert all(p.spec.startswith(f"0-{p.count - 1}") for p in parts)
    # the workers are numbered first..first+workers-1, each exactly once
    numbers = [p.offset + i for p in parts for i in range(p.count)]
    assert numbers == list(range(first, first + workers))
    assert len(parts) == -(-workers // max_size)  # the fewest arrays (fewest submissions)
    assert next_offset(parts) == first + workers
    if max_parallel is None:
        assert all(p.throttle is None for p in parts)
    else:
        at_once = sum(p.count if p.throttle is None else p.throttle for p in parts)
        assert at_once <= max(max_parallel, len(parts))
        assert all(p.throttle is None or 1 <= p.throttle < p.count for p in parts)


def test_plan_arrays_at_the_default_limit_splits_1002_workers_in_two() -> None:
    assert plan_arrays(1001, 1001) == (ArrayPart(0, 1001),)
    assert plan_arrays(1002, 1001) == (ArrayPart(0, 1001), ArrayPart(1001, 1))
    assert [p.spec for p in plan_arrays(2500, 1001, max_parallel=8)] == [
        "0-1000%3", "0-1000%3", "0-497%2",
    ]  # fmt: skip


def test_plan_arrays_bad_numbers_are_refused() -> None:
    with pytest.raises(ValueError):
        plan_arrays(0, 10)
    with pytest.raises(ValueError):
        plan_arrays(3, 10, max_parallel=0)


def _elements(draw_states: list[tuple[str, bool]]) -> list[Element]:
    return [Element("9", i, 100 + i, state, busy) for i, (state, busy) in enumerate(draw_states)]


@given(
    states=st.lists(
        st.tuples(st.sampled_from(["PENDING", "RUNNING", "COMPLETING"]), st.booleans()),
        max_size=30,
    ),
    target=st.integers(0, 40),
)
def test_surplus_cancels_pending_then_idle_then_busy_highest_first(
    states: list[tuple[str, bool]], target: int
) -> None:
    elements = [
        Element(e.array_job, e.task, e.index, e.state, e.busy and e.state == "RUNNING")
        for e in _elements(states)
    ]
    active = [e for e in elements if e.state != "COMPLETING"]
    out = surplus(elements, target)
    assert len(out) == max(0, len(active) - target)
    assert len(set(out)) == len(out) and all(e in active for e in out)
    kept = [e for e in active if e not in out]

    def rank(e: Element) -> int:
        return 0 if e.state == "PENDING" else 1 if not e.busy else 2

    # nothing kept is a better candidate than anything cancelled
    for c in out:
        for k in kept:
            assert (rank(c), -c.index) <= (rank(k), -k.index)


def test_surplus_example() -> None:
    els = [
        Element("5", 0, 0, "RUNNING", busy=True),
        Element("5", 1, 1, "RUNNING", busy=False),
        Element("5", 2, 2, "PENDING"),
        Element("6", 0, 3, "RUNNING", busy=True),
    ]
    assert [e.job_id for e in surplus(els, 2)] == ["5_2", "5_1"]
    assert [e.job_id for e in surplus(els, 0)] == ["5_2", "5_1", "6_0", "5_0"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5", 300), ("5:30", 330), ("2:00:00", 7200), ("1-0", 86400), ("1-2:30", 95400),
        ("1-2:30:15", 95415), ("UNLIMITED", None), ("abc", None), ("1:2:3:4", None),
    ],
)  # fmt: skip
def test_parse_time_limit_reads_slurm_formats(text: str, seconds: float | None) -> None:
    assert parse_time_limit(text) == seconds
