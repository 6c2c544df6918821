"""``executor="process"`` from a script without ``if __name__ == "__main__":`` (issue 16,
point 17): refused in one line before any process starts, instead of every spawned worker
running the script again. Real scripts in real interpreters; a timeout is a failure."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TASKS = """
import os
import conveyor

def pid_square(x):
    return os.getpid(), x * x

def build(executor=None):
    g = conveyor.Graph("p")
    for i in range(3):
        g.add(pid_square, i, id=f"s{i}", executor=executor)
    return g
"""

SCRIPTS = {
    "top_level": "res = conveyor.run(build('process'), workers=2)\nprint('RAN', res)\n",
    "in_main_function": (
        "def main():\n    conveyor.run(build(), workers=2, executor='process')\n\nmain()\n"
    ),
    "guarded": (
        'if __name__ == "__main__":\n'
        "    res = conveyor.run(build('process'), workers=2)\n"
        "    pids = {res[f's{i}'][0] for i in range(3)}\n"
        "    print('OK', sorted(res[f's{i}'][1] for i in range(3)), os.getpid() in pids)\n"
    ),
}


def run_script(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(TASKS) + body)
    return subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=90
    )


@pytest.mark.parametrize("kind", ["top_level", "in_main_function"])
def test_process_executor_unguarded_script_refused_in_one_line(tmp_path: Path, kind: str) -> None:
    proc = run_script(tmp_path, SCRIPTS[kind])
    assert proc.returncode == 1, proc.stderr
    assert "RAN" not in proc.stdout
    last = proc.stderr.strip().splitlines()[-1]
    line = len(textwrap.dedent(TASKS).splitlines()) + (1 if kind == "top_level" else 4)
    assert last.startswith(f"conveyor.errors.UsageError: {tmp_path / 'script.py'}:{line}: ")
    assert 'if __name__ == "__main__":' in last
    assert "spawn_main" not in proc.stderr  # no worker process was started


def test_process_executor_guarded_script_runs_in_other_processes(tmp_path: Path) -> None:
    proc = run_script(tmp_path, SCRIPTS["guarded"])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["OK", "[0,", "1,", "4]", "False"]
