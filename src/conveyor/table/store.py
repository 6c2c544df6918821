"""``TableStore``: a table build as a store whose tasks are its cells, for the one engine.

The engine claims, runs, retries (with backoff), times out and completes tasks; it caps
endpoints from the adaptive limiter. This store hands it the table's cells from a
``TableFrontier`` instead of tasks from a graph: each claim is a cell ``(column, row)`` or a
``full_column`` batch ``(column, row group)`` whose arguments are read from the row group's
values at claim time. A completion files the value (or the drop), touches only the cell's
downstream, and, when a row group is complete, hands it to ``on_group`` (the writer) and opens
the next. Nothing of a written row group stays in memory.
"""

from __future__ import annotations

import heapq
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from conveyor.core.admission import Offer
from conveyor.core.explain import Reason
from conveyor.core.tablefrontier import GroupSpan, GroupState, TableFrontier, group_span
from conveyor.core.tableplan import TablePlan
from conveyor.errors import UsageError
from conveyor.model import GraphSpec, TaskResult, TaskSpec, TaskState
from conveyor.store.base import Claim, OpenedGraph, Store
from conveyor.table.cells import BatchOut, Dropped, batch_function, cell_function
from conveyor.table.spec import Table

__all__ = ["GroupDone", "TableStore"]

_new_spec = object.__new__


@dataclass(slots=True)
class GroupDone:
    """A completed row group, handed to the writer: the kept rows' values by field."""

    span: GroupSpan
    kept_rows: list[int]  # global row indices, ascending
    columns: dict[str, list[Any]]
    dropped: dict[str, dict[str, int]]  # column -> reason -> rows
    started: float
    finished: float


@dataclass(slots=True)
class _Open:
    span: GroupSpan
    values: dict[str, list[Any]]
    dropped: dict[str, Counter[str]] = field(default_factory=dict)
    started: float = 0.0


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
        rebuild: Mapping[int, Callable[[], tuple[bytearray, dict[str, list[Any]], set[str]]]]
        | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``done_groups``: row groups already written, with their kept rows (a resume);
        ``rebuild``: row groups to build again from values on disk (``--update``): per group,
        a loader of the rows it kept, the values by field, and the generators whose values
        stand (called when the group opens)."""
        self.url = "table:" + table.name
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
        bucket_of = {e: k + 1 for k, e in enumerate(endpoints)}
        buckets = [bucket_of.get(c.endpoint, 0) if c.endpoint else 0 for c in self.columns]
        self._bucket_endpoint = {k + 1: e for k, e in enumerate(endpoints)}
        self._caps: dict[str, int] = {}
        self._running_bucket = [0] * (len(endpoints) + 1)
        self.frontier = TableFrontier(plan, buckets)
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
        self._window: deque[bool] = deque(maxlen=table.early_stop_window)
        self._window_failed = 0
        self._quiet = 0  # successes not yet put in the window (none of it failed)
        self.groups_written = 0
        self.rows_written = 0
        self.first_group_at: float | None = None
        self.stale = 0  # late results refused (a dropped row, a finished row group)
        seed = table.seed
        # What every cell of a generator shares: its TaskSpec fields but the id and arguments.
        self._templates: list[dict[str, Any]] = []
        self._params: list[list[tuple[str, str]]] = []
        for i, c in enumerate(self.columns):
            fn = cell_function(c, seed) if plan.is_cell(i) else batch_function(c, seed)
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
        return self._written_kept + sum(
            self.frontier.groups[g].kept if g in self.frontier.groups else 0 for g in self._open
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
                alive, values, standing = self._rebuild.pop(g)()  # read from disk now
                span = group_span(g, self.records, self.size)
                keep = {i for i, c in enumerate(self.columns) if c.name in standing}
                full = {f: [None] * span.rows for f in self.plan.fields}
                for f, vals in values.items():
                    if f in full:
                        full[f] = vals
                self._start(span, full, now)
                frontier.open(span, done_nodes=keep, alive=alive)
                self._planned(span, alive)
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

    def _planned(self, span: GroupSpan, alive: bytearray | None) -> None:
        kept = span.rows if alive is None else sum(alive)
        for i, cc in enumerate(self.counts_by_column):
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
        self.on_group(GroupDone(g.span, [start + r for r in kept], columns, dropped,
                                og.started, now))  # fmt: skip
        self.groups_written += 1
        self.rows_written += len(kept)
        self._written_kept += len(kept)
        if self.first_group_at is None:
            self.first_group_at = now
        self._record(now, "row_group_written", row_group=g.span.group, rows=g.span.rows,
                    kept=len(kept))  # fmt: skip

    # -- claims -------------------------------------------------------------------------------
    def _blocked(self) -> set[int]:
        blocked: set[int] = set()
        for b, ep in self._bucket_endpoint.items():
            cap = self._caps.get(ep)
            if cap is not None and self._running_bucket[b] >= cap:
                blocked.add(b)
        return blocked

    def claim_one(self, worker: str, now: float, lease_s: float = 0.0) -> Claim | None:
        if self.stopping:
            return None
        delayed = self._delayed
        frontier = self.frontier
        while delayed and delayed[0][0] <= now:
            frontier.push(heapq.heappop(delayed)[1])
        got = frontier.pop_task(self._blocked() if self._bucket_endpoint else ())
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
        if frontier.cell[node]:
            kw = {p: values[f][row] for p, f in self._params[node]}
            spec.id = f"{col.name}[{og.span.start + row}]"
            d["args"] = (kw, og.span.start + row)
            extra = {}
        else:
            rows = frontier.rows_of(group)
            kwl = {p: [values[f][r] for r in rows] for p, f in self._params[node]}
            spec.id = f"{col.name}[group {group}]"
            d["args"] = (kwl, [og.span.start + r for r in rows])
            extra = {"rows": rows}
        spec.__dict__ = d
        self.running += 1
        self._running_bucket[frontier.bucket[node]] += 1
        attempt = self._attempts.pop(key, 1) if self._attempts else 1
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

    def _ran(self, claim: Claim) -> None:
        self.running -= 1
        self._running_bucket[self.frontier.bucket[claim.handle & 0xFFF]] -= 1

    # -- outcomes -----------------------------------------------------------------------------
    def complete(self, claim: Claim, value: Any, now: float) -> bool:
        key = claim.handle
        frontier = self.frontier
        node = key & 0xFFF
        self.running -= 1
        self._running_bucket[frontier.bucket[node]] -= 1
        cc = self.counts_by_column[node]
        if frontier.cell[node] and not isinstance(value, Dropped):
            # the common case, kept short: a cell with a value
            group, _, row = frontier.decode(key)
            og = self._open.get(group)
            if og is None or not frontier.cell_done_at(group, node, row):
                self.stale += 1
                return False
            self._outcome(True)
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
        if not frontier.live(key):
            self.stale += 1
            return False
        group, node, row = frontier.decode(key)
        og = self._open[group]
        if frontier.cell[node]:
            if isinstance(value, Dropped):
                self._outcome(value.error is None)
                self._drop_row(og, row, node, value, now)
                frontier.drop(group, row, node)
        else:
            assert isinstance(value, BatchOut)
            rows: list[int] = claim.extra["rows"]
            if value.failed is not None:
                self._outcome(False)
                self._fail_group(og, node, value.failed, now)
            else:
                self._outcome(True)
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
        self._ran(claim)
        key = claim.handle
        frontier = self.frontier
        if not frontier.live(key):
            self.stale += 1
            return False
        group, node, row = frontier.decode(key)
        if retry_at is not None:
            self.counts_by_column[node].retried += 1
            self._attempts[key] = claim.attempt + 1
            heapq.heappush(self._delayed, (retry_at, key))
            return True
        self._outcome(False)
        reason = Dropped("error: " + error.split(":", 1)[0].strip(), error)
        og = self._open[group]
        if frontier.cell[node]:
            self._drop_row(og, row, node, reason, now)
            frontier.drop(group, row, node)
        else:
            self._fail_group(og, node, reason, now)
        self._collect(now)
        return True

    def release(self, claim: Claim, now: float) -> bool:
        self._ran(claim)
        self._attempts[claim.handle] = claim.attempt
        self.frontier.push(claim.handle)
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

    def _outcome(self, ok: bool) -> None:
        """Early stop: more than ``early_stop`` of the last ``early_stop_window`` outcomes
        failed. Work in flight finishes; nothing new starts."""
        window = self._window
        if ok and not self._window_failed:
            self._quiet += 1  # nothing failed in the window: just count the success
            return
        if self._quiet:
            window.extend([True] * min(self._quiet, window.maxlen or 0))
            self._quiet = 0
        if len(window) == window.maxlen:
            self._window_failed -= not window[0]
        window.append(ok)
        self._window_failed += not ok
        if (
            not self.stopping
            and len(window) == window.maxlen
            and self._window_failed > self.table.early_stop * len(window)
        ):
            self.stopping = True
            self.stop_reason = (
                f"early stop: {self._window_failed} of the last {len(window)} outcomes failed"
                f" (more than {self.table.early_stop:.0%})"
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
        if self.stopping or not self._delayed:
            return None
        return self._delayed[0][0]

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
