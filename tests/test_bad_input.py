"""Bad input through the real ``conveyor`` command (a subprocess): malformed graph files, bad
option values, mistyped store paths and damaged stores each end in exit 2 with exactly one
line on stderr that names what is wrong (the file, the task id and the field), before anything
runs and without creating anything. Each case gave a traceback, hung, ran or exited 0 before
the graph file was checked against ``conveyor.schema``."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CLI = [sys.executable, "-m", "conveyor.cli"]
#: Generous for a loaded machine: a case that hangs (reading stdin, waiting forever) fails.
TIMEOUT_S = 60
DEEP = 100_000


@pytest.fixture
def open_stdin() -> Iterator[int]:
    """A stdin that never ends (its writer stays open), as a terminal's: reading it hangs."""
    read, write = os.pipe()
    yield read
    os.close(read)
    os.close(write)


def conveyor(*args: str | Path, cwd: Path, stdin: int | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *map(str, args)], cwd=cwd, stdin=stdin, capture_output=True, text=True,
        timeout=TIMEOUT_S,
    )  # fmt: skip


def one_line_error(out: subprocess.CompletedProcess, *words: str) -> str:
    """The single ``conveyor: error:`` line of a run that exited 2, holding every word."""
    lines = out.stderr.splitlines()
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert len(lines) == 1, out.stderr[-2000:]
    line = lines[0]
    assert line.startswith("conveyor: error: "), line
    for w in words:
        assert w in line, (w, line)
    return line


def task(**fields: Any) -> dict[str, Any]:
    return {"tasks": [{"id": "a", **fields}]}


# -- graph files -----------------------------------------------------------------------------
#: (case, file content: a graph (written as JSON) or the file's exact text/bytes, words).
GRAPH_CASES: list[tuple[str, Any, list[str]]] = [
    # fields of the wrong type (each gave a traceback, or ran with junk)
    ("resources-string", task(resources="cpu"), ["'a'", "'resources'"]),
    ("resources-int", task(resources=3), ["'a'", "'resources'"]),
    ("resources-list", task(resources=["cpu"]), ["'a'", "'resources'"]),
    ("resources-value-string", task(resources={"cpu": "1"}), ["'a'", "'resources.cpu'"]),
    ("resources-bool", task(resources={"gpu": True}), ["'a'", "'resources.gpu'"]),
    ("endpoint-int", task(endpoint=5), ["'a'", "'endpoint'"]),
    ("endpoint-dict", task(endpoint={"x": 1}), ["'a'", "'endpoint'"]),
    ("endpoint-malformed", task(cmd="true", endpoint="fake/ep"),
     ["'a'", "'endpoint'", "provider/model/domain"]),
    ("gang-list", task(gang=["g"]), ["'a'", "'gang'"]),
    ("env-string", task(cmd="true", env="X=1"), ["'a'", "'env'"]),
    ("env-value-int", task(cmd="true", env={"X": 1}), ["'a'", "'env.X'"]),
    ("inputs-string", task(cmd="true", inputs="abc"), ["'a'", "'inputs'"]),
    ("inputs-stdin", task(cmd="true", inputs=[0]), ["'a'", "'inputs[0]'"]),
    ("inputs-stdout", task(cmd="true", inputs=[1]), ["'a'", "'inputs[0]'"]),
    ("inputs-directory", task(cmd="true", inputs=["."]), ["'a'", "'inputs[0]'", "directory"]),
    ("outputs-int", task(cmd="true", outputs=[2]), ["'a'", "'outputs[0]'"]),
    ("retries-true", task(retries=True), ["'a'", "'retries'"]),
    ("retries-negative", task(retries=-1), ["'a'", "'retries'"]),
    ("retries-float", task(retries=1.5), ["'a'", "'retries'"]),
    ("retries-huge", task(cmd="true", retries=10**30), ["'a'", "'retries'"]),
    ("cache-string", task(cache="no"), ["'a'", "'cache'"]),
    ("cache-int", task(cache=0), ["'a'", "'cache'"]),
    ("group-dict", task(group={"name": "x"}), ["'a'", "'group'"]),
    ("group-empty", task(group=""), ["'a'", "'group'"]),
    ("timeout-zero", task(cmd="true", timeout_s=0), ["'a'", "'timeout_s'"]),
    ("timeout-huge", task(cmd="true", timeout_s=1e300), ["'a'", "'timeout_s'"]),
    ("timeout-string", task(cmd="true", timeout_s="60"), ["'a'", "'timeout_s'"]),
    ("cmd-empty-list", task(cmd=[]), ["'a'", "'cmd'"]),
    ("cmd-int", task(cmd=5), ["'a'", "'cmd'"]),
    ("cmd-list-with-int", task(cmd=["echo", 1]), ["'a'", "'cmd"]),
    ("cwd-int", task(cmd="true", cwd=5), ["'a'", "'cwd'"]),
    ("executor-unknown", task(fn="os:getcwd", executor="gpu"),
     ["'a'", "'executor'", "inline, thread, process", "got 'gpu'"]),
    ("band-unknown", task(band="urgent"),
     ["'a'", "'band'", "interactive, batch, best_effort or a number 0-99", "got 'urgent'"]),
    ("band-too-high", task(band=150), ["'a'", "'band'", "a number 0-99", "got 150"]),
    ("graph-band-unknown", {"band": "x", "tasks": [{"id": "a"}]}, ["'band'", "best_effort"]),
    ("gang-size-zero", task(gang="g", gang_size=0), ["'a'", "'gang_size'"]),
    ("fn-int", task(fn=5), ["'a'", "'fn'"]),
    ("fn-not-importable", task(fn="no_such_module_xyz:f"), ["'a'", "'fn'"]),
    ("args-object", task(fn="os:getcwd", args={"x": 1}), ["'a'", "'args'"]),
    ("kwargs-list", task(fn="os:getcwd", kwargs=[1]), ["'a'", "'kwargs'"]),
    ("labels-string", task(labels="gpu"), ["'a'", "'labels'"]),
    ("labels-bad-operator", task(labels={"gpu": {"~": 1}}), ["'a'", "'labels'", "'~'"]),
    ("version-list", task(version=[1]), ["'a'", "'version'"]),
    ("meta-string", task(meta="x"), ["'a'", "'meta'"]),
    ("runtime-negative", task(runtime_s=-1), ["'a'", "'runtime_s'"]),
    ("cores-negative", task(cores=-1, cmd="true"), ["'a'", "'cores'"]),
    ("unknown-field", task(colour="red"), ["'a'", "'colour'"]),
    ("fn-and-cmd", task(fn="os:getcwd", cmd="true"), ["'a'", "'fn'", "'cmd'"]),
    ("deps-and-parents", {"tasks": [{"id": "b"}, {"id": "a", "deps": ["b"], "parents": ["b"]}]},
     ["'a'", "'deps'", "'parents'"]),
    ("deps-string", {"tasks": [{"id": "b"}, {"id": "a", "deps": "b"}]}, ["'a'", "'deps'"]),
    ("deps-int", {"tasks": [{"id": "b"}, {"id": "a", "deps": [1]}]}, ["'a'", "'deps[0]'"]),
    # NaN and Infinity (Python's json writes them; they are not JSON) and YAML's .nan/.inf
    ("resources-nan", '{"tasks": [{"id": "a", "resources": {"cpu": NaN}}]}',
     ["'a'", "'resources.cpu'"]),
    ("resources-infinity", '{"tasks": [{"id": "a", "resources": {"cpu": Infinity}}]}',
     ["'a'", "'resources.cpu'"]),
    ("args-nan", '{"tasks": [{"id": "a", "fn": "os:getcwd", "args": [NaN]}]}', ["'a'", "'args'"]),
    ("timeout-infinity", '{"tasks": [{"id": "a", "cmd": "true", "timeout_s": Infinity}]}',
     ["'a'", "'timeout_s'"]),
    ("deeply-nested", '{"tasks": [{"id": "a", "args": ' + "[" * DEEP + "]" * DEEP + "}]}",
     ["nested too deeply"]),
    # deep in a field of the wrong type: the schema's error path decodes the file again
    ("deeply-nested-tasks", '{"tasks": ' + "[" * DEEP + "]" * DEEP + "}", ["nested too deeply"]),
    ("deeply-nested-meta-array", '{"tasks": [{"id": "a", "meta": ' + "[" * DEEP + "]" * DEEP
     + "}]}", ["nested too deeply"]),
    # ids, parents, cycles, groups (one line before too; now they also name the file)
    ("id-missing", {"tasks": [{"deps": []}]}, ["task #1", "'id'"]),
    ("id-int", {"tasks": [{"id": 3}]}, ["task #1", "'id'"]),
    ("id-empty", {"tasks": [{"id": ""}]}, ["task #1", "'id'"]),
    ("task-not-object", {"tasks": [{"id": "a"}, "b"]}, ["task #2", "object"]),
    ("duplicate-id", {"tasks": [{"id": "a"}, {"id": "a"}]}, ["duplicate", "'a'"]),
    ("self-dep", task(deps=["a"]), ["cycle", "a -> a"]),
    ("cycle", {"tasks": [{"id": "x", "deps": ["y"]}, {"id": "y", "deps": ["x"]}]}, ["cycle"]),
    ("missing-dep", task(deps=["ghost"]), ["'a'", "'ghost'"]),
    ("unknown-group", {"tasks": [{"id": "a", "group": "x"}], "groups": {"g": {}}},
     ["'a'", "'group'", "'x'"]),
    ("group-weight-zero", {"tasks": [{"id": "a"}], "groups": {"g": {"weight": 0}}},
     ["group 'g'", "'weight'"]),
    ("group-weight-nan", '{"tasks": [{"id": "a"}], "groups": {"g": {"weight": NaN}}}',
     ["group 'g'", "'weight'"]),
    ("group-cap-float", {"tasks": [{"id": "a"}], "groups": {"g": {"cap": 1.5}}},
     ["group 'g'", "'cap'"]),
    ("group-unknown-field", {"tasks": [{"id": "a"}], "groups": {"g": {"share": 1}}},
     ["group 'g'", "'share'"]),
    ("groups-list", {"tasks": [{"id": "a"}], "groups": ["g"]}, ["'groups'"]),
    # the file as a whole
    ("top-level-array", [{"id": "a"}], ["object", "'tasks'"]),
    ("top-level-number", 3, ["object", "'tasks'"]),
    ("top-level-null", "null", ["object", "'tasks'"]),
    ("tasks-missing", {"name": "x"}, ["'tasks'"]),
    ("tasks-object", {"tasks": {"id": "a"}}, ["'tasks'"]),
    ("name-empty", {"name": "", "tasks": [{"id": "a"}]}, ["'name'"]),
    ("name-int", {"name": 5, "tasks": [{"id": "a"}]}, ["'name'"]),
    ("unknown-top-level-key", {"tasks": [{"id": "a"}], "task": []}, ["'task'"]),
    ("empty-file", "", ["empty"]),
    ("blank-file", "  \n\n", ["empty"]),
    ("not-utf8", b'{"tasks": [{"id": "\xff\xfe"}]}', ["UTF-8"]),
    ("truncated", '{"tasks": [{"id": "a"}', ["not valid JSON", "line 1, column 23"]),
    ("trailing-garbage", '{"tasks": []}\n}', ["graph.json", "line 2, column 1"]),
]  # fmt: skip


@pytest.mark.parametrize(("content", "words"), [c[1:] for c in GRAPH_CASES],
                         ids=[c[0] for c in GRAPH_CASES])  # fmt: skip
def test_bad_graph_file_one_line_naming_task_and_field_exit_two_nothing_created(
    tmp_path: Path, open_stdin: int, content: Any, words: list[str]
) -> None:
    path = tmp_path / "graph.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    out = conveyor("run", path, "--db", "sqlite:///run.db", "--quiet", cwd=tmp_path,
                   stdin=open_stdin)  # fmt: skip
    one_line_error(out, "graph.json", *words)
    assert not (tmp_path / "run.db").exists()  # refused before a store was made


def test_graph_file_that_is_a_device_is_refused_not_read(tmp_path: Path) -> None:
    """``/dev/zero`` never ends: reading it filled the memory (and hung). A FIFO is still read
    (``conveyor run <(generate)``); a device is refused before anything is read."""
    (tmp_path / "graph.json").symlink_to("/dev/zero")
    out = conveyor("run", "graph.json", "--db", "sqlite:///run.db", "--quiet", cwd=tmp_path)
    one_line_error(out, "graph.json", "is a device")
    assert not (tmp_path / "run.db").exists()


#: YAML files: (case, text, words).
YAML_CASES = [
    ("syntax-error", "tasks:\n  - id: a\n    deps: [b\n  - id: b\n", ["graph.yaml:4:"]),
    ("tab-indent", "tasks:\n\t- id: a\n", ["graph.yaml:2:1"]),
    ("bad-mapping", "tasks:\n  - id: a\n   cmd: x\n", ["graph.yaml:3:"]),
    ("resources-nan", "tasks:\n  - id: a\n    resources: {cpu: .nan}\n",
     ["'a'", "'resources.cpu'"]),
    ("resources-inf", "tasks:\n  - id: a\n    resources: {cpu: .inf}\n",
     ["'a'", "'resources.cpu'"]),
    ("retries-yes", "tasks:\n  - id: a\n    retries: yes\n", ["'a'", "'retries'"]),
    ("cache-string", "tasks:\n  - id: a\n    cache: 'no'\n", ["'a'", "'cache'"]),
    ("id-date", "tasks:\n  - id: 2024-01-01\n", ["task #1", "'id'"]),
    ("empty", "", ["empty"]),
    ("scalar", "just text\n", ["object", "'tasks'"]),
    ("deeply-nested", "tasks:\n  - id: a\n    args: " + "[" * DEEP + "]" * DEEP + "\n",
     ["graph.yaml", "nested too deeply"]),
]  # fmt: skip


@pytest.mark.parametrize(("text", "words"), [c[1:] for c in YAML_CASES],
                         ids=[c[0] for c in YAML_CASES])  # fmt: skip
def test_bad_yaml_file_one_line_with_line_and_column_exit_two(
    tmp_path: Path, text: str, words: list[str]
) -> None:
    path = tmp_path / "graph.yaml"
    path.write_text(text)
    one_line_error(conveyor("run", path, "--quiet", cwd=tmp_path), "graph.yaml", *words)


# -- option values: the schema's ranges ------------------------------------------------------
OPTION_CASES = [
    ("run-lease-nan", ["run", "ok.json", "--lease", "nan"], ["--lease"]),
    ("run-lease-zero", ["run", "ok.json", "--lease", "0"], ["--lease"]),
    ("run-lease-inf", ["run", "ok.json", "--lease", "inf"], ["--lease"]),
    ("run-lease-nan-sqlite", ["run", "ok.json", "--db", "sqlite:///s.db", "--lease", "nan"],
     ["--lease"]),
    ("run-resources-negative", ["run", "ok.json", "--resources", "gpu=-1"], ["--resources", "gpu"]),
    ("run-resources-nan", ["run", "ok.json", "--resources", "gpu=nan"], ["--resources", "gpu"]),
    ("run-resources-inf", ["run", "ok.json", "--resources", "cpu=inf"], ["--resources", "cpu"]),
    ("worker-lease-nan", ["worker", "--db", "sqlite:///s.db", "--lease", "nan"], ["--lease"]),
    ("worker-lease-inf", ["worker", "--db", "sqlite:///s.db", "--lease", "inf"], ["--lease"]),
    # (a lease shorter than a busy store's wait is lost at once: tasks run twice for nothing)
    ("worker-lease-tiny", ["worker", "--db", "sqlite:///s.db", "--lease", "0.001"],
     ["--lease", "0.1"]),
    ("run-lease-tiny", ["run", "ok.json", "--db", "sqlite:///s.db", "--lease", "0.01"],
     ["--lease", "0.1"]),
    ("worker-resources-negative", ["worker", "--db", "sqlite:///s.db", "--resources", "gpu=-1"],
     ["--resources", "gpu"]),
    ("worker-idle-exit-nan", ["worker", "--db", "sqlite:///s.db", "--idle-exit", "nan"],
     ["--idle-exit"]),
    ("worker-idle-exit-negative", ["worker", "--db", "sqlite:///s.db", "--idle-exit", "-1"],
     ["--idle-exit"]),
]  # fmt: skip


@pytest.mark.parametrize(("args", "words"), [c[1:] for c in OPTION_CASES],
                         ids=[c[0] for c in OPTION_CASES])  # fmt: skip
def test_bad_option_value_one_line_exit_two(
    tmp_path: Path, args: list[str], words: list[str]
) -> None:
    (tmp_path / "ok.json").write_text(json.dumps({"tasks": [{"id": "a"}]}))
    if args[0] == "worker":  # a store holding a finished graph
        assert conveyor("run", "ok.json", "--db", "sqlite:///s.db", cwd=tmp_path).returncode == 0
    one_line_error(conveyor(*args, cwd=tmp_path), *words)


# -- stores: mistyped paths are refused, damaged rows are one line ---------------------------
READ_ONLY = [
    ["status"], ["why", "a"], ["history", "a"], ["events"], ["plan", "ok.json"],
    ["retry", "--failed"], ["prune"], ["worker", "--idle-exit", "0"],
]  # fmt: skip


@pytest.mark.parametrize("args", READ_ONLY, ids=[a[0] for a in READ_ONLY])
def test_command_on_missing_store_refuses_and_creates_nothing(
    tmp_path: Path, args: list[str]
) -> None:
    (tmp_path / "ok.json").write_text(json.dumps({"tasks": [{"id": "a"}]}))
    before = sorted(tmp_path.iterdir())
    out = conveyor(*args, "--db", "sqlite:///typo.db", cwd=tmp_path)
    one_line_error(out, "typo.db", "does not exist")
    assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize("args", READ_ONLY, ids=[a[0] for a in READ_ONLY])
def test_command_on_a_database_without_a_store_refuses_and_creates_nothing(
    tmp_path: Path, args: list[str], pg_url: str
) -> None:
    import psycopg

    (tmp_path / "ok.json").write_text(json.dumps({"tasks": [{"id": "a"}]}))
    out = conveyor(*args, "--db", pg_url, cwd=tmp_path)
    one_line_error(out, "holds no conveyor store", "conveyor submit")
    with psycopg.connect(pg_url) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"
        ).fetchone()
    assert tables == (0,)  # nothing was created in the empty database


@pytest.mark.parametrize("args", READ_ONLY, ids=[a[0] for a in READ_ONLY])
def test_command_on_an_empty_or_foreign_sqlite_file_refuses_and_changes_nothing(
    tmp_path: Path, args: list[str]
) -> None:
    # Seen from outside: `status` on an empty file made it a store (118,784 bytes, exit 0), and
    # on another program's database switched its journal to WAL before refusing it.
    (tmp_path / "ok.json").write_text(json.dumps({"tasks": [{"id": "a"}]}))
    empty = tmp_path / "empty.db"
    empty.touch()
    out = conveyor(*args, "--db", "sqlite:///empty.db", cwd=tmp_path)
    one_line_error(out, "empty.db", "holds no conveyor store", "conveyor submit")
    assert empty.stat().st_size == 0
    foreign = tmp_path / "other.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE foo (x)")
    conn.close()
    before = foreign.read_bytes()
    out = conveyor(*args, "--db", "sqlite:///other.db", cwd=tmp_path)
    one_line_error(out, "other.db", "not a conveyor store", "foo")
    assert foreign.read_bytes() == before
    with sqlite3.connect(foreign) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    conn.close()


def test_history_of_a_damaged_result_row_still_shows_the_trail(tmp_path: Path) -> None:
    (tmp_path / "g.json").write_text(json.dumps({"tasks": [{"id": "a", "cmd": "echo hi"}]}))
    assert conveyor("run", "g.json", "--db", "sqlite:///s.db", cwd=tmp_path).returncode == 0
    with sqlite3.connect(tmp_path / "s.db") as db:
        assert db.execute("UPDATE results SET kind = 'json', data = x'7b6e6f74'").rowcount == 1
    out = conveyor("history", "a", "--db", "sqlite:///s.db", "--json", cwd=tmp_path)
    # history reads no result value (it would decode what the store holds): no traceback
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert json.loads(out.stdout)["state"] == "done"


def test_events_into_a_closed_pipe_exit_zero_silently(tmp_path: Path) -> None:
    tasks = [{"id": f"t{i}", "deps": [f"t{i - 1}"] if i else []} for i in range(3000)]
    (tmp_path / "g.json").write_text(json.dumps({"tasks": tasks}))
    assert conveyor("submit", "g.json", "--db", "sqlite:///s.db", cwd=tmp_path).returncode == 0
    # ~3,000 events (~240 KB) cannot fit in a pipe's buffer: the writer meets the closed end.
    proc = subprocess.Popen(
        [*CLI, "events", "--db", "sqlite:///s.db"], cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # what `| head -1` does
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=TIMEOUT_S) == 0, err
    assert json.loads(first)["event"] == "task_submitted"
    assert err == b""


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["run", "g.json", "--workers", "0"], "'--workers'"),
        (["run", "g.json", "--wrkers", "3"], "No such option: --wrkers"),
        (["build", "spec.py", "--records", "abc", "--out", "o"], "'--records'"),
        (["build"], "Missing argument"),
        (["frob"], "No such command 'frob'"),
        (["slurm", "scale", "-1"], "(see: conveyor slurm scale --help)"),
        (["slurm", "submit", "g.json", "--bogus"], "(see: conveyor slurm submit --help)"),
        (["run", "g.json", "--wrkers", "3"], "(see: conveyor run --help)"),
    ],
)
def test_a_usage_error_is_one_line_and_exit_2(tmp_path: Path, argv: list[str], says: str) -> None:
    """Options out of range, unknown options and commands: one line, like any bad input (not
    the parser's box)."""
    proc = subprocess.run([*CLI, *argv], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("conveyor: error: ") and says in lines[0]


def test_python_graph_refuses_a_malformed_endpoint_when_the_task_is_added() -> None:
    """``Graph.add`` checks the endpoint key (``core/limiter.check_key``), as a graph file's
    loader does: before, each such task failed only when it ran."""
    import conveyor
    from conveyor.errors import GraphError

    g = conveyor.Graph("e")
    with pytest.raises(GraphError, match=r"task 'a', field 'endpoint': .*provider/model/domain"):
        g.add(print, id="a", endpoint="fake/ep")
    g.add(print, id="b", endpoint="openai/gpt-4o/api.openai.com")  # a well-formed key is fine


def test_python_graph_refuses_resources_and_inputs_of_the_wrong_shape() -> None:
    """``resources="cpu"`` gave dict()'s ``dictionary update sequence element #0`` (also as the
    error of a parent whose ``ctx.submit`` passed it), and ``inputs="a.txt"`` became the inputs
    ``a``, ``.``, ``t``, ``x``, ``t``: both are the field's one-line error now."""
    import conveyor
    from conveyor.errors import GraphError

    g = conveyor.Graph("e")
    with pytest.raises(GraphError, match=r"task 'a', field 'resources': expected a mapping"):
        g.add(print, id="a", resources="cpu")
    with pytest.raises(GraphError, match=r"task 'b', field 'labels': expected a mapping"):
        g.add(print, id="b", labels=["gpu"])
    with pytest.raises(GraphError, match=r"task 'c', field 'inputs': expected a list of paths"):
        g.add(print, id="c", inputs="a.txt")
    ok = g.add(print, id="d", resources={"cpu": 1}, inputs=["a.txt"], labels=None)
    assert g.spec().tasks[-1].id == ok.id and g.spec().tasks[-1].inputs == ("a.txt",)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_events_file_that_cannot_be_written_is_named_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "g.json").write_text(json.dumps({"tasks": [{"id": "a"}, {"id": "b"}]}))
    out = conveyor("run", "g.json", "--events", "/dev/full", cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "/dev/full" in lines[0] and "No space left" in lines[0], lines


@pytest.mark.skipif(not Path("/proc/version").exists(), reason="needs /proc (Linux)")
def test_events_file_that_cannot_be_appended_to_is_named_in_one_line(tmp_path: Path) -> None:
    """A file that opens for writing but cannot be appended to (``/proc/version`` refuses the
    seek to its end) was one line without its name: ``[Errno 22] Invalid argument``."""
    (tmp_path / "g.json").write_text(json.dumps({"tasks": [{"id": "a"}]}))
    out = conveyor("run", "g.json", "--events", "/proc/version", cwd=tmp_path)
    one_line_error(out, "/proc/version")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_output_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    """``conveyor status > /dev/full`` printed a traceback (its output is written outside the
    command's error handling): every command's own output failing is one line, exit 2."""
    (tmp_path / "g.json").write_text(json.dumps({"tasks": [{"id": "a"}, {"id": "b"}]}))
    db = f"sqlite:///{tmp_path / 'run.db'}"
    assert conveyor("submit", "g.json", "--db", db, cwd=tmp_path).returncode == 0
    for command in (["status"], ["events"], ["why", "a"]):
        with open("/dev/full", "w") as full:
            out = subprocess.run([*CLI, *command, "--db", db], cwd=tmp_path, stdout=full,
                                 stderr=subprocess.PIPE, text=True, timeout=TIMEOUT_S)  # fmt: skip
        one_line_error(out, "No space left")


def test_worker_whose_store_file_is_removed_mid_run_stops_in_one_line(tmp_path: Path) -> None:
    """Deleting the SQLite file under a running worker: it stops at its next write with one
    line (exit 2) instead of finishing the graph into a file nobody can read again."""
    from conveyor.store.urls import open_store
    from helpers import wait_until

    tasks = [{"id": f"t{i}", "cmd": "sleep 0.02"} for i in range(400)]
    (tmp_path / "g.json").write_text(json.dumps({"tasks": tasks}))
    db = f"sqlite:///{tmp_path / 'run.db'}"
    assert conveyor("submit", "g.json", "--db", db, cwd=tmp_path).returncode == 0
    worker = subprocess.Popen([*CLI, "worker", "--db", db, "--workers", "1"], cwd=tmp_path,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    store = open_store(db)
    try:
        wait_until(lambda: store.counts().get("done", 0) >= 5, timeout=TIMEOUT_S)
    finally:
        store.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{tmp_path / 'run.db'}{suffix}").unlink(missing_ok=True)
    _, err = worker.communicate(timeout=TIMEOUT_S)
    assert worker.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "was removed or replaced while in use" in lines[0], lines


@pytest.mark.parametrize("tid", ["a\nb", "a\x1b[31m", "tab\there", "nul\x00"])
def test_task_ids_with_control_characters_are_refused(tmp_path: Path, tid: str) -> None:
    """An id holding a newline or an escape sequence printed as it is by ``why`` and
    ``status`` could forge their lines: refused in one line, from a file and in Python;
    ids of other characters (an emoji joined by a zero-width joiner, accents) still run."""
    import conveyor as api
    from conveyor.errors import GraphError

    (tmp_path / "g.json").write_text(json.dumps({"tasks": [{"id": "ok"}, {"id": tid}]}))
    one_line_error(conveyor("run", "g.json", cwd=tmp_path), "control characters")
    g = api.Graph("c")
    g.add(print, id=tid)
    with pytest.raises(GraphError, match="control characters"):
        api.run(g)
    fine = api.Graph("f")
    fine.add(print, id="\U0001f468\u200d\U0001f469\u200d\U0001f467")
    fine.add(print, id="é x")
    assert api.run(fine).stats.done == 2


def test_arguments_as_deep_as_a_graph_file_allows_are_stored_and_run(tmp_path: Path) -> None:
    # Seen from outside: args nested 400-980 levels passed the file's check, then `submit`
    # crashed with a RecursionError traceback in the spec codec (two frames per level).
    depth = 900
    nested = "[" * depth + "]" * depth
    (tmp_path / "graph.json").write_text(
        '{"name": "deep", "tasks": [{"id": "a", "fn": "builtins:len", "args": [' + nested
        + ']}, {"id": "b", "deps": ["a"]}]}'
    )  # fmt: skip
    db = f"sqlite:///{tmp_path / 'run.db'}"
    submitted = conveyor("submit", "graph.json", "--db", db, cwd=tmp_path)
    assert submitted.returncode == 0, submitted.stderr[-2000:]
    worked = conveyor("worker", "--db", db, "--idle-exit", "0", cwd=tmp_path)
    assert worked.returncode == 0, worked.stderr[-2000:]
    assert "2 done, 0 failed" in worked.stderr
