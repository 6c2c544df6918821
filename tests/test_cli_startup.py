"""What a ``conveyor`` command pays before it starts: it imports and builds only itself, and
``conveyor run`` turns the collector back on once the loaded graph is frozen (issue 10)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

#: ``main()`` as the console script runs it, printing at exit which modules were imported
#: (at the interpreter's exit, or at ``os._exit`` when the command left nothing to finalize).
SHOW_MODULES = """
import atexit, os, sys
def show():
    print(" ".join(sorted(sys.modules)), flush=True)
atexit.register(show)
_exit = os._exit
def exit_now(code):
    show()
    _exit(code)
os._exit = exit_now
sys.argv = ["conveyor", *sys.argv[1:]]
from conveyor.cli import main
main()
"""

#: ``main()`` with an atexit hook of the user's: it says whether the interpreter's exit ran.
ATEXIT_RUNS = """
import atexit, sys
atexit.register(lambda: sys.stderr.write("atexit ran\\n"))
sys.argv = ["conveyor", *sys.argv[1:]]
from conveyor.cli import main
main()
"""


def modules_of(*args: str, cwd: Path) -> set[str]:
    p = subprocess.run([sys.executable, "-c", SHOW_MODULES, *args], cwd=cwd,
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 0, p.stderr
    return set(p.stdout.split()[-1000:]) if p.stdout else set()


def test_run_imports_its_own_command_alone_and_nothing_for_help_or_other_stores(
    tmp_path: Path,
) -> None:
    graph = {"tasks": [{"id": "a"}, {"id": "b", "deps": ["a"]}]}
    (tmp_path / "g.json").write_text(json.dumps(graph))
    mods = modules_of("run", "g.json", "--workers", "1", "--quiet", cwd=tmp_path)
    assert "conveyor.cli.run" in mods
    commands = {m for m in mods if m.startswith("conveyor.cli.")}
    helpers = {"conveyor.cli.errors", "conveyor.cli.options", "conveyor.cli.inputs"}
    assert commands - helpers == {"conveyor.cli.run"}
    # help rendering, YAML, durable stores and their drivers, fingerprints (what a durable
    # store resumes by) and sockets: not for an in-memory JSON run
    heavy = {"rich", "typer.rich_utils", "yaml", "sqlite3", "conveyor.store.sqlite",
             "conveyor.fingerprints", "conveyor.core.fingerprint", "hashlib", "socket"}  # fmt: skip
    assert not heavy & mods, heavy & mods


def test_a_plain_run_imports_no_admission_borrowing_why_preemption_or_pool(tmp_path: Path) -> None:
    # Each of these modules makes dataclasses at import (~1 ms each): a graph of one group and
    # one band of no-ops asks nothing of them, so `conveyor run` leaves them unimported; nor
    # does it need a thread pool (concurrent.futures, which imports logging), the stored-spec
    # codec (pickle) or, without --events, json.
    graph = {"tasks": [{"id": "a"}, {"id": "b", "deps": ["a"]}]}
    (tmp_path / "g.json").write_text(json.dumps(graph))
    mods = modules_of("run", "g.json", "--workers", "1", "--quiet", cwd=tmp_path)
    assert {"conveyor.store.memory", "conveyor.runtime.preemption", "conveyor.core.offer"} <= mods
    lazy = {"conveyor.core.admission", "conveyor.core.borrow", "conveyor.core.explain",
            "conveyor.core.preempt", "concurrent.futures", "conveyor.store.codec", "pickle",
            "json"}  # fmt: skip
    assert not lazy & mods, lazy & mods


def test_the_help_still_lists_every_command(tmp_path: Path) -> None:
    from conveyor.cli import COMMANDS

    p = subprocess.run([sys.executable, "-m", "conveyor.cli", "--help"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 0
    listed = {line.split()[1] for line in p.stdout.splitlines() if line.startswith("│ ")}
    assert {name for name, _, _ in COMMANDS} <= listed


def test_tasks_of_a_cli_run_have_the_collector_on(tmp_path: Path) -> None:
    # The CLI pauses the collector while it loads and freezes the graph: the tasks' own
    # cyclic garbage must still be collected.
    (tmp_path / "gcmod.py").write_text(
        "import gc\n\n\ndef check():\n    assert gc.isenabled(), 'the collector is off'\n"
    )
    graph = {"tasks": [{"id": "a", "fn": "gcmod:check"}, {"id": "b", "deps": ["a"]}]}
    (tmp_path / "g.json").write_text(json.dumps(graph))
    p = subprocess.run([sys.executable, "-m", "conveyor.cli", "run", "g.json", "-w", "1"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "2 done, 0 failed" in p.stderr


def test_a_worker_with_default_options_does_not_import_the_schema(tmp_path: Path) -> None:
    # Every worker pays its start: the options' defaults need no msgspec to be checked.
    (tmp_path / "g.json").write_text(json.dumps({"tasks": [{"id": "a"}]}))
    db = f"sqlite:///{tmp_path / 'p.db'}"
    submitted = subprocess.run([sys.executable, "-m", "conveyor.cli", "submit", "g.json",
                                "--db", db], cwd=tmp_path, capture_output=True, text=True,
                               timeout=60)  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    mods = modules_of("worker", "--db", db, "--quiet", cwd=tmp_path)
    assert "conveyor.runtime.engine" in mods
    for heavy in ("msgspec", "conveyor.schema", "rich", "typer.rich_utils", "yaml"):
        assert heavy not in mods
    # nor fingerprinting: only a submit plans fingerprints (sqlfp.py, core/fingerprint.py and
    # hashlib, ~6 ms); a worker joins the graph the store holds
    assert not {"conveyor.store.sqlfp", "conveyor.core.fingerprint", "hashlib"} & mods


def test_the_lease_default_is_a_valid_lease() -> None:
    from conveyor import schema
    from conveyor.cli import options

    assert schema.check_value(options.LEASE_S, schema.LeaseSeconds) is None


def test_a_run_of_no_user_code_ends_at_once_keeping_its_code_output_and_events(
    tmp_path: Path,
) -> None:
    # Nothing of the user's ran in the process: `main` skips the interpreter's teardown
    # (os._exit), after the run closed its event file; the exit code and the summary stay.
    graph = {"tasks": [{"id": "a"}, {"id": "b", "deps": ["a"], "cmd": "exit 3"},
                       {"id": "c", "deps": ["b"]}]}  # fmt: skip
    (tmp_path / "g.json").write_text(json.dumps(graph))
    p = subprocess.run([sys.executable, "-c", ATEXIT_RUNS, "run", "g.json", "-w", "1",
                        "--events", "ev.jsonl"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=60)  # fmt: skip
    assert p.returncode == 1, p.stderr
    assert "1 done, 1 failed, 1 skipped" in p.stderr and "failed b: command exited 3" in p.stderr
    assert "atexit ran" not in p.stderr
    events = [json.loads(line) for line in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert {(e["event"], e["task"]) for e in events} >= {
        ("task_finished", "a"), ("task_failed", "b"), ("task_skipped", "c")}  # fmt: skip


def test_a_run_of_user_functions_keeps_the_interpreters_exit(tmp_path: Path) -> None:
    # A task function may have left atexit work: that process exits the usual way.
    (tmp_path / "fnmod.py").write_text("def f():\n    return 1\n")
    (tmp_path / "g.json").write_text(json.dumps({"tasks": [{"id": "a", "fn": "fnmod:f"}]}))
    p = subprocess.run([sys.executable, "-c", ATEXIT_RUNS, "run", "g.json", "-w", "1"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "atexit ran" in p.stderr


def test_a_run_of_commands_imports_admission_only_for_a_graph_that_needs_it(
    tmp_path: Path,
) -> None:
    # Commands in one group: whether the graph needs admission is asked (core/offer.py), the
    # rest of admission is not imported; a task in another group switches it on.
    plain = {"tasks": [{"id": "a", "cmd": "true"}, {"id": "b", "deps": ["a"], "cmd": "true"}]}
    grouped = {"tasks": [{"id": "a", "cmd": "true", "group": "x"}]}
    (tmp_path / "plain.json").write_text(json.dumps(plain))
    (tmp_path / "grouped.json").write_text(json.dumps(grouped))
    assert "conveyor.core.admission" not in modules_of("run", "plain.json", "-q", cwd=tmp_path)
    assert "conveyor.core.admission" in modules_of("run", "grouped.json", "-q", cwd=tmp_path)


def test_run_and_worker_options_are_objects_not_strings_for_typer_to_evaluate() -> None:
    # Every `conveyor run` and worker start builds its command from these annotations: from
    # strings (`from __future__ import annotations`), typer compiles each one again.
    from conveyor.cli.run import run
    from conveyor.cli.worker import worker

    for command in (run, worker):
        strings = [k for k, v in command.__annotations__.items() if isinstance(v, str)]
        assert not strings, f"{command.__name__}: {strings}"


def _worker_of(graph: dict[str, object], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``conveyor worker`` (with a user's atexit hook in its process) on ``graph`` in SQLite."""
    (tmp_path / "g.json").write_text(json.dumps(graph))
    db = f"sqlite:///{tmp_path / 'w.db'}"
    submitted = subprocess.run([sys.executable, "-m", "conveyor.cli", "submit", "g.json",
                                "--db", db], cwd=tmp_path, capture_output=True, text=True,
                               timeout=60)  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    return subprocess.run([sys.executable, "-c", ATEXIT_RUNS, "worker", "--db", db,
                           "--idle-exit", "0"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def test_a_worker_of_no_user_code_ends_at_once_keeping_its_code_and_summary(
    tmp_path: Path,
) -> None:
    # No-ops and commands only: no user code was imported in the worker's process, so it
    # skips the interpreter's teardown (20-40 ms of every worker's exit) after closing its
    # store; the exit code (a task failed: 1) and the summary stay.
    graph = {"tasks": [{"id": "a"}, {"id": "b", "deps": ["a"], "cmd": "exit 3"}]}
    p = _worker_of(graph, tmp_path)
    assert p.returncode == 1, p.stderr
    assert "1 done, 1 failed" in p.stderr
    assert "atexit ran" not in p.stderr


def test_a_worker_that_ran_a_user_function_keeps_the_interpreters_exit(tmp_path: Path) -> None:
    (tmp_path / "fnmod.py").write_text("def f():\n    return 1\n")
    p = _worker_of({"tasks": [{"id": "a"}, {"id": "b", "deps": ["a"], "fn": "fnmod:f"}]}, tmp_path)
    assert p.returncode == 0, p.stderr
    assert "2 done, 0 failed" in p.stderr
    assert "atexit ran" in p.stderr


def test_what_a_user_function_left_buffered_reaches_its_file_at_the_workers_exit(
    tmp_path: Path,
) -> None:
    # The exit after user code keeps the interpreter's teardown (only its collector passes
    # skip what existed): a module's open file, written and never flushed, is flushed then.
    (tmp_path / "logmod.py").write_text(
        "LOG = open('log.txt', 'w')\n\n\ndef f():\n    LOG.write('wrote by f\\n')\n"
    )
    p = _worker_of({"tasks": [{"id": "a", "fn": "logmod:f"}]}, tmp_path)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "log.txt").read_text() == "wrote by f\n"


def test_a_profiled_worker_of_no_user_code_still_writes_its_profile(tmp_path: Path) -> None:
    # A profiler (or coverage's tracer) writes what it saw as the interpreter exits: the
    # no-user-code exit must not cut that short.
    (tmp_path / "g.json").write_text(json.dumps({"tasks": [{"id": "a"}]}))
    db = f"sqlite:///{tmp_path / 'w.db'}"
    cli = [sys.executable, "-m", "conveyor.cli"]
    submitted = subprocess.run([*cli, "submit", "g.json", "--db", db], cwd=tmp_path,
                               capture_output=True, text=True, timeout=60)  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    p = subprocess.run([sys.executable, "-m", "cProfile", "-o", "w.prof", "-m", "conveyor.cli",
                        "worker", "--db", db, "--idle-exit", "0"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "1 done, 0 failed" in p.stderr
    assert (tmp_path / "w.prof").stat().st_size > 0
