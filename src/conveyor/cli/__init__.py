"""The ``conveyor`` command: one small module per group of commands, each on the public API.

Exit codes: 0 all done, 1 a task failed, 2 bad input (one line on stderr), 130 Ctrl-C.
Command modules import what is heavy (engine, stores, rich, yaml) inside their functions, so
``import conveyor.cli`` costs little more than typer.
"""

from __future__ import annotations

import sys
from typing import Any

import typer

from conveyor.cli import (
    admin,
    build,
    dashboard,
    graph,
    inspect,
    run,
    simulate,
    slurm,
    submit,
    worker,
)
from conveyor.cli.errors import quiet_broken_pipe
from conveyor.outcome import INTERRUPTED

__all__ = ["app", "main"]

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Run graphs of tasks across workers: depth-first, fair, adaptive, durable.",
    pretty_exceptions_enable=False,
)

for _name, _command in (
    ("run", run.run),
    ("graph", graph.graph),
    ("submit", submit.submit),
    ("plan", submit.plan),
    ("worker", worker.worker),
    ("status", inspect.status),
    ("why", inspect.why),
    ("history", inspect.history),
    ("retry", admin.retry),
    ("prune", admin.prune),
    ("events", inspect.events),
    ("build", build.build),
    ("simulate", simulate.simulate),
    ("dashboard", dashboard.dashboard),
    ("report", dashboard.report),
):
    app.command(_name)(quiet_broken_pipe(_command))
app.add_typer(slurm.app, name="slurm")


def command_path(ctx: Any) -> str:
    """``conveyor slurm submit``: the full command of a click context (the root's own name
    may be ``__main__.py`` or a path: it is always ``conveyor``)."""
    names = []
    while ctx is not None and ctx.parent is not None:
        names.append(ctx.info_name)
        ctx = ctx.parent
    return " ".join(["conveyor", *reversed(names)])


def main() -> None:
    """The console script ``conveyor``. A usage error (an unknown option, a value out of its
    range) is one line on stderr and exit 2, like every other bad input, not a box. (Typer
    vendors click: its exceptions are told by what they have, not by importing them.)"""
    try:
        code = app(standalone_mode=False)
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED)
    except Exception as exc:
        kind = type(exc).__name__
        ctx = getattr(exc, "ctx", None)
        if kind == "NoArgsIsHelpError" and ctx is not None:
            print(ctx.get_help())
            sys.exit(getattr(exc, "exit_code", 2))
        if kind == "Abort":
            sys.exit(INTERRUPTED)
        exit_code = getattr(exc, "exit_code", None)
        if not (hasattr(exc, "format_message") and isinstance(exit_code, int)):
            raise
        hint = f" (see: {command_path(ctx)} --help)" if ctx is not None and ctx.parent else ""
        sys.stderr.write(f"conveyor: error: {exc.format_message()}{hint}\n")
        sys.exit(exit_code)
    sys.exit(code if isinstance(code, int) else 0)
