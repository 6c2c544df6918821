"""The embedded store: one SQLite file shared by any number of worker processes on a machine.

WAL mode with ``synchronous=NORMAL`` (a commit survives a process crash; a power cut may lose
the last ones), every write in ``BEGIN IMMEDIATE``. Writers take turns on the store's write lock
(``sqlitelock.py``: a lock file beside the database) before they begin: a wait is bounded by
``timeout`` (a worker's by its lease when that is longer), and a worker stopped while holding it
is taken over once its lease has passed. The busy timeout still applies to other programs
holding the database.

URL: ``sqlite:///relative/run.db`` or ``sqlite:////absolute/run.db``, with options
``?timeout=5&results=auto|json|pickle&inline_max=BYTES&results_dir=DIR&batch=N``.
Large results go to ``<db>.results/`` unless ``results_dir`` says otherwise.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Generator, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from conveyor.errors import StoreCorruptError, StoreError, StoreLockedError
from conveyor.store.sqlitelock import Holder, WriteLock
from conveyor.store.sqlsteps import FAST_BATCH
from conveyor.store.sqlstore import LOST_BUDGET, SqlStore
from conveyor.store.sqltx import SqlIo, Tx
from conveyor.store.urls import codec_from, sqlite_target
from conveyor.workerid import default_worker_id

_MMAP_BYTES = 1 << 30
_IDLE_POLL_S = 0.001  # how often an idle worker looks for a commit by another process
_RUN_MIN = 4  # audit rows alike but for their task that go in as one statement
_SEQ_LIMIT = 1 << 31  # seqs that pack two to a JSON integer (``_insert_edges``)
_TYPES = (
    ("SEQ", "INTEGER PRIMARY KEY"),
    ("AUTO", "INTEGER PRIMARY KEY"),
    ("REAL", "REAL"),
    ("BLOB", "BLOB"),
    ("NOROWID", "WITHOUT ROWID"),
)


def _audit_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["ts"], r["event"], r["from_state"], r["to_state"], r["worker"], r["attempt"],
            r["error"], r["extra"])  # fmt: skip


def audit_runs(rows: list[dict[str, Any]]) -> list[tuple[int, int, int]]:
    """``(first, groups, period)`` of each run of consecutive audit rows, in order: ``groups``
    groups of ``period`` rows (1 or 2) where every group is about one task and its rows are
    alike, but for that task, to the first group's (a claim's ``task_started`` rows: period 1;
    a submission's ``task_submitted`` + ``task_ready`` per task: period 2)."""
    keys = [_audit_key(r) for r in rows]
    out: list[tuple[int, int, int]] = []
    i, n = 0, len(rows)
    while i < n:
        j = i + 1
        while j < n and keys[j] == keys[i]:
            j += 1
        if j - i == 1 and i + 1 < n:  # no run of one kind here: maybe one of pairs
            k0, k1, a = keys[i], keys[i + 1], i
            while (
                a + 1 < n
                and keys[a] == k0
                and keys[a + 1] == k1
                and rows[a]["task"] == rows[a + 1]["task"]
            ):
                a += 2
            if a - i >= 4:
                out.append((i, (a - i) // 2, 2))
                i = a
                continue
        out.append((i, j - i, 1))
        i = j
    return out


def _use_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Put the database in WAL mode (once per file: it persists). Processes that open a new
    store at the same moment race to switch it, and SQLite answers the loser "database is
    locked" at once, without waiting (the switch takes the file exclusively): try again until
    ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL").fetchone()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


def _identity(path: Path) -> tuple[int, int] | None:
    """The file ``path`` names now (device, inode); ``None`` when it names none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class SqliteIo(SqlIo):
    """One SQLite connection, shared by the threads of a process under a lock."""

    dialect = "sqlite"
    types = _TYPES

    def __init__(self, path: Path, url: str, timeout: float, *, readonly: bool = False) -> None:
        super().__init__(url, readonly=readonly)
        self.path = path
        self.timeout = timeout
        #: Seconds a write waits for the lock: ``timeout``, or a worker's lease when longer.
        self.patience = timeout
        #: A worker also waits for as long as the holder runs on this host (a large submit).
        self.is_worker = False
        self._lock = threading.RLock()
        self._killed: list[tuple[str, Holder]] = []  # taken over, to record in the next write
        self.conn: sqlite3.Connection | None = None
        self._wlock: WriteLock | None = None
        self._ident: tuple[int, int] | None = None  # the file opened (see ``begin``)
        if readonly:
            self._open_readonly(path, url, timeout)
            return
        if not path.parent.is_dir():
            raise StoreError(f"{url}: directory {str(path.parent)!r} does not exist")
        if path.is_dir():
            raise StoreError(f"{url}: {str(path)!r} is a directory")
        try:  # a new store is private (0600); SQLite gives its -wal and -shm the same mode
            os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
        except FileExistsError:
            pass
        except OSError as exc:
            raise StoreError(f"{url}: cannot create the database file: {exc.strerror}") from None
        self._wlock = WriteLock(str(path) + ".lock", url)
        try:
            with self._errors():
                conn = sqlite3.connect(
                    str(path), timeout=timeout, isolation_level=None,
                    check_same_thread=False, cached_statements=256,
                )  # fmt: skip
                self.conn = conn
                _use_wal(conn, timeout)
                conn.execute("PRAGMA synchronous=NORMAL")
                # Pages another process wrote are re-read after each of its commits (SQLite
                # drops its page cache then); mapped, such a read is a memory copy.
                conn.execute(f"PRAGMA mmap_size={_MMAP_BYTES}")
                conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            self._ident = _identity(path)
        except BaseException:
            self.close()
            raise

    def _open_readonly(self, path: Path, url: str, timeout: float) -> None:
        """A connection that cannot write (``mode=ro``) and takes no write lock: a viewer's.
        It creates nothing; the store's WAL mode, set by its writers, persists in the file."""
        from urllib.parse import quote

        if not path.is_file():
            raise StoreError(f"{url}: {str(path)!r} does not exist")
        with self._errors():
            uri = f"file:{quote(str(path.resolve()))}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None,
                                   check_same_thread=False)  # fmt: skip
            self.conn = conn
            conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")

    def _conn(self) -> sqlite3.Connection:
        conn = self.conn
        if conn is None:
            raise StoreError(f"{self.url}: the store is closed")
        return conn

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            msg = str(exc)
            if "locked" in msg or "busy" in msg:
                raise StoreLockedError(
                    f"{self.url}: the database is locked by another process "
                    f"(waited {self.timeout:g} s; raise it with ?timeout=SECONDS)"
                ) from None
            if "unable to open" in msg:
                raise StoreError(f"{self.url}: cannot open the database file") from None
            if "no such table" in msg or "no such column" in msg:
                raise StoreCorruptError(f"{self.url}: not a conveyor store ({msg})") from None
            raise StoreError(f"{self.url}: {msg}") from None
        except sqlite3.DatabaseError as exc:
            raise StoreCorruptError(
                f"{self.url}: not a usable SQLite database ({exc}); move it away or use another "
                "--db"
            ) from None

    @contextmanager
    def begin(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        wlock = self._wlock
        if wlock is None:
            raise StoreError(f"{self.url}: opened read-only")
        with self._lock:
            self._killed += wlock.acquire(self.patience, self._lease_of,
                                                while_running=self.is_worker)  # fmt: skip
            try:
                with self._errors():
                    conn.execute("BEGIN IMMEDIATE")
                    if _identity(self.path) != self._ident:
                        conn.execute("ROLLBACK")
                        raise StoreCorruptError(
                            f"{self.url}: the database file was removed or replaced while in "
                            "use (what this process wrote since is not in it)"
                        )
                    try:
                        yield conn
                    except BaseException:
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                        raise
                    conn.execute("COMMIT")
            finally:
                wlock.release()

    def _lease_of(self, holder: Holder) -> tuple[str, float] | None:
        """The worker name and lease of the lock's holder, if it is a worker of this store
        (a read: WAL readers do not wait for the writer)."""
        rows = self.read("worker_by_pid", {"host": holder.host, "pid": holder.pid})
        return (str(rows[0][0]), float(rows[0][1])) if rows else None

    def on_begin(self, tx: Tx) -> None:
        """Record each stopped worker this process killed to get the lock (``worker_lost``)."""
        while self._killed:
            name, h = self._killed.pop()
            now = time.time()
            if tx.count("worker_lost", name=name) == 1:
                tx.audit(now, "worker_lost", None, None, None, name, reason="stopped",
                         held_s=round(now - h.since, 3), by=default_worker_id())  # fmt: skip

    def read(self, name: str, params: dict[str, Any]) -> list[Any]:
        conn = self._conn()
        with self._lock, self._errors():
            return conn.execute(self.queries[name], params).fetchall()

    def as_list(self, values: list[Any]) -> Any:
        return json.dumps(values)

    def each(self, conn: Any, sql: str, params: dict[str, Any]) -> Generator[Any, None, None]:
        """SQLite steps the statement as the caller reads; closing stops it there."""
        cur = conn.execute(sql, params)
        try:
            yield from cur
        finally:
            cur.close()

    def insert_rows(self, conn: Any, name: str, rows: list[dict[str, Any]]) -> None:
        """Audit rows go in by runs (``audit_runs``): a run is one statement over a JSON array
        of its tasks (``insert_audit_run``, ``insert_audit_pairs``), in their order; the rest
        go in one by one. Per row that is several times cheaper than a statement each. Edges
        go in packed (``_insert_edges``); other rows one statement each."""
        if name == "insert_edge" and len(rows) >= _RUN_MIN and self._insert_edges(conn, rows):
            return
        if name != "insert_audit" or len(rows) < _RUN_MIN:
            conn.executemany(self.queries[name], rows)
            return
        one = self.queries[name]
        single: list[dict[str, Any]] = []
        for first, groups, period in audit_runs(rows):
            end = first + groups * period
            if end - first < _RUN_MIN:
                single.extend(rows[first:end])
                continue
            if single:
                conn.executemany(one, single)
                single = []
            tasks = json.dumps([r["task"] for r in rows[first:end:period]])
            if period == 1:
                params = dict(rows[first], tasks=tasks)
                del params["task"]
                conn.execute(self.queries["insert_audit_run"], params)
                continue
            params = {f"{k}{j}": v for j in (0, 1) for k, v in rows[first + j].items()}
            del params["task0"], params["task1"]
            conn.execute(self.queries["insert_audit_pairs"], dict(params, tasks=tasks))
        if single:
            conn.executemany(one, single)

    def _insert_edges(self, conn: Any, rows: list[dict[str, Any]]) -> bool:
        """Edges as one statement over a JSON array of ``parent << 32 | child`` in key order
        (``insert_edges_packed``: a submission of a large graph has ~6 per task); ``False``,
        inserting nothing, when a seq does not fit in 31 bits."""
        packed = []
        for r in rows:
            p, c = r["parent"], r["child"]
            if not (0 <= p < _SEQ_LIMIT and 0 <= c < _SEQ_LIMIT):
                return False
            packed.append(p << 32 | c)
        packed.sort()
        conn.execute(self.queries["insert_edges_packed"], {"edges": json.dumps(packed)})
        return True

    def wait_for_work(self, timeout: float) -> bool:
        """Poll ``PRAGMA data_version`` (it changes when another connection commits; ~2 us)
        every millisecond, and look for a ready task (or the graph's end) only when it did.
        SQLite has no notifications; this wakes an idle worker within ~1 ms of new work for
        ~1% of a core. Reads the clocks: the wait is real time, and a retry that came due
        (``not_before`` is wall-clock time) is work to wake for."""
        conn = self._conn()
        q = self.queries
        deadline = time.monotonic() + timeout
        seen = None
        while True:
            with self._lock, self._errors():
                version = conn.execute("PRAGMA data_version").fetchone()[0]
                if version != seen:
                    seen = version
                    if conn.execute(q["any_ready"]).fetchone() is not None:
                        return True
                    due = conn.execute(q["next_wakeup"]).fetchone()[0]
                    if due is not None and due <= time.time():
                        return True
                    if conn.execute(q["any_unfinished"]).fetchone() is None:
                        return True  # the graph is finished: let the engine see it now
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(_IDLE_POLL_S, left))

    def schema_version(self) -> int:
        conn = self._conn()
        with self._lock, self._errors():
            tables = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            if "schema_version" in tables:
                row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
                return int(row[0] or 0)
        if tables:
            raise StoreCorruptError(
                f"{self.url}: not a conveyor store (it holds tables {', '.join(sorted(tables))})"
            )
        return 0

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        wlock = getattr(self, "_wlock", None)  # None: read-only, or the open failed
        if wlock is not None:
            wlock.close()


class SqliteStore(SqlStore):
    """A ``SqlStore`` on one SQLite file."""

    io: SqliteIo

    @classmethod
    def from_url(cls, url: str, *, readonly: bool = False) -> SqliteStore:
        path, options = sqlite_target(url)
        return cls(path, url=url, readonly=readonly, **options)

    @classmethod
    def holds_store(cls, url: str) -> bool:
        """Whether the file ``url`` names holds a conveyor store, read on a connection that
        cannot write: an empty file stays empty and another program's database keeps its
        journal mode (raises ``StoreCorruptError`` for one whose tables are another's)."""
        path, options = sqlite_target(url)
        io = SqliteIo(Path(path), url, float(options.get("timeout", 5.0)), readonly=True)
        try:
            return io.schema_version() > 0
        finally:
            io.close()

    def __init__(
        self,
        path: str | Path,
        *,
        url: str | None = None,
        timeout: float = 5.0,
        lease: float | None = None,
        batch: int = FAST_BATCH,
        lost_budget: int = LOST_BUDGET,
        readonly: bool = False,
        **codec_options: Any,
    ) -> None:
        path = Path(path)
        url = url or f"sqlite:///{path}"
        codec = codec_from(codec_options, str(path) + ".results")
        io = SqliteIo(path, url, timeout, readonly=readonly)
        super().__init__(io, codec=codec, lost_budget=lost_budget,
                         max_batch=batch, lease_s=lease)  # fmt: skip
        self.open_url = url

    def register_worker(self, worker: str, now: float, info: Mapping[str, Any]) -> None:
        # A worker waits for the write lock up to its lease (a stopped holder is taken over
        # by then; giving up sooner would end the worker, not the holder), and for as long as
        # the holder runs on this host.
        self.io.patience = max(self.io.timeout, self.worker.lease_s)
        self.io.is_worker = True
        super().register_worker(worker, now, info)
