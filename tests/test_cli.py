"""The real ``conveyor`` command as a subprocess: run, graph, bad input, progress, Ctrl-C."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sigint import interrupt_when

CLI = [sys.executable, "-m", "conveyor.cli"]
MODULE = """
X = 42


def double(x):
    return 2 * x


def boom():
    raise ValueError("kaboom")
"""


def conveyor(*args: str | Path, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def write_graph(tmp_path: Path, graph: Any, name: str = "graph.json") -> Path:
    (tmp_path / "mymod.py").write_text(MODULE)
    path = tmp_path / name
    path.write_text(graph if isinstance(graph, str) else json.dumps(graph))
    return path


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# -- run --
def test_cli_run_graph_with_events_exit_zero(tmp_path: Path) -> None:
    graph = {
        "tasks": [
            {"id": "a", "cmd": "echo hi"},
            {"id": "b", "fn": "mymod:double", "args": [21], "deps": ["a"]},
            *({"id": f"n{i}", "deps": ["b"]} for i in range(20)),
            {"id": "end", "deps": [f"n{i}" for i in range(20)]},
        ]
    }
    path = write_graph(tmp_path, graph)
    events = tmp_path / "events.jsonl"
    out = conveyor("run", path, "--workers", "8", "--events", events, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    evs = read_events(events)
    started = [e for e in evs if e["event"] == "task_started"]
    finished = [e for e in evs if e["event"] == "task_finished"]
    assert sorted(e["task"] for e in started) == sorted(t["id"] for t in graph["tasks"])
    assert sorted(e["task"] for e in finished) == sorted(t["id"] for t in graph["tasks"])
    for e in started + finished:
        assert {"ts", "event", "task", "worker", "attempt"} <= set(e), e
        assert isinstance(e["ts"], float) and e["attempt"] == 1 and e["worker"]
    index = {(e["event"], e["task"]): k for k, e in enumerate(evs)}
    assert index[("task_finished", "b")] < index[("task_started", "n0")]
    assert "22" not in out.stdout  # results are not printed; the summary goes to stderr
    assert "23 done" in out.stderr


def test_cli_run_failing_task_exit_one_with_summary(tmp_path: Path) -> None:
    graph = {
        "tasks": [
            {"id": "bad", "fn": "mymod:boom"},
            {"id": "after", "deps": ["bad"]},
            {"id": "fine", "cmd": "true"},
        ]
    }
    path = write_graph(tmp_path, graph)
    events = tmp_path / "e.jsonl"
    out = conveyor("run", path, "--events", events, cwd=tmp_path)
    assert out.returncode == 1
    assert "1 failed" in out.stderr and "1 skipped" in out.stderr
    assert "kaboom" in out.stderr
    kinds = {(e["event"], e["task"]) for e in read_events(events)}
    assert ("task_failed", "bad") in kinds
    assert ("task_skipped", "after") in kinds
    assert ("task_finished", "fine") in kinds


def test_cli_run_yaml_graph_file_works(tmp_path: Path) -> None:
    path = write_graph(
        tmp_path,
        "tasks:\n  - id: a\n    cmd: echo yaml\n  - id: b\n    fn: mymod:double\n"
        "    args: [2]\n    deps: [a]\n",
        name="graph.yaml",
    )
    events = tmp_path / "e.jsonl"
    out = conveyor("run", path, "--events", events, "--quiet", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert [e["task"] for e in read_events(events) if e["event"] == "task_finished"] == ["a", "b"]


def test_cli_run_bad_usage_exit_two(tmp_path: Path) -> None:
    path = write_graph(tmp_path, {"tasks": [{"id": "a"}]})
    out = conveyor("run", path, "--workers", "0", cwd=tmp_path)
    assert out.returncode == 2


# -- bad input --
MARK = {"id": "mark", "cmd": "touch ran.txt"}
BAD_GRAPHS = {
    "cycle": (
        {
            "tasks": [
                MARK,
                {"id": "x", "deps": ["z"]},
                {"id": "y", "deps": ["x"]},
                {"id": "z", "deps": ["y"]},
            ]
        },
        ["cycle", "x", "y", "z"],
    ),
    "unknown_dep": ({"tasks": [MARK, {"id": "a", "deps": ["ghost"]}]}, ["ghost"]),
    "duplicate_id": ({"tasks": [MARK, {"id": "a"}, {"id": "a"}]}, ["duplicate", "'a'"]),
    "unknown_task_key": ({"tasks": [MARK, {"id": "a", "colour": "red"}]}, ["colour"]),
    "unknown_graph_key": ({"tasks": [MARK], "extra": 1}, ["extra"]),
    "fn_not_importable": (
        {"tasks": [MARK, {"id": "a", "fn": "no_such_mod_xyz:f"}]},
        ["no_such_mod_xyz"],
    ),
    "fn_missing_attr": ({"tasks": [MARK, {"id": "a", "fn": "mymod:nope"}]}, ["nope"]),
    "fn_not_callable": ({"tasks": [MARK, {"id": "a", "fn": "mymod:X"}]}, ["not callable"]),
    "fn_and_cmd": ({"tasks": [MARK, {"id": "a", "fn": "mymod:double", "cmd": "true"}]}, ["'a'"]),
    "malformed_json": ('{"tasks": [ {"id": "mark", "cmd": "touch ran.txt"} ', ["JSON"]),
    "tasks_not_list": ({"tasks": {"id": "a"}}, ["tasks"]),
    "bad_retries": ({"tasks": [MARK, {"id": "a", "retries": -1}]}, ["retries"]),
}


@pytest.mark.parametrize("case", sorted(BAD_GRAPHS))
def test_cli_run_bad_graph_one_line_error_exit_two_nothing_run(tmp_path: Path, case: str) -> None:
    graph, words = BAD_GRAPHS[case]
    path = write_graph(tmp_path, graph)
    events = tmp_path / "e.jsonl"
    out = conveyor("run", path, "--events", events, cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("conveyor: error:")
    assert "Traceback" not in out.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert not (tmp_path / "ran.txt").exists()
    assert not [e for e in read_events(events) if e["event"] == "task_started"]


def test_cli_run_yaml_args_not_json_exit_two(tmp_path: Path) -> None:
    path = write_graph(
        tmp_path,
        "tasks:\n  - id: mark\n    cmd: touch ran.txt\n  - id: a\n    fn: mymod:double\n"
        "    args: [2024-01-31]\n",
        name="g.yaml",
    )
    out = conveyor("run", path, cwd=tmp_path)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "JSON" in out.stderr
    assert not (tmp_path / "ran.txt").exists()


def test_cli_run_missing_file_exit_two(tmp_path: Path) -> None:
    out = conveyor("run", tmp_path / "nope.json", cwd=tmp_path)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("command", ["run", "worker"])
def test_cli_events_file_that_cannot_be_opened_one_line_exit_two(
    tmp_path: Path, command: str
) -> None:
    path = write_graph(tmp_path, {"tasks": [MARK]})
    db = f"sqlite:///{tmp_path}/run.db"
    assert conveyor("submit", path, "--db", db, cwd=tmp_path).returncode == 0
    target = [path] if command == "run" else []
    out = conveyor(command, *target, "--db", db, "--events", tmp_path / "no" / "e.jsonl",
                   cwd=tmp_path)  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stderr.splitlines() == [f"conveyor: error: {tmp_path / 'no' / 'e.jsonl'}: "
                                       "No such file or directory"]  # fmt: skip
    assert not (tmp_path / "ran.txt").exists()


# -- graph --
DIAMOND = {
    "tasks": [
        {"id": "a", "runtime_s": 1},
        {"id": "b", "deps": ["a"], "runtime_s": 5},
        {"id": "c", "deps": ["a"], "runtime_s": 2},
        {"id": "d", "deps": ["c"], "runtime_s": 1},
        {"id": "e", "deps": ["b", "d"], "runtime_s": 1},
    ]
}


def test_cli_graph_prints_counts_depth_critical_path(tmp_path: Path) -> None:
    path = write_graph(tmp_path, DIAMOND)
    out = conveyor("graph", path, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "tasks 5, edges 5, roots 1, leaves 1" in text
    assert "depth 4 levels" in text
    assert "a -> c -> d -> e" in text  # by task count
    assert "a -> b -> e" in text  # by runtime_s: 7 s
    assert "7.0s" in text


def test_cli_graph_json_reports_facts(tmp_path: Path) -> None:
    path = write_graph(tmp_path, DIAMOND)
    out = conveyor("graph", path, "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    facts = json.loads(out.stdout)
    assert facts["tasks"] == 5 and facts["edges"] == 5 and facts["depth"] == 4
    assert facts["critical_path"] == ["a", "c", "d", "e"]
    assert facts["critical_path_runtime"] == ["a", "b", "e"]
    assert facts["critical_runtime_s"] == 7.0 and facts["total_runtime_s"] == 10.0


def test_cli_graph_mermaid_lists_nodes_and_edges(tmp_path: Path) -> None:
    path = write_graph(tmp_path, DIAMOND)
    out = conveyor("graph", path, "--mermaid", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("flowchart")
    assert sum("-->" in line for line in lines) == 5
    assert all(f'["{t}"]' in out.stdout for t in "abcde")


def test_cli_graph_cycle_exit_two(tmp_path: Path) -> None:
    path = write_graph(tmp_path, {"tasks": [{"id": "a", "deps": ["a"]}]})
    out = conveyor("graph", path, cwd=tmp_path)
    assert out.returncode == 2 and "cycle" in out.stderr


# -- progress --
def test_cli_run_not_a_tty_prints_plain_progress_lines(tmp_path: Path) -> None:
    path = write_graph(tmp_path, {"tasks": [{"id": f"t{i}"} for i in range(10)]})
    out = conveyor("run", path, cwd=tmp_path)
    assert out.returncode == 0
    progress = [line for line in out.stderr.splitlines() if line.startswith("[conveyor]")]
    assert progress and "10/10 finished" in progress[-1]
    assert "\x1b[" not in out.stderr  # no terminal control codes off a TTY


def test_cli_run_quiet_prints_nothing(tmp_path: Path) -> None:
    path = write_graph(tmp_path, {"tasks": [{"id": f"t{i}"} for i in range(10)]})
    out = conveyor("run", path, "--quiet", cwd=tmp_path)
    assert out.returncode == 0
    assert out.stderr == "" and out.stdout == ""


# -- Ctrl-C --
@pytest.mark.skipif(os.name != "posix", reason="SIGINT to a child process")
def test_cli_run_sigint_exits_130_with_summary(tmp_path: Path) -> None:
    graph = {
        "tasks": [{"id": f"slow{i}", "cmd": "sleep 60"} for i in range(4)]
        + [{"id": "after", "deps": ["slow0"]}]
    }
    path = write_graph(tmp_path, graph)
    events = tmp_path / "e.jsonl"
    code, _, stderr = interrupt_when(
        [*CLI, "run", str(path), "--workers", "2", "--events", str(events)],
        tmp_path,
        lambda: any(e["event"] == "task_started" for e in read_events(events)),
        what="a task_started event",
    )
    assert code == 130, stderr
    assert "interrupted" in stderr
    assert "0 done" in stderr
    evs = read_events(events)
    assert not [e for e in evs if e["event"] == "task_started" and e["task"] == "after"]


def test_run_fail_fast_summary_counts_what_it_cancelled(tmp_path: Path) -> None:
    tasks = [{"id": "bad", "cmd": "exit 3"},
             {"id": "later", "cmd": "echo later", "deps": ["bad"]},
             {"id": "other", "cmd": "echo other", "band": "batch"}]  # fmt: skip
    graph = {"name": "ff", "tasks": tasks}
    write_graph(tmp_path, graph)
    out = conveyor("run", "graph.json", "--fail-fast", "--workers", "1", cwd=tmp_path)
    assert out.returncode == 1, out.stderr
    lines = out.stderr.splitlines()
    summary = next(line for line in lines if line.startswith("conveyor: "))
    assert summary.startswith("conveyor: 0 done, 1 failed, 1 skipped, 1 cancelled in "), summary
    last_progress = [line for line in lines if line.startswith("[conveyor] ")][-1]
    assert "failed 1, skipped 1, cancelled 1)" in last_progress, last_progress


PARENT_MODULE = """
import time

import conveyor


def parent(n):
    handles = [conveyor.current().submit(child, i) for i in range(n)]
    return sum(h.result() for h in handles)


def child(i):
    time.sleep(0.3)
    return i
"""


def test_run_sigint_while_a_parent_waits_for_its_children_stops(tmp_path: Path) -> None:
    (tmp_path / "kids.py").write_text(PARENT_MODULE)
    graph = {"name": "kids", "tasks": [{"id": "p", "fn": "kids:parent", "args": [20]},
                                       {"id": "z", "deps": ["p"]}]}  # fmt: skip
    path = write_graph(tmp_path, graph)
    events = tmp_path / "ev.jsonl"
    code, _, stderr = interrupt_when(
        [*CLI, "run", str(path), "--workers", "2", "--events", str(events)],
        tmp_path,
        lambda: any(
            e["event"] == "task_finished" and e["task"] != "p" for e in read_events(events)
        ),
        what="a child finishing",
    )  # a hang here (the parent waiting for children that never start) times out
    assert code == 130, stderr
    assert "(interrupted)" in stderr and "Traceback" not in stderr
    cancelled = [e for e in read_events(events) if e["event"] == "task_cancelled"]
    assert cancelled and all(e["reason"] == "interrupted" for e in cancelled)
    # the parent did not fail: its wait was cut by Ctrl-C, so it is cancelled with the rest
    assert "p" in {e["task"] for e in cancelled}
    assert not [e for e in read_events(events) if e["event"] == "task_failed"]
