"""A durable parent that submitted children is resumed after its worker is SIGKILLed: the
next worker runs the parent again, the children it submitted before are the same tasks (none
added twice, none that finished runs again) and the graph finishes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from conveyor.store.urls import open_store
from helpers import wait_until

ROOT = Path(__file__).resolve().parents[1]

JOBS = """
import time
from pathlib import Path

import conveyor


def nap(i):
    Path("ran.log").open("a").write(f"p/{i}\\n")
    if i >= 2:
        while not Path("go").exists():  # the later children wait until the worker is killed
            time.sleep(0.02)
    return i


def parent():
    handles = [conveyor.current().submit("jobs:nap", i, id=f"p/{i}") for i in range(4)]
    return sum(h.result() for h in handles)
"""


def test_killed_worker_parent_resubmits_and_its_children_are_not_added_twice(
    tmp_path: Path,
) -> None:
    (tmp_path / "jobs.py").write_text(textwrap.dedent(JOBS))
    (tmp_path / "g.json").write_text(
        '{"name": "kids", "tasks": [{"id": "p", "fn": "jobs:parent"}, {"id": "z", "deps": ["p"]}]}'
    )
    db = f"sqlite:///{tmp_path / 'run.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cli = [sys.executable, "-m", "conveyor.cli"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=60)  # fmt: skip

    assert run("submit", "g.json", "--db", db).returncode == 0
    first = subprocess.Popen([*cli, "worker", "--db", db, "--workers", "4", "--lease", "2"],
                             cwd=tmp_path, env=env)  # fmt: skip
    log = tmp_path / "ran.log"
    wait_until(lambda: log.exists() and len(log.read_text().split()) >= 4, timeout=30,
               what="the 4 children to start")  # fmt: skip
    store = open_store(db)
    try:
        wait_until(lambda: store.result("p/0").state.label == "done", timeout=30)
        assert store.result("p").state.label == "running"  # killed while it holds a lease
    finally:
        store.close()
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    (tmp_path / "go").write_text("1")
    again = run("worker", "--db", db, "--lease", "2", "--idle-exit", "5")
    assert again.returncode == 0, again.stderr[-2000:]
    store = open_store(db)
    try:
        assert store.result("p").value == 0 + 1 + 2 + 3
        assert store.result("z").state.label == "done"
        assert sum(store.counts().values()) == 6  # p, z and 4 children, each once
        kinds = [e["event"] for e in store.history("p")]
        assert "lease_expired" in kinds or "worker_lost" in kinds, kinds  # the kill landed
        assert [e["event"] for e in store.history("p/0")].count("task_finished") == 1
    finally:
        store.close()
    ran = log.read_text().split()
    assert ran.count("p/0") == 1 and ran.count("p/1") == 1, ran  # finished before: not rerun
