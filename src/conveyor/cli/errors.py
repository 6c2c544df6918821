"""How a command fails: one line on stderr and the error's exit code (2 for bad input), never a
traceback; Ctrl-C outside a run's own handling exits 130."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer

from conveyor.errors import ConveyorError
from conveyor.outcome import INTERRUPTED

#: Exit code for bad input or usage.
BAD_INPUT = 2


def fail(message: str, code: int = BAD_INPUT) -> NoReturn:
    """Print ``conveyor: error: message`` as one line and exit with ``code``."""
    one_line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    typer.echo(f"conveyor: error: {one_line}", err=True)
    raise typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn conveyor's errors into ``fail`` (with their own exit code), a file that cannot be
    opened or written into a bad-input line, and Ctrl-C into exit 130."""
    try:
        yield
    except ConveyorError as exc:
        fail(str(exc), exc.exit_code)
    except OSError as exc:
        fail(f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else str(exc))
    except KeyboardInterrupt:
        raise typer.Exit(INTERRUPTED) from None


def exit_now(code: int) -> NoReturn:
    """Exit with ``code`` without waiting for task threads: a timed-out or interrupted thread
    task cannot be stopped, and the interpreter's exit would wait for it. Call it after the
    run closed its store and event files; this flushes stdout and stderr, then ``os._exit``."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
