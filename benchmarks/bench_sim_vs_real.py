"""The simulator against reality: the same graph of sleep tasks run for real and simulated.

    flock /tmp/bench.lock python benchmarks/bench_sim_vs_real.py
    flock /tmp/bench.lock python benchmarks/bench_sim_vs_real.py --tasks 500 --repeat 1

The graph: ``--tasks`` (2,000) tasks in independent jobs of 20 (a root, then layers of 3 on two
tasks of the layer above), each ``time.sleep`` of a duration drawn once (seeded) from
``--min-ms``..``--max-ms``; its ``runtime_s`` says the same duration, which is all the simulator
is told. Real: ``conveyor.run(graph, workers=8)`` (the thread executor: 8 slots), timed from the
first ``task_started`` to the last ``task_finished`` event (the window the simulated makespan
measures; the run's whole wall time is shown beside it). Simulated: ``conveyor.sim.simulate``
with 1 worker of 8 slots. Target (issue 15): makespans within 10 %. Then the same graph with
durations / 10 on one slot: the real start order against the simulated one, task by task.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path
from typing import Any

import conveyor
from conveyor.graphfile import graph_from_dict
from conveyor.sim import SimConfig, simulate
from conveyor.sim.inputs import batch_of
from conveyor.testing import EventLog

MAX_ERROR = 0.10


def sleep_graph(n: int, lo_ms: float, hi_ms: float, scale: float = 1.0) -> dict[str, Any]:
    rnd = random.Random(15)
    tasks: list[dict[str, Any]] = []
    per_job, width = 20, 3
    for i in range(n):
        job, k = divmod(i, per_job)
        base = job * per_job
        if k == 0:
            parents: list[str] = []
        elif k <= width:
            parents = [f"t{base}"]
        else:
            layer, p = divmod(k - 1, width)
            prev = base + 1 + (layer - 1) * width
            parents = sorted({f"t{prev + p}", f"t{prev + (p + 1) % width}"} & {
                f"t{j}" for j in range(base, i)})  # fmt: skip
        d = rnd.uniform(lo_ms, hi_ms) / 1000 * scale
        tasks.append({"id": f"t{i}", "deps": parents, "fn": "time:sleep", "args": [d],
                      "runtime_s": d})  # fmt: skip
    return {"name": "sleeps", "tasks": tasks}


def real(graph: dict[str, Any], slots: int) -> tuple[float, float, list[str]]:
    log = EventLog()
    t0 = time.perf_counter()
    result = conveyor.run(graph, workers=slots, emit=log)
    wall = time.perf_counter() - t0
    assert result.stats.done == len(graph["tasks"]), result.stats
    started = log.of("task_started")
    finished = log.of("task_finished")
    window = max(e["ts"] for e in finished) - min(e["ts"] for e in started)
    return window, wall, [e["task"] for e in started]


def simulated(graph: dict[str, Any], slots: int) -> Any:
    spec = graph_from_dict(graph)
    config = SimConfig(workers=1, slots_per_worker=slots, record_starts=True)
    return simulate([batch_of(spec)], config)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=2000)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--min-ms", type=float, default=5.0)
    ap.add_argument("--max-ms", type=float, default=45.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    graph = sleep_graph(args.tasks, args.min_ms, args.max_ms)
    sim = simulated(graph, args.slots)
    runs = [real(graph, args.slots) for _ in range(args.repeat)]
    window = statistics.median(r[0] for r in runs)
    wall = statistics.median(r[1] for r in runs)
    error = window / sim.makespan - 1
    load = Path("/proc/loadavg").read_text().split()[0]
    print(f"{args.tasks:,} sleep tasks ({args.min_ms:g}-{args.max_ms:g} ms), {args.slots} slots, "
          f"median of {args.repeat}, load {load}")  # fmt: skip
    print(f"  simulated makespan {sim.makespan:.3f} s (lower bound: work / slots "
          f"{sim.busy / args.slots:.3f} s)")  # fmt: skip
    print(f"  real makespan      {window:.3f} s (first start to last finish; whole run "
          f"{wall:.3f} s)")  # fmt: skip
    print(f"  real / simulated   {window / sim.makespan:.3f} ({error:+.1%}; target within "
          f"{MAX_ERROR:.0%}): {'ok' if abs(error) <= MAX_ERROR else 'MISSED'}")  # fmt: skip
    small = sleep_graph(args.tasks, args.min_ms, args.max_ms, scale=0.1)
    _, _, order = real(small, 1)
    sim_order = simulated(small, 1).starts
    same = sum(a == b for a, b in zip(order, sim_order, strict=True))
    print(f"  one slot, durations / 10: {same:,} of {len(order):,} starts in the same place"
          f"{' (identical order)' if order == sim_order else ''}")  # fmt: skip


if __name__ == "__main__":
    main()
