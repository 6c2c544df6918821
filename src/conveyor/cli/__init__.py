"""The ``conveyor`` command: one small module per group of commands, each on the public API.

Exit codes: 0 all done, 1 a task failed, 2 bad input (one line on stderr), 130 Ctrl-C.
Command modules import what is heavy (engine, stores, rich, yaml) inside their functions, so
``import conveyor.cli`` costs little more than typer. ``main`` goes further: when the first
argument names a command, only that command's module is imported and only its options are
built (typer builds every command of an app before it parses a word; the help, the root's
usage errors and anything else get the whole app).
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from typing import Any

import typer

from conveyor.cli.errors import FAST_EXIT, exit_now, quiet_broken_pipe
from conveyor.outcome import INTERRUPTED

__all__ = ["app", "main", "make_app"]

#: Each command: its name, the module of ``conveyor.cli`` that holds it and the function (or,
#: for a group of commands, the ``typer.Typer``), in the order the help lists them.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("run", "run", "run"),
    ("graph", "graph", "graph"),
    ("submit", "submit", "submit"),
    ("plan", "submit", "plan"),
    ("worker", "worker", "worker"),
    ("status", "inspect", "status"),
    ("why", "inspect", "why"),
    ("history", "inspect", "history"),
    ("retry", "admin", "retry"),
    ("prune", "admin", "prune"),
    ("events", "inspect", "events"),
    ("build", "build", "build"),
    ("simulate", "simulate", "simulate"),
    ("dashboard", "dashboard", "dashboard"),
    ("report", "dashboard", "report"),
    ("slurm", "slurm", "app"),
)
_NAMES = frozenset(name for name, _, _ in COMMANDS)


def make_app(only: str | None = None) -> typer.Typer:
    """The ``conveyor`` app with every command, or with the command ``only`` alone (still a
    group: ``conveyor run FILE`` parses as the whole app would parse it)."""
    app = typer.Typer(
        add_completion=False,
        no_args_is_help=True,
        help="Run graphs of tasks across workers: depth-first, fair, adaptive, durable.",
        pretty_exceptions_enable=False,
    )
    for name, module, attr in COMMANDS:
        if only is not None and name != only:
            continue
        command = getattr(importlib.import_module(f"conveyor.cli.{module}"), attr)
        if isinstance(command, typer.Typer):
            app.add_typer(command, name=name)
        else:
            app.command(name)(quiet_broken_pipe(command))
    if only is not None:
        # A callback keeps an app of one command a group (typer's rule); it adds no option.
        app.callback()(_group)
    return app


def _group() -> None:
    """The callback of an app of one command: it does nothing (the app's help is its own)."""


def __getattr__(name: str) -> Any:
    """``conveyor.cli.app``: the whole app, made when first asked for."""
    if name == "app":
        app = make_app()
        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    first = sys.argv[1] if len(sys.argv) > 1 else None
    app = make_app(first if first in _NAMES else None)
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
    code = code if isinstance(code, int) else 0
    # The command closed what it opened: nothing to tear down, unless a profiler or a coverage
    # tracer watches this process (they write what they saw as the interpreter exits).
    if FAST_EXIT["allowed"] and sys.getprofile() is None and sys.gettrace() is None:
        with contextlib.suppress(OSError):  # a reader gone: the interpreter's exit reports it
            exit_now(code)
    # (``gc.freeze()`` here would skip most of the teardown too, but not safely: a user
    # module's open file, never flushed, then lost what it held. See test_cli_startup.)
    sys.exit(code)
