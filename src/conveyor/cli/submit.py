"""``conveyor submit`` (put a graph into a durable store) and ``conveyor plan`` (what a submit
would run again, and why)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer

from conveyor.cli import options as opt
from conveyor.cli.errors import user_errors
from conveyor.cli.inputs import durable_store, load_graph_file

if TYPE_CHECKING:
    from conveyor.core.fingerprint import Decision


def submit(
    file: opt.GraphFile,
    db: opt.DbRequired,
    replace: Annotated[
        bool, typer.Option("--replace", help="Discard another graph's unfinished work.")
    ] = False,
    no_fingerprints: Annotated[
        bool,
        typer.Option("--no-fingerprints", help="Resume adds new tasks only (no re-runs)."),
    ] = False,
    borrow: opt.Borrow = None,
) -> None:
    """Put a graph into a durable store for `conveyor worker`s to run. The same graph
    again resumes it: what changed and its downstream run again (docs/incremental.md)."""
    from conveyor.fingerprints import open_graph
    from conveyor.store.sharedfs import sqlite_fs_warning

    with user_errors():
        spec = load_graph_file(file)
        if borrow is not None:
            from conveyor.graph import check_borrow

            check_borrow(borrow)
            spec.borrow = borrow
        warning = sqlite_fs_warning(db)
        if warning is not None:
            typer.echo(warning, err=True)
        with durable_store(db, create=True) as store:
            opened = open_graph(
                store, spec, time.time(), replace=replace, fingerprints=not no_fingerprints
            )
            # Workers look up the file's functions where the submitter found them.
            store.meta_set("graph_dir", str(file.resolve().parent))
    verb = "resumed" if opened.resumed else "submitted"
    typer.echo(
        f"conveyor: {verb} graph {opened.name!r}: {opened.added} new tasks, "
        f"{opened.unfinished} unfinished",
        err=True,
    )


def plan(file: opt.GraphFile, db: opt.DbRequired, as_json: opt.AsJson = False) -> None:
    """Dry run: what `run`/`submit` of FILE against --db would run again, and why (or reuse).
    Changes nothing in the store."""
    import json

    from conveyor.fingerprints import plan_graph

    with user_errors():
        spec = load_graph_file(file)
        with durable_store(db) as store:
            held = store.graph_name()
            decisions = plan_graph(store, spec)
    run = [d for d in decisions if d.action == "run"]
    reused = sum(d.action == "reuse" for d in decisions)
    removed = len(decisions) - len(run) - reused
    reasons: dict[str, int] = {}
    for d in run:
        reasons[d.reason] = reasons.get(d.reason, 0) + 1
    if as_json:
        typer.echo(json.dumps({
            "graph": spec.name, "store_graph": held,
            "tasks": [{"task": d.task, "action": d.action, "reason": d.reason, **d.detail}
                      for d in decisions],
            "summary": {"run": len(run), "reuse": reused, "remove": removed, "reasons": reasons},
        }, indent=2))  # fmt: skip
        return
    if held != spec.name:
        note = "holds no graph" if held is None else f"holds graph {held!r}, not"
        typer.echo(f"{db} {note} {spec.name!r}: every task is new")
    width = max((len(d.task) for d in decisions), default=0)
    aw = 6 if removed else 5
    for d in decisions:
        typer.echo(f"  {d.action:<{aw}}  {d.task:<{width}}  {reason_text(d)}".rstrip())
    parts = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
    typer.echo(
        f"plan: {len(run)} to run" + (f" ({parts})" if parts else "") + f", {reused} reused"
        + (f", {removed} removed (no longer in the graph)" if removed else "")
    )  # fmt: skip


def reason_text(d: Decision) -> str:
    """A plan decision's reason with what changed: which files, which parents."""
    if d.action == "reuse":
        return ""
    what = d.detail.get("files") or d.detail.get("parents")
    if what:
        return f"{d.reason}: {', '.join(what)}"
    if "state" in d.detail:
        return f"{d.reason} (was {d.detail['state']})"
    return str(d.reason)
