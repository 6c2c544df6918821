"""The ``Store`` interface every backend implements: everything its callers need, nothing more.

A store owns task state and its transitions; each public mutating method is one transaction
(memory: one call under the engine's single thread; SQL: one short transaction) that also
writes its audit rows. Stores emit events for committed transitions only, through ``emit``.

Rules every store follows (checked by ``tests/test_store_contract.py`` on every backend):
- a task is claimable only when all its parents are done, in depth-first key order;
- ``complete``/``fail`` with a claim whose lease was taken over return ``False`` and change
  nothing (fencing by ``Claim.token``);
- a completion touches only the task's children (no scans of all tasks).

Size: it is the interface: most of its lines are the methods' contracts (docstrings) that every
store and the contract suite follow, plus the records they return.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from conveyor.clock import SYSTEM_CLOCK, Clock
from conveyor.core.offer import Offer
from conveyor.core.ordering import DEFAULT_BAND
from conveyor.errors import StoreError
from conveyor.events import EventSink
from conveyor.model import EMPTY, GraphSpec, TaskResult, TaskSpec

if TYPE_CHECKING:  # (not imported by a plain in-memory run: fingerprints are for durable
    # stores, why-pending reasons and preemption for graphs and commands that ask for them)
    from conveyor.core.explain import Reason
    from conveyor.core.fingerprint import Decision, Parts
    from conveyor.core.preempt import PreemptPolicy


@dataclass(slots=True)
class Claim:
    """A task handed to one worker: run it, then report with this claim (its lease token)."""

    spec: TaskSpec
    attempt: int
    token: int  # lease generation: a completion with an outdated token is refused
    handle: int  # the store's own handle of the task (index or row id)
    depth: int = 0
    parents: tuple[str, ...] = ()
    #: The store's notes on the claim; ``"finished"``: when the task ended, if it is recorded
    #: later (group commit), so the store can tell how long tasks run; ``"preempted"``:
    #: ``(times, last_at)`` when the task was preempted before (anti-thrash and aging).
    extra: dict[str, Any] = field(default_factory=dict)
    #: The task's priority band (``core/ordering.py``; a lower number runs first).
    band: int = DEFAULT_BAND

    @property
    def id(self) -> str:
        return self.spec.id


@dataclass(frozen=True, slots=True)
class OpenedGraph:
    name: str
    added: int  # tasks new to the store
    resumed: bool  # the store already held this graph
    unfinished: int


@dataclass(frozen=True, slots=True)
class GraphFingerprints:
    """Fingerprint parts a caller computed for a graph (``conveyor.fingerprints``), handed to
    the store so that the store never imports user code or reads input files itself."""

    #: Every task's parts by task id.
    parts: Mapping[str, Parts]
    #: ``path -> (mtime_ns, size, digest)`` of every input file the caller hashed; the store
    #: remembers them so the next run skips files whose mtime and size did not change.
    files: Mapping[str, tuple[int, int, str]] = field(default_factory=dict)
    #: Declared outputs missing on disk, by task id (only tasks with missing outputs).
    missing: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WorkerProfile:
    """How one worker claims through its store handle (set once with ``Store.configure``)."""

    #: What this worker offers: a task with labels runs only where they all match.
    labels: Mapping[str, Any] = field(default_factory=lambda: EMPTY)
    #: What this worker has; a task with resources runs where they fit. ``None``: resources
    #: are not accounted and the worker takes any task.
    resources: Mapping[str, float] | None = None
    #: Most tasks one claim transaction takes (``None``: the store's default).
    max_batch: int | None = None
    #: Complete no-op tasks inside the transaction that claims them. Off for the loop API
    #: (``conveyor.worker``), where the loop body is the work of every task.
    complete_noops: bool = True
    #: Lease length, for claims a store takes ahead (batches) and for heartbeats.
    lease_s: float = 30.0

    def offer(self, slots: int) -> Offer:
        """What this worker offers a claim that brings no offer of its own: ``slots`` free
        slots, its labels, and its resources as if idle."""
        res = dict(self.resources or {})
        return Offer(slots, res, dict(self.labels), slots, res)


class EventFeed:
    """Reads a store's audit trail as it grows (``conveyor events --follow``): each ``poll``
    returns, oldest first, the events committed since the last one that it has not returned.
    This one pages by id (``Store.events_after``); the SQL stores' also waits for rows that
    commit out of id order (``store/sqlfeed.py``)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.after = 0

    def poll(self, limit: int = 1000) -> list[dict[str, Any]]:
        got = self.store.events_after(self.after, limit)
        if got:
            self.after = got[-1][0]
        return [event for _, event in got]


class Store(abc.ABC):
    """One backend. Methods take ``now`` (unix seconds): the caller's time, which decides
    leases and retries. A shared store also stamps each audit row with the later of ``now``
    and its ``clock`` read inside the transaction, so that the trail is causal across
    processes: a waiter's ``now`` was read before it got the lock, and a child can only start
    after its parent's transaction committed.

    Every caller (engine, worker loop, CLI, dashboard) uses only what is declared here.
    Methods with a body are optional capabilities with a sensible default for a store that
    does not have them. The memory store lives in one process: it has no leases (``heartbeat``,
    ``reap_expired``), no audit table (``events_after``, ``prune``) and nothing to resume
    (``file_hashes``, ``plan_graph``, ``retry``). The durable stores are shared by processes:
    they keep unfinished work for a resume (``cancel_unfinished``), leave endpoint caps to each
    process (``endpoints``) and judge fit by ``explain`` (``unfit``).
    """

    #: The store's name in messages (a password in it shown as ``***``).
    url: str = ""
    #: The URL that opens this store again, secrets included (a heartbeat's own connection):
    #: never printed. Empty when the store was not opened from a URL.
    open_url: str = ""
    emit: EventSink | None = None
    #: Stamps audit rows inside transactions (shared stores; ``open_store(clock=...)``).
    clock: Clock = SYSTEM_CLOCK
    #: Whether other processes may share this store (SQL: yes; memory: no).
    shared: bool = False

    # -- setup ----------------------------------------------------------------------------------
    def configure(self, profile: WorkerProfile) -> None:
        """Set how this handle's worker claims (labels, resources, batch size, no-ops)."""

    # -- graphs and tasks ------------------------------------------------------------------
    @abc.abstractmethod
    def open_graph(
        self,
        graph: GraphSpec,
        now: float,
        *,
        replace: bool = False,
        fingerprints: GraphFingerprints | None = None,
    ) -> OpenedGraph:
        """Submit ``graph``, or resume it when the store holds the same name. With
        ``fingerprints`` (durable stores; docs/incremental.md) a resume also runs again what
        changed and its downstream; without them a resume runs only what is unfinished."""

    def file_hashes(self) -> dict[str, tuple[int, int, str]]:
        """Input-file hashes remembered from earlier runs (``path -> (mtime_ns, size,
        digest)``), for the caller computing fingerprints."""
        return {}

    def plan_graph(self, graph: GraphSpec, fingerprints: GraphFingerprints) -> list[Decision]:
        """What ``open_graph`` would run again and why, per task in graph order; changes
        nothing."""
        raise StoreError(f"{self.url}: this store remembers no earlier runs to plan against")

    def graph_name(self) -> str | None:
        """The name of the graph the store holds (``None`` when empty)."""
        return None

    @abc.abstractmethod
    def submit_children(self, parent: Claim, tasks: list[TaskSpec], now: float) -> list[str]:
        """Add tasks submitted at run time by ``parent``: one level deeper, same root order."""

    # -- the claim/complete cycle ---------------------------------------------------------------
    @abc.abstractmethod
    def claim(
        self, worker: str, limit: int, now: float, lease_s: float, offer: Offer | None = None
    ) -> list[Claim]:
        """Hand up to ``limit`` ready tasks to ``worker``, best key first, leased until
        ``now + lease_s``. Due retries become claimable first. With an ``offer`` (free slots,
        resources, labels of the worker right now) admission decides what fits."""

    def claim_one(self, worker: str, now: float, lease_s: float) -> Claim | None:
        """The hot path of ``claim`` for one task with no offer."""
        got = self.claim(worker, 1, now, lease_s)
        return got[0] if got else None

    def finish_noops(self, worker: str, now: float, limit: int) -> int:
        """Claim and complete at once up to ``limit`` ready no-op tasks (neither ``fn`` nor
        ``cmd``) at the head of the ready order, as ``claim_one`` and then ``complete(claim,
        None)`` would each; stop at the first ready task that is not a no-op (``claim_one``
        hands it out next). Returns how many. A store with no cheaper way than that returns
        0 (the default): the caller claims and completes them one by one."""
        return 0

    @abc.abstractmethod
    def complete(self, claim: Claim, value: Any, now: float) -> bool:
        """Record success; children whose parents are all done become ready. ``False`` if the
        lease was taken over (nothing recorded)."""

    def claims_ahead(self) -> int:
        """Tasks this handle claimed in a batch and has not handed out yet: ``claim_one`` hands
        them out without a transaction."""
        return 0

    def complete_many(
        self, done: Sequence[tuple[Claim, Any]], now: float, *, refill: int = 0
    ) -> list[bool]:
        """``complete`` for several claims at once, in order; one flag each. A durable store
        records them in one transaction (one commit, one lock hand-off for the lot). ``refill``
        says the caller will claim that many tasks next with ``claim_one``: a store may claim
        them in the same transaction (children these completions made ready included) and
        hand them out from ``claim_one`` without another transaction."""
        return [self.complete(claim, value, now) for claim, value in done]

    @abc.abstractmethod
    def fail(self, claim: Claim, error: str, now: float, retry_at: float | None) -> bool:
        """Record a failed attempt: back to ready at ``retry_at``, or failed for good (and its
        downstream skipped) when ``retry_at`` is None. ``False`` if the lease was taken over."""

    @abc.abstractmethod
    def release(self, claim: Claim, now: float) -> bool:
        """Give a claimed task back unrun (shutdown); it keeps its key and attempt count."""

    def hand_back(self, claims: Sequence[Claim], now: float, reason: str) -> list[bool]:
        """Hand tasks this worker is running back at once (a signal, its time limit), one flag
        per claim: each goes back to ready, claimable by any worker at once, with a
        ``task_released`` event giving ``reason``. Not a failure: its attempt count, retries
        and lost-lease budget are as before the claim. A completion or failure still to come
        under one of these claims is refused (fencing); ``False`` for a claim whose lease was
        taken over. This default (a store with no audit trail) gives them back as ``release``
        does."""
        return [self.release(c, now) for c in claims]

    def preempt(self, claims: Sequence[Claim], now: float, waiting: str) -> list[bool]:
        """Take running tasks back so that the higher-band task ``waiting`` can start, one flag
        per claim: as ``hand_back`` (ready again with their original key, the attempt given
        back, not a failure; a later report under the claim is refused), recorded as
        ``task_preempted`` (``by``: ``waiting``), and counted for anti-thrash and aging: the
        task's next claims carry ``extra["preempted"] = (times, last_at)``. This default (a
        store with no audit trail) gives them back as ``hand_back`` does."""
        return self.hand_back(claims, now, "preempted")

    def ready_heads(self, below_band: int, limit: int) -> list[tuple[str, int]]:
        """Up to ``limit`` ready tasks of a band higher than ``below_band`` (a smaller number),
        best key first, as ``(task id, band)``: what preemption may make room for. Cheap when
        there is none (O(1) for the memory store's heap). Default: none."""
        return []

    def age_ready(self, now: float) -> int:
        """Aging: ready tasks of a band below the default that waited ``ordering.AGE_AFTER_S``
        order as the default band from now on (so higher-band work never starves them for
        ever); returns how many. Called on every engine tick: cheap when there is nothing to
        age, and rate-limited by the SQL stores. Default: none."""
        return 0

    def borrowing(self, running: Mapping[str, int], total: int) -> frozenset[str]:
        """The groups that run beyond their fair share of ``total`` slots, given how many tasks
        each group runs (``core/borrow.borrowing``, with the store's group weights and which
        groups have work): preemption takes their slots back first. Default: none."""
        return frozenset()

    def plan_preemptions(self, now: float, policy: PreemptPolicy) -> int:
        """Shared stores: decide, for every worker at once and in one transaction, which
        running tasks to take back for ready tasks of a higher band that fit a worker with no
        free slot (``core/preempt.choose_preemptions``; requests already pending count as
        freed slots), and record a request per victim for its worker; how many. A store with
        one engine (memory) has nothing to record: that engine decides itself. Default: 0."""
        return 0

    def preempt_requests(self, worker: str) -> dict[int, tuple[int, str]]:
        """The preemption requests for ``worker``'s running tasks, ``handle -> (token, the
        waiting task)``: the worker cancels them and gives them back with ``preempt``, which
        ends each request. Default: none."""
        return {}

    def release_buffered(self, now: float) -> int:
        """Give back tasks claimed ahead in a batch and not yet handed out; returns how many."""
        return 0

    def cancel_unfinished(self, now: float, reason: str = "interrupted") -> int:
        """Cancel every task not yet started (an in-process run stopped by Ctrl-C or
        ``fail_fast``), each with a ``task_cancelled`` event giving ``reason``; how many. A
        shared store keeps them for the next run: 0."""
        return 0

    def heartbeat(self, worker: str, now: float, lease_s: float) -> int:
        """Renew every lease ``worker`` holds; returns how many. Memory: nothing to do."""
        return 0

    def reap_expired(self, now: float) -> list[str]:
        """Make tasks whose lease expired claimable again. Memory: leases never expire."""
        return []

    def wait_for_work(self, timeout: float) -> bool:
        """Block up to ``timeout`` s for a sign that work may be claimable (PostgreSQL: NOTIFY).
        Returns ``False`` at once when the store has no such signal; the engine then polls."""
        return False

    def register_worker(self, worker: str, now: float, info: Mapping[str, Any]) -> None:
        """Note a worker joining (for status); idempotent."""

    def unregister_worker(self, worker: str, now: float) -> None:
        """Note a worker leaving cleanly."""

    # -- admission and endpoints ------------------------------------------------------------
    @property
    def admission(self) -> bool:
        """Whether claims go through admission (groups, caps, labels, resources, gangs,
        endpoints); ``False`` keeps the single-heap fast path."""
        return False

    @abc.abstractmethod
    def explain(self, task_id: str, now: float, offers: list[Offer] | None = None) -> Reason:
        """Why ``task_id`` is not running now: one dominant reason with numbers. ``offers``:
        the workers to judge fit against (``None``: the workers the store knows)."""

    def unfit(self, offer: Offer, now: float) -> str | None:
        """A message naming a task that can never run on a worker offering ``offer`` even
        when idle, or ``None``. For in-process runs where one engine is the only worker;
        shared stores answer ``None`` and ``explain`` says ``never_fits`` instead."""
        return None

    def endpoints(self) -> list[str]:
        """Endpoint keys that tasks in the store call (for the engine to follow limits). The
        durable stores ignore endpoints for admission (docs/fairness.md): ``[]``."""
        return []

    def set_endpoint_cap(self, endpoint: str, cap: int) -> None:
        """Let at most ``cap`` tasks calling ``endpoint`` start (per worker)."""

    def report_endpoints(self, worker: str, now: float, stats: Mapping[str, Any]) -> None:
        """Publish one worker's endpoint limiter statistics for ``status`` and for the other
        workers (``endpoint_reports``)."""

    def endpoint_reports(self, now: float, within: float) -> dict[str, dict[str, Any]]:
        """Worker -> ``{endpoint key: statistics}`` as last reported, for the workers that
        reported in the last ``within`` seconds: how processes sharing an endpoint learn of
        each other (``runtime/endpoints.py``). A store no other process shares: ``{}``."""
        return {}

    def report_runtimes(self, worker: str, stats: Mapping[str, Sequence[float]]) -> None:
        """Publish how long one worker's tasks ran, per task kind: ``{key: [runs, total
        seconds, longest]}`` (``core/timelimit.py``), for workers near their end to judge
        tasks that declare no ``expected_s`` (``runtime/runtimes.py``)."""

    def runtime_reports(self) -> dict[str, dict[str, list[float]]]:
        """Worker -> its last ``report_runtimes``, for every worker that ever reported (the
        runs of a worker that left still tell). A store no other process shares: ``{}``."""
        return {}

    # -- queries ------------------------------------------------------------------------------
    @abc.abstractmethod
    def next_wakeup(self) -> float | None:
        """Unix time at which the earliest waiting retry becomes claimable, if any."""

    @abc.abstractmethod
    def unfinished(self) -> int:
        """Tasks not yet done, failed, skipped or cancelled."""

    def has_running(self) -> bool:
        """Whether a task runs anywhere, under any worker's lease (one whose lease expired
        counts until it is reaped): its end may make work ready (``runtime/idle.py``)."""
        return self.counts().get("running", 0) > 0

    def has_unfinished(self) -> bool:
        """Whether any task is still to finish (cheaper than ``unfinished()`` on SQL stores)."""
        return self.unfinished() > 0

    @abc.abstractmethod
    def counts(self) -> dict[str, int]:
        """Tasks by state label (``pending``, ``ready``, ``running``, ``done`` ...)."""

    @abc.abstractmethod
    def parent_values(self, claim: Claim) -> dict[str, Any]:
        """Results of the claimed task's parents, by parent id."""

    @abc.abstractmethod
    def result(self, task_id: str, *, value: bool = True) -> TaskResult:
        """The latest state and result of one task. ``value=False`` leaves the value out
        (``None``) and decodes nothing: what read-only commands ask, since decoding may
        unpickle and a store may come from someone else (``store/codec.py``)."""

    def history(self, task_id: str) -> list[dict[str, Any]]:
        """The audit trail of one task, oldest first."""
        return []

    def status(self, now: float) -> dict[str, Any]:
        """A summary for people and dashboards: ``graph``, ``total``, ``unfinished``,
        ``counts`` (by state), ``groups`` (counts by group and state), ``workers`` and
        ``workers_alive``, ``tasks_per_s``, ``eta_s``, ``endpoints``, ``reasons`` (counts by
        ``explain`` code) and ``group_shares``. May scan."""
        counts = self.counts()
        unfinished = self.unfinished()
        return {
            "graph": self.graph_name(), "total": sum(counts.values()), "unfinished": unfinished,
            "counts": counts, "groups": {}, "workers": [], "workers_alive": 0,
            "tasks_per_s": 0.0, "eta_s": None, "endpoints": {}, "reasons": {},
            "group_shares": {},
        }  # fmt: skip

    def task_info(self, task_id: str) -> dict[str, Any]:
        """One task for people (the dashboard's task page): ``id``, ``state``, ``group``,
        ``attempt``, ``lost``, ``worker``, ``error``, ``updated``, ``not_before``,
        ``parents`` and ``children`` (ids, submit order), ``fingerprint`` (``None`` when the
        task was submitted without one) and ``spec``: the fields set on the task as stored
        (JSON, pickled arguments left out). Raises ``GraphError`` for an unknown id. Shows
        everything, ``env`` values included: a viewer decides what to hide."""
        raise StoreError(f"{self.url}: this store keeps no task details")

    def task_ids(self, states: Sequence[str], limit: int) -> list[str]:
        """Ids of up to ``limit`` tasks in these states (labels), in submit order."""
        return []

    def task_groups(self, ids: Sequence[str]) -> dict[str, str]:
        """The group of each of ``ids`` that the store knows."""
        return {}

    def worker_rows(self, now: float) -> list[dict[str, Any]]:
        """Every worker the store has seen, in joining order: ``worker``, ``host``, ``pid``,
        ``joined``, ``last_seen``, ``lease_s``, ``state`` (``alive``, ``left`` or ``lost``: a
        worker whose lease passed unrenewed is lost even before a reap says so), ``info``
        (slots, labels, resources, SLURM ids) and ``tasks`` (what it runs now)."""
        return []

    def events_after(self, after: int, limit: int = 1000) -> list[tuple[int, dict[str, Any]]]:
        """Audit rows with an id above ``after``, oldest first, as ``(id, event)``."""
        return []

    def event_feed(self) -> EventFeed:
        """A reader that follows the audit trail from its start (see ``EventFeed``)."""
        return EventFeed(self)

    def iter_events(self) -> Iterator[dict[str, Any]]:
        """The whole audit trail as events, oldest first."""
        after = 0
        while got := self.events_after(after):
            after = got[-1][0]
            for _, event in got:
                yield event

    # -- administration -------------------------------------------------------------------------
    def meta_get(self, key: str) -> str | None:
        """A value the store keeps beside the graph (e.g. ``graph_dir``)."""
        return None

    def meta_set(self, key: str, value: str) -> None:
        """Keep ``value`` under ``key`` beside the graph."""

    def retry(self, ids: list[str] | None, now: float) -> list[str]:
        """Make failed (or cancelled) tasks claimable again and un-skip what their failure
        skipped. ``ids=None``: every failed task. Returns the ids made claimable. The memory
        store refuses (``StoreError``): its run ends with its process."""
        raise StoreError(f"{self.url}: this store does not retry finished runs")

    def prune(self, keep: int) -> int:
        """Delete all but the newest ``keep`` audit rows of each task; returns how many went."""
        return 0

    def prune_results(self) -> tuple[int, int]:
        """Remove result files that no task's result names any more (tasks run again, graphs
        replaced, writers that crashed); returns ``(files, bytes)`` removed."""
        return 0, 0

    def close(self) -> None:
        """Release connections and files."""
