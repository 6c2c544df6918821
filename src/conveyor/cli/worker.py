"""``conveyor worker``: join the graph in a durable store and run its tasks until it is finished."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from conveyor.cli import options as opt
from conveyor.cli.errors import exit_now, user_errors
from conveyor.cli.inputs import durable, existing_store, import_from


def worker(
    db: opt.DbRequired,
    workers: opt.Workers = 4,
    labels: opt.Labels = None,
    resources: opt.Resources = None,
    max_tasks: Annotated[
        int | None, typer.Option("--max-tasks", min=1, help="Exit after this many tasks.")
    ] = None,
    idle_exit: Annotated[
        float | None,
        typer.Option("--idle-exit", help="Exit after this many seconds with nothing to do."),
    ] = None,
    lease: opt.Lease = 30.0,
    events: opt.Events = None,
    quiet: opt.Quiet = False,
    executor: opt.Executor = None,
) -> None:
    """Run tasks of the graph in --db until it is finished (exit 0; 1 if tasks failed)."""
    from conveyor.api import open_run
    from conveyor.outcome import left

    opt.check_executor(executor)
    with user_errors():
        lease = opt.checked(lease, "Seconds", "--lease")
        if idle_exit is not None:
            idle_exit = opt.checked(idle_exit, "Wait", "--idle-exit")
        existing_store(db)
        offered = opt.parse_pairs(labels, "labels", number=False)
        has = opt.parse_pairs(resources, "resources", number=True) if resources else None
        with open_run(
            None, db=durable(db), events=events, lease_s=lease, labels=offered, resources=has,
            max_tasks=max_tasks, workers=workers, idle_exit=idle_exit, executor=executor,
        ) as joined:  # fmt: skip
            # The file's functions import from where the submitter found them.
            import_from(joined.store.meta_get("graph_dir"), Path.cwd())
            try:
                result = joined.run()
            except KeyboardInterrupt:
                result = joined.result()  # what it held went back to the store
            counts = result.counts
            code = result.exit_code
    st = result.stats
    if not quiet:
        typer.echo(
            f"conveyor: worker {joined.worker_id}: {st.done} done, {st.failed} failed, "
            f"{st.retried} retried in {joined.elapsed:.2f}s; graph: "
            f"{counts['done']} done, {counts['failed']} failed, {left(counts)} left",
            err=True,
        )
    if joined.stuck or joined.interrupted:
        exit_now(code)  # do not wait for a thread that cannot be stopped
    raise typer.Exit(code)
