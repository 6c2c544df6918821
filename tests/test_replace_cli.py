"""`conveyor submit --replace` while the replaced graph is still at work: real `conveyor worker`
and `conveyor events --follow` subprocesses on SQLite and PostgreSQL.

A replaced graph's workers may still hold its tasks; what they report afterwards must not land
in the new graph (fencing), and a follower of the audit trail must go on into the new graph."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.store.urls import open_store
from helpers import store_history, wait_until

GATES = """
import pathlib
import time

import conveyor


def gated(gate, value):
    deadline = time.monotonic() + 120
    while not pathlib.Path(gate).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(gate)
        time.sleep(0.01)
    return value


def joined():
    return "+".join(v for _, v in sorted(conveyor.current().parent_results.items()))
"""


def write_graph(dir: Path, name: str) -> Path:
    tasks = [
        {"id": "t0", "fn": "gates:gated", "args": [str(dir / f"{name}.go"), name]},
        {"id": "t1", "fn": "gates:joined", "deps": ["t0"]},
    ]
    path = dir / f"{name}.json"
    path.write_text(json.dumps({"name": name, "tasks": tasks}))
    return path


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-m", "conveyor.cli", *args], cwd=cwd,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, f"{args}: exit {out.returncode}\n{out.stderr}"
    return out


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/run.db"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[Any]]]:
    """Subprocesses of one test; whatever still runs at the end is stopped."""
    started: list[subprocess.Popen[Any]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.terminate()
            p.wait(30)


def started_by(db: str, task: str) -> list[str]:
    return [e["worker"] for e in store_history(db, task) if e["event"] == "task_started"]


def test_replace_refuses_what_the_replaced_graphs_worker_reports_late(
    db: str, tmp_path: Path, procs: list[subprocess.Popen[Any]]
) -> None:
    (tmp_path / "gates.py").write_text(GATES)
    cli("submit", str(write_graph(tmp_path, "one")), "--db", db, cwd=tmp_path)
    worker = [sys.executable, "-m", "conveyor.cli", "worker", "--db", db, "--workers", "1"]
    old = subprocess.Popen([*worker, "--max-tasks", "1"], cwd=tmp_path, stderr=subprocess.PIPE,
                           text=True)  # fmt: skip
    procs.append(old)
    wait_until(lambda: len(started_by(db, "t0")) == 1, what="graph one's t0 running", timeout=90)
    cli("submit", str(write_graph(tmp_path, "two")), "--db", db, "--replace", cwd=tmp_path)
    new = subprocess.Popen([*worker, "--idle-exit", "60"], cwd=tmp_path, stderr=subprocess.PIPE,
                           text=True)  # fmt: skip
    procs.append(new)
    wait_until(lambda: len(started_by(db, "t0")) == 1, what="graph two's t0 running", timeout=90)
    (tmp_path / "one.go").touch()  # the old worker finishes graph one's t0 ...
    _, err = old.communicate(timeout=120)
    assert "Traceback" not in err, err
    (tmp_path / "two.go").touch()  # ... before the new graph's own t0 does
    _, err = new.communicate(timeout=120)
    assert new.returncode == 0, err
    store = open_store(db)
    try:
        assert store.graph_name() == "two"
        assert store.result("t0").value == "two"
        assert store.result("t1").value == "two"  # its parent really ran, in graph two
        assert store.counts()["done"] == 2
        finished = [e for e in store.iter_events() if e["event"] == "task_finished"]
        assert len(finished) == 2  # the refused completion is no event
    finally:
        store.close()


def test_replace_events_follow_goes_on_into_the_new_graph(
    db: str, tmp_path: Path, procs: list[subprocess.Popen[Any]]
) -> None:
    (tmp_path / "gates.py").write_text(GATES)
    cli("submit", str(write_graph(tmp_path, "one")), "--db", db, cwd=tmp_path)
    cli("submit", str(write_graph(tmp_path, "two")), "--db", db, "--replace", cwd=tmp_path)
    out = tmp_path / "follow.jsonl"
    with out.open("w") as sink:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "conveyor.cli", "events", "--db", db, "--follow"],
            stdout=sink, stderr=subprocess.DEVNULL, cwd=tmp_path,
        ))  # fmt: skip

    def printed() -> list[tuple[str, str]]:
        events = map(json.loads, out.read_text().splitlines())
        return [(e["event"], e.get("task", "")) for e in events]

    wait_until(
        lambda: ("task_ready", "t0") in printed(), what="the follower catching up", timeout=90
    )
    # A third graph with more tasks than the second: on SQLite its audit ids restarted at 1.
    three = tmp_path / "three.json"
    three.write_text(json.dumps({"name": "three", "tasks": [{"id": "x"}, {"id": "y"}]}))
    cli("submit", str(three), "--db", db, "--replace", cwd=tmp_path)
    wait_until(lambda: ("task_ready", "y") in printed(), what="the third graph's events")
    assert printed()[-4:] == [
        ("task_submitted", "x"), ("task_ready", "x"), ("task_submitted", "y"), ("task_ready", "y"),
    ]  # fmt: skip
