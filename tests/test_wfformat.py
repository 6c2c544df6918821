"""WfCommons WfFormat files read directly: real instances of schema 1.3, 1.4 and 1.5 give the
same graph as the simplified traces, both ends of a dependency count, bad files are one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conveyor.errors import GraphError
from conveyor.graphfile import graph_from_dict, load_graph

DATA = Path(__file__).resolve().parent / "data"
WF = DATA / "wfformat"
CLI = [sys.executable, "-m", "conveyor.cli"]


def facts(path: Path) -> dict[str, tuple[frozenset[str], float | None]]:
    spec = load_graph(path)
    return {t.id: (frozenset(t.deps), t.runtime_s) for t in spec.tasks}


@pytest.mark.parametrize(
    ("wfformat", "simplified"),
    [
        ("cycles-1l-1c-9p-v1.3.json", "cycles-chameleon-1l-1c-9p-001.json"),
        ("cycles-1l-1c-9p-v1.4.json", "cycles-chameleon-1l-1c-9p-001.json"),
        ("helloworld-forkjoin-10-v1.5.json", "helloworld-forkjoin-10-chameleon.json"),
    ],
)
def test_real_instances_match_the_simplified_traces(wfformat: str, simplified: str) -> None:
    got = facts(WF / wfformat)
    want = facts(DATA / "workflows" / simplified)
    assert got == want
    assert len(got) in (67, 10)
    assert any(deps for deps, _ in got.values())


def test_a_wfformat_graph_is_structure_only_with_its_runtimes() -> None:
    spec = load_graph(WF / "helloworld-forkjoin-10-v1.5.json")
    assert spec.structure_only
    assert spec.name == "helloworld-forkjoin-10-v1.5"
    assert spec.meta["source"].startswith("WfFormat 1.5")
    assert spec.tasks[0].runtime_s == pytest.approx(102.042, abs=50)  # a measured runtime


def v15(tasks: list[dict[str, Any]], execution: list[dict[str, Any]] | None = None) -> dict:
    wf: dict[str, Any] = {"specification": {"tasks": tasks, "files": []}}
    if execution is not None:
        wf["execution"] = {"makespanInSeconds": 1, "executedAt": "x", "tasks": execution}
    return {"name": "w", "schemaVersion": "1.5", "workflow": wf}


def test_dependencies_declared_on_either_end_are_merged() -> None:
    data = v15(
        [
            {"name": "a", "id": "a", "children": ["b"], "parents": []},
            {"name": "b", "id": "b", "children": [], "parents": []},
            {"name": "c", "id": "c", "children": [], "parents": ["a", "b"]},
        ],
        [{"id": "a", "runtimeInSeconds": 2.5, "coreCount": 4}, {"id": "c", "runtimeInSeconds": 1}],
    )
    spec = graph_from_dict(data)
    deps = {t.id: t.deps for t in spec.tasks}
    assert deps == {"a": (), "b": ("a",), "c": ("a", "b")}
    assert [t.runtime_s for t in spec.tasks] == [2.5, None, 1]


def test_without_declared_dependencies_files_give_them() -> None:
    data = {
        "schemaVersion": "1.4",
        "workflow": {
            "tasks": [
                {"name": "make", "runtimeInSeconds": 1,
                 "files": [{"link": "output", "name": "x.dat", "sizeInBytes": 1}]},
                {"name": "use", "runtimeInSeconds": 2,
                 "files": [{"link": "input", "name": "x.dat", "sizeInBytes": 1}]},
            ]
        },
    }  # fmt: skip
    spec = graph_from_dict(data)
    assert [t.deps for t in spec.tasks] == [(), ("make",)]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"schemaVersion": "9.9", "workflow": {}}, "schemaVersion '9.9' is not one"),
        ({"schemaVersion": "1.4", "workflow": {}}, "has no 'specification', 'tasks' or 'jobs'"),
        (v15([{"id": "a", "parents": ["ghost"]}]), "ghost"),
        (v15([{"id": "a"}], [{"id": "a", "runtimeInSeconds": -1}]), "expected a number >= 0"),
        (v15([{"id": "a"}], [{"id": "b", "runtimeInSeconds": 1}]), "no task of that id"),
        (v15([{"name": "x"}]), "field 'id' must be a non-empty string"),
        (v15([{"id": "a", "parents": ["b"]}, {"id": "b", "parents": ["a"]}]), "cycle"),
    ],
)
def test_bad_wfformat_is_one_clear_error(data: dict[str, Any], message: str) -> None:
    with pytest.raises(GraphError, match=message.replace("(", r"\(").replace("'", "'")):
        graph_from_dict(data)


def test_cli_runs_graphs_and_refuses_a_bad_file_in_one_line(tmp_path: Path) -> None:
    ok = subprocess.run([*CLI, "run", str(WF / "cycles-1l-1c-9p-v1.3.json"), "--quiet"],
                        capture_output=True, text=True, timeout=60)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    db = f"sqlite:///{tmp_path / 'wf.db'}"
    sub = subprocess.run([*CLI, "submit", str(WF / "helloworld-forkjoin-10-v1.5.json"), "--db", db],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert sub.returncode == 0 and "10 new tasks" in sub.stderr + sub.stdout, sub.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(v15([{"id": "a", "parents": ["ghost"]}])))
    for command in (["run"], ["graph"], ["simulate"], ["submit", "--db", db]):
        out = subprocess.run([*CLI, *command, str(bad)], capture_output=True, text=True,
                             timeout=60)  # fmt: skip
        assert out.returncode == 2, (command, out.stderr)
        assert out.stderr.count("\n") == 1 and "ghost" in out.stderr, out.stderr


def test_speed_replays_runtimes_as_sleeps() -> None:
    from conveyor.cli.run import sleeping

    spec = sleeping(load_graph(WF / "helloworld-forkjoin-10-v1.5.json"), 4.0)
    first = spec.tasks[0]
    assert first.fn == "time:sleep"
    assert first.args == (first.runtime_s / 4.0,)
    assert not spec.structure_only
    out = subprocess.run([*CLI, "run", str(WF / "helloworld-forkjoin-10-v1.5.json"), "--quiet",
                          "--speed", "20000", "-w", "8"], capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
