"""What ``conveyor simulate`` prints: one row per policy, the lower bound, group shares."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from conveyor.core.dag import layout
from conveyor.core.policies import upward_ranks
from conveyor.sim.loop import Batch, SimResult


def percentile(values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (0 < q <= 100) of ``values``; 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def lower_bound(batches: Sequence[Batch], slots: int, speed: float) -> tuple[float, float]:
    """``(critical path, work / slots)`` in seconds: no schedule finishes before the larger."""
    critical = work = 0.0
    for b in batches:
        lay = b.layout if b.layout is not None else layout(b.ids, b.parents)
        durations = [d / speed for d in b.durations]
        critical = max(critical, max(upward_ranks(lay.children, lay.depth, durations), default=0))
        work += sum(durations)
    return critical, work / slots


def as_dict(result: SimResult) -> dict[str, Any]:
    return {
        "policy": result.policy,
        "makespan_s": round(result.makespan, 6),
        "utilisation": round(result.utilisation, 4),
        "roots": len(result.root_done),
        "root_p50_s": round(percentile(result.root_done, 50), 6),
        "root_p95_s": round(percentile(result.root_done, 95), 6),
        "peak_roots_in_progress": result.peak_roots,
        "group_shares": [
            {"start_s": round(a, 6), "end_s": round(b, 6),
             "shares": {g: round(s, 4) for g, s in shares.items()}}
            for a, b, shares in result.shares
        ],
        "wall_s": round(result.wall_s, 3),
    }  # fmt: skip


def text(
    names: Sequence[str],
    results: Sequence[SimResult],
    bound: tuple[float, float],
    slots_per_worker: int,
    speed: float,
) -> str:
    """The human report: the setting, a table of the policies, then group shares if any."""
    first = results[0]
    slot = "slot" if slots_per_worker == 1 else "slots"
    lines = [
        f"simulated {', '.join(names)}: {first.tasks:,} tasks, {first.workers} workers x "
        f"{slots_per_worker} {slot}, speed {speed:g}",
        f"lower bound {max(bound):,.1f} s (critical path {bound[0]:,.1f} s, "
        f"work / slots {bound[1]:,.1f} s); roots {len(first.root_done):,}",
        "",
        f"{'policy':<15} {'makespan':>12} {'vs bound':>9} {'util':>6} {'root p50':>12} "
        f"{'root p95':>12} {'peak roots':>11}",
    ]
    best = max(bound)
    for r in results:
        ratio = f"{r.makespan / best:.2f}x" if best > 0 else "-"
        lines.append(
            f"{r.policy:<15} {r.makespan:>10,.1f} s {ratio:>9} {r.utilisation:>6.0%} "
            f"{percentile(r.root_done, 50):>10,.1f} s {percentile(r.root_done, 95):>10,.1f} s "
            f"{r.peak_roots:>11,}"
        )
    for r in results:
        if not r.shares:
            continue
        groups = list(r.shares[0][2])
        width = min(max(8, *map(len, groups)) + 2, 40)
        lines += ["", f"group shares of the slots over time, {r.policy}:"]
        lines.append(f"  {'window':<16}" + "".join(f"{g[: width - 2]:>{width}}" for g in groups))
        for a, b, shares in r.shares:
            span = f"{a:,.0f}-{b:,.0f} s"
            lines.append(f"  {span:<16}" + "".join(f"{shares[g]:>{width}.0%}" for g in groups))
    return "\n".join(lines)
