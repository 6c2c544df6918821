"""A run's history, folded from its audit trail: what the dashboard's and the report's
over-time plots draw. Pure: events in (oldest first), series out; the caller reads the store.

Kept small whatever the run's length: counts per second (a day is 86,400 entries at most),
the running count of each group at the end of each second it changed, and only the task spans
of the last ``window_s`` seconds (the timeline) plus those still running.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: Events that end a task's attempt, and how its span is shown.
ENDS = {
    "task_finished": "done",
    "task_failed": "failed",
    "task_retrying": "failed",
    "task_released": "released",
    "lease_expired": "lost",
    "task_cancelled": "cancelled",
    "task_removed": "removed",
}


@dataclass(slots=True)
class Span:
    """One attempt of one task on one worker: ``end`` is ``None`` while it runs."""

    task: str
    worker: str
    group: str
    start: float
    end: float | None = None
    outcome: str = "running"


@dataclass
class RunHistory:
    """Folds events into per-second series and recent spans (``add``)."""

    window_s: float = 300.0
    #: Finished spans kept at most (a fast run's window is its latest ``max_spans`` attempts).
    max_spans: int = 3000
    #: Unix second -> tasks finished (done) / failed for good in it.
    done_per_s: dict[int, int] = field(default_factory=dict)
    failed_per_s: dict[int, int] = field(default_factory=dict)
    #: Unix second -> the most tasks of each group running at once in it (seconds where a
    #: count changed).
    running_per_s: dict[int, dict[str, int]] = field(default_factory=dict)
    #: Unix second -> each group's running count at its end (the same seconds but the last).
    running_end_s: dict[int, dict[str, int]] = field(default_factory=dict)
    running: dict[str, int] = field(default_factory=dict)
    open_spans: dict[str, Span] = field(default_factory=dict)
    spans: list[Span] = field(default_factory=list)
    _second: int | None = None  # the latest second in running_per_s
    first_ts: float | None = None
    last_ts: float | None = None
    events: int = 0

    def add(self, events: Iterable[Mapping[str, Any]], groups: Mapping[str, str]) -> None:
        """Fold ``events`` in; ``groups``: the group of every task they name (others count
        as ``default``)."""
        for ev in events:
            self.events += 1
            ts = float(ev.get("ts", 0.0))
            if self.first_ts is None:
                self.first_ts = ts
            self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)
            kind = ev.get("event")
            task = ev.get("task")
            if task is None:
                continue
            if kind == "task_started":
                self._start(str(task), str(ev.get("worker") or "?"), groups, ts)
            elif kind in ENDS:
                self._end(str(task), ENDS[str(kind)], ts)
            if kind == "task_finished":
                sec = int(ts)
                self.done_per_s[sec] = self.done_per_s.get(sec, 0) + 1
            elif kind == "task_failed":
                sec = int(ts)
                self.failed_per_s[sec] = self.failed_per_s.get(sec, 0) + 1
        self._trim()

    def _start(self, task: str, worker: str, groups: Mapping[str, str], ts: float) -> None:
        old = self.open_spans.pop(task, None)
        if old is not None:  # a start without an end we saw (a pruned trail): close it
            self._close(old, "lost", ts)
        group = groups.get(task, "default")
        self.open_spans[task] = Span(task, worker, group, ts)
        self._count(group, +1, ts)

    def _end(self, task: str, outcome: str, ts: float) -> None:
        span = self.open_spans.pop(task, None)
        if span is not None:
            self._close(span, outcome, ts)

    def _close(self, span: Span, outcome: str, ts: float) -> None:
        span.end, span.outcome = ts, outcome
        self.spans.append(span)
        self._count(span.group, -1, ts)

    def _count(self, group: str, delta: int, ts: float) -> None:
        second = int(ts)
        most = self.running_per_s.get(second)
        if most is None:  # a new second: the last one ended with the counts as they are
            if self._second is not None:
                self.running_end_s[self._second] = dict(self.running)
            most = self.running_per_s[second] = dict(self.running)
            self._second = second
        n = max(0, self.running.get(group, 0) + delta)
        self.running[group] = n
        if n > most.get(group, 0):
            most[group] = n  # the most at once in that second

    def _trim(self) -> None:
        if self.last_ts is None:
            return
        cut = self.last_ts - self.window_s
        if self.spans and self.spans[0].end is not None and self.spans[0].end < cut:
            self.spans = [s for s in self.spans if s.end is None or s.end >= cut]
        if len(self.spans) > 2 * self.max_spans:  # a fast run: keep the latest ones
            self.spans = self.spans[-self.max_spans :]

    # -- what the plots draw -----------------------------------------------------------------
    def recent_spans(self, now: float, window_s: float | None = None) -> list[Span]:
        """Spans that overlap the last ``window_s`` seconds before ``now``, oldest start first;
        running ones included (drawn up to ``now``)."""
        cut = now - (self.window_s if window_s is None else window_s)
        out = [s for s in self.spans[-self.max_spans :] if s.end is None or s.end >= cut]
        out += list(self.open_spans.values())
        return sorted(out, key=lambda s: (s.start, s.task))

    def throughput(self, bin_s: int) -> list[tuple[float, float]]:
        """``(bin start, tasks done per second)`` over the run, bins of ``bin_s`` seconds with
        empty bins as zeros."""
        if not self.done_per_s or self.first_ts is None or self.last_ts is None:
            return []
        lo, hi = int(self.first_ts) // bin_s * bin_s, int(self.last_ts)
        out = []
        for b in range(lo, hi + 1, bin_s):
            n = sum(self.done_per_s.get(s, 0) for s in range(b, b + bin_s))
            out.append((float(b), n / bin_s))
        return out

    def done_over_time(self) -> list[tuple[float, float]]:
        """``(second, tasks done so far)`` at every second where some finished."""
        total = 0
        out = []
        for sec in sorted(self.done_per_s):
            total += self.done_per_s[sec]
            out.append((float(sec), float(total)))
        return out

    def group_running(self) -> dict[str, list[tuple[float, float]]]:
        """Each group's running count over time, as steps: the most at once in each second
        where it changed, then what it was at that second's end."""
        names = sorted({g for d in self.running_per_s.values() for g in d})
        out: dict[str, list[tuple[float, float]]] = {g: [] for g in names}
        for sec in sorted(self.running_per_s):
            most = self.running_per_s[sec]
            end = self.running if sec == self._second else self.running_end_s.get(sec, {})
            for g in names:
                out[g].append((float(sec), float(most.get(g, 0))))
                if sec + 1 not in self.running_per_s:
                    out[g].append((float(sec + 1), float(end.get(g, 0))))
        return out


def bin_width(span_s: float, bins: int = 120) -> int:
    """Seconds per bin so that ``span_s`` gives at most about ``bins`` bins (1, 2, 5, 10 ...)."""
    for w in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if span_s / w <= bins:
            return w
    return 7200
