"""The store commands as a user runs them: real `conveyor` subprocesses on one SQLite file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sigint import interrupt_once, interrupt_when

MOD = """
def double(x):
    return 2 * x

def total(*xs):
    return sum(xs)

def boom():
    raise ValueError("boom")
"""


def cli(*args: str, cwd: Path, check: bool = False) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-m", "conveyor.cli", *args], cwd=cwd,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    if check and out.returncode != 0:
        raise AssertionError(f"{args}: exit {out.returncode}\n{out.stderr}")
    return out


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "jobs.py").write_text(MOD)
    tasks = [{"id": f"d{i}", "fn": "jobs:double", "args": [i], "group": "alice" if i % 2 else "bob"}
             for i in range(40)]  # fmt: skip
    tasks.append({"id": "sum", "fn": "jobs:total", "deps": [t["id"] for t in tasks]})
    tasks += [{"id": "bad", "fn": "jobs:boom"}, {"id": "after-bad", "deps": ["bad"]}]
    (tmp_path / "graph.json").write_text(json.dumps({"name": "demo", "tasks": tasks}))
    return tmp_path


def test_worker_cli_two_workers_finish_a_graph(project: Path) -> None:
    db = f"sqlite:///{project}/run.db"
    cli("submit", "graph.json", "--db", db, cwd=project, check=True)
    argv = [sys.executable, "-m", "conveyor.cli", "worker", "--db", db, "-q", "--events"]
    procs = [
        subprocess.Popen([*argv, f"ev{i}.jsonl"], cwd=project, stderr=subprocess.DEVNULL)
        for i in range(2)
    ]
    codes = [p.wait(timeout=120) for p in procs]
    assert codes == [1, 1]  # finished, with one task failed
    st = json.loads(cli("status", "--db", db, "--json", cwd=project, check=True).stdout)
    assert st["counts"]["done"] == 41 and st["counts"]["failed"] == 1
    assert st["counts"]["skipped"] == 1 and st["unfinished"] == 0
    assert st["groups"]["alice"]["done"] == 20 and st["tasks_per_s"] > 0
    hist = json.loads(cli("history", "sum", "--db", db, "--json", cwd=project, check=True).stdout)
    assert hist["state"] == "done"
    assert [e["event"] for e in hist["history"]][-2:] == ["task_started", "task_finished"]
    # Each finished task was finished once, by one worker, and the workers' own event files
    # hold only committed transitions.
    events = [
        json.loads(line) for line in cli("events", "--db", db, cwd=project).stdout.splitlines()
    ]
    finished = [e["task"] for e in events if e["event"] == "task_finished"]
    assert len(finished) == len(set(finished)) == 41
    mine = [
        json.loads(x) for i in range(2) for x in (project / f"ev{i}.jsonl").read_text().splitlines()
    ]
    assert sorted(e["task"] for e in mine if e["event"] == "task_finished") == sorted(finished)


def test_worker_cli_retry_and_prune(project: Path) -> None:
    db = f"sqlite:///{project}/run.db"
    cli("submit", "graph.json", "--db", db, cwd=project, check=True)
    assert cli("worker", "--db", db, "-q", cwd=project).returncode == 1
    (project / "jobs.py").write_text(MOD.replace('raise ValueError("boom")', "return 'fixed'"))
    cli("retry", "--failed", "--db", db, cwd=project, check=True)
    st = json.loads(cli("status", "--db", db, "--json", cwd=project, check=True).stdout)
    assert st["unfinished"] == 2 and st["counts"]["failed"] == 0
    assert cli("worker", "--db", db, "-q", cwd=project).returncode == 0
    st = json.loads(cli("status", "--db", db, "--json", cwd=project, check=True).stdout)
    assert st["counts"]["done"] == 43
    before = len(cli("events", "--db", db, cwd=project).stdout.splitlines())
    cli("prune", "--db", db, "--keep", "1", cwd=project, check=True)
    after = [json.loads(x) for x in cli("events", "--db", db, cwd=project).stdout.splitlines()]
    assert len(after) < before
    kept = Counter(e["task"] for e in after if "task" in e)
    assert set(kept) == {f"d{i}" for i in range(40)} | {"sum", "bad", "after-bad"}
    assert set(kept.values()) == {1}  # --keep 1: exactly the newest row of each task
    hist = json.loads(cli("history", "bad", "--db", db, "--json", cwd=project, check=True).stdout)
    assert hist["state"] == "done" and len(hist["history"]) == 1


def test_worker_cli_retry_refuses_a_done_task(project: Path) -> None:
    db = f"sqlite:///{project}/run.db"
    cli("submit", "graph.json", "--db", db, cwd=project, check=True)
    cli("worker", "--db", db, "-q", cwd=project)
    out = cli("retry", "d1", "--db", db, cwd=project)
    assert out.returncode == 2 and "only failed or cancelled" in out.stderr


def test_worker_cli_run_again_after_a_failed_run_redoes_nothing(project: Path) -> None:
    db = f"sqlite:///{project}/run.db"
    assert cli("run", "graph.json", "--db", db, "-q", cwd=project).returncode == 1
    out = cli("run", "graph.json", "--db", db, "-q", cwd=project)
    assert out.returncode == 1  # the failed task stays failed; nothing is redone
    events = [json.loads(x) for x in cli("events", "--db", db, cwd=project).stdout.splitlines()]
    assert sum(e["event"] == "task_finished" for e in events) == 41


def test_worker_cli_worker_without_a_graph_says_so(tmp_path: Path) -> None:
    out = cli("worker", "--db", f"sqlite:///{tmp_path}/empty.db", cwd=tmp_path)
    assert out.returncode == 2 and "conveyor submit" in out.stderr


LOOP = """
import sys
import conveyor

graph = conveyor.Graph("loop")
for i in range(200):
    graph.add(None, id=f"t{i}", deps=[f"t{i - 10}"] if i >= 10 else [])
with open(sys.argv[2], "w") as out:
    for task in conveyor.worker(graph, db=sys.argv[1], lease_s=5):
        out.write(task.id + "\\n")
        task.result = task.id
"""


def test_worker_loop_processes_on_one_store_run_each_task_once_in_order(tmp_path: Path) -> None:
    (tmp_path / "loop.py").write_text(LOOP)
    db = f"sqlite:///{tmp_path}/loop.db"
    procs = [subprocess.Popen([sys.executable, "loop.py", db, f"seen{i}.txt"], cwd=tmp_path)
             for i in range(3)]  # fmt: skip
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    seen = [x for i in range(3) for x in (tmp_path / f"seen{i}.txt").read_text().split()]
    assert sorted(seen) == sorted(f"t{i}" for i in range(200))  # each exactly once
    feed = cli("events", "--db", db, cwd=tmp_path, check=True).stdout.splitlines()
    done_at = {}
    for n, ev in enumerate(json.loads(x) for x in feed):
        if ev["event"] == "task_started":
            parent = int(ev["task"][1:]) - 10
            assert parent < 0 or f"t{parent}" in done_at  # parents before children
        if ev["event"] == "task_finished":
            done_at[ev["task"]] = n


def test_worker_loop_break_gives_back_and_exception_fails(tmp_path: Path) -> None:
    import conveyor

    graph = conveyor.Graph("g")
    graph.add(None, id="a")
    graph.add(None, id="b", deps=["a"])
    db = f"sqlite:///{tmp_path}/g.db"
    for task in conveyor.worker(graph, db=db):
        assert task.id == "a"
        task.result = 41
        break  # given back unrun
    with pytest.raises(KeyError):
        for task in conveyor.worker(graph, db=db):
            if task.id == "b":
                assert task.parents == {"a": 41}
                raise KeyError("b")
            task.result = 41
    from conveyor.store.urls import open_store

    store = open_store(db)
    try:
        assert store.result("a").value == 41
        assert store.result("b").state.label == "failed"
        assert [e["event"] for e in store.history("a")].count("task_started") == 2
    finally:
        store.close()


@pytest.mark.skipif(os.name != "posix", reason="SIGINT to a child process")
def test_worker_cli_sigint_exits_130_and_gives_its_task_back(tmp_path: Path) -> None:
    graph = {"name": "slow", "tasks": [{"id": "slow", "cmd": "sleep 60"},
                                       {"id": "after", "deps": ["slow"]}]}  # fmt: skip
    (tmp_path / "graph.json").write_text(json.dumps(graph))
    db = f"sqlite:///{tmp_path}/run.db"
    cli("submit", "graph.json", "--db", db, cwd=tmp_path, check=True)
    events = tmp_path / "ev.jsonl"
    code, _, stderr = interrupt_when(
        [sys.executable, "-m", "conveyor.cli", "worker", "--db", db, "--events", str(events)],
        tmp_path,
        lambda: events.exists() and "task_started" in events.read_text(),
        what="the worker starting its task",
    )
    assert code == 130, stderr
    assert "0 done" in stderr and "2 left" in stderr
    st = json.loads(cli("status", "--db", db, "--json", cwd=tmp_path, check=True).stdout)
    assert st["unfinished"] == 2 and st["counts"]["running"] == 0  # given back, not lost
    assert st["counts"]["cancelled"] == 0  # a durable store keeps the rest for the next worker


def _blocked_in_flock(pid: int) -> bool:
    """Whether ``pid`` waits for an ``flock`` (``/proc/locks`` lists waiters with ``->``)."""
    return any(
        line.split()[1] == "->" and line.split()[2] == "FLOCK" and line.split()[5] == str(pid)
        for line in Path("/proc/locks").read_text().splitlines()
    )


@contextmanager
def write_lock_held(tmp_path: Path) -> Iterator[str]:
    """A store of one task whose write lock another process holds the whole time: its URL."""
    import fcntl

    (tmp_path / "graph.json").write_text(json.dumps({"name": "g", "tasks": [{"id": "a"}]}))
    db_file = tmp_path / "run.db"
    cli("submit", "graph.json", "--db", f"sqlite:///{db_file}", cwd=tmp_path, check=True)
    fd = os.open(f"{db_file}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield f"sqlite:///{db_file}"
    finally:
        os.close(fd)


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks")
@pytest.mark.parametrize("command", ["worker", "run"])
def test_sigint_while_waiting_for_the_write_lock_exits_130_in_one_line(
    tmp_path: Path, command: str
) -> None:
    """Ctrl-C of a worker (or a durable run) still waiting for the store's write lock: exit
    130 (a worker used to exit 0, its run not yet started) and, for a run, one line."""
    with write_lock_held(tmp_path) as db:
        argv = [sys.executable, "-m", "conveyor.cli", command]
        argv += ["--db", db] if command == "worker" else ["graph.json", "--db", db]
        waiting = f"{command} waiting for the lock"
        code, _, stderr = interrupt_once(argv, tmp_path, _blocked_in_flock, waiting)
    assert code == 130, stderr
    assert "Traceback" not in stderr
    if command == "run":
        assert stderr.splitlines() == ["conveyor: interrupted"], stderr
