"""``build``: run a table's cells on the engine and write its row groups as they complete.

The output directory is the build's state: each written row group is a data file and its
sidecar (``table/output.py``), and ``manifest.json`` names the table, its spec and its
columns' fingerprints. Building into a directory that holds the same build resumes it (the
groups on disk are done); a changed spec is refused unless ``replace`` (start over) or
``update`` (regenerate the changed columns and their downstream in the groups on disk, keep
the rest).
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from conveyor.core.fingerprint import canonical, digest
from conveyor.core.tablefrontier import group_span
from conveyor.core.tableplan import TablePlan
from conveyor.errors import UsageError
from conveyor.table.spec import Table
from conveyor.table.store import GroupDone, TableStore

__all__ = ["BuildStatus", "BuildSummary", "build", "default_format"]

FORMATS = ("parquet", "jsonl")


@dataclass
class BuildSummary:
    """What a build did (``--summary FILE`` writes it as JSON)."""

    table: str
    out: str
    format: str
    records: int
    rows_written: int = 0
    row_groups: int = 0
    row_groups_resumed: int = 0
    row_groups_updated: int = 0
    cells: int = 0
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)  # "column: reason" -> first message
    endpoints: dict[str, dict[str, int]] = field(default_factory=dict)
    time_to_first_row_group_s: float | None = None
    total_s: float = 0.0
    stopped: str | None = None  # why the build stopped early (early stop)
    interrupted: bool = False
    complete: bool = False

    @property
    def rows_dropped(self) -> int:
        return sum(n for reasons in self.dropped.values() for n in reasons.values())

    @property
    def exit_code(self) -> int:
        """0 complete, 1 stopped early or short, 130 interrupted."""
        if self.interrupted:
            return 130
        return 0 if self.complete else 1

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "rows_dropped": self.rows_dropped, "exit_code": self.exit_code}


@dataclass
class ColumnStatus:
    name: str
    strategy: str
    done: int
    planned: int
    dropped: int
    failed: int
    retried: int


@dataclass
class EndpointStatus:
    name: str
    limit: int
    in_flight: int
    waiting: int
    calls: int
    rate_limited: int


@dataclass
class BuildStatus:
    """A snapshot for a progress display, taken on the engine's tick."""

    table: str
    elapsed_s: float
    records: int
    rows_written: int
    row_groups_written: int
    row_groups_open: list[int]
    running: int
    columns: list[ColumnStatus]
    endpoints: list[EndpointStatus]
    #: rows and row groups found done on disk when the build started (a resume); the
    #: ``rows_written`` and ``row_groups_written`` above count this run's only
    rows_resumed: int = 0
    row_groups_resumed: int = 0
    #: the engine took a Ctrl-C: it starts nothing more and waits for the running cells
    interrupted: bool = False


def default_format() -> str:
    """Parquet when pyarrow is installed (``conveyor[parquet]``), JSON Lines otherwise."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return "jsonl"
    return "parquet"


def build(
    table: Table,
    records: int,
    out: str | os.PathLike[str],
    *,
    row_group_size: int | None = None,
    in_flight: int | None = None,
    format: str | None = None,
    workers: int = 32,
    events: str | os.PathLike[str] | None = None,
    replace: bool = False,
    update: bool = False,
    on_status: Callable[[BuildStatus], None] | None = None,
    status_every_s: float = 0.5,
) -> BuildSummary:
    """Build ``records`` kept rows of ``table`` into directory ``out``.

    Row groups are written as each completes (``part-NNNNN.parquet`` or ``.jsonl`` and a
    ``.meta.json`` sidecar, each atomically), possibly out of order; rows dropped by a generator
    (``DropRow``, ``keep_when``, an error) are made up by more row groups, and the last one is
    trimmed, so exactly ``records`` rows are written unless the build stops early. Running it
    again on the same directory resumes; ``replace`` starts over; ``update`` regenerates only
    the columns whose fingerprint changed, and their downstream. ``on_status`` is called with
    a ``BuildStatus`` every ``status_every_s`` seconds. Ctrl-C stops starting cells, writes
    nothing partial, and raises ``KeyboardInterrupt`` after the manifest is saved.
    """
    from conveyor.events import JsonlSink
    from conveyor.runtime.engine import Engine
    from conveyor.table import output

    if records < 1:
        raise UsageError(f"records must be >= 1, got {records}")
    if replace and update:
        raise UsageError("--replace and --update exclude each other")
    if workers < 1:
        raise UsageError(f"workers must be >= 1, got {workers}")
    table = copy.copy(table)
    if row_group_size is not None:
        if row_group_size < 1:
            raise UsageError(f"row group size must be >= 1, got {row_group_size}")
        table.row_group_size = row_group_size
    if in_flight is not None:
        if in_flight < 1:
            raise UsageError(f"row groups in flight must be >= 1, got {in_flight}")
        table.in_flight = in_flight
    fmt = format or default_format()
    if fmt not in FORMATS:
        raise UsageError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "parquet" and default_format() != "parquet":
        raise UsageError("--format parquet needs pyarrow: pip install 'conveyor[parquet]'"
                         " (or use --format jsonl)")  # fmt: skip
    plan = table.plan()
    fps = table.fingerprints(plan)
    outdir = Path(out)
    identity = {
        "table": table.name, "records": records, "row_group_size": table.row_group_size,
        "format": fmt, "seed": table.seed, "fields": plan.fields,
    }  # fmt: skip
    spec_fp = digest(canonical([identity, sorted(fps.items())]))
    old = _check_directory(outdir, table.name, identity, fps, replace=replace, update=update)
    outdir.mkdir(parents=True, exist_ok=True)
    on_disk = output.scan(outdir)
    if replace:
        output.remove_groups(outdir, lambda g: False)
        on_disk = {}
    changed = {n for n, f in fps.items() if old is None or old.get("columns", {}).get(n) != f}
    done: dict[int, int] = {}  # row group -> rows kept: all a written group leaves in memory
    dropped: dict[str, dict[str, int]] = {}
    rebuild: dict[int, Callable[[], RebuildInput]] = {}
    earlier: dict[int, dict[str, dict[str, int]]] = {}  # drops counted by the earlier build
    for g, meta in on_disk.items():
        stale = {n for n in fps if meta.columns.get(n) != fps[n]}
        if not stale:
            done[g] = meta.kept
            _add_drops(dropped, meta.dropped)
        else:  # --update; or a group of an older spec left by a crash of an earlier --update
            rebuild[g] = _rebuild_loader(outdir, g, meta.kept_rows, plan, records, table, stale)
            earlier[g] = meta.dropped
    del on_disk
    manifest: dict[str, Any] = {
        **identity, "spec_fingerprint": spec_fp, "columns": fps, "complete": False,
        "mermaid": plan.mermaid(),
    }  # fmt: skip
    output.write_manifest(outdir, manifest)
    writer = output.PartWriter(outdir, cast("output.Format", fmt), plan.fields)
    summary = BuildSummary(
        table.name, str(outdir), fmt, records,
        row_groups_resumed=len(done), row_groups_updated=len(rebuild),
    )  # fmt: skip
    sink = JsonlSink(events) if events is not None else None
    t0 = time.monotonic()
    kept = dict(done)

    def on_group(gd: GroupDone) -> None:
        drops = {c: dict(r) for c, r in gd.dropped.items()}
        prior = earlier.pop(gd.span.group, None)
        if prior is not None:  # drops of columns that stand were counted by the earlier build
            _add_drops(drops, {c: r for c, r in prior.items() if c not in changed})
        meta = output.GroupMeta(
            row_group=gd.span.group, start=gd.span.start, rows=gd.span.rows,
            kept_rows=gd.kept_rows, dropped=drops, columns=dict(fps),
        )  # fmt: skip
        writer.write(meta, gd.columns)
        kept[gd.span.group] = meta.kept
        _add_drops(dropped, drops)

    store = TableStore(table, plan, records=records, on_group=on_group, done_groups=done,
                       rebuild=rebuild)  # fmt: skip
    store.emit = sink
    if sink is not None:
        sink({"ts": time.time(), "event": "build_started", "table": table.name,
              "records": records, "resumed": len(done), "updated": len(rebuild)})  # fmt: skip
    next_status = [0.0]

    def on_tick(engine: Engine) -> None:
        now = time.monotonic()
        if on_status is not None and now >= next_status[0]:
            next_status[0] = now + status_every_s
            on_status(_status(store, engine, now - t0, done))

    engine = Engine(store, workers=workers, on_tick=on_tick, emit=sink, tick_s=0.1)
    interrupted = False
    try:
        engine.run()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        elapsed = time.monotonic() - t0
        try:
            if not interrupted and on_status is not None:
                on_status(_status(store, engine, elapsed, done))
            if not interrupted and sum(kept.values()) > records:
                last = max(kept)
                kept[last] = _trim(outdir, writer, last, records - (sum(kept.values())
                                                                    - kept[last]))  # fmt: skip
            total = sum(kept.values())
            summary.rows_written = min(total, records) if not interrupted else total
            summary.row_groups = len(kept)
            summary.cells = sum(c.done for c in store.counts_by_column)
            summary.dropped = dropped
            summary.errors = {f"{c}: {r}": e for (c, r), e in store.errors.items()}
            summary.endpoints = {
                k: {"limit": s.limit, "calls": s.admitted, "rate_limited": s.rate_limited,
                    "overloaded": s.overloaded, "failures": s.failures}
                for k, s in engine.limiter.statistics().items()
            }  # fmt: skip
            summary.time_to_first_row_group_s = (
                None if store.first_group_at is None else store.first_group_at - _wall0(t0)
            )
            summary.total_s = elapsed
            summary.stopped = store.stop_reason
            summary.interrupted = interrupted
            summary.complete = not interrupted and total >= records and store.stop_reason is None
            manifest.update(
                complete=summary.complete, rows_written=summary.rows_written,
                row_groups=sorted(kept), dropped=summary.dropped,
            )  # fmt: skip
            output.write_manifest(outdir, manifest)
            if sink is not None:
                sink({"ts": time.time(), "event": "build_finished", "table": table.name,
                      "rows_written": summary.rows_written, "complete": summary.complete,
                      "exit_code": summary.exit_code})  # fmt: skip
        finally:
            if sink is not None:
                sink.close()
    if interrupted:
        raise KeyboardInterrupt
    return summary


def _wall0(t0: float) -> float:
    """The wall-clock time of monotonic ``t0`` (the store stamps with wall time)."""
    return time.time() - (time.monotonic() - t0)


def _status(store: TableStore, engine: Any, elapsed: float, done: dict[int, int]) -> BuildStatus:
    cols = [
        ColumnStatus(c.name, c.strategy, cc.done, cc.planned, cc.dropped, cc.failed, cc.retried)
        for c, cc in zip(store.columns, store.counts_by_column, strict=True)
    ]
    eps = [
        EndpointStatus(k, s.limit, s.in_flight, s.waiting, s.admitted, s.rate_limited)
        for k, s in engine.limiter.statistics().items()
    ]
    return BuildStatus(
        store.table.name, elapsed, store.records, store.rows_written,
        store.groups_written, store.open_groups(), store.running, cols, eps,
        rows_resumed=sum(done.values()), row_groups_resumed=len(done),
        interrupted=engine.stats.interrupted,
    )  # fmt: skip


def _add_drops(into: dict[str, dict[str, int]], more: dict[str, dict[str, int]]) -> None:
    for c, reasons in more.items():
        tgt = into.setdefault(c, {})
        for r, n in reasons.items():
            tgt[r] = tgt.get(r, 0) + n


def _trim(outdir: Path, writer: Any, last: int, keep: int) -> int:
    """Keep exactly ``records`` rows, the first ones in row order: every group but the last is
    needed whole (a group opens only while the rows before it fall short), so only the last
    group, ``last``, is cut to ``keep`` rows. Returns ``keep``."""
    from conveyor.table import output

    meta = output.read_meta(outdir, last)
    if meta is None:
        raise UsageError(f"{outdir}: row group {last} vanished while the build ran")
    values = output.read_group(outdir, last)
    meta.kept_rows = meta.kept_rows[:keep]
    meta.trimmed = True
    writer.write(meta, {f: v[:keep] for f, v in values.items()})
    return keep


def _check_directory(
    outdir: Path, name: str, identity: dict[str, Any], fps: dict[str, str], *,
    replace: bool, update: bool,
) -> dict[str, Any] | None:  # fmt: skip
    """The manifest of the build in ``outdir`` (``None`` for a new one), or a one-line
    ``UsageError`` when the directory holds something this build must not touch."""
    from conveyor.table import output

    if outdir.exists() and not outdir.is_dir():
        raise UsageError(f"{outdir} exists and is not a directory")
    old = output.read_manifest(outdir) if outdir.is_dir() else None
    if old is None:
        if outdir.is_dir() and any(outdir.iterdir()) and not replace:
            raise UsageError(f"{outdir} is not empty and holds no conveyor build:"
                             " give a new directory (or --replace to write into it)")  # fmt: skip
        if update:
            raise UsageError(f"{outdir} holds no build to --update")
        return None
    if old.get("table") != name and not replace:
        raise UsageError(f"{outdir} holds the build of table {old.get('table')!r}, not {name!r}:"
                         " give another directory (or --replace to discard it)")  # fmt: skip
    if replace:
        return old
    fixed = ("records", "row_group_size", "format", "seed", "fields")
    moved = [k for k in fixed if old.get(k) != identity[k]]
    changed = sorted(n for n, f in fps.items() if old.get("columns", {}).get(n) != f)
    if update:
        layout = [k for k in moved if k != "fields" and k != "seed"]
        if layout:
            raise UsageError(
                f"--update keeps the rows: {', '.join(layout)} changed (was "
                f"{', '.join(f'{k}={old.get(k)}' for k in layout)}); use --replace"
            )
        return old
    if moved or changed:
        what = ", ".join(
            [
                *(f"{k} was {json.dumps(old.get(k))}" for k in moved if k != "fields"),
                *([f"changed columns: {', '.join(changed)}"] if changed else []),
            ]
        )
        raise UsageError(
            f"{outdir} holds a build of {name!r} with another spec ({what}):"
            " --update regenerates the changed columns, --replace starts over"
        )
    return old


#: A written row group as ``--update`` reopens it: its kept rows (a mask over the group's
#: rows), its values by field at their positions, and the generators whose values stand.
RebuildInput = tuple[bytearray, dict[str, list[Any]], set[str]]


def _rebuild_loader(
    outdir: Path, g: int, kept_rows: list[int], plan: TablePlan, records: int, table: Table,
    stale: set[str],
) -> Callable[[], RebuildInput]:  # fmt: skip
    """Reads group ``g`` back when the build reopens it (not before: one group in memory per
    group in flight, not the table)."""
    span = group_span(g, records, table.row_group_size)
    positions = [r - span.start for r in kept_rows]

    def load() -> RebuildInput:
        from conveyor.table import output

        alive = bytearray(span.rows)
        for p in positions:
            alive[p] = 1
        stored = output.read_group(outdir, g)
        values: dict[str, list[Any]] = {}
        for f in plan.fields:
            full: list[Any] = [None] * span.rows
            col = stored.get(f)
            if col is not None:
                for p, v in zip(positions, col, strict=True):
                    full[p] = v
            values[f] = full
        standing = {n.name for n in plan.nodes if n.name not in stale
                    and all(f in stored for f in n.fields)}  # fmt: skip
        return alive, values, standing

    return load
