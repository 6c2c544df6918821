"""Command-line options shared by ``conveyor run`` and ``conveyor worker`` (one definition each)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Workers = Annotated[int, typer.Option("--workers", "-w", min=1, help="Tasks run at once.")]
Events = Annotated[Path | None, typer.Option("--events", help="Append JSONL events here.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
Lease = Annotated[float, typer.Option("--lease", help="Lease seconds (durable stores).")]
Labels = Annotated[
    str | None, typer.Option("--labels", help="Labels this worker offers: gpu=a100,zone=a")
]
Resources = Annotated[
    str | None, typer.Option("--resources", help="Resources this worker has: cpu=4,gpu=1")
]
Executor = Annotated[
    str | None,
    typer.Option("--executor", help="Default for Python tasks: thread|inline|process"),
]
