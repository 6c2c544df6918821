"""The report's plots as PNG files (``conveyor report --png DIR``), drawn with matplotlib
(``conveyor[dashboard]``) from the same series as the SVG panels."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from conveyor.dashboard import svg
from conveyor.dashboard.history import bin_width
from conveyor.dashboard.panels import endpoint_series, per_minute, worker_slots
from conveyor.dashboard.sampler import Readings
from conveyor.dashboard.timeline import lanes
from conveyor.errors import UsageError

Series = Sequence[tuple[float, float]]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise UsageError("--png needs matplotlib: pip install -e '.[dashboard]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _lines(
    plt: Any,
    path: Path,
    title: str,
    series: Mapping[str, Series],
    *,
    steps: bool = False,
    palette: Mapping[str, str] | None = None,
    dashed: Mapping[str, float] | None = None,
) -> Path:
    import datetime as dt

    pal = palette or svg.colours(list(series))
    fig, ax = plt.subplots(figsize=(8, 3), dpi=110)
    for name, pts in series.items():
        if not pts:
            continue
        xs = [dt.datetime.fromtimestamp(x, dt.UTC) for x, _ in pts]
        ys = [y for _, y in pts]
        if steps:
            ax.step(xs, ys, where="post", label=name, color=pal.get(name))
        else:
            ax.plot(xs, ys, label=name, color=pal.get(name))
    for name, y in (dashed or {}).items():
        ax.axhline(y, linestyle="--", linewidth=1, color=pal.get(name, "#888"))
    ax.set_title(title, loc="left", fontsize=10)
    ax.set_xlabel("UTC")
    ax.grid(alpha=0.3)
    if any(series.values()):
        ax.legend(fontsize=8, loc="upper left")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _gantt(plt: Any, path: Path, r: Readings) -> Path:
    h = r.history
    end = h.last_ts or r.now
    spans = h.recent_spans(end)
    rows = lanes(spans, end, worker_slots(r.workers))
    pal = svg.colours(sorted({s.group for s in spans}))
    fig, ax = plt.subplots(figsize=(10, max(2.0, 0.22 * len(rows) + 1)), dpi=110)
    t0 = min((s.start for s in spans), default=end)
    for i, (_label, bars) in enumerate(rows):
        for _task, group, start, stop, outcome in bars:
            ax.broken_barh(
                [(start - t0, max(stop - start, 1e-3))],
                (i + 0.1, 0.8),
                facecolors=pal.get(group, "#999"),
                edgecolors="#D55E00" if outcome in ("failed", "lost") else "none",
            )
    ax.set_yticks([i + 0.5 for i in range(len(rows))], [label for label, _ in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title("Timeline (one row per worker slot, coloured by group)", loc="left", fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in pal.values()]
    if handles:
        ax.legend(handles, list(pal), fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_pngs(r: Readings, out: Path) -> list[Path]:
    """The report's plots as ``out/*.png``; returns the files written."""
    plt = _pyplot()
    out.mkdir(parents=True, exist_ok=True)
    h = r.history
    span = 0.0 if h.first_ts is None or h.last_ts is None else h.last_ts - h.first_ts
    w = bin_width(span)
    shares = r.status.get("group_shares", {})
    caps = {g: float(s["cap"]) for g, s in shares.items() if s.get("cap") is not None}
    running = h.group_running()
    made = [
        _lines(
            plt,
            out / "done.png",
            "Tasks done",
            {"done": h.done_over_time()},
            steps=True,
            palette={"done": svg.STATE_COLOURS["done"]},
        ),
        _lines(
            plt,
            out / "throughput.png",
            f"Throughput (tasks/s, {w} s bins)",
            {"tasks/s": h.throughput(w)},
        ),
        _lines(
            plt,
            out / "fair_share.png",
            "Running by group (dashed: cap)",
            running,
            steps=True,
            palette=svg.colours(sorted(set(running) | set(shares))),
            dashed=caps,
        ),
        _gantt(plt, out / "timeline.png", r),
    ]
    series = endpoint_series(r.endpoint_samples)
    limits, limited = series["limit"], series["rate_limited"]
    if limits:
        made.append(_lines(plt, out / "endpoints.png", "Endpoint limits", limits, steps=True))
        made.append(
            _lines(
                plt,
                out / "429s.png",
                "429s per minute",
                {k: per_minute(v) for k, v in limited.items()},
            )
        )
    return made
