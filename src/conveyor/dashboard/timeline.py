"""The timeline's lanes: each worker's attempts packed into slots, so that one row is one slot
of one worker (a worker running 4 tasks at once has 4 rows). Pure."""

from __future__ import annotations

from collections.abc import Sequence

from conveyor.dashboard.history import Span

Bar = tuple[str, str, float, float, str]  # task, group, start, end, outcome


def lanes(spans: Sequence[Span], now: float) -> list[tuple[str, list[Bar]]]:
    """``[(label, bars)]``: per worker (in order of first start), its spans put in the lowest
    slot free when each starts; a running span is drawn up to ``now``. Labels are
    ``worker #slot``."""
    by_worker: dict[str, list[list[Bar]]] = {}
    ends: dict[str, list[float]] = {}
    for s in sorted(spans, key=lambda s: (s.start, s.task)):
        end = now if s.end is None else s.end
        slots = by_worker.setdefault(s.worker, [])
        free = ends.setdefault(s.worker, [])
        i = next((k for k, busy_until in enumerate(free) if busy_until <= s.start), len(free))
        if i == len(free):
            free.append(0.0)
            slots.append([])
        free[i] = max(end, s.start + 1e-6)
        slots[i].append((s.task, s.group, s.start, end, s.outcome))
    return [
        (f"{w} #{i + 1}", bars) for w, slots in by_worker.items() for i, bars in enumerate(slots)
    ]
