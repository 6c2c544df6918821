"""``conveyor simulate FILE...``: replay graphs on simulated workers under one or more policies."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from conveyor.cli.errors import user_errors
from conveyor.errors import UsageError


def parse_groups(text: str | None) -> dict[str, tuple[float, int | None]]:
    """``"a=2,b=1/8"``: group ``a`` of weight 2, group ``b`` of weight 1 capped at 8 running."""
    out: dict[str, tuple[float, int | None]] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        name, eq, rest = part.partition("=")
        weight_text, _, cap_text = rest.partition("/")
        try:
            weight = float(weight_text)
            cap = int(cap_text) if cap_text else None
        except ValueError:
            weight, cap = -1.0, None
        if not name or not eq or not weight > 0 or (cap is not None and cap < 1):
            raise UsageError(
                f"--groups: {part!r} is not NAME=WEIGHT or NAME=WEIGHT/CAP "
                "(a weight > 0, a cap >= 1), e.g. --groups a=2,b=1/8"
            )
        out[name] = (weight, cap)
    return out


def parse_policies(text: str) -> list[str]:
    from conveyor.core.policies import POLICIES

    names = [p.strip() for p in text.split(",") if p.strip()]
    if names == ["all"]:
        return list(POLICIES)
    unknown = [p for p in names if p not in POLICIES]
    if unknown or not names:
        raise UsageError(
            f"--policy: unknown policy {', '.join(unknown) or repr(text)}; "
            f"known: {', '.join(POLICIES)} (or all)"
        )
    return names


def simulate(
    files: Annotated[list[Path], typer.Argument(help="Graph files (.json, .yaml, WfFormat).")],
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="Workers.")] = 64,
    policy: Annotated[
        str,
        typer.Option(
            "--policy",
            help="depth_first (the engine's), fifo, breadth_first, critical_path, "
            "shortest_first; several comma-separated, or all.",
        ),
    ] = "depth_first",
    groups: Annotated[
        str | None,
        typer.Option("--groups", help="Group weights and caps: a=2,b=1/8 (NAME=WEIGHT[/CAP])."),
    ] = None,
    slots_per_worker: Annotated[
        int, typer.Option("--slots-per-worker", min=1, help="Tasks one worker runs at once.")
    ] = 1,
    speed: Annotated[
        float, typer.Option("--speed", help="Durations are divided by this (2 = twice as fast).")
    ] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Simulate running graphs on WORKERS workers: makespan, utilisation, root latency, shares.

    The engine's own scheduling core decides (the depth-first frontier, admission, fair share);
    each task takes its expected_s, else its traced runtime_s, else 0 seconds. Several files are
    submitted together, each as its own group. Deterministic: the same input, the same output.
    """
    from conveyor.cli.inputs import load_graph_file
    from conveyor.sim.inputs import batch_of, group_per_graph
    from conveyor.sim.loop import SimConfig, SimResult
    from conveyor.sim.loop import simulate as run_simulation
    from conveyor.sim.report import as_dict, lower_bound, text

    with user_errors():
        if not speed > 0 or speed == float("inf"):
            raise UsageError(f"--speed must be a number > 0, got {speed}")
        policies = parse_policies(policy)
        weights = parse_groups(groups)
        specs = [load_graph_file(f) for f in files]
        if len(specs) > 1:
            if len({s.name for s in specs}) < len(specs):
                raise UsageError("two graph files have the same name: rename one")
            group_per_graph(specs)
        for s in specs:
            for name, g in s.groups.items():
                weights.setdefault(name, (g.weight, g.cap))
        if len(specs) > 1:
            for s in specs:
                weights.setdefault(s.name, (1.0, None))
        batches = [batch_of(s) for s in specs]
        bound = lower_bound(batches, workers * slots_per_worker, speed)
        results: list[SimResult] = []
        last = [time.monotonic()]

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if not quiet and now - last[0] >= 5:
                last[0] = now
                print(f"simulating {policies[len(results)]}: {done:,}/{total:,} tasks",
                      file=sys.stderr)  # fmt: skip

        for p in policies:
            config = SimConfig(workers, slots_per_worker, p, speed)
            results.append(run_simulation(batches, config, weights, progress))
    if as_json:
        out = {
            "files": [str(f) for f in files],
            "tasks": results[0].tasks,
            "workers": workers,
            "slots_per_worker": slots_per_worker,
            "speed": speed,
            "lower_bound_s": {"critical_path": round(bound[0], 6),
                              "work_per_slot": round(bound[1], 6)},
            "policies": [as_dict(r) for r in results],
        }  # fmt: skip
        typer.echo(json.dumps(out, indent=2))
    else:
        typer.echo(text([s.name for s in specs], results, bound, slots_per_worker, speed))
