"""Progress on long runs: a rich bar on a TTY, plain periodic lines elsewhere, nothing if quiet.

rich is imported only when a bar is shown (keeps ``conveyor run`` quick to start).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

#: The states of a task that will not change in this run.
FINISHED = ("done", "failed", "skipped", "cancelled")


def finished_of(counts: dict[str, int]) -> int:
    return sum(counts.get(k, 0) for k in FINISHED)


class PlainProgress:
    """One line every ``every`` seconds: done/running/failed/total, rate and ETA.

    ``already``: tasks finished before this run started (a resumed run): they count in the
    total but not in the rate. ``total`` follows the counts (children join at run time)."""

    def __init__(
        self, total: int, stream: TextIO | None = None, every: float = 5.0, already: int = 0
    ) -> None:
        self.total = total
        self.already = already
        self.stream = stream or sys.stderr
        self.every = every
        self.t0 = time.monotonic()
        self._last = self.t0

    def update(self, counts: dict[str, int], total: int | None = None, force: bool = False) -> None:
        if total is not None:  # before the throttle: a later close() shows the latest total
            self.total = total
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        self._last = now
        self.stream.write(line(counts, self.total, now - self.t0, self.already) + "\n")
        self.stream.flush()

    def close(self, counts: dict[str, int], total: int | None = None) -> None:
        """The final line, once."""
        self.update(counts, total, force=True)


def cancelled_part(counts: Mapping[str, int]) -> str:
    """``", N cancelled"`` when a run cancelled tasks (fail-fast, Ctrl-C), else nothing: they
    count as finished, so a summary without them would not add up."""
    n = counts.get("cancelled", 0)
    return f", {n} cancelled" if n else ""


def line(counts: dict[str, int], total: int, elapsed: float, already: int = 0) -> str:
    done = counts.get("done", 0)
    failed = counts.get("failed", 0)
    skipped = counts.get("skipped", 0)
    cancelled = f", cancelled {counts['cancelled']}" if counts.get("cancelled") else ""
    finished = finished_of(counts)
    total = max(total, finished)
    ran = max(0, finished - already)  # finished in this run
    rate = ran / elapsed if elapsed > 0 else 0.0
    left = total - finished
    eta = 0.0 if left <= 0 else left / rate if rate > 0 else float("inf")
    eta_s = f"{eta:.0f}s" if eta != float("inf") else "?"
    return (
        f"[conveyor] {finished}/{total} finished (done {done}, failed {failed}, skipped "
        f"{skipped}{cancelled}), running {counts.get('running', 0)}, {rate:.0f} tasks/s, "
        f"ETA {eta_s}"
    )


class RichProgress:
    def __init__(self, total: int, already: int = 0) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.total = total
        self.already = already
        self._p = Progress(
            TextColumn("[bold]conveyor"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self._task = self._p.add_task("run", total=total, detail="", rate="")
        self.t0 = time.monotonic()
        self._p.start()

    def update(self, counts: dict[str, int], total: int | None = None, force: bool = False) -> None:
        if total is not None:
            self.total = total
        finished = finished_of(counts)
        self.total = max(self.total, finished)
        elapsed = time.monotonic() - self.t0
        rate = f"{max(0, finished - self.already) / elapsed:.0f}/s" if elapsed > 0 else ""
        detail = (
            f"running {counts.get('running', 0)} · failed {counts.get('failed', 0)}"
            f" · skipped {counts.get('skipped', 0)}"
        )
        self._p.update(self._task, completed=finished, total=self.total, detail=detail, rate=rate)

    def close(self, counts: dict[str, int], total: int | None = None) -> None:
        self.update(counts, total, force=True)
        self._p.stop()


def make_progress(
    total: int, *, quiet: bool, stream: TextIO | None = None, already: int = 0
) -> Any:
    """The right progress display for where output goes, or ``None`` when quiet.
    ``already``: tasks finished before the run (not counted in its rate)."""
    if quiet:
        return None
    stream = stream or sys.stderr
    if stream.isatty():
        return RichProgress(total, already)
    return PlainProgress(total, stream, already=already)
