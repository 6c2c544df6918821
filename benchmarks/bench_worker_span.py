"""Where the time of W ``conveyor worker`` processes goes on one SQLite store (issue 16, 9b).

The durable benchmark's ``fn`` rows time the whole window (submission, process starts, the
tasks, the exits). This splits it, read off the store's audit trail: for each worker, when its
first ``task_started`` and its last ``task_finished`` came (seconds after the workers were
started), and the workers' CPU (``getrusage`` of the children: user, system, context switches).
It runs what the ``fn`` rows run: ``conveyor submit`` of N independent tasks
(``"fn": "durable_tasks:fn"``, a function that returns None), then W ``conveyor worker --db URL
--idle-exit 0`` started at once, 1 and 4 workers alternating.

    python benchmarks/bench_worker_span.py                  # N=10,000, W=1,4, 3 rounds
    python benchmarks/bench_worker_span.py --workers 1,2,4 --rounds 5

What it showed on a 2-core machine (docs/benchmarks.md, "what a worker process costs to start
and to end"): 4 workers run the tasks ~15% sooner than one, and lose that and more to starting
four processes on two cores.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from bench_durable import worker_env  # noqa: E402  (the same environment as its fn rows)


@dataclass
class Span:
    """One run's window and its parts (seconds; "after" = after the workers were started)."""

    workers: int
    window_s: float
    submit_s: float
    first_start_s: list[float]  # each worker's first task_started, after
    tasks_s: float  # the first task_started to the last task_finished, all workers
    exit_tail_s: float  # the last task_finished to the last worker's exit
    tasks_per_worker: list[int]
    worker_cpu_s: float  # user + system of the worker processes
    involuntary_switches: int


def one_run(n: int, workers: int, directory: Path) -> Span:
    """Submit ``n`` fn tasks, run ``workers`` workers at once; the window's parts."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    shutil.copyfile(BENCH / "durable_tasks.py", directory / "durable_tasks.py")
    tasks = [{"id": f"t{i}", "fn": "durable_tasks:fn"} for i in range(n)]
    (directory / "g.json").write_text(json.dumps({"name": "span", "tasks": tasks}))
    env, cli = worker_env(), [sys.executable, "-m", "conveyor.cli"]
    url = f"sqlite:///{directory / 'run.db'}"
    t0 = time.perf_counter()
    subprocess.run([*cli, "submit", "g.json", "--db", url], cwd=directory, env=env, check=True,
                   capture_output=True)  # fmt: skip
    t1, wall1 = time.perf_counter(), time.time()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cmd = [*cli, "worker", "--db", url, "--idle-exit", "0", "--quiet"]
    procs = [subprocess.Popen(cmd, cwd=directory, env=env) for _ in range(workers)]
    codes = [p.wait() for p in procs]
    t2 = time.perf_counter()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if codes != [0] * workers:
        raise SystemExit(f"a worker exited {codes}")
    db = sqlite3.connect(directory / "run.db")
    rows = db.execute(
        "SELECT worker, min(ts), max(ts), count(*) FROM audit "
        "WHERE event IN ('task_started', 'task_finished') GROUP BY worker"
    ).fetchall()
    db.close()
    first = sorted(round(a - wall1, 3) for _, a, _, _ in rows)
    last = max(b for _, _, b, _ in rows) - wall1
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return Span(
        workers=workers,
        window_s=round(t2 - t0, 3),
        submit_s=round(t1 - t0, 3),
        first_start_s=first,
        tasks_s=round(last - min(first), 3),
        exit_tail_s=round((t2 - t1) - last, 3),
        tasks_per_worker=sorted((c // 2 for *_, c in rows), reverse=True),
        worker_cpu_s=round(cpu, 3),
        involuntary_switches=after.ru_nivcsw - before.ru_nivcsw,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="tasks (10,000)")
    ap.add_argument("--workers", default="1,4", help="worker counts, alternated (1,4)")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each count (3)")
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",") if w]
    runs: dict[int, list[Span]] = {w: [] for w in counts}
    with tempfile.TemporaryDirectory(prefix="conveyor-span-") as tmp:
        for r in range(args.rounds):
            for w in counts:
                run = one_run(args.n, w, Path(tmp) / f"r{r}w{w}")
                runs[w].append(run)
                print(json.dumps(asdict(run)), flush=True)

    def med(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    print(f"\nN = {args.n:,}, median of {args.rounds} (seconds after the workers were started)")
    print("| W | window | submit | first task started | tasks (first start to last finish) "
          "| exit tail | worker CPU |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for w in counts:
        rs = runs[w]
        cells = [
            med([r.window_s for r in rs]), med([r.submit_s for r in rs]),
            med([min(r.first_start_s) for r in rs]), med([r.tasks_s for r in rs]),
            med([r.exit_tail_s for r in rs]), med([r.worker_cpu_s for r in rs]),
        ]  # fmt: skip
        print(f"| {w} | " + " | ".join(f"{c:.3f} s" for c in cells) + " |")
    base = med([r.window_s for r in runs[counts[0]]])
    for w in counts[1:]:
        ratio = base / med([r.window_s for r in runs[w]])
        print(f"- {w} workers against {counts[0]}: {ratio:.2f}x (the window; > 1: sooner)")


if __name__ == "__main__":
    main()
