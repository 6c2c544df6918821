"""Commands that change a finished run in a durable store: ``retry``, ``prune``."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from conveyor.cli import options as opt
from conveyor.cli.errors import fail, user_errors
from conveyor.cli.inputs import durable_store


def retry(
    db: opt.DbRequired,
    task: Annotated[str | None, typer.Argument(help="Task id (or --failed).")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Retry every failed task.")] = False,
) -> None:
    """Run failed tasks again (and what their failure skipped)."""
    if (task is None) == (not failed):
        fail("give a TASK or --failed (not both)")
    with user_errors(), durable_store(db) as store:
        ids = store.retry(None if task is None else [task], time.time())
    typer.echo(f"conveyor: {len(ids)} task(s) will run again", err=True)


def prune(
    db: opt.DbRequired,
    keep: Annotated[int, typer.Option("--keep", help="Audit rows kept per task.")] = 10,
) -> None:
    """Trim old audit rows: keep the newest --keep per task (task states are never lost), and
    remove result files no task names any more (tasks run again, graphs replaced)."""
    with user_errors(), durable_store(db) as store:
        n = store.prune(keep)
        files, size = store.prune_results()
    typer.echo(f"conveyor: pruned {n} audit rows and {files} result files "
               f"({size / 1e6:.1f} MB)", err=True)  # fmt: skip
