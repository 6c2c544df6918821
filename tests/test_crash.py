"""Real worker processes killed with SIGKILL (and the submitter): every task is completed
exactly once in the store, none is lost, and the audit trail stays consistent.

A worker is killed only while it holds a lease: it is stopped (SIGSTOP), the store is asked
whether it runs a task, and it is killed if so and let go on otherwise. So every kill leaves a
lease that only the reaper can give back, and the run finishes only if reaping works."""

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

from conveyor.store.base import Store
from conveyor.store.urls import open_store
from conveyor.workerid import HOST

N = 600
WIDTH = 30
WORKERS = 3
KILLS = 5
#: Each task sleeps a little, so a worker holds its leases for a while and there is work left
#: to kill workers in (the sleep is the task's work, not a wait for anything).
JOBS = "import time\n\ndef work(i):\n    time.sleep(0.001)\n    return i * 2\n"
TIMEOUT_S = 90.0  # below the per-test timeout, so a stuck run fails with its counts


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


def worker_name(proc: subprocess.Popen[bytes]) -> str:
    return f"{HOST}:{proc.pid}"


def stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped (or gone): after this it commits nothing more."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in ("T", "t", "Z", "X")


class Leases:
    """Who holds which task, read from the audit trail: a task whose latest event is
    ``task_started`` by ``w`` is leased to ``w``; ``history`` confirms it with a fresh read."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.after = 0
        self.last: dict[str, dict[str, Any]] = {}

    def held_by(self, worker: str) -> list[str]:
        while got := self.store.events_after(self.after):
            self.after = got[-1][0]
            for _, ev in got:
                if "task" in ev:
                    self.last[ev["task"]] = ev
        candidates = [
            t for t, ev in self.last.items()
            if ev["event"] == "task_started" and ev.get("worker") == worker
        ]  # fmt: skip
        out = []
        for task in candidates:
            trail = self.store.history(task)
            if trail and trail[-1]["event"] == "task_started" and trail[-1]["worker"] == worker:
                out.append(task)
        return out


def stop_a_lease_holder(
    procs: list[subprocess.Popen[bytes]], leases: Leases, rng: random.Random, deadline: float
) -> int:
    """Stop worker processes in random order until one holds a lease; return its index, left
    stopped. Polls with a deadline: workers start, claim and finish at their own pace."""
    while True:
        for i in rng.sample(range(len(procs)), len(procs)):
            proc = procs[i]
            assert proc.poll() is None, "a worker left before every kill was made"
            os.kill(proc.pid, signal.SIGSTOP)
            while not stopped(proc.pid):
                assert time.monotonic() < deadline, "a worker did not stop"
                time.sleep(0.001)
            if leases.held_by(worker_name(proc)):
                return i
            os.kill(proc.pid, signal.SIGCONT)
        assert time.monotonic() < deadline, "no worker held a lease to kill it in"
        time.sleep(0.01)  # a poll interval, not a wait for an outcome


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
    victims: set[str] = set()
    store = open_store(url)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        leases = Leases(store)
        for _ in range(KILLS):
            i = stop_a_lease_holder(procs, leases, rng, deadline)
            victims.add(worker_name(procs[i]))
            kill(procs[i])
            procs[i] = spawn(args, tmp_path)
        for p in procs:
            try:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pytest.fail(f"the workers did not finish the graph: {store.counts()}")
        counts = store.counts()
        assert counts["done"] == N, counts
        assert store.result(f"t{N - 1}").value == (N - 1) * 2
        events = list(store.iter_events())
    finally:
        for p in procs:
            kill(p)
        store.close()

    # The kills landed: killed workers were found gone and the leases they held were reaped.
    lost = {e["worker"] for e in events if e["event"] == "worker_lost"}
    expired = {e["worker"] for e in events if e["event"] == "lease_expired"}
    assert lost & victims, (lost, victims)
    assert expired & victims, (expired, victims)

    trails: dict[str, list[dict[str, Any]]] = {}
    for ev in events:
        if "task" in ev:
            trails.setdefault(ev["task"], []).append(ev)
    assert len(trails) == N
    for task, trail in trails.items():
        kinds = [e["event"] for e in trail]
        assert kinds.count("task_finished") == 1, (task, kinds)
        assert kinds[-1] == "task_finished", (task, kinds)
        # Every start ends in exactly one way: finished, lease expired, or given back.
        ends = sum(e["event"] == "lease_expired" or e.get("reason") == "released" for e in trail)
        assert kinds.count("task_started") == ends + 1, (task, kinds)


@pytest.mark.slow
def test_crash_sqlite_lease_holders_killed_lose_nothing(tmp_path: Path) -> None:
    run_crash(f"sqlite:///{tmp_path}/run.db?lost_budget=1000", tmp_path, seed=1)


@pytest.mark.slow
@pytest.mark.postgres
def test_crash_postgres_lease_holders_killed_lose_nothing(pg_url: str, tmp_path: Path) -> None:
    run_crash(pg_url + "&lost_budget=1000", tmp_path, seed=2)
