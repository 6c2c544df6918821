"""The write lock of a SQLite store: the turn to begin a write transaction, taken on an
``flock`` of ``<db>.lock``, with a bounded wait and a rule for a holder that stopped.

Why a lock file and not only SQLite's lock: SQLite's busy handler sleeps 1-100 ms between
tries, so under busy workers its sleeps, not the work, would set the pace. But a process
stopped (SIGSTOP, Ctrl-Z, a frozen VM) while it holds either lock blocks every writer for as
long as it stays stopped, and waiting differently cannot help: the holder must go. So:

- the holder writes ``host:pid since`` into the lock file each time it takes the lock. A
  holder stopped between taking the lock and writing its record leaves the previous holder's
  record there (perhaps the waiter's own): when that record names a process of this host, the
  kernel's table of locks (``/proc/locks``, Linux) names the real holder, judged from when the
  waiter first saw it hold the lock;
- a waiter sleeps in the kernel until the lock is free: a thread of its lock (``_Waiter``)
  blocks in ``flock`` on a duplicate of its descriptor (the same open file, so the lock it
  gets is the waiter's), while the waiter itself waits for that thread with a deadline (a
  blocking ``flock`` cannot be given one). So waiting processes take no CPU from the holder
  (polling waiters did, on a busy machine: the holder was descheduled while it held the
  lock), and the lock passes on as soon as it is released;
- a holder on this host that is stopped (``/proc/<pid>/stat`` state ``T``) and has held the
  lock for longer than half its worker lease (``TAKEOVER_AFTER``) is killed (SIGKILL; a dead
  process completes nothing, and its leases are reaped as they run out). Not a whole lease:
  every waiter's
  heartbeat waits for this lock too, so by then every other worker of the store would be
  judged silent (``worker_lost``) and its leases taken as well. The kernel then frees both this
  lock and SQLite's, and its open transaction rolls back. A holder that is not a worker (no
  lease), is running, or is on another host is never killed;
- a waiter that has waited ``patience`` seconds raises ``StoreLockedError`` naming the holder
  and what it is doing (a worker goes on waiting while the holder runs on this host).

The lock file lives only while the store is open: ``close`` removes it when no one holds it,
and a waiter that finds the file it locked removed (or replaced) opens the new one.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from conveyor.errors import StoreError, StoreLockedError
from conveyor.workerid import HOST

#: Bytes of the holder record at the start of the lock file (space-padded).
RECORD_BYTES = 128
_LOOK_EVERY_S = 0.25  # how often a waiter looks at who holds the lock
#: A stopped worker is killed once it has held the lock for this part of its lease: a waiter's
#: last beat is up to a third of a lease old when the holder stops, so at half a lease no one
#: who only waited is past its own lease when the beats resume.
TAKEOVER_AFTER = 0.5


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds the lock, from its record: ``host``, ``pid``, since when (wall clock)."""

    host: str
    pid: int
    since: float

    @property
    def name(self) -> str:
        return f"{self.host}:{self.pid}"


#: The lease and worker name of a holder when it is a worker of this store, else ``None``.
LeaseOf = Callable[[Holder], "tuple[str, float] | None"]


def process_state(pid: int) -> str | None:
    """The state letter of process ``pid`` on this host (``R``, ``S``, ``T`` ...), ``None`` if
    it is gone or a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return None
    return None if state in ("Z", "X") else state


def flock_holder(fd: int) -> int | None:
    """The pid of the process on this host that holds an ``flock`` on the file of ``fd``, from
    the kernel's table of locks (``/proc/locks``, Linux); ``None`` when no process here does or
    it cannot be told (another system, a network filesystem's lock held elsewhere)."""
    try:
        st = os.fstat(fd)
        table = Path("/proc/locks").read_text()
    except OSError:
        return None
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in table.splitlines():
        # "3: FLOCK  ADVISORY  WRITE 504 fe:00:2146415 0 EOF" (a waiter's: "3: -> FLOCK ...")
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == key:
            try:
                return int(fields[4])
            except ValueError:
                return None
    return None


class _Waiter:
    """A thread that takes one lock file's lock for its owner with a blocking ``flock``.

    The owner sets ``wanted`` and waits for ``granted``; the thread blocks in ``flock`` on a
    duplicate descriptor (locks belong to the open file, so the lock is the owner's) and, once
    it has the lock, hands it over if it is still wanted, else lets it go again. An owner that
    gives up waiting just withdraws its wish."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.wanted: int | None = None  # the descriptor to lock, while the owner waits
        self.granted = False
        #: In ``flock``: the owner must not take the lock itself meanwhile (the thread, once
        #: it has it, lets it go when it is no longer wanted).
        self.busy = False
        self.closed = False
        self._thread = threading.Thread(target=self._run, name="conveyor-sqlite-lock",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def _run(self) -> None:
        cond = self.cond
        while True:
            with cond:
                cond.wait_for(lambda: self.closed or (self.wanted is not None and not self.granted))
                if self.closed:
                    return
                assert self.wanted is not None
                try:
                    fd = os.dup(self.wanted)
                except OSError:
                    self.wanted = None
                    cond.notify_all()
                    continue
                self.busy = True
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # sleeps until the lock is free
                got = True
            except OSError:
                got = False
            with cond:  # handed over or let go, and no longer busy, in one step
                try:
                    if got:
                        keep = self.wanted is not None and not self.closed
                        if keep and _same_file(fd, self.wanted):
                            self.granted = True
                        else:  # no longer wanted (or another file)
                            fcntl.flock(fd, fcntl.LOCK_UN)
                finally:
                    self.busy = False
                    cond.notify_all()
                    os.close(fd)  # the lock stays with the open file: the owner's descriptor

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


def _same_file(a: int, b: int | None) -> bool:
    if b is None:
        return False
    try:
        sa, sb = os.fstat(a), os.fstat(b)
    except OSError:
        return False
    return (sa.st_ino, sa.st_dev) == (sb.st_ino, sb.st_dev)


class WriteLock:
    """The turn to write, shared by the processes that open one SQLite store."""

    def __init__(self, path: str, url: str) -> None:
        self.path = os.path.abspath(path)
        self.url = url
        self._fd: int | None = None
        self._waiter: _Waiter | None = None  # started at the first wait
        #: A holder whose record is not its own (stopped before writing it): its pid and when
        #: this process first saw it hold the lock (wall clock), the "since" it is judged by.
        self._seen: tuple[int, float] | None = None
        self._open()

    def _open(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StoreError(f"{self.url}: cannot create the lock file: {exc.strerror}") from None

    def _current(self, fd: int) -> bool:
        """Whether ``fd`` is still the file at ``path`` (``close`` may have removed it)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        own = os.fstat(fd)
        return (st.st_ino, st.st_dev) == (own.st_ino, own.st_dev)

    def _try(self) -> bool:
        """Take the lock without waiting (held already: keep it); reopen the file if it was
        replaced."""
        fd = self._fd
        if fd is None:
            raise StoreError(f"{self.url}: the store is closed")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        if self._current(fd):
            record = f"{HOST}:{os.getpid()} {time.time():.3f}"
            os.pwrite(fd, record.encode().ljust(RECORD_BYTES), 0)
            self._seen = None  # a later holder without a record is timed from when it is seen
            return True
        os.close(fd)  # a removed file: its lock guards nothing
        self._fd = None
        self._open()
        return self._try()

    def holder(self) -> Holder | None:
        """The holder's record (the last process that took the lock)."""
        if self._fd is None:
            return None
        try:
            who, since = os.pread(self._fd, RECORD_BYTES, 0).decode().split()
            host, _, pid = who.rpartition(":")
            return Holder(host, int(pid), float(since))
        except (OSError, ValueError, UnicodeDecodeError):
            return None

    def real_holder(self) -> Holder | None:
        """Who holds the lock: its record, unless that names a process of this host (or is
        empty) and the kernel names another one here (``flock_holder``: the holder stopped
        before writing its record); that one counts as holding it since this process first
        saw it do so. A record of another host is believed (a shared filesystem's lock)."""
        h = self.holder()
        if h is not None and h.host != HOST:
            return h
        pid = flock_holder(self._fd) if self._fd is not None else None
        if pid is None or pid == os.getpid() or (h is not None and h.pid == pid):
            return h
        if self._seen is None or self._seen[0] != pid:
            self._seen = (pid, time.time())
        return Holder(HOST, pid, self._seen[1])

    def acquire(
        self, patience: float, lease_of: LeaseOf, *, while_running: bool = False
    ) -> list[tuple[str, Holder]]:
        """Take the lock, waiting at most ``patience`` seconds (``while_running``: and for as
        long as the holder is a running process on this host, which is making progress, e.g. a
        large submit); returns the stopped workers killed on the way (name, record) for the
        caller to record. Reads the clocks: the wait is real time."""
        waiter = self._waiter
        if (waiter is None or not waiter.busy) and self._try():
            return []
        killed: list[tuple[str, Holder]] = []
        start = time.monotonic()
        while True:
            if self._wait(min(_LOOK_EVERY_S, max(0.0, start + patience - time.monotonic()))):
                if self._try():  # ours now (the same open file): record it; or a new file
                    return killed
                continue
            now = time.monotonic()
            victim = self._stopped_past_lease(lease_of)
            if victim is not None:
                killed.append(victim)
                continue
            if now - start >= patience:
                if while_running and self._holder_running():
                    start = now
                    continue
                raise StoreLockedError(self._locked_message(now - start, lease_of))

    def _wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the waiter thread to take the lock for us; ``False``
        (and the wish withdrawn) when it did not."""
        fd = self._fd
        if fd is None:
            raise StoreError(f"{self.url}: the store is closed")
        waiter = self._waiter
        if waiter is None:
            waiter = self._waiter = _Waiter()
        cond = waiter.cond
        with cond:
            waiter.wanted, waiter.granted = fd, False
            cond.notify_all()
            cond.wait_for(
                lambda: (waiter.granted and not waiter.busy) or waiter.wanted is None, timeout
            )
            got = waiter.granted and not waiter.busy
            waiter.wanted, waiter.granted = None, False
        return got

    def _stopped_past_lease(self, lease_of: LeaseOf) -> tuple[str, Holder] | None:
        """Kill the holder if it is a worker on this host, stopped, that has held the lock for
        longer than ``TAKEOVER_AFTER`` of its lease; returns it."""
        h = self.real_holder()
        if h is None or h.host != HOST or h.pid == os.getpid():
            return None
        if process_state(h.pid) != "T":
            return None
        lease = lease_of(h)
        if lease is None or time.time() - h.since < lease[1] * TAKEOVER_AFTER:
            return None
        if self.real_holder() != h:  # it changed hands while we looked
            return None
        try:
            os.kill(h.pid, signal.SIGKILL)
        except OSError:
            return None
        return lease[0], h

    def _holder_running(self) -> bool:
        h = self.real_holder()
        return h is not None and h.host == HOST and process_state(h.pid) not in (None, "T", "t")

    def _locked_message(self, waited: float, lease_of: LeaseOf) -> str:
        h = self.real_holder()
        head = f"{self.url}: waited {waited:.1f} s for the write lock"
        advice = "raise the wait with ?timeout=SECONDS"
        if h is None:
            return f"{head}, held by another process; {advice}"
        held = f"held by {h.name} for {max(0.0, time.time() - h.since):.1f} s"
        if h.host != HOST:
            return f"{head}, {held} on another host (it cannot be inspected from here); {advice}"
        state = process_state(h.pid)
        if state is None:
            return f"{head}, {held}, which has exited (a child of it keeps the lock); {advice}"
        if state != "T":
            return f"{head}, {held}, which is running; {advice}"
        lease = lease_of(h)
        if lease is None:
            return (f"{head}, {held}, which is stopped and is not a worker (never taken over): "
                    f"resume it (kill -CONT {h.pid}) or end it")  # fmt: skip
        return (f"{head}, {held}, which is stopped: a writer takes over once it has held the "
                f"lock for half its lease ({lease[1] * TAKEOVER_AFTER:g} s); {advice}, or resume "
                f"it (kill -CONT {h.pid})")  # fmt: skip

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the file, removing it when no one holds the lock (the last user leaves no
        ``.lock`` behind; anyone still using the store makes a new one). Idempotent."""
        fd = self._fd
        if fd is None:
            return
        self._fd = None
        if self._waiter is not None:
            self._waiter.close()
            self._waiter = None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if self._current(fd):
                os.unlink(self.path)
        except OSError:
            pass  # someone holds it: they or a later user will remove it
        finally:
            os.close(fd)
