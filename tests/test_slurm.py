"""`conveyor slurm` on a real SLURM cluster: pilot workers as job arrays on a SQLite store in
``tmp_path`` (the cluster's jobs run on this machine, so they see it). Skipped, with the reason,
where ``sbatch`` is missing or the cluster does not answer (``.ci/run`` starts one with
scripts/slurm-up.sh when it runs as root with apt-get)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.cluster import pilots
from conveyor.store.urls import open_store
from helpers import wait_until

pytestmark = pytest.mark.slurm

#: A task that holds its worker until the test opens the gate (a file), then naps briefly; each
#: run appends its id to runs.log, so the test can count how often each task really ran.
JOBS = """
import os, time

def held(tid, gate, log):
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)
    with open(log, "a") as f:
        f.write(tid + "\\n")
    time.sleep(0.2)
    return tid
"""

#: Bound on waits for the cluster (job start, workers joining, a graph finishing).
DEADLINE_S = 45.0


def cluster_missing() -> str | None:
    """Why SLURM tests cannot run here, or ``None``."""
    if shutil.which("sbatch") is None:
        return "sbatch is not on PATH (no SLURM client; .ci/run starts scripts/slurm-up.sh)"
    try:
        probe = subprocess.run(["sinfo", "-h"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"sinfo failed: {exc}"
    if probe.returncode != 0:
        return f"the SLURM cluster does not answer: {probe.stderr.strip()}"
    return None


@pytest.fixture(scope="module")
def cluster() -> None:
    why = cluster_missing()
    if why is not None:
        pytest.skip(why)


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def ok(*args: str, cwd: Path) -> str:
    out = cli(*args, cwd=cwd)
    assert out.returncode == 0, f"{args}: exit {out.returncode}\n{out.stderr}"
    return out.stdout


def poll(what: str, check: Callable[[], Any]) -> Any:
    """``check()``'s first truthy answer, asked every 0.2 s (squeue is not to be hammered) up
    to DEADLINE_S."""
    return wait_until(check, DEADLINE_S, what, every=0.2)


class Run:
    """A graph of held tasks in a SQLite store under ``tmp_path``, and what the test asks."""

    def __init__(self, root: Path, n: int, name: str, chain: bool = False) -> None:
        self.root = root
        self.db = f"sqlite:///{root}/run.db"
        self.gate = root / "gate"
        self.log = root / "runs.log"
        (root / "jobs.py").write_text(JOBS)
        tasks: list[dict[str, Any]] = [
            {"id": f"t{i}", "fn": "jobs:held", "args": [f"t{i}", str(self.gate), str(self.log)]}
            for i in range(n)
        ]
        if chain:  # t1.. wait for t0: while t0 is held, the other workers have nothing to do
            for t in tasks[1:]:
                t["deps"] = ["t0"]
        (root / "graph.json").write_text(json.dumps({"name": name, "tasks": tasks}))
        ok("submit", "graph.json", "--db", self.db, cwd=root)

    def rows(self) -> list[dict[str, Any]]:
        store = open_store(self.db)
        try:
            return [r.as_json() for r in pilots.pilot_rows(store, time.time())]
        finally:
            store.close()

    def arrays(self) -> list[str]:
        store = open_store(self.db)
        try:
            return [a.job for a in pilots.load_record(store)[1]]
        finally:
            store.close()

    def status(self) -> dict[str, Any]:
        return json.loads(ok("status", "--db", self.db, "--json", cwd=self.root))  # type: ignore[no-any-return]

    def finished_once(self, n: int) -> None:
        """Every task done, each finished exactly once in the audit trail and run once."""
        st = self.status()
        assert st["counts"]["done"] == n and st["unfinished"] == 0
        events = [
            json.loads(ln) for ln in ok("events", "--db", self.db, cwd=self.root).splitlines()
        ]
        finished = Counter(e["task"] for e in events if e["event"] == "task_finished")
        assert finished == Counter({f"t{i}": 1 for i in range(n)})
        assert Counter(self.log.read_text().split()) == Counter({f"t{i}": 1 for i in range(n)})


@pytest.fixture
def make_run(cluster: None, tmp_path: Path) -> Iterator[Callable[..., Run]]:
    made: list[Run] = []

    def make(n: int, name: str, chain: bool = False) -> Run:
        made.append(Run(tmp_path, n, name, chain))
        return made[-1]

    yield make
    for run in made:  # never leave jobs on the cluster
        run.gate.touch()
        cli("slurm", "cancel", "--db", run.db, cwd=run.root)


def rows_when(
    run: Run, pred: Callable[[list[dict[str, Any]]], bool]
) -> Callable[[], list[dict[str, Any]] | None]:
    """For ``poll``: the status rows once ``pred`` holds for them."""

    def check() -> list[dict[str, Any]] | None:
        rows = run.rows()
        return rows if pred(rows) else None

    return check


def active(run: Run) -> list[str]:
    """The elements still in SLURM's queue (a killed worker's row stays, state ``-``, until
    its lease runs out)."""
    return [r["array"] for r in run.rows() if r["state"] != "-"]


def test_slurm_submit_one_array_runs_every_task_once(make_run: Callable[..., Run]) -> None:
    run = make_run(40, "forty")
    out = ok("slurm", "submit", "--db", run.db, "--workers", "3", "--idle-exit", "600",
             cwd=run.root)  # fmt: skip
    assert "3 workers in 1 sbatch submission" in out
    [job] = run.arrays()  # exactly one submission, recorded in the store
    assert f"job {job}: workers 0-2" in out
    script = run.root / "run.db.slurm" / "pilots-0.sh"  # it holds the store's URL
    assert script.stat().st_mode & 0o077 == 0 and script.parent.stat().st_mode & 0o077 == 0

    def three_busy(rows: list[dict[str, Any]]) -> bool:
        busy = [r for r in rows if r["state"] == "RUNNING" and r["worker"] and r["tasks"]]
        return len(busy) == 3

    rows = poll("3 workers each holding a task", rows_when(run, three_busy))
    # each worker tied to its array element, with its number, node and task
    assert [(r["index"], r["array"]) for r in rows] == [(i, f"{job}_{i}") for i in range(3)]
    assert all(r["node"] and len(r["tasks"]) == 1 for r in rows)
    shown = ok("slurm", "status", "--db", run.db, cwd=run.root)
    assert "1 sbatch submission" in shown
    for r in rows:
        assert f"{r['array']}" in shown and r["worker"] in shown and r["tasks"][0] in shown
    # the store's own worker rows carry the SLURM ids the workers registered
    infos = {w["worker"]: w["info"] for w in run.status()["workers"]}
    for r in rows:
        info = infos[r["worker"]]
        assert (info["slurm_array_job"], info["slurm_index"]) == (job, str(r["index"]))
        assert info["slurm_array_task"] == r["array"].split("_")[1]

    run.gate.touch()
    poll("the graph to finish", lambda: run.status()["unfinished"] == 0)
    run.finished_once(40)
    # with the graph finished the workers exit by themselves (their idle exit is 600 s)
    poll("the workers to leave the queue", lambda: run.rows() == [])
    assert run.arrays() == [job]


def test_slurm_scale_up_down_and_cancel(make_run: Callable[..., Run]) -> None:
    run = make_run(8, "scaled", chain=True)
    ok("slurm", "submit", "--db", run.db, "--workers", "1", "--max-parallel", "1",
       "--idle-exit", "600", cwd=run.root)  # fmt: skip
    [first] = run.arrays()
    poll("worker 0 holding t0", rows_when(run, lambda rows: [r["tasks"] for r in rows] == [["t0"]]))

    out = ok("slurm", "scale", "3", "--db", run.db, cwd=run.root)
    assert "2 workers in 1 sbatch submission" in out
    second = run.arrays()[1]
    # the new array goes on from worker 1; its recorded throttle (1) keeps its second pending
    want = [(f"{first}_0", "RUNNING", True), (f"{second}_0", "RUNNING", True),
            (f"{second}_1", "PENDING", False)]  # fmt: skip
    rows = poll("worker 1 joined, worker 2 pending", rows_when(run, lambda rows: [
        (r["array"], r["state"], bool(r["worker"])) for r in rows] == want))  # fmt: skip
    assert [r["index"] for r in rows] == [0, 1, 2] and rows[1]["tasks"] == []

    # down to 2: the pending element goes first; down to 1: the idle one, not the busy one
    assert ok("slurm", "scale", "2", "--db", run.db, cwd=run.root).split() == [
        "cancelled", "1:", f"{second}_1"]  # fmt: skip
    assert ok("slurm", "scale", "1", "--db", run.db, cwd=run.root).split() == [
        "cancelled", "1:", f"{second}_0"]  # fmt: skip
    poll("one element left", lambda: active(run) == [f"{first}_0"])
    assert ok("slurm", "scale", "1", "--db", run.db, cwd=run.root).strip() == (
        "1 already queued or running"
    )

    run.gate.touch()
    poll("the graph to finish", lambda: run.status()["unfinished"] == 0)
    run.finished_once(8)
    out = ok("slurm", "cancel", "--db", run.db, cwd=run.root)
    assert out.split() == ["cancelled", "2", "arrays:", first, second]


def test_slurm_cancel_stops_every_array(make_run: Callable[..., Run]) -> None:
    run = make_run(3, "cancelled")
    out = ok("slurm", "submit", "--db", run.db, "--workers", "3", "--max-array-size", "2",
             "--idle-exit", "600", cwd=run.root)  # fmt: skip
    assert "3 workers in 2 sbatch submissions" in out  # split: indices stay below the limit
    a, b = run.arrays()
    rows = poll(
        "3 workers each holding a task",
        rows_when(run, lambda rows: sum(bool(r["tasks"]) for r in rows) == 3),
    )
    assert [(r["index"], r["array"]) for r in rows] == [(0, f"{a}_0"), (1, f"{a}_1"),
                                                        (2, f"{b}_0")]  # fmt: skip
    infos = {w["worker"]: w["info"] for w in run.status()["workers"]}
    assert [infos[r["worker"]]["slurm_index"] for r in rows] == ["0", "1", "2"]

    assert ok("slurm", "cancel", "--db", run.db, cwd=run.root).split() == [
        "cancelled", "2", "arrays:", a, b]  # fmt: skip
    poll("every element to leave the queue", lambda: active(run) == [])


def _error_line(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("conveyor: error: "), out.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--partition", "no-such-partition"], "unknown partition"),
        (["--time", "soon"], "Invalid --time specification"),
        (["--gpus", "1"], "sbatch refused the job"),
        (["--time", "1:00", "--margin", "60"], "--margin 60: must be shorter than --time 1:00"),
    ],
)
def test_slurm_submit_bad_input_one_line_exit_2_nothing_submitted(
    make_run: Callable[..., Run], args: list[str], says: str
) -> None:
    run = make_run(1, "bad")
    line = _error_line(cli("slurm", "submit", "--db", run.db, "--workers", "2", *args,
                           cwd=run.root))  # fmt: skip
    assert says in line
    assert run.arrays() == []


def test_slurm_submit_without_sbatch_or_store_one_line_exit_2(tmp_path: Path) -> None:
    """No cluster needed: what is refused before SLURM is asked anything."""
    (tmp_path / "graph.json").write_text(json.dumps({"name": "g", "tasks": [{"id": "a"}]}))
    db = f"sqlite:///{tmp_path}/run.db"
    line = _error_line(cli("slurm", "submit", "--db", f"sqlite:///{tmp_path}/nope.db",
                           "--workers", "1", cwd=tmp_path))  # fmt: skip
    assert "no store there" in line
    assert not (tmp_path / "nope.db").exists()
    ok("submit", "graph.json", "--db", db, cwd=tmp_path)
    env = {**os.environ, "PATH": str(tmp_path / "empty-bin")}
    line = _error_line(cli("slurm", "submit", "--db", db, "--workers", "1", cwd=tmp_path, env=env))
    assert "sbatch not found on PATH" in line
    line = _error_line(cli("slurm", "scale", "2", "--db", db, cwd=tmp_path))
    assert "no pilot workers submitted here yet" in line


def test_slurm_submit_on_a_finished_graph_submits_nothing_exit_0(tmp_path: Path) -> None:
    """No cluster needed: a graph with nothing left to run gets no workers (they would start,
    find nothing and exit), one line saying so, exit 0 (a rerun script goes on)."""
    (tmp_path / "graph.json").write_text(json.dumps({"name": "g", "tasks": [{"id": "a"}]}))
    db = f"sqlite:///{tmp_path}/run.db"
    ok("run", "graph.json", "--db", db, "--quiet", cwd=tmp_path)
    env = {**os.environ, "PATH": str(tmp_path / "empty-bin")}  # no sbatch: none is called
    out = cli("slurm", "submit", "--db", db, "--workers", "4", cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == [
        f"conveyor: nothing to run: graph 'g' in {db} has no unfinished task; no workers submitted"
    ]
    store = open_store(db)
    try:
        assert pilots.load_record(store)[1] == []
    finally:
        store.close()


def test_slurm_signalled_workers_hand_tasks_back_and_nothing_is_lost(
    make_run: Callable[..., Run],
) -> None:
    """SIGUSR2 to the batch shell (what --signal=B:USR2@margin sends before the time limit; the
    job script execs the worker, so it gets it) and scancel's SIGTERM (scale down of a busy
    worker): each worker hands its task back (task_released, no failure); a later worker runs
    every task exactly once."""
    run = make_run(4, "signalled")
    ok("slurm", "submit", "--db", run.db, "--workers", "2", "--idle-exit", "600", cwd=run.root)
    [first] = run.arrays()
    rows = poll(
        "2 workers each holding a task",
        rows_when(run, lambda rows: sum(bool(r["tasks"]) for r in rows) == 2),
    )
    by_element = {r["array"]: r["tasks"][0] for r in rows}
    subprocess.run(["scancel", "--signal=USR2", "--batch", f"{first}_0"], check=True)
    poll("element 0 to leave", lambda: f"{first}_0" not in active(run))
    out = ok("slurm", "scale", "0", "--db", run.db, cwd=run.root)
    assert out.split() == ["cancelled", "1:", f"{first}_1"]  # busy, but the surplus
    poll("element 1 to leave", lambda: active(run) == [])

    st = run.status()
    assert st["counts"]["failed"] == 0 and st["counts"]["done"] == 0
    store = open_store(run.db)
    try:
        reasons = {
            tid: [e.get("reason") for e in store.history(tid) if e["event"] == "task_released"]
            for tid in by_element.values()
        }
    finally:
        store.close()
    assert reasons == {by_element[f"{first}_0"]: ["signal SIGUSR2"],
                       by_element[f"{first}_1"]: ["signal SIGTERM"]}  # fmt: skip

    run.gate.touch()
    assert "1 worker in 1 sbatch submission" in ok("slurm", "scale", "1", "--db", run.db,
                                                    cwd=run.root)  # fmt: skip
    poll("the graph to finish", lambda: run.status()["unfinished"] == 0)
    run.finished_once(4)


#: Spawners submit child tasks through the store from inside a SLURM worker's task.
SPAWN = """
import time
import conveyor

def leaf(tid, log):
    time.sleep(0.1)
    with open(log, "a") as f:
        f.write(tid + "\\n")
    return tid

def spawn(n, log):
    for i in range(n):
        tid = f"{conveyor.current().task_id}/{i}"
        conveyor.current().submit("jobs:leaf", tid, log, id=tid)
    return n
"""


def test_slurm_children_submitted_on_a_worker_run_depth_first_across_the_cluster(
    cluster: None, tmp_path: Path
) -> None:
    """Two spawners on two SLURM workers submit 4 children each through the store; 8 later
    roots wait. Whatever worker claims next, no root starts while a child is ready (audit
    order, stamped in each transaction), and every task runs once."""
    (tmp_path / "jobs.py").write_text(SPAWN)
    log = str(tmp_path / "runs.log")
    tasks = [{"id": f"p{i}", "fn": "jobs:spawn", "args": [4, log]} for i in range(2)]
    tasks += [{"id": f"r{i}", "fn": "jobs:leaf", "args": [f"r{i}", log]} for i in range(8)]
    (tmp_path / "graph.json").write_text(json.dumps({"name": "spawners", "tasks": tasks}))
    db = f"sqlite:///{tmp_path}/run.db"
    ok("submit", "graph.json", "--db", db, cwd=tmp_path)
    try:
        ok("slurm", "submit", "--db", db, "--workers", "2", "--idle-exit", "5", cwd=tmp_path)

        def status() -> dict[str, Any]:
            return json.loads(ok("status", "--db", db, "--json", cwd=tmp_path))  # type: ignore[no-any-return]

        poll("the graph and its children to finish",
             lambda: status()["total"] == 18 and status()["unfinished"] == 0)  # fmt: skip
    finally:
        cli("slurm", "cancel", "--db", db, cwd=tmp_path)
    events = [json.loads(ln) for ln in ok("events", "--db", db, cwd=tmp_path).splitlines()]
    children = {f"p{p}/{i}" for p in range(2) for i in range(4)}
    ran = Counter(Path(log).read_text().split())
    assert ran == Counter(children | {f"r{i}" for i in range(8)})  # each once
    workers = {e["worker"] for e in events if e["event"] == "task_started"}
    assert len(workers) == 2  # both SLURM workers took part
    ready: set[str] = set()
    started: set[str] = set()
    late = []
    for e in events:
        if e["event"] == "task_ready" and e["task"] in children:
            ready.add(e["task"])
        elif e["event"] == "task_started":
            if e["task"].startswith("r") and ready - started:
                late.append((e["task"], sorted(ready - started)))
            started.add(e["task"])
    assert ready == children
    assert late == [], f"roots started while children were ready: {late}"
