"""The options commands share (one definition each) and the parsing of their values."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer

from conveyor.cli.errors import fail
from conveyor.errors import UsageError
from conveyor.model import DEFAULT_LEASE_S

GraphFile = Annotated[Path, typer.Argument(help="Graph file (.json, .yaml).")]
TaskId = Annotated[str, typer.Argument(help="Task id.")]
Db = Annotated[
    str | None, typer.Option("--db", help="Store URL: memory://, sqlite:///run.db, postgresql://")
]
DbRequired = Annotated[
    str, typer.Option("--db", help="Store URL: sqlite:///run.db or postgresql://...")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]
Workers = Annotated[int, typer.Option("--workers", "-w", min=1, help="Tasks run at once.")]
InFlight = Annotated[
    int | None,
    typer.Option(
        "--workers",
        "-w",
        min=1,
        help="Tasks run at once (default 4; with Ray, the cluster's CPUs x 16).",
    ),
]
Events = Annotated[Path | None, typer.Option("--events", help="Append JSONL events here.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
Otel = Annotated[
    bool,
    typer.Option(
        "--otel",
        help="Report a span per task attempt and the run's metrics through OpenTelemetry "
        "(conveyor\\[otel]; exporters from OTEL_* variables, docs/telemetry.md).",
    ),
]
Lease = Annotated[
    float, typer.Option("--lease", help="Lease seconds (durable stores; at least 0.1).")
]
#: ``--lease``'s default (a ``schema.LeaseSeconds``: tests/test_cli_startup.py checks it).
LEASE_S = DEFAULT_LEASE_S
Labels = Annotated[
    str | None, typer.Option("--labels", help="Labels this worker offers: gpu=a100,zone=a")
]
Resources = Annotated[
    str | None, typer.Option("--resources", help="Resources this worker has: cpu=4,gpu=1")
]
Executor = Annotated[
    str | None,
    typer.Option(
        "--executor",
        help="Default for Python tasks: thread|inline|process; ray: every task on Ray",
    ),
]
RayAddress = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="With --executor ray: the Ray cluster, auto or host:port "
        "(default: the one `ray start` left here, else a new local Ray).",
    ),
]

NoPreempt = Annotated[
    bool,
    typer.Option(
        "--no-preempt",
        help="Never take a running task back for a waiting task of a higher band (preemption "
        "is on by default; it only acts when the graph uses more than one band).",
    ),
]
Borrow = Annotated[
    str | None,
    typer.Option(
        "--borrow",
        help="How far a group may borrow beyond its fair share: strict, bounded (default: "
        "25% of the slots), bounded:N, bounded:P%, work_conserving.",
    ),
]


def check_executor(executor: str | None, address: str | None = None) -> None:
    """``--executor`` and ``--address`` (the rule: ``conveyor.executorname``)."""
    from conveyor.executorname import check_executor as check

    try:
        check(executor, address, flags=True)
    except UsageError as exc:
        fail(str(exc))


def in_flight(workers: int | None) -> dict[str, Any]:
    """``open_run``'s ``workers`` when ``--workers`` was given (else the executor's default)."""
    return {} if workers is None else {"workers": workers}


def checked(value: Any, kind: str, option: str, default: Any = None) -> Any:
    """``value`` if it is a ``kind`` of ``conveyor.schema`` (``Seconds``, ``Amount``, ``Wait``:
    the ranges graph files are held to), else a ``UsageError`` naming ``option``. The option's
    ``default``, when given, passes unchecked: a command that is given none of these options
    does not import the schema (msgspec: ~15 ms of every worker's start)."""
    if default is not None and value == default and type(value) is type(default):
        return value
    from conveyor import schema

    return schema.checked(value, kind, option)


def parse_pairs(text: str | None, what: str, number: bool) -> dict[str, Any]:
    """``"k=v,k2=v2"`` as a dict (values as numbers when ``number``: resource amounts, in the
    schema's range)."""
    out: dict[str, Any] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--{what}: expected k=v[,k=v...], got {part!r}")
        if number:
            try:
                amount = float(value)
            except ValueError:
                msg = f"--{what}: {key.strip()!r} needs a number, got {value!r}"
                raise UsageError(msg) from None
            out[key.strip()] = checked(amount, "Amount", f"--{what} {key.strip()}")
        else:
            out[key.strip()] = label_value(value.strip())
    return out


def label_value(text: str) -> Any:
    """Label values: numbers when they parse as finite numbers (for >=/<= constraints), else
    strings."""
    try:
        return int(text)
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            return text
        return number if math.isfinite(number) else text


def telemetry(otel: bool) -> Any:
    """What ``--otel`` hands ``open_run(telemetry=...)``: OpenTelemetry set up from the
    ``OTEL_*`` variables (``conveyor.observe.otelenv``), or ``False``."""
    if not otel:
        return False
    import os

    from conveyor.observe.otelenv import telemetry_from_env

    return telemetry_from_env(os.environ)
