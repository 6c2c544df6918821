"""Issue 13, the worker side: a durable worker hands its running tasks back on ``SIGUSR2`` or
``SIGTERM`` (and at its end, ``--until``/``--time-left``), and starts no task whose
``expected_s`` cannot finish before its end. Real ``conveyor worker`` subprocesses on a real
store; the tasks wait on a file the test writes, so they run until the test says."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from conveyor.store.sqlleases import pid_alive
from conveyor.store.urls import open_store
from helpers import store_history, wait_until

JOBS = """
import asyncio
import os
import time
from pathlib import Path


def _ran(name):
    with open("ran.txt", "a") as f:
        f.write(name + "\\n")


def wait_for_go(name):
    Path(f"started-{name}").write_text(str(os.getpid()))
    while not Path("go").exists():
        time.sleep(0.02)
    _ran(name)
    return name


async def await_go(name):
    Path(f"started-{name}").write_text(str(os.getpid()))
    while not Path("go").exists():
        await asyncio.sleep(0.02)
    _ran(name)
    return name
"""

#: A command that runs until the file ``go`` exists; its shell's pid is its process group.
WAIT_CMD = "echo $$ > started-cmd; while [ ! -f go ]; do sleep 0.02; done; echo cmd >> ran.txt"
TASKS = ("cmd", "py", "async")


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def start_worker(cwd: Path, db: str, *args: str) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "conveyor.cli", "worker", "--db", db, *args]
    return subprocess.Popen(argv, cwd=cwd, stderr=subprocess.PIPE, text=True)


def submit(cwd: Path, db: str, tasks: list[dict[str, Any]]) -> None:
    (cwd / "graph.json").write_text(json.dumps({"name": "pilot", "tasks": tasks}))
    out = cli("submit", "graph.json", "--db", db, cwd=cwd)
    assert out.returncode == 0, out.stderr


def counts(db: str) -> dict[str, int]:
    store = open_store(db)
    try:
        return store.counts()
    finally:
        store.close()


def wait_exit(proc: subprocess.Popen[str], timeout: float = 60.0) -> tuple[int, str]:
    """The worker's exit code and stderr, within a bound (a hang fails the test)."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"the worker did not exit within {timeout} s:\n{err}") from None
    return proc.returncode, err


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "jobs.py").write_text(JOBS)
    return tmp_path


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, project: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{project}/run.db"
    return str(request.getfixturevalue("pg_url"))


def running_tasks() -> list[dict[str, Any]]:
    return [
        {"id": "cmd", "cmd": WAIT_CMD},
        {"id": "py", "fn": "jobs:wait_for_go", "args": ["py"]},
        {"id": "async", "fn": "jobs:await_go", "args": ["async"]},
    ]


@pytest.mark.parametrize("sig", [signal.SIGUSR2, signal.SIGTERM], ids=["SIGUSR2", "SIGTERM"])
def test_worker_signal_hands_running_tasks_back_and_a_second_worker_finishes_them_once(
    project: Path, db: str, sig: signal.Signals
) -> None:
    if db.startswith("postgres") and sig is signal.SIGTERM:
        pytest.skip("the SIGTERM path is the SIGUSR2 path; SQLite runs it")
    submit(project, db, running_tasks())
    first = start_worker(project, db, "--workers", "3", "--lease", "30")
    try:
        wait_until(lambda: counts(db).get("running", 0) == 3, 60, "the worker to hold 3 leases")
        wait_until(lambda: all((project / f"started-{t}").exists() for t in TASKS), 60,
                   "the three task bodies to start")  # fmt: skip
        cmd_pid = int((project / "started-cmd").read_text())
        first.send_signal(sig)
        code, err = wait_exit(first)
    finally:
        if first.poll() is None:
            first.kill()
    assert code == 0, err
    assert "3 handed back" in err, err
    # back to ready at once (no lease to wait out), nothing counted as a failure
    c = counts(db)
    assert (c.get("ready", 0), c.get("running", 0), c.get("failed", 0)) == (3, 0, 0), c
    for t in TASKS:
        trail = store_history(db, t)
        released = [e for e in trail if e["event"] == "task_released"]
        assert [e["reason"] for e in released] == [f"signal {sig.name}"], trail
        assert not {"task_failed", "task_retrying", "lease_expired"} & {e["event"] for e in trail}
    # the command was killed with its process group, not left running
    wait_until(lambda: not pid_alive(cmd_pid), 30, "the handed-back command to be killed")
    assert not (project / "ran.txt").exists()

    (project / "go").write_text("")
    second = cli("worker", "--db", db, "--workers", "3", cwd=project)
    assert second.returncode == 0, second.stderr
    assert counts(db).get("done", 0) == 3
    assert sorted((project / "ran.txt").read_text().split()) == sorted(TASKS)  # once each
    for t in TASKS:
        events = [e["event"] for e in store_history(db, t)]
        assert events.count("task_started") == 2 and events.count("task_finished") == 1, events
        attempts = [e["attempt"] for e in store_history(db, t) if e["event"] == "task_started"]
        assert attempts == [1, 1]  # the hand-back took its attempt back


def test_worker_hands_back_at_its_end_with_reason_time_limit(project: Path) -> None:
    db = f"sqlite:///{project}/run.db"
    submit(project, db, [{"id": "py", "fn": "jobs:wait_for_go", "args": ["py"]}])
    # no expected_s: it is started, and handed back when the worker's time is up
    worker = start_worker(project, db, "--time-left", "3")
    code, err = wait_exit(worker)
    assert code == 0, err
    released = [e for e in store_history(db, "py") if e["event"] == "task_released"]
    assert [e["reason"] for e in released] == ["time limit"]
    assert counts(db).get("ready", 0) == 1


def test_worker_with_an_end_starts_only_what_can_finish_and_why_says_so(project: Path) -> None:
    db = f"sqlite:///{project}/run.db"
    submit(project, db, [
        {"id": "long", "cmd": "echo long >> ran.txt", "expected_s": 3600},
        {"id": "short", "cmd": "echo short >> ran.txt", "expected_s": 1},
    ])  # fmt: skip
    env = {**os.environ, "CONVEYOR_WORKER_END": str(time.time() + 30)}
    argv = [sys.executable, "-m", "conveyor.cli", "worker", "--db", db]
    worker = subprocess.Popen(argv, cwd=project, stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_until(lambda: counts(db).get("done", 0) == 1, 60, "the short task to finish")
        why = cli("why", "long", "--db", db, "--json", cwd=project)
        assert why.returncode == 0, why.stderr
        reason = json.loads(why.stdout)
        assert reason["reason"] == "would_not_finish", reason
        assert reason["expected_s"] == 3600
        worker.send_signal(signal.SIGTERM)
        code, err = wait_exit(worker)
    finally:
        if worker.poll() is None:
            worker.kill()
    assert code == 0, err
    assert (project / "ran.txt").read_text().split() == ["short"]
    assert "task_started" not in [e["event"] for e in store_history(db, "long")]
    assert counts(db).get("ready", 0) == 1

    # a worker with time enough (or no end) runs it
    (project / "graph.json").unlink()
    done = cli("worker", "--db", db, "--until", str(time.time() + 7200), cwd=project)
    assert done.returncode == 0, done.stderr
    assert sorted((project / "ran.txt").read_text().split()) == ["long", "short"]


def test_worker_with_an_end_judges_undeclared_tasks_by_their_kinds_past_runs(
    project: Path, db: str
) -> None:
    """No ``expected_s``: a worker with 8 s left does not start a ``sleep 3`` once another
    worker's run of ``sleep 3`` took 3 s (3.3 s with slack + 5 s margin > 8 s). It hands the
    claim back at once, reason ``would_not_finish``, and exits; a worker with time runs it."""
    submit(project, db, [
        {"id": f"s{i}", "cmd": f"sleep 3; echo s{i} >> ran.txt"} for i in (1, 2)
    ])  # fmt: skip
    first = cli("worker", "--db", db, "--max-tasks", "1", cwd=project)
    assert first.returncode == 0, first.stderr
    assert (project / "ran.txt").read_text().split() == ["s1"]

    short = cli("worker", "--db", db, "--time-left", "8", cwd=project)
    assert short.returncode == 0, short.stderr
    assert (project / "ran.txt").read_text().split() == ["s1"]  # s2 never ran there
    released = [e for e in store_history(db, "s2") if e["event"] == "task_released"]
    assert [e["reason"] for e in released] == ["would_not_finish"]
    assert counts(db).get("ready", 0) == 1

    done = cli("worker", "--db", db, cwd=project)
    assert done.returncode == 0, done.stderr
    assert (project / "ran.txt").read_text().split() == ["s1", "s2"]


def test_worker_refuses_a_bad_end_in_one_line(project: Path) -> None:
    db = f"sqlite:///{project}/run.db"
    submit(project, db, [{"id": "a", "cmd": "true"}])
    both = cli("worker", "--db", db, "--until", "1", "--time-left", "1", cwd=project)
    assert both.returncode == 2 and "not both" in both.stderr
    env = {**os.environ, "CONVEYOR_WORKER_END": "tomorrow"}
    argv = [sys.executable, "-m", "conveyor.cli", "worker", "--db", db]
    bad = subprocess.run(argv, cwd=project, capture_output=True, text=True, timeout=60, env=env)
    assert bad.returncode == 2 and "CONVEYOR_WORKER_END" in bad.stderr, bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_engine_hand_back_abandons_a_thread_task_whose_late_result_is_not_recorded(
    tmp_path: Path,
) -> None:
    import threading

    from conveyor.api import open_run
    from conveyor.model import GraphSpec, TaskSpec

    db = f"sqlite:///{tmp_path}/run.db"
    gate, started, returned = threading.Event(), threading.Event(), threading.Event()
    calls: list[str] = []

    def body() -> str:
        calls.append("run")
        started.set()
        if len(calls) == 1:  # the first run blocks until the test lets it return late
            gate.wait(60)
            returned.set()
            return "late"
        return "fresh"

    graph = GraphSpec("g", [TaskSpec("t", fn=body)])
    first = open_run(graph, db=db, workers=1)
    runner = threading.Thread(target=first.run)
    runner.start()
    assert started.wait(60)
    first.engine.hand_back("test")
    runner.join(60)
    assert not runner.is_alive()
    assert first.engine.stats.released == 1 and first.engine.stuck  # abandoned, not waited for
    first.close()
    gate.set()  # the abandoned thread returns now, after its task was handed back
    assert returned.wait(60)

    store = open_store(db)
    try:
        assert store.result("t").state.label == "ready"  # the late "late" was not recorded
        assert [e["reason"] for e in store.history("t") if e["event"] == "task_released"] == [
            "test"
        ]
    finally:
        store.close()
    second = open_run(graph, db=db, workers=1)
    assert second.run().counts["done"] == 1
    second.close()
    assert calls == ["run", "run"]
    store = open_store(db)
    try:
        assert store.result("t").value == "fresh"
    finally:
        store.close()
