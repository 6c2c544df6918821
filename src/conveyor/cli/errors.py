"""How a command fails: one line on stderr and the error's exit code (2 for bad input), never a
traceback; Ctrl-C outside a run's own handling exits 130 with the one line
``conveyor: interrupted`` (e.g. while waiting for a store's write lock)."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

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
    except BrokenPipeError:
        raise  # the reader went away: quiet_broken_pipe ends the command
    except OSError as exc:
        fail(_os_error_line(exc))
    except KeyboardInterrupt:
        typer.echo("conveyor: interrupted", err=True)
        raise typer.Exit(INTERRUPTED) from None


def _os_error_line(exc: OSError) -> str:
    """``FILE: reason`` when the error names its file, else the error as Python says it (a
    write to standard output that fails, ``> /dev/full``, names no file)."""
    if exc.filename and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


def _stdout_to_devnull() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


#: Set by a command after which the process holds nothing that needs finalizing (its store and
#: event files closed, no user code run in it, no exporter or cluster to flush): ``main`` then
#: ends the process with ``exit_now`` instead of the interpreter's teardown, which frees every
#: object a large graph left (~5% of a 30,000-task ``conveyor run``).
FAST_EXIT = {"allowed": False}


def allow_fast_exit(telemetry: object, executor: str | None, user_code_ran: bool) -> None:
    """The rule for ``FAST_EXIT`` once a run or worker closed its store and event file: no
    user code ran in this process (it may have left atexit work or unflushed files), and no
    exporter (``--otel``) or Ray client may still flush."""
    FAST_EXIT["allowed"] = not telemetry and executor != "ray" and not user_code_ran


def exit_now(code: int) -> NoReturn:
    """Exit with ``code`` without waiting for task threads: a timed-out or interrupted thread
    task cannot be stopped, and the interpreter's exit would wait for it. Call it after the
    run closed its store and event files; this flushes stdout and stderr, then ``os._exit``."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@contextmanager
def stored_data(what: str) -> Iterator[None]:
    """Reading what a store holds (a result, a spec): a row that does not decode is one line
    about the store (exit 2), not a traceback. Conveyor's own errors pass through to
    ``user_errors``; anything else raised while decoding is the row's fault."""
    try:
        yield
    except (ConveyorError, OSError, KeyboardInterrupt, typer.Exit):
        raise
    except Exception as exc:
        fail(f"{what}: the stored data cannot be read ({type(exc).__name__}: {exc}); "
             "the store may be damaged")  # fmt: skip


def quiet_broken_pipe(command: Callable[..., None]) -> Callable[..., None]:
    """``command``, ending with exit 0 when the reader of its output goes away
    (``conveyor events | head``): the rest of the output is not wanted, which is no error.
    Output that cannot be written (``> /dev/full``) is one line and exit 2, as inside
    ``user_errors``."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            command(*args, **kwargs)
        except BrokenPipeError:
            _stdout_to_devnull()  # the interpreter's final flush must not fail again
            raise typer.Exit(0) from None
        except OSError as exc:
            fail(_os_error_line(exc))

    return wrapper
