"""``SqlStore``: the ``Store`` of SQLite and PostgreSQL, composed of collaborators that each do
one job inside a transaction they are handed:

- ``sqltx.py``: what a backend supplies (``SqlIo``: I/O and dialect), a transaction with its
  audit rows (``Tx``), the runner that commits it and emits events after (``Db``);
- ``sqlqueries.py``: the named queries and migrations, with states and the key filled in;
- ``sqlsubmit.py``: graphs and run-time children; ``sqlfp.py``: fingerprint plans at submit;
- ``sqlclaim.py``: claims, completions, failures, releases; ``sqlsteps.py``: the steps they
  share (starting tasks, completing no-ops, readying children, skipping downstream);
- ``sqlleases.py``: workers, heartbeats, reaping lost leases;
- ``sqladmission.py``, ``sqlshapes.py``, ``sqlexplain.py``: admission, ``explain``;
- ``sqladmin.py``: status, manual retries, pruning; ``sqlfeed.py``: the event feed.

``SqliteStore`` and ``PostgresStore`` only open their ``SqlIo`` and hand it here. Every public
mutating method is one transaction; events are emitted after it commits, from its audit rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from conveyor.core.admission import Offer
from conveyor.core.explain import Reason, none_can_start
from conveyor.core.preempt import PreemptPolicy
from conveyor.errors import GraphError, StoreError
from conveyor.model import GraphSpec, TaskResult, TaskSpec, TaskState
from conveyor.store import sqladmin, sqlviews
from conveyor.store.base import (
    Claim,
    EventFeed,
    GraphFingerprints,
    OpenedGraph,
    Store,
    WorkerProfile,
)
from conveyor.store.codec import ResultCodec
from conveyor.store.sqladmission import Admission
from conveyor.store.sqlaging import Aging
from conveyor.store.sqlclaim import Claims
from conveyor.store.sqlexplain import Explainer
from conveyor.store.sqlfeed import SqlEventFeed
from conveyor.store.sqlleases import LOST_BUDGET, Leases
from conveyor.store.sqlpreempt import Decisions, borrowing, preempt_requests
from conveyor.store.sqlqueries import load_migrations
from conveyor.store.sqlshapes import Shapes
from conveyor.store.sqlsteps import MAX_BATCH, Worker, fold_owed
from conveyor.store.sqlsubmit import Submissions
from conveyor.store.sqltx import Db, SqlIo, Tx

if TYPE_CHECKING:
    from conveyor.core.fingerprint import Decision

# ``sqlfp.py`` (fingerprint plans, with ``core/fingerprint.py`` and ``hashlib``) is imported by
# the methods that submit or plan a graph: a worker process never calls them.

T = TypeVar("T")

__all__ = ["LOST_BUDGET", "MAX_BATCH", "SqlStore"]


class SqlStore(Store):
    """A durable store over one ``SqlIo``; any number of processes may share it."""

    shared = True

    def __init__(
        self,
        io: SqlIo,
        *,
        codec: ResultCodec | None = None,
        lost_budget: int = LOST_BUDGET,
        max_batch: int = MAX_BATCH,
        lease_s: float | None = None,
    ) -> None:
        self.io = io
        self.url = io.url
        self.db = Db(io)
        self.codec = codec or ResultCodec()
        self.worker = Worker(max_batch=max_batch)
        if lease_s is not None:
            self.worker.configure(WorkerProfile(lease_s=lease_s))
        shapes = Shapes()
        self.adm = Admission(self.db, self.worker, shapes)
        self.explainer = Explainer(shapes)
        self.claims = Claims(self._atomic, self.worker, self.adm, self.codec,
                             rounds=io.claim_rounds, lean=io.locks_window,
                             wall=lambda: self.clock.wall())  # fmt: skip
        self.leases = Leases(self.worker, lost_budget)
        self.preempts = Decisions()
        self.aging = Aging()
        self.submissions = Submissions(io.url, self.adm)
        try:
            self.migrate()
        except BaseException:
            io.close()
            raise

    def _atomic(self, op: Callable[[Tx], T]) -> T:
        return self.db.atomic(op, self.emit, self.clock)

    # -- schema and setup -------------------------------------------------------------------------
    def migrate(self) -> None:
        """Create the schema or bring it forward; refuses a store of a newer conveyor."""
        migrations = load_migrations(self.io.dialect, self.io.types)
        latest = migrations[-1][0]
        current = self.io.schema_version()
        if current == latest:
            return
        if self.io.readonly and current < latest:
            raise StoreError(
                f"{self.url}: made by an older conveyor (schema v{current}, this one reads "
                f"v{latest}); open it once with `conveyor status` to bring it forward"
            )
        if current > latest:
            raise StoreError(
                f"{self.url}: made by a newer conveyor (schema v{current}, this one knows "
                f"v{latest}); upgrade conveyor"
            )

        def op(tx: Tx) -> None:
            tx.lock("graph")
            now = self.io.schema_version()
            for version, statements in migrations:
                if version <= now:
                    continue
                for stmt in statements:
                    tx.conn.execute(stmt)
            tx.conn.execute("DELETE FROM schema_version")
            tx.conn.execute(f"INSERT INTO schema_version (version) VALUES ({latest})")

        self._atomic(op)

    def configure(self, profile: WorkerProfile) -> None:
        self.worker.configure(profile)

    def close(self) -> None:
        self.io.close()

    # -- graphs and tasks -------------------------------------------------------------------------
    def open_graph(
        self,
        graph: GraphSpec,
        now: float,
        *,
        replace: bool = False,
        fingerprints: GraphFingerprints | None = None,
    ) -> OpenedGraph:
        from conveyor.store import sqlfp

        fps = fingerprints
        rows = [] if fps is None else sqlfp.file_rows(self.db, fps)
        opened = self._atomic(lambda tx: self.submissions.open(tx, graph, now, replace, fps, rows))
        if opened.added:
            self.io.after_bulk_load()
        if opened.resumed:
            self.reap_expired(now)  # tasks of crashed workers run again
        return opened

    def file_hashes(self) -> dict[str, tuple[int, int, str]]:
        from conveyor.store import sqlfp

        return sqlfp.file_hashes(self.db)

    def plan_graph(self, graph: GraphSpec, fingerprints: GraphFingerprints) -> list[Decision]:
        from conveyor.store import sqlfp

        return sqlfp.plan(self.db, graph, fingerprints)

    def graph_name(self) -> str | None:
        return self.meta_get("graph")

    def submit_children(self, parent: Claim, tasks: list[TaskSpec], now: float) -> list[str]:
        return self._atomic(lambda tx: self.submissions.children(tx, parent, tasks, now))

    # -- the claim/complete cycle -----------------------------------------------------------------
    def claim(
        self, worker: str, limit: int, now: float, lease_s: float, offer: Offer | None = None
    ) -> list[Claim]:
        return self.claims.claim(worker, limit, now, lease_s, offer)

    def claim_one(self, worker: str, now: float, lease_s: float) -> Claim | None:
        return self.claims.claim_one(worker, now, lease_s)

    def complete(self, claim: Claim, value: Any, now: float) -> bool:
        return self.claims.complete(claim, value, now)

    def claims_ahead(self) -> int:
        return self.claims.ahead

    def complete_many(
        self, done: Sequence[tuple[Claim, Any]], now: float, *, refill: int = 0
    ) -> list[bool]:
        return self.claims.complete_many(done, now, refill)

    def fail(self, claim: Claim, error: str, now: float, retry_at: float | None) -> bool:
        return self.claims.fail(claim, error, now, retry_at)

    def release(self, claim: Claim, now: float) -> bool:
        return self.claims.release(claim, now)

    def hand_back(self, claims: Sequence[Claim], now: float, reason: str) -> list[bool]:
        return self.claims.hand_back(claims, now, reason)

    def preempt(self, claims: Sequence[Claim], now: float, waiting: str) -> list[bool]:
        return self.claims.preempt(claims, now, waiting)

    def borrowing(self, running: Mapping[str, int], total: int) -> frozenset[str]:
        return borrowing(self.db, running, total)

    def age_ready(self, now: float) -> int:
        return self.aging.age(self.db, self._atomic, now)

    def plan_preemptions(self, now: float, policy: PreemptPolicy) -> int:
        return self.preempts.plan(self.db, self._atomic, now, policy)

    def preempt_requests(self, worker: str) -> dict[int, tuple[int, str]]:
        return preempt_requests(self.db, worker)

    def release_buffered(self, now: float) -> int:
        return self.claims.release_buffered(now)

    # -- leases and workers -----------------------------------------------------------------------
    def register_worker(self, worker: str, now: float, info: Mapping[str, Any]) -> None:
        self.worker.name = worker
        self.adm.refresh()
        self._atomic(lambda tx: self.leases.register(tx, worker, now, info))

    def unregister_worker(self, worker: str, now: float) -> None:
        self.release_buffered(now)

        def op(tx: Tx) -> None:
            tx.run("worker_left", name=worker, now=now)
            # Idle workers look again at once (PostgreSQL: NOTIFY): a worker leaves when the
            # graph is finished, and the last completion readies nothing that would wake
            # them; without this each waited out its poll (up to idle.MAX_POLL) to see it.
            tx.notify = True

        self._atomic(op)

    def heartbeat(self, worker: str, now: float, lease_s: float) -> int:
        self.worker.lease_s = lease_s
        self.adm.refresh()  # a later submission may have switched admission on
        return self._atomic(lambda tx: self.leases.heartbeat(tx, worker, now, lease_s))

    def reap_expired(self, now: float) -> list[str]:
        admission = self.adm.on
        return self._atomic(lambda tx: self.leases.reap(tx, now, admission))

    def wait_for_work(self, timeout: float) -> bool:
        return self.io.wait_for_work(timeout)

    # -- admission --------------------------------------------------------------------------------
    @property
    def admission(self) -> bool:
        return self.adm.on

    def explain(self, task_id: str, now: float, offers: list[Offer] | None = None) -> Reason:
        return self.explainer.explain(self.db, task_id, now, offers, self.adm.on)

    def report_endpoints(self, worker: str, now: float, stats: Mapping[str, Any]) -> None:
        self._atomic(lambda tx: sqladmin.report_endpoints(tx, worker, now, stats))

    def endpoint_reports(self, now: float, within: float) -> dict[str, dict[str, Any]]:
        return sqladmin.endpoint_reports(self.db, now, within)

    def report_runtimes(self, worker: str, stats: Mapping[str, Sequence[float]]) -> None:
        self._atomic(lambda tx: sqladmin.report_runtimes(tx, worker, stats))

    def runtime_reports(self) -> dict[str, dict[str, list[float]]]:
        return sqladmin.runtime_reports(self.db)

    # -- queries ----------------------------------------------------------------------------------
    def next_wakeup(self) -> float | None:
        v = self.db.scalar("next_wakeup")
        return None if v is None else float(v)

    def unfinished(self) -> int:
        return int(self.db.scalar("unfinished") or 0)

    def has_running(self) -> bool:
        """An index probe (``tasks_running``), not a count. Releases still owed
        (``SqlIo.owes_releases``) are work on its way too, and they are folded here: the
        caller found nothing to claim, and a child whose last decrement is owed becomes ready
        only once someone folds it (completions do, but none may be coming)."""
        if self.db.io.owes_releases and self.db.rows("any_owed"):
            if not self.db.io.readonly:
                self._atomic(lambda tx: fold_owed(tx, self.clock.wall()))
            return True
        return bool(self.db.rows("any_running"))

    def has_unfinished(self) -> bool:
        """Whether any task is still to finish: an index probe, not a count of all tasks."""
        return bool(self.db.rows("any_unfinished"))

    def counts(self) -> dict[str, int]:
        out = {s.label: 0 for s in TaskState}
        for state, n in self.db.rows("counts"):
            out[TaskState(state).label] = int(n)
        return out

    def parent_values(self, claim: Claim) -> dict[str, Any]:
        if not claim.parents:
            return {}
        decode = self.codec.decode
        rows = self.db.rows("results_of", ids=self.db.as_list(list(claim.parents)))
        return {tid: decode(kind, data) for tid, kind, data in rows}

    def result(self, task_id: str, *, value: bool = True) -> TaskResult:
        rows = self.db.rows("result_of", id=task_id)
        if not rows:
            raise GraphError(f"unknown task {task_id!r}")
        state, kind, data, error, attempt = rows[0]
        v = self.codec.decode(kind, data) if value and state == TaskState.DONE else None
        return TaskResult(task_id, TaskState(state), v, error, attempt)

    def history(self, task_id: str) -> list[dict[str, Any]]:
        return [event for _id, event in self.db.events("history", task=task_id)]

    def status(self, now: float) -> dict[str, Any]:
        st = {**sqladmin.status(self.db, now), **self.explainer.summary(self.db, now, self.adm.on)}
        if st["unfinished"] and none_can_start(st["counts"]["running"], st["reasons"]):
            st["eta_s"] = None  # the last minute's rate says nothing of tasks that cannot start
        return st

    def task_info(self, task_id: str) -> dict[str, Any]:
        return sqlviews.task_info(self.db, task_id)

    def task_ids(self, states: Sequence[str], limit: int) -> list[str]:
        return sqlviews.task_ids(self.db, states, limit)

    def task_groups(self, ids: Sequence[str]) -> dict[str, str]:
        return sqlviews.task_groups(self.db, ids)

    def worker_rows(self, now: float) -> list[dict[str, Any]]:
        return sqlviews.worker_rows(self.db, now)

    def events_after(self, after: int, limit: int = 1000) -> list[tuple[int, dict[str, Any]]]:
        return list(self.db.events("audit_after", after=after, limit=limit))

    def event_feed(self) -> EventFeed:
        return SqlEventFeed(self.db)

    # -- administration ---------------------------------------------------------------------------
    def meta_get(self, key: str) -> str | None:
        value = self.db.scalar("meta_get", key=key)
        return None if value is None else str(value)

    def meta_set(self, key: str, value: str) -> None:
        self._atomic(lambda tx: tx.run("meta_set", key=key, value=value))

    def retry(self, ids: list[str] | None, now: float) -> list[str]:
        return self._atomic(lambda tx: sqladmin.retry(tx, ids, now))

    def prune(self, keep: int) -> int:
        return self._atomic(lambda tx: sqladmin.prune(tx, keep))

    def prune_results(self) -> tuple[int, int]:
        d = self.codec.results_dir
        if d is None:
            return 0, 0
        return self._atomic(lambda tx: sqladmin.prune_results(tx, d))
