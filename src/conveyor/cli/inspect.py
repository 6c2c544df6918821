"""Commands that read a durable store: ``status``, ``why``, ``history``, ``events``."""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any

import typer

from conveyor.cli import options as opt
from conveyor.cli.errors import stored_data, user_errors
from conveyor.cli.inputs import durable_store

#: Seconds between polls of the audit table with ``events --follow``.
FOLLOW_POLL_S = 0.2


def status(db: opt.DbRequired, as_json: opt.AsJson = False) -> None:
    """Counts by state and group, live workers, tasks/s over the last minute, ETA."""
    import json

    with user_errors(), durable_store(db) as store:
        st = store.status(time.time())
    if as_json:
        typer.echo(json.dumps(st, indent=2))
        return
    for line in status_lines(st):
        typer.echo(line)


def status_lines(st: dict[str, Any]) -> list[str]:
    """``Store.status`` for people, one line per fact."""
    lines = [
        f"graph {st['graph']}: {st['total']} tasks, {st['unfinished']} unfinished",
        "  " + ", ".join(f"{k} {v}" for k, v in st["counts"].items() if v),
    ]
    shares = st.get("group_shares", {})
    for grp, counts in sorted(st["groups"].items()):
        line = f"  group {grp}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
        g = shares.get(grp)
        if g is not None:
            cap = "-" if g["cap"] is None else g["cap"]
            line += f" (cap {cap}, weight {g['weight']:g})"  # its running count is in counts
        lines.append(line)
    if st.get("reasons"):
        because = ", ".join(f"{k} {v}" for k, v in st["reasons"].items())
        lines.append(f"  not running because: {because}")
    for key, ep in sorted(st.get("endpoints", {}).items()):
        lines.append(
            f"  endpoint {key}: limit {ep['limit']}, in flight {ep['in_flight']}, "
            f"waiting {ep['waiting']}, 429s {ep['rate_limited']}, "
            f"cooldown left {ep['cooldown_left']:.1f}s ({ep['workers']} workers)"
        )
    eta = "-" if st["eta_s"] is None else f"{st['eta_s']:.0f}s"
    lines.append(
        f"  workers alive {st['workers_alive']}, {st['tasks_per_s']:.1f} tasks/s "
        f"over the last minute, ETA {eta}"
    )
    return lines


def why(task: opt.TaskId, db: opt.DbRequired, as_json: opt.AsJson = False) -> None:
    """Why TASK is not running: one dominant reason with its numbers (against the offers
    of the live workers). Exit 2 for an unknown task."""
    import json

    with user_errors(), durable_store(db) as store:
        reason = store.explain(task, time.time())
    d = reason.as_dict()
    if as_json:
        typer.echo(json.dumps({"task": task, **d}, default=str))
        return
    typer.echo(f"{task}: {d.pop('reason')}: {d.pop('message')}")
    for k, v in d.items():
        typer.echo(f"  {k}: {json.dumps(v, default=str)}")


def history(task: opt.TaskId, db: opt.DbRequired, as_json: opt.AsJson = False) -> None:
    """The audit trail of one task: every transition, oldest first."""
    import json

    with user_errors(), durable_store(db) as store, stored_data(f"{db}: task {task!r}"):
        res = store.result(task, value=False)  # raises for an unknown task; never unpickles
        rows = store.history(task)
    if as_json:
        typer.echo(json.dumps({"task": task, "state": res.state.label, "history": rows}))
        return
    typer.echo(f"task {task}: {res.state.label} (attempt {res.attempt})")
    for ev in rows:
        ts = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ev["ts"]))
        move = f"{ev.get('from', '-')} -> {ev.get('to', '-')}"
        who = f" by {ev['worker']}" if "worker" in ev else ""
        att = f" attempt {ev['attempt']}" if "attempt" in ev else ""
        err = f": {ev['error']}" if "error" in ev else ""
        typer.echo(f"  {ts}  {ev['event']:<15} {move:<22}{who}{att}{err}")


def events(
    db: opt.DbRequired,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing.")] = False,
) -> None:
    """Print the store's audit trail as JSON Lines, one event per transition (as --events)."""
    import json

    with user_errors(), durable_store(db) as store:
        feed = store.event_feed()
        while True:
            got = feed.poll(5000)
            for ev in got:
                sys.stdout.write(json.dumps(ev, separators=(",", ":")) + "\n")
            if got:
                continue
            sys.stdout.flush()
            if not follow:
                break
            time.sleep(FOLLOW_POLL_S)  # a tail -f: poll the audit table
