"""``conveyor simulate FILE...``: replay graphs on simulated workers under one or more policies."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from conveyor.cli.errors import user_errors
from conveyor.errors import UsageError

if TYPE_CHECKING:
    from conveyor.core.borrow import BorrowPolicy
    from conveyor.model import GraphSpec
    from conveyor.sim.loop import SimGroup


def parse_groups(text: str | None) -> dict[str, SimGroup]:
    """``"a=2,b=1/8:strict"``: group ``a`` of weight 2, group ``b`` of weight 1 capped at 8
    running, borrowing nothing beyond its fair share."""
    from conveyor.core.borrow import BorrowPolicy
    from conveyor.sim.loop import SimGroup

    out: dict[str, SimGroup] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        name, eq, rest = part.partition("=")
        numbers, colon, borrow_text = rest.partition(":")
        weight_text, _, cap_text = numbers.partition("/")
        try:
            weight = float(weight_text)
            cap = int(cap_text) if cap_text else None
            borrow = BorrowPolicy.parse(borrow_text) if colon else None
        except ValueError:
            weight, cap = -1.0, None
        if not name or not eq or not weight > 0 or (cap is not None and cap < 1):
            raise UsageError(
                f"--groups: {part!r} is not NAME=WEIGHT[/CAP][:BORROW] (a weight > 0, a cap "
                ">= 1, a borrow policy strict, bounded[:N|:P%] or work_conserving), "
                "e.g. --groups a=2,b=1/8:strict"
            )
        out[name] = SimGroup(weight, cap, borrow)
    return out


def check_group_names(settings: dict[str, SimGroup], specs: Sequence[GraphSpec]) -> None:
    """``--groups`` names only groups the graphs have (their tasks' groups and the files'
    ``groups``; with several files each file's graph is a group, named after it): a mistyped
    name would otherwise change nothing, silently."""
    if not settings:
        return
    known = {t.group for s in specs for t in s.tasks} | {g for s in specs for g in s.groups}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise UsageError(
            f"--groups: unknown group {', '.join(map(repr, unknown))}; the groups are "
            f"{', '.join(sorted(known))} (with several files, each file's graph is a group "
            "named after it)"
        )


def resources_note(specs: Sequence[GraphSpec]) -> str | None:
    """The one line that says the simulation ignores the tasks' ``resources`` (simulated
    workers offer slots only), when any task asks for some; else ``None``."""
    asking = [t for s in specs for t in s.tasks if t.resources]
    if not asking:
        return None
    names = sorted({k for t in asking for k in t.resources})
    return (
        f"conveyor: note: simulated workers offer slots only: the resources {len(asking)} "
        f"task(s) ask for ({', '.join(names)}) are not accounted; each takes one slot"
    )


def parse_borrows(text: str | None) -> list[BorrowPolicy | None]:
    """``--borrow strict,bounded:2,work_conserving`` (or ``all``); ``[None]`` without it (the
    graph file's, else the default)."""
    from conveyor.core.borrow import POLICIES, BorrowPolicy

    if text is None:
        return [None]
    names = [p.strip() for p in text.split(",") if p.strip()]
    if names == ["all"]:
        names = list(POLICIES)
    try:
        if not names:
            raise ValueError(f"unknown borrow policy {text!r}")
        return [BorrowPolicy.parse(n) for n in names]
    except ValueError as exc:
        raise UsageError(f"--borrow: {exc} (several comma-separated, or all)") from None


def parse_file(arg: Path) -> tuple[Path, float]:
    """``FILE@SECONDS``: the graph in FILE, submitted SECONDS into the simulation."""
    text = str(arg)
    head, at, tail = text.rpartition("@")
    if not at or Path(text).exists():
        return arg, 0.0
    try:
        arrive = float(tail)
    except ValueError:
        return arg, 0.0
    if not 0 <= arrive < float("inf"):
        raise UsageError(f"{text}: the arrival after @ must be a number of seconds >= 0")
    return Path(head), arrive


def run_borrow(specs: Sequence[GraphSpec]) -> BorrowPolicy | None:
    """The run's borrow policy the graph files name (``None``: none does); two that differ are
    refused, since one simulated run has one."""
    from conveyor.core.borrow import BorrowPolicy

    named = {s.borrow for s in specs if s.borrow is not None}
    if len(named) > 1:
        raise UsageError(
            f"the graph files name different borrow policies ({', '.join(sorted(named))}): "
            "choose one with --borrow"
        )
    return BorrowPolicy.parse(named.pop()) if named else None


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
    files: Annotated[
        list[Path],
        typer.Argument(
            help="Graph files (.json, .yaml, WfFormat); FILE@SECONDS arrives that late."
        ),
    ],
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
        typer.Option(
            "--groups",
            help="Group weights, caps and borrow policies: a=2,b=1/8:strict "
            "(NAME=WEIGHT\\[/CAP]\\[:BORROW]).",
        ),
    ] = None,
    borrow: Annotated[
        str | None,
        typer.Option(
            "--borrow",
            help="How far a group may borrow beyond its fair share: strict, bounded (25% of "
            "the slots), bounded:N, bounded:P%, work_conserving; several comma-separated, or "
            "all \\[default: the graph file's, else bounded].",
        ),
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
    submitted together, each as its own group (FILE@SECONDS: that late); --borrow compares
    borrow policies. Deterministic: the same input, the same output.
    """
    from conveyor.cli.inputs import load_graph_file
    from conveyor.core.borrow import BorrowPolicy
    from conveyor.sim.inputs import batch_of, distinct_names, group_per_graph, keep_apart
    from conveyor.sim.loop import SimConfig, SimGroup, SimResult
    from conveyor.sim.loop import simulate as run_simulation
    from conveyor.sim.report import as_dict, lower_bound, text

    with user_errors():
        if not speed > 0 or speed == float("inf"):
            raise UsageError(f"--speed must be a number > 0, got {speed}")
        policies = parse_policies(policy)
        borrows = parse_borrows(borrow)
        settings = parse_groups(groups)
        arrivals = [parse_file(f) for f in files]
        specs = [load_graph_file(f) for f, _ in arrivals]
        if len(specs) > 1:  # each file is its own graph and group
            distinct_names(specs)
            keep_apart(specs, [str(f) for f, _ in arrivals])
            group_per_graph(specs)
        check_group_names(settings, specs)
        note = resources_note(specs)
        if note:
            print(note, file=sys.stderr)
        for s in specs:
            for name, g in s.groups.items():
                own = None if g.borrow is None else BorrowPolicy.parse(g.borrow)
                given = settings.get(name)
                if given is None:
                    settings[name] = SimGroup(g.weight, g.cap, own)
                elif given.borrow is None:
                    settings[name] = given._replace(borrow=own)
        if len(specs) > 1:
            for s in specs:
                settings.setdefault(s.name, SimGroup())
        if borrows == [None]:
            borrows = [run_borrow(specs)]
        batches = [batch_of(s, at) for s, (_, at) in zip(specs, arrivals, strict=True)]
        bound = lower_bound(batches, workers * slots_per_worker, speed)
        combos = [(p, b) for p in policies for b in borrows]
        results: list[SimResult] = []
        last = [time.monotonic()]

        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if not quiet and now - last[0] >= 5:
                last[0] = now
                p, b = combos[len(results)]
                print(f"simulating {p} / {b or 'bounded'}: {done:,}/{total:,} tasks",
                      file=sys.stderr)  # fmt: skip

        for p, b in combos:
            config = SimConfig(workers, slots_per_worker, p, speed, borrow=b)
            results.append(run_simulation(batches, config, settings, progress))
    if as_json:
        out = {
            "files": [str(f) for f, _ in arrivals],
            "arrive_s": [at for _, at in arrivals],
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
