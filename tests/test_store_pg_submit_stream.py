"""PostgreSQL submissions stream their rows into COPY as they are made (``Tx.stream``): the
tasks are on the server before the specs are made. A row that cannot be made half-way (here a
task whose arguments cannot be pickled) must fail the whole submission with its own error --
no task, spec, edge or audit row of it stays -- and leave the store usable."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest

from conveyor.model import GraphSpec, TaskSpec
from conveyor.store.urls import open_store

T0 = 1_000_000.0
N = 100  # above the COPY threshold of every table (postgres._COPY_MIN)


def _chain(bad: int | None) -> GraphSpec:
    tasks = []
    for i in range(N):
        args: tuple[Any, ...] = (threading.Lock(),) if i == bad else (i,)
        deps = (f"t{i - 1:03d}",) if i else ()
        tasks.append(TaskSpec(f"t{i:03d}", fn="json:dumps", args=args, deps=deps))
    return GraphSpec("g", tasks)


def _rows(url: str) -> dict[str, int]:
    with psycopg.connect(url) as c:
        return {
            t: int(c.execute(f"SELECT count(*) FROM {t}").fetchone()[0])  # type: ignore[index]
            for t in ("tasks", "specs", "edges", "audit", "fingerprints")
        }


def test_pg_submission_failing_mid_stream_commits_nothing(pg_url: str) -> None:
    store = open_store(pg_url)
    try:
        with pytest.raises(TypeError, match="pickle"):
            store.open_graph(_chain(bad=60), T0)
        assert _rows(pg_url) == dict.fromkeys(("tasks", "specs", "edges", "audit",
                                               "fingerprints"), 0)  # fmt: skip
        assert store.graph_name() is None
        # The same handle takes the graph once it can be stored, and every row is there.
        opened = store.open_graph(_chain(bad=None), T0)
        assert (opened.added, opened.unfinished) == (N, N)
        rows = _rows(pg_url)
        assert (rows["tasks"], rows["specs"], rows["edges"]) == (N, N, N - 1)
        claim = store.claim_one("w", T0, 30.0)
        assert claim is not None and claim.id == "t000" and claim.spec.args == (0,)
    finally:
        store.close()
