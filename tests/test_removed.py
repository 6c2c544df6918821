"""Tasks an edited graph no longer has: submitting it again marks them ``removed`` (with a
``task_removed`` audit row) so they never run, ``plan`` lists them, and tasks submitted at run
time by the graph's own tasks are not mistaken for removed ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

CLI = [sys.executable, "-m", "conveyor.cli"]
JOBS = """
import conveyor


def spawn():
    conveyor.current().submit("jobs:leaf", id="kid")
    return 1


def leaf():
    return 2
"""


def cli(*args: str, cwd: Path, code: int = 0) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert out.returncode == code, out.stderr
    return out


def write(tmp_path: Path, tasks: list[dict[str, Any]]) -> None:
    (tmp_path / "jobs.py").write_text(JOBS)
    (tmp_path / "g.json").write_text(json.dumps({"name": "g", "tasks": tasks}))


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/run.db"
    return str(request.getfixturevalue("pg_url"))


def test_tasks_left_out_of_a_resubmitted_graph_are_removed_and_never_run(
    tmp_path: Path, db: str
) -> None:
    full = [{"id": "a", "cmd": "true"}, {"id": "b", "cmd": "true"},
            {"id": "c", "cmd": "true", "deps": ["b"]}]  # fmt: skip
    write(tmp_path, full)
    cli("submit", "g.json", "--db", db, cwd=tmp_path)
    write(tmp_path, full[:1])
    plan = json.loads(cli("plan", "g.json", "--db", db, "--json", cwd=tmp_path).stdout)
    removed = [t["task"] for t in plan["tasks"] if t["action"] == "remove"]
    assert removed == ["b", "c"] and plan["summary"]["remove"] == 2
    assert "2 removed" in cli("plan", "g.json", "--db", db, cwd=tmp_path).stdout
    cli("submit", "g.json", "--db", db, cwd=tmp_path)
    status = json.loads(cli("status", "--db", db, "--json", cwd=tmp_path).stdout)
    assert status["counts"]["removed"] == 2 and status["unfinished"] == 1
    cli("worker", "--db", db, "--quiet", cwd=tmp_path)  # runs a, exits 0
    events = [json.loads(line) for line in
              cli("events", "--db", db, cwd=tmp_path).stdout.splitlines()]  # fmt: skip
    assert not [e for e in events if e["event"] == "task_started" and e["task"] != "a"]
    gone = [(e["task"], e["from"], e["to"]) for e in events if e["event"] == "task_removed"]
    assert gone == [("b", "ready", "removed"), ("c", "pending", "removed")]
    # Back in the graph: it runs again.
    write(tmp_path, full)
    cli("submit", "g.json", "--db", db, cwd=tmp_path)
    cli("worker", "--db", db, "--quiet", cwd=tmp_path)
    status = json.loads(cli("status", "--db", db, "--json", cwd=tmp_path).stdout)
    assert status["counts"]["done"] == 3 and status["counts"]["removed"] == 0


def test_children_submitted_at_run_time_are_not_removed_on_resubmit(
    tmp_path: Path, db: str
) -> None:
    write(tmp_path, [{"id": "p", "fn": "jobs:spawn"}])
    cli("run", "g.json", "--db", db, "--quiet", cwd=tmp_path)
    plan = json.loads(cli("plan", "g.json", "--db", db, "--json", cwd=tmp_path).stdout)
    assert plan["summary"]["remove"] == 0
    cli("submit", "g.json", "--db", db, cwd=tmp_path)
    status = json.loads(cli("status", "--db", db, "--json", cwd=tmp_path).stdout)
    assert status["counts"]["done"] == 2 and status["counts"]["removed"] == 0
    # The submitter leaves the graph: its child goes with it.
    write(tmp_path, [{"id": "q", "cmd": "true"}])
    cli("submit", "g.json", "--db", db, cwd=tmp_path)
    status = json.loads(cli("status", "--db", db, "--json", cwd=tmp_path).stdout)
    assert status["counts"]["removed"] == 2
