"""The work both sides of ``bench_ray.py`` run on Ray (importable by Ray's workers)."""

from __future__ import annotations

import time
from typing import Any


def noop() -> None:
    return None


def work(sleep_s: float, *parents: Any) -> int:
    """One task of the layered graph: its parents' results arrive as arguments."""
    time.sleep(sleep_s)
    return len(parents)
