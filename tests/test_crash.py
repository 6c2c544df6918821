"""Real worker processes killed with SIGKILL at random moments (and the submitter): every task
is completed exactly once in the store, none is lost, and the audit trail stays consistent."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conveyor.store.urls import open_store

N = 2000
WIDTH = 50
WORKERS = 6
KILLS = 8
JOBS = "def work(i):\n    return i * 2\n"


def write_graph(path: Path, rng: random.Random) -> None:
    tasks = []
    for i in range(N):
        layer = i // WIDTH
        deps = (
            []
            if layer == 0
            else [f"t{j}" for j in rng.sample(range((layer - 1) * WIDTH, layer * WIDTH), 2)]
        )
        tasks.append({"id": f"t{i}", "fn": "crashjobs:work", "args": [i], "deps": deps})
    path.write_text(json.dumps({"name": "crash", "tasks": tasks}))


def spawn(args: list[str], cwd: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "conveyor.cli", *args], cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)  # reaped: no zombie that looks alive


def run_crash(url: str, tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    (tmp_path / "crashjobs.py").write_text(JOBS)
    write_graph(tmp_path / "graph.json", rng)

    # The submitter dies at a random moment: the store holds all of the graph or none of it.
    sub = spawn(["submit", "graph.json", "--db", url], tmp_path)
    try:
        sub.wait(timeout=rng.uniform(0.3, 1.5))
    except subprocess.TimeoutExpired:
        pass
    kill(sub)
    store = open_store(url)
    try:
        assert store.graph_name() in (None, "crash")
        assert sum(store.counts().values()) in (0, N)
    finally:
        store.close()
    assert spawn(["submit", "graph.json", "--db", url], tmp_path).wait(timeout=60) == 0

    args = ["worker", "--db", url, "--lease", "1", "--quiet", "--workers", "2"]
    procs = [spawn(args, tmp_path) for _ in range(WORKERS)]
    deadline = time.monotonic() + 60
    for _ in range(KILLS):
        victim = rng.randrange(len(procs))
        try:
            procs[victim].wait(timeout=rng.uniform(0.05, 0.6))
        except subprocess.TimeoutExpired:
            pass
        kill(procs[victim])
        procs[victim] = spawn(args, tmp_path)
        assert time.monotonic() < deadline
    for p in procs:
        p.wait(timeout=max(1.0, deadline - time.monotonic()))

    store = open_store(url)
    try:
        counts = store.counts()
        assert counts["done"] == N, counts
        assert store.result("t1999").value == 1999 * 2
        trails: dict[str, list[dict[str, Any]]] = {}
        for ev in store.iter_events():
            if "task" in ev:
                trails.setdefault(ev["task"], []).append(ev)
    finally:
        store.close()
    assert len(trails) == N
    for task, trail in trails.items():
        events = [e["event"] for e in trail]
        assert events.count("task_finished") == 1, (task, events)
        assert events[-1] == "task_finished", (task, events)
        # Every start ends in exactly one way: finished, lease expired, or given back.
        ends = sum(e["event"] == "lease_expired" or e.get("reason") == "released" for e in trail)
        assert events.count("task_started") == ends + 1, (task, events)


@pytest.mark.slow
def test_crash_sqlite_workers_killed_at_random_lose_nothing(tmp_path: Path) -> None:
    run_crash(f"sqlite:///{tmp_path}/run.db?lost_budget=1000", tmp_path, seed=1)


@pytest.mark.slow
@pytest.mark.postgres
def test_crash_postgres_workers_killed_at_random_lose_nothing(pg_url: str, tmp_path: Path) -> None:
    run_crash(pg_url + "&lost_budget=1000", tmp_path, seed=2)
