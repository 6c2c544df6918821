"""A Ray cluster killed mid-run (every process of it, SIGKILL) loses no finished work: the run
hands the tasks that were on Ray back to its durable store and exits 1 with one line; run
again on a new cluster, it runs only the rest, and no task recorded done runs twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor.store.urls import open_store
from helpers import wait_until
from rayhelp import RayHead, ray_missing

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
TASKS = 30

pytestmark = [pytest.mark.slow, pytest.mark.skipif(ray_missing() is not None,
                                                   reason=str(ray_missing()))]  # fmt: skip


def run_cli(address: str, db: str, cwd: Path, command: str = "run") -> subprocess.Popen[str]:
    """``conveyor run g.json`` (quiet), or ``conveyor worker`` (with its summary) on the graph
    submitted to ``db`` first."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(TESTS)])}
    cli = [sys.executable, "-m", "conveyor.cli"]
    if command == "worker":
        subprocess.run([*cli, "submit", "g.json", "--db", db], cwd=cwd, env=env, check=True,
                       capture_output=True, timeout=60)  # fmt: skip
        args = ["worker", "--executor", "ray", "--address", address, "--db", db]
    else:
        args = ["run", "g.json", "--executor", "ray", "--address", address, "--db", db, "-q"]
    return subprocess.Popen(
        [*cli, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip


def done_ids(db: str) -> set[str]:
    store = open_store(db)
    try:
        return {f"t{i}" for i in range(TASKS) if store.result(f"t{i}").state.label == "done"}
    finally:
        store.close()


@pytest.mark.parametrize("command", ["run", "worker"])
def test_ray_cluster_killed_mid_run_loses_no_finished_work(tmp_path: Path, command: str) -> None:
    log = tmp_path / "ran.log"
    tasks = [{"id": f"t{i}", "fn": "ray_tasks:log_then_nap", "args": [str(log), 0.3]}
             for i in range(TASKS)]  # fmt: skip
    (tmp_path / "g.json").write_text(json.dumps({"tasks": tasks}))
    db = f"sqlite:///{tmp_path / 'run.db'}"

    first = RayHead(cpus=2).start()
    try:
        proc = run_cli(first.address, db, tmp_path, command)
        wait_until(lambda: log.exists() and len(log.read_text().split()) >= 4, timeout=120,
                   what="4 tasks to finish on Ray", every=0.05)  # fmt: skip
        first.kill()  # every process of the cluster, at once
        _, err = proc.communicate(timeout=120)
    finally:
        first.stop()
    assert proc.returncode == 1, err[-2000:]
    assert "stopped answering" in err and "running task(s) handed back" in err, err[-2000:]
    if command == "worker":  # the summary gives the real reason
        assert "handed back (the Ray cluster at" in err and "time limit" not in err, err[-2000:]
    before = done_ids(db)
    assert before and len(before) < TASKS
    store = open_store(db)
    try:
        assert store.counts().get("running", 0) == 0  # nothing left leased to the dead run
    finally:
        store.close()

    second = RayHead(cpus=2).start()
    try:
        again = run_cli(second.address, db, tmp_path)
        _, err = again.communicate(timeout=180)
    finally:
        second.stop()
    assert again.returncode == 0, err[-2000:]
    assert done_ids(db) == {f"t{i}" for i in range(TASKS)}
    ran = log.read_text().split()
    assert {t: ran.count(t) for t in before} == dict.fromkeys(before, 1)  # never redone
    assert set(ran) == {f"t{i}" for i in range(TASKS)}
