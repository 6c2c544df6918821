"""Whole pages: the shell around the live panels (and the report's), one task's page (history,
attempts, errors, fingerprint, parents and children) and the tasks behind one why-pending
reason. Reads go through the ``Store`` handed in; every value shown goes through ``redact``."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from functools import cache
from html import escape
from importlib import resources
from typing import Any

from conveyor.dashboard import redact
from conveyor.dashboard.history import ENDS
from conveyor.dashboard.panels import e, section, table, task_link
from conveyor.store.base import Store

#: Tasks a reason page looks at (each is one ``explain``), and shows at most.
REASON_SCAN = 400
REASON_SHOW = 200
#: The states whose tasks can have a reason code (a pending task waits on parents, a task in
#: retry_wait on its backoff; every other code is a ready task's).
REASON_STATES = {"waiting_on_parents": ("pending",), "retry_backoff": ("retry_wait",)}


@cache
def asset(name: str) -> str:
    """A file of ``dashboard/static`` (shipped in the package: nothing is fetched)."""
    return (resources.files("conveyor.dashboard") / "static" / name).read_text("utf-8")


def shell(title: str, body: str, *, store_url: str, live: bool, nav: bool = True) -> str:
    """A complete page: the stylesheet inlined; the live page loads its one script from the
    server (``/static/live.js``), a report carries none."""
    script = '<script src="/static/live.js"></script>' if live else ""
    conn = ' · <span id="conn" class="muted">connecting</span>' if live else ""
    back = ' · <a href="/">dashboard</a>' if nav and not live else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width"><title>{escape(title)}</title>'
        f"<style>{asset('page.css')}</style></head><body>"
        f'<div class="muted" style="padding:4px 16px">conveyor · {e(store_url)}{conn}{back}'
        f'</div><div id="live">{body}</div>{script}</body></html>'
    )


def _when(ts: Any) -> str:
    if ts is None:
        return "—"
    t = float(ts)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}"


def attempts(history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each attempt of a task from its audit rows: worker, start, end, outcome, error."""
    out: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for ev in history:
        kind = ev.get("event")
        if kind == "task_started":
            current = {
                "attempt": ev.get("attempt"),
                "worker": ev.get("worker"),
                "start": ev.get("ts"),
                "end": None,
                "outcome": "running",
                "error": None,
            }
            out.append(current)
        elif kind in ENDS and current is not None and current["end"] is None:
            current.update(end=ev.get("ts"), outcome=ENDS[str(kind)], error=ev.get("error"))
    return out


def task_page(store: Store, task_id: str, now: float, *, links: bool = True) -> str:
    """The body of one task's page; ``GraphError`` for an unknown id."""
    info = store.task_info(task_id)
    history = store.history(task_id)
    parts = [
        f'<header><h1 id="task-id">{e(task_id)}</h1><span class="kpi">state '
        f'<b id="task-state">{e(info["state"])}</b></span><span class="kpi">group '
        f'<b>{e(info["group"])}</b></span><span class="kpi">attempts '
        f"<b>{int(info['attempt'])}</b></span></header><main>"
    ]
    facts = [
        ["worker", e(info.get("worker") or "—")],
        ["fingerprint", f"<code>{e(info.get('fingerprint') or '—')}</code>"],
        ["updated", _when(info.get("updated"))],
        ["lost leases", str(info.get("lost", 0))],
    ]
    if info.get("submitted_by"):
        facts.append(["submitted by", task_link(str(info["submitted_by"]), links)])
    if info["state"] in ("pending", "ready", "retry_wait", "invalidated"):
        why = store.explain(task_id, now)
        facts.append(["why not running", f"<b>{e(why.code)}</b>: {e(why.message)}"])
    if info.get("error"):
        facts.append(["error", f'<pre class="error">{e(info["error"])}</pre>'])
    parts.append(section("Task", table(["", ""], facts)))
    spec = json.dumps(
        redact.spec(info.get("spec") or {}), indent=1, default=str, ensure_ascii=False
    )
    parts.append(section("Spec (env values and secrets hidden)", f"<pre>{escape(spec)}</pre>"))
    rel = [
        ["parents", ", ".join(task_link(p, links) for p in info["parents"]) or "—"],
        ["children", ", ".join(task_link(c, links) for c in info["children"]) or "—"],
    ]
    parts.append(section("Parents and children", table(["", ""], rel)))
    rows = [
        [
            str(a["attempt"]),
            e(a["worker"] or "—"),
            _when(a["start"]),
            _when(a["end"]),
            "—" if a["end"] is None else f"{float(a['end']) - float(a['start']):.3f} s",
            e(a["outcome"]),
            f'<span class="error">{e(a["error"] or "")}</span>',
        ]
        for a in attempts(history)
    ]
    parts.append(
        section(
            "Attempts",
            table(
                ["#", "worker", "started", "ended", "took", "outcome", "error"],
                rows,
                {0},
                'id="attempts"',
            ),
            wide=True,
        )
    )
    hrows = []
    for ev in history:
        extra = {
            k: v
            for k, v in ev.items()
            if k not in ("ts", "event", "task", "worker", "attempt", "from", "to")
        }
        hrows.append(
            [
                _when(ev.get("ts")),
                e(ev.get("event")),
                e(f"{ev.get('from') or ''} → {ev.get('to') or ''}"),
                e(ev.get("worker") or ""),
                e(ev.get("attempt") or ""),
                e(json.dumps(redact.value(extra), default=str)) if extra else "",
            ]
        )
    parts.append(
        section(
            "History (audit rows)",
            table(
                ["time", "event", "state", "worker", "attempt", "details"],
                hrows,
                attrs='id="history"',
            ),
            wide=True,
        )
    )
    parts.append("</main>")
    return "".join(parts)


def reason_page(store: Store, code: str, now: float) -> str:
    """The tasks waiting for reason ``code``: up to ``REASON_SHOW`` of the first
    ``REASON_SCAN`` in the states that can have it, each explained."""
    states = REASON_STATES.get(code, ("ready",))
    rows = []
    looked = store.task_ids(states, REASON_SCAN)
    for tid in looked:
        why = store.explain(tid, now)
        if why.code == code:
            rows.append([task_link(tid, True), e(why.message)])
            if len(rows) >= REASON_SHOW:
                break
    note = (
        f"<p>{len(rows)} of the first {len(looked)} {' or '.join(states)} tasks "
        f"(submit order) wait for <b>{e(code)}</b>.</p>"
    )
    return (
        f"<header><h1>why pending: {e(code)}</h1></header><main>"
        + section(
            "Tasks", note + table(["task", "reason"], rows, attrs='id="reason-tasks"'), wide=True
        )
        + "</main>"
    )
