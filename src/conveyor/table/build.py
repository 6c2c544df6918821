"""``build``: run a table's cells on the engine and write its row groups as they complete.

The output directory is the build's state: each written row group is a data file and its
sidecar (``table/output.py``), and ``manifest.json`` names the table, its spec and its
columns' fingerprints. Building into a directory that holds the same build resumes it (the
groups on disk are done); a changed spec is refused unless ``replace`` (start over) or
``update`` (regenerate the changed columns and their downstream in the groups on disk, keep
the rest).

Size: the build's lifecycle (checks of the directory and the models, resume and ``update``, the
run, its status and summary types) in one place; the cells' state is ``table/store.py``, the
files ``table/output.py``.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from conveyor.core.fingerprint import canonical, digest
from conveyor.core.tablefrontier import group_span
from conveyor.core.tableplan import TablePlan
from conveyor.errors import UsageError
from conveyor.table.llm import LLMGenerator
from conveyor.table.spec import Table
from conveyor.table.store import GroupDone, TableStore

if TYPE_CHECKING:
    from conveyor.table.output import GroupMeta

__all__ = ["BuildInterrupted", "BuildStatus", "BuildSummary", "build", "default_format"]

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
    #: LLM columns: calls and tokens by column
    tokens: dict[str, dict[str, int]] = field(default_factory=dict)
    #: by model alias: calls, prompt and completion tokens, tokens per second of the build
    models: dict[str, dict[str, float]] = field(default_factory=dict)
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
class ModelStatus:
    """One model alias's usage so far (LLM columns)."""

    alias: str
    calls: int
    prompt_tokens: int
    completion_tokens: int

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def model_usage(table: Table) -> list[ModelStatus]:
    """Calls and tokens per model alias, summed over its LLM columns."""
    from conveyor.table.llm import LLMGenerator

    by: dict[str, ModelStatus] = {}
    for col in table.columns:
        gen = col.fn
        if isinstance(gen, LLMGenerator):
            m = by.setdefault(gen.alias, ModelStatus(gen.alias, 0, 0, 0))
            m.calls += gen.calls
            m.prompt_tokens += gen.prompt_tokens
            m.completion_tokens += gen.completion_tokens
    return list(by.values())


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
    #: usage per model alias (LLM columns)
    models: list[ModelStatus] = field(default_factory=list)
    #: rows and row groups found done on disk when the build started (a resume); the
    #: ``rows_written`` and ``row_groups_written`` above count this run's only
    rows_resumed: int = 0
    row_groups_resumed: int = 0
    #: the engine took a Ctrl-C: it starts nothing more and waits for the running cells
    interrupted: bool = False


class BuildInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped a build: a ``KeyboardInterrupt`` that carries the build's summary (what
    was written before it stopped)."""

    def __init__(self, summary: BuildSummary) -> None:
        super().__init__()
        self.summary = summary


def default_format() -> str:
    """Parquet when pyarrow is installed (``conveyor[parquet]``), JSON Lines otherwise."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return "jsonl"
    return "parquet"


#: Cells at once by default; a table that calls endpoints gets more, for its calls wait on
#: the network and the endpoints' adaptive limits (up to ``AimdPolicy.max_limit``) cap them.
DEFAULT_WORKERS = 32
DEFAULT_WORKERS_WITH_ENDPOINTS = 512


def default_workers(table: Table) -> int:
    """32 cells at once, or 512 when a column calls an endpoint: an LLM endpoint's capacity
    may be 64 or more requests in flight, and 32 slots would cap it below that."""
    if any(c.endpoint is not None for c in table.columns):
        return DEFAULT_WORKERS_WITH_ENDPOINTS
    return DEFAULT_WORKERS


def check_models(table: Table) -> None:
    """Before anything runs: every LLM column's API key variable is set and each endpoint
    answers once (an unreachable ``base_url`` or a refused key is a ``UsageError``)."""
    from conveyor.table.llm import LLMGenerator, Model, probe

    used: list[Model] = []
    for column in table.columns:
        if isinstance(column.fn, LLMGenerator):
            column.fn.check()
            assert column.fn.bound is not None
            used.append(column.fn.bound)
    if used:
        probe(used)


def build(
    table: Table,
    records: int,
    out: str | os.PathLike[str],
    *,
    row_group_size: int | None = None,
    in_flight: int | None = None,
    format: str | None = None,
    workers: int | None = None,
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
    if workers is not None and workers < 1:
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
        raise UsageError("--format parquet needs pyarrow: pip install -e '.[parquet]'"
                         " (or use --format jsonl)")  # fmt: skip
    plan = table.plan()
    check_models(table)
    fps = table.fingerprints(plan)
    outdir = Path(out)
    identity = {
        "table": table.name, "records": records, "row_group_size": table.row_group_size,
        "format": fmt, "seed": table.seed, "fields": plan.fields,
    }  # fmt: skip
    spec_fp = digest(canonical([identity, sorted(fps.items())]))
    _check_directory(outdir, table.name, identity, fps, replace=replace, update=update)
    outdir.mkdir(parents=True, exist_ok=True)
    on_disk = output.scan(outdir)
    if replace:
        output.remove_groups(outdir, lambda g: False)
        on_disk = {}
    done: dict[int, int] = {}  # row group -> rows kept: all a written group leaves in memory
    resumed_drops: dict[str, dict[str, int]] = {}
    rebuild: dict[int, Callable[[], RebuildInput]] = {}
    #: drops counted by the earlier build, of the columns that stand, and the rows they
    #: dropped (``None``: not recorded, an older sidecar)
    earlier: dict[int, tuple[dict[str, dict[str, int]], dict[str, list[int]] | None]] = {}
    samplers = {c.name for c in table.columns if c.sampler is not None}
    for g, meta in on_disk.items():
        # (without ``update``: a group of an older spec left by a crash of an earlier --update)
        # (the fingerprints are Merkle: a changed column's downstream is stale too)
        stale = {n for n in fps if meta.columns.get(n) != fps[n]}
        gone = set(meta.columns) - set(fps)  # generators the spec no longer has
        if not stale and not gone:
            done[g] = meta.kept
            _add_drops(resumed_drops, meta.dropped)
            continue
        changed = stale | gone
        revive: tuple[set[str], list[int]] | None = (changed, [])
        if any(sum(meta.dropped.get(n, {}).values()) for n in changed):
            # Rows a stale or removed column dropped were written with none of their values
            # (a fixed generator must see them again): they are revived and compute every
            # generator, the other rows only the stale ones (``None``: which rows those are
            # is not recorded, an older sidecar)
            revive = _revive(plan, meta, changed, samplers)
        if meta.trimmed or revive is None:
            # A trimmed group's cut rows are gone (an update that drops more rows needs
            # them; the trimmed last group is rebuilt whole, simplest), and a group whose
            # revived rows are not known: built again whole, as a fresh build of this spec
            # would. A group that only lost columns is written again without them, every
            # generator left standing.
            rebuild[g] = _whole_group(group_span(g, records, table.row_group_size).rows)
        else:
            redo, revived = revive
            rebuild[g] = _rebuild_loader(
                outdir, g, meta.kept_rows, plan, records, table, redo, revived
            )
            earlier[g] = (
                {c: r for c, r in meta.dropped.items() if c not in redo},
                None
                if meta.dropped_rows is None
                else {c: r for c, r in meta.dropped_rows.items() if c not in redo and r},
            )
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
        rows: dict[str, list[int]] | None = {c: list(r) for c, r in gd.dropped_rows.items()}
        before = earlier.pop(gd.span.group, None)
        prior = None if before is None else before[0]
        if before is not None:  # drops of columns that stand were counted by the earlier build
            _add_drops(drops, before[0])
            if before[1] is None:  # which rows they dropped is not known
                rows = None if any(any(r.values()) for r in before[0].values()) else rows
            else:
                assert rows is not None
                for c, more in before[1].items():
                    rows[c] = sorted([*rows.get(c, ()), *more])
        meta = output.GroupMeta(
            row_group=gd.span.group, start=gd.span.start, rows=gd.span.rows,
            kept_rows=gd.kept_rows, dropped=drops, columns=dict(fps), dropped_rows=rows,
        )  # fmt: skip
        writer.write(meta, gd.columns)
        kept[gd.span.group] = meta.kept
        if prior is not None:
            _add_drops(resumed_drops, prior)

    if sink is not None:
        sink({"ts": time.time(), "event": "build_started", "table": table.name,
              "records": records, "resumed": len(done), "updated": len(rebuild)})  # fmt: skip
    store = TableStore(table, plan, records=records, on_group=on_group, done_groups=done,
                       rebuild=rebuild, emit=sink)  # fmt: skip
    next_status = [0.0]

    def on_tick(engine: Engine) -> None:
        now = time.monotonic()
        if on_status is not None and now >= next_status[0]:
            next_status[0] = now + status_every_s
            on_status(_status(store, engine, now - t0, done))

    slots = workers or default_workers(table)
    engine = Engine(store, workers=slots, on_tick=on_tick, emit=sink, tick_s=0.1)
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
            removed: dict[str, dict[str, int]] = {}
            if not interrupted and sum(kept.values()) > records:
                removed = _trim(outdir, writer, kept, records)
            total = sum(kept.values())
            summary.rows_written = min(total, records) if not interrupted else total
            summary.row_groups = len(kept)
            summary.cells = sum(c.done for c in store.counts_by_column)
            # drops of the groups resumed from disk and of every group this run opened
            # (written or not: an early stop's summary still says what failed)
            for c, reasons in store.dropped.items():
                if reasons:
                    _add_drops(resumed_drops, {c: dict(reasons)})
            _add_drops(resumed_drops, removed, sign=-1)  # the groups removed count no more
            summary.dropped = {c: {r: n for r, n in reasons.items() if n}
                               for c, reasons in resumed_drops.items()
                               if any(reasons.values())}  # fmt: skip
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
            summary.tokens = {
                col.name: {"calls": gen.calls, "prompt_tokens": gen.prompt_tokens,
                           "completion_tokens": gen.completion_tokens}
                for col in table.columns if isinstance(gen := col.fn, LLMGenerator)
            }  # fmt: skip
            summary.models = {
                m.alias: {"calls": m.calls, "prompt_tokens": m.prompt_tokens,
                          "completion_tokens": m.completion_tokens,
                          "tokens_per_s": round(m.tokens / elapsed, 1) if elapsed > 0 else 0.0}
                for m in model_usage(table)
            }  # fmt: skip
            summary.stopped = store.stop_reason
            stalled = store.open_groups()
            if not interrupted and summary.stopped is None and stalled:
                # the engine ends when nothing runs and no retry waits: a group still open
                # then can never complete (a bug); say so rather than end as if complete
                summary.stopped = f"stalled: row groups {stalled} could not complete"
            summary.interrupted = interrupted
            summary.complete = not interrupted and total >= records and summary.stopped is None
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
        raise BuildInterrupted(summary)
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
        models=model_usage(store.table), rows_resumed=sum(done.values()),
        row_groups_resumed=len(done),
        interrupted=engine.stats.interrupted,
    )  # fmt: skip


def _add_drops(
    into: dict[str, dict[str, int]], more: dict[str, dict[str, int]], sign: int = 1
) -> None:
    for c, reasons in more.items():
        tgt = into.setdefault(c, {})
        for r, n in reasons.items():
            tgt[r] = tgt.get(r, 0) + sign * n


def _trim(
    outdir: Path, writer: Any, kept: dict[int, int], records: int
) -> dict[str, dict[str, int]]:
    """Keep exactly ``records`` rows, the first ones in row order (``kept``: rows kept by
    group, updated). A build needs every group but the last whole (a group opens only while
    the rows before it fall short), so only the last group is cut; an ``--update`` that gave
    dropped rows another chance may need fewer groups than it has: those after the cut are
    removed. Returns the drops the removed groups had counted."""
    from conveyor.table import output

    before = 0
    for last in sorted(kept):
        if before + kept[last] >= records:
            break
        before += kept[last]
    removed: dict[str, dict[str, int]] = {}
    for g in [g for g in kept if g > last]:
        del kept[g]
        gone = output.read_meta(outdir, g)
        if gone is not None:
            _add_drops(removed, gone.dropped)
    output.remove_groups(outdir, lambda g: g <= last)
    keep = records - before
    if keep == kept[last]:
        return removed
    kept[last] = keep
    meta = output.read_meta(outdir, last)
    if meta is None:
        raise UsageError(f"{outdir}: row group {last} vanished while the build ran")
    values = output.read_group(outdir, last)
    meta.kept_rows = meta.kept_rows[:keep]
    meta.trimmed = True
    writer.write(meta, {f: v[:keep] for f, v in values.items()})
    return removed


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
    before = old.get("columns", {})
    changed = sorted(n for n, f in fps.items() if n in before and before[n] != f)
    new = sorted(n for n in fps if n not in before)
    removed = sorted(n for n in before if n not in fps)
    if update:
        layout = [k for k in moved if k != "fields" and k != "seed"]
        if layout:
            raise UsageError(
                f"--update keeps the rows: {', '.join(layout)} changed (was "
                f"{', '.join(f'{k}={old.get(k)}' for k in layout)}); use --replace"
            )
        return old
    options = [k for k in moved if k in ("records", "row_group_size", "format")]
    if options and not (changed or new or removed or "seed" in moved):
        flags = {"records": "--records", "row_group_size": "--row-group-size",
                 "format": "--format"}  # fmt: skip
        again = " ".join(f"{flags[k]} {old.get(k)}" for k in options)
        raise UsageError(
            f"{outdir} holds a build of {name!r} made with {again}: pass the same to resume it,"
            " or --replace to start over (the rows' layout depends on them)"
        )
    if moved or changed or new or removed:
        what = (
            ", ".join(
                [
                    *(f"{k} was {json.dumps(old.get(k))}" for k in moved if k != "fields"),
                    *([f"changed columns: {', '.join(changed)}"] if changed else []),
                    *([f"new columns: {', '.join(new)}"] if new else []),
                    *([f"removed columns: {', '.join(removed)}"] if removed else []),
                ]
            )
            or "the columns' order"
        )
        raise UsageError(
            f"{outdir} holds a build of {name!r} with another spec ({what}):"
            " --update regenerates the changed columns, --replace starts over"
        )
    return old


#: A written row group as ``--update`` reopens it: the rows to compute or keep (a mask over
#: the group's rows), its values by field at their positions, the generators whose values
#: stand, and for which rows (``None``: every row; else a mask: the others are revived).
RebuildInput = tuple[bytearray, dict[str, list[Any]], set[str], bytearray | None]


def _whole_group(rows: int) -> Callable[[], RebuildInput]:
    """A group to build again from nothing: every row, no generator standing."""
    return lambda: (bytearray(b"\x01") * rows, {}, set(), None)


def _revive(
    plan: TablePlan, meta: GroupMeta, changed: set[str], samplers: set[str]
) -> tuple[set[str], list[int]] | None:
    """The generators to compute again in a written group whose ``changed`` generators
    dropped rows, and the rows to revive (global indices: those the generators computed again
    had dropped; they compute every generator). ``None`` when the sidecar does not say which
    rows were dropped by whom (an older one), or says it inconsistently."""
    by_rows = meta.dropped_rows
    if by_rows is None:
        return None
    redo = set(changed)
    while True:
        for c in redo:
            if len(by_rows.get(c, ())) != sum(meta.dropped.get(c, {}).values()):
                return None
        revived = sorted({r for c in redo for r in by_rows.get(c, ())})
        if not revived:
            return redo, revived
        # A sampler is a batch too, a pure function of each row: it runs again (cheap) to
        # give the revived rows their values, and what it feeds stands.
        redo |= samplers
        # Revived rows change the group's row set, and a full_column generator sees the
        # kept rows: one that stands is computed again, and with it its downstream (and the
        # rows it had dropped are revived in turn).
        batches = [i for i, n in enumerate(plan.nodes) if not plan.is_cell(i)
                   and n.name not in redo]  # fmt: skip
        if not batches:
            return redo, revived
        todo = list(batches)
        while todo:
            i = todo.pop()
            if plan.nodes[i].name not in redo:
                redo.add(plan.nodes[i].name)
                todo.extend(plan.down_cell[i])
                todo.extend(plan.down_batch[i])


def _rebuild_loader(
    outdir: Path, g: int, kept_rows: list[int], plan: TablePlan, records: int, table: Table,
    stale: set[str], revived: list[int],
) -> Callable[[], RebuildInput]:  # fmt: skip
    """Reads group ``g`` back when the build reopens it (not before: one group in memory per
    group in flight, not the table). ``revived``: rows it had dropped to compute again."""
    span = group_span(g, records, table.row_group_size)
    positions = [r - span.start for r in kept_rows]
    again = [r - span.start for r in revived]

    def load() -> RebuildInput:
        from conveyor.table import output

        alive = bytearray(span.rows)
        for p in positions:
            alive[p] = 1
        known = bytearray(alive) if again else None
        for p in again:
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
        return alive, values, standing, known

    return load
