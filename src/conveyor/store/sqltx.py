"""Transactions of the SQL stores: what a backend supplies (``SqlIo``), one write transaction
with its audit rows (``Tx``), and the runner that commits it and emits its events (``Db``).

``SqlIo`` is the only place that knows a driver: SQLite and PostgreSQL implement it (connections,
locks, the way a list travels as a parameter, bulk inserts). The collaborators of ``SqlStore``
(claims, admission, fingerprints, admin ...) take a ``Tx`` for writes and a ``Reads`` (a ``Tx``,
or the ``Db`` outside transactions) for reads, and know nothing of drivers or of each other's
state.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import AbstractContextManager
from itertools import chain
from typing import Any, ClassVar, Concatenate, Literal, ParamSpec, Protocol, TypeVar

from conveyor.clock import Clock
from conveyor.events import EventSink
from conveyor.model import TaskState
from conveyor.store.sqlqueries import load_queries

T = TypeVar("T")
P = ParamSpec("P")
#: What a transaction may lock besides rows: submissions, every task (a resume), admission.
Lock = Literal["graph", "tasks", "admission"]
_LABELS = [s.label for s in TaskState]
_RETRIES = 20  # attempts of a transaction the database asked to run again (deadlock)


class SqlIo(abc.ABC):
    """One backend's I/O and dialect: connections, locks, parameters. Nothing here knows tasks."""

    dialect: ClassVar[str]
    #: Type names the schema's ``{SEQ}``, ``{REAL}`` ... stand for in this dialect.
    types: ClassVar[tuple[tuple[str, str], ...]]
    #: Rounds of claim-and-complete-no-ops in one claim transaction. SQLite has one writer at a
    #: time, so longer transactions mean fewer hand-offs; PostgreSQL lets workers run side by
    #: side, and one round keeps each transaction's row locks in one sorted batch.
    claim_rounds: ClassVar[int] = 1 << 30
    #: Whether a claim locks every row of the ready window it reads (PostgreSQL: ``FOR UPDATE
    #: SKIP LOCKED``). Then the window is kept to what the claim will take: a row locked and
    #: not taken is written (its lock) and skipped by every other worker's claim.
    locks_window: ClassVar[bool] = False

    def __init__(self, url: str, *, readonly: bool = False) -> None:
        self.url = url
        self.queries = load_queries(self.dialect)
        #: Opened for reading only (``open_store(readonly=True)``: a viewer such as the
        #: dashboard): every write transaction is refused.
        self.readonly = readonly

    @abc.abstractmethod
    def begin(self) -> AbstractContextManager[Any]:
        """A write transaction on a connection: commits on exit, rolls back on error."""

    @abc.abstractmethod
    def read(self, name: str, params: dict[str, Any]) -> list[Any]:
        """Rows of one named read-only query, outside any write transaction."""

    #: Whether a claim reads its tasks' specs in the statement that claims them
    #: (``claim_seqs_specs``: one round trip fewer per claim on PostgreSQL).
    specs_in_claim: ClassVar[bool] = False

    #: Whether a completion's children are released last in its transaction (PostgreSQL: a
    #: child's row lock is held to the commit, and a child with hundreds of parents is
    #: contended by every worker; SQLite's one writer lock makes the order moot).
    release_last: ClassVar[bool] = False

    #: Whether a release may leave decrements owed (``owed``, schema migration 6) instead of
    #: waiting for a child row another transaction holds (PostgreSQL: the ``RELEASE_OWED``
    #: queries; someone folds them later: ``sqlsteps.fold_owed``). SQLite's one writer never
    #: finds a row held.
    owes_releases: ClassVar[bool] = False

    @abc.abstractmethod
    def as_list(self, values: list[Any]) -> Any:
        """A list as a query parameter (SQLite: JSON text for json_each; PG: an array)."""

    @abc.abstractmethod
    def schema_version(self) -> int:
        """0 for an empty database; refuses (``StoreCorruptError``) one with other tables."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close connections and files; idempotent."""

    def retryable(self, exc: BaseException) -> bool:
        """Whether ``exc`` means "run the transaction again" (PG deadlock, serialization)."""
        return False

    def notify(self, conn: Any) -> None:
        """Signal idle workers inside a transaction (PostgreSQL NOTIFY); SQLite has none."""

    def lock(self, conn: Any, what: Lock) -> None:
        """Hold ``what`` to the end of the transaction (SQLite's writer lock already does)."""

    def insert_rows(self, conn: Any, name: str, rows: list[dict[str, Any]]) -> None:
        """Insert many rows with the named insert query (PostgreSQL: COPY)."""
        conn.executemany(self.queries[name], rows)

    def insert_stream(self, conn: Any, name: str, rows: Iterable[dict[str, Any]]) -> None:
        """``insert_rows`` of rows made as they are sent (PostgreSQL: the server stores the
        first ones while the rest are made); here: made first, then inserted."""
        self.insert_rows(conn, name, list(rows))

    def each(self, conn: Any, sql: str, params: dict[str, Any]) -> Generator[Any, None, None]:
        """``Tx.each``: the rows of ``sql`` one at a time (PostgreSQL has them all by now).
        Not ``yield from``: closing this generator would close the cursor, which is the
        transaction's own on PostgreSQL."""
        for row in conn.execute(sql, params):  # noqa: UP028
            yield row

    def after_bulk_load(self) -> None:
        """After many rows were added (PostgreSQL refreshes planner statistics)."""

    def wait_for_work(self, timeout: float) -> bool:
        """Block up to ``timeout`` s for a sign that work may be claimable; see ``Store``."""
        return False

    def on_begin(self, tx: Tx) -> None:
        """Add to a new transaction what getting it took (SQLite: the stopped lock holders it
        killed, as ``worker_lost`` rows)."""


class Reads(Protocol):
    """Named reads: a ``Tx`` inside a transaction, the ``Db`` outside one."""

    def rows(self, name: str, /, **params: Any) -> list[Any]: ...
    def scalar(self, name: str, /, **params: Any) -> Any: ...
    def as_list(self, values: list[Any]) -> Any: ...


def audit_row(
    ts: float,
    event: str,
    task: str | None,
    frm: int | None,
    to: int | None,
    worker: str | None = None,
    attempt: int | None = None,
    error: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An audit row as ``Tx.audit_rows`` holds it (its keys in the ``audit`` table's column
    order, which ``audit_event`` reads). ``{**row, "task": other}`` is the same row about
    another task: what a submission appends for each of its tasks."""
    return {
        "ts": ts, "event": event, "task": task, "from_state": frm, "to_state": to,
        "worker": worker, "attempt": attempt, "error": error,
        "extra": json.dumps(extra) if extra else None,
    }  # fmt: skip


def _appending(
    make: Callable[P, dict[str, Any]],
) -> Callable[Concatenate[Tx, P], None]:
    """``Tx.audit``: ``make``'s row, appended to the transaction's audit rows (one signature:
    ``audit_row``'s)."""

    def audit(tx: Tx, /, *args: P.args, **kwargs: P.kwargs) -> None:
        tx.audit_rows.append(make(*args, **kwargs))

    return audit


class Tx:
    """One write transaction: runs named queries; collects audit rows, written at the end."""

    __slots__ = ("after", "audit_from", "audit_rows", "clock", "conn", "io", "last", "notify",
                 "q", "written")  # fmt: skip

    def __init__(self, io: SqlIo, conn: Any, clock: Clock | None = None) -> None:
        self.io = io
        self.conn = conn
        self.q = io.queries
        #: Stamps audit rows no earlier than it reads (``Db.atomic``); ``stamp``.
        self.clock = clock
        self.audit_rows: list[dict[str, Any]] = []
        #: Audit rows a statement wrote itself (after ``audit_rows``), to be emitted only.
        self.written: list[dict[str, Any]] = []
        self.notify = False  # PostgreSQL: tell idle workers that work may be claimable
        #: The id of the first audit row, when it must not be the database's choice (after a
        #: replacement emptied the audit table: see ``insert_audit_at``).
        self.audit_from: int | None = None
        #: Steps run after the audit rows are written, just before the commit (``SqlIo``'s
        #: ``release_last``): the row locks they take are held the shortest time.
        self.last: list[Callable[[], None]] = []
        #: Steps run once this transaction committed, outside it (SQLite: after the writer
        #: lock is released): work on what it returned that other writers need not wait for.
        self.after: list[Callable[[], None]] = []

    def stamp(self, ts: float) -> float:
        """The time to stamp an audit row of ``ts`` with that a statement writes itself: no
        earlier than the clock now (as ``Db.atomic`` stamps ``audit_rows``)."""
        return ts if self.clock is None else max(ts, self.clock.wall())

    def run(self, name: str, /, **params: Any) -> Any:
        return self.conn.execute(self.q[name], params)

    def count(self, name: str, /, **params: Any) -> int:
        """Rows changed by one named statement."""
        return int(self.conn.execute(self.q[name], params).rowcount)

    def rows(self, name: str, /, **params: Any) -> list[Any]:
        return list(self.conn.execute(self.q[name], params).fetchall())

    def each(self, name: str, /, **params: Any) -> Generator[Any, None, None]:
        """The rows of one named query, read as far as the caller iterates (a query whose
        rows are mostly not needed reads only those); the caller closes the generator."""
        return self.io.each(self.conn, self.q[name], params)

    def scalar(self, name: str, /, **params: Any) -> Any:
        row = self.conn.execute(self.q[name], params).fetchone()
        return None if row is None else row[0]

    def many(self, name: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.conn.executemany(self.q[name], rows)

    def insert(self, name: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.io.insert_rows(self.conn, name, rows)

    def stream(self, name: str, rows: Iterable[dict[str, Any]]) -> None:
        """``insert`` of rows an iterator makes as they are sent (``SqlIo.insert_stream``)."""
        self.io.insert_stream(self.conn, name, rows)

    def as_list(self, values: list[Any]) -> Any:
        return self.io.as_list(values)

    def lock(self, what: Lock) -> None:
        self.io.lock(self.conn, what)

    #: Append an audit row: ``audit_row``'s arguments (keywords past ``error`` go to ``extra``).
    audit = _appending(audit_row)


class Db:
    """Runs write transactions and reads outside them, for one ``SqlIo``."""

    def __init__(self, io: SqlIo) -> None:
        self.io = io
        #: Write transactions committed through this handle (what group commit saves).
        self.commits = 0

    def atomic(
        self, op: Callable[[Tx], T], emit: EventSink | None = None, clock: Clock | None = None
    ) -> T:
        """Run ``op`` in one write transaction with its audit rows (again when the database
        asks, e.g. after a deadlock); then hand ``emit`` the events of what was committed.

        With a ``clock``, audit rows are stamped no earlier than the clock read after ``op``,
        under the transaction's locks: the caller's ``now`` was read before them (a worker may
        have waited for the lock meanwhile), while a transaction that depends on this one
        (a child started after its parent finished) reads the clock after this one committed.
        """
        for attempt in range(_RETRIES):
            try:
                with self.io.begin() as conn:
                    tx = Tx(self.io, conn, clock)
                    self.io.on_begin(tx)
                    value = op(tx)
                    rows = _stamped(tx.audit_rows, clock)
                    if tx.audit_from is not None and rows:
                        tx.run("insert_audit_at", id=tx.audit_from, **rows[0])
                        rows = rows[1:]
                    tx.insert("insert_audit", rows)
                    if tx.last:
                        written = len(tx.audit_rows)
                        for step in tx.last:
                            step()
                        tx.insert("insert_audit", _stamped(tx.audit_rows[written:], clock))
                    if tx.notify:
                        self.io.notify(conn)
                self.commits += 1
                break
            except Exception as exc:
                if attempt < _RETRIES - 1 and self.io.retryable(exc):
                    continue
                raise
        for step in tx.after:
            step()
        if emit is not None:
            for r in chain(tx.audit_rows, tx.written):
                emit(audit_event((None, *r.values())))
        return value

    def rows(self, name: str, /, **params: Any) -> list[Any]:
        return self.io.read(name, params)

    def scalar(self, name: str, /, **params: Any) -> Any:
        rows = self.io.read(name, params)
        return rows[0][0] if rows else None

    def as_list(self, values: list[Any]) -> Any:
        return self.io.as_list(values)

    def events(self, name: str, /, **params: Any) -> Iterator[tuple[int, dict[str, Any]]]:
        """Audit rows of a named query as ``(id, event)``."""
        for r in self.io.read(name, params):
            yield r[0], audit_event(r)


def _stamped(rows: list[dict[str, Any]], clock: Clock | None) -> list[dict[str, Any]]:
    """``rows`` stamped no earlier than ``clock`` now (see ``Db.atomic``)."""
    if clock is not None and rows:
        stamp = clock.wall()
        for row in rows:
            if row["ts"] < stamp:
                row["ts"] = stamp
    return rows


def audit_event(row: Any) -> dict[str, Any]:
    """An audit row ``(id, ts, event, task, from, to, worker, attempt, error, extra)`` as the
    JSON event that ``conveyor events`` prints and ``emit`` receives."""
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
