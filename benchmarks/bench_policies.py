"""Policy comparison on real workflow traces: ``conveyor simulate`` under every policy.

    python benchmarks/bench_policies.py DIR                      # print the markdown table
    python benchmarks/bench_policies.py DIR --readme README.md    # and put it in the README

DIR holds WfCommons traces (simplified graph files or WfFormat instances). Per family (the
file's ``family``, else its name up to the first ``-``) the largest file with at least
``--min-tasks`` tasks is simulated on 16, 64 and 256 workers (one slot each) under each policy
of ``core/policies.py``, with each task's traced runtime. Each cell: the makespan / the p95 of
the root-completion times (the moment each root's tree of work is finished; all roots are
submitted at 0), in seconds; the lower bound is max(critical path, work / workers); the last
columns compare depth-first and FIFO on the median root-completion time and on the most roots
whose trees were in progress at once (the intermediate data alive).
A last row group is a synthetic graph of independent jobs (``--synthetic``), the case of many
users' submissions. The simulation is deterministic: the table is the same on every machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from conveyor.core.policies import POLICIES
from conveyor.graphfile import load_graph
from conveyor.sim import SimConfig, simulate
from conveyor.sim.inputs import batch_of, layered
from conveyor.sim.report import lower_bound, percentile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from readme_table import replace_table


def family_of(path: Path) -> str:
    try:
        with path.open() as f:
            family = json.load(f).get("family")
    except (OSError, ValueError, AttributeError):
        family = None
    return family if isinstance(family, str) else path.stem.split("-")[0]


def pick(directory: Path, min_tasks: int) -> list[Path]:
    best: dict[str, tuple[int, Path]] = {}
    for path in sorted(directory.glob("*.json")):
        n = len(load_graph(path).tasks)
        fam = family_of(path)
        if n >= min_tasks and (fam not in best or n > best[fam][0]):
            best[fam] = (n, path)
    return [p for _, p in sorted(best.values(), key=lambda v: -v[0])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("directory", type=Path)
    ap.add_argument("--workers", default="16,64,256")
    ap.add_argument("--min-tasks", type=int, default=300)
    ap.add_argument(
        "--synthetic",
        type=int,
        default=5000,
        help="also a synthetic graph of this many tasks in jobs of 17 (0: none)",
    )
    ap.add_argument("--readme", type=Path, help="replace the table between its markers here")
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    head = "| workflow (tasks) | workers | lower bound | " + " | ".join(POLICIES)
    head += " | root p50: depth_first / fifo | peak roots in progress: depth_first / fifo |"
    lines = [head, "|" + "---|" * (5 + len(POLICIES))]
    wins = dict.fromkeys(POLICIES, 0)
    graphs = [(f"{(s := load_graph(p)).name} ({len(s.tasks):,})", batch_of(s))
              for p in pick(args.directory, args.min_tasks)]  # fmt: skip
    synthetic = layered(args.synthetic, layers=5, width=4) if args.synthetic else None
    if synthetic is not None:
        graphs.append((f"synthetic: {len(synthetic.ids) // 17:,} independent jobs "
                       f"({len(synthetic.ids):,})", synthetic))  # fmt: skip
    for name, batch in graphs:
        for w in counts:
            bound = max(lower_bound([batch], w, 1.0))
            cells = []
            results = [simulate([batch], SimConfig(workers=w, policy=p)) for p in POLICIES]
            best = min(r.makespan for r in results)
            for r in results:
                cell = f"{r.makespan:,.0f} / {percentile(r.root_done, 95):,.0f}"
                if r.makespan <= best * 1.0001:
                    cell = f"**{cell}**"
                    wins[r.policy] += 1
                cells.append(cell)
            df, fifo = results[POLICIES.index("depth_first")], results[POLICIES.index("fifo")]
            p50 = f"{percentile(df.root_done, 50):,.0f} / {percentile(fifo.root_done, 50):,.0f}"
            peaks = f"{df.peak_roots:,} / {fifo.peak_roots:,}"
            lines.append(f"| {name} | {w} | {bound:,.0f} | " + " | ".join(cells)
                         + f" | {p50} | {peaks} |")  # fmt: skip
    table = "\n".join(lines)
    summary = ", ".join(f"{p} {n}" for p, n in wins.items())
    table += (
        f"\n\nShortest makespan (bold, ties count for each): {summary} of {len(lines) - 2} rows."
    )
    print(table)
    if args.readme:
        replace_table(args.readme, "bench_policies", table)


if __name__ == "__main__":
    main()
