"""``--idle-exit`` means nothing left that this worker could do or wait for (issue 16, point
10): a worker with nothing claimable stays while a task runs anywhere, because that task's end
may make work ready for it. Real `conveyor worker` processes on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conveyor.model import GraphSpec, TaskSpec
from conveyor.runtime.idle import IdleBackoff
from conveyor.store.memory import MemoryStore
from helpers import wait_until
from test_heartbeats import HOLD, cli, durable_url, events, workers_seen

__all__ = ["durable_url"]  # the fixture, shared with test_heartbeats

WORKER = [sys.executable, "-m", "conveyor.cli", "worker", "-q", "--workers", "1", "--lease", "1"]


def test_worker_idle_exit_waits_while_a_parent_runs_elsewhere(
    tmp_path: Path, durable_url: str
) -> None:
    (tmp_path / "jobs.py").write_text(HOLD)
    hold = {"id": "hold", "fn": "jobs:hold"}
    graph = {"name": "idle", "tasks": [hold, {"id": "child", "cmd": "echo c", "deps": ["hold"]}]}
    (tmp_path / "g.json").write_text(json.dumps(graph))
    db = durable_url
    cli("submit", "g.json", "--db", db, cwd=tmp_path)
    # A runs `hold` and leaves (--max-tasks 1); B, with nothing claimable, must wait for it.
    a = subprocess.Popen([*WORKER, "--db", db, "--max-tasks", "1"], cwd=tmp_path)
    b: subprocess.Popen[bytes] | None = None
    try:
        wait_until(lambda: any(e["event"] == "task_started" for e in events(db)),
                   what="hold to start")  # fmt: skip
        b = subprocess.Popen([*WORKER, "--db", db, "--idle-exit", "0.5"], cwd=tmp_path)
        seen: list[float] = []

        def b_outlived_its_idle_exit() -> bool:
            assert b is not None
            if b.poll() is not None:
                raise AssertionError(f"B left with work to wait for (exit {b.returncode})")
            alive = workers_seen(db)[0]
            mine = [t for w, t in alive.items() if w.endswith(f":{b.pid}")]
            seen.extend(mine)
            return len(seen) > 1 and max(seen) - min(seen) >= 1.5  # three idle_exits

        wait_until(b_outlived_its_idle_exit, timeout=60, what="B to wait past its idle-exit")
        (tmp_path / "release").touch()
        assert a.wait(timeout=60) == 0
        assert b.wait(timeout=60) == 0
    finally:
        for p in (a, b):
            if p is not None:
                p.kill()
                p.wait()
    started = {e["task"]: e["worker"] for e in events(db) if e["event"] == "task_started"}
    assert started["child"].endswith(f":{b.pid}")


def test_idle_backoff_is_not_idle_while_work_is_in_flight() -> None:
    idle = IdleBackoff(idle_exit=1.0, first=0.1, cap=0.5)
    assert idle.next_wait(100.0, None) == 0.1
    assert idle.next_wait(102.0, None, running=True) is not None  # a task runs somewhere
    assert idle.next_wait(102.5, None) is not None  # the idle spell starts over here
    assert idle.next_wait(103.4, None) is not None
    assert idle.next_wait(103.5, None) is None


def test_memory_store_has_running_follows_claims() -> None:
    store = MemoryStore()
    store.open_graph(GraphSpec("g", [TaskSpec("a", cmd="true")]), 0.0)
    assert not store.has_running()
    claim = store.claim("w", 1, 0.0, 30.0)[0]
    assert store.has_running()
    store.complete(claim, None, 1.0)
    assert not store.has_running()
