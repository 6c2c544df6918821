"""Durable runs across worker processes: conveyor (SQLite, PostgreSQL) against laufband 0.2.1,
Celery (Redis) and procrastinate (PostgreSQL).

Side by side in one run, on the same graphs from ``benchmarks/graphs.py`` (chain, fan-out/fan-in,
layered random: width 100, 3 parents), no-op tasks:

- **laufband** ``Graphband`` (PyPI 0.2.1), used as its README shows: every worker process builds a
  ``Graphband`` over a task iterator (``Task(id, dependencies=...)`` in topological order) with
  ``db="sqlite:///..."`` and loops ``for task in worker: ...`` until ``has_more_jobs`` is false.
  laufband has no separate submit step: workers register tasks as they go.
- **conveyor CLI**: ``conveyor submit FILE --db URL`` (one process), then W processes
  ``conveyor worker --db URL --quiet`` started together.
- **conveyor loop**: ``conveyor submit`` as above, then W processes each running
  ``for task in conveyor.worker(graph, db=URL): ...`` (the laufband-style API). Each process also
  reports the time from just before its loop to its end, which gives the rate without
  interpreter start-up ("inner"; informational, never used in a ratio).

The same rules for every system:

- **one timed window**: from the start of the first process (conveyor: ``conveyor submit``;
  laufband: its workers, which register the tasks) to the exit of the last worker. Process
  starts, imports, reading the graph file and submitting/registering the tasks are inside it
  for every side.
- **one time limit** per run (``--timeout``, default 60 s; ``--quick`` 20 s). At the limit the
  processes are stopped and the *partial* rate (tasks completed in the store / limit) is
  reported, marked ``timed out`` (laufband livelocks on some shapes). The conveyor-only rows
  (throughput targets, growth with N), which compare with no other system, have a limit of
  their own (``--solo-timeout``, default 300 s; ``--quick`` 60 s): a 100,000-task run on one
  worker needs more than 60 s on a busy machine.
- **the same repetitions**: every cell runs every system ``--repeat`` times (default 3;
  ``--quick`` 1), the systems interleaved, and reports the run with the median rate.

Every run checks the store afterwards: a conveyor run counts only if all N tasks are done.

Targets (printed PASS/FAIL):
1. conveyor (CLI, SQLite) >= 100x laufband's tasks/s on every graph, N and worker count;
2. conveyor SQLite, 4 workers, 20,000-task layered graph >= 5,000 tasks/s (process starts in);
3. conveyor PostgreSQL, 8 workers, 20,000-task layered graph >= 3,000 tasks/s;
4. conveyor SQLite, 1 worker, layered: time per task at N = 100,000 within 1.5x of N = 1,000
   (measured inside the worker, i.e. without interpreter start-up, which would flatter N = 1,000's
   per-task time the wrong way round; wall-clock numbers are printed too).

Independent tasks and the peers (issue 16, point 9b; section ``fn``): 10,000 tasks without
dependencies (``--fn-n``) whose body is a no-op (no ``fn``), the trivial function
``durable_tasks:fn`` (returns None, named ``module:function`` in the graph file, the module beside
the graph file) or ``durable_tasks:sleep_1ms``; 1 and 4 ``conveyor worker`` processes, each with
conveyor's default slots (``--workers`` 4) or one slot (``--workers 1``); SQLite and PostgreSQL
(fsync and synchronous_commit on: the server's defaults). Beside every ``fn`` cell, the peers run
the same function 10,000 times with the same worker processes and slots per process, interleaved
with conveyor's runs, same time limit (``--fn-timeout``) and repetitions. Both slot settings of
one (body, W) cell run interleaved too (default, one slot, default, ...), so "more slots never
slower" compares runs made under the same load:

- **Celery** (``peer_celery.py``): Redis as broker and result backend, a redis-server started
  here on a free port in a temp dir with Redis's defaults (no AOF: a stored result is not
  fsynced); Celery's defaults otherwise (prefork pool). One process submits
  ``group(fn.s() for ...).apply_async()`` and then waits for every result (``.get()``); once it
  has said "submitted", W ``celery -A peer_celery worker -c SLOTS`` start. Window: the
  submitter's start to the moment it holds all results (Celery workers never exit by
  themselves; their shutdown is after the window).
- **procrastinate** (``peer_procrastinate.py``): ``PsycopgConnector`` on a fresh database of the
  same PostgreSQL server; ``schema --apply`` before the window (a one-time deployment step; for
  conveyor, ``conveyor submit`` creates its schema inside the window); one process
  ``batch_defer``s the jobs, then W ``procrastinate worker -c SLOTS --one-shot`` (exit when every
  job is processed). Window: the deferring process's start to the last worker's exit.

A peer whose package or server is missing is skipped with the reason printed. The table prints
tasks/s per row, 4 workers / 1 worker, default slots / one slot, and conveyor / peer, with the
issue's targets beside them: PostgreSQL ``fn`` with 4 workers >= 3,000/s, SQLite >= 5,000/s;
4 workers never slower than 1; more slots never slower than one.

Montage (issue 16, point 9; section ``montage``): ``graphs.montage(50_000)`` (``--montage-n``), a
deterministic Montage-shaped graph modelled on what wfcommons 1.6 generates for 50,000 Montage
tasks (~6.1 edges per task, depth 8, fan-ins of ~900; wfcommons itself needs minutes and numpy:
``--montage-file`` runs any graph file instead, e.g. one wfcommons wrote); no-op tasks, default
slots, 1 and 4 workers on PostgreSQL and on SQLite. Targets: 4 PostgreSQL workers finish >= 1.3x
sooner than one; SQLite with 4 workers >= 5,000 tasks/s, submission included.

    python benchmarks/bench_durable.py                  # full: ~80 min (laufband is slow)
    python benchmarks/bench_durable.py --quick          # N = 200, a few minutes
    python benchmarks/bench_durable.py --skip-postgres --json out.json
    python benchmarks/bench_durable.py --sections fn,montage    # issue 16's rows: ~30 min
    python benchmarks/bench_durable.py --quick --sections fn --fn-n 50 --fn-bodies fn --fn-workers 1

PostgreSQL: a throwaway server is started here (``initdb``/``pg_ctl`` from
``/usr/lib/postgresql/*/bin``, as the ``postgres`` user via ``runuser`` when run as root, unix
socket in a temp dir, server defaults otherwise); ``--skip-postgres`` leaves it out.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib.util
import json
import os
import platform
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT / "src"))

import graphs  # noqa: E402

KINDS = ("chain", "fanout_fanin", "layered")
SECTIONS = ("grid", "big", "pg", "scaling", "fn", "montage")


# -- results -------------------------------------------------------------------------------------


@dataclass
class Run:
    system: str  # "laufband", "conveyor CLI", "conveyor loop"
    store: str  # "sqlite" | "postgres"
    graph: str
    n: int
    workers: int
    slots: int | None = None  # tasks at once per worker process; None: the system's default
    seconds: float = 0.0  # first process start -> last worker exit (or the time limit)
    done: int = 0  # tasks completed according to the store
    timed_out: bool = False
    submit_s: float | None = None  # conveyor submit: the first part of ``seconds``
    inner_s: float | None = None  # earliest loop start -> latest loop end (loop workers)
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    @property
    def inner_rate(self) -> float | None:
        if self.inner_s is None or self.inner_s <= 0:
            return None
        return self.done / self.inner_s

    @property
    def ok(self) -> bool:
        return self.error is None and not self.timed_out and self.done == self.n

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rate"] = self.rate
        d["inner_rate"] = self.inner_rate
        d["ok"] = self.ok
        return d


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- processes ----------------------------------------------------------------------------------


def conveyor_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "conveyor"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("conveyor")
    if found:
        return [found]
    return [sys.executable, "-c", "from conveyor.cli import main; main()"]


#: Bytecode cache for every process this benchmark starts. The sandbox this was written in sets
#: PYTHONDONTWRITEBYTECODE=1, which makes each worker compile conveyor (an editable install) from
#: source at every start; a user's machine caches bytecode, so the workers here do too (in a
#: directory of their own, outside the source tree).
PYCACHE = Path(tempfile.gettempdir()) / "conveyor-bench-pycache"


def worker_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPYCACHEPREFIX=str(PYCACHE))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    # every process runs the conveyor beside this script (a snapshot of the tree, if run there)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p
    )
    return env


def run_processes(
    cmds: list[list[str]], cwd: Path, timeout: float, env: dict[str, str] | None = None
) -> tuple[float, bool, list[int | None], list[str], list[str]]:
    """Start every command at once, wait for all (up to ``timeout`` s from the first start).
    Returns (seconds, timed_out, return codes, stdouts, stderrs). Output goes to files so a
    chatty worker can never block on a full pipe."""
    outs = [open(cwd / f"proc{i}.out", "w+b") for i in range(len(cmds))]  # noqa: SIM115
    errs = [open(cwd / f"proc{i}.err", "w+b") for i in range(len(cmds))]  # noqa: SIM115
    env = env if env is not None else worker_env()
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(cmd, cwd=cwd, stdout=o, stderr=e, env=env, start_new_session=True)
        for cmd, o, e in zip(cmds, outs, errs, strict=True)
    ]
    deadline = t0 + timeout
    timed_out = False
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.perf_counter()))
        except subprocess.TimeoutExpired:
            timed_out = True
            break
    elapsed = time.perf_counter() - t0
    if timed_out:
        elapsed = timeout
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    texts_out, texts_err = [], []
    for o, e in zip(outs, errs, strict=True):
        o.seek(0)
        e.seek(0)
        texts_out.append(o.read().decode("utf-8", "replace"))
        texts_err.append(e.read().decode("utf-8", "replace"))
        o.close()
        e.close()
    return elapsed, timed_out, [p.returncode for p in procs], texts_out, texts_err


def _tail(text: str, n: int = 400) -> str:
    text = text.strip()
    return text[-n:] if len(text) > n else text


# -- laufband -------------------------------------------------------------------------------------


def laufband_worker_main(graph_file: str, db_path: str, ident: str) -> None:
    """One laufband worker process (started by ``run_laufband``)."""
    from laufband import Graphband, Task

    spec = json.loads(Path(graph_file).read_text(encoding="utf-8"))
    tasks = spec["tasks"]

    class Tasks:
        """Re-iterable task source in topological order, as laufband's README shows."""

        def __iter__(self):  # type: ignore[no-untyped-def]
            for t in tasks:
                yield Task(id=t["id"], dependencies=set(t["deps"]))

        def __len__(self) -> int:
            return len(tasks)

    n = 0
    with Graphband(
        Tasks(), db=f"sqlite:///{db_path}", identifier=ident, tqdm_kwargs={"disable": True}
    ) as worker:
        while True:
            for _task in worker:
                n += 1  # the no-op task
            if not worker.has_more_jobs:
                break
    print(json.dumps({"ran": n}))


def laufband_done(db_path: Path) -> int:
    """Tasks whose latest status row is COMPLETED (read straight from laufband's schema)."""
    if not db_path.exists():
        return 0
    con = sqlite3.connect(str(db_path), timeout=30)
    try:
        row = con.execute(
            "SELECT count(*) FROM tasks t WHERE (SELECT s.status FROM task_statuses s "
            "WHERE s.task_id = t.id ORDER BY s.id DESC LIMIT 1) = 'COMPLETED'"
        ).fetchone()
        return int(row[0])
    except sqlite3.Error:
        return 0
    finally:
        con.close()


def run_laufband(kind: str, n: int, workers: int, graph_file: Path, timeout: float) -> Run:
    run = Run("laufband", "sqlite", kind, n, workers)
    run.extra["load_before"] = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-laufband-") as d:
        wd = Path(d)
        db = wd / "graphband.sqlite"
        cmds = [
            [sys.executable, __file__, "_laufband_worker", str(graph_file), str(db), f"w{i}"]
            for i in range(workers)
        ]
        secs, timed_out, codes, _outs, errs = run_processes(cmds, wd, timeout)
        run.seconds, run.timed_out = secs, timed_out
        run.done = laufband_done(db)
        if not timed_out and any(c != 0 for c in codes):
            bad = next(i for i, c in enumerate(codes) if c != 0)
            run.error = f"worker exit {codes[bad]}: {_tail(errs[bad])}"
    return run


# -- conveyor -----------------------------------------------------------------------------------


def loop_worker_main(graph_file: str, url: str) -> None:
    """One ``conveyor.worker()`` loop process: prints its own loop timing as JSON."""
    import conveyor

    t_enter = time.time()
    n = 0
    t_first = None
    for _task in conveyor.worker(graph_file, db=url):
        if t_first is None:
            t_first = time.time()
        n += 1  # the no-op task
    t_end = time.time()
    print(json.dumps({"ran": n, "t_enter": t_enter, "t_first": t_first, "t_end": t_end}))


def store_counts(url: str) -> dict[str, int]:
    """Counts by state from ``conveyor status --json``, in a fresh process: the same conveyor
    as the workers', even while the source tree changes under a long run."""
    p = subprocess.run(
        [*conveyor_cmd(), "status", "--db", url, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env=worker_env(),
    )
    if p.returncode != 0:
        raise RuntimeError(f"status exit {p.returncode}: {_tail(p.stderr or p.stdout)}")
    return {k: int(v) for k, v in json.loads(p.stdout)["counts"].items()}


def submit(graph_file: Path, url: str, cwd: Path, timeout: float) -> tuple[float, str | None]:
    """``conveyor submit`` in its own process; (seconds, error). Past ``timeout`` the process is
    killed and the error is "timed out"."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run(
            [*conveyor_cmd(), "submit", str(graph_file), "--db", url],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=worker_env(),
        )
    except subprocess.TimeoutExpired:
        return timeout, "timed out"
    secs = time.perf_counter() - t0
    if p.returncode != 0:
        return secs, f"submit exit {p.returncode}: {_tail(p.stderr or p.stdout)}"
    return secs, None


def run_conveyor(
    mode: str,
    store: str,
    kind: str,
    n: int,
    workers: int,
    graph_file: Path,
    url_for: Any,
    timeout: float,
    slots: int | None = None,
) -> Run:
    """``mode``: "cli" (``conveyor worker``) or "loop" (``conveyor.worker()`` processes). The
    timed window runs from the start of ``conveyor submit`` to the last worker's exit, and
    ``timeout`` bounds all of it. ``slots``: ``conveyor worker --workers SLOTS`` (tasks at once
    per worker process); None leaves conveyor's default."""
    run = Run(f"conveyor {'CLI' if mode == 'cli' else 'loop'}", store, kind, n, workers, slots)
    run.extra["load_before"] = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-conveyor-") as d:
        wd = Path(d)
        url = url_for(wd)
        run.submit_s, err = submit(graph_file, url, wd, timeout)
        if err == "timed out":
            run.seconds, run.timed_out = timeout, True
            return run
        if err:
            run.error = err
            return run
        if mode == "cli":
            cmd = [*conveyor_cmd(), "worker", "--db", url, "--quiet"]
            if slots is not None:
                cmd += ["--workers", str(slots)]
        else:
            cmd = [sys.executable, __file__, "_loop_worker", str(graph_file), url]
        secs, timed_out, codes, outs, errs = run_processes(
            [cmd] * workers, wd, max(0.0, timeout - run.submit_s)
        )
        run.seconds, run.timed_out = run.submit_s + secs, timed_out
        run.extra["workers_s"] = secs
        try:
            counts = store_counts(url)
        except Exception as exc:  # report, never hide
            counts = {}
            run.error = f"counts: {exc}"
        run.done = counts.get("done", 0)
        run.extra["counts"] = counts
        if not timed_out and any(c != 0 for c in codes):
            bad = next(i for i, c in enumerate(codes) if c != 0)
            run.error = f"worker exit {codes[bad]}: {_tail(errs[bad])}"
        if mode == "loop" and not timed_out:
            infos = []
            for o in outs:
                for line in o.splitlines():
                    with contextlib.suppress(ValueError):
                        infos.append(json.loads(line))
            infos = [i for i in infos if isinstance(i, dict) and "t_enter" in i]
            if len(infos) == workers:
                run.inner_s = max(i["t_end"] for i in infos) - min(i["t_enter"] for i in infos)
                run.extra["ran"] = sum(i["ran"] for i in infos)
        if run.done != n and run.error is None and not timed_out:
            run.error = f"only {run.done} of {n} tasks done: {counts}"
    return run


def median_of(runs: list[Run]) -> Run:
    """The run with the median rate (the lower of the two middle ones for an even count). A run
    that failed (an error, not a time-out) is returned instead, so no failure is hidden by the
    other repetitions."""
    failed = [r for r in runs if r.error is not None]
    pick = failed[0] if failed else sorted(runs, key=lambda r: r.rate)[(len(runs) - 1) // 2]
    pick.extra["repeat"] = len(runs)
    pick.extra["rates"] = [round(r.rate, 1) for r in runs]
    pick.extra["timed_out_runs"] = sum(r.timed_out for r in runs)
    return pick


def repeated(
    systems: dict[str, Callable[[], Run]], repeat: int, every_run: list[Run], show: dict[str, str]
) -> dict[str, Run]:
    """Run every system of one cell ``repeat`` times, interleaved (a, b, c, a, b, c, ...) so a
    change in the machine's load falls on every side alike; the median run of each system."""
    got: dict[str, list[Run]] = {k: [] for k in systems}
    for _ in range(repeat):
        for key, fn in systems.items():
            r = fn()
            got[key].append(r)
            every_run.append(r)
    medians = {k: median_of(v) for k, v in got.items()}
    for k, r in medians.items():
        each = ", ".join(f"{x:,.0f}" for x in r.extra["rates"])
        log(f"    {show.get(k, k):13s} {fmt_rate(r)}  (every run, tasks/s: {each})")
    return medians


def startup_baseline(url_for: Any, graph_file: Path) -> float:
    """Seconds for one ``conveyor worker`` on an already finished graph: interpreter start,
    imports, connect, find nothing to do, exit."""
    with tempfile.TemporaryDirectory(prefix="bench-conveyor-") as d:
        wd = Path(d)
        url = url_for(wd)
        submit(graph_file, url, wd, 120)
        cmd = [*conveyor_cmd(), "worker", "--db", url, "--quiet"]
        run_processes([cmd], wd, 120)  # finish the graph
        best = float("inf")
        for _ in range(3):
            secs, *_ = run_processes([cmd], wd, 120)
            best = min(best, secs)
        return best


def sqlite_url(wd: Path) -> str:
    return f"sqlite:///{wd / 'run.db'}"


# -- PostgreSQL -----------------------------------------------------------------------------------


class PgServer:
    """A throwaway PostgreSQL server on a unix socket in a temp dir; a fresh database per run."""

    def __init__(self) -> None:
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not bins:
            raise RuntimeError("no /usr/lib/postgresql/*/bin/initdb (apt-get install postgresql)")
        self.bindir = Path(bins[-1]).parent
        self.dir = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        self.data = self.dir / "data"
        self.port = 40000 + os.getpid() % 20000
        self.root = os.geteuid() == 0
        self._dbs = 0
        if self.root:
            shutil.chown(self.dir, "postgres", "postgres")
        self._pg("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        opts = f"-k {self.dir} -c listen_addresses='' -p {self.port}"
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "-o", opts,
                 "start")  # fmt: skip
        import psycopg

        self.admin = psycopg.connect(self.url("postgres"), autocommit=True)
        self.version = self.admin.execute("SHOW server_version").fetchone()[0]
        self.settings = {
            k: self.admin.execute(f"SHOW {k}").fetchone()[0]
            for k in ("fsync", "synchronous_commit", "shared_buffers", "max_connections")
        }

    def _pg(self, prog: str, *args: str) -> None:
        cmd = [str(self.bindir / prog), *args]
        if self.root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, cwd=self.dir)

    def url(self, db: str) -> str:
        return f"postgresql://postgres@/{db}?host={self.dir}&port={self.port}"

    def new_db(self, _wd: Path, sync_commit: bool = True) -> str:
        self._dbs += 1
        name = f"bench{self._dbs}"
        self.admin.execute(f"CREATE DATABASE {name}")
        if not sync_commit:
            # like SQLite's WAL + synchronous=NORMAL: a commit survives a process crash; a
            # power cut may lose the last few (never corrupts)
            self.admin.execute(f"ALTER DATABASE {name} SET synchronous_commit = off")
        return self.url(name)

    def new_db_async(self, wd: Path) -> str:
        return self.new_db(wd, sync_commit=False)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.admin.close()
        with contextlib.suppress(Exception):
            self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


# -- independent tasks, and the peers: Celery (Redis) and procrastinate (PostgreSQL) -------------

#: What the independent-task rows run: no body (a conveyor no-op; no peer runs these), the
#: trivial function, a 1 ms sleep. The functions live in ``durable_tasks.py``.
BODIES = {"noop": None, "fn": "fn", "sleep_1ms": "sleep_1ms"}
BODY_LABEL = {"noop": "no-op", "fn": "fn (returns None)", "sleep_1ms": "1 ms sleep"}

#: conveyor's default tasks at once per ``conveyor worker`` (``--workers``); the peers get the
#: same number per worker process in the "default slots" rows.
CONVEYOR_DEFAULT_SLOTS = 4


def write_independent(n: int, body: str, directory: Path) -> Path:
    """``n`` tasks without dependencies; ``fn: "durable_tasks:<body>"`` unless a no-op. The task
    module is copied beside the graph file (where conveyor imports ``fn`` names from)."""
    fn_name = BODIES[body]
    tasks: list[dict[str, Any]] = []
    for i in range(n):
        t: dict[str, Any] = {"id": f"t{i}"}
        if fn_name:
            t["fn"] = f"durable_tasks:{fn_name}"
        tasks.append(t)
    if fn_name:
        shutil.copyfile(BENCH / "durable_tasks.py", directory / "durable_tasks.py")
    return graphs.write_graph(
        {"name": f"independent-{body}-{n}", "tasks": tasks}, directory, f"independent-{body}-{n}"
    )


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A throwaway redis-server on a free localhost port, data in a temp dir, Redis's built-in
    defaults otherwise (no config file: RDB snapshots, no AOF: a result is in memory, not
    fsynced, when Celery reports it)."""

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("no redis-server on PATH (apt-get install redis-server)")
        import redis

        self.dir = Path(tempfile.mkdtemp(prefix="bench-redis-"))
        self.port = free_port()
        self.log = self.dir / "log"
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--logfile", str(self.log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        self.client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.perf_counter() + 15
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.perf_counter() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"redis-server did not start: {_tail(self._log())}"
                    ) from None
                time.sleep(0.05)
        self.version = str(self.client.info()["redis_version"])
        self.settings = {
            k: str(self.client.config_get(k).get(k)) for k in ("save", "appendonly", "appendfsync")
        }

    def _log(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def flush(self) -> None:
        self.client.flushall()

    def results(self) -> int:
        """Celery results stored with state SUCCESS."""
        n = 0
        keys = list(self.client.scan_iter("celery-task-meta-*", count=1000))
        for i in range(0, len(keys), 1000):
            for raw in self.client.mget(keys[i : i + 1000]):
                if raw and b'"SUCCESS"' in raw:
                    n += 1
        return n

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.shutdown(nosave=True)
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=5)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def peer_version(mod: str) -> str:
    import importlib.metadata as md

    try:
        return md.version(mod)
    except md.PackageNotFoundError:
        return "absent"


def peer_env(**extra: str) -> dict[str, str]:
    """``worker_env()`` with this directory importable (the peer apps and task bodies)."""
    env = worker_env()
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH), env["PYTHONPATH"]])
    env.update(extra)
    return env


def _stop_group(p: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM the process group (a Celery worker and its pool), then SIGKILL after ``grace``."""
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(p.pid, signal.SIGKILL)  # what is left of the group (pool children)
    with contextlib.suppress(subprocess.TimeoutExpired):
        p.wait(timeout=5)


def celery_submit_main(n: str, body: str, timeout: str) -> None:
    """Submits ``n`` tasks as a Celery user would (a group of signatures), says so on stdout,
    then waits for every result (``GroupResult.get``: the Redis backend's native join)."""
    import peer_celery
    from celery import group

    task = getattr(peer_celery, body)
    res = group(task.s() for _ in range(int(n))).apply_async()
    print("submitted", time.time(), flush=True)
    got = res.get(timeout=float(timeout), propagate=True)
    print(json.dumps({"results": len(got)}), flush=True)


def run_celery(
    n: int, workers: int, slots: int, body: str, redis_server: RedisServer, timeout: float
) -> Run:
    """One Celery run. Timed window: from the start of the submitting process (which then waits
    for the results) through worker starts to the moment it holds all ``n`` results. Workers
    (``celery -A peer_celery worker -c SLOTS``) start once submission is done, as conveyor's
    start after ``conveyor submit``; they never exit by themselves, so their shutdown is after
    the window."""
    run = Run("Celery (Redis)", "redis", f"independent-{body}", n, workers, slots)
    run.extra["load_before"] = os.getloadavg()[0]
    redis_server.flush()
    env = peer_env(CONVEYOR_BENCH_REDIS=redis_server.url)
    with tempfile.TemporaryDirectory(prefix="bench-celery-") as d:
        wd = Path(d)
        files = []

        def spawn(cmd: list[str], name: str) -> subprocess.Popen[bytes]:
            o, e = open(wd / f"{name}.out", "w+b"), open(wd / f"{name}.err", "w+b")  # noqa: SIM115
            files.extend((o, e))
            return subprocess.Popen(
                cmd, cwd=wd, stdout=o, stderr=e, env=env, start_new_session=True
            )

        t0 = time.perf_counter()
        deadline = t0 + timeout
        sub = spawn([sys.executable, __file__, "_celery_submit", str(n), body, str(timeout)], "sub")
        procs: list[subprocess.Popen[bytes]] = []
        try:
            while sub.poll() is None and time.perf_counter() < deadline:
                if b"submitted" in (wd / "sub.out").read_bytes():
                    break
                time.sleep(0.005)
            run.submit_s = time.perf_counter() - t0
            if sub.poll() is None and time.perf_counter() < deadline:
                procs = [
                    spawn(
                        [
                            sys.executable,
                            "-m",
                            "celery",
                            "-A",
                            "peer_celery",
                            "worker",
                            "-c",
                            str(slots),
                            "-n",
                            f"w{i}@%h",
                            "--loglevel",
                            "WARNING",
                        ],
                        f"w{i}",
                    )
                    for i in range(workers)
                ]
            try:
                sub.wait(timeout=max(0.0, deadline - time.perf_counter()))
                run.seconds = time.perf_counter() - t0
            except subprocess.TimeoutExpired:
                run.seconds, run.timed_out = timeout, True
        finally:
            _stop_group(sub, grace=0)
            for p in procs:
                _stop_group(p)
            for f in files:
                f.close()
        run.done = redis_server.results()
        if not run.timed_out and sub.returncode != 0:
            run.error = f"submitter exit {sub.returncode}: {_tail((wd / 'sub.err').read_text())}"
        elif run.done != n and not run.timed_out:
            run.error = f"only {run.done} of {n} results stored"
    return run


def procrastinate_submit_main(n: str, body: str) -> None:
    """Defers ``n`` jobs in one ``batch_defer`` call (procrastinate's documented bulk path)."""
    import peer_procrastinate

    task = getattr(peer_procrastinate, body)
    with peer_procrastinate.app.open():
        task.batch_defer(*({} for _ in range(int(n))))


def procrastinate_counts(url: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(url) as con:
        rows = con.execute("SELECT status::text, count(*) FROM procrastinate_jobs GROUP BY 1")
        return {str(k): int(v) for k, v in rows.fetchall()}


def run_procrastinate(
    n: int, workers: int, slots: int, body: str, pg: PgServer, timeout: float
) -> Run:
    """One procrastinate run on a fresh database of the benchmark's PostgreSQL server. The schema
    is applied first, outside the window (a one-time deployment step). Timed window: from the
    start of the deferring process to the exit of the last ``procrastinate worker --one-shot``."""
    run = Run("procrastinate", "postgres", f"independent-{body}", n, workers, slots)
    run.extra["load_before"] = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-procrastinate-") as d:
        wd = Path(d)
        url = pg.new_db(wd)
        env = peer_env(CONVEYOR_BENCH_PG=url)
        app = ["--app=peer_procrastinate.app"]
        cli = [sys.executable, "-m", "procrastinate", *app]
        p = subprocess.run([*cli, "schema", "--apply"], cwd=wd, env=env, capture_output=True,
                           text=True, timeout=120)  # fmt: skip
        if p.returncode != 0:
            run.error = f"schema --apply exit {p.returncode}: {_tail(p.stderr)}"
            return run
        t0 = time.perf_counter()
        try:
            p = subprocess.run([sys.executable, __file__, "_procrastinate_submit", str(n), body],
                               cwd=wd, env=env, capture_output=True, text=True,
                               timeout=timeout)  # fmt: skip
        except subprocess.TimeoutExpired:
            run.seconds, run.timed_out = timeout, True
            return run
        run.submit_s = time.perf_counter() - t0
        if p.returncode != 0:
            run.error = f"defer exit {p.returncode}: {_tail(p.stderr)}"
            return run
        cmd = [*cli, "worker", "-c", str(slots), "--one-shot"]
        secs, timed_out, codes, _outs, errs = run_processes(
            [cmd] * workers, wd, max(0.0, timeout - run.submit_s), env
        )
        run.seconds, run.timed_out = run.submit_s + secs, timed_out
        try:
            counts = procrastinate_counts(url)
        except Exception as exc:
            counts = {}
            run.error = f"counts: {exc}"
        run.extra["counts"] = counts
        run.done = counts.get("succeeded", 0)
        if not timed_out and any(c != 0 for c in codes):
            bad = next(i for i, c in enumerate(codes) if c != 0)
            run.error = f"worker exit {codes[bad]}: {_tail(errs[bad])}"
        elif run.done != n and run.error is None and not timed_out:
            run.error = f"only {run.done} of {n} jobs succeeded: {counts}"
    return run


# -- the table ----------------------------------------------------------------------------------


def fmt_rate(r: Run | None) -> str:
    if r is None:
        return "-"
    if r.error and not r.done:
        return "error"
    s = f"{r.rate:,.0f}/s ({r.seconds:.2f}s)"
    if r.timed_out:
        s += f" timed out, {r.done}/{r.n}"
    elif r.error:
        s += " ERROR"
    partial = r.extra.get("timed_out_runs", 0)
    if partial and not r.timed_out:
        s += f" ({partial} of {r.extra['repeat']} runs timed out)"
    return s


def ratio(a: Run | None, b: Run | None) -> float | None:
    if a is None or b is None or not a.ok or b.rate <= 0:
        return None
    return a.rate / b.rate


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print(f"\n## {title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    sys.stdout.flush()


def machine_note(pg: PgServer | None) -> dict[str, Any]:
    import importlib.metadata as md

    def ver(p: str) -> str:
        try:
            return md.version(p)
        except md.PackageNotFoundError:
            return "absent"

    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = "unknown"
    with contextlib.suppress(Exception):
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=10,
        ).stdout.strip() or (ROOT / "COMMIT").read_text().strip()  # fmt: skip
    note = {
        "commit": commit,
        "load_avg_end": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "sqlite": sqlite3.sqlite_version,
        "laufband": ver("laufband"),
        "conveyor": ver("conveyor"),
        "sqlalchemy": ver("sqlalchemy"),
    }
    if pg is not None:
        note["postgresql"] = pg.version
        note["postgresql_settings"] = pg.settings
    return note


# -- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N = 200 and smaller extras, < 1 min")
    ap.add_argument("--skip-postgres", action="store_true", help="leave out PostgreSQL")
    ap.add_argument("--skip-laufband", action="store_true", help="conveyor only (no ratios)")
    ap.add_argument("--skip-loop", action="store_true", help="leave out conveyor.worker() runs")
    ap.add_argument("--json", type=Path, help="write every run and target here")
    ap.add_argument(
        "--timeout", type=float, help="seconds per run, every system alike (default 60; quick 20)"
    )
    ap.add_argument(
        "--repeat", type=int, help="runs per system and cell, median shown (default 3; quick 1)"
    )
    ap.add_argument(
        "--solo-timeout", type=float, help="seconds per conveyor-only run (default 300; quick 60)"
    )
    ap.add_argument(
        "--skip-grid", action="store_true", help="only the conveyor-only rows (no side by side)"
    )
    ap.add_argument("--sizes", help="comma-separated N for the side-by-side grid")
    ap.add_argument("--kinds", default=",".join(KINDS), help="graph kinds for the grid")
    ap.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"which parts to run (default all): {','.join(SECTIONS)}",
    )
    ap.add_argument(
        "--fn-n", type=int, help="tasks in the independent-task rows (10,000; quick 200)"
    )
    ap.add_argument(
        "--fn-bodies", default=",".join(BODIES), help=f"bodies for those rows: {','.join(BODIES)}"
    )
    ap.add_argument("--fn-workers", default="1,4", help="worker processes for those rows")
    ap.add_argument(
        "--fn-timeout", type=float, help="seconds per independent-task run, every system alike "
        "(default 120; quick 30)"
    )  # fmt: skip
    ap.add_argument("--skip-peers", action="store_true", help="no Celery and procrastinate runs")
    ap.add_argument(
        "--stores", default="sqlite,postgres",
        help="conveyor stores of the fn and montage rows (default sqlite,postgres)",
    )  # fmt: skip
    ap.add_argument(
        "--montage-n", type=int, help="tasks in the Montage-shaped graph (50,000; quick 2,000)"
    )
    ap.add_argument(
        "--montage-file", type=Path, help="run this graph file instead (e.g. WfCommons)"
    )
    args = ap.parse_args(argv)
    sections = {x for x in args.sections.split(",") if x}
    if sections - set(SECTIONS):
        ap.error(f"unknown sections {sorted(sections - set(SECTIONS))}: {','.join(SECTIONS)}")
    if args.skip_grid:
        sections.discard("grid")

    if args.quick:
        sizes, big, pg_n, small_n, huge_n = [200], 2_000, 2_000, 200, 5_000
        timeout, repeat, solo_timeout = 20.0, 1, 60.0
        fn_n, fn_timeout, montage_n = 200, 30.0, 2_000
    else:
        sizes, big, pg_n, small_n, huge_n = [1_000, 5_000], 20_000, 20_000, 1_000, 100_000
        timeout, repeat, solo_timeout = 60.0, 3, 300.0
        fn_n, fn_timeout, montage_n = 10_000, 120.0, 50_000
    fn_n = args.fn_n or fn_n
    fn_timeout = args.fn_timeout or fn_timeout
    montage_n = args.montage_n or montage_n
    bodies = [b for b in args.fn_bodies.split(",") if b]
    if set(bodies) - set(BODIES):
        ap.error(f"unknown bodies {sorted(set(bodies) - set(BODIES))}: {','.join(BODIES)}")
    fn_workers = [int(w) for w in args.fn_workers.split(",") if w]
    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",")]
    # one limit and one repetition count for every system: a hang is reported as "timed out"
    if args.timeout is not None:
        timeout = args.timeout
    if args.solo_timeout is not None:
        solo_timeout = args.solo_timeout
    if args.repeat is not None:
        repeat = max(1, args.repeat)
    kinds = [k for k in args.kinds.split(",") if k]
    store_names = {x for x in args.stores.split(",") if x}
    if store_names - {"sqlite", "postgres"}:
        ap.error(f"unknown stores {sorted(store_names - {'sqlite', 'postgres'})}: sqlite,postgres")

    laufband_ok = not args.skip_laufband and "grid" in sections
    if laufband_ok:
        try:
            import laufband

            if laufband.__version__ != "0.2.1":
                log(f"note: laufband {laufband.__version__} installed; the figures are for 0.2.1")
        except ImportError:
            log("laufband is not installed (pip install laufband==0.2.1): no laufband runs")
            laufband_ok = False

    peer_notes: list[str] = []  # why a peer did not run
    celery_ok = procrastinate_ok = False
    if "fn" in sections and "fn" in bodies and not args.skip_peers:
        celery_ok, procrastinate_ok = True, True
        for mod, what in (("celery", "Celery"), ("redis", "Celery's Redis client")):
            if importlib.util.find_spec(mod) is None:
                peer_notes.append(
                    f"Celery: not run: {what} is not installed (pip install celery redis)"
                )
                celery_ok = False
                break
        if celery_ok and shutil.which("redis-server") is None:
            peer_notes.append("Celery: not run: no redis-server (apt-get install redis-server)")
            celery_ok = False
        if importlib.util.find_spec("procrastinate") is None:
            peer_notes.append("procrastinate: not run: not installed (pip install procrastinate)")
            procrastinate_ok = False
    elif args.skip_peers:
        peer_notes.append("Celery, procrastinate: not run (--skip-peers)")
    for note in peer_notes:
        log(note)

    pg: PgServer | None = None
    pg_error = None
    redis_server: RedisServer | None = None
    if not args.skip_postgres:
        try:
            pg = PgServer()
        except Exception as exc:
            pg_error = f"PostgreSQL server did not start: {exc}"
            log(pg_error)
    if pg is None and procrastinate_ok:
        peer_notes.append("procrastinate: not run: no PostgreSQL server (see above)")
        procrastinate_ok = False
    if celery_ok:
        try:
            redis_server = RedisServer()
        except Exception as exc:
            peer_notes.append(f"Celery: not run: {exc}")
            celery_ok = False
            log(peer_notes[-1])

    runs: list[Run] = []  # every run, every repetition
    medians: list[Run] = []
    load_start = os.getloadavg()[0]
    targets: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-graphs-") as gd:
            gdir = Path(gd)

            def graph_file(kind: str, n: int) -> Path:
                p = gdir / f"{kind}-{n}.json"
                if not p.exists():
                    graphs.write_graph(graphs.by_name(kind, n), gdir, name=f"{kind}-{n}")
                return p

            # 0. warm-up: fills the bytecode cache and the page cache; nothing here is reported
            log(f"[{time.perf_counter() - t_start:6.1f}s] warm-up")
            gf_small = graph_file("chain", 20)
            if laufband_ok:
                run_laufband("chain", 20, 1, gf_small, timeout)
            run_conveyor("cli", "sqlite", "chain", 20, 1, gf_small, sqlite_url, timeout)
            if not args.skip_loop:
                run_conveyor("loop", "sqlite", "chain", 20, 1, gf_small, sqlite_url, timeout)
            baseline = None
            if "scaling" in sections:
                baseline = startup_baseline(sqlite_url, gf_small)
                log(f"    one `conveyor worker` start-up on a finished graph: "
                    f"{baseline * 1000:.0f} ms")  # fmt: skip
            # the peers' bytecode and page caches too, as conveyor's above
            if celery_ok and redis_server is not None:
                run_celery(20, 1, 1, "fn", redis_server, fn_timeout)
            if procrastinate_ok and pg is not None:
                run_procrastinate(20, 1, 1, "fn", pg, fn_timeout)

            show = {"laufband": "laufband", "cli": "conveyor CLI", "loop": "conveyor loop"}

            def conveyor_systems(
                store: str,
                kind: str,
                n: int,
                w: int,
                gf: Path,
                url_for: Any,
                loop: bool = True,
                limit: float = timeout,
            ) -> dict[str, Callable[[], Run]]:
                modes = ["cli", "loop"] if loop else ["cli"]
                return {
                    m: partial(run_conveyor, m, store, kind, n, w, gf, url_for, limit)
                    for m in modes
                }

            # 1. side by side
            grid: dict[tuple[str, int, int], dict[str, Run]] = {}
            for n in sizes if "grid" in sections else []:
                for kind in kinds:
                    gf = graph_file(kind, n)
                    for w in (1, 4):
                        log(f"[{time.perf_counter() - t_start:6.1f}s] {kind} N={n} W={w}")
                        systems: dict[str, Callable[[], Run]] = {}
                        if laufband_ok:
                            systems["laufband"] = partial(run_laufband, kind, n, w, gf, timeout)
                        systems.update(conveyor_systems("sqlite", kind, n, w, gf, sqlite_url,
                                                        not args.skip_loop))  # fmt: skip
                        cell = repeated(systems, repeat, runs, show)
                        grid[(kind, n, w)] = cell
                        medians.extend(cell.values())

            # 2. big SQLite, 4 workers
            big_cli: Run | None = None
            big_loop: Run | None = None
            if "big" in sections:
                log(f"[{time.perf_counter() - t_start:6.1f}s] SQLite layered N={big} W=4")
                gf_big = graph_file("layered", big)
                cell = repeated(conveyor_systems("sqlite", "layered", big, 4, gf_big, sqlite_url,
                                                 not args.skip_loop, solo_timeout),
                                repeat, runs, show)  # fmt: skip
                big_cli, big_loop = cell["cli"], cell.get("loop")
                medians.extend(cell.values())

            # 3. PostgreSQL, 8 workers
            pg_runs: list[Run] = []
            if pg is not None and "pg" in sections:
                gf_pg = graph_file("layered", pg_n)
                for w, sync in ((1, True), (8, True), (1, False), (8, False)):
                    log(f"[{time.perf_counter() - t_start:6.1f}s] PostgreSQL layered N={pg_n} "
                        f"W={w} synchronous_commit={'on' if sync else 'off'}")  # fmt: skip
                    url_for = pg.new_db if sync else pg.new_db_async
                    # the loop API once: 8 workers, the server's defaults
                    loop = w == 8 and sync and not args.skip_loop
                    systems = conveyor_systems(
                        "postgres", "layered", pg_n, w, gf_pg, url_for, loop, solo_timeout
                    )
                    cell = repeated(systems, repeat, runs, show)
                    for r in cell.values():
                        r.extra["synchronous_commit"] = "on" if sync else "off"
                    pg_runs.extend(cell.values())
                pg_runs.sort(key=lambda r: r.system)  # CLI rows first, then the loop row
                medians.extend(pg_runs)

            # 4. growth with N, SQLite, 1 worker
            scale: dict[int, dict[str, Run]] = {}
            for n in (small_n, huge_n) if "scaling" in sections else ():
                log(f"[{time.perf_counter() - t_start:6.1f}s] SQLite layered N={n} W=1 (scaling)")
                gf = graph_file("layered", n)
                # the loop runs even with --skip-loop: the growth target is judged on them
                systems = conveyor_systems(
                    "sqlite", "layered", n, 1, gf, sqlite_url, limit=solo_timeout
                )
                scale[n] = repeated(systems, repeat, runs, show)
                for r in scale[n].values():
                    r.extra["purpose"] = "scaling"
                medians.extend(scale[n].values())

            # 5. independent tasks: no-op, fn, 1 ms; 1 and 4 workers; default slots and one slot
            # per worker; SQLite and PostgreSQL; the peers beside the fn rows (interleaved)
            indep: dict[tuple[str, str, int, int | None], Run] = {}  # (system, body, W, slots)
            pg_url = pg.new_db if pg is not None else None
            stores = [("sqlite", sqlite_url)] + ([("postgres", pg_url)] if pg_url else [])
            stores = [(st, u) for st, u in stores if st in store_names]
            names = {"sqlite": "conveyor SQLite", "postgres": "conveyor PG",
                     "celery": "Celery", "procrastinate": "procrastinate"}  # fmt: skip
            for body in bodies if "fn" in sections else []:
                gf_ind = write_independent(fn_n, body, gdir)
                for w in fn_workers:
                    # Both slot settings in one cell, interleaved run by run (default, one,
                    # default, one, ...): the slot ratio compares runs made under the same load.
                    log(f"[{time.perf_counter() - t_start:6.1f}s] independent {body} "
                        f"N={fn_n} W={w} slots=default and 1")  # fmt: skip
                    slot_systems: dict[str, Callable[[], Run]] = {}
                    slot_show: dict[str, str] = {}
                    for slots in (None, 1):
                        tag = f"{slots or 'default'} slot{'s' if slots != 1 else ''}"
                        for st, url_for in stores:
                            slot_systems[f"{st}/{slots}"] = partial(
                                run_conveyor, "cli", st, f"independent-{body}", fn_n, w, gf_ind,
                                url_for, fn_timeout, slots,
                            )  # fmt: skip
                        peer_slots = slots or CONVEYOR_DEFAULT_SLOTS
                        if body == "fn" and celery_ok and redis_server is not None:
                            slot_systems[f"celery/{slots}"] = partial(
                                run_celery, fn_n, w, peer_slots, body, redis_server, fn_timeout
                            )
                        if body == "fn" and procrastinate_ok and pg is not None:
                            slot_systems[f"procrastinate/{slots}"] = partial(
                                run_procrastinate, fn_n, w, peer_slots, body, pg, fn_timeout
                            )
                        for key in slot_systems:
                            slot_show.setdefault(key, f"{names[key.split('/')[0]]}, {tag}")
                    cell = repeated(slot_systems, repeat, runs, slot_show)
                    for key, r in cell.items():
                        system, _, slot_text = key.partition("/")
                        slots_of = None if slot_text == "None" else int(slot_text)
                        indep[(system, body, w, slots_of)] = r
                        r.extra["purpose"] = "independent"
                    medians.extend(cell.values())

            # 6. the Montage-shaped graph (issue point 9): 1 and 4 workers, PostgreSQL and SQLite
            montage_runs: dict[tuple[str, int], Run] = {}
            montage_name = ""
            if "montage" in sections:
                if args.montage_file:
                    gf_m = args.montage_file.resolve()
                    mspec = json.loads(gf_m.read_text(encoding="utf-8"))
                    montage_name = f"{gf_m.name} (given)"
                else:
                    mspec = graphs.montage(montage_n)
                    gf_m = graphs.write_graph(mspec, gdir, name=f"montage-{montage_n}")
                    montage_name = mspec["name"]
                m_n = len(mspec["tasks"])
                m_edges = sum(len(t.get("deps", t.get("parents", []))) for t in mspec["tasks"])
                montage_name += f": {m_n:,} tasks, {m_edges / m_n:.2f} edges per task"
                del mspec
                for st, url_for in stores:
                    for w in (1, 4):
                        log(f"[{time.perf_counter() - t_start:6.1f}s] Montage {st} N={m_n} W={w}")
                        cell = repeated(
                            {st: partial(run_conveyor, "cli", st, "montage", m_n, w, gf_m,
                                         url_for, solo_timeout)},
                            repeat, runs, {"sqlite": "conveyor SQLite", "postgres": "conveyor PG"},
                        )  # fmt: skip
                        montage_runs[(st, w)] = cell[st]
                        cell[st].extra["purpose"] = "montage"
                        medians.extend(cell.values())
    finally:
        if pg is not None:
            note_pg = pg
            machine = machine_note(note_pg)
            pg.stop()
        else:
            machine = machine_note(None)
        if redis_server is not None:
            machine["redis_server"] = redis_server.version
            machine["redis_settings"] = redis_server.settings
            redis_server.stop()
        for mod in ("celery", "redis", "procrastinate"):
            machine[mod] = peer_version(mod)  # the Python packages

    # -- print ---------------------------------------------------------------------------------
    systems_run = {k[0] for k in indep}
    peers = [f"laufband {machine['laufband']}"] if grid else []
    peers += [name for name in ("Celery", "procrastinate") if name.lower() in systems_run]
    print("\n# conveyor durable runs" + (f" vs {', '.join(peers)}" if peers else ""))
    print(
        f"\nMachine: {machine['cpu']}, {machine['cores']} cores, Python {machine['python']}, "
        f"SQLite {machine['sqlite']}, conveyor at {machine['commit']}"
        + (f", PostgreSQL {machine['postgresql']}" if "postgresql" in machine else "")
        + f". Load average (1 min) at start {load_start:.1f}, at end {machine['load_avg_end']:.1f}"
        + f". Every system alike: a time limit of {timeout:.0f} s per run (conveyor-only rows "
        f"{solo_timeout:.0f} s), the median of "
        f"{repeat} run{'s' if repeat > 1 else ''} per cell (systems interleaved), and rates in "
        "tasks/s over the wall time from the first process start (conveyor: `conveyor submit`; "
        "laufband: its workers, which register the tasks; Celery, procrastinate: the process "
        "that submits) to the last worker exit (Celery: the last result in the submitter's "
        "hands): process starts, imports and submission/registration are inside every window."
        + (f" Independent-task rows: a limit of {fn_timeout:.0f} s per run, every system alike."
           if indep else "")
        + (f" Redis {machine['redis_server']} ({machine['redis_settings']}), Celery "
           f"{machine['celery']}, procrastinate {machine['procrastinate']}."
           if "redis_server" in machine else "")
    )  # fmt: skip

    header = ["graph", "N", "W", "laufband", "conveyor CLI", "conveyor loop", "of which submit",
              "CLI / laufband", "loop / laufband", ">= 100x CLI / loop"]  # fmt: skip
    rows = []
    passes: dict[str, list[bool]] = {"cli": [], "loop": []}

    def judge(key: str, r: float | None, lb: Run | None, run: Run | None) -> str:
        if lb is None or run is None or args.quick:
            return "-"  # --quick: at N = 200 process start-up is most of the time; not judged
        ok = r is not None and r >= 100
        passes[key].append(ok)
        return "PASS" if ok else "FAIL"

    for (kind, n, w), cell in grid.items():
        lb, cli, loop = cell.get("laufband"), cell.get("cli"), cell.get("loop")
        r_cli, r_loop = ratio(cli, lb), ratio(loop, lb)
        verdict = f"{judge('cli', r_cli, lb, cli)} / {judge('loop', r_loop, lb, loop)}"
        rows.append([
            kind, f"{n:,}", str(w), fmt_rate(lb), fmt_rate(cli), fmt_rate(loop),
            f"{cli.submit_s:.2f}s" if cli and cli.submit_s is not None else "-",
            f"{r_cli:,.0f}x" if r_cli else "-", f"{r_loop:,.0f}x" if r_loop else "-", verdict,
        ])  # fmt: skip
    if rows:
        print_table("Side by side (SQLite, no-op tasks)", header, rows)
    for key, label in (("cli", "conveyor CLI"), ("loop", "conveyor loop")):
        if passes[key]:
            targets.append({
                "target": f"{label} >= 100x laufband tasks/s "
                f"({sum(passes[key])} of {len(passes[key])} rows)",
                "pass": all(passes[key]),
            })  # fmt: skip

    rows = []

    def extra_row(label: str, r: Run | None, goal: float | None) -> None:
        if r is None:
            return
        verdict = "-" if goal is None else ("PASS" if r.ok and r.rate >= goal else "FAIL")
        inner = f"{r.inner_rate:,.0f}/s" if r.inner_rate else "-"
        rows.append([label, f"{r.n:,}", str(r.workers), fmt_rate(r),
                     f"{r.submit_s:.2f}s" if r.submit_s is not None else "-", inner,
                     f">= {goal:,.0f}/s" if goal else "-", verdict])  # fmt: skip
        if goal is not None:
            targets.append({"target": f"{label} >= {goal:,.0f} tasks/s", "rate": r.rate,
                            "pass": verdict == "PASS"})  # fmt: skip

    extra_row("SQLite layered, CLI workers", big_cli, 5_000 if not args.quick else None)
    extra_row("SQLite layered, loop workers", big_loop, None)
    for r in pg_runs:
        goal = 3_000 if (r.workers == 8 and r.system == "conveyor CLI" and not args.quick) else None
        sc = r.extra.get("synchronous_commit", "on")
        extra_row(f"PostgreSQL layered, {r.system.split()[1]} workers, sync_commit={sc}", r, goal)
    if rows:
        print_table("Throughput targets (process starts and submit included)",
                    ["run", "N", "W", "tasks/s (wall)", "of which submit", "inner tasks/s",
                     "target", "verdict"], rows)  # fmt: skip
    if pg_error:
        print(f"\nPostgreSQL: {pg_error}")
    elif pg is None:
        print("\nPostgreSQL: skipped (--skip-postgres)")

    # growth with N
    def growth_section() -> None:
        """Time per task, SQLite, 1 worker, layered: N = small vs huge."""
        rows = []
        per: dict[tuple[str, int], float | None] = {}
        for n, d in scale.items():
            cli, loop = d["cli"], d["loop"]
            wall_us = cli.seconds / n * 1e6 if cli.ok else None
            inner_us = loop.inner_s / n * 1e6 if loop.ok and loop.inner_s else None
            sub_us = cli.submit_s / n * 1e6 if cli.submit_s else None
            per[("wall", n)], per[("inner", n)] = wall_us, inner_us
            rows.append([f"{n:,}", f"{sub_us:.1f} us" if sub_us else "-",
                         f"{wall_us:.1f} us" if wall_us else "error",
                         f"{inner_us:.1f} us" if inner_us else "error"])  # fmt: skip
        print_table("Time per task, SQLite, 1 worker, layered",
                    ["N", "submit / task", "CLI, submit + workers / task (wall)",
                     "loop / task (inner)"],
                    rows)  # fmt: skip
        a, b = per.get(("inner", huge_n)), per.get(("inner", small_n))
        growth = a / b if a and b else None
        wa, wb = per.get(("wall", huge_n)), per.get(("wall", small_n))
        wall_growth = wa / wb if wa and wb else None
        print(
            f"\nGrowth N={huge_n:,} vs N={small_n:,}: inner {growth:.2f}x"
            if growth
            else "\nGrowth: -",
            end="",
        )
        print(f", wall {wall_growth:.2f}x" if wall_growth else "", end="")
        start_ms = (baseline or 0) * 1000
        print(f" (one `conveyor worker` start-up on a finished graph: {start_ms:.0f} ms)")
        targets.append({
            "target": f"time per task N={huge_n} within 1.5x of N={small_n} (1 worker, inner)",
            "growth": growth, "wall_growth": wall_growth,
            "pass": growth is not None and growth <= 1.5,
        })  # fmt: skip

    if scale:
        growth_section()

    def slots_label(slots: int | None) -> str:
        return f"default ({CONVEYOR_DEFAULT_SLOTS})" if slots is None else str(slots)

    def fmt_ratio(a: Run | None, b: Run | None) -> str:
        r = ratio(a, b)
        return f"{r:.2f}x" if r is not None else "-"

    def judged(label: str, ok: bool | None, **info: Any) -> str:
        """A verdict for the table and the target list; ``None``: not judged (--quick)."""
        if ok is None:
            return "-"
        targets.append({"target": label, "pass": ok, **info})
        return "PASS" if ok else "FAIL"

    def conveyor_rows_section() -> None:
        """Tasks/s per row, the 4-vs-1-worker and default-vs-one-slot ratios, the targets."""
        store_name = {"sqlite": "SQLite", "postgres": "PostgreSQL", "celery": "Celery (Redis)",
                      "procrastinate": "procrastinate (PG)"}  # fmt: skip
        goals = {"sqlite": 5_000.0, "postgres": 3_000.0}
        rows = []
        for st in ("sqlite", "postgres", "celery", "procrastinate"):
            peer = st not in goals  # the peers' rows: their own ratios, no targets
            for body in bodies:
                for w in fn_workers:
                    for slots in (None, 1):
                        r = indep.get((st, body, w, slots))
                        if r is None:
                            continue
                        one_w = indep.get((st, body, 1, slots)) if w > 1 else None
                        one_s = indep.get((st, body, w, 1)) if slots is None else None
                        checks = []
                        if one_w is not None:
                            rr = ratio(r, one_w)
                            checks.append(judged(
                                f"{store_name[st]} {body}, slots {slots_label(slots)}: "
                                f"{w} workers not slower than 1", None if args.quick or peer else
                                (rr is not None and rr >= 1.0), ratio=rr,
                            ))  # fmt: skip
                        if one_s is not None:
                            rr = ratio(r, one_s)
                            checks.append(judged(
                                f"{store_name[st]} {body}, {w} worker(s): default slots not "
                                "slower than one", None if args.quick or peer else
                                (rr is not None and rr >= 1.0), ratio=rr,
                            ))  # fmt: skip
                        goal = ""
                        if body == "fn" and w == 4 and slots is None and not peer:
                            g = goals[st]
                            goal = f">= {g:,.0f}/s"
                            checks.insert(0, judged(  # first, as in the target column
                                f"{store_name[st]} fn, 4 workers, default slots >= {g:,.0f} "
                                "tasks/s (submission in)", None if args.quick else
                                (r.ok and r.rate >= g), rate=r.rate,
                            ))  # fmt: skip
                        if one_w is not None and not peer:
                            goal = ", ".join(x for x in (goal, f"{w}W >= 1W") if x)
                        if one_s is not None and not peer:
                            goal = ", ".join(x for x in (goal, "default >= 1 slot") if x)
                        rows.append([
                            store_name[st], BODY_LABEL[body], str(w), slots_label(slots),
                            fmt_rate(r),
                            f"{r.submit_s:.2f}s" if r.submit_s is not None else "-",
                            fmt_ratio(r, one_w) if one_w else "-",
                            fmt_ratio(r, one_s) if one_s else "-",
                            goal or "-", " / ".join(checks) or "-",
                        ])  # fmt: skip
        if rows:
            print_table(
                f"Independent tasks, N = {fn_n:,} (issue 16, 9b; submission and process starts "
                "inside the window)",
                ["store (or peer)", "task", "W", "slots per worker", "tasks/s", "of which submit",
                 "this W / 1W", "default / 1 slot", "target", "verdict"],
                rows,
            )  # fmt: skip

        # the peers, beside conveyor's fn rows
        rows = []
        for w in fn_workers:
            for slots in (None, 1):
                cs = indep.get(("sqlite", "fn", w, slots))
                cp = indep.get(("postgres", "fn", w, slots))
                ce = indep.get(("celery", "fn", w, slots))
                pr = indep.get(("procrastinate", "fn", w, slots))
                if ce is None and pr is None:
                    continue
                rows.append([
                    str(w), slots_label(slots), fmt_rate(cs), fmt_rate(cp), fmt_rate(ce),
                    fmt_rate(pr), fmt_ratio(cs, ce), fmt_ratio(cp, ce), fmt_ratio(cs, pr),
                    fmt_ratio(cp, pr),
                ])  # fmt: skip
        if rows:
            print_table(
                f"fn tasks side by side with the peers, N = {fn_n:,} (same slots per worker "
                "process; submission and process starts inside every window)",
                ["W", "slots per worker", "conveyor SQLite", "conveyor PG", "Celery (Redis)",
                 "procrastinate (PG)", "SQLite / Celery", "PG / Celery", "SQLite / procr.",
                 "PG / procr."],
                rows,
            )  # fmt: skip

    def montage_section() -> None:
        rows = []
        for st, label in (("postgres", "PostgreSQL"), ("sqlite", "SQLite")):
            one, four = montage_runs.get((st, 1)), montage_runs.get((st, 4))
            for w, r in ((1, one), (4, four)):
                if r is None:
                    continue
                goal, checks = "-", []
                if w == 4 and st == "postgres":
                    rr = ratio(r, one)
                    goal = ">= 1.3x faster than 1W"
                    checks.append(judged(
                        "Montage: 4 PostgreSQL workers finish >= 1.3x sooner than one",
                        None if args.quick else (rr is not None and rr >= 1.3), ratio=rr,
                    ))  # fmt: skip
                if w == 4 and st == "sqlite":
                    goal = ">= 5,000/s"
                    checks.append(judged(
                        "Montage: SQLite 4 workers >= 5,000 tasks/s (submission in)",
                        None if args.quick else (r.ok and r.rate >= 5_000), rate=r.rate,
                    ))  # fmt: skip
                    rr = ratio(r, one)
                    checks.append(judged(
                        "Montage: SQLite 4 workers not slower than 1",
                        None if args.quick else (rr is not None and rr >= 1.0), ratio=rr,
                    ))  # fmt: skip
                    goal += ", 4W >= 1W"
                rows.append([
                    label, str(w), fmt_rate(r),
                    f"{r.submit_s:.2f}s" if r.submit_s is not None else "-",
                    fmt_ratio(r, one) if w == 4 else "-", goal, " / ".join(checks) or "-",
                ])  # fmt: skip
        print_table(
            f"Montage-shaped graph (issue 16, 9): {montage_name}; default slots",
            ["store", "W", "tasks/s (seconds)", "of which submit", "4W / 1W (speed-up)",
             "target", "verdict"],
            rows,
        )  # fmt: skip

    # independent tasks (issue 16, point 9b)
    if indep:
        conveyor_rows_section()
    if peer_notes:
        print()
        for note in peer_notes:
            print(f"- {note}")

    # the Montage-shaped graph (issue 16, point 9)
    if montage_runs:
        montage_section()

    print("\n## Targets\n")
    for t in targets:
        print(f"- {'PASS' if t['pass'] else 'FAIL'}: {t['target']}")
    if args.quick:
        print("- (--quick: absolute throughput targets not judged at these sizes)")

    if args.json:
        args.json.write_text(json.dumps({
            "machine": {**machine, "load_avg_start": load_start}, "quick": args.quick,
            "timeout_s": timeout, "solo_timeout_s": solo_timeout, "repeat": repeat,
            "startup_baseline_s": baseline, "runs": [r.as_dict() for r in runs],
            "medians": [r.as_dict() for r in medians],
            "targets": targets,
        }, indent=2))  # fmt: skip
        log(f"wrote {args.json}")
    log(f"total {time.perf_counter() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_laufband_worker":
        laufband_worker_main(*sys.argv[2:5])
    elif len(sys.argv) > 1 and sys.argv[1] == "_loop_worker":
        loop_worker_main(*sys.argv[2:4])
    elif len(sys.argv) > 1 and sys.argv[1] == "_celery_submit":
        celery_submit_main(*sys.argv[2:5])
    elif len(sys.argv) > 1 and sys.argv[1] == "_procrastinate_submit":
        procrastinate_submit_main(*sys.argv[2:4])
    else:
        sys.exit(main())
