"""Heartbeats do not depend on the claim loop (issue 16, point 4): a worker that runs an inline
task longer than its lease, or drains no-op tasks for longer than a lease, stays alive in
``status`` and keeps its leases. Real `conveyor worker` processes on SQLite (and PostgreSQL)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conveyor.store.urls import open_store
from helpers import wait_until

HOLD = """
import os, time

def hold():
    deadline = time.monotonic() + 120
    while not os.path.exists("release"):
        if time.monotonic() > deadline:
            raise TimeoutError("never released")
        time.sleep(0.01)
    return "held"
"""


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def durable_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store URL per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/run.db"
    return str(request.getfixturevalue("pg_url"))


WORKER = [sys.executable, "-m", "conveyor.cli", "worker", "-q", "--workers", "1"]


def cli(*args: str, cwd: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "conveyor.cli", *args], cwd=cwd,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr


def status(db: str) -> dict[str, Any]:
    store = open_store(db)
    try:
        return store.status(time.time())
    finally:
        store.close()


def workers_seen(db: str) -> tuple[dict[str, float], bool]:
    """``{worker: last_seen}`` of the workers the store thinks alive, and whether any task is
    unfinished: two index reads (``status`` scans every task)."""
    store = open_store(db)
    try:
        seen = {name: float(last) for name, _h, _p, last, _l, _i in store.db.rows("workers_alive")}
        return seen, store.has_unfinished()
    finally:
        store.close()


def last_seen(db: str, worker: str) -> float | None:
    return workers_seen(db)[0].get(worker)


def events(db: str) -> list[dict[str, Any]]:
    store = open_store(db)
    try:
        return list(store.iter_events())
    finally:
        store.close()


def test_worker_running_an_inline_task_longer_than_its_lease_keeps_it(
    tmp_path: Path, durable_url: str
) -> None:
    (tmp_path / "jobs.py").write_text(HOLD)
    graph = {"name": "hold", "tasks": [{"id": "hold", "fn": "jobs:hold", "executor": "inline"}]}
    (tmp_path / "g.json").write_text(json.dumps(graph))
    db = durable_url
    cli("submit", "g.json", "--db", db, cwd=tmp_path)
    # Two workers with a 1 s lease: the one not holding the task reaps expired leases.
    procs = [subprocess.Popen([*WORKER, "--db", db, "--lease", "1"], cwd=tmp_path,
                              stderr=subprocess.DEVNULL) for _ in range(2)]  # fmt: skip
    try:
        wait_until(lambda: status(db)["counts"]["running"] == 1, what="the task to start")
        started = [e for e in events(db) if e["event"] == "task_started"]
        holder = started[0]["worker"]
        first = last_seen(db, holder)
        assert first is not None
        # Three leases' worth of heartbeats while the engine thread is inside the task.
        wait_until(lambda: (last_seen(db, holder) or 0.0) >= first + 3.0, timeout=60,
                   what="heartbeats while the inline task runs")  # fmt: skip
        (tmp_path / "release").touch()
        codes = [p.wait(timeout=60) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert codes == [0, 0]
    kinds = [e["event"] for e in events(db)]
    assert "lease_expired" not in kinds and "worker_lost" not in kinds
    assert kinds.count("task_started") == 1


def test_worker_draining_noop_tasks_stays_alive(tmp_path: Path) -> None:
    n = 30_000
    graph = {"name": "noops", "tasks": [{"id": f"t{i}"} for i in range(n)]}
    (tmp_path / "g.json").write_text(json.dumps(graph))
    db = f"sqlite:///{tmp_path}/run.db"
    cli("submit", "g.json", "--db", db, cwd=tmp_path)
    proc = subprocess.Popen([*WORKER, "--db", db, "--lease", "0.3"], cwd=tmp_path,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        beats: list[float] = []

        def joined() -> bool:
            beats.extend(workers_seen(db)[0].values())
            return bool(beats)

        wait_until(joined, what="the worker to join")
        first = beats[0]

        def beat_seen_mid_drain() -> bool:
            seen, unfinished = workers_seen(db)
            if not unfinished:
                raise AssertionError(
                    f"drained {n} no-ops with no heartbeat seen (last seen {max(beats)})"
                )
            beats.extend(seen.values())
            return max(beats) >= first + 0.25  # beats every 0.1 s

        wait_until(beat_seen_mid_drain, timeout=120, what="a heartbeat mid-drain")
        assert status(db)["workers_alive"] == 1
        assert proc.wait(timeout=120) == 0
    finally:
        proc.kill()
        proc.wait()
    assert "lease_expired" not in {e["event"] for e in events(db)}
