"""Group commit on the durable stores: a worker records what finished on its slots together,
with the claims for the slots they free, in one transaction (issue 16, point 9b)."""

from __future__ import annotations

from pathlib import Path

import pytest

import conveyor
from conveyor.store.sqlstore import SqlStore
from conveyor.store.urls import open_store
from conveyor.testing import FakeClock
from helpers import noop

TASKS = 400


def trivial_graph() -> conveyor.Graph:
    g = conveyor.Graph("trivial")
    for i in range(TASKS):
        g.add(noop, i, id=f"t{i}")
    return g


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_worker_records_many_completions_per_transaction(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    sqlite = f"sqlite:///{tmp_path}/run.db"
    url = sqlite if backend == "sqlite" else str(request.getfixturevalue("pg_url"))
    store = open_store(url)
    try:
        assert isinstance(store, SqlStore)
        # a fake clock: tasks take no time, so the worker claims ahead and parks completions
        # until the tasks claimed ahead run out (no timer cuts a batch short)
        result = conveyor.run(trivial_graph(), store=store, workers=8, clock=FakeClock())
        assert result.ok and store.counts()["done"] == TASKS
        commits = store.db.commits
    finally:
        store.close()
    # one transaction per task to complete it (and one more to claim it, before group commit)
    # would be >= TASKS; a batch of ~32 per transaction is ~TASKS / 32
    assert commits <= TASKS // 8, f"{commits} transactions for {TASKS} tasks"
