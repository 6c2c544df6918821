"""A task that cannot start, or that breaks its executor, fails alone (issue 16, points 5-6).

Graph files are validated when loaded; these tests build the bad specs through the Python API
or a store directly, past that validation, so that they check the runtime's own guarantee: any
exception while starting or running a task ends as that task's failure, with the error, and
never takes down the worker or leaves the run waiting for a report that never comes. Real
`conveyor` processes and SQLite files; a hang shows as the subprocess timeout.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conveyor.model import GraphSpec, TaskSpec
from conveyor.store.urls import open_store

#: Specs that pass the Python API but break the command executor: (spec keywords, error text).
BAD_COMMANDS = {
    "env-string": ({"cmd": "true", "env": "X=1"}, "ValueError"),
    "empty-argv": ({"cmd": []}, "Error"),
    "cwd-int": ({"cmd": "true", "cwd": 5}, "TypeError"),
    "env-int-value": ({"cmd": "true", "env": {"X": 1}}, "TypeError"),
}

SCRIPT = """
import json, sys, time
from conveyor.model import GraphSpec, TaskSpec
from conveyor.runtime.engine import Engine
from conveyor.store.memory import MemoryStore

# The API's schema refuses such a spec (see test_bad_input); the engine must survive it anyway
# (a store written by another version, a spec built past the checks): hand it to a store as is.
bad = TaskSpec("bad", **{spec})
store = MemoryStore()
store.open_graph(GraphSpec("g", [bad, TaskSpec("after-bad", cmd="echo x", deps=("bad",)),
                                 TaskSpec("good", cmd="echo ok")]), time.time())
Engine(store, workers={workers}).run()
print(json.dumps({{"counts": store.counts(), "bad": store.result("bad").error,
                   "good": store.result("good").value}}))
"""


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=60)  # fmt: skip


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("case", sorted(BAD_COMMANDS))
def test_run_command_that_cannot_start_fails_that_task_only(
    tmp_path: Path, case: str, workers: int
) -> None:
    spec, error = BAD_COMMANDS[case]
    code = textwrap.dedent(SCRIPT).format(spec=spec, workers=workers)
    out = run_python(code, tmp_path)  # a lost report hangs the run: TimeoutExpired
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["counts"]["failed"] == 1 and got["counts"]["skipped"] == 1
    assert got["counts"]["done"] == 1 and got["good"] == "ok"
    assert error in got["bad"]


@pytest.mark.parametrize("case", sorted(BAD_COMMANDS))
def test_worker_poison_task_fails_and_the_worker_goes_on(tmp_path: Path, case: str) -> None:
    spec, error = BAD_COMMANDS[case]
    db = f"sqlite:///{tmp_path}/run.db"
    store = open_store(db)
    try:
        tasks = [TaskSpec("bad", **spec), TaskSpec("good", cmd="echo ok")]  # type: ignore[arg-type]
        store.open_graph(GraphSpec("poison", tasks), 0.0)
    finally:
        store.close()
    argv = [sys.executable, "-m", "conveyor.cli", "worker", "--db", db, "--idle-exit", "5"]
    out = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert "Traceback" not in out.stderr
    assert out.returncode == 1, out.stderr  # a task failed; the worker did not
    store = open_store(db)
    try:
        bad, good = store.result("bad"), store.result("good")
        assert bad.state.label == "failed" and error in (bad.error or "")
        assert good.state.label == "done" and good.value == "ok"
        assert [e["event"] for e in store.history("bad")].count("task_started") == 1
    finally:
        store.close()


def test_worker_with_a_damaged_spec_row_fails_that_task_and_goes_on(tmp_path: Path) -> None:
    """A spec row that no longer decodes (a damaged store file) fails its task with the error,
    once, instead of crashing every worker that claims it (or passing for a no-op)."""
    import sqlite3

    path = tmp_path / "run.db"
    store = open_store(f"sqlite:///{path}")
    try:
        tasks = [TaskSpec("bad", cmd="echo no"), TaskSpec("good", cmd="echo ok")]
        store.open_graph(GraphSpec("damaged", tasks), 0.0)
    finally:
        store.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE specs SET spec = '{not json' WHERE seq = "
                   "(SELECT seq FROM tasks WHERE id = 'bad')")  # fmt: skip
    out = conveyor_cli("worker", "--db", f"sqlite:///{path}", "--idle-exit", "5", cwd=tmp_path)
    assert "Traceback" not in out.stderr, out.stderr
    assert out.returncode == 1, out.stderr  # a task failed; the worker did not
    store = open_store(f"sqlite:///{path}")
    try:
        bad, good = store.result("bad"), store.result("good")
        assert bad.state.label == "failed", bad
        assert "its stored spec cannot be read (JSONDecodeError" in (bad.error or "")
        assert good.state.label == "done" and good.value == "ok"
        assert [e["event"] for e in store.history("bad")].count("task_started") == 1
    finally:
        store.close()


# -- point 8: a task that outlives its outcome -------------------------------------------------
def conveyor_cli(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def test_run_command_leaving_a_background_child_ends_with_the_shell(tmp_path: Path) -> None:
    # The child keeps the command's stdout open for 300 s; the shell exits 0 at once.
    cmd = "sleep 300 & echo $! > child.pid; echo hi"
    graph = {
        "name": "bg",
        "tasks": [
            {"id": "bg", "cmd": cmd, "timeout_s": 5},
            {"id": "next", "cmd": "echo next", "deps": ["bg"]},
        ],
    }
    (tmp_path / "g.json").write_text(json.dumps(graph))
    db = f"sqlite:///{tmp_path}/run.db"
    try:
        out = conveyor_cli("run", "g.json", "--db", db, "-q", cwd=tmp_path)
        assert out.returncode == 0, out.stderr  # not "timeout: command still running"
        store = open_store(db)
        try:
            assert store.result("bg").value == "hi"
            assert store.result("next").value == "next"
        finally:
            store.close()
    finally:
        pid = (tmp_path / "child.pid").read_text().strip()
        subprocess.run(["kill", pid], check=False)


SLOW = """
import time

def slow():
    time.sleep(300)
"""


def test_worker_with_a_timed_out_thread_task_exits_without_waiting_for_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "jobs.py").write_text(SLOW)
    graph = {
        "name": "slow",
        "tasks": [
            {"id": "slow", "fn": "jobs:slow", "timeout_s": 1},
            {"id": "other", "cmd": "echo other"},
        ],
    }
    (tmp_path / "g.json").write_text(json.dumps(graph))
    db = f"sqlite:///{tmp_path}/run.db"
    assert conveyor_cli("submit", "g.json", "--db", db, cwd=tmp_path).returncode == 0
    # The thread sleeps 300 s: a worker that waits for it runs into this timeout.
    out = conveyor_cli("worker", "--db", db, "--workers", "1", cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    assert "1 done, 1 failed" in out.stderr
    store = open_store(db)
    try:
        assert "timeout" in (store.result("slow").error or "")
        assert store.result("other").value == "other"
    finally:
        store.close()


def _exits() -> None:
    sys.exit(3)


@pytest.mark.parametrize("executor", ["inline", "thread"])
def test_run_task_calling_sys_exit_fails_that_task_only(executor: str) -> None:
    import conveyor

    g = conveyor.Graph("exits")
    g.add(_exits, id="exits", executor=executor)
    g.cmd("echo ok", id="good")
    result = conveyor.run(g, workers=1)
    assert result.result("exits").state.label == "failed"
    assert "SystemExit: 3" in (result.result("exits").error or "")
    assert result["good"] == "ok"
