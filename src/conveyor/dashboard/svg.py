"""Charts as inline SVG, drawn on the server: the page needs no script library and works
offline, and the report embeds the same markup. Pure functions of numbers to text."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from html import escape
from urllib.parse import quote

#: Colours of groups and series, in order (a colour-blind-safe set: Okabe-Ito, then Tableau).
PALETTE = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#D55E00",
    "#F0E442",
    "#000000",
    "#8c564b",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
#: Task states as drawn in progress bars.
STATE_COLOURS = {
    "done": "#009E73",
    "running": "#0072B2",
    "ready": "#56B4E9",
    "pending": "#c8c8c8",
    "retry_wait": "#E69F00",
    "failed": "#D55E00",
    "skipped": "#CC79A7",
    "cancelled": "#7f7f7f",
    "invalidated": "#F0E442",
    "removed": "#eeeeee",
}
Series = Sequence[tuple[float, float]]
_FONT = 'font-family="system-ui,sans-serif" font-size="11"'


def colours(names: Sequence[str]) -> dict[str, str]:
    """A stable colour per name (sorted: the same group has the same colour everywhere)."""
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(sorted(names))}


def _clock(t: float, span: float = 60.0) -> str:
    """UTC time of day; with tenths of a second when the axis spans under 10 s."""
    text = time.strftime("%H:%M:%S", time.gmtime(t))
    return f"{text}.{int(t * 10) % 10}" if span < 10 else text


def _nice(v: float) -> str:
    if v >= 1000:
        return f"{v / 1000:.3g}k"
    return f"{v:.3g}"


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if hi <= lo:
        return [lo]
    return [lo + (hi - lo) * i / n for i in range(n + 1)]


def line_chart(
    series: Mapping[str, Series],
    *,
    title: str,
    width: int = 560,
    height: int = 180,
    palette: Mapping[str, str] | None = None,
    steps: bool = False,
    x_range: tuple[float, float] | None = None,
    y_max: float | None = None,
    dashed: Mapping[str, float] | None = None,
) -> str:
    """Lines over time (x: unix seconds, labelled UTC). ``steps``: hold each value until the
    next point. ``dashed``: horizontal reference lines (a cap) by label."""
    pal = dict(palette or colours(list(series)))
    xs = [x for s in series.values() for x, _ in s]
    ys = [y for s in series.values() for _, y in s] + list((dashed or {}).values())
    left, right, top, bottom = 44, 28, 22, 22
    pw, ph = width - left - right, height - top - bottom
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" {_FONT}>',
        f'<text x="{left}" y="14" font-weight="600">{escape(title)}</text>',
    ]
    if not xs:
        out.append(f'<text x="{left + 8}" y="{top + ph / 2}" fill="#888">no data yet</text></svg>')
        return "".join(out)
    x0, x1 = x_range or (min(xs), max(xs))
    if x1 <= x0:
        x1 = x0 + 1.0
    y1 = y_max if y_max is not None else max([*ys, 1.0]) * 1.1

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return top + ph - min(max(y, 0.0), y1) / y1 * ph

    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#ddd"/>')
    for y in _ticks(0.0, y1):
        out.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{py(y):.1f}" y2="{py(y):.1f}" '
            f'stroke="#eee"/><text x="{left - 4}" y="{py(y) + 4:.1f}" '
            f'text-anchor="end" fill="#555">{_nice(y)}</text>'
        )
    for x in _ticks(x0, x1, 3):
        out.append(
            f'<text x="{px(x):.1f}" y="{height - 6}" text-anchor="middle" '
            f'fill="#555">{_clock(x, x1 - x0)}</text>'
        )
    for label, y in (dashed or {}).items():
        out.append(
            f'<line x1="{left}" x2="{left + pw}" y1="{py(y):.1f}" y2="{py(y):.1f}" '
            f'stroke="{pal.get(label, "#888")}" stroke-dasharray="4 3"/>'
        )
    lx = left + 4
    for name, pts in series.items():
        colour = pal.get(name, "#333")
        if pts:
            coords = []
            prev_y = None
            for x, y in sorted(pts):
                if steps and prev_y is not None:
                    coords.append(f"{px(x):.1f},{py(prev_y):.1f}")
                coords.append(f"{px(x):.1f},{py(y):.1f}")
                prev_y = y
            if steps and prev_y is not None:
                coords.append(f"{px(x1):.1f},{py(prev_y):.1f}")
            out.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="1.6" '
                f'points="{" ".join(coords)}"><title>{escape(name)}</title></polyline>'
            )
        out.append(
            f'<rect x="{lx}" y="{top + 4}" width="8" height="8" fill="{colour}"/>'
            f'<text x="{lx + 11}" y="{top + 12}">{escape(name)}</text>'
        )
        lx += 16 + 7 * len(name)
    out.append("</svg>")
    return "".join(out)


def state_bar(counts: Mapping[str, int], *, width: int = 560, height: int = 18) -> str:
    """One bar split by task state (zero states left out), each part titled with its count."""
    total = sum(counts.values())
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="bar" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}">'
    ]
    x = 0.0
    for state, n in counts.items():
        if n <= 0 or total == 0:
            continue
        w = n / total * width
        out.append(
            f'<rect x="{x:.2f}" y="0" width="{w:.2f}" height="{height}" '
            f'fill="{STATE_COLOURS.get(state, "#999")}"><title>{escape(state)}: {n:,}'
            "</title></rect>"
        )
        x += w
    if total == 0:
        out.append(f'<rect width="{width}" height="{height}" fill="#eee"/>')
    out.append("</svg>")
    return "".join(out)


def gantt(
    lanes: Sequence[tuple[str, Sequence[tuple[str, str, float, float, str]]]],
    *,
    t0: float,
    t1: float,
    palette: Mapping[str, str],
    width: int = 1140,
    lane_h: int = 14,
    link: str | None = "task/",
) -> str:
    """A timeline: one row per lane label, each ``(task, group, start, end, outcome)`` a bar
    coloured by group (a failed or lost attempt outlined in red). ``link``: bars link to
    ``link + task``. Bars a few pixels wide or less that nearly touch are drawn as one (titled
    with their count, unlinked): the markup stays as small as the picture, however fast the run."""
    left, top = 150, 18
    pw = width - left - 8
    height = top + lane_h * max(1, len(lanes)) + 20
    span = max(t1 - t0, 1e-9)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="gantt" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" {_FONT}>'
    ]
    for x in _ticks(t0, t1, 5):
        gx = left + (x - t0) / span * pw
        out.append(
            f'<line x1="{gx:.1f}" x2="{gx:.1f}" y1="{top}" y2="{height - 18}" '
            f'stroke="#eee"/><text x="{gx:.1f}" y="{height - 5}" text-anchor="middle" '
            f'fill="#555">{_clock(x, span)}</text>'
        )
    if not lanes:
        out.append(f'<text x="{left}" y="{top + 11}" fill="#888">nothing ran in this window</text>')
    for i, (label, bars) in enumerate(lanes):
        y = top + i * lane_h
        out.append(
            f'<text x="{left - 6}" y="{y + lane_h - 3}" text-anchor="end" '
            f'fill="#333">{escape(label)}</text>'
        )
        for piece in _merged(bars, t0, span, left, pw):
            out.append(_bar(piece, y, lane_h, palette, link))
    out.append("</svg>")
    return "".join(out)


#: Pixels: bars narrower than this, and as close to the one before, are drawn as one.
_THIN = 4.0
#: A bar as drawn: x from, x to, group, outcome, its tasks (first, count), seconds it ran.
_Piece = tuple[float, float, str, str, str, int, float]


def _merged(
    bars: Sequence[tuple[str, str, float, float, str]],
    t0: float,
    span: float,
    left: float,
    pw: float,
) -> list[_Piece]:
    out: list[_Piece] = []
    for task, group, start, end, outcome in bars:
        a = left + (max(start, t0) - t0) / span * pw
        b = max(left + (min(end, t0 + span) - t0) / span * pw, a + 1.0)
        if out:
            pa, pb, pg, po, first, n, secs = out[-1]
            thin = b - a < _THIN and (n > 1 or pb - pa < _THIN)
            if thin and pg == group and po == outcome and a - pb < _THIN:
                out[-1] = (pa, max(pb, b), pg, po, first, n + 1, secs + (end - start))
                continue
        out.append((a, b, group, outcome, task, 1, end - start))
    return out


def _bar(p: _Piece, y: float, lane_h: int, palette: Mapping[str, str], link: str | None) -> str:
    a, b, group, outcome, task, n, secs = p
    stroke = ' stroke="#D55E00" stroke-width="1.5"' if outcome in ("failed", "lost") else ""
    what = escape(task) if n == 1 else f"{n} tasks from {escape(task)}"
    rect = (
        f'<rect x="{a:.1f}" y="{y + 1}" width="{b - a:.1f}" height="{lane_h - 2}" '
        f'fill="{palette.get(group, "#999")}"{stroke}><title>{what} '
        f"({escape(group)}, {escape(outcome)}, {secs:.2f} s)</title></rect>"
    )
    if link is not None and n == 1:
        rect = f'<a href="{escape(link + quote(task, safe=""))}">{rect}</a>'
    return rect
