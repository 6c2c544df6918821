"""Incremental runs (issue 7): a second run of the same graph against a durable store runs only
what changed and its downstream. Real stores, real files, the real CLI in fresh processes (so
an edited module is imported anew), and ``conveyor.run(..., db=...)``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conveyor.fingerprints import open_graph, plan_graph
from conveyor.graphfile import graph_from_dict
from conveyor.model import TaskState
from conveyor.store.urls import open_store

STEPS = """
from pathlib import Path


def load(path):
    return Path(path).read_text().strip()


def clean(factor, text):
    return helper(text) * factor


def helper(text):
    return text.upper()


def report(text):
    Path("report.txt").write_text(str(text))
    return len(str(text))


def other():
    return 1


def side():
    return 2
"""


def graph(factor: int = 2) -> dict[str, Any]:
    return {
        "name": "inc",
        "tasks": [
            {"id": "load", "fn": "steps:load", "args": ["data.txt"], "inputs": ["data.txt"]},
            {"id": "clean", "fn": "steps:clean", "args": [factor, {"__ref__": "load"}],
             "deps": ["load"]},
            {"id": "report", "fn": "steps:report", "args": [{"__ref__": "clean"}],
             "deps": ["clean"], "outputs": ["report.txt"]},
            {"id": "other", "fn": "steps:other"},
            {"id": "side", "fn": "steps:side", "deps": ["other"]},
        ],
    }  # fmt: skip


class Project:
    """A graph file, its module and its input in a directory; runs the CLI there."""

    def __init__(self, root: Path, db: str) -> None:
        self.root = root
        self.db = db
        self.runs = 0
        (root / "steps.py").write_text(STEPS)
        (root / "data.txt").write_text("hello\n")
        self.write_graph(graph())

    def write_graph(self, g: dict[str, Any]) -> None:
        (self.root / "inc.json").write_text(json.dumps(g))

    def edit(self, old: str, new: str) -> None:
        p = self.root / "steps.py"
        text = p.read_text()
        assert old in text
        p.write_text(text.replace(old, new))

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.run(
            [sys.executable, "-m", "conveyor.cli", *args], cwd=self.root, env=env,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc

    def run(self, *extra: str) -> list[str]:
        """``conveyor run`` in a fresh process; the tasks it started, in order."""
        self.runs += 1
        events = self.root / f"events{self.runs}.jsonl"
        self.cli("run", "inc.json", "--db", self.db, "--events", str(events), "-q", *extra)
        return started(events)

    def plan(self) -> dict[str, Any]:
        out = self.cli("plan", "inc.json", "--db", self.db, "--json").stdout
        plan = json.loads(out)
        text = self.cli("plan", "inc.json", "--db", self.db).stdout
        assert f"plan: {plan['summary']['run']} to run" in text
        return {t["task"]: t for t in plan["tasks"] if t["action"] == "run"}


def started(events: Path) -> list[str]:
    if not events.exists():
        return []
    rows = [json.loads(line) for line in events.read_text().splitlines()]
    return [r["task"] for r in rows if r["event"] == "task_started"]


@pytest.fixture(params=["sqlite", "postgres"])
def project(request: pytest.FixtureRequest, tmp_path: Path) -> Project:
    if request.param == "sqlite":
        db = f"sqlite:///{tmp_path}/run.db"
    else:
        db = str(request.getfixturevalue("pg_url"))
    p = Project(tmp_path, db)
    assert sorted(p.run()) == ["clean", "load", "other", "report", "side"]
    return p


def test_identical_second_run_executes_nothing(project: Project) -> None:
    assert project.plan() == {}
    assert project.run() == []
    text = project.cli("plan", "inc.json", "--db", project.db).stdout
    assert "plan: 0 to run, 5 reused" in text


def test_changed_function_body_reruns_it_and_its_downstream_only(project: Project) -> None:
    project.edit("return text.upper()", "return text.lower()")  # helper, called by clean
    plan = project.plan()
    assert plan["clean"]["reason"] == "code_changed"
    assert plan["report"]["reason"] == "upstream_changed"
    assert plan["report"]["parents"] == ["clean"]
    assert set(plan) == {"clean", "report"}
    assert project.run() == ["clean", "report"]
    assert (project.root / "report.txt").read_text() == "hellohello"
    assert project.run() == []  # and then it is settled


def test_changed_argument_reruns_it_and_its_downstream_only(project: Project) -> None:
    project.write_graph(graph(factor=3))
    plan = project.plan()
    assert {k: v["reason"] for k, v in plan.items()} == {
        "clean": "args_changed", "report": "upstream_changed",
    }  # fmt: skip
    assert project.run() == ["clean", "report"]
    assert (project.root / "report.txt").read_text() == "HELLO" * 3


def test_touched_input_reruns_nothing_changed_content_reruns(project: Project) -> None:
    data = project.root / "data.txt"
    st = data.stat()
    os.utime(data, ns=(st.st_atime_ns + 5_000_000_000, st.st_mtime_ns + 5_000_000_000))
    assert project.plan() == {}
    assert project.run() == []
    data.write_text("bye\n")
    plan = project.plan()
    assert plan["load"]["reason"] == "input_file_changed"
    assert plan["load"]["files"] == ["data.txt"]
    assert set(plan) == {"load", "clean", "report"}
    assert project.run() == ["load", "clean", "report"]
    assert (project.root / "report.txt").read_text() == "BYEBYE"


def test_deleted_output_reruns_that_task(project: Project) -> None:
    (project.root / "report.txt").unlink()
    plan = project.plan()
    assert {k: v["reason"] for k, v in plan.items()} == {"report": "output_missing"}
    assert plan["report"]["files"] == ["report.txt"]
    assert project.run() == ["report"]
    assert (project.root / "report.txt").exists()


def test_no_fingerprints_runs_only_unfinished(project: Project) -> None:
    project.edit("return text.upper()", "return text.lower()")
    assert project.run("--no-fingerprints") == []
    assert (project.root / "report.txt").read_text() == "HELLOHELLO"
    # Fingerprints back on: the edit is seen now.
    assert project.run() == ["clean", "report"]


def test_new_task_runs_and_cache_false_always_reruns_alone(project: Project) -> None:
    g = graph()
    g["tasks"].append({"id": "extra", "fn": "steps:side", "deps": ["clean"]})
    g["tasks"][3]["cache"] = False  # other: side effects, runs every time
    project.write_graph(g)
    plan = project.plan()
    assert {k: v["reason"] for k, v in plan.items()} == {"extra": "new", "other": "never_cached"}
    assert sorted(project.run()) == ["extra", "other"]  # side's fingerprint did not change
    assert project.run() == ["other"]


def test_version_replaces_the_source_hash(project: Project) -> None:
    g = graph()
    g["tasks"][4]["version"] = "1"
    project.write_graph(g)
    assert project.run() == ["side"]  # code identity is now the version
    project.edit("return 2", "return 3")
    assert project.run() == []  # same version: the body is not looked at
    g["tasks"][4]["version"] = "2"
    project.write_graph(g)
    assert project.plan()["side"]["reason"] == "code_changed"
    assert project.run() == ["side"]


def test_submit_then_two_workers_never_rerun_a_task_twice(project: Project) -> None:
    g = graph()
    for i in range(40):
        g["tasks"].append({"id": f"w{i}", "fn": "steps:clean", "args": [i, "x"],
                           "deps": ["other"]})  # fmt: skip
    project.write_graph(g)
    project.cli("submit", "inc.json", "--db", project.db)
    project.cli("worker", "--db", project.db, "--quiet", "--idle-exit", "1")
    project.edit("return 1", "return 10")  # other: itself and its 41 children run again
    out = project.cli("submit", "inc.json", "--db", project.db).stderr
    assert "resumed" in out
    status = json.loads(project.cli("status", "--db", project.db, "--json").stdout)
    assert status["counts"]["invalidated"] == 41 and status["counts"]["ready"] == 1
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "conveyor.cli", "worker", "--db", project.db, "--quiet",
           "--workers", "2", "--idle-exit", "2"]  # fmt: skip
    procs = [
        subprocess.Popen([*cmd, "--events", f"w{k}.jsonl"], cwd=project.root, env=env)
        for k in range(2)
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0
    runs = Counter(started(project.root / "w0.jsonl") + started(project.root / "w1.jsonl"))
    assert set(runs) == {"other", "side", *(f"w{i}" for i in range(40))}
    assert max(runs.values()) == 1
    assert project.plan() == {}


def test_python_api_reruns_what_changed(tmp_path: Path) -> None:
    """``conveyor.run(graph, db=...)`` in fresh interpreters, with ``fingerprints=False``."""
    (tmp_path / "steps.py").write_text(STEPS)
    (tmp_path / "data.txt").write_text("hello\n")
    script = textwrap.dedent(f"""
        import json, sys
        import conveyor
        from conveyor.graphfile import graph_from_dict
        spec = graph_from_dict(json.loads({json.dumps(json.dumps(graph()))}))
        res = conveyor.run(spec, db="sqlite:///{tmp_path}/api.db", events=sys.argv[1],
                           fingerprints=sys.argv[2] == "1")
        assert res.ok, res
    """)
    (tmp_path / "main.py").write_text(script)

    def run(n: int, fingerprints: bool = True) -> list[str]:
        events = tmp_path / f"api{n}.jsonl"
        subprocess.run([sys.executable, "main.py", str(events), "1" if fingerprints else "0"],
                       cwd=tmp_path, check=True, timeout=120)  # fmt: skip
        return started(events)

    assert len(run(1)) == 5
    assert run(2) == []
    (tmp_path / "steps.py").write_text(STEPS.replace("return 2", "return 20"))
    assert run(3, fingerprints=False) == []
    assert run(4) == ["side"]


# -- the store directly: invalidation states, fencing, failures --------------------------------
def _spec(args_b: int = 1, fn: str = "json:dumps") -> Any:
    return graph_from_dict({
        "name": "s",
        "tasks": [
            {"id": "a", "fn": fn, "args": [1]},
            {"id": "b", "fn": fn, "args": [args_b], "deps": ["a"]},
            {"id": "c", "fn": fn, "args": [0], "deps": ["b"]},
            {"id": "d", "deps": ["c"]},
        ],
    })  # fmt: skip


def _drain(store: Any, worker: str = "w") -> list[str]:
    out = []
    now = time.time()
    while True:
        got = store.claim(worker, 1, now, 30.0)
        if not got:
            return out
        for c in got:
            if c.id != "d":  # d is a no-op: completed within the claim
                out.append(c.id)
            assert store.complete(c, c.id, now)


@pytest.fixture(params=["sqlite", "postgres"])
def durable_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/s.db"
    return str(request.getfixturevalue("pg_url"))


def test_invalidated_tasks_wait_for_their_parents(durable_url: str) -> None:
    store = open_store(durable_url)
    try:
        open_graph(store, _spec(), time.time())
        assert _drain(store) == ["a", "b", "c"]
        events: list[dict[str, Any]] = []
        store.emit = events.append
        opened = open_graph(store, _spec(args_b=2), time.time())
        assert opened.resumed and opened.added == 0 and opened.unfinished == 3
        counts = store.counts()
        assert counts["ready"] == 1 and counts["invalidated"] == 2 and counts["done"] == 1
        inv = {e["task"]: e for e in events if e["event"] == "task_invalidated"}
        assert inv["b"]["reason"] == "args_changed"
        assert inv["c"]["reason"] == "upstream_changed" and inv["c"]["parents"] == ["b"]
        assert inv["d"]["old_fingerprint"] != inv["d"]["new_fingerprint"]
        assert store.result("a").value == "a"  # reused: its stored result stays
        assert _drain(store) == ["b", "c"]
        assert store.result("d").state is TaskState.DONE
        assert [d.task for d in plan_graph(store, _spec(args_b=2)) if d.action == "run"] == []
    finally:
        store.close()


def test_running_task_whose_fingerprint_changed_is_fenced(durable_url: str) -> None:
    store = open_store(durable_url)
    try:
        open_graph(store, _spec(), time.time())
        (claim,) = store.claim("w", 1, time.time(), 30.0)
        assert claim.id == "a"
        open_graph(store, _spec(fn="json:loads"), time.time())  # a's code changed meanwhile
        assert store.complete(claim, "stale", time.time()) is False  # the old attempt
        assert _drain(store, "w2") == ["a", "b", "c"]
        assert store.result("a").attempt == 1
    finally:
        store.close()


def test_failed_task_runs_again_on_resubmit(durable_url: str) -> None:
    store = open_store(durable_url)
    try:
        open_graph(store, _spec(), time.time())
        (claim,) = store.claim("w", 1, time.time(), 30.0)
        assert store.fail(claim, "boom", time.time(), None)
        assert store.counts()["skipped"] == 3
        plan = {d.task: d.reason for d in plan_graph(store, _spec()) if d.action == "run"}
        assert plan == {"a": "failed_before", "b": "failed_before", "c": "failed_before",
                        "d": "failed_before"}  # fmt: skip
        open_graph(store, _spec(), time.time())
        assert _drain(store) == ["a", "b", "c"]
        assert store.unfinished() == 0
    finally:
        store.close()


def test_store_of_schema_1_migrates_and_adopts_done_tasks(tmp_path: Path) -> None:
    """A store of schema 1 migrates; tasks done without fingerprints are adopted, not re-run."""
    import sqlite3

    from conveyor.store.sqlite import SqliteIo
    from conveyor.store.sqlqueries import load_migrations

    conn = sqlite3.connect(tmp_path / "old.db")
    for stmt in load_migrations("sqlite", SqliteIo.types)[0][1]:
        conn.execute(stmt)
    conn.execute("INSERT INTO schema_version (version) VALUES (1)")
    conn.commit()
    conn.close()
    store = open_store(f"sqlite:///{tmp_path}/old.db")  # migrates to the latest schema
    try:
        open_graph(store, _spec(), time.time())  # no fingerprints
        _drain(store)
        assert [d.reason for d in plan_graph(store, _spec())] == ["unchanged"] * 4
        open_graph(store, _spec(), time.time())
        assert store.unfinished() == 0
        open_graph(store, _spec(args_b=5), time.time())  # adopted fingerprints now compare
        assert _drain(store) == ["b", "c"]
    finally:
        store.close()
