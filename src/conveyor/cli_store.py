"""Commands that work on a durable store: submit, worker, status, why, history, retry, prune,
events. Registered on the main app by ``conveyor.cli``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer


def register(
    app: typer.Typer, *, fail: Callable[..., None], user_errors: Any, load_graph_file: Any
) -> None:
    """Add the store commands to ``app``."""
