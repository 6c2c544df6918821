"""What ``conveyor build`` shows while it runs and when it ends: a ``rich`` Live panel on a
terminal, a plain line every few seconds elsewhere, and the summary.

The build calls ``update`` with a ``BuildStatus`` on the engine's thread (every quarter
second, and once more at the end); rich is imported only when the panel is shown.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol, TextIO

if TYPE_CHECKING:
    from conveyor.table.build import BuildStatus, BuildSummary

#: Seconds between plain progress lines off a terminal.
PLAIN_EVERY_S = 5.0


class Display(Protocol):
    def update(self, status: BuildStatus) -> None: ...
    def close(self) -> None: ...


def make_display(*, quiet: bool, records: int, stream: TextIO | None = None) -> Display | None:
    """The panel on a terminal, plain lines elsewhere, ``None`` when quiet."""
    if quiet:
        return None
    stream = stream or sys.stderr
    if stream.isatty():
        return LiveDisplay(records)
    return PlainDisplay(records, stream)


def rows_done(status: BuildStatus) -> int:
    """Rows written so far, counting a resume's rows, at most the records asked for (the
    last row group is trimmed at the end)."""
    return min(status.rows_resumed + status.rows_written, status.records)


def rate(n: int, elapsed: float) -> float:
    return n / elapsed if elapsed > 0 else 0.0


def plain_line(status: BuildStatus) -> str:
    """``build reviews: 4,000/10,000 rows, 4 row groups, 1,234 rows/s``."""
    groups = status.row_groups_resumed + status.row_groups_written
    line = (
        f"build {status.table}: {rows_done(status):,}/{status.records:,} rows, {groups:,} row"
        f" group{'' if groups == 1 else 's'}, {rate(status.rows_written, status.elapsed_s):,.0f}"
        " rows/s"
    )
    dropped = sum(c.dropped for c in status.columns)
    line += f", {dropped:,} dropped" if dropped else ""
    tokens = sum(m.tokens for m in status.models)
    return line + (f", {rate(tokens, status.elapsed_s):,.0f} tokens/s" if tokens else "")


class PlainDisplay:
    """A line every ``every`` seconds, and the last one when the build ends."""

    def __init__(self, records: int, stream: TextIO, every: float = PLAIN_EVERY_S) -> None:
        self.stream = stream
        self.every = every
        self.next_at = time.monotonic() + every
        self.last: BuildStatus | None = None
        self.closed = False

    def update(self, status: BuildStatus) -> None:
        self.last = status
        now = time.monotonic()
        if now >= self.next_at:
            self.next_at = now + self.every
            self._write(status)

    def _write(self, status: BuildStatus) -> None:
        self.stream.write(plain_line(status) + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.last is not None:
            self._write(self.last)


class LiveDisplay:
    """A rich Live panel: a header, one row per column, one per endpoint."""

    def __init__(self, records: int) -> None:
        from rich.console import Console
        from rich.live import Live
        from rich.text import Text

        self.records = records
        self._lock = threading.Lock()
        self._live = Live(Text(f"build: starting ({records:,} records)"),
                          console=Console(stderr=True), refresh_per_second=4,
                          transient=False)  # fmt: skip
        self._live.start()
        self.closed = False

    def update(self, status: BuildStatus) -> None:
        with self._lock:
            if not self.closed:
                self._live.update(panel(status))

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                self.closed = True
                self._live.stop()


def panel(status: BuildStatus) -> Any:
    """The Live panel's renderable for one snapshot."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    groups = status.row_groups_resumed + status.row_groups_written
    resumed = f" ({status.row_groups_resumed:,} resumed)" if status.row_groups_resumed else ""
    opened = ", ".join(map(str, status.row_groups_open)) or "-"
    header = Text(
        f"{rows_done(status):,} / {status.records:,} rows written · {groups:,} row groups"
        f" written{resumed} · open {opened} · {status.running:,} running ·"
        f" {status.elapsed_s:,.1f}s"
    )
    cols = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("column", "strategy", "done / planned", "dropped", "failed", "retried",
                 "rows/s"):  # fmt: skip
        cols.add_column(name, justify="left" if name in ("column", "strategy") else "right")
    for c in status.columns:
        cols.add_row(
            c.name, c.strategy, f"{c.done:,} / {c.planned:,}", f"{c.dropped:,}",
            f"{c.failed:,}", f"{c.retried:,}", f"{rate(c.done, status.elapsed_s):,.0f}",
        )  # fmt: skip
    parts: list[Any] = [header, cols]
    if status.endpoints:
        eps = Table(box=None, pad_edge=False, header_style="bold")
        for name in ("endpoint", "limit", "in flight", "waiting", "calls", "429s"):
            eps.add_column(name, justify="left" if name == "endpoint" else "right")
        for e in status.endpoints:
            eps.add_row(e.name, f"{e.limit:,}", f"{e.in_flight:,}", f"{e.waiting:,}",
                        f"{e.calls:,}", f"{e.rate_limited:,}")  # fmt: skip
        parts.append(eps)
    if status.models:
        models = Table(box=None, pad_edge=False, header_style="bold")
        for name in ("model", "calls", "prompt tokens", "completion tokens", "tokens/s"):
            models.add_column(name, justify="left" if name == "model" else "right")
        for m in status.models:
            models.add_row(m.alias, f"{m.calls:,}", f"{m.prompt_tokens:,}",
                           f"{m.completion_tokens:,}",
                           f"{rate(m.tokens, status.elapsed_s):,.0f}")  # fmt: skip
        parts.append(models)
    return Panel(Group(*parts), title=f"conveyor build {status.table}", expand=False)


def summary_lines(s: BuildSummary) -> list[str]:
    """The summary printed at the end: rows written, the row groups, dropped rows by column
    and reason, the first error per column and reason, endpoints, times, why it stopped."""
    first = (
        "" if s.time_to_first_row_group_s is None
        else f"; first row group after {s.time_to_first_row_group_s:.2f}s"
    )  # fmt: skip
    extra = [
        f"{n:,} {what}"
        for n, what in ((s.row_groups_resumed, "resumed"), (s.row_groups_updated, "updated"))
        if n
    ]
    groups = f"{s.row_groups:,} row groups" + (f", {', '.join(extra)}" if extra else "")
    lines = [
        f"conveyor: build {s.table}: {s.rows_written:,} of {s.records:,} rows written to {s.out}"
        f" ({groups}, {s.format}) in {s.total_s:.2f}s{first}"
    ]
    if s.rows_dropped:
        by = "; ".join(
            f"{col}: " + ", ".join(f"{reason} {n:,}" for reason, n in sorted(reasons.items()))
            for col, reasons in sorted(s.dropped.items())
            if reasons
        )
        lines.append(f"  dropped {s.rows_dropped:,} rows: {by}")
    for key, message in s.errors.items():  # key: "column: reason"; the message names the type
        lines.append(f"  first error in {key.split(': ', 1)[0]}: {_one_line(message)}")
    for name, st in s.endpoints.items():
        calls, limited, limit = (st.get(k, 0) for k in ("calls", "rate_limited", "limit"))
        lines.append(f"  endpoint {name}: {calls:,} calls, {limited:,} 429s, limit {limit:,}")
    for alias, m in s.models.items():
        tokens = int(m["prompt_tokens"] + m["completion_tokens"])
        lines.append(f"  model {alias}: {int(m['calls']):,} calls, {tokens:,} tokens"
                     f" ({m['tokens_per_s']:,.0f} tokens/s)")  # fmt: skip
    if s.stopped:
        lines.append(f"conveyor: error: build stopped early: {s.stopped}")
    elif not s.complete and not s.interrupted:  # (Ctrl-C says so itself, not as an error)
        lines.append(f"conveyor: error: build came out short: {s.rows_written:,} of"
                     f" {s.records:,} rows")  # fmt: skip
    return lines


def _one_line(text: str, limit: int = 300) -> str:
    one = " ".join(part.strip() for part in text.splitlines() if part.strip())
    return one if len(one) <= limit else one[: limit - 3] + "..."
