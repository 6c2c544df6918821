"""Preemption across durable workers: real ``conveyor worker`` processes on SQLite and on
PostgreSQL. Every slot of two one-slot workers is taken (an interactive task on one, a batch
task on the other) when the interactive task submits an interactive child. The batch task runs
until the test writes ``go``, which it does only once the child started: without preemption the
child could not start before then. One global decision asks the batch task's worker to give it
up; it is cancelled, handed back (``task_preempted``), the child takes the slot, and the batch
task runs again later and finishes once, its retries (0) untouched."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor.store.urls import open_store
from helpers import store_history, wait_until

BOUND = 60.0  # a bound on waits, not a check

JOBS = """
import asyncio
import time
from pathlib import Path

import conveyor


def spawner():
    while not list(Path(".").glob("started-batch-*")):  # the batch task holds the other slot
        time.sleep(0.02)
    conveyor.current().submit("jobs:urgent", id="urgent")
    while not Path("started-urgent").exists():  # keeps its own slot meanwhile
        time.sleep(0.02)
    return "spawned"


def urgent():
    Path("started-urgent").write_text("1")
    return "urgent"


async def batch():
    n = len(list(Path(".").glob("started-batch-*")))
    Path(f"started-batch-{n}").write_text("1")
    while not Path("go").exists():
        await asyncio.sleep(0.02)
    return "batch"


async def batch_until_urgent():
    n = len(list(Path(".").glob("started-batch-*")))
    Path(f"started-batch-{n}").write_text("1")
    while not Path("started-urgent").exists():
        await asyncio.sleep(0.02)
    return "batch"


def batch_thread():
    n = len(list(Path(".").glob("started-batch-*")))
    Path(f"started-batch-{n}").write_text("1")
    while not Path("go").exists():
        if conveyor.current().preempted:
            raise RuntimeError("preempted: giving the slot up")
        time.sleep(0.02)
    return "batch"
"""


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/run.db"
    return str(request.getfixturevalue("pg_url"))


def _worker(cwd: Path, db: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "conveyor.cli", "worker", "--db", db, "--workers", "1"]
    return subprocess.Popen(argv, cwd=cwd, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("fn", ["batch", "batch_thread"], ids=["async", "thread"])
def test_workers_preempt_a_batch_task_for_an_interactive_one(
    tmp_path: Path, db: str, fn: str
) -> None:
    """An async victim is cancelled; a thread victim sees ``current().preempted`` and raises."""
    (tmp_path / "jobs.py").write_text(JOBS)
    tasks = [
        {"id": "spawner", "fn": "jobs:spawner", "band": "interactive"},
        {"id": "batch", "fn": f"jobs:{fn}", "retries": 0},
    ]
    (tmp_path / "graph.json").write_text(json.dumps({"name": "pre", "tasks": tasks}))
    cli = [sys.executable, "-m", "conveyor.cli"]
    out = subprocess.run([*cli, "submit", "graph.json", "--db", db], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    workers = [_worker(tmp_path, db), _worker(tmp_path, db)]
    try:
        wait_until((tmp_path / "started-urgent").exists, BOUND, "the interactive child to start")
        assert not (tmp_path / "go").exists()  # the batch task could not have ended yet
        (tmp_path / "go").write_text("1")
        ends = []
        for w in workers:
            _, err = w.communicate(timeout=BOUND)
            ends.append((w.returncode, err))
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.communicate()
    assert [code for code, _ in ends] == [0, 0], ends
    assert any("1 preempted" in err for _, err in ends), ends
    hist = store_history(db, "batch")
    kinds = [e["event"] for e in hist]
    assert kinds.count("task_preempted") == 1 and kinds.count("task_finished") == 1, kinds
    assert "task_failed" not in kinds and "task_retrying" not in kinds
    pre = next(e for e in hist if e["event"] == "task_preempted")
    assert pre["by"] == "urgent" and pre["attempt"] == 1
    finished = next(e for e in hist if e["event"] == "task_finished")
    assert finished["attempt"] == 1, "the preempted attempt was given back"
    assert len(list(tmp_path.glob("started-batch-*"))) == 2, "cancelled once, ran again once"
    store = open_store(db)
    try:
        counts = store.counts()
        assert counts["done"] == 3 and counts["failed"] == 0, counts
        assert store.result("batch").value == "batch"
    finally:
        store.close()


@pytest.mark.parametrize("preempt", [True, False], ids=["default", "no-preempt"])
def test_conveyor_run_preempts_unless_told_not_to(tmp_path: Path, preempt: bool) -> None:
    """``conveyor run`` in one process: the batch task runs until the interactive child starts,
    so the run ends only because the batch task was preempted; ``--no-preempt`` is wired (a
    graph of one band: nothing to preempt, nothing preempted)."""
    (tmp_path / "jobs.py").write_text(JOBS)
    tasks = [{"id": "batch", "fn": "jobs:batch_until_urgent", "retries": 0}]
    if preempt:
        tasks.insert(0, {"id": "spawner", "fn": "jobs:spawner", "band": "interactive"})
    (tmp_path / "graph.json").write_text(json.dumps({"name": "pre", "tasks": tasks}))
    if not preempt:
        (tmp_path / "started-urgent").write_text("1")
    argv = [sys.executable, "-m", "conveyor.cli", "run", "graph.json", "--workers", "2", "-q",
            "--events", "ev.jsonl", *([] if preempt else ["--no-preempt"])]  # fmt: skip
    out = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=BOUND)
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in (tmp_path / "ev.jsonl").read_text().splitlines()]
    preempted = [e["task"] for e in events if e["event"] == "task_preempted"]
    assert preempted == (["batch"] if preempt else [])
