"""The timeline's lanes: each worker's attempts packed into slots, so that one row is one slot
of one worker (a worker running 4 tasks at once has 4 rows). Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from conveyor.dashboard.history import Span

Bar = tuple[str, str, float, float, str]  # task, group, start, end, outcome


def lanes(
    spans: Sequence[Span], now: float, slots: Mapping[str, int] | None = None
) -> list[tuple[str, list[Bar]]]:
    """``[(label, bars)]``: per worker (in order of first start), its spans put in the lowest
    slot free when each starts (a span that ends as the next starts leaves its slot free: the
    no-ops a claim batch completes at one instant share one). A worker whose ``slots`` are
    known never gets more rows: a span that finds none free goes to the one freed first. A
    running span is drawn up to ``now``. Labels are ``worker #slot``."""
    by_worker: dict[str, list[list[Bar]]] = {}
    ends: dict[str, list[float]] = {}
    most = slots or {}
    for s in sorted(spans, key=lambda s: (s.start, s.task)):
        end = now if s.end is None else s.end
        rows = by_worker.setdefault(s.worker, [])
        free = ends.setdefault(s.worker, [])
        i = next((k for k, busy_until in enumerate(free) if busy_until <= s.start), len(free))
        if i == len(free):
            if len(free) >= most.get(s.worker, len(free) + 1):
                i = min(range(len(free)), key=free.__getitem__)
            else:
                free.append(end)
                rows.append([])
        free[i] = max(free[i], end)
        rows[i].append((s.task, s.group, s.start, end, s.outcome))
    return [(f"{w} #{i + 1}", bars) for w, rows in by_worker.items() for i, bars in enumerate(rows)]
