"""``conveyor slurm submit|status|scale|cancel``: pilot workers on a SLURM cluster, as job
arrays whose elements each run ``conveyor worker`` on a store (docs/slurm.md)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from conveyor.cli import options as opt
from conveyor.cli.errors import quiet_broken_pipe, user_errors
from conveyor.cli.inputs import durable_store
from conveyor.errors import UsageError

app = typer.Typer(
    no_args_is_help=True,
    help="Pilot workers on SLURM: one job array runs many `conveyor worker`s on a store.",
)

#: Seconds before the time limit at which SLURM tells a worker to hand its tasks back, unless
#: the limit is short (then a quarter of it).
DEFAULT_MARGIN_S = 120


def submit(
    db: opt.DbRequired,
    workers: Annotated[int, typer.Option("--workers", "-n", min=1, help="Pilot workers.")],
    partition: Annotated[str | None, typer.Option("--partition", "-p")] = None,
    time_limit: Annotated[
        str | None, typer.Option("--time", "-t", help="Each worker's time limit (2:00:00).")
    ] = None,
    cpus_per_task: Annotated[int | None, typer.Option("--cpus-per-task", "-c", min=1)] = None,
    mem: Annotated[str | None, typer.Option("--mem", help="Memory per worker (8G).")] = None,
    gpus: Annotated[str | None, typer.Option("--gpus", help="GPUs per worker.")] = None,
    labels: opt.Labels = None,
    resources: opt.Resources = None,
    slots: Annotated[
        int | None,
        typer.Option(
            "--slots", min=1, help="Tasks one worker runs at once (default: --cpus-per-task, or 1)"
        ),
    ] = None,
    max_parallel: Annotated[
        int | None, typer.Option("--max-parallel", min=1, help="Workers running at once.")
    ] = None,
    idle_exit: Annotated[
        float, typer.Option("--idle-exit", help="A worker exits after this many idle seconds.")
    ] = 60.0,
    margin: Annotated[
        int | None,
        typer.Option(
            "--margin",
            min=1,
            help="Seconds before the time limit that a worker gets "
            "SIGUSR2 to hand its tasks back [120, or a quarter of a shorter --time]",
        ),
    ] = None,
    sbatch_arg: Annotated[
        list[str] | None,
        typer.Option("--sbatch-arg", help="Passed to sbatch as is (repeatable): --qos=long"),
    ] = None,
    max_array_size: Annotated[
        int | None,
        typer.Option(
            "--max-array-size",
            min=1,
            help="Split into arrays this small (at most the site's MaxArraySize).",
        ),
    ] = None,
) -> None:
    """Submit WORKERS pilot workers for the graph in --db as one job array (more only when the
    site's MaxArraySize says so); print the job ids and the number of submissions."""
    from conveyor.cluster import pilots, slurm

    with user_errors():
        opt.checked(idle_exit, "Wait", "--idle-exit")
        opt.parse_pairs(labels, "labels", number=False)
        opt.parse_pairs(resources, "resources", number=True)
        margin = signal_margin(margin, time_limit)
        with durable_store(db) as store:
            graph = store.graph_name()
            if graph is None:
                raise UsageError(
                    f"{db}: the store holds no graph: `conveyor submit FILE --db` first"
                )
            if not store.has_unfinished():  # workers would start, find nothing and exit
                typer.echo(f"conveyor: nothing to run: graph {graph!r} in {db} has no unfinished "
                           "task; no workers submitted", err=True)  # fmt: skip
                return
            slurm.require("sbatch")
            options = pilots.PilotOptions(
                db=pilots.absolute_url(db), slots=slots or cpus_per_task or 1,
                idle_exit=idle_exit, labels=labels, resources=resources, partition=partition,
                time=time_limit,
                cpus_per_task=cpus_per_task, mem=mem, gpus=gpus, max_parallel=max_parallel,
                margin_s=margin, sbatch_args=tuple(sbatch_arg or ()),
                job_name=f"conveyor-{graph}"[:64], env=pilots.exported_env(os.environ),
                cwd=str(Path.cwd()),
            )  # fmt: skip
            made = pilots.submit_pilots(store, options, workers, time.time(),
                                        max_array_size=max_array_size)  # fmt: skip
            _print_submitted(made)
            typer.echo(f"output: {pilots.script_dir(db)}")


def signal_margin(margin: int | None, time_limit: str | None) -> int:
    """The seconds before the time limit at which a worker is signalled: ``margin``, which
    must be shorter than the limit; by default 120 s, or a quarter of a shorter limit."""
    from conveyor.core.slurmplan import parse_time_limit

    limit_s = parse_time_limit(time_limit) if time_limit else None
    if margin is None:
        return DEFAULT_MARGIN_S if limit_s is None else min(DEFAULT_MARGIN_S,
                                                            max(1, int(limit_s // 4)))  # fmt: skip
    if limit_s is not None and margin >= limit_s:
        raise UsageError(f"--margin {margin}: must be shorter than --time {time_limit}")
    return margin


def _print_submitted(made: list[Any]) -> None:
    for a in made:
        typer.echo(f"job {a.job}: workers {a.offset}-{a.offset + a.count - 1}")
    n = sum(a.count for a in made)
    typer.echo(f"{n} worker{'s' * (n != 1)} in {len(made)} sbatch "
               f"submission{'s' * (len(made) != 1)}")  # fmt: skip


def status(db: opt.DbRequired, as_json: opt.AsJson = False) -> None:
    """The store's pilot workers: SLURM array element, state, node, worker and its tasks
    (one squeue call; no accounting needed)."""
    import json

    from conveyor.cluster import pilots

    with user_errors(), durable_store(db) as store:
        now = time.time()
        rows = pilots.pilot_rows(store, now)
        _opts, arrays = pilots.load_record(store)
        counts = store.counts()
    if as_json:
        elements = [r.as_json() for r in rows]
        typer.echo(json.dumps({"arrays": [a.job for a in arrays], "elements": elements}))
        return
    typer.echo(f"{len(arrays)} sbatch submission{'s' * (len(arrays) != 1)}: "
               f"{', '.join(a.job for a in arrays) or '-'}")  # fmt: skip
    typer.echo(f"{'WORKER#':>7}  {'ARRAY':<12} {'STATE':<11} {'NODE':<12} {'CONVEYOR':<22} TASKS")
    for r in rows:
        tasks = ",".join(r.tasks) or "-"
        typer.echo(f"{r.index:>7}  {r.array:<12} {r.state:<11} {r.node or '-':<12} "
                   f"{r.worker or '-':<22} {tasks}")  # fmt: skip
    left = sum(v for k, v in counts.items() if k not in ("done", "failed", "skipped", "cancelled"))
    typer.echo(f"graph: {counts.get('done', 0)} done, {counts.get('failed', 0)} failed, "
               f"{left} left")  # fmt: skip


def scale(
    workers: Annotated[int, typer.Argument(min=0, help="Pilot workers wanted.")],
    db: opt.DbRequired,
    max_array_size: Annotated[int | None, typer.Option("--max-array-size", min=1)] = None,
) -> None:
    """Keep WORKERS pilot workers queued or running: submit more (one array) or cancel the
    surplus (pending first, then idle, then busy; the highest numbers first)."""
    from conveyor.cluster import pilots

    with user_errors(), durable_store(db) as store:
        made, cancelled = pilots.scale_to(store, workers, time.time(),
                                          max_array_size=max_array_size)  # fmt: skip
    if made:
        _print_submitted(made)
    elif cancelled:
        typer.echo(f"cancelled {len(cancelled)}: {' '.join(cancelled)}")
    else:
        typer.echo(f"{workers} already queued or running")


def cancel(db: opt.DbRequired) -> None:
    """Cancel every job array submitted for --db (one scancel)."""
    from conveyor.cluster import pilots

    with user_errors(), durable_store(db) as store:
        jobs = pilots.cancel_all(store)
    typer.echo(f"cancelled {len(jobs)} array{'s' * (len(jobs) != 1)}: {' '.join(jobs) or '-'}")


for _name, _command in (("submit", submit), ("status", status), ("scale", scale),
                        ("cancel", cancel)):  # fmt: skip
    app.command(_name)(quiet_broken_pipe(_command))
