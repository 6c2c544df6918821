"""Commands that work on a durable store: submit, worker, status, history, retry, prune,
events. Registered on the main app by ``conveyor.cli``."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from conveyor.cli_options import Events, Executor, Labels, Lease, Quiet, Resources, Workers

DbRequired = Annotated[
    str, typer.Option("--db", help="Store URL: sqlite:///run.db or postgresql://...")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _open(url: str, emit: Any = None) -> Any:
    """A durable store; ``memory://`` makes no sense across processes."""
    from conveyor.errors import UsageError
    from conveyor.store.urls import open_store

    if not url.startswith(("sqlite:", "postgresql:", "postgres:")):
        raise UsageError(f"--db must be sqlite:///path or postgresql://..., not {url!r}")
    return open_store(url, emit=emit)


def parse_pairs(text: str | None, what: str, number: bool) -> dict[str, Any]:
    """``"k=v,k2=v2"`` as a dict (values as numbers when ``number``)."""
    from conveyor.errors import UsageError

    out: dict[str, Any] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--{what}: expected k=v[,k=v...], got {part!r}")
        if number:
            try:
                out[key.strip()] = float(value)
            except ValueError:
                msg = f"--{what}: {key.strip()!r} needs a number, got {value!r}"
                raise UsageError(msg) from None
        else:
            out[key.strip()] = label_value(value.strip())
    return out


def label_value(text: str) -> Any:
    """Label values: numbers when they parse as numbers (for >=/<= constraints), else strings."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def _why(d: Any) -> str:
    """A plan decision's reason with what changed: which files, which parents."""
    if d.action == "reuse":
        return ""
    what = d.detail.get("files") or d.detail.get("parents")
    if what:
        return f"{d.reason}: {', '.join(what)}"
    if "state" in d.detail:
        return f"{d.reason} (was {d.detail['state']})"
    return str(d.reason)


def register(
    app: typer.Typer, *, fail: Callable[..., None], user_errors: Any, load_graph_file: Any
) -> None:
    """Add the store commands to ``app``."""

    @app.command()
    def submit(
        file: Annotated[Path, typer.Argument(help="Graph file (.json, .yaml).")],
        db: DbRequired,
        replace: Annotated[
            bool, typer.Option("--replace", help="Discard another graph's unfinished work.")
        ] = False,
        no_fingerprints: Annotated[
            bool,
            typer.Option("--no-fingerprints", help="Resume adds new tasks only (no re-runs)."),
        ] = False,
    ) -> None:
        """Put a graph into a durable store for `conveyor worker`s to run. The same graph
        again resumes it: what changed and its downstream run again (docs/incremental.md)."""
        from conveyor.fingerprints import open_graph

        with user_errors():
            spec = load_graph_file(file)
            store = _open(db)
            try:
                opened = open_graph(
                    store, spec, time.time(), replace=replace, fingerprints=not no_fingerprints
                )
                store.meta_set("graph_dir", str(file.resolve().parent))
            finally:
                store.close()
        verb = "resumed" if opened.resumed else "submitted"
        typer.echo(
            f"conveyor: {verb} graph {opened.name!r}: {opened.added} new tasks, "
            f"{opened.unfinished} unfinished",
            err=True,
        )

    @app.command()
    def plan(
        file: Annotated[Path, typer.Argument(help="Graph file (.json, .yaml).")],
        db: DbRequired,
        as_json: AsJson = False,
    ) -> None:
        """Dry run: what `run`/`submit` of FILE against --db would run again, and why (or reuse).
        Changes nothing in the store."""
        from conveyor.fingerprints import plan_graph

        with user_errors():
            spec = load_graph_file(file)
            store = _open(db)
            try:
                held = store.graph_name()
                decisions = plan_graph(store, spec)
            finally:
                store.close()
        run = [d for d in decisions if d.action == "run"]
        reasons: dict[str, int] = {}
        for d in run:
            reasons[d.reason] = reasons.get(d.reason, 0) + 1
        if as_json:
            typer.echo(json.dumps({
                "graph": spec.name, "store_graph": held,
                "tasks": [{"task": d.task, "action": d.action, "reason": d.reason, **d.detail}
                          for d in decisions],
                "summary": {"run": len(run), "reuse": len(decisions) - len(run),
                            "reasons": reasons},
            }, indent=2))  # fmt: skip
            return
        if held != spec.name:
            note = "holds no graph" if held is None else f"holds graph {held!r}, not"
            typer.echo(f"{db} {note} {spec.name!r}: every task is new")
        width = max((len(d.task) for d in decisions), default=0)
        for d in decisions:
            typer.echo(f"  {d.action:<5}  {d.task:<{width}}  {_why(d)}".rstrip())
        parts = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
        typer.echo(
            f"plan: {len(run)} to run" + (f" ({parts})" if parts else "")
            + f", {len(decisions) - len(run)} reused"
        )  # fmt: skip

    @app.command()
    def worker(
        db: DbRequired,
        workers: Workers = 4,
        labels: Labels = None,
        resources: Resources = None,
        max_tasks: Annotated[
            int | None, typer.Option("--max-tasks", min=1, help="Exit after this many tasks.")
        ] = None,
        idle_exit: Annotated[
            float | None,
            typer.Option("--idle-exit", help="Exit after this many seconds with nothing to do."),
        ] = None,
        lease: Lease = 30.0,
        events: Events = None,
        quiet: Quiet = False,
        executor: Executor = None,
    ) -> None:
        """Run tasks of the graph in --db until it is finished (exit 0; 1 if tasks failed)."""
        from conveyor.events import JsonlSink
        from conveyor.runtime.engine import Engine

        if lease <= 0:
            fail("--lease must be > 0")
        if executor not in (None, "thread", "inline", "process"):
            fail("--executor must be thread, inline or process")
        from conveyor.store.base import WorkerProfile

        with user_errors():
            offered = parse_pairs(labels, "labels", number=False)
            has = parse_pairs(resources, "resources", number=True) if resources else None
            sink = JsonlSink(events) if events is not None else None
            store = _open(db, emit=sink)
            try:
                if store.graph_name() is None:
                    fail(f"{db} holds no graph yet: run `conveyor submit FILE --db {db}` first")
                graph_dir = store.meta_get("graph_dir")
                for p in (graph_dir, str(Path.cwd())):
                    if p and p not in sys.path:
                        sys.path.insert(0, p)
                store.configure(
                    WorkerProfile(labels=offered, resources=has, max_batch=max_tasks, lease_s=lease)
                )
                from conveyor.workerid import default_worker_id

                name = default_worker_id()
                engine = Engine(
                    store, workers=workers, worker_id=name, lease_s=lease, idle_exit=idle_exit,
                    max_tasks=max_tasks, executor=executor, emit=sink, resources=has,
                    labels=offered,
                )  # fmt: skip
                t0 = time.monotonic()
                code = 0
                try:
                    engine.run()
                except KeyboardInterrupt:
                    code = 130
                counts = store.counts()
            finally:
                store.close()
                if sink is not None:
                    sink.close()
        st = engine.stats
        from conveyor.outcome import exit_code, left

        code = exit_code(counts, interrupted=code == 130, worker=True)
        if not quiet:
            typer.echo(
                f"conveyor: worker {name}: {st.done} done, {st.failed} failed, "
                f"{st.retried} retried in {time.monotonic() - t0:.2f}s; graph: "
                f"{counts['done']} done, {counts['failed']} failed, {left(counts)} left",
                err=True,
            )
        raise typer.Exit(code)

    @app.command()
    def status(db: DbRequired, as_json: AsJson = False) -> None:
        """Counts by state and group, live workers, tasks/s over the last minute, ETA."""
        with user_errors():
            store = _open(db)
            try:
                st = store.status(time.time())
            finally:
                store.close()
        if as_json:
            typer.echo(json.dumps(st, indent=2))
            return
        typer.echo(f"graph {st['graph']}: {st['total']} tasks, {st['unfinished']} unfinished")
        typer.echo("  " + ", ".join(f"{k} {v}" for k, v in st["counts"].items() if v))
        shares = st.get("group_shares", {})
        for grp, counts in sorted(st["groups"].items()):
            line = f"  group {grp}: " + ", ".join(f"{k} {v}" for k, v in counts.items())
            g = shares.get(grp)
            if g is not None:
                cap = "-" if g["cap"] is None else g["cap"]
                line += f" (running {g['running']}, cap {cap}, weight {g['weight']:g})"
            typer.echo(line)
        if st.get("reasons"):
            why = ", ".join(f"{k} {v}" for k, v in st["reasons"].items())
            typer.echo(f"  not running because: {why}")
        for key, ep in sorted(st.get("endpoints", {}).items()):
            typer.echo(
                f"  endpoint {key}: limit {ep['limit']}, in flight {ep['in_flight']}, "
                f"waiting {ep['waiting']}, 429s {ep['rate_limited']}, "
                f"cooldown left {ep['cooldown_left']:.1f}s ({ep['workers']} workers)"
            )
        eta = "-" if st["eta_s"] is None else f"{st['eta_s']:.0f}s"
        typer.echo(
            f"  workers alive {st['workers_alive']}, {st['tasks_per_s']:.1f} tasks/s "
            f"over the last minute, ETA {eta}"
        )

    @app.command()
    def why(
        task: Annotated[str, typer.Argument(help="Task id.")],
        db: DbRequired,
        as_json: AsJson = False,
    ) -> None:
        """Why TASK is not running: one dominant reason with its numbers (against the offers
        of the live workers). Exit 2 for an unknown task."""
        with user_errors():
            store = _open(db)
            try:
                reason = store.explain(task, time.time())
            finally:
                store.close()
        d = reason.as_dict()
        if as_json:
            typer.echo(json.dumps({"task": task, **d}, default=str))
            return
        typer.echo(f"{task}: {d.pop('reason')}: {d.pop('message')}")
        for k, v in d.items():
            typer.echo(f"  {k}: {json.dumps(v, default=str)}")

    @app.command()
    def history(
        task: Annotated[str, typer.Argument(help="Task id.")],
        db: DbRequired,
        as_json: AsJson = False,
    ) -> None:
        """The audit trail of one task: every transition, oldest first."""
        with user_errors():
            store = _open(db)
            try:
                res = store.result(task)  # raises for an unknown task
                rows = store.history(task)
            finally:
                store.close()
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

    @app.command()
    def retry(
        db: DbRequired,
        task: Annotated[str | None, typer.Argument(help="Task id (or --failed).")] = None,
        failed: Annotated[bool, typer.Option("--failed", help="Retry every failed task.")] = False,
    ) -> None:
        """Run failed tasks again (and what their failure skipped)."""
        if (task is None) == (not failed):
            fail("give a TASK or --failed (not both)")
        with user_errors():
            store = _open(db)
            try:
                ids = store.retry(None if failed else [task], time.time())
            finally:
                store.close()
        typer.echo(f"conveyor: {len(ids)} task(s) will run again", err=True)

    @app.command()
    def prune(
        db: DbRequired,
        keep: Annotated[int, typer.Option("--keep", help="Audit rows kept per task.")] = 10,
    ) -> None:
        """Trim old audit rows: keep the newest --keep per task (task states are never lost)."""
        with user_errors():
            store = _open(db)
            try:
                n = store.prune(keep)
            finally:
                store.close()
        typer.echo(f"conveyor: pruned {n} audit rows", err=True)

    @app.command()
    def events(
        db: DbRequired,
        follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing.")] = False,
    ) -> None:
        """Print the store's audit trail as JSON Lines events (DESIGN.md section 4)."""
        with user_errors():
            store = _open(db)
            try:
                after = 0
                while True:
                    got = store.events_after(after, 5000)
                    for _, ev in got:
                        sys.stdout.write(json.dumps(ev, separators=(",", ":")) + "\n")
                    if got:
                        after = got[-1][0]
                        continue
                    sys.stdout.flush()
                    if not follow:
                        break
                    time.sleep(0.2)  # a tail -f: poll the audit table
            finally:
                store.close()
