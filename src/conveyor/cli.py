"""The ``conveyor`` command. Exit codes: 0 all done, 1 a task failed, 2 bad input, 130 Ctrl-C."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from conveyor.cli_options import Events, Executor, Labels, Lease, Quiet, Resources, Workers
from conveyor.errors import ConveyorError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Run graphs of tasks across workers: depth-first, fair, adaptive, durable.",
    pretty_exceptions_enable=False,
)

Db = Annotated[
    str | None, typer.Option("--db", help="Store URL: memory://, sqlite:///run.db, postgresql://")
]


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"conveyor: error: {message}", err=True)
    raise typer.Exit(code)


def load_graph_file(path: Path) -> Any:
    from conveyor.graphfile import load_graph

    # Functions named in the file ("mod:func") are looked up beside it and in the cwd.
    for p in (str(path.resolve().parent), str(Path.cwd())):
        if p not in sys.path:
            sys.path.insert(0, p)
    return load_graph(path)


@app.command()
def run(
    file: Annotated[Path, typer.Argument(help="Graph file (.json, .yaml).")],
    workers: Workers = 4,
    db: Db = None,
    events: Events = None,
    quiet: Quiet = False,
    fail_fast: Annotated[bool, typer.Option("--fail-fast", help="Stop at the first failure.")] = (
        False
    ),
    replace: Annotated[
        bool, typer.Option("--replace", help="Replace another graph's unfinished work in --db.")
    ] = False,
    executor: Executor = None,
    lease: Lease = 30.0,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for retry jitter.")] = None,
    resources: Resources = None,
    labels: Labels = None,
    no_fingerprints: Annotated[
        bool,
        typer.Option(
            "--no-fingerprints",
            help="With --db: resume runs only unfinished tasks (no re-run of what changed).",
        ),
    ] = False,
) -> None:
    """Run a graph file to the end, with a progress bar."""
    from conveyor.cli_store import parse_pairs
    from conveyor.events import JsonlSink
    from conveyor.fingerprints import open_graph
    from conveyor.outcome import exit_code
    from conveyor.progress import make_progress
    from conveyor.runtime.engine import Engine
    from conveyor.store.urls import open_store
    from conveyor.workerid import default_worker_id

    if executor not in (None, "thread", "inline", "process"):
        fail("--executor must be thread, inline or process")
    with _user_errors():
        spec = load_graph_file(file)
        sink = JsonlSink(events) if events is not None else None
        store = open_store(db, emit=sink)
        open_graph(store, spec, time.time(), replace=replace, fingerprints=not no_fingerprints)
        progress = make_progress(sum(store.counts().values()), quiet=quiet)
        t0 = time.monotonic()

        def tick(engine: Engine) -> None:
            if progress is not None:
                counts = store.counts()
                progress.update(counts, total=sum(counts.values()))

        engine = Engine(
            store, workers=workers, fail_fast=fail_fast, executor=executor, lease_s=lease,
            seed=seed, functions={t.id: t for t in spec.tasks if callable(t.fn)}, emit=sink,
            on_tick=tick, worker_id=default_worker_id(),
            resources=parse_pairs(resources, "resources", number=True),
            labels=parse_pairs(labels, "labels", number=False),
        )  # fmt: skip
        if not store.shared:
            engine.check_fit()
        code = 0
        try:
            engine.run()
        except KeyboardInterrupt:
            code = 130
        counts = store.counts()
        if progress is not None:
            progress.update(counts, total=sum(counts.values()))
            progress.close(counts)
        elapsed = time.monotonic() - t0
        code = exit_code(counts, interrupted=code == 130)
        if not quiet:
            _summary(store, spec, counts, elapsed, code)
        store.close()
        if sink is not None:
            sink.close()
        if engine.stuck or code == 130:
            # A timed-out thread cannot be stopped, and the interpreter's exit would wait for it.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    raise typer.Exit(code)


def _summary(store: Any, spec: Any, counts: dict[str, int], elapsed: float, code: int) -> None:
    finished = counts.get("done", 0)
    msg = (
        f"conveyor: {finished} done, {counts.get('failed', 0)} failed, "
        f"{counts.get('skipped', 0)} skipped in {elapsed:.2f}s"
    )
    if code == 130:
        msg += " (interrupted)"
    typer.echo(msg, err=True)
    if counts.get("failed", 0):
        from conveyor.model import TaskState

        shown = 0
        for t in spec.tasks:
            r = store.result(t.id)
            if r.state is TaskState.FAILED:
                typer.echo(f"  failed {t.id}: {r.error}", err=True)
                shown += 1
                if shown >= 10:
                    typer.echo("  ...", err=True)
                    break


@app.command()
def graph(
    file: Annotated[Path, typer.Argument(help="Graph file (.json, .yaml).")],
    mermaid: Annotated[bool, typer.Option("--mermaid", help="Print a Mermaid flowchart.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print facts as JSON.")] = False,
) -> None:
    """Print a graph's counts, depth, width and critical paths (or --mermaid)."""
    from conveyor.core.dag import facts

    with _user_errors():
        from conveyor.graphfile import load_graph

        spec = load_graph(file, check_functions=False)
    if mermaid:
        typer.echo(to_mermaid(spec))
        return
    f = facts([t.id for t in spec.tasks], [t.deps for t in spec.tasks],
              [t.runtime_s for t in spec.tasks])  # fmt: skip
    if as_json:
        typer.echo(json.dumps({"name": spec.name, **_asdict(f)}, indent=2))
        return
    typer.echo(f"graph {spec.name}")
    typer.echo(f"  tasks {f.tasks}, edges {f.edges}, roots {f.roots}, leaves {f.leaves}")
    typer.echo(f"  depth {f.depth} levels, widest level {f.width} tasks")
    typer.echo(f"  critical path by count: {len(f.critical_path)} tasks: {_path(f.critical_path)}")
    if f.critical_path_runtime is not None:
        typer.echo(
            f"  critical path by runtime_s: {f.critical_runtime_s:.1f}s over "
            f"{len(f.critical_path_runtime)} tasks: {_path(f.critical_path_runtime)}"
        )
        typer.echo(f"  total runtime_s {f.total_runtime_s:.1f}s")
    if spec.groups:
        gs = ", ".join(f"{g.name}(w={g.weight:g}, cap={g.cap})" for g in spec.groups.values())
        typer.echo(f"  groups {gs}")


def _asdict(obj: Any) -> dict[str, Any]:
    import dataclasses

    return dataclasses.asdict(obj)


def _path(ids: list[str], limit: int = 8) -> str:
    if len(ids) <= limit:
        return " -> ".join(ids)
    return " -> ".join(ids[: limit // 2]) + " -> ... -> " + " -> ".join(ids[-limit // 2 :])


def to_mermaid(spec: Any) -> str:
    """A Mermaid ``flowchart TD`` of the graph; ids are quoted into safe node names."""
    names = {t.id: f"t{i}" for i, t in enumerate(spec.tasks)}
    lines = ["flowchart TD"]
    for t in spec.tasks:
        label = t.id.replace('"', "'")
        lines.append(f'    {names[t.id]}["{label}"]')
    for t in spec.tasks:
        for d in t.deps:
            lines.append(f"    {names[d]} --> {names[t.id]}")
    return "\n".join(lines)


class _user_errors:
    """Turn our errors into one line and exit 2 (or their own exit code); never a traceback."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, tp: Any, exc: BaseException | None, tb: Any) -> bool:
        if isinstance(exc, ConveyorError):
            fail(str(exc), exc.exit_code)
        return False


def _register_store_commands() -> None:
    from conveyor import cli_store

    cli_store.register(app, fail=fail, user_errors=_user_errors, load_graph_file=load_graph_file)


_register_store_commands()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
