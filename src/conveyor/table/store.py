"""``TableStore``: a table build as a store whose tasks are its cells, for the one engine.

The engine claims, runs, retries (with backoff), times out and completes tasks; it caps
endpoints from the adaptive limiter. This store hands it the table's cells from a
``TableFrontier`` instead of tasks from a graph: each claim is a cell ``(column, row)`` or a
``full_column`` batch ``(column, row group)`` whose arguments are read from the row group's
values at claim time. A completion files the value (or the drop), touches only the cell's
downstream, and, when a row group is complete, hands it to ``on_group`` (the writer) and opens
the next. Nothing of a written row group stays in memory.

Size: it implements the whole ``Store`` interface over cells (claims, completions, retries,
explain, status), with the open row groups' window; readiness is the pure
``core/tablefrontier.py``.
"""

from __future__ import annotations

import heapq
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field
from typing import Any

from conveyor.core.admission import Offer
from conveyor.core.explain import Reason
from conveyor.core.retry import DEFAULT_RETRY
from conveyor.core.tablefrontier import GroupSpan, GroupState, TableFrontier, group_span
from conveyor.core.tableplan import TablePlan
from conveyor.errors import UsageError
from conveyor.model import GraphSpec, TaskResult, TaskSpec, TaskState
from conveyor.store.base import Claim, OpenedGraph, Store
from conveyor.table.cells import (
    BatchOut,
    Dropped,
    Retry,
    RunOut,
    batch_function,
    cell_function,
    run_function,
)
from conveyor.table.spec import Table

__all__ = ["GroupDone", "TableStore"]

_new_spec = object.__new__
#: A run of cells (``table/cells.py``'s ``run_function``) aims at this much call time, and
#: takes at most ``_RUN_MAX`` cells: a task's own cost in the engine is ~10-20 us.
_RUN_S = 0.0005
_RUN_MAX = 64
#: Written row groups in a row that kept no row at all before a build stops (see ``_write``).
_EMPTY_GROUPS = 5


@dataclass(slots=True)
class GroupDone:
    """A completed row group, handed to the writer: the kept rows' values by field."""

    span: GroupSpan
    kept_rows: list[int]  # global row indices, ascending
    columns: dict[str, list[Any]]
    dropped: dict[str, dict[str, int]]  # column -> reason -> rows
    started: float
    finished: float
    #: column -> the global indices of the rows it dropped in this run, ascending
    dropped_rows: dict[str, list[int]] = field(default_factory=dict)


#: A written row group as ``--update`` reopens it (see ``TableStore``'s ``rebuild``).
Rebuild = tuple[bytearray, dict[str, list[Any]], set[str], bytearray | None]


@dataclass(slots=True)
class _Open:
    span: GroupSpan
    values: dict[str, list[Any]]
    dropped: dict[str, Counter[str]] = field(default_factory=dict)
    started: float = 0.0


class _Window:
    """The last ``size`` outcomes and how many of them failed. While none did, successes are
    only counted (``quiet``), so the common case costs an addition."""

    __slots__ = ("failed", "items", "quiet")

    def __init__(self, size: int) -> None:
        self.items: deque[bool] = deque(maxlen=size)
        self.failed = 0
        self.quiet = 0  # successes not yet put in ``items`` (none of them failed)

    def add(self, ok: bool, n: int) -> None:
        items = self.items
        size = items.maxlen or 0
        if ok and not self.failed:
            self.quiet += n
            return
        if self.quiet:  # no failure among the items: the successes push out successes
            items.extend([True] * min(self.quiet, size))
            self.quiet = 0
        for _ in range(min(n, size)):
            if len(items) == size:
                self.failed -= not items[0]
            items.append(ok)
            self.failed += not ok

    def over(self, share: float) -> bool:
        """The window is full and more than ``share`` of it failed."""
        return len(self.items) == self.items.maxlen and self.failed > share * len(self.items)


@dataclass(slots=True)
class ColumnCounts:
    """What one generator did so far (the progress panel's row)."""

    done: int = 0
    dropped: int = 0
    failed: int = 0  # calls that ended in an error (their rows dropped)
    retried: int = 0
    planned: int = 0  # tasks of the row groups opened so far


class TableStore(Store):
    """The cells of one table build. In-process only (``shared`` is false)."""

    def __init__(
        self,
        table: Table,
        plan: TablePlan,
        *,
        records: int,
        on_group: Callable[[GroupDone], None],
        done_groups: Mapping[int, int] | None = None,
        rebuild: Mapping[int, Callable[[], Rebuild]] | None = None,
        clock: Callable[[], float] = time.time,
        emit: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        """``done_groups``: row groups already written, with their kept rows (a resume);
        ``rebuild``: row groups to build again from values on disk (``--update``): per group,
        a loader of the rows to keep computing, the values by field, the generators whose
        values stand, and the rows whose values stand (``None``: every row kept; else a mask:
        the other kept rows are revived, and compute every generator) — called when the group
        opens."""
        self.url = "table:" + table.name
        self.emit = emit  # before any group opens: its row_group_started is an event too
        self.table = table
        self.plan = plan
        self.records = records
        self.size = table.row_group_size
        self.in_flight = table.in_flight
        self.on_group = on_group
        self._clock = clock
        cols = {c.name: c for c in table.columns}
        self.columns = [cols[n.name] for n in plan.nodes]
        endpoints = sorted({c.endpoint for c in self.columns if c.endpoint is not None})
        self._endpoint_names = endpoints
        # One ready heap per generator: a capped endpoint's cells never block another's, and
        # a run of one generator's cells comes off one heap.
        self._endpoint_of = [c.endpoint for c in self.columns]
        self._endpoint_nodes = [i for i, e in enumerate(self._endpoint_of) if e is not None]
        self._caps: dict[str, int] = {}
        self._running_endpoint: dict[str, int] = dict.fromkeys(endpoints, 0)
        self.frontier = TableFrontier(plan, list(range(len(self.columns))))
        #: Generators whose cells run several to an engine task (no endpoint, no timeout:
        #: cheap local work), and how many a run takes now (sized by measured call time).
        self._runs = [
            plan.is_cell(i) and c.endpoint is None and c.timeout_s is None
            for i, c in enumerate(self.columns)
        ]
        self._run_size = [1] * len(self.columns)
        self._call_s: list[float | None] = [None] * len(self.columns)
        self._retry_policy = DEFAULT_RETRY
        self._rng = random.Random(table.seed)
        self.counts_by_column = [ColumnCounts() for _ in plan.nodes]
        self.dropped: dict[str, Counter[str]] = {c.name: Counter() for c in self.columns}
        self.errors: dict[tuple[str, str], str] = {}  # (column, reason) -> first error text
        self._open: dict[int, _Open] = {}
        self._written_kept = sum((done_groups or {}).values())
        self._done_indices = set(done_groups or {}) | set(rebuild or {})
        self._rebuild = dict(rebuild or {})
        self._next_group = 0
        self._delayed: list[tuple[float, int]] = []
        self._attempts: dict[int, int] = {}
        self.running = 0
        self.stopping = False
        self.stop_reason: str | None = None
        self._empty_groups = 0  # row groups written in a row that kept no row
        self._window = _Window(table.early_stop_window)
        #: per generator, its outcomes weighted by rows (a full_column batch counts for each
        #: row it covered): one column that always fails stops the build, however many
        #: columns succeed beside it (no row is ever kept: row groups would open forever)
        self._col_windows = [_Window(table.early_stop_window) for _ in plan.nodes]
        self.groups_written = 0
        self.rows_written = 0
        self.first_group_at: float | None = None
        self.stale = 0  # late results refused (a dropped row, a finished row group)
        seed = table.seed
        # What every cell of a generator shares: its TaskSpec fields but the id and arguments.
        self._templates: list[dict[str, Any]] = []
        self._params: list[list[tuple[str, str]]] = []
        for i, c in enumerate(self.columns):
            if self._runs[i]:
                fn: Any = run_function(c, seed)
            elif plan.is_cell(i):
                fn = cell_function(c, seed)
            else:
                fn = batch_function(c, seed)
            template: dict[str, Any] = {"fn": fn}
            retries = c.retries if c.retries is not None else table.retries
            if retries:
                template["retries"] = retries
            if c.endpoint is not None:
                template["endpoint"] = c.endpoint
            executor = "inline" if c.sampler is not None else c.executor
            if executor is not None:
                template["executor"] = executor
            if c.timeout_s is not None:
                template["timeout_s"] = c.timeout_s
            self._templates.append(template)
            self._params.append(list(c.params.items()))
        now = clock()
        self._open_groups(now)
        self._collect(now)

    # -- groups -------------------------------------------------------------------------------
    def _kept_so_far(self) -> int:
        """Rows kept by the groups written and (so far) by the open ones, those complete but
        not yet handed to the writer included (a group reopened by --update with nothing to
        compute completes as it opens)."""
        groups = self.frontier.groups
        complete = {g.span.group: g.kept for g in self.frontier.completed}
        return self._written_kept + sum(
            groups[g].kept if g in groups else complete.get(g, 0) for g in self._open
        )

    def _open_groups(self, now: float) -> None:
        """Open row groups while fewer than ``in_flight`` are open: first those to rebuild,
        then new ones while the rows kept so far (optimistically: every open row counts) fall
        short of ``records``. A group opened is therefore always needed, whatever its rows
        drop later: the build's rows do not depend on timing."""
        frontier = self.frontier
        while not self.stopping and len(self._open) < self.in_flight:
            if self._rebuild:
                g = min(self._rebuild)
                alive, values, standing, known = self._rebuild.pop(g)()  # read from disk now
                span = group_span(g, self.records, self.size)
                keep = {i for i, c in enumerate(self.columns) if c.name in standing}
                full = {f: [None] * span.rows for f in self.plan.fields}
                for f, vals in values.items():
                    if f in full:
                        full[f] = vals
                self._start(span, full, now)
                if known is None:
                    frontier.open(span, done_nodes=keep, alive=alive)
                    self._planned(span, alive, keep)
                else:  # revived rows: the standing cells are done for the known rows only
                    cells = {i for i in keep if self.plan.is_cell(i)}
                    frontier.open(span, done_nodes=keep - cells, alive=alive,
                                  done_rows=dict.fromkeys(cells, known))  # fmt: skip
                    self._planned(span, alive, keep - cells)
                    preset = sum(1 for r in range(span.rows) if known[r] and alive[r])
                    for i in cells:
                        self.counts_by_column[i].planned -= preset
                continue
            if self._kept_so_far() >= self.records:
                break
            while self._next_group in self._done_indices:
                self._next_group += 1
            span = group_span(self._next_group, self.records, self.size)
            self._next_group += 1
            self._start(span, {f: [None] * span.rows for f in self.plan.fields}, now)
            frontier.open(span)
            self._planned(span, None)

    def _start(self, span: GroupSpan, values: dict[str, list[Any]], now: float) -> None:
        self._open[span.group] = _Open(span, values, started=now)
        self._record(now, "row_group_started", row_group=span.group, start=span.start,
                    rows=span.rows)  # fmt: skip

    def _planned(
        self, span: GroupSpan, alive: bytearray | None, standing: Container[int] = ()
    ) -> None:
        """Count a group's tasks into each generator's total (not those whose values stand)."""
        kept = span.rows if alive is None else sum(alive)
        for i, cc in enumerate(self.counts_by_column):
            if i not in standing:
                cc.planned += kept if self.plan.is_cell(i) else 1

    def _collect(self, now: float) -> None:
        """Hand completed row groups to the writer (then open more, which may complete at
        once: a group whose rows all dropped)."""
        while True:
            done = self.frontier.take_completed()
            if not done:
                return
            for g in done:
                self._write(g, now)
            if not self.stopping:
                self._open_groups(now)

    def _write(self, g: GroupState, now: float) -> None:
        og = self._open.pop(g.span.group)
        alive = g.alive
        kept = [r for r in range(g.span.rows) if alive[r]]
        columns = {f: [vals[r] for r in kept] for f, vals in og.values.items()}
        dropped = {c: dict(n) for c, n in og.dropped.items() if n}
        start = g.span.start
        by_column: dict[str, list[int]] = {}
        for r, node in g.dropped:
            by_column.setdefault(self.columns[node].name, []).append(start + r)
        self.on_group(GroupDone(g.span, [start + r for r in kept], columns, dropped,
                                og.started, now,
                                {c: sorted(rows) for c, rows in by_column.items()}))  # fmt: skip
        self.groups_written += 1
        self.rows_written += len(kept)
        self._written_kept += len(kept)
        if self.first_group_at is None:
            self.first_group_at = now
        self._record(now, "row_group_written", row_group=g.span.group, rows=g.span.rows,
                    kept=len(kept))  # fmt: skip
        # Rows dropped by filters are made up by more row groups; when whole groups in a row
        # keep nothing, no number of groups will: stop rather than generate forever.
        self._empty_groups = 0 if kept else self._empty_groups + 1
        if self._empty_groups >= _EMPTY_GROUPS and not self.stopping:
            self.stopping = True
            self.stop_reason = (
                f"stopped: every row of the last {self._empty_groups} row groups was dropped"
            )

    # -- claims -------------------------------------------------------------------------------
    def _blocked(self) -> set[int]:
        """The generators whose endpoint is at its cap (the engine sets caps every tick)."""
        blocked: set[int] = set()
        caps, running, endpoint_of = self._caps, self._running_endpoint, self._endpoint_of
        for n in self._endpoint_nodes:
            ep = endpoint_of[n]
            assert ep is not None
            cap = caps.get(ep)
            if cap is not None and running[ep] >= cap:
                blocked.add(n)
        return blocked

    def claim_one(self, worker: str, now: float, lease_s: float = 0.0) -> Claim | None:
        if self.stopping:
            return None
        delayed = self._delayed
        frontier = self.frontier
        while delayed and delayed[0][0] <= now:
            frontier.push(heapq.heappop(delayed)[1])
        got = frontier.pop_task(self._blocked() if self._endpoint_nodes else ())
        if got is None:
            return None
        key, group, node, row = got
        og = self._open[group]
        values = og.values
        spec = _new_spec(TaskSpec)
        spec.deps = ()
        d = dict(self._templates[node])
        col = self.columns[node]
        extra: dict[str, Any]
        start = og.span.start
        if self._runs[node]:
            cells = [(key, row)]
            size = self._run_size[node]
            if size > 1:
                cells += frontier.pop_run(group, node, size - 1)
            params = self._params[node]
            kws = [{p: values[f][r] for p, f in params} for _, r in cells]
            last = cells[-1][1]
            spec.id = (
                f"{col.name}[{start + row}]" if last == row
                else f"{col.name}[{start + row}..{start + last}]"
            )  # fmt: skip
            d["args"] = (kws, [start + r for _, r in cells])
            extra = {"cells": cells}
        elif frontier.cell[node]:
            kw = {p: values[f][row] for p, f in self._params[node]}
            spec.id = f"{col.name}[{start + row}]"
            d["args"] = (kw, start + row)
            extra = {}
        else:
            rows = frontier.rows_of(group)
            kwl = {p: [values[f][r] for r in rows] for p, f in self._params[node]}
            spec.id = f"{col.name}[group {group}]"
            d["args"] = (kwl, [og.span.start + r for r in rows])
            extra = {"rows": rows}
        spec.__dict__ = d
        self.running += 1
        ep = self._endpoint_of[node]
        if ep is not None:
            self._running_endpoint[ep] += 1
        attempt = 1
        if self._attempts and not self._runs[node]:  # a run's cells count their own
            attempt = self._attempts.pop(key, 1)
        return Claim(spec, attempt, 0, key, self.plan.depth[node], (), extra)

    def claim(
        self, worker: str, limit: int, now: float, lease_s: float, offer: Offer | None = None
    ) -> list[Claim]:
        out: list[Claim] = []
        slots = limit if offer is None else min(limit, max(offer.slots, 0))
        while len(out) < slots:
            c = self.claim_one(worker, now, lease_s)
            if c is None:
                break
            out.append(c)
        return out

    def _ran(self, claim: Claim) -> int:
        """A claim came back: it no longer runs. Its generator's index."""
        node = claim.handle & 0xFFF
        self.running -= 1
        ep = self._endpoint_of[node]
        if ep is not None:
            self._running_endpoint[ep] -= 1
        return node

    # -- outcomes -----------------------------------------------------------------------------
    def complete(self, claim: Claim, value: Any, now: float) -> bool:
        key = claim.handle
        frontier = self.frontier
        node = self._ran(claim)
        cc = self.counts_by_column[node]
        if self._runs[node]:
            self._run_done(claim, node, value, now)
            return True
        if frontier.cell[node] and not isinstance(value, Dropped):
            # the common case, kept short: a cell with a value
            group, _, row = frontier.decode(key)
            og = self._open.get(group)
            if og is None or not frontier.cell_done_at(group, node, row):
                self.stale += 1
                return False
            self._outcome(True, node)
            col = self.columns[node]
            if col.side_effects:
                for f in col.fields:
                    og.values[f][row] = value.get(f)
            else:
                og.values[col.name][row] = value
            cc.done += 1
            if frontier.completed:
                self._collect(now)
            return True
        if self._stale(key):
            return False
        group, node, row = frontier.decode(key)
        og = self._open[group]
        if frontier.cell[node]:
            if isinstance(value, Dropped) and not self._halt(node, value):
                self._outcome(value.error is None, node)
                self._drop_row(og, row, node, value, now)
                frontier.drop(group, row, node)
        else:
            assert isinstance(value, BatchOut)
            rows: list[int] = claim.extra["rows"]
            if value.failed is not None and self._halt(node, value.failed):
                pass
            elif value.failed is not None:
                self._outcome(False, node, len(rows))
                self._fail_group(og, node, value.failed, now)
            else:
                self._outcome(True, node, len(rows))
                col = self.columns[node]
                alive = frontier.groups[group].alive
                drops: list[int] = []
                fields = col.fields
                single = len(fields) == 1
                name = col.name
                vals = og.values
                for r, v in zip(rows, value.values, strict=True):
                    if not alive[r]:
                        continue  # dropped while the batch ran: its value is not used
                    if isinstance(v, Dropped):
                        self._drop_row(og, r, node, v, now)
                        drops.append(r)
                    elif single:
                        vals[name][r] = v
                    else:
                        for f in fields:
                            vals[f][r] = v.get(f)
                cc.done += 1
                frontier.batch_done(key, drops)
        self._collect(now)
        return True

    def fail(self, claim: Claim, error: str, now: float, retry_at: float | None) -> bool:
        node = self._ran(claim)
        key = claim.handle
        frontier = self.frontier
        if self._runs[node]:  # the run itself failed (cancelled): each cell counts an attempt
            for k, _ in claim.extra["cells"]:
                if frontier.live(k):
                    self._retry_cell(k, node, error, now)
            self._collect(now)
            return True
        if self._stale(key):
            return False
        group, node, row = frontier.decode(key)
        if retry_at is not None:
            self.counts_by_column[node].retried += 1
            self._attempts[key] = claim.attempt + 1
            heapq.heappush(self._delayed, (retry_at, key))
            return True
        self._outcome(False, node, 1 if frontier.cell[node] else len(claim.extra["rows"]))
        reason = Dropped("error: " + error.split(":", 1)[0].strip(), error)
        og = self._open[group]
        if frontier.cell[node]:
            self._drop_row(og, row, node, reason, now)
            frontier.drop(group, row, node)
        else:
            self._fail_group(og, node, reason, now)
        self._collect(now)
        return True

    def _stale(self, key: int) -> bool:
        """A late report (its row dropped, its group finished): counted, refused."""
        if self.frontier.live(key):
            return False
        self.stale += 1
        return True

    def release(self, claim: Claim, now: float) -> bool:
        node = self._ran(claim)
        if self._runs[node]:
            for k, _ in claim.extra["cells"]:
                self.frontier.push(k)
            return True
        self._attempts[claim.handle] = claim.attempt
        self.frontier.push(claim.handle)
        return True

    # -- runs of cells ------------------------------------------------------------------------
    def _run_done(self, claim: Claim, node: int, out: RunOut, now: float) -> None:
        """File each cell of a run: its value, its drop, or its retry."""
        frontier = self.frontier
        cells: list[tuple[int, int]] = claim.extra["cells"]
        self._size_runs(node, out.seconds, len(cells))
        col = self.columns[node]
        cc = self.counts_by_column[node]
        fields = col.fields if col.side_effects else None
        attempts = self._attempts
        for (key, row), outcome in zip(cells, out.outcomes, strict=True):
            group = frontier.decode(key)[0]
            og = self._open.get(group)
            if og is None or not frontier.live(key):
                self.stale += 1
                continue
            if isinstance(outcome, Retry):
                self._retry_cell(key, node, outcome.error, now)
                continue
            if attempts:
                attempts.pop(key, None)
            if isinstance(outcome, Dropped):
                if self._halt(node, outcome):
                    continue
                self._outcome(outcome.error is None, node)
                self._drop_row(og, row, node, outcome, now)
                frontier.drop(group, row, node)
                continue
            self._outcome(True, node)
            if fields is None:
                og.values[col.name][row] = outcome
            else:
                for f in fields:
                    og.values[f][row] = outcome.get(f)
            cc.done += 1
            frontier.cell_done_at(group, node, row)
        self._collect(now)

    def _retry_cell(self, key: int, node: int, error: str, now: float) -> None:
        """A cell of a run failed with an error worth retrying: again after a backoff (the
        engine's policy) while its retries last, else its row is dropped."""
        attempt = self._attempts.get(key, 1)
        col = self.columns[node]
        retries = col.retries if col.retries is not None else self.table.retries
        if attempt <= retries:
            self._attempts[key] = attempt + 1
            self.counts_by_column[node].retried += 1
            delay = self._retry_policy.delay(attempt, self._rng.random())
            heapq.heappush(self._delayed, (now + delay, key))
            return
        self._attempts.pop(key, None)
        self._outcome(False, node)
        group, _, row = self.frontier.decode(key)
        why = Dropped("error: " + error.split(":", 1)[0].strip(), error)
        self._drop_row(self._open[group], row, node, why, now)
        self.frontier.drop(group, row, node)

    def _size_runs(self, node: int, seconds: float, cells: int) -> None:
        """Size the next runs of ``node`` so that one takes about ``_RUN_S`` of calls: cheap
        generators run many cells a task, a generator whose calls take longer than that runs
        one cell a task (no loss of concurrency)."""
        per = seconds / max(cells, 1)
        old = self._call_s[node]
        per = per if old is None else 0.8 * old + 0.2 * per
        self._call_s[node] = per
        self._run_size[node] = max(1, min(_RUN_MAX, int(_RUN_S / per) if per > 0 else _RUN_MAX))

    def _halt(self, node: int, why: Dropped) -> bool:
        """An error that says the endpoint refuses every call (``Dropped.fatal``): stop the
        build at once and drop nothing, so the rows are not recorded as lost and the same
        command, once the cause is fixed, resumes them. ``False`` for an ordinary drop."""
        if not why.fatal:
            return False
        col = self.columns[node].name
        self.errors.setdefault((col, why.reason), why.error or why.reason)
        if not self.stopping:
            self.stopping = True
            self.stop_reason = (
                f"column {col!r}: the endpoint refuses its calls ({why.reason}); nothing of"
                " the row groups in flight was written: fix the cause and run the same"
                " command again"
            )
        return True

    def _fail_group(self, og: _Open, node: int, why: Dropped, now: float) -> None:
        frontier = self.frontier
        g = og.span.group
        for r in frontier.rows_of(g):
            self._drop_row(og, r, node, why, now)
        frontier.drop_group(g, node)

    def _drop_row(self, og: _Open, row: int, node: int, why: Dropped, now: float) -> None:
        col = self.columns[node].name
        og.dropped.setdefault(col, Counter())[why.reason] += 1
        self.dropped[col][why.reason] += 1
        cc = self.counts_by_column[node]
        cc.dropped += 1
        if why.error is not None:
            cc.failed += 1
            self.errors.setdefault((col, why.reason), why.error)
        self._record(now, "row_dropped", task=f"{col}[{og.span.start + row}]", column=col,
                    reason=why.reason, error=why.error)  # fmt: skip

    def _outcome(self, ok: bool, node: int, rows: int = 1) -> None:
        """Early stop: more than ``early_stop`` of the last ``early_stop_window`` outcomes
        failed, of all tasks or of one generator (``rows``: how many rows the outcome is
        for). Work in flight finishes; nothing new starts."""
        window, mine = self._window, self._col_windows[node]
        if ok and not window.failed and not mine.failed:  # the common case, kept short
            window.quiet += 1
            mine.quiet += rows
            return
        window.add(ok, 1)
        mine.add(ok, rows)
        if ok or self.stopping:
            return
        share = self.table.early_stop
        if mine.over(share):
            what = f"outcomes of column {self.columns[node].name!r}"
            failed, n = mine.failed, len(mine.items)
        elif window.over(share):
            what, failed, n = "outcomes", window.failed, len(window.items)
        else:
            return
        self.stopping = True
        self.stop_reason = (
            f"early stop: {failed} of the last {n} {what} failed (more than {share:.0%})"
        )

    def _record(self, now: float, event: str, **fields: Any) -> None:
        if self.emit is not None:
            self.emit({"ts": now, "event": event, **fields})

    # -- what the engine asks -----------------------------------------------------------------
    @property
    def admission(self) -> bool:
        return bool(self._endpoint_names)

    def endpoints(self) -> list[str]:
        return list(self._endpoint_names)

    def set_endpoint_cap(self, endpoint: str, cap: int) -> None:
        self._caps[endpoint] = cap

    def next_wakeup(self) -> float | None:
        if self.stopping:
            return None
        delayed, live = self._delayed, self.frontier.live
        while delayed and not live(delayed[0][1]):  # its row dropped, its group done
            self._attempts.pop(heapq.heappop(delayed)[1], None)
        return delayed[0][0] if delayed else None

    def unfinished(self) -> int:
        if self.stopping:
            return self.running
        return len(self._open) + self.running + len(self._delayed)

    def has_running(self) -> bool:
        return self.running > 0

    def counts(self) -> dict[str, int]:
        done = sum(c.done for c in self.counts_by_column)
        dropped = sum(c.dropped for c in self.counts_by_column)
        return {"done": done, "running": self.running, "dropped": dropped,
                "retry_wait": len(self._delayed)}  # fmt: skip

    def open_groups(self) -> list[int]:
        return sorted(self._open)

    # -- what a table build does not have -----------------------------------------------------
    def open_graph(self, graph: GraphSpec, now: float, *, replace: bool = False,
                   fingerprints: Any = None) -> OpenedGraph:  # fmt: skip
        raise UsageError("a table build's store holds its table's cells, not graphs")

    def submit_children(self, parent: Claim, tasks: list[TaskSpec], now: float) -> list[str]:
        raise UsageError("a table column's generator cannot submit child tasks")

    def explain(self, task_id: str, now: float, offers: list[Offer] | None = None) -> Reason:
        return Reason("table_cell", f"{task_id} is a cell of table {self.table.name!r}")

    def parent_values(self, claim: Claim) -> dict[str, Any]:
        return {}

    def result(self, task_id: str, *, value: bool = True) -> TaskResult:
        return TaskResult(task_id, TaskState.PENDING, None, None, 0)
