"""Planning an unchanged graph against its store (issue 7): ``conveyor plan`` and the resume of
``conveyor run``/``submit`` compute every task's fingerprint and compare it with the store.

For a layered random graph (``benchmarks/graphs.py``: width 100, 3 parents) of N no-op tasks
with ``version`` strings (a code identity without importing anything): submit it to a fresh
SQLite store with fingerprints, run it to the end with one in-process worker (the "full run"),
then time

- ``plan``: ``store.plan_graph(spec)`` (what ``conveyor plan`` does after loading the file);
- ``resume``: ``store.open_graph(spec)`` of the unchanged graph (what a second ``run`` or
  ``submit`` does before its workers find nothing to do);

and print each with its ratio to the full run. Target: plan of an unchanged 100,000-task graph
<= 2 s (PASS/FAIL). The full run measures the store's claim/complete cycle, not process
starts or task bodies: the most flattering full run there is, so the least flattering ratio.

    python benchmarks/bench_plan.py              # N = 100,000
    python benchmarks/bench_plan.py --n 10000    # quicker
    python benchmarks/bench_plan.py --postgres URL
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from graphs import layered

TARGET_S = 2.0


def build(n: int) -> dict:
    g = layered(n)
    for i, t in enumerate(g["tasks"]):
        t["version"] = f"v{i % 7}"  # a code identity per task without importing anything
    g["name"] = "plan-bench"
    return g


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--postgres", help="a PostgreSQL URL (an empty database) instead of SQLite")
    args = ap.parse_args(argv)

    from conveyor.graphfile import graph_from_dict
    from conveyor.runtime.engine import Engine
    from conveyor.store.urls import open_store

    t = time.perf_counter()
    spec = graph_from_dict(build(args.n))
    load_s = time.perf_counter() - t
    with tempfile.TemporaryDirectory(prefix="conveyor-plan-") as d:
        url = args.postgres or f"sqlite:///{d}/plan.db"
        store = open_store(url)
        try:
            t = time.perf_counter()
            store.open_graph(spec, time.time())
            submit_s = time.perf_counter() - t
            t = time.perf_counter()
            stats = Engine(store, workers=1, worker_id="bench:1").run()
            run_s = time.perf_counter() - t
            assert store.unfinished() == 0, (stats, store.counts())
            full_s = submit_s + run_s
            t = time.perf_counter()
            decisions = store.plan_graph(spec)
            plan_s = time.perf_counter() - t
            assert all(d.action == "reuse" for d in decisions), "an unchanged graph must reuse"
            t = time.perf_counter()
            opened = store.open_graph(spec, time.time())
            resume_s = time.perf_counter() - t
            assert opened.unfinished == 0, opened
        finally:
            store.close()
    print(f"graph: layered, {args.n:,} tasks, store {url.split(':')[0]}")
    print(f"  load+validate the graph      {load_s:8.3f} s")
    print(f"  full run (submit {submit_s:.2f} s + run {run_s:.2f} s) {full_s:8.3f} s")
    for what, secs in (("plan", plan_s), ("resume", resume_s)):
        label = f"{what}, unchanged graph"
        print(f"  {label:<28} {secs:8.3f} s  ({secs / full_s:.1%} of the full run)")
    ok = plan_s <= TARGET_S if args.n >= 100_000 else plan_s <= TARGET_S * args.n / 100_000
    print(f"{'PASS' if ok else 'FAIL'}: plan {plan_s:.2f} s <= {TARGET_S:g} s per 100,000 tasks")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
