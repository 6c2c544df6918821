"""``conveyor report``: a finished (or running) run as one self-contained HTML file, the
dashboard's panels with everything inlined and no links out, and optionally its plots as PNG
files (``pngs.py``)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from conveyor.dashboard import pages, panels
from conveyor.dashboard.sampler import Readings, Sampler
from conveyor.store.base import Store
from conveyor.store.urls import redact

#: Seconds between progress lines while a long audit trail is read.
PROGRESS_S = 5.0


def read_all(
    store: Store, *, window_s: float = 300.0, progress: Callable[[int], None] | None = None
) -> Readings:
    """The run's whole audit trail folded in, and its summary now; ``progress`` is told the
    rows read so far every ``PROGRESS_S`` seconds (a long trail takes a while)."""

    def no_render(_r: Readings) -> tuple[str, dict[str, object]]:
        return "", {}

    sampler = Sampler(store, no_render, window_s=window_s, read_budget=PROGRESS_S)
    said = time.monotonic()
    while True:
        readings = sampler.read()
        if readings.caught_up:
            return readings
        if progress is not None and time.monotonic() - said >= PROGRESS_S:
            said = time.monotonic()
            progress(readings.history.events)


def write_report(readings: Readings, store_url: str, out: Path) -> int:
    """Write the report to ``out`` (atomically, readable by its owner only: it names tasks
    and errors); returns its size in bytes."""
    body, summary = panels.render(readings, links=False)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(readings.now))
    title = f"conveyor report · {summary.get('graph') or 'run'} · {stamp}"
    html = pages.shell(title, body, store_url=redact(store_url), live=False, nav=False)
    data = html.encode("utf-8")
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        with open(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)  # nothing half-written is left behind
        raise
    return len(data)
