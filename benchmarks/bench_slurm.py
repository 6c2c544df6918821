"""Many short tasks on a SLURM cluster: conveyor's pilot workers against a plain job array and
submitit's ``map_array``, side by side in one run (issue 13, "Measured").

N tasks (``--tasks``, default 2,000) of ``--task-s`` seconds (default 0.1: ``time.sleep``), run
three ways on the same cluster, one after the other, at most ``--workers`` (default 8) at once:

- **conveyor**: ``conveyor submit`` of a graph of N ``fn`` tasks into a SQLite store, then
  ``conveyor slurm submit --workers W``: one job array of W pilot workers that claim the tasks.
- **plain array**: ``sbatch --array=0-K%W`` whose every element is one task (a Python process
  that sleeps, then writes its marker file); arrays split under ``MaxArraySize`` as conveyor
  does, since the site refuses larger ones.
- **submitit** (``pip install submitit``): ``AutoExecutor.map_array`` with
  ``slurm_array_parallelism=W``, called once per ``MaxArraySize`` chunk (it does not split), then
  every job's ``result()``.

One timed window per side: from just before its first submission to the moment every task is
known done (conveyor: the store says so; plain: N marker files; submitit: every ``result()``
returned). Printed per side: total seconds, per-task overhead (``window * W / N - task_s``: the
slot-seconds a task costs beyond its own work), the number of ``sbatch`` calls and of SLURM
jobs (array elements) it made. Targets (PASS/FAIL): conveyor finishes >= 2x sooner than the
plain array, and makes <= 1% of its jobs.

Runs as a user who may submit jobs; the jobs must see this machine's temp folder (the
single-node cluster of ``scripts/slurm-up.sh`` does). Every job a side submitted is cancelled
when it is over or timed out.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[1] / "src"

TASK_MODULE = """
import time

def nap(seconds):
    time.sleep(seconds)
"""


@dataclass
class Side:
    name: str
    seconds: float | None  # None: timed out
    done: int
    sbatch_calls: int
    jobs: int
    note: str = ""


def env_with_src() -> dict[str, str]:
    """This checkout's ``src`` first on PYTHONPATH (absolute: the jobs run elsewhere)."""
    old = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{old}" if old else str(SRC)}


def max_array_size() -> int:
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    for line in out.splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "MaxArraySize" and value.strip().isdigit():
            return int(value)
    return 1001


def poll(done: Any, deadline: float, every: float = 0.2) -> bool:
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


def run_conveyor(root: Path, n: int, task_s: float, workers: int, timeout: float) -> Side:
    sys.path.insert(0, str(SRC))
    from conveyor.cluster.pilots import load_record
    from conveyor.store.urls import open_store

    (root / "jobs.py").write_text(TASK_MODULE)
    tasks = [{"id": f"t{i}", "fn": "jobs:nap", "args": [task_s]} for i in range(n)]
    (root / "graph.json").write_text(json.dumps({"name": "bench", "tasks": tasks}))
    db = f"sqlite:///{root}/run.db"
    env = env_with_src()
    cli = [sys.executable, "-m", "conveyor.cli"]
    t0 = time.monotonic()
    subprocess.run([*cli, "submit", "graph.json", "--db", db], cwd=root, env=env, check=True,
                   capture_output=True)  # fmt: skip
    subprocess.run([*cli, "slurm", "submit", "--db", db, "--workers", str(workers),
                    "--idle-exit", "30"], cwd=root, env=env, check=True,
                   capture_output=True)  # fmt: skip
    store = open_store(db)
    try:
        finished = poll(lambda: store.unfinished() == 0, t0 + timeout)
        elapsed = time.monotonic() - t0
        done = store.counts()["done"]
        arrays = load_record(store)[1]
    finally:
        store.close()
    subprocess.run([*cli, "slurm", "cancel", "--db", db], cwd=root, env=env,
                   capture_output=True)  # fmt: skip
    return Side("conveyor", elapsed if finished else None, done, len(arrays),
                sum(a.count for a in arrays))  # fmt: skip


def run_plain(root: Path, n: int, task_s: float, workers: int, timeout: float) -> Side:
    limit = max_array_size()
    marks = root / "done"
    marks.mkdir()
    jobs: list[str] = []
    t0 = time.monotonic()
    for offset in range(0, n, limit):
        count = min(limit, n - offset)
        script = root / f"array-{offset}.sh"
        script.write_text(
            "#!/bin/bash\n"
            f"exec {sys.executable} -c 'import os, time; time.sleep({task_s}); "
            f'open("{marks}/%d" % ({offset} + int(os.environ["SLURM_ARRAY_TASK_ID"])), "w")\'\n'
        )
        out = subprocess.run(
            ["sbatch", "--parsable", f"--array=0-{count - 1}%{workers}", "--job-name=plain",
             f"--output={root}/%A_%a.out", str(script)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        jobs.append(out.stdout.strip().split(";")[0])
    finished = poll(lambda: len(os.listdir(marks)) >= n, t0 + timeout)
    elapsed = time.monotonic() - t0
    subprocess.run(["scancel", *jobs], capture_output=True)
    return Side("plain array", elapsed if finished else None, len(os.listdir(marks)), len(jobs), n)


def run_submitit(root: Path, n: int, task_s: float, workers: int, timeout: float) -> Side:
    try:
        import submitit
    except ImportError:
        return Side("submitit", None, 0, 0, 0, "not installed (pip install submitit)")
    limit = max_array_size()
    executor = submitit.AutoExecutor(folder=root / "submitit")
    executor.update_parameters(slurm_array_parallelism=workers, timeout_min=60,
                               cpus_per_task=1)  # fmt: skip
    t0 = time.monotonic()
    jobs = []
    calls = 0
    for offset in range(0, n, limit):
        jobs += executor.map_array(time.sleep, [task_s] * min(limit, n - offset))
        calls += 1
    done = 0
    deadline = t0 + timeout
    for job in jobs:
        if not poll(job.done, deadline, every=0.5):
            break
        job.result()
        done += 1
    elapsed = time.monotonic() - t0
    subprocess.run(["scancel", *{j.job_id.split("_")[0] for j in jobs}], capture_output=True)
    return Side("submitit", elapsed if done == n else None, done, calls, n)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--task-s", type=float, default=0.1)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds per side")
    ap.add_argument("--sides", default="conveyor,plain,submitit")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    runners = {"conveyor": run_conveyor, "plain": run_plain, "submitit": run_submitit}
    sides = []
    with tempfile.TemporaryDirectory(prefix="bench-slurm-") as tmp:
        for name in args.sides.split(","):
            root = Path(tmp) / name
            root.mkdir()
            side = runners[name](root, args.tasks, args.task_s, args.workers, args.timeout)
            sides.append(side)
            print(f"# {side.name}: {side.seconds if side.seconds is not None else 'timed out'}",
                  file=sys.stderr)  # fmt: skip
    print(f"## {args.tasks} tasks of {args.task_s} s, {args.workers} at once\n")
    print("| side | total s | per-task overhead s | sbatch calls | SLURM jobs | done |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for s in sides:
        if s.seconds is None:
            total = overhead = "timed out" if not s.note else s.note
        else:
            total = f"{s.seconds:.1f}"
            overhead = f"{s.seconds * args.workers / args.tasks - args.task_s:.3f}"
        print(f"| {s.name} | {total} | {overhead} | {s.sbatch_calls} | {s.jobs} | {s.done} |")
    by = {s.name: s for s in sides}
    conv, plain = by.get("conveyor"), by.get("plain array")
    if conv and plain and conv.seconds and plain.seconds:
        speed = plain.seconds / conv.seconds
        share = conv.jobs / plain.jobs if plain.jobs else math.inf
        print(f"\nconveyor vs plain array: {speed:.1f}x sooner "
              f"({'PASS' if speed >= 2 else 'FAIL'}: >= 2x); {share:.1%} of its SLURM jobs "
              f"({'PASS' if share <= 0.01 else 'FAIL'}: <= 1%)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps([asdict(s) for s in sides], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
