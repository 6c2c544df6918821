"""How many tasks a SQLite worker claims per transaction (issue 16, 9b: several workers on one
SQLite store). Each claim transaction has a fixed cost that every other worker waits through
(the write lock's hand-off, SQLite re-reading what another process changed), so trivial tasks
go many to a transaction; slower ones keep the old batch; ``?batch=N`` caps it. Times are given
explicitly (``now``): the sizes follow from them, not from this machine's speed."""

from __future__ import annotations

from pathlib import Path

from conveyor.clock import Clock
from conveyor.graphfile import graph_from_dict
from conveyor.store.sqlclaim import FAST_AFTER
from conveyor.store.sqlite import SqliteStore
from conveyor.store.sqlsteps import FAST_BATCH, MAX_BATCH
from conveyor.testing import FakeClock

T0 = 1_000_000.0
N = 1200


def store_with_tasks(path: Path, options: str = "", clock: Clock | None = None) -> SqliteStore:
    store = SqliteStore.from_url(f"sqlite:///{path}/run.db{options}")
    store.clock = clock or FakeClock(wall_offset=T0)  # still: the times below are all there is
    tasks = [{"id": f"t{i}", "cmd": "true"} for i in range(N)]
    store.open_graph(graph_from_dict({"name": "g", "tasks": tasks}), T0)
    return store


def ahead_after_each(store: SqliteStore, took: list[float]) -> list[int]:
    """Run every task through ``claim_one``/``complete`` (the i-th task taking ``took[i]`` s,
    the last time repeating); the tasks claimed ahead after each completion (a completion's
    transaction tops the batch up: the batch's size, until the tasks run out)."""
    now, ahead = T0, []
    while (claim := store.claim_one("w", now, 30.0)) is not None:
        now += took[min(len(ahead), len(took) - 1)]
        assert store.complete(claim, None, now)
        ahead.append(store.claims_ahead())
    assert len(ahead) == N
    return ahead


def test_trivial_tasks_go_many_to_a_transaction(tmp_path: Path) -> None:
    store = store_with_tasks(tmp_path)
    try:
        ahead = ahead_after_each(store, [20e-6])
    finally:
        store.close()
    assert ahead[: FAST_AFTER - 1] == [0] * (FAST_AFTER - 1)  # unknown tasks: one at a time
    assert max(ahead) == FAST_BATCH > MAX_BATCH
    assert ahead[N // 2] == FAST_BATCH


def test_one_slow_task_among_trivial_ones_does_not_shrink_the_batch(tmp_path: Path) -> None:
    # (a task that waited for its slot's turn or for a transaction: the batch that hides such
    # waits must not shrink because of one)
    slow = 300
    store = store_with_tasks(tmp_path)
    try:
        ahead = ahead_after_each(store, [20e-6] * slow + [0.02] + [20e-6] * N)
    finally:
        store.close()
    assert ahead[slow - 1] == FAST_BATCH
    assert ahead[slow] >= FAST_BATCH - 1  # (its own completion may leave out one top-up)
    assert ahead[slow + 1 : slow + 100] == [FAST_BATCH] * 99


def test_tasks_of_a_few_milliseconds_keep_the_old_batch(tmp_path: Path) -> None:
    store = store_with_tasks(tmp_path)
    try:
        ahead = ahead_after_each(store, [0.004])
    finally:
        store.close()
    assert max(ahead) == MAX_BATCH


def test_the_url_caps_the_batch(tmp_path: Path) -> None:
    store = store_with_tasks(tmp_path, "?batch=8")
    try:
        ahead = ahead_after_each(store, [20e-6])
    finally:
        store.close()
    assert max(ahead) == 8


class SteppingClock(FakeClock):
    """Every read of it is ``step`` seconds after the last: a transaction that reads it takes
    time (as one that waits for another worker's lock does)."""

    def __init__(self, step: float) -> None:
        super().__init__(wall_offset=T0)
        self.step = step

    def wall(self) -> float:
        self.advance(self.step)
        return super().wall()


def test_the_wait_for_a_claim_is_not_the_task_s_time(tmp_path: Path) -> None:
    # claimed at `now`, the claim's transaction reads the clock (2 ms a read) before the task
    # runs: timed from `now`, the tasks would take over FAST_TASK_S (5 ms) and never be batched
    clock = SteppingClock(0.002)
    store = store_with_tasks(tmp_path, clock=clock)
    try:
        ahead = []
        while (claim := store.claim_one("w", clock.wall(), 30.0)) is not None:
            assert store.complete(claim, None, clock.wall())
            ahead.append(store.claims_ahead())
    finally:
        store.close()
    assert len(ahead) == N
    assert max(ahead) >= MAX_BATCH  # batched
