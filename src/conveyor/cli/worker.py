"""``conveyor worker``: join the graph in a durable store and run its tasks until it is finished.

A worker may be told its end (a SLURM job's time limit): ``--until EPOCH_SECONDS``,
``--time-left SECONDS``, or the environment variable ``CONVEYOR_WORKER_END`` (epoch seconds; a
job script sets it). It then starts no task whose ``expected_s`` could not finish before then
(``core/timelimit.py``) and hands back what still runs at the end. ``SIGUSR2`` or ``SIGTERM``
hand back the running tasks at once (``runtime/signals.py``); either way the worker exits 0.

No ``from __future__ import annotations``: typer would evaluate the option annotations from
strings at every worker's start (a compile each); as objects they are ready at import.
"""

import os
import time
from pathlib import Path
from typing import Annotated

import typer

from conveyor.cli import options as opt
from conveyor.cli.errors import allow_fast_exit, exit_now, user_errors
from conveyor.cli.inputs import durable, durable_store, import_from
from conveyor.errors import UsageError

#: Epoch seconds by which a worker must be done, when neither --until nor --time-left is given.
END_ENV = "CONVEYOR_WORKER_END"


def worker_end(
    until: float | None, time_left: float | None, env: str | None, now: float
) -> float | None:
    """The worker's end in epoch seconds: ``--until``, else ``now + --time-left``, else the
    environment's ``CONVEYOR_WORKER_END`` (``env``), else ``None``; ``UsageError`` for a bad
    value or both options."""
    if until is not None and time_left is not None:
        raise UsageError("give --until or --time-left, not both")
    if until is not None:
        return float(opt.checked(until, "NonNegative", "--until"))
    if time_left is not None:
        return now + float(opt.checked(time_left, "NonNegative", "--time-left"))
    if env is None or not env.strip():
        return None
    try:
        end = float(env)
    except ValueError:
        raise UsageError(f"{END_ENV}: expected epoch seconds, got {env!r}") from None
    return float(opt.checked(end, "NonNegative", END_ENV))


def worker(
    db: opt.DbRequired,
    workers: opt.InFlight = None,
    labels: opt.Labels = None,
    resources: opt.Resources = None,
    max_tasks: Annotated[
        int | None, typer.Option("--max-tasks", min=1, help="Exit after this many tasks.")
    ] = None,
    idle_exit: Annotated[
        float | None,
        typer.Option("--idle-exit", help="Exit after this many seconds with nothing to do."),
    ] = None,
    until: Annotated[
        float | None,
        typer.Option(
            "--until",
            help="Epoch seconds by which to be done: start no task whose expected_s cannot "
            f"finish by then; hand back what runs then (default: ${END_ENV}).",
        ),
    ] = None,
    time_left: Annotated[
        float | None,
        typer.Option("--time-left", help="Seconds from now by which to be done (as --until)."),
    ] = None,
    lease: opt.Lease = opt.LEASE_S,
    events: opt.Events = None,
    quiet: opt.Quiet = False,
    executor: opt.Executor = None,
    otel: opt.Otel = False,
    address: opt.RayAddress = None,
    no_preempt: opt.NoPreempt = False,
) -> None:
    """Run tasks of the graph in --db until it is finished (exit 0; 1 if tasks failed).
    SIGUSR2 or SIGTERM hand the running tasks back to the store at once; then exit 0."""
    from conveyor.api import open_run
    from conveyor.outcome import exit_code, left
    from conveyor.runtime.signals import HandBackOnSignals
    from conveyor.store.sharedfs import sqlite_fs_warning

    opt.check_executor(executor, address)
    with HandBackOnSignals() as signals, user_errors():
        lease = opt.checked(lease, "LeaseSeconds", "--lease", default=opt.LEASE_S)
        if idle_exit is not None:
            idle_exit = opt.checked(idle_exit, "Wait", "--idle-exit")
        end = worker_end(until, time_left, os.environ.get(END_ENV), time.time())
        offered = opt.parse_pairs(labels, "labels", number=False)
        has = opt.parse_pairs(resources, "resources", number=True) if resources else None
        telemetry = opt.telemetry(otel)
        # The file's functions import from where the submitter found them (before Ray starts
        # its workers with this import path). One store handle serves that and the run: every
        # open and close of a SQLite file is time a worker spends before its first claim.
        with durable_store(db) as store:  # (refuses a store that does not exist)
            warning = sqlite_fs_warning(db)
            if warning is not None:
                typer.echo(warning, err=True)
            import_from(store.meta_get("graph_dir"), Path.cwd())
            with open_run(
                None, db=durable(db), store=store, events=events, lease_s=lease,
                labels=offered, resources=has, max_tasks=max_tasks, idle_exit=idle_exit,
                executor=executor, until=end, telemetry=telemetry, ray_address=address,
                preempt=not no_preempt, **opt.in_flight(workers),
            ) as joined:  # fmt: skip
                signals.attach(joined.engine)
                interrupted = False
                try:
                    result = joined.run()
                except KeyboardInterrupt:
                    # Also when Ctrl-C lands before the engine's loop runs (e.g. waiting for the
                    # store's write lock to join): the engine never saw it, the exit code must.
                    interrupted = True
                    result = joined.result()  # what it held went back to the store
                counts = result.counts  # (a count of every task: read once)
                code = exit_code(counts, interrupted=interrupted or result.stats.interrupted,
                                 worker=result.joined)  # fmt: skip
    st = result.stats
    lost = joined.engine.lost
    if lost is not None:
        code = max(code, 1)  # this worker stopped short
    if lost is not None:
        typer.echo(f"conveyor: error: {lost}; {st.released} running task(s) handed back to "
                   "the store (other workers, or this one again, run them)", err=True)  # fmt: skip
    if not quiet:
        why = signals.reason or lost or "time limit"
        back = f", {st.released} handed back ({why})" if st.released else ""
        if st.preempted:
            back += f", {st.preempted} preempted"
        typer.echo(
            f"conveyor: worker {joined.worker_id}: {st.done} done, {st.failed} failed, "
            f"{st.retried} retried{back} in {joined.elapsed:.2f}s; graph: "
            f"{counts['done']} done, {counts['failed']} failed, {left(counts)} left",
            err=True,
        )
    if joined.stuck or interrupted or lost is not None:
        exit_now(code)  # do not wait for a thread that cannot be stopped
    # The store and the event file are closed: the process may end without the interpreter's
    # teardown (20-40 ms of every worker's exit) unless a function task ran here.
    allow_fast_exit(telemetry, executor, user_code_ran=st.functions > 0)
    raise typer.Exit(code)
