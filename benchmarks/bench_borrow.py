"""Borrow policies on real workflow traces: a late group under strict, bounded, work_conserving.

    python benchmarks/bench_borrow.py DIR                      # print the markdown table
    python benchmarks/bench_borrow.py DIR --readme README.md    # and put it in the README

DIR holds WfCommons traces. Each pair of traces is simulated as two groups of equal weight
(``conveyor simulate EARLY LATE@SECONDS --borrow strict,bounded,work_conserving``): the early
trace alone from 0 (so it holds the whole pool), the late one submitted ``--arrive`` seconds
later, on 16 and 64 workers of one slot, depth-first, with each task's traced runtime. Per
policy: the makespan, each group's p95 root latency (a root's tree finished, less its graph's
arrival), the late group's time to reach its fair share (half the slots, or all its unfinished
tasks if fewer) and the time it had ready tasks waiting while below that share. Deterministic:
the same table on every machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from conveyor.core.borrow import POLICIES, BorrowPolicy
from conveyor.graphfile import load_graph
from conveyor.sim import SimConfig, simulate
from conveyor.sim.inputs import batch_of, group_per_graph
from conveyor.sim.loop import SimGroup
from conveyor.sim.report import group_rows

sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme_table import replace_table

PAIRS = [
    ("srasearch-chameleon-50a-001.json", "epigenomics-chameleon-hep-6seq-50k-001.json"),
    ("montage-chameleon-dss-15d-001.json", "1000genome-chameleon-22ch-250k-001.json"),
    ("soykb-chameleon-50fastq-20ch-001.json", "cycles-chameleon-5l-2c-9p-001.json"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("directory", type=Path)
    ap.add_argument("--workers", default="16,64")
    ap.add_argument("--arrive", type=float, default=600.0, help="the late trace's arrival (s)")
    ap.add_argument("--readme", type=Path, help="replace the table between its markers here")
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    lines = [
        "| early + late trace (tasks) | workers | borrow | makespan | early root p95 "
        "| late root p95 | late: time to share | late: waited below share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for early_name, late_name in PAIRS:
        early = load_graph(args.directory / early_name)
        late = load_graph(args.directory / late_name)
        group_per_graph([early, late])
        batches = [batch_of(early), batch_of(late, arrive=args.arrive)]
        groups = {early.name: SimGroup(), late.name: SimGroup()}
        title = (f"{early.name} ({len(early.tasks):,}) + {late.name} ({len(late.tasks):,}) "
                 f"at {args.arrive:,.0f} s")  # fmt: skip
        for w in counts:
            for policy in POLICIES:
                config = SimConfig(workers=w, borrow=BorrowPolicy.parse(policy))
                r = simulate(batches, config, groups)
                rows = group_rows(r)
                e, la = rows[early.name], rows[late.name]
                tts = la["time_to_share_s"]
                reach = "never" if tts is None else f"{tts:,.0f} s"
                lines.append(
                    f"| {title} | {w} | {policy} | {r.makespan:,.0f} s | {e['root_p95_s']:,.0f} s "
                    f"| {la['root_p95_s']:,.0f} s | {reach} | {la['below_share_s']:,.0f} s |"
                )
                title = ""
    table = "\n".join(lines)
    print(table)
    if args.readme:
        replace_table(args.readme, "bench_borrow", table)


if __name__ == "__main__":
    main()
