"""How the simulator scales: a synthetic layered graph simulated at 100k, 1M and 10M tasks.

    flock /tmp/bench.lock python benchmarks/bench_simulate.py                  # 100k, 1M, 10M
    flock /tmp/bench.lock python benchmarks/bench_simulate.py --sizes 100000,1000000

The graph (``conveyor.sim.inputs.layered``): independent jobs of one root and 24 layers of 4
tasks, each on two tasks of the layer above; durations 0.5-1.5 s. Each size runs in a fresh
process (one run each; no warm-up is needed: nothing is cached between sizes). Timed: building
the graph (ids, durations, the layout: validation and depths) plus the simulation itself
(``conveyor.sim.simulate``: the engine's Frontier on a simulated clock, depth-first, 256
workers). Memory: the process's peak RSS minus its RSS once conveyor is imported, per task
(and minus the input's ids and durations too: what the simulation itself adds).

Targets (issue 15): 10M tasks in <= 10 min, the per-task cost flat from 100k to 10M (<= 1.3x),
<= 300 bytes per task.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

MAX_SECONDS_10M = 600.0
MAX_FLAT = 1.3
MAX_BYTES = 300
WORKERS = 256


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def one(n: int) -> dict[str, float]:
    """Build and simulate ``n`` tasks in this process; the figures as a dict."""
    import gc

    from conveyor.sim import SimConfig, simulate
    from conveyor.sim.inputs import layered

    gc.disable()  # as the engine's bulk loads do (``bulk.paused_gc``): no cycles here
    base = rss_bytes()
    t0 = time.perf_counter()
    batch = layered(n)
    t1 = time.perf_counter()
    graph = rss_bytes()  # the input: ids and durations (the parents are made when read)
    result = simulate([batch], SimConfig(workers=WORKERS))
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tasks = result.tasks
    return {
        "tasks": tasks,
        "build_s": t1 - t0,
        "simulate_s": t2 - t1,
        "total_s": t2 - t0,
        "us_per_task": (t2 - t0) / tasks * 1e6,
        "bytes_per_task": (peak - base) / tasks,
        "sim_bytes_per_task": (peak - graph) / tasks,
        "makespan_s": result.makespan,
        "utilisation": result.utilisation,
        "peak_roots": result.peak_roots,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100000,1000000,10000000")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one)))
        return
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        p = subprocess.run([sys.executable, __file__, "--one", str(n)], capture_output=True,
                           text=True, check=True)  # fmt: skip
        row = json.loads(p.stdout)
        row["loadavg"] = Path("/proc/loadavg").read_text().split()[0]
        rows.append(row)
        print(f"{row['tasks']:>12,} tasks: build {row['build_s']:7.1f} s, simulate "
              f"{row['simulate_s']:7.1f} s, {row['us_per_task']:5.2f} us/task, "
              f"{row['bytes_per_task']:5.0f} B/task ({row['sim_bytes_per_task']:.0f} beyond the "
              f"input ids and durations), makespan {row['makespan_s']:,.0f} s "
              f"(util {row['utilisation']:.0%}), load {row['loadavg']}", flush=True)  # fmt: skip
    first, last = rows[0], rows[-1]
    flat = last["us_per_task"] / first["us_per_task"]
    print(f"per-task cost {last['tasks']:,} / {first['tasks']:,}: {flat:.2f}x "
          f"(target <= {MAX_FLAT}x)")  # fmt: skip
    worst = max(r["bytes_per_task"] for r in rows)
    print(f"memory: at most {worst:.0f} bytes per task (target <= {MAX_BYTES})")
    big = [r for r in rows if r["tasks"] >= 9_000_000]
    if big:
        print(f"10M: {big[0]['total_s']:.0f} s (target <= {MAX_SECONDS_10M:.0f} s)")


if __name__ == "__main__":
    main()
