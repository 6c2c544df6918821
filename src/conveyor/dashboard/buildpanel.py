"""A table build as the dashboard shows it (``conveyor dashboard --build OUT_DIR``), read from
what the build writes: ``manifest.json`` (table, records, row group size, columns) and one
sidecar per row group written (rows kept, drops by column and reason). Read-only and safe
while the build runs: a sidecar is written, atomically, only after its data file, so every
sidecar found is a complete row group (nothing is cleaned up here, unlike ``output.scan``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from conveyor.dashboard import svg
from conveyor.dashboard.panels import e, section, table


def read_build(out: Path) -> dict[str, Any]:
    """What ``out`` says of its build: ``table``, ``records``, ``row_group_size``,
    ``fields``, ``complete``, ``row_groups`` (written), ``planned`` (row groups for
    ``records`` rows before drops), ``rows_kept``, ``rows_done`` and ``dropped``
    (column -> reason -> rows). A directory without a manifest yet reads as empty."""
    from conveyor.table.output import GroupMeta, read_manifest

    manifest = read_manifest(out) or {}
    records = int(manifest.get("records") or 0)
    size = int(manifest.get("row_group_size") or 0)
    groups: list[GroupMeta] = []
    for path in sorted(out.glob("part-*.meta.json")):
        try:
            groups.append(GroupMeta.from_json(path.read_bytes()))
        except (OSError, ValueError):
            continue  # replaced while we read it: the next read sees the new one
    dropped: dict[str, dict[str, int]] = {}
    for g in groups:
        for col, reasons in g.dropped.items():
            into = dropped.setdefault(col, {})
            for reason, n in reasons.items():
                into[reason] = into.get(reason, 0) + int(n)
    return {
        "dir": str(out),
        "table": manifest.get("table"),
        "records": records,
        "row_group_size": size,
        "fields": list(manifest.get("fields") or []),
        "complete": bool(manifest.get("complete")),
        "row_groups": len(groups),
        "planned": math.ceil(records / size) if records and size else 0,
        "rows_kept": sum(g.kept for g in groups),
        "rows_done": sum(g.rows for g in groups),
        "dropped": dropped,
    }


def build_panel(b: dict[str, Any]) -> str:
    """Rows written against the target, row groups written, and per column its row groups
    done (a row group is written once every column is done in it) and what it dropped."""
    if not b.get("table"):
        return section("Table build", f'<p class="muted">{e(b["dir"])}: no build there yet</p>')
    records, kept = int(b["records"]), int(b["rows_kept"])
    bar = svg.state_bar({"done": kept, "pending": max(0, records - kept)})
    head = (
        f'<p>table <b>{e(b["table"])}</b>: <b id="build-rows">{kept:,}</b> / {records:,} rows '
        f'written, <b id="build-groups">{b["row_groups"]}</b> row groups written '
        f"(of {b['planned']} before drops, {int(b['row_group_size']):,} rows each)"
        f"{' — complete' if b['complete'] else ''}</p>"
    )
    rows = []
    for col in b["fields"]:
        drops = b["dropped"].get(col, {})
        why = ", ".join(f"{e(r)}: {n:,}" for r, n in sorted(drops.items(), key=lambda x: -x[1]))
        done = f"{b['row_groups']} / {b['planned']}"
        rows.append([e(col), done, f"{sum(drops.values()):,}", why or "—"])
    cols = table(
        ["column", "row groups done", "rows dropped", "drop reasons"],
        rows,
        {1, 2},
        'id="build-columns"',
    )
    note = (
        '<p class="muted">From the row groups on disk; cells of row groups still open show '
        "in the build's own terminal panel.</p>"
    )
    return section("Table build", head + bar + cols + note, wide=True, ident="build")
