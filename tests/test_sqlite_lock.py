"""The SQLite store's write lock against real processes stopped with SIGSTOP while they hold it:
other workers take over once the holder's lease has passed, commands end with one line (or
succeed) instead of hanging, and the lock file does not outlive the store's last user."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conveyor.store.sqlitelock import WriteLock
from conveyor.store.urls import open_store
from conveyor.workerid import HOST

CLI = [sys.executable, "-m", "conveyor.cli"]
N = 3000
JOBS = "def work(i):\n    return i * 2\n"


def spawn(args: list[str], cwd: Path, stderr: int = subprocess.DEVNULL) -> subprocess.Popen[str]:
    return subprocess.Popen([*CLI, *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=stderr,
                            text=True)  # fmt: skip


def submit(tmp_path: Path, url: str) -> None:
    (tmp_path / "lockjobs.py").write_text(JOBS)
    tasks = [{"id": f"t{i}", "fn": "lockjobs:work", "args": [i]} for i in range(N)]
    (tmp_path / "graph.json").write_text(json.dumps({"name": "lock", "tasks": tasks}))
    out = subprocess.run([*CLI, "submit", "graph.json", "--db", url], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr


def proc_state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def lock_is_held(lock: Path) -> bool:
    """Whether some process holds the store's write lock (probed on a file description of our
    own, released at once)."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        assert exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
        return True
    finally:
        os.close(fd)  # releases the probe's lock if it got it
    return False


def stop_while_holding(victim: subprocess.Popen[str], lock: Path, timeout: float = 60) -> None:
    """SIGSTOP ``victim`` at a moment it holds the write lock (the only process that could:
    no other process uses the store). Proves the fault landed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert victim.poll() is None, "the victim finished before it was caught holding the lock"
        os.kill(victim.pid, signal.SIGSTOP)
        while proc_state(victim.pid) != "T":
            assert time.monotonic() < deadline
        if lock_is_held(lock):
            return
        os.kill(victim.pid, signal.SIGCONT)
        time.sleep(0.001)  # let it run on to another transaction (a pace, not a wait)
    raise AssertionError("never caught the victim holding the lock")


def started(url: str) -> bool:
    store = open_store(url)
    try:
        return store.counts()["done"] > 0
    finally:
        store.close()


def wait_for(predicate: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def lost_events(url: str) -> list[dict[str, object]]:
    store = open_store(url)
    try:
        return [ev for _, ev in store.events_after(0, 10**6) if ev["event"] == "worker_lost"]
    finally:
        store.close()


def test_sqlite_worker_stopped_holding_the_lock_is_taken_over_and_others_finish(
    tmp_path: Path,
) -> None:
    db = tmp_path / "run.db"
    url = f"sqlite:///{db}"
    submit(tmp_path, url)
    args = ["worker", "--db", url, "--lease", "2", "--quiet", "--workers", "2"]
    victim = spawn(args, tmp_path)
    others: list[subprocess.Popen[str]] = []
    try:
        wait_for(lambda: started(url))
        stop_while_holding(victim, tmp_path / "run.db.lock")
        others = [spawn(args, tmp_path, subprocess.PIPE) for _ in range(2)]
        for p in others:
            _, err = p.communicate(timeout=90)  # a hang is a failure
            assert p.returncode == 0, err
        assert victim.wait(timeout=10) == -signal.SIGKILL  # taken over, not left stopped
    finally:
        for p in [victim, *others]:
            if p.poll() is None:
                p.kill()
            p.communicate()
    store = open_store(url)
    try:
        assert store.counts()["done"] == N
    finally:
        store.close()
    # Recorded once: by the worker that killed it ("stopped"), or, when another worker's reaper
    # got the lock first after the kill, as a worker whose process is gone ("exited").
    lost = [ev for ev in lost_events(url) if ev["worker"] == f"{HOST}:{victim.pid}"]
    assert [ev.get("reason") in ("stopped", "exited") for ev in lost] == [True]
    assert not (tmp_path / "run.db.lock").exists()  # its last user closed the store


def test_sqlite_commands_against_a_stopped_holder_fail_in_one_line_or_take_over(
    tmp_path: Path,
) -> None:
    db = tmp_path / "run.db"
    url = f"sqlite:///{db}"
    submit(tmp_path, url)
    victim = spawn(["worker", "--db", url, "--lease", "10", "--quiet"], tmp_path)
    try:
        wait_for(lambda: started(url))
        stop_while_holding(victim, tmp_path / "run.db.lock")
        # Patience (1 s) shorter than half the holder's lease: one line naming the holder.
        out = subprocess.run([*CLI, "prune", "--db", url + "?timeout=1", "--keep", "5"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=30)  # fmt: skip
        assert out.returncode == 2
        lines = out.stderr.splitlines()
        assert len(lines) == 1, out.stderr
        assert f"{HOST}:{victim.pid}" in lines[0] and "stopped" in lines[0]
        assert victim.poll() is None and lock_is_held(tmp_path / "run.db.lock")
        # Patience (5 s) reaching half its lease: the holder is taken over, retry succeeds.
        out = subprocess.run([*CLI, "retry", "--failed", "--db", url], cwd=tmp_path,
                             capture_output=True, text=True, timeout=30)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert victim.wait(timeout=10) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    lost = [ev for ev in lost_events(url) if ev["worker"] == f"{HOST}:{victim.pid}"]
    assert [ev.get("reason") for ev in lost] == ["stopped"]


HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
os.pwrite(fd, sys.argv[2].encode().ljust(128), 0)
print("held", flush=True)
time.sleep(120)
"""


def test_sqlite_lock_held_on_another_host_times_out_naming_the_holder(tmp_path: Path) -> None:
    db = tmp_path / "run.db"
    url = f"sqlite:///{db}"
    open_store(url).close()
    record = f"elsewhere.example:4242 {time.time():.3f}"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db) + ".lock", record],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        out = subprocess.run([*CLI, "prune", "--db", url + "?timeout=1"], cwd=tmp_path,
                             capture_output=True, text=True, timeout=30)  # fmt: skip
        assert out.returncode == 2
        lines = out.stderr.splitlines()
        assert len(lines) == 1, out.stderr
        assert "elsewhere.example:4242" in lines[0] and "another host" in lines[0]
        assert holder.poll() is None  # never killed from here
    finally:
        holder.kill()
        holder.communicate()


def test_sqlite_lock_waiter_sleeps_in_the_kernel_and_holds_the_lock_once_let_go(
    tmp_path: Path,
) -> None:
    # A waiter that polled (tried, slept, tried again) took CPU from the holder on a busy
    # machine and noticed a release up to a poll later: it must block until the release.
    import threading

    from helpers import wait_until

    path = str(tmp_path / "run.db.lock")
    holder, waiter, third = (WriteLock(path, "sqlite:///run.db") for _ in range(3))
    holder.acquire(5.0, lambda h: None)
    tries = []
    real_try = waiter._try
    waiter._try = lambda: tries.append(1) or real_try()  # type: ignore[method-assign]
    thread = threading.Thread(target=waiter.acquire, args=(30.0, lambda h: None))
    thread.start()
    wait_until(lambda: waiter._waiter is not None and waiter._waiter.busy,
               what="the waiter blocked in flock")  # fmt: skip
    assert len(tries) == 1  # its first try, and no polling since
    holder.release()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert not third._try()  # the waiter holds it
    waiter.release()
    assert third._try()
    for lock in (holder, waiter, third):
        lock.close()


def test_sqlite_lock_waiter_that_gives_up_leaves_the_lock_free(tmp_path: Path) -> None:
    # Its thread still waits in flock when it gives up; once it gets the lock it must let go.
    import pytest

    from conveyor.errors import StoreLockedError
    from helpers import wait_until

    path = str(tmp_path / "run.db.lock")
    holder, waiter, third = (WriteLock(path, "sqlite:///run.db") for _ in range(3))
    holder.acquire(5.0, lambda h: None)
    with pytest.raises(StoreLockedError):
        waiter.acquire(0.2, lambda h: None)
    holder.release()
    wait_until(third._try, what="the lock free again")
    third.release()
    wait_until(lambda: waiter._waiter is not None and not waiter._waiter.busy, what="idle")
    assert third._try()  # nobody took it meanwhile
    for lock in (holder, waiter, third):
        lock.close()


def end_holder(holder: subprocess.Popen[str], waiter: WriteLock) -> None:
    """Kill the holder process if it is still there, and close the waiter's lock."""
    if holder.poll() is None:
        holder.kill()
    holder.communicate()
    waiter.close()


STOPPED_HOLDER = """
import fcntl, os, signal, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
os.pwrite(fd, f"{sys.argv[2]}:{os.getpid()} {sys.argv[3]}".encode().ljust(128), 0)
print("held", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
"""


def test_sqlite_lock_stopped_worker_is_taken_over_after_half_its_lease(tmp_path: Path) -> None:
    # Every waiter's heartbeat waits for this lock too: taken over only after a whole lease,
    # the stopped worker left every other worker silent for a lease, and the first reap after
    # the take-over recorded a healthy worker `worker_lost` (seen with 3 real workers).
    from helpers import wait_until

    lease = 20.0
    since = time.time() - 0.6 * lease  # it has held the lock for 12 s of its 20 s lease
    path = str(tmp_path / "run.db.lock")
    holder = subprocess.Popen([sys.executable, "-c", STOPPED_HOLDER, path, HOST, f"{since:.3f}"],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    waiter = WriteLock(path, "sqlite:///run.db")
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        wait_until(lambda: proc_state(holder.pid) == "T", what="the holder stopped")
        killed = waiter.acquire(
            1.0, lambda h: ("w-stopped", lease) if h.pid == holder.pid else None
        )
        assert [(name, h.pid) for name, h in killed] == [("w-stopped", holder.pid)]
        assert holder.wait(timeout=30) == -signal.SIGKILL
    finally:
        end_holder(holder, waiter)


#: A holder stopped between taking the lock and writing its record: the record left in the file
#: is the previous holder's (here: ``argv[2]``, the waiting process's own).
STALE_RECORD_HOLDER = """
import fcntl, os, signal, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
os.pwrite(fd, sys.argv[2].encode().ljust(128), 0)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
os.kill(os.getpid(), signal.SIGSTOP)
"""


def test_sqlite_lock_holder_stopped_before_its_record_is_taken_over(tmp_path: Path) -> None:
    # Seen from outside: two workers, one stopped at that moment; the other waited forever (11
    # min), sure that the holder was itself and running. The kernel's table of locks names the
    # real holder, stopped: it is taken over half a lease after the waiter first saw it.
    import threading

    from conveyor.store.sqlitelock import Holder, flock_holder

    lease = 1.0
    path = str(tmp_path / "run.db.lock")
    record = f"{HOST}:{os.getpid()} {time.time() - 100:.3f}"  # the waiter's own, long ago
    holder = subprocess.Popen([sys.executable, "-c", STALE_RECORD_HOLDER, path, record],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    waiter = WriteLock(path, "sqlite:///run.db")
    got: list[list[tuple[str, Holder]]] = []
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        wait_for(lambda: proc_state(holder.pid) == "T")
        stale = waiter.holder()
        assert stale is not None and stale.pid == os.getpid()  # the fault: its record is stale
        probe = os.open(path, os.O_RDONLY)
        try:
            assert flock_holder(probe) == holder.pid
        finally:
            os.close(probe)

        def take() -> None:
            got.append(waiter.acquire(  # a worker waits while the holder runs
                1.0, lambda h: ("w-stopped", lease) if h.pid == holder.pid else None,
                while_running=True,
            ))  # fmt: skip

        thread = threading.Thread(target=take, daemon=True)
        thread.start()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the waiter still waits for a holder it takes for itself"
        assert [(name, h.pid) for name, h in got[0]] == [("w-stopped", holder.pid)]
        assert holder.wait(timeout=30) == -signal.SIGKILL
    finally:
        end_holder(holder, waiter)
