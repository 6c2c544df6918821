"""The audit trail is causal across worker processes: every row is stamped inside its
transaction, so a child never starts before its parent finished and each task's history only
moves forward in time. Real `conveyor worker` processes on one SQLite file (the contract suite
checks the stamping itself on every durable store, PostgreSQL included, with a fake clock)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from conveyor.store.urls import open_store
from helpers import wait_until

CHAINS, DEPTH, WORKERS = 20, 20, 4


#: A link; the first ones wait for ``gate`` to exist: the test opens it once every worker
#: joined, so that no worker runs the whole graph before the others have started.
LINKS = """
import os, time


def link(gate=None):
    deadline = time.monotonic() + 60
    while gate is not None and not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
"""


def chains_graph(path: Path) -> dict[str, list[str]]:
    """``CHAINS`` chains of ``DEPTH`` trivial tasks, each link joined to its neighbour chain's
    previous link too, so that workers keep handing each other's children on."""
    (path.parent / "links.py").write_text(LINKS)
    gate = str(path.parent / "gate")
    tasks: list[dict[str, Any]] = []
    parents: dict[str, list[str]] = {}
    for d in range(DEPTH):
        for c in range(CHAINS):
            deps = [] if d == 0 else [f"c{c}-{d - 1}", f"c{(c + 1) % CHAINS}-{d - 1}"]
            task: dict[str, Any] = {"id": f"c{c}-{d}", "fn": "links:link", "deps": deps}
            if d == 0:
                task["args"] = [gate]
            tasks.append(task)
            parents[f"c{c}-{d}"] = deps
    path.write_text(json.dumps({"name": "chains", "tasks": tasks}))
    return parents


def run_workers(db: str, cwd: Path) -> None:
    conveyor = [sys.executable, "-m", "conveyor.cli"]
    subprocess.run([*conveyor, "submit", "graph.json", "--db", db], cwd=cwd, check=True,
                   capture_output=True, timeout=120)  # fmt: skip
    # one slot each and no claims ahead (batch=1), so that the workers really interleave
    procs = [
        subprocess.Popen(
            [*conveyor, "worker", "--db", f"{db}?batch=1", "-q", "--workers", "1"], cwd=cwd
        )
        for _ in range(WORKERS)
    ]

    def joined() -> bool:
        store = open_store(db)
        try:
            return len(store.worker_rows(time.time())) == WORKERS
        finally:
            store.close()

    wait_until(joined, timeout=120, what=f"{WORKERS} workers to join")
    (cwd / "gate").touch()
    assert [p.wait(timeout=300) for p in procs] == [0] * WORKERS


def check_causal(db: str, parents: dict[str, list[str]]) -> None:
    store = open_store(db)
    try:
        events = list(store.iter_events())
    finally:
        store.close()
    finished = {e["task"]: e["ts"] for e in events if e["event"] == "task_finished"}
    started: dict[str, tuple[float, str]] = {
        e["task"]: (e["ts"], e["worker"]) for e in events if e["event"] == "task_started"
    }
    assert len(finished) == len(parents)
    # the fault this guards against needs workers handing work to each other: make sure it did
    handed = [t for t, ps in parents.items() for p in ps if started[t][1] != started[p][1]]
    assert handed, "no child ran on another worker than its parent"
    late = [(p, t, finished[p] - started[t][0]) for t, ps in parents.items() for p in ps
            if started[t][0] < finished[p]]  # fmt: skip
    assert not late, f"children started before their parents finished: {late[:5]}"
    for task in parents:
        stamps = [e["ts"] for e in events if e.get("task") == task]
        assert stamps == sorted(stamps), f"{task}: history goes back in time: {stamps}"


def test_audit_trail_is_causal_across_sqlite_workers(tmp_path: Path) -> None:
    parents = chains_graph(tmp_path / "graph.json")
    db = f"sqlite:///{tmp_path}/run.db"
    run_workers(db, tmp_path)
    check_causal(db, parents)
