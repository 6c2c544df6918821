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


def group_latencies(result: SimResult) -> dict[str, list[float]]:
    """Each group's root latencies (the group of a root is its root task's)."""
    out: dict[str, list[float]] = {g: [] for g in result.arrivals}
    for g, t in zip(result.root_groups, result.root_latency, strict=True):
        out.setdefault(g, []).append(t)
    return out


def group_rows(result: SimResult) -> dict[str, dict[str, Any]]:
    """Per group (with two groups or more): arrival, root latency p50/p95, time to share."""
    if not result.arrivals:
        return {}
    lat = group_latencies(result)
    return {
        g: {"arrive_s": round(result.arrivals[g], 6),
            "roots": len(lat.get(g, [])),
            "root_p50_s": round(percentile(lat.get(g, []), 50), 6),
            "root_p95_s": round(percentile(lat.get(g, []), 95), 6),
            "time_to_share_s": (None if g not in result.time_to_share
                                else round(result.time_to_share[g], 6)),
            "below_share_s": round(result.below_share.get(g, 0.0), 6)}
        for g in result.arrivals
    }  # fmt: skip


def as_dict(result: SimResult) -> dict[str, Any]:
    return {
        "policy": result.policy,
        "borrow": result.borrow,
        "makespan_s": round(result.makespan, 6),
        "utilisation": round(result.utilisation, 4),
        "roots": len(result.root_done),
        "root_p50_s": round(percentile(result.root_latency, 50), 6),
        "root_p95_s": round(percentile(result.root_latency, 95), 6),
        "peak_roots_in_progress": result.peak_roots,
        "groups": group_rows(result),
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
    """The human report: the setting, a table of the combinations (policy and, with groups,
    borrow policy), then per group its root latency, time to share and shares over time."""
    first = results[0]
    slot = "slot" if slots_per_worker == 1 else "slots"
    grouped = any(r.arrivals for r in results)
    label = "policy / borrow" if grouped else "policy"
    width = max(15, *(len(_label(r, grouped)) for r in results))
    lines = [
        f"simulated {', '.join(names)}: {first.tasks:,} tasks, {first.workers} workers x "
        f"{slots_per_worker} {slot}, speed {speed:g}",
        f"lower bound {max(bound):,.1f} s (critical path {bound[0]:,.1f} s, "
        f"work / slots {bound[1]:,.1f} s); roots {len(first.root_done):,}",
        "",
        f"{label:<{width}} {'makespan':>12} {'vs bound':>9} {'util':>6} {'root p50':>12} "
        f"{'root p95':>12} {'peak roots':>11}",
    ]
    best = max(bound)
    for r in results:
        ratio = f"{r.makespan / best:.2f}x" if best > 0 else "-"
        lines.append(
            f"{_label(r, grouped):<{width}} {r.makespan:>10,.1f} s {ratio:>9} "
            f"{r.utilisation:>6.0%} {percentile(r.root_latency, 50):>10,.1f} s "
            f"{percentile(r.root_latency, 95):>10,.1f} s {r.peak_roots:>11,}"
        )
    for r in results:
        if r.arrivals:
            lines += ["", *_group_lines(r)]
    return "\n".join(lines)


def _label(r: SimResult, grouped: bool) -> str:
    return f"{r.policy} / {r.borrow}" if grouped else r.policy


def _group_lines(r: SimResult) -> list[str]:
    """One combination's groups: arrival, root latency, time to share; shares over time."""
    rows = group_rows(r)
    groups = list(rows)
    name_w = min(max(8, *map(len, groups)) + 2, 40)
    lines = [
        f"groups, {r.policy} / {r.borrow}:",
        f"  {'group':<{name_w}} {'arrives':>10} {'root p50':>12} {'root p95':>12} "
        f"{'time to share':>14} {'below share':>12}",
    ]
    for g, row in rows.items():
        tts = row["time_to_share_s"]
        reach = "never" if tts is None else f"{tts:,.1f} s"
        lines.append(
            f"  {g[: name_w - 1]:<{name_w}} {row['arrive_s']:>8,.1f} s "
            f"{row['root_p50_s']:>10,.1f} s {row['root_p95_s']:>10,.1f} s {reach:>14} "
            f"{row['below_share_s']:>10,.1f} s"
        )
    if r.shares:
        lines.append("  shares of the slots over time:")
        lines.append(f"  {'window':<16}" + "".join(f"{g[: name_w - 2]:>{name_w}}" for g in groups))
        for a, b, shares in r.shares:
            span = f"{a:,.0f}-{b:,.0f} s"
            lines.append(f"  {span:<16}" + "".join(f"{shares[g]:>{name_w}.0%}" for g in groups))
    return lines
