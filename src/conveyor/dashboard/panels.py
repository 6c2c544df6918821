"""The run's panels as HTML, from one ``Readings``: progress, throughput, fair share,
endpoints, why-pending, workers, the timeline. The live page and the report draw the same
panels; ``links`` says whether tasks and reasons link to their pages (a report file has none).
Every value shown goes through ``redact``."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any
from urllib.parse import quote

from conveyor.dashboard import redact, svg
from conveyor.dashboard.history import bin_width
from conveyor.dashboard.sampler import Readings
from conveyor.dashboard.timeline import lanes

#: The order states are listed and drawn in.
STATES = (
    "done",
    "running",
    "ready",
    "pending",
    "retry_wait",
    "failed",
    "skipped",
    "cancelled",
    "invalidated",
    "removed",
)
UNFINISHED = ("running", "ready", "pending", "retry_wait", "invalidated")


def e(v: Any) -> str:
    """Escaped, redacted text of any value."""
    return escape(redact.text(str(v)))


def duration(s: float | None) -> str:
    if s is None:
        return "—"
    s = float(s)
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def task_link(task: str, links: bool) -> str:
    if not links:
        return e(task)
    return f'<a href="/task/{escape(quote(task, safe=""))}">{e(task)}</a>'


def table(
    head: Sequence[str],
    rows: Iterable[Sequence[str]],
    numeric: set[int] | None = None,
    attrs: str = "",
) -> str:
    """An HTML table; cells are HTML already (escape before)."""
    num = numeric or set()
    out = [f"<table {attrs}><tr>"]
    out += [f"<th{' class=n' if i in num else ''}>{h}</th>" for i, h in enumerate(head)]
    out.append("</tr>")
    for row in rows:
        out.append(
            "<tr>"
            + "".join(f"<td{' class=n' if i in num else ''}>{c}</td>" for i, c in enumerate(row))
            + "</tr>"
        )
    out.append("</table>")
    return "".join(out)


def section(title: str, body: str, *, wide: bool = False, ident: str = "") -> str:
    cls = ' class="wide"' if wide else ""
    sid = f' id="{ident}"' if ident else ""
    return f"<section{cls}{sid}><h2>{escape(title)}</h2>{body}</section>"


# -- panels ----------------------------------------------------------------------------------------
def headline(r: Readings) -> str:
    st = r.status
    counts = st.get("counts", {})
    total = int(st.get("total", 0))
    done = int(counts.get("done", 0))
    pct = 100.0 * done / total if total else 0.0
    return (
        f'<span class="kpi">graph <b id="graph">{e(st.get("graph") or "—")}</b></span>'
        f'<span class="kpi">done <b id="done-count">{done:,}</b> / '
        f'<b id="total">{total:,}</b> ({pct:.1f}%)</span>'
        f'<span class="kpi"><b id="rate">{float(st.get("tasks_per_s", 0.0)):,.1f}</b> '
        f'tasks/s</span><span class="kpi">ETA <b id="eta">{duration(st.get("eta_s"))}</b>'
        f'</span><span class="kpi">workers <b id="workers-alive">'
        f"{int(st.get('workers_alive', 0))}</b></span>"
        f'<span class="kpi muted">{time.strftime("%H:%M:%S", time.gmtime(r.now))} UTC'
        "</span>"
    )


def progress(r: Readings) -> str:
    counts = r.status.get("counts", {})
    shown = {s: int(counts.get(s, 0)) for s in STATES}
    rows = [
        [
            f'<span class="swatch" style="background:{svg.STATE_COLOURS[s]}"></span>{s}',
            f'<span id="count-{s}">{n:,}</span>',
        ]
        for s, n in shown.items()
        if n
    ]
    groups = r.status.get("groups", {})
    grows = []
    for g in sorted(groups):
        c = groups[g]
        tot = sum(c.values())
        grows.append(
            [
                e(g),
                f"{c.get('done', 0):,}",
                f"{tot:,}",
                svg.state_bar({s: int(c.get(s, 0)) for s in STATES}, width=220, height=12),
            ]
        )
    return section(
        "Progress",
        svg.state_bar(shown)
        + "<p></p>"
        + table(["state", "tasks"], rows, {1}, 'id="states"')
        + "<h2>By group</h2>"
        + table(["group", "done", "total", ""], grows, {1, 2}, 'id="groups"'),
    )


def throughput(r: Readings) -> str:
    h = r.history
    span = 0.0 if h.first_ts is None or h.last_ts is None else h.last_ts - h.first_ts
    w = bin_width(span)
    rate = svg.line_chart({"tasks/s": h.throughput(w)}, title=f"Throughput (tasks/s, {w} s bins)")
    done = svg.line_chart(
        {"done": h.done_over_time()},
        title="Tasks done",
        steps=True,
        palette={"done": svg.STATE_COLOURS["done"]},
    )
    return section("Throughput", rate + done)


def fair_share(r: Readings) -> str:
    shares: Mapping[str, Mapping[str, Any]] = r.status.get("group_shares", {})
    series = r.history.group_running()
    names = sorted(set(series) | set(shares))
    pal = svg.colours(names)
    caps = {g: float(s["cap"]) for g, s in shares.items() if s.get("cap") is not None}
    chart = svg.line_chart(
        {g: series.get(g, []) for g in names},
        palette=pal,
        steps=True,
        title="Running by group (dashed: cap)",
        dashed=caps,
    )
    rows = []
    for g in names:
        s = shares.get(g, {})
        running = int(s.get("running", r.history.running.get(g, 0)))
        weight = float(s.get("weight", 1.0))
        cap = s.get("cap")
        rows.append(
            [
                f'<span class="swatch" style="background:{pal[g]}"></span>{e(g)}',
                str(running),
                f"{weight:g}",
                "—" if cap is None else str(cap),
                f"{running / weight:.2f}" if weight else "—",
            ]
        )
    note = (
        '<p class="muted">Admission starts the group with the lowest running / weight '
        "first, within its cap.</p>"
    )
    return section(
        "Fair share",
        chart
        + table(
            ["group", "running", "weight", "cap", "running / weight"],
            rows,
            {1, 2, 3, 4},
            'id="shares"',
        )
        + note,
    )


def per_minute(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """A cumulative count's rate per minute over the trailing minute at each point."""
    out = []
    j = 0
    for i, (t, v) in enumerate(points):
        while points[j][0] < t - 60.0 and j < i:
            j += 1
        t0, v0 = points[j]
        out.append((t, max(0.0, v - v0) / max(t - t0, 1.0) * 60.0 if i > j else 0.0))
    return out


def endpoint_series(
    samples: Iterable[tuple[float, Mapping[str, Mapping[str, Any]]]],
) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """Field (``limit``, ``in_flight``, ``waiting``, ``rate_limited``) -> endpoint -> its
    values over time, from the samples of ``Store.status``'s ``endpoints``."""
    fields = ("limit", "in_flight", "waiting", "rate_limited")
    out: dict[str, dict[str, list[tuple[float, float]]]] = {f: {} for f in fields}
    for ts, eps in samples:
        for k, st in eps.items():
            for f in fields:
                out[f].setdefault(k, []).append((ts, float(st.get(f, 0))))
    return out


def endpoints(r: Readings) -> str:
    now_eps: Mapping[str, Mapping[str, Any]] = r.status.get("endpoints", {})
    if not now_eps and not any(eps for _, eps in r.endpoint_samples):
        return section("Endpoints", '<p class="muted">no task calls an endpoint</p>')
    names = sorted({k for _, eps in r.endpoint_samples for k in eps} | set(now_eps))
    series = endpoint_series(r.endpoint_samples)
    limit, flight, waiting = series["limit"], series["in_flight"], series["waiting"]
    limited = series["rate_limited"]
    pal = svg.colours(names)
    rows = [
        [
            e(k),
            str(st.get("limit", 0)),
            str(st.get("in_flight", 0)),
            str(st.get("waiting", 0)),
            str(st.get("rate_limited", 0)),
            f"{per_minute(limited.get(k, []))[-1][1]:.1f}" if limited.get(k) else "—",
            str(st.get("workers", 0)),
        ]
        for k, st in sorted(now_eps.items())
    ]
    charts = (
        svg.line_chart(
            {f"{k} limit": v for k, v in limit.items()}
            | {f"{k} in flight": v for k, v in flight.items()},
            title="Adaptive limit and in flight",
            steps=True,
        )
        + svg.line_chart(
            {k: v for k, v in waiting.items()}, palette=pal, steps=True, title="Waiting for a slot"
        )
        + svg.line_chart(
            {k: per_minute(v) for k, v in limited.items()}, palette=pal, title="429s per minute"
        )
    )
    head = ["endpoint", "limit", "in flight", "waiting", "429s", "429s/min", "workers"]
    return section("Endpoints", table(head, rows, {1, 2, 3, 4, 5, 6}, 'id="endpoints"') + charts)


def reasons(r: Readings, links: bool) -> str:
    got: Mapping[str, int] = r.status.get("reasons", {})
    if not got:
        return section("Why pending", '<p class="muted">nothing is waiting</p>')
    rows = []
    for code, n in got.items():
        name = e(code)
        if links:
            name = f'<a href="/reason/{escape(quote(code, safe=""))}">{name}</a>'
        rows.append([name, f"{int(n):,}"])
    return section("Why pending", table(["reason", "tasks"], rows, {1}, 'id="reasons"'))


def workers(r: Readings, links: bool) -> str:
    rows = []
    for w in r.workers:
        info = w.get("info") or {}
        slurm = " ".join(
            f"{k.removeprefix('slurm_')}={e(v)}"
            for k, v in sorted(info.items())
            if k.startswith("slurm_")
        )
        tasks = w.get("tasks") or []
        shown = ", ".join(task_link(t, links) for t in tasks[:5])
        if len(tasks) > 5:
            shown += f" +{len(tasks) - 5}"
        ago = r.now - float(w.get("last_seen") or r.now)
        labels = redact.value(info.get("labels") or {})
        res = redact.value(info.get("resources") or {})
        rows.append(
            [
                e(w["worker"]),
                f'<span class="{e(w["state"])}">{e(w["state"])}</span>',
                str(info.get("slots", "—")),
                e(", ".join(f"{k}={v}" for k, v in labels.items()) or "—"),
                e(
                    ", ".join(
                        f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items()
                    )
                    or "—"
                ),
                shown or '<span class="muted">idle</span>',
                f"{ago:.1f} s ago",
                slurm or "—",
            ]
        )
    alive = sum(1 for w in r.workers if w["state"] == "alive")
    lost = sum(1 for w in r.workers if w["state"] == "lost")
    head = ["worker", "state", "slots", "labels", "resources", "running", "heartbeat", "SLURM"]
    summary = f"<p>{alive} alive, {lost} lost, {len(r.workers) - alive - lost} left</p>"
    return section("Workers", summary + table(head, rows, {2}, 'id="workers"'), wide=True)


def worker_slots(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Each worker's slots, as it registered them (for the timeline's rows)."""
    out = {}
    for w in rows:
        n = (w.get("info") or {}).get("slots")
        if isinstance(n, int) and n > 0:
            out[str(w["worker"])] = n
    return out


def timeline(r: Readings, links: bool, window_s: float | None = None) -> str:
    h = r.history
    # The window ends now while tasks run, else at the last event (a finished run's end).
    end = r.now if h.open_spans or h.last_ts is None else h.last_ts
    win = h.window_s if window_s is None else window_s
    spans = h.recent_spans(end, win)
    names = sorted({s.group for s in spans} | set(r.status.get("group_shares", {})))
    pal = svg.colours(names)
    t0 = end - win
    if spans:
        t0 = max(t0, min(s.start for s in spans))
    legend = " ".join(
        f'<span class="swatch" style="background:{pal[g]}"></span>{e(g)}' for g in names
    )
    chart = svg.gantt(
        lanes(spans, end, worker_slots(r.workers)),
        t0=t0,
        t1=end,
        palette=pal,
        link="/task/" if links else None,
    )
    title = f"Timeline (last {duration(end - t0)}, one row per worker slot)"
    return section(title, f"<p>{legend}</p>{chart}", wide=True, ident="timeline")


def render(r: Readings, *, links: bool = True) -> tuple[str, dict[str, Any]]:
    """The live panels' HTML and a summary of the numbers in them."""
    parts = []
    if not r.caught_up:
        parts.append(
            f'<p class="banner">following the audit trail with a lag ({r.history.events:,} '
            "rows read so far): the charts catch up; the counts above them are current</p>"
        )
    if r.build is not None and not r.status.get("graph") and not r.status.get("total"):
        from conveyor.dashboard.buildpanel import build_panel  # a build without a store

        parts.append(f"<main>{build_panel(r.build)}</main>")
        return "".join(parts), {"build": r.build, "ts": r.now}
    parts.append(f'<header id="headline">{headline(r)}</header>')
    parts.append("<main>")
    parts += [progress(r), throughput(r), fair_share(r), endpoints(r), reasons(r, links)]
    if r.build is not None:
        from conveyor.dashboard.buildpanel import build_panel

        parts.append(build_panel(r.build))
    parts += [workers(r, links), timeline(r, links), "</main>"]
    st = r.status
    summary = {
        "graph": st.get("graph"),
        "total": st.get("total", 0),
        "counts": st.get("counts", {}),
        "tasks_per_s": st.get("tasks_per_s", 0.0),
        "eta_s": st.get("eta_s"),
        "workers_alive": st.get("workers_alive", 0),
        "reasons": st.get("reasons", {}),
        "endpoints": st.get("endpoints", {}),
        "events": r.history.events,
        "ts": r.now,
    }
    return "".join(parts), summary
