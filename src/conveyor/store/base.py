"""The ``Store`` interface every backend implements, and ``open_store(url)``.

A store owns task state and its transitions; each public mutating method is one transaction
(memory: one call under the engine's single thread; SQL: one short transaction) that also
writes its audit rows. Stores emit events for committed transitions only, through ``emit``.

Rules every store follows (checked by ``tests/test_store_contract.py`` on every backend):
- a task is claimable only when all its parents are done, in depth-first key order;
- ``complete``/``fail`` with a claim whose lease was taken over return ``False`` and change
  nothing (fencing by ``Claim.token``);
- a completion touches only the task's children (no scans of all tasks).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from conveyor.errors import StoreError
from conveyor.events import EventSink
from conveyor.model import GraphSpec, TaskResult, TaskSpec


@dataclass(slots=True)
class Claim:
    """A task handed to one worker: run it, then report with this claim (its lease token)."""

    spec: TaskSpec
    attempt: int
    token: int  # lease generation: a completion with an outdated token is refused
    handle: int  # the store's own handle of the task (index or row id)
    depth: int = 0
    parents: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.spec.id


@dataclass(frozen=True, slots=True)
class OpenedGraph:
    name: str
    added: int  # tasks new to the store
    resumed: bool  # the store already held this graph
    unfinished: int


class Store(abc.ABC):
    """One backend. Methods take ``now`` (unix seconds) instead of reading a clock."""

    url: str = ""
    emit: EventSink | None = None
    #: Whether other processes may share this store (SQL: yes; memory: no).
    shared: bool = False

    # -- graphs and tasks ------------------------------------------------------------------
    @abc.abstractmethod
    def open_graph(
        self,
        graph: GraphSpec,
        now: float,
        *,
        replace: bool = False,
        fingerprints: bool = True,
        functions: Mapping[str, Callable[..., Any]] | None = None,
    ) -> OpenedGraph:
        """Submit ``graph``, or resume it when the store holds the same name. With
        ``fingerprints`` (durable stores; docs/incremental.md) a resume also runs again what
        changed and its downstream; ``functions`` are the callables of tasks by id."""

    @abc.abstractmethod
    def submit_children(self, parent: Claim, tasks: list[TaskSpec], now: float) -> list[str]:
        """Add tasks submitted at run time by ``parent``: one level deeper, same root order."""

    # -- the claim/complete cycle ---------------------------------------------------------------
    @abc.abstractmethod
    def claim(self, worker: str, limit: int, now: float, lease_s: float) -> list[Claim]:
        """Hand up to ``limit`` ready tasks to ``worker``, best key first, leased until
        ``now + lease_s``. Due retries become claimable first."""

    @abc.abstractmethod
    def complete(self, claim: Claim, value: Any, now: float) -> bool:
        """Record success; children whose parents are all done become ready. ``False`` if the
        lease was taken over (nothing recorded)."""

    @abc.abstractmethod
    def fail(self, claim: Claim, error: str, now: float, retry_at: float | None) -> bool:
        """Record a failed attempt: back to ready at ``retry_at``, or failed for good (and its
        downstream skipped) when ``retry_at`` is None. ``False`` if the lease was taken over."""

    @abc.abstractmethod
    def release(self, claim: Claim, now: float) -> bool:
        """Give a claimed task back unrun (shutdown); it keeps its key and attempt count."""

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

    def register_worker(self, worker: str, now: float, info: dict[str, Any]) -> None:
        """Note a worker joining (for status); idempotent."""

    def unregister_worker(self, worker: str, now: float) -> None:
        """Note a worker leaving cleanly."""

    # -- queries ------------------------------------------------------------------------------
    @abc.abstractmethod
    def next_wakeup(self) -> float | None:
        """Unix time at which the earliest waiting retry becomes claimable, if any."""

    @abc.abstractmethod
    def unfinished(self) -> int:
        """Tasks not yet done, failed, skipped or cancelled."""

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
    def result(self, task_id: str) -> TaskResult:
        """The latest state and result of one task."""

    def history(self, task_id: str) -> list[dict[str, Any]]:
        """The audit trail of one task, oldest first."""
        return []

    def close(self) -> None:
        """Release connections and files."""


def open_store(url: str | None, *, emit: EventSink | None = None) -> Store:
    """Open the store named by ``url`` (``None`` or ``memory://`` for an in-process store)."""
    if url is None or url in ("memory://", "memory", ":memory:"):
        from conveyor.store.memory import MemoryStore

        store: Store = MemoryStore()
    elif url.startswith("sqlite://"):
        from conveyor.store import sqlite

        store = sqlite.SqliteStore.from_url(url)
    elif url.startswith(("postgresql://", "postgres://")):
        from conveyor.store import postgres

        store = postgres.PostgresStore.from_url(url)
    else:
        raise StoreError(
            f"unknown store URL {url!r}: use memory://, sqlite:///path/run.db or postgresql://..."
        )
    store.emit = emit
    return store
