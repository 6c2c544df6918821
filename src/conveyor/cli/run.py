"""``conveyor run FILE``: run a graph file to the end in this process, with progress.

No ``from __future__ import annotations`` here: typer reads a command's parameters from its
annotations, and evaluating them as strings (``eval``, a compile each) cost every run ~3 ms;
as objects made at import they cost nothing more. Names imported for type checking only are
quoted."""

from typing import TYPE_CHECKING, Annotated, Any

import typer

from conveyor.cli import options as opt
from conveyor.cli.errors import allow_fast_exit, exit_now, user_errors
from conveyor.cli.inputs import graph_file, load_graph_file
from conveyor.errors import UsageError

if TYPE_CHECKING:
    from conveyor.api import RunResult
    from conveyor.model import GraphSpec

#: Failed tasks the summary names before it says "...".
SHOWN_FAILURES = 10


def run(
    file: opt.GraphFile,
    workers: opt.InFlight = None,
    db: opt.Db = None,
    events: opt.Events = None,
    quiet: opt.Quiet = False,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first failure.")] = (
        False
    ),
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace another graph's unfinished work in --db.")
    ] = False,
    executor: opt.Executor = None,
    address: opt.RayAddress = None,
    lease: opt.Lease = opt.LEASE_S,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for retry jitter.")] = None,
    resources: opt.Resources = None,
    labels: opt.Labels = None,
    no_fingerprints: Annotated[
        bool,
        typer.Option(
            "--no-fingerprints",
            help="With --db: resume runs only unfinished tasks (no re-run of what changed).",
        ),
    ] = False,
    otel: opt.Otel = False,
    speed: Annotated[
        float | None,
        typer.Option(
            "--speed",
            help="Replay a trace: each task without fn or cmd sleeps its runtime_s / SPEED "
            "(a no-op without --speed).",
        ),
    ] = None,
    borrow: opt.Borrow = None,
    no_preempt: opt.NoPreempt = False,
) -> None:
    """Run a graph file to the end, with a progress bar."""
    import gc

    from conveyor.api import open_run
    from conveyor.bulk import freeze_survivors
    from conveyor.progress import finished_of, make_progress

    opt.check_executor(executor, address)
    progress: Any = None

    def tick(_engine: object) -> None:  # on the engine's thread, every 0.2 s
        if progress is not None:
            counts = opened.counts
            progress.update(counts, total=sum(counts.values()))

    with user_errors():
        lease = opt.checked(lease, "LeaseSeconds", "--lease", default=opt.LEASE_S)
        telemetry = opt.telemetry(otel)
        graph: Any = graph_file(file)
        if speed is not None:
            graph = sleeping(load_graph_file(file), speed)
        gc.disable()  # until freeze_survivors: no collection walks the graph being loaded
        with open_run(
            graph, db=db, events=events, replace=replace,
            fingerprints=not no_fingerprints, lease_s=lease,
            resources=opt.parse_pairs(resources, "resources", number=True),
            labels=opt.parse_pairs(labels, "labels", number=False),
            fail_fast=fail_fast, executor=executor, seed=seed, on_tick=tick, telemetry=telemetry,
            borrow=borrow, ray_address=address, preempt=not no_preempt,
            **opt.in_flight(workers),
        ) as opened:  # fmt: skip
            freeze_survivors()  # this process ends with the run: the loaded graph stays
            start = opened.counts
            progress = make_progress(sum(start.values()), quiet=quiet, already=finished_of(start))
            try:
                result = opened.run()
            except KeyboardInterrupt:
                result = opened.result()  # the run stopped and recorded what finished
            counts = result.counts
            if progress is not None:  # one final line (an update, then close, gave two)
                progress.close(counts, total=sum(counts.values()))
            code = result.exit_code
            if not quiet:
                summary(result, counts, opened.elapsed, opened.interrupted)
            lost = opened.engine.lost
            if lost is not None:
                typer.echo(lost_line(lost, result.stats.released, db), err=True)
        if opened.stuck or opened.interrupted or lost is not None:
            exit_now(code)  # do not wait for a thread that cannot be stopped
    # The store and the event file are closed: the process may end now (``allow_fast_exit``).
    allow_fast_exit(telemetry, executor, user_code_ran=not no_user_code(opened.graph))
    raise typer.Exit(code)


def no_user_code(spec: "GraphSpec | None") -> bool:
    """No task of ``spec`` is a Python function run in this process (no-ops and commands)."""
    return spec is not None and (spec.structure_only or all(t.fn is None for t in spec.tasks))


def sleeping(spec: "GraphSpec", speed: float) -> "GraphSpec":
    """``spec`` with each task that has no function or command but a traced ``runtime_s``
    (WfFormat and WfCommons traces) made a ``time.sleep`` of ``runtime_s / speed`` seconds: a
    trace replayed in real time (``speed`` 1) or faster. The traced command is not run."""
    if not speed > 0 or speed == float("inf"):
        raise UsageError(f"--speed must be a number > 0, got {speed}")
    for t in spec.tasks:
        if t.fn is None and t.cmd is None and t.runtime_s:
            t.fn = "time:sleep"
            t.args = (t.runtime_s / speed,)
            spec.structure_only = False
    return spec


def lost_line(lost: str, released: int, db: str | None) -> str:
    """What the user reads when the Ray cluster went away mid-run."""
    if db is not None and not db.startswith("memory:"):
        then = "finished work is kept: run the same command again to run the rest"
    else:
        then = "the run was in memory: give --db sqlite:///run.db to keep finished work"
    return f"conveyor: error: {lost}; {released} running task(s) handed back; {then}"


def summary(result: "RunResult", counts: dict[str, int], elapsed: float, interrupted: bool) -> None:
    """One line of counts on stderr, then the first failed tasks with their errors."""
    from conveyor.model import TaskState
    from conveyor.progress import cancelled_part

    msg = (
        f"conveyor: {counts.get('done', 0)} done, {counts.get('failed', 0)} failed, "
        f"{counts.get('skipped', 0)} skipped{cancelled_part(counts)} in {elapsed:.2f}s"
    )
    typer.echo(msg + (" (interrupted)" if interrupted else ""), err=True)
    if not counts.get("failed", 0) or result.graph is None:
        return
    shown = 0
    for t in result.graph.tasks:
        r = result.result(t.id)
        if r.state is TaskState.FAILED:
            typer.echo(f"  failed {t.id}: {r.error}", err=True)
            shown += 1
            if shown >= SHOWN_FAILURES:
                typer.echo("  ...", err=True)
                break
