"""What the SQLite and PostgreSQL stores share: the whole ``Store`` logic over named queries.

A backend supplies only the I/O: how a write transaction begins and commits (``_begin``), how
a read runs (``_read``), how a list travels as a parameter (``_list``) and its dialect's
queries. Everything else — submission, the claim/complete cycle, leases, retries, skipping
downstream, the audit trail, results — is written once here.

Costs on the hot path: a claim is one transaction with an index seek on ``tasks_ready``
(O(log n) per task); a completion updates the task and its own children (O(fan-out log n)).
Events are emitted after the transaction commits, from the audit rows it wrote.
"""

from __future__ import annotations

import json
import os
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

from conveyor.core.dag import layout
from conveyor.errors import GraphError, GraphMismatchError, ResultError, StaleLeaseError, StoreError
from conveyor.model import GraphSpec, TaskResult, TaskSpec, TaskState
from conveyor.store.base import Claim, GraphFingerprints, OpenedGraph, Store, WorkerProfile
from conveyor.store.codec import ResultCodec, decode_spec, encode_spec
from conveyor.store.sqladmin import SqlAdmin
from conveyor.store.sqladmission import SqlAdmission
from conveyor.store.sqlfp import SqlFingerprints
from conveyor.store.sqlqueries import load_migrations, load_queries
from conveyor.workerid import HOST

T = TypeVar("T")

PENDING, READY, RUNNING, DONE, FAILED, SKIPPED, RETRY_WAIT, CANCELLED, INVALIDATED = range(9)
_DEAD = (FAILED, SKIPPED, CANCELLED)
_LABELS = [s.label for s in TaskState]

#: Leases that may expire on one task before it is failed (a crash loop is not retried forever).
LOST_BUDGET = 3
#: Tasks that finish faster than this (claim to completion, EWMA) are claimed in batches: the
#: per-transaction cost then dominates, and a batch amortises it. Slower tasks: one at a time.
FAST_TASK_S = 0.005
#: Largest batch a worker claims at once under a backlog of fast tasks.
MAX_BATCH = 32
#: No-op tasks one claim transaction may complete on the way (they cost no commit of their own;
#: more per transaction means fewer lock hand-offs between worker processes).
NOOP_BATCH = 256
#: Ready tasks a worker with labels/resources looks at per page when some do not fit it.
_FIT_WINDOW = 64
_FIT_PAGES = 16


class Tx:
    """One write transaction: runs named queries; collects audit rows, written at the end."""

    __slots__ = ("audit_rows", "conn", "notify", "q", "store")

    def __init__(self, store: SqlStore, conn: Any) -> None:
        self.store = store
        self.conn = conn
        self.q = store.queries
        self.audit_rows: list[dict[str, Any]] = []
        self.notify = False  # PostgreSQL: tell idle workers that work may be claimable

    def run(self, name: str, /, **params: Any) -> Any:
        return self.conn.execute(self.q[name], params)

    def rows(self, name: str, /, **params: Any) -> list[Any]:
        return self.conn.execute(self.q[name], params).fetchall()  # type: ignore[no-any-return]

    def scalar(self, name: str, /, **params: Any) -> Any:
        row = self.conn.execute(self.q[name], params).fetchone()
        return None if row is None else row[0]

    def audit(
        self,
        ts: float,
        event: str,
        task: str | None,
        frm: int | None,
        to: int | None,
        worker: str | None = None,
        attempt: int | None = None,
        error: str | None = None,
        **extra: Any,
    ) -> None:
        self.audit_rows.append({
            "ts": ts, "event": event, "task": task, "from_state": frm, "to_state": to,
            "worker": worker, "attempt": attempt, "error": error,
            "extra": json.dumps(extra) if extra else None,
        })  # fmt: skip


def audit_event(row: Any) -> dict[str, Any]:
    """An audit row ``(id, ts, event, task, from, to, worker, attempt, error, extra)`` as the
    JSON event of DESIGN.md section 4."""
    _id, ts, event, task, frm, to, worker, attempt, error, extra = row
    ev: dict[str, Any] = {"ts": ts, "event": event}
    if task is not None:
        ev["task"] = task
    if worker is not None:
        ev["worker"] = worker
    if attempt is not None:
        ev["attempt"] = attempt
    if frm is not None:
        ev["from"] = _LABELS[frm]
    if to is not None:
        ev["to"] = _LABELS[to]
    if error is not None:
        ev["error"] = error
    if extra:
        ev.update(json.loads(extra))
    return ev


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child not yet waited for is a zombie: dead for our purposes
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class SqlStore(SqlFingerprints, SqlAdmission, SqlAdmin, Store):
    """The shared logic; subclasses supply the connection and the dialect."""

    shared = True
    dialect = ""
    types: tuple[tuple[str, str], ...] = ()
    #: Rounds of claim-and-complete-no-ops in one transaction. SQLite has one writer at a
    #: time, so longer transactions mean fewer hand-offs; PostgreSQL lets workers run side by
    #: side, and one round keeps each transaction's row locks in one sorted batch.
    claim_rounds = 1 << 30

    def __init__(
        self,
        url: str,
        *,
        codec: ResultCodec | None = None,
        lost_budget: int = LOST_BUDGET,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self.url = url
        self.codec = codec or ResultCodec()
        self.lost_budget = lost_budget
        self.max_batch = max_batch
        self.lease_s = 30.0
        #: What this worker offers: a task with labels runs only where they all match; a task
        #: with resources runs where they fit (a worker that declares none takes any).
        self.labels: dict[str, str] = {}
        self.resources: dict[str, float] | None = None
        self.queries = load_queries(self.dialect)
        self._buffer: deque[Claim] = deque()  # claimed in a batch, not yet handed out
        self._claimed_at: dict[int, float] = {}
        self._ewma = 1.0  # seconds from claim to completion, smoothed
        self._worker: str | None = None
        #: Complete no-op tasks in the transaction that claims them. Off for the laufband loop
        #: (``conveyor.worker``), where the loop body is the work of every task.
        self.inline_noops = True
        self.noop_batch = NOOP_BATCH

    # -- backend hooks --------------------------------------------------------------------------
    def _begin(self) -> AbstractContextManager[Any]:
        """A write transaction on a connection: commits on exit, rolls back on error."""
        raise NotImplementedError

    def _read(self, name: str, /, **params: Any) -> list[Any]:
        """Rows of one read-only query, outside any write transaction."""
        raise NotImplementedError

    def _list(self, values: list[Any]) -> Any:
        """A list as a query parameter (SQLite: JSON text for json_each; PG: an array)."""
        raise NotImplementedError

    def _retryable(self, exc: BaseException) -> bool:
        """Whether ``exc`` means "run the transaction again" (PG deadlock, serialization)."""
        return False

    def _notify(self, tx: Tx) -> None:
        """Signal idle workers inside ``tx`` (PostgreSQL NOTIFY); SQLite has no such signal."""

    def _lock_graph(self, tx: Tx) -> None:
        """Serialise submissions (PG: an advisory lock; SQLite's writer lock already does)."""

    # -- transactions ---------------------------------------------------------------------------
    def _atomic(self, op: Callable[[Tx], T]) -> T:
        """Run ``op`` in one write transaction, with its audit rows; emit events after commit."""
        for attempt in range(20):
            try:
                with self._begin() as conn:
                    tx = Tx(self, conn)
                    value = op(tx)
                    if tx.audit_rows:
                        conn.executemany(self.queries["insert_audit"], tx.audit_rows)
                    if tx.notify:
                        self._notify(tx)
                break
            except Exception as exc:
                if attempt < 19 and self._retryable(exc):
                    continue
                raise
        emit = self.emit
        if emit is not None:
            for r in tx.audit_rows:
                emit(audit_event((None, *r.values())))
        return value

    def _scalar(self, name: str, /, **params: Any) -> Any:
        rows = self._read(name, **params)
        return rows[0][0] if rows else None

    # -- schema ---------------------------------------------------------------------------------
    def migrate(self) -> None:
        """Create the schema or bring it forward; refuses a store of a newer conveyor."""
        migrations = load_migrations(self.dialect, self.types)
        latest = migrations[-1][0]
        current = self._schema_version()
        if current == latest:
            return
        if current > latest:
            raise StoreError(
                f"{self.url}: made by a newer conveyor (schema v{current}, this one knows "
                f"v{latest}); upgrade conveyor"
            )

        def op(tx: Tx) -> None:
            self._lock_graph(tx)
            now = self._schema_version()
            for version, statements in migrations:
                if version <= now:
                    continue
                for stmt in statements:
                    tx.conn.execute(stmt)
            tx.conn.execute("DELETE FROM schema_version")
            tx.conn.execute(f"INSERT INTO schema_version (version) VALUES ({latest})")

        self._atomic(op)

    def _schema_version(self) -> int:
        """0 for an empty database; refuses one that holds other tables."""
        raise NotImplementedError

    def configure(self, profile: WorkerProfile) -> None:
        self.labels = dict(profile.labels)
        self.resources = None if profile.resources is None else dict(profile.resources)
        if profile.max_batch is not None:
            self.max_batch = max(1, min(MAX_BATCH, profile.max_batch))
        self.inline_noops = profile.complete_noops
        self.lease_s = profile.lease_s

    def meta_get(self, key: str) -> str | None:
        value = self._scalar("meta_get", key=key)
        return None if value is None else str(value)

    def meta_set(self, key: str, value: str) -> None:
        self._atomic(lambda tx: tx.run("meta_set", key=key, value=value))

    # -- graphs and tasks -----------------------------------------------------------------------
    def graph_name(self) -> str | None:
        return self.meta_get("graph")

    def open_graph(
        self,
        graph: GraphSpec,
        now: float,
        *,
        replace: bool = False,
        fingerprints: GraphFingerprints | None = None,
    ) -> OpenedGraph:
        # Fingerprints (sqlfp.py): computed by the caller; a resume applies them.
        fps = fingerprints
        parts = None if fps is None else fps.parts
        file_rows = [] if fps is None else self._fp_file_rows(fps)

        def op(tx: Tx) -> OpenedGraph:
            self._lock_graph(tx)
            name = tx.scalar("meta_get", key="graph")
            if name is not None and name != graph.name:
                left = tx.scalar("unfinished")
                if left and not replace:
                    raise GraphMismatchError(
                        f"{self.url} holds unfinished work of graph {name!r} ({left} tasks "
                        f"left), not {graph.name!r}: use --replace to discard it, or another --db"
                    )
                for table in ("tasks", "specs", "results", "edges", "audit", "workers"):
                    tx.run("wipe_" + table)
                tx.run("wipe_admission")
                tx.run("wipe_groups")
                tx.run("wipe_fingerprints")
                self._adm_shapes = None
                name = None
            existing: dict[str, tuple[int, int, int]] = {}
            edge_changes: list[Any] = []
            if name is None:
                tx.run("meta_set", key="graph", value=graph.name)
                roots = 0
            elif fps is not None:
                existing, edge_changes = self._fp_resume(tx, graph, fps, now)
                roots = int(tx.scalar("meta_get", key="roots") or 0)
            else:
                existing = {r[0]: (r[1], r[2], r[3]) for r in tx.rows("all_task_keys")}
                roots = int(tx.scalar("meta_get", key="roots") or 0)
            self._declare_groups(tx, graph.groups)
            new = [t for t in graph.tasks if t.id not in existing]
            if new:
                roots += 1
                tx.run("meta_set", key="roots", value=str(roots))
                first = int(tx.scalar("max_seq")) + 1
                self._insert(tx, new, existing.get, 0, roots, now)
                tx.notify = True
                if parts is not None:
                    self._fp_insert(tx, {t.id: first + i for i, t in enumerate(new)}, parts)
            if parts is not None:
                self._fp_edges(tx, edge_changes)
                self._fp_save_files(tx, file_rows)
            return OpenedGraph(graph.name, len(new), name is not None, tx.scalar("unfinished"))

        opened = self._atomic(op)
        if opened.added:
            self._after_bulk_load()
        if opened.resumed:
            self.reap_expired(now)  # tasks of crashed workers run again
        return opened

    def _after_bulk_load(self) -> None:
        """Hook after many rows were added (PostgreSQL refreshes planner statistics)."""

    def has_unfinished(self) -> bool:
        """Whether any task is still to finish: an index probe, not a count of all tasks."""
        return bool(self._read("any_unfinished"))

    def submit_children(self, parent: Claim, tasks: list[TaskSpec], now: float) -> list[str]:
        def op(tx: Tx) -> list[str]:
            found = tx.rows("task_by_id", id=parent.id)
            row = found[0] if found else None
            if row is None or row[1] != RUNNING or row[4] != parent.token:
                raise StaleLeaseError(f"task {parent.id!r} no longer holds its lease")

            def lookup(tid: str) -> tuple[int, int, int] | None:
                r = tx.rows("task_by_id", id=tid)
                return (r[0][0], r[0][1], r[0][2]) if r else None

            self._insert(tx, tasks, lookup, 1 - row[2], row[3], now)
            tx.notify = True
            return [t.id for t in tasks]

        return self._atomic(op)

    def _insert(
        self,
        tx: Tx,
        tasks: list[TaskSpec],
        lookup: Callable[[str], tuple[int, int, int] | None],
        base_depth: int,
        root_seq: int,
        now: float,
    ) -> None:
        """Insert new tasks with their edges and audit rows. ``lookup(id)`` gives an existing
        task's ``(seq, state, neg_depth)``. O(V + E) for the batch."""

        def external_depth(tid: str) -> int | None:
            r = lookup(tid)
            return None if r is None else -r[2]

        ids = [t.id for t in tasks]
        lay = layout(ids, [t.deps for t in tasks], external_depth=external_depth,
                     base_depth=base_depth)  # fmt: skip
        shapes = self._shape_ids(tx, tasks)  # validates groups, labels, gangs first
        first = int(tx.scalar("max_seq")) + 1
        waiting = [len(lp) for lp in lay.local_parents]
        edges: list[tuple[int, int]] = []
        dead: dict[int, str] = {}
        for i, lp in enumerate(lay.local_parents):
            edges.extend((first + j, first + i) for j in lp)
        for i, ext in lay.external_parents.items():
            for tid in ext:
                seq, state, _ = lookup(tid)  # type: ignore[misc]
                edges.append((seq, first + i))
                if state != DONE:
                    waiting[i] += 1
                if state in _DEAD:
                    dead.setdefault(i, tid)
        # Downstream of a dead parent is skipped right away (inside the batch too).
        skipped: dict[int, str] = {}
        stack = list(dead.items())
        while stack:
            i, cause = stack.pop()
            if i in skipped:
                continue
            skipped[i] = cause
            stack.extend((c, cause) for c in lay.children[i] or ())
        rows = []
        specs = []
        for i, t in enumerate(tasks):
            if i in skipped:
                state, error = SKIPPED, f"upstream_failed: {skipped[i]}"
            else:
                state, error = (READY if waiting[i] == 0 else PENDING), None
            rows.append({
                "seq": first + i, "id": t.id, "state": state, "neg_depth": -lay.depth[i],
                "root_seq": root_seq, "grp": t.group, "waiting": waiting[i],
                "noop": int(t.fn is None and t.cmd is None),
                "labels": json.dumps(t.labels, sort_keys=True) if t.labels else None,
                "resources": json.dumps(t.resources, sort_keys=True) if t.resources else None,
                "error": error, "shape": shapes[i], "now": now,
            })  # fmt: skip
            specs.append({"seq": first + i, "spec": encode_spec(t)})
            tx.audit(now, "task_submitted", t.id, None, PENDING)
            if state == READY:
                tx.audit(now, "task_ready", t.id, PENDING, READY)
            elif state == SKIPPED:
                tx.audit(now, "task_skipped", t.id, PENDING, SKIPPED, error=error,
                         reason="upstream_failed", cause=skipped[i])  # fmt: skip
        self._insert_rows(tx, "insert_task", rows)
        self._insert_rows(tx, "insert_spec", specs)
        if edges:
            self._insert_rows(tx, "insert_edge", [{"parent": p, "child": c} for p, c in edges])

    def _insert_rows(self, tx: Tx, name: str, rows: list[dict[str, Any]]) -> None:
        tx.conn.executemany(self.queries[name], rows)

    # -- the claim/complete cycle -----------------------------------------------------------------
    def claim(
        self, worker: str, limit: int, now: float, lease_s: float, offer: Any = None
    ) -> list[Claim]:
        self._worker = worker
        if offer is not None or self.admission:
            got = self._atomic(lambda tx: self._claim_admitted(tx, worker, limit, now, lease_s,
                                                               offer))  # fmt: skip
            for c in got:
                self._claimed_at[c.handle] = now
            return got  # type: ignore[no-any-return]
        out = []
        while self._buffer and len(out) < limit:
            out.append(self._buffer.popleft())
        if len(out) < limit:
            out.extend(self._atomic(lambda tx: self._claim_in(tx, worker, limit - len(out), now,
                                                              lease_s)))  # fmt: skip
        for c in out:
            self._claimed_at[c.handle] = now
        return out

    def claim_one(self, worker: str, now: float, lease_s: float) -> Claim | None:
        """The engine's hot path: from this worker's batch, else one transaction that claims a
        batch when tasks are fast (see ``FAST_TASK_S``) or a single task otherwise."""
        if not self._buffer:
            if self.admission:
                got = self.claim(worker, 1, now, lease_s)
                return got[0] if got else None
            self._worker = worker
            limit = self.max_batch if self._ewma < FAST_TASK_S else 1
            got = self._atomic(lambda tx: self._claim_in(tx, worker, limit, now, lease_s))
            if not got:
                return None
            self._buffer.extend(got)
        c = self._buffer.popleft()
        self._claimed_at[c.handle] = now
        return c

    def _fits(self, labels: str | None, resources: str | None) -> bool:
        if labels is not None:
            mine = self.labels
            for k, v in json.loads(labels).items():
                if k not in mine or str(mine[k]) != str(v):
                    return False
        if resources is not None and self.resources is not None:
            have = self.resources
            for k, v in json.loads(resources).items():
                if have.get(k, 0) < v:
                    return False
        return True

    def _claim_in(self, tx: Tx, worker: str, limit: int, now: float, lease_s: float) -> list[Claim]:
        """Claim up to ``limit`` tasks inside ``tx``: due retries first become ready, then the
        best keys that fit this worker. O(limit · log n) while tasks fit.

        With ``inline_noops``, no-op tasks met on the way are also completed in this
        transaction (up to ``noop_batch`` of them, beyond ``limit``): the engine would complete
        each the moment it is claimed, and here that costs no commit of its own. The children
        they ready are claimed in the next round of the same transaction, best key first.
        """
        for tid, attempt in tx.rows("due_retries", now=now):
            tx.audit(now, "task_ready", tid, RETRY_WAIT, READY, attempt=attempt)
        out: list[Claim] = []
        real = 0
        noops = self.noop_batch if self.inline_noops else 0
        for _round in range(self.claim_rounds):
            if real >= limit:
                break
            chosen = self._choose(tx, limit - real, noops)
            if not chosen:
                break
            got = tx.rows("claim_seqs", seqs=self._list(chosen), worker=worker,
                          lease_until=now + lease_s, now=now)  # fmt: skip
            got.sort(key=lambda r: (r[4], r[5], r[0]))
            inline = []
            for r in got:  # the same split as _choose made, in the same key order
                inline.append(bool(r[6]) and noops > 0)
                noops -= inline[-1]
            need = [r[0] for r, i in zip(got, inline, strict=True) if not i]
            specs = dict(tx.rows("specs_of", seqs=self._list(need))) if need else {}
            done: list[int] = []
            for (seq, tid, attempt, token, neg_depth, _root, _noop), i in zip(
                got, inline, strict=True
            ):
                tx.audit(now, "task_started", tid, READY, RUNNING, worker, attempt)
                if i:
                    claim = Claim(TaskSpec(tid), attempt, token, seq, -neg_depth)
                    claim.extra["committed"] = True
                    tx.audit(now, "task_finished", tid, RUNNING, DONE, worker, attempt)
                    done.append(seq)
                else:
                    spec = decode_spec(tid, specs[seq])
                    claim = Claim(spec, attempt, token, seq, -neg_depth, spec.deps)
                    real += 1
                out.append(claim)
            inlined = len(done)
            if done:
                seqs = self._list(done)
                tx.run("complete_seqs", seqs=seqs, now=now)
                for tid, state, waiting in tx.rows("release_children_of", seqs=seqs):
                    if state == READY and waiting == 0:
                        tx.audit(now, "task_ready", tid, PENDING, READY)
                        tx.notify = True
            if not inlined:
                break
        return out

    def _choose(self, tx: Tx, limit: int, noops: int) -> list[int]:
        """The seqs of the best ready tasks that fit this worker, in key order: up to ``limit``
        tasks that need running and up to ``noops`` no-op ones (keyset pages over the
        ``tasks_ready`` index when some do not fit)."""
        constrained = bool(self.labels) or self.resources is not None
        window = limit + noops
        if constrained:
            window = max(window, _FIT_WINDOW)
        chosen: list[int] = []
        rows = tx.rows("ready_window", limit=window)
        for _ in range(_FIT_PAGES):
            for seq, _nd, _rs, noop, labels, resources in rows:
                if noop and noops > 0:
                    noops -= 1
                elif limit > 0:
                    needs = labels is not None or resources is not None
                    if needs and not self._fits(labels, resources):
                        continue
                    limit -= 1
                else:
                    return chosen  # the next best key is not ours to take this time
                chosen.append(seq)
                if limit == 0 and noops == 0:
                    return chosen
            if len(rows) < window:
                break
            last = rows[-1]
            window = max(window, _FIT_WINDOW)
            rows = tx.rows("ready_window_after", neg_depth=last[1], root_seq=last[2],
                           seq=last[0], limit=window)  # fmt: skip
        return chosen

    def _complete_in(
        self,
        tx: Tx,
        claim: Claim,
        kind: str | None,
        data: bytes | None,
        now: float,
        worker: str | None,
    ) -> bool:
        """Record a success inside ``tx``: the task, its result, its children. O(fan-out)."""
        cur = tx.run("complete_task", now=now, seq=claim.handle, token=claim.token)
        if cur.rowcount != 1:
            return False
        if kind is not None:
            tx.run("store_result", seq=claim.handle, kind=kind, data=data)
        self._left_running(tx, claim)
        tx.audit(now, "task_finished", claim.spec.id, RUNNING, DONE, worker, claim.attempt)
        for tid, state, waiting in tx.rows("release_children", seq=claim.handle):
            if state == READY and waiting == 0:
                tx.audit(now, "task_ready", tid, PENDING, READY)
                tx.notify = True
        return True

    def complete(self, claim: Claim, value: Any, now: float) -> bool:
        started = self._claimed_at.pop(claim.handle, now)
        self._ewma = 0.8 * self._ewma + 0.2 * max(0.0, now - started)
        if claim.extra.get("committed"):
            return True  # a no-op completed in the transaction that claimed it
        try:
            kind, data = self.codec.encode(value, f"{claim.handle}-{claim.token}")
        except ResultError as exc:
            return self.fail(claim, str(exc), now, None)
        prefetch = self._ewma < FAST_TASK_S and not self._buffer and self._worker is not None
        prefetch = prefetch and not self.admission  # admission claims carry the engine's offer
        worker = self._worker

        def op(tx: Tx) -> list[Claim] | None:
            if not self._complete_in(tx, claim, kind, data, now, worker):
                return None
            if prefetch:
                return self._claim_in(tx, worker, self.max_batch, now, self.lease_s)  # type: ignore[arg-type]
            return []

        got = self._atomic(op)
        if got is None:
            self.codec.discard(kind, data)
            return False
        if got:
            self._buffer.extend(got)
        return True

    def fail(self, claim: Claim, error: str, now: float, retry_at: float | None) -> bool:
        self._claimed_at.pop(claim.handle, None)
        worker = self._worker
        tid = claim.spec.id

        def op(tx: Tx) -> bool:
            params = {"seq": claim.handle, "token": claim.token, "error": error, "now": now}
            if retry_at is not None:
                if tx.run("fail_retry", retry_at=retry_at, **params).rowcount != 1:
                    return False
                self._left_running(tx, claim)
                tx.audit(now, "task_retrying", tid, RUNNING, RETRY_WAIT, worker, claim.attempt,
                         error, retry_at=retry_at)  # fmt: skip
                return True
            if tx.run("fail_final", **params).rowcount != 1:
                return False
            self._left_running(tx, claim)
            tx.audit(now, "task_failed", tid, RUNNING, FAILED, worker, claim.attempt, error)
            self._skip_downstream(tx, [claim.handle], now, tid)
            return True

        return self._atomic(op)

    def _skip_downstream(self, tx: Tx, seqs: list[int], now: float, cause: str) -> None:
        """Skip everything downstream of ``seqs``, level by level. O(descendants)."""
        error = f"upstream_failed: {cause}"
        while seqs:
            rows = tx.rows("children_to_skip", seqs=self._list(seqs))
            seen: dict[int, tuple[str, int]] = {}
            for seq, tid, state in rows:
                seen.setdefault(seq, (tid, state))
            if not seen:
                break
            seqs = sorted(seen)
            tx.run("skip_seqs", seqs=self._list(seqs), error=error, now=now)
            for tid, state in seen.values():
                tx.audit(now, "task_skipped", tid, state, SKIPPED, error=error,
                         reason="upstream_failed", cause=cause)  # fmt: skip

    def release(self, claim: Claim, now: float) -> bool:
        self._claimed_at.pop(claim.handle, None)
        try:
            self._buffer.remove(claim)
        except ValueError:
            pass
        return self._release_many([claim], now) == 1

    def _release_many(self, claims: list[Claim], now: float) -> int:
        def op(tx: Tx) -> int:
            n = 0
            for c in claims:
                if tx.run("release_task", seq=c.handle, token=c.token, now=now).rowcount == 1:
                    n += 1
                    self._left_running(tx, c)
                    tx.audit(now, "task_ready", c.spec.id, RUNNING, READY, self._worker,
                             c.attempt, reason="released")  # fmt: skip
            tx.notify = n > 0
            return n

        return self._atomic(op) if claims else 0

    def release_buffered(self, now: float) -> int:
        """Give back tasks claimed in a batch but not handed out (on shutdown)."""
        claims = list(self._buffer)
        self._buffer.clear()
        for c in claims:
            self._claimed_at.pop(c.handle, None)
        return self._release_many(claims, now)

    # -- leases and workers ---------------------------------------------------------------------
    def register_worker(self, worker: str, now: float, info: dict[str, Any]) -> None:
        self._worker = worker
        self._refresh_admission()
        host, _, pid = worker.rpartition(":")
        info = {**info, "labels": self.labels, "resources": self.resources}

        def op(tx: Tx) -> None:
            tx.run("worker_upsert", name=worker, host=host or None,
                   pid=int(pid) if pid.isdigit() else None, now=now, lease_s=self.lease_s,
                   info=json.dumps(info, default=str))  # fmt: skip
            tx.audit(now, "worker_joined", None, None, None, worker)

        self._atomic(op)

    def unregister_worker(self, worker: str, now: float) -> None:
        self.release_buffered(now)
        self._atomic(lambda tx: tx.run("worker_left", name=worker, now=now))

    def heartbeat(self, worker: str, now: float, lease_s: float) -> int:
        self.lease_s = lease_s
        self._refresh_admission()  # a later submission may have switched admission on

        def op(tx: Tx) -> int:
            n = tx.run("renew_leases", worker=worker, lease_until=now + lease_s).rowcount
            tx.run("worker_seen", name=worker, now=now, lease_s=lease_s)
            return int(n)

        return self._atomic(op)

    def reap_expired(self, now: float) -> list[str]:
        """Requeue tasks whose lease expired (or whose worker on this host is gone); a task
        lost ``lost_budget`` times fails. Marks silent workers lost. O(running tasks)."""

        def op(tx: Tx) -> list[str]:
            rows = {r[0]: r for r in tx.rows("expired_leases", now=now)}
            for name, host, pid, last_seen, lease_s, _info in tx.rows("workers_alive"):
                gone = host == HOST and pid is not None and not _pid_alive(pid)
                if not gone and last_seen + lease_s >= now:
                    continue
                if tx.run("worker_lost", name=name).rowcount == 1:
                    tx.audit(now, "worker_lost", None, None, None, name,
                             reason="exited" if gone else "silent")  # fmt: skip
                if gone:
                    rows.update({r[0]: r for r in tx.rows("leases_of_worker", worker=name)})
            out = []
            for seq, tid, worker, attempt, lost, token in rows.values():
                params = {"seq": seq, "token": token, "now": now}
                grp = tx.scalar("adm_group_of", seq=seq) if self.admission else None
                if lost + 1 >= self.lost_budget:
                    error = f"lost: its lease expired {lost + 1} times (worker crashes?)"
                    if tx.run("fail_lost", error=error, **params).rowcount == 1:
                        if grp is not None:
                            tx.run("adm_running_add", grp=grp, n=-1)
                        tx.audit(now, "lease_expired", tid, RUNNING, FAILED, worker, attempt,
                                 error)  # fmt: skip
                        self._skip_downstream(tx, [seq], now, tid)
                        out.append(tid)
                elif tx.run("requeue_lost", **params).rowcount == 1:
                    if grp is not None:
                        tx.run("adm_running_add", grp=grp, n=-1)
                    tx.audit(now, "lease_expired", tid, RUNNING, READY, worker, attempt)
                    tx.notify = True
                    out.append(tid)
            return out

        return self._atomic(op)

    # -- queries --------------------------------------------------------------------------------
    def next_wakeup(self) -> float | None:
        v = self._scalar("next_wakeup")
        return None if v is None else float(v)

    def unfinished(self) -> int:
        return int(self._scalar("unfinished") or 0)

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(_LABELS, 0)
        for state, n in self._read("counts"):
            out[_LABELS[state]] = int(n)
        return out

    def parent_values(self, claim: Claim) -> dict[str, Any]:
        if not claim.parents:
            return {}
        decode = self.codec.decode
        rows = self._read("results_of", ids=self._list(list(claim.parents)))
        return {tid: decode(kind, data) for tid, kind, data in rows}

    def result(self, task_id: str) -> TaskResult:
        rows = self._read("result_of", id=task_id)
        if not rows:
            raise GraphError(f"unknown task {task_id!r}")
        state, kind, data, error, attempt = rows[0]
        value = self.codec.decode(kind, data) if state == DONE else None
        return TaskResult(task_id, TaskState(state), value, error, attempt)

    def history(self, task_id: str) -> list[dict[str, Any]]:
        return [audit_event(r) for r in self._read("history", task=task_id)]


def parse_options(query: dict[str, list[str]], url: str) -> dict[str, Any]:
    """The store options a URL may carry (``?results=pickle&inline_max=65536&batch=1``)."""
    out: dict[str, Any] = {}
    for key, values in query.items():
        value = values[-1]
        try:
            if key in ("timeout", "lease"):
                out[key] = float(value)
            elif key in ("inline_max", "batch", "lost_budget"):
                out[key] = int(value)
                if out[key] < 1:
                    raise ValueError
            elif key == "results":
                if value not in ("auto", "json", "pickle"):
                    raise ValueError
                out[key] = value
            elif key == "results_dir":
                out[key] = value
            else:
                continue
        except ValueError:
            raise StoreError(f"{url}: bad value {value!r} for option {key!r}") from None
    return out


def codec_from(options: dict[str, Any], default_dir: str | None) -> ResultCodec:
    return ResultCodec(
        mode=options.get("results", "auto"),
        inline_max=options.get("inline_max", 1 << 20),
        results_dir=options.get("results_dir", default_dir),
    )
