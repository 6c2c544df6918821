"""Core scheduling benchmark: conveyor against a plain-Python floor and Dask, side by side.

    python benchmarks/bench_core.py                 # the full run (~5-10 min on 2 cores)
    python benchmarks/bench_core.py --quick         # small sizes, < 1 min (the smoke test)
    python benchmarks/bench_core.py --skip-distributed --json out.json
    python benchmarks/bench_core.py --end-to-end    # the end-to-end row and the import time only
    python benchmarks/bench_core.py --whole 100000  # only the whole conveyor.run (~15 s)

All tasks are no-ops. Every system gets the graph already built in its own native form (a graph
dict for conveyor, ``{key: (noop, *parents)}`` for Dask, id/parent lists for the floor); what is
timed is the call that validates (where the system does) and runs it. Every system gets the same
repetitions (the median of 3 runs up to 100k tasks, one run above) and the same window; the end
to end comparison runs both processes in turn (A B A B ...), as often each. Peers that would take
too long at a size are not run there and the table says so; no number in the table is
extrapolated.

Rows:
  floor             Kahn's algorithm with a depth-first heap, one thread, no executor
  conveyor inline   ``conveyor.run(graph_dict, workers=1)`` as a whole (parse, validate, load,
                    run): no-op tasks finish where they are claimed
    from file       ``conveyor.run("graph.json", workers=1)``: the same, reading the JSON file
    (schedule)      the ``Engine.run`` part alone (from a run timed in its three phases)
  conveyor fn       Python no-op *functions*, ``executor="inline"``
  conveyor thread   Python no-op functions, ``executor="thread"``, workers=2 / 8
  dask.get          Dask's synchronous scheduler
  dask.threaded     ``dask.threaded.get`` (a pool of cpu_count threads)
  dask.distributed  LocalCluster, 2 worker processes x 1 thread (cluster start not timed)
"""

from __future__ import annotations

import argparse
import gc
import heapq
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import graphs

# -- targets (issue 3, "Speed and memory"; issue 10, "Done when") --------------------------------
INLINE_MIN_RATE = 300_000  # tasks/s at 100k, Engine.run (issue 3)
INLINE_MAX_FLOOR_RATIO = 3.0
WHOLE_MIN_RATE = 250_000  # tasks/s at 100k, the whole conveyor.run from a dict or a file (10)
THREAD_VS_DASK = 10.0
E2E_VS_DASK = 30.0
IMPORT_MAX_MS = 100.0  # python -X importtime -c "import conveyor.cli" (issue 10)
FLATNESS_MAX = 1.5
MEM_MAX_BYTES = 1024  # engine state per task at 1M (issue 3)
MEM_ALL_MAX_BYTES = 400  # everything conveyor holds per task at 1M (issue 10)


def noop(*args: Any) -> None:
    return None


# -- helpers -----------------------------------------------------------------------------------
def wall_times(fn: Callable[[], Any], repeat: int) -> list[float]:
    """Wall times of ``repeat`` calls (collecting garbage between them)."""
    times = []
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def timed(fn: Callable[[], Any], repeat: int) -> float:
    """Median wall time of ``repeat`` calls."""
    return statistics.median(wall_times(fn, repeat))


def reps(n: int) -> int:
    """Runs per cell, the same for every system: the median of 3 up to 100k tasks, else 1."""
    return 3 if n <= 100_000 else 1


def fmt_rate(r: float) -> str:
    if r >= 1e6:
        return f"{r / 1e6:.2f}M/s"
    if r >= 1e3:
        return f"{r / 1e3:.0f}k/s" if r >= 1e4 else f"{r / 1e3:.1f}k/s"
    return f"{r:.0f}/s"


def fmt_n(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return f"{n:,}"


def sinks(ids: list[str], parents: list[list[str]]) -> list[str]:
    has_child = {p for ps in parents for p in ps}
    return [t for t in ids if t not in has_child]


# -- the floor ---------------------------------------------------------------------------------
def floor_run(ids: list[str], parents: list[list[str]]) -> int:
    """Kahn's algorithm with a ``(-depth, index)`` heap: build the children lists and parent
    counts, then pop/complete until done. What any in-process scheduler must at least do."""
    enabled = gc.isenabled()
    gc.disable()  # a floor: no cyclic GC passes over the lists it builds
    try:
        return _floor(ids, parents)
    finally:
        if enabled:
            gc.enable()


def _floor(ids: list[str], parents: list[list[str]]) -> int:
    index = {t: i for i, t in enumerate(ids)}
    n = len(ids)
    children: list[list[int]] = [[] for _ in range(n)]
    waiting = [0] * n
    for i, ps in enumerate(parents):
        waiting[i] = len(ps)
        for p in ps:
            children[index[p]].append(i)
    depth = [0] * n
    heap = [(0, i) for i in range(n) if waiting[i] == 0]
    heapq.heapify(heap)
    pop, push = heapq.heappop, heapq.heappush
    done = 0
    while heap:
        _, i = pop(heap)
        done += 1
        d = depth[i] + 1
        for k in children[i]:
            if depth[k] < d:
                depth[k] = d
            w = waiting[k] - 1
            waiting[k] = w
            if w == 0:
                push(heap, (-depth[k], k))
    assert done == n, (done, n)
    return done


def floor_time(g: dict[str, Any], repeat: int) -> float:
    ids, parents = graphs.ids_parents(g)
    return timed(lambda: floor_run(ids, parents), repeat)


# -- conveyor ------------------------------------------------------------------------------------
def conveyor_phases(
    graph: Any, *, workers: int = 1, executor: str | None = None
) -> tuple[float, float, float]:
    """What ``conveyor.run`` does, timed in three parts: parse+validate, load into the memory
    store (frontier build), and ``Engine.run``."""
    from conveyor.graphfile import graph_from_dict, validate_graph
    from conveyor.runtime.engine import Engine
    from conveyor.store.memory import MemoryStore

    t0 = time.perf_counter()
    if isinstance(graph, dict):
        spec = graph_from_dict(graph)
    else:
        validate_graph(graph)
        spec = graph
    t1 = time.perf_counter()
    store = MemoryStore()
    store.open_graph(spec, time.time())
    functions = {} if spec.structure_only else {t.id: t for t in spec.tasks if callable(t.fn)}
    engine = Engine(store, workers=workers, executor=executor, functions=functions)
    t2 = time.perf_counter()
    stats = engine.run()
    t3 = time.perf_counter()
    assert stats.done == len(spec.tasks), (stats, len(spec.tasks))
    return t1 - t0, t2 - t1, t3 - t2


def conveyor_run(graph: Any) -> None:
    """The whole ``conveyor.run`` (graph dict or file path), one worker."""
    import conveyor

    res = conveyor.run(graph, workers=1)
    assert res.ok, res.counts


def fn_spec(graph: dict[str, Any]) -> Any:
    """The same graph with every task a Python no-op function (built once, not timed)."""
    from conveyor.model import GraphSpec, TaskSpec

    tasks = [TaskSpec(id=t["id"], fn=noop, deps=tuple(t["deps"])) for t in graph["tasks"]]
    return GraphSpec(graph["name"], tasks, {})


def median_phases(fn: Callable[[], tuple[float, ...]], repeat: int) -> tuple[float, ...]:
    runs = []
    for _ in range(repeat):
        gc.collect()
        runs.append(fn())
    totals = [sum(r) for r in runs]
    return runs[totals.index(statistics.median_low(totals))]


# -- dask --------------------------------------------------------------------------------------
def dask_graph(ids: list[str], parents: list[list[str]]) -> dict[str, Any]:
    return {t: (noop, *ps) for t, ps in zip(ids, parents, strict=True)}


# -- the benchmark -------------------------------------------------------------------------------
class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick: bool = args.quick
        self.cells: dict[tuple[str, str], dict[str, Any]] = {}
        self.rows: list[str] = []
        self.cols: list[str] = []
        self.notes: list[str] = []
        self.results: dict[str, Any] = {}

    def log(self, msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    def put(
        self, row: str, col: str, n: int, seconds: float | None, note: str = "", at: str = ""
    ) -> None:
        """One cell. ``at`` names a smaller stand-in graph the peer was run on instead (shown in
        the table, left out of every ratio and verdict)."""
        if row not in self.rows:
            self.rows.append(row)
        cell: dict[str, Any] = {"n": n, "seconds": seconds}
        cell["rate"] = (n / seconds) if seconds else None
        if note:
            cell["note"] = note
        if at:
            cell["at"] = at
        self.cells[(row, col)] = cell
        shown = f"{seconds:.3f} s ({fmt_rate(n / seconds)})" if seconds else f"- ({note})"
        self.log(f"  {row:<28} {col:<18} {shown}{' on ' + at if at else ''}")

    def get(self, row: str, col: str) -> float | None:
        c = self.cells.get((row, col))
        return None if c is None or "at" in c else c["seconds"]

    # The graphs of the issue; --quick shrinks them.
    def graph_list(self) -> list[tuple[str, dict[str, Any]]]:
        if self.quick:
            sizes = {"chain": 1000, "fan": 1000, "small": 1000, "big": 5_000, "huge": 10_000}
        else:
            sizes = {"chain": 10_000, "fan": 10_000, "small": 10_000, "big": 100_000,
                     "huge": 1_000_000}  # fmt: skip
        self.sizes = sizes
        try:
            wf: dict[str, Any] | None = graphs.wfcommons_largest()
        except FileNotFoundError as exc:
            wf = None
            self.notes.append(f"WfCommons column skipped: {exc} (set CONVEYOR_WORKFLOWS)")
        out = [
            (f"chain {fmt_n(sizes['chain'])}", graphs.chain(sizes["chain"])),
            (f"fan-out/in {fmt_n(sizes['fan'])}", graphs.fanout_fanin(sizes["fan"])),
            (f"layered {fmt_n(sizes['small'])}", graphs.layered(sizes["small"])),
            (f"layered {fmt_n(sizes['big'])}", graphs.layered(sizes["big"])),
            (f"layered {fmt_n(sizes['huge'])}", graphs.layered(sizes["huge"])),
        ]
        if wf is not None:
            out.append((f"wfcommons {len(wf['tasks'])}", wf))
        self.wf_name = wf["name"] if wf is not None else None
        return out

    def run(self) -> int:
        a = self.args
        t_start = time.perf_counter()
        gl = self.graph_list()
        self.cols = [c for c, _ in gl]
        big = f"layered {fmt_n(self.sizes['big'])}"
        small = f"layered {fmt_n(self.sizes['small'])}"
        huge = f"layered {fmt_n(self.sizes['huge'])}"
        try:
            import dask

            del dask

            have_dask = True
        except ImportError:
            have_dask = False
            self.notes.append(
                "dask is not installed: Dask rows skipped (pip install -e '.[bench]')"
            )
        # Dask's static ordering is superlinear (measured here: 54 s at 100k): cap its sizes.
        self.dask_max = {"dask.get (sync)": 10_000, "dask.threaded.get": 10_000 if self.quick
                         else 100_000}  # fmt: skip
        dist_max = 500 if self.quick else 2_200
        k = 300 if self.quick else 1000
        self.dist_standin = {
            "chain": (k, graphs.chain),
            "fan-out/in": (2 * k, graphs.fanout_fanin),
            "layered": (2 * k, graphs.layered),
        }
        thread_max = 5_000 if self.quick else 100_000

        self.tmp = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
        try:
            for col, g in gl:
                self.bench_graph(col, g, have_dask, thread_max)
                gc.collect()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

        if have_dask and not a.skip_distributed:
            self.distributed(gl, dist_max)
        elif a.skip_distributed:
            self.notes.append("dask.distributed skipped (--skip-distributed)")

        e2e_n = 3_000 if self.quick else 30_000
        self.end_to_end(e2e_n, have_dask, 3)
        self.import_time(5)
        self.memory(self.sizes["huge"])
        self.results["elapsed_s"] = time.perf_counter() - t_start
        self.report(small, big, huge, have_dask)
        return 0

    def bench_graph(self, col: str, g: dict[str, Any], have_dask: bool, thread_max: int) -> None:
        """Every in-process system on one graph."""
        n = len(g["tasks"])
        r = reps(n)
        self.log(f"{col} ({n} tasks)")
        # The floor's id/parent lists are dropped before conveyor runs (not its state).
        self.put("floor (Kahn + heap)", col, n, floor_time(g, r))
        self.put("conveyor inline", col, n, timed(lambda: conveyor_run(g), r))
        path = graphs.write_graph(g, self.tmp, "graph")
        self.put("  from file", col, n, timed(lambda: conveyor_run(path), r))
        path.unlink()
        ph = median_phases(lambda: conveyor_phases(g), r)
        self.put("  of which Engine.run", col, n, ph[2])
        self.results.setdefault("phases", {})[col] = {
            "parse_s": ph[0], "load_s": ph[1], "run_s": ph[2],
        }  # fmt: skip
        spec = fn_spec(g)
        ph = median_phases(lambda: conveyor_phases(spec, executor="inline"), r)
        self.put("conveyor fn, inline", col, n, sum(ph))
        for w in (2, 8):
            row = f"conveyor fn, thread w={w}"
            if n > thread_max:
                self.put(row, col, n, None, f"not run above {fmt_n(thread_max)}")
                continue
            ph = median_phases(lambda w=w: conveyor_phases(spec, workers=w, executor="thread"), r)
            self.put(row, col, n, sum(ph))
        spec = None
        if not have_dask:
            return
        import dask
        import dask.threaded

        ids, parents = graphs.ids_parents(g)
        dsk = dask_graph(ids, parents)
        keys = sinks(ids, parents)
        del ids, parents
        for row, get in (("dask.get (sync)", dask.get), ("dask.threaded.get", dask.threaded.get)):
            cap = self.dask_max[row]
            if n > cap:
                self.put(row, col, n, None, f"not run above {fmt_n(cap)}")
                continue
            self.put(row, col, n, timed(lambda get=get: get(dsk, keys), r))

    def distributed(self, gl: list[tuple[str, dict[str, Any]]], dist_max: int) -> None:
        import logging

        from dask.distributed import Client, LocalCluster

        self.log("dask.distributed LocalCluster (2 processes x 1 thread)")
        t0 = time.perf_counter()
        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
            silence_logs=logging.ERROR,
        )  # fmt: skip
        client = Client(cluster)
        self.results["distributed_start_s"] = time.perf_counter() - t0
        row = "dask.distributed (2 procs)"
        try:
            for col, g in gl:
                n = len(g["tasks"])
                at = ""
                kind = col.split()[0]
                if n > dist_max and n <= 10_000 and kind in self.dist_standin:
                    # Too slow at this size (superlinear: fan-out/in 4k took 64 s here): run
                    # the same shape, smaller, and say so in the cell.
                    n, make = self.dist_standin[kind]
                    g = make(n)
                    at = f"{kind} {fmt_n(n)}"
                elif n > dist_max:
                    self.put(row, col, n, None, f"not run above {fmt_n(dist_max)}")
                    continue
                ids, parents = graphs.ids_parents(g)
                dsk = dask_graph(ids, parents)
                keys = sinks(ids, parents)
                secs = timed(lambda dsk=dsk, keys=keys: client.get(dsk, keys), reps(n))
                self.put(row, col, n, secs, at=at)
        finally:
            client.close()
            cluster.close()

    def end_to_end(self, n: int, have_dask: bool, rep: int) -> None:
        """``conveyor run FILE --workers 1 --quiet`` vs a script running ``dask.threaded.get``
        on the same file, both as fresh processes (start-up and file loading included): one
        untimed warm-up each, then ``rep`` runs in turn (A B A B ...); the ratio is the median
        of the pairs' ratios."""
        self.log(f"end to end, layered {n}")
        tmp = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
        try:
            path = graphs.write_graph(graphs.layered(n), tmp, "layered")
            exe = shutil.which("conveyor", path=str(Path(sys.executable).parent)) or shutil.which(
                "conveyor"
            )
            conv = [exe] if exe else [sys.executable, "-m", "conveyor.cli"]
            conv += ["run", str(path), "--workers", "1", "--quiet"]
            script = tmp / "dask_run.py"
            script.write_text(
                textwrap.dedent("""
                import json, sys
                import dask.threaded

                def noop(*args):
                    return None

                data = json.load(open(sys.argv[1]))
                dsk = {t["id"]: (noop, *t["deps"]) for t in data["tasks"]}
                has_child = {p for t in data["tasks"] for p in t["deps"]}
                dask.threaded.get(dsk, [k for k in dsk if k not in has_child])
            """)
            )
            compile_conveyor()
            cmds = {"python -c pass": [sys.executable, "-c", "pass"], "conveyor run": conv}
            if have_dask:
                cmds["dask.threaded script"] = [sys.executable, str(script), str(path)]
            for cmd in cmds.values():  # one warm-up run each, not timed (bytecode, disk cache)
                subprocess.run(cmd, capture_output=True, text=True)
            times: dict[str, list[float]] = {name: [] for name in cmds}
            for _ in range(rep):
                for name, cmd in cmds.items():
                    t0 = time.perf_counter()
                    p = subprocess.run(cmd, capture_output=True, text=True)
                    times[name].append(time.perf_counter() - t0)
                    if p.returncode != 0:
                        raise RuntimeError(f"{name} exited {p.returncode}: {p.stderr[-2000:]}")
            res: dict[str, Any] = {"n": n, "runs": rep, "load": os.getloadavg()[0]}
            for name, ts in times.items():
                res[name] = statistics.median(ts)
                self.log(f"  {name:<24} {res[name]:.3f} s (median of {rep})")
            if have_dask:
                pairs = zip(times["dask.threaded script"], times["conveyor run"], strict=True)
                res["ratio"] = statistics.median(d / c for d, c in pairs)
                self.log(f"  dask / conveyor          {res['ratio']:.1f}x (median of pairs)")
            self.results["end_to_end"] = res
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def end_to_end_only(self) -> int:
        """``--end-to-end``: the end-to-end row and the import time, with their verdicts."""
        try:
            import dask  # noqa: F401

            have_dask = True
        except ImportError:
            have_dask = False
        self.end_to_end(3_000 if self.quick else 30_000, have_dask, 3)
        self.import_time(5)
        e2e, imp = self.results["end_to_end"], self.results.get("import_ms")
        if "ratio" in e2e:
            r = e2e["ratio"]
            ok = "met" if r >= E2E_VS_DASK else "missed"
            print(f"end to end, layered {fmt_n(e2e['n'])}: conveyor run {e2e['conveyor run']:.2f} s"
                  f", dask.threaded script {e2e['dask.threaded script']:.2f} s, python -c pass "
                  f"{e2e['python -c pass']:.2f} s: {r:.1f}x (target {E2E_VS_DASK:g}x: {ok}; "
                  f"load {e2e['load']:.1f})")  # fmt: skip
        if imp:
            ok = "met" if imp["median"] <= IMPORT_MAX_MS else "missed"
            print(
                f"import conveyor.cli: {imp['median']:.0f} ms (target {IMPORT_MAX_MS:g} ms: {ok})"
            )
        return 0

    def import_time(self, rep: int) -> None:
        """``python -X importtime -c "import conveyor.cli"``: the cumulative time of
        ``conveyor.cli``, median of ``rep`` fresh processes."""
        self.log("import time of conveyor.cli")
        ms = []
        subprocess.run([sys.executable, "-c", "import conveyor.cli"])  # warm-up, not timed
        for _ in range(rep):
            p = subprocess.run(
                [sys.executable, "-X", "importtime", "-c", "import conveyor.cli"],
                capture_output=True,
                text=True,
            )
            for line in p.stderr.splitlines():
                parts = [x.strip() for x in line.split("|")]
                if len(parts) == 3 and parts[2] == "conveyor.cli":
                    ms.append(int(parts[1]) / 1000)
        if ms:
            self.results["import_ms"] = {"median": statistics.median(ms), "min": min(ms)}
            self.log(f"  {statistics.median(ms):.1f} ms (median of {len(ms)}), min {min(ms):.1f}")

    def memory(self, n: int) -> None:
        """Memory per task at ``n`` tasks in fresh processes (tracemalloc), for a graph dict
        and for a JSON file."""
        self.log(f"memory at layered {n} (fresh processes, tracemalloc)")
        path = graphs.write_graph(graphs.layered(n))
        try:
            for source in ("dict", str(path)):
                p = subprocess.run(
                    [sys.executable, __file__, "--memory-child", str(n), "--source", source],
                    capture_output=True,
                    text=True,
                )
                if p.returncode != 0:
                    self.notes.append(f"memory child failed: {p.stderr[-500:]}")
                    return
                m = json.loads(p.stdout.strip().splitlines()[-1])
                self.results["memory" if source == "dict" else "memory_file"] = m
                self.log("  " + ", ".join(f"{k} {v:.0f}" for k, v in m.items()))
        finally:
            shutil.rmtree(path.parent, ignore_errors=True)

    # -- output ------------------------------------------------------------------------------
    def report(self, small: str, big: str, huge: str, have_dask: bool) -> None:
        out = []
        m = platform.machine()
        out.append(
            f"conveyor core benchmark{' (--quick)' if self.quick else ''}: Python "
            f"{platform.python_version()}, {os.cpu_count()} cores ({m}), no-op tasks; "
            "cells are wall time (tasks/s)."
        )
        out.append("")
        out.append("| system | " + " | ".join(self.cols) + " |")
        out.append("|---|" + "---|" * len(self.cols))
        for row in self.rows:
            cells = []
            for col in self.cols:
                c = self.cells.get((row, col))
                if c is None:
                    cells.append("")
                elif c["seconds"] is None:
                    cells.append("-")
                else:
                    at = f" on {c['at']}" if "at" in c else ""
                    cells.append(f"{c['seconds']:.3f} s ({fmt_rate(c['rate'])}){at}")
            out.append(f"| {row} | " + " | ".join(cells) + " |")
        out.append("")
        # Ratios per graph.
        out.append("Ratios (time of the other / time of conveyor; > 1 means conveyor is faster):")
        out.append("")
        out.append("| ratio | " + " | ".join(self.cols) + " |")
        out.append("|---|" + "---|" * len(self.cols))
        pairs = [
            ("floor / conveyor inline", "floor (Kahn + heap)", "conveyor inline"),
            ("floor / conveyor inline from file", "floor (Kahn + heap)", "  from file"),
            ("floor / Engine.run", "floor (Kahn + heap)", "  of which Engine.run"),
            ("dask.get / conveyor inline", "dask.get (sync)", "conveyor inline"),
            ("dask.threaded / conveyor thread w=2", "dask.threaded.get", "conveyor fn, thread w=2"),
            ("dask.threaded / conveyor thread w=8", "dask.threaded.get", "conveyor fn, thread w=8"),
            ("distributed / conveyor thread w=2", "dask.distributed (2 procs)",
             "conveyor fn, thread w=2"),
        ]  # fmt: skip
        for label, a, b in pairs:
            cells = []
            for col in self.cols:
                x, y = self.get(a, col), self.get(b, col)
                cells.append(f"{x / y:.2f}x" if x and y else "-")
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        out.append("")
        # Phases.
        out.append(
            "conveyor inline, where the time goes (µs per task: parse+validate / load / run; "
            "a run timed in its phases):"
        )
        for col, ph in self.results.get("phases", {}).items():
            n = self.cells[("conveyor inline", col)]["n"]
            out.append(
                f"  {col:<18} {ph['parse_s'] / n * 1e6:6.2f} / {ph['load_s'] / n * 1e6:5.2f} / "
                f"{ph['run_s'] / n * 1e6:5.2f}"
            )
        out.append("")
        e2e = self.results.get("end_to_end", {})
        if e2e:
            out.append(
                f"End to end, layered {fmt_n(e2e['n'])} from a JSON file, fresh processes run in "
                f"turn, median of {e2e['runs']} each: "
                f"`conveyor run --workers 1 --quiet` {e2e['conveyor run']:.2f} s; "
                + (
                    f"dask.threaded script {e2e['dask.threaded script']:.2f} s "
                    f"(ratio {e2e['ratio']:.1f}x); "
                    if "dask.threaded script" in e2e
                    else ""
                )
                + f"bare `python -c pass` {e2e['python -c pass']:.2f} s."
            )
        imp = self.results.get("import_ms")
        if imp:
            out.append(
                f'`python -X importtime -c "import conveyor.cli"`: {imp["median"]:.0f} ms '
                f"(median of 5; min {imp['min']:.0f} ms)."
            )
        for key, what in (("memory", "a graph dict"), ("memory_file", "a JSON file")):
            mem = self.results.get(key)
            if mem:
                out.append(
                    f"Memory at {fmt_n(mem['n'])} tasks from {what} (fresh process, "
                    f"tracemalloc, B/task): parsed specs and layout {mem['specs_b_per_task']:.0f}"
                    f" + engine state (store, frontier, results) {mem['engine_b_per_task']:.0f}"
                    f" = {mem['all_b_per_task']:.0f} in all; peak "
                    f"{mem['peak_b_per_task']:.0f}"
                    + (
                        f"; the input dict itself {mem['input_b_per_task']:.0f}."
                        if key == "memory"
                        else "."
                    )
                )
        out.append("")
        # Targets.
        out.append("Targets:")
        verdicts: list[tuple[str, bool | None, str]] = []

        def rate(row: str, col: str) -> float | None:
            c = self.cells.get((row, col))
            return None if c is None else c["rate"]

        sched = rate("  of which Engine.run", big)
        fl = rate("floor (Kahn + heap)", big)
        if sched and fl:
            ok = sched >= INLINE_MIN_RATE and fl / sched <= INLINE_MAX_FLOOR_RATIO
            verdicts.append((
                f"inline scheduling ≥ {INLINE_MIN_RATE:,}/s at {big} and within "
                f"{INLINE_MAX_FLOOR_RATIO:g}x of the floor",
                ok, f"Engine.run {fmt_rate(sched)}, floor {fmt_rate(fl)} ({fl / sched:.2f}x)",
            ))  # fmt: skip
        for label, row in (("a dict", "conveyor inline"), ("a file", "  from file")):
            whole = rate(row, big)
            if whole and fl:
                verdicts.append((
                    f"whole conveyor.run from {label} (parse + validate + load + run) "
                    f"≥ {WHOLE_MIN_RATE:,}/s at {big}",
                    whole >= WHOLE_MIN_RATE,
                    f"{fmt_rate(whole)}, floor {fmt_rate(fl)} ({fl / whole:.2f}x)",
                ))  # fmt: skip
        for col in (small, big):
            d = self.get("dask.threaded.get", col)
            c = self.get("conveyor fn, thread w=2", col)
            if d and c:
                verdicts.append((
                    f"thread executor (w=2) ≥ {THREAD_VS_DASK:g}x dask.threaded on {col}",
                    d / c >= THREAD_VS_DASK, f"{d / c:.1f}x ({c:.3f} s vs {d:.3f} s)",
                ))  # fmt: skip
            elif have_dask:
                verdicts.append((f"thread executor vs dask.threaded on {col}", False, "not run"))
        if e2e and "dask.threaded script" in e2e:
            r = e2e["ratio"]
            verdicts.append((
                f"end to end ≥ {E2E_VS_DASK:g}x dask.threaded on layered {fmt_n(e2e['n'])}",
                r >= E2E_VS_DASK,
                f"{r:.1f}x ({e2e['conveyor run']:.2f} s vs {e2e['dask.threaded script']:.2f} s)",
            ))  # fmt: skip
        if imp:
            verdicts.append((
                f"`import conveyor.cli` ≤ {IMPORT_MAX_MS:g} ms (-X importtime, median)",
                imp["median"] <= IMPORT_MAX_MS, f"{imp['median']:.0f} ms",
            ))  # fmt: skip
        fa, fb = self.get("floor (Kahn + heap)", small), self.get("floor (Kahn + heap)", huge)
        if fa and fb:
            ns = self.cells[("floor (Kahn + heap)", small)]["n"]
            nh = self.cells[("floor (Kahn + heap)", huge)]["n"]
            pa, pb = fa / ns * 1e6, fb / nh * 1e6
            verdicts.append((
                f"(reference, not a target) the floor's own µs/task, {huge} vs {small}",
                None, f"{pb:.2f} vs {pa:.2f} µs/task ({pb / pa:.2f}x): the machine's share",
            ))  # fmt: skip
        for label, row in (("scheduling (Engine.run)", "  of which Engine.run"),
                           ("whole conveyor.run", "conveyor inline")):  # fmt: skip
            a_, b_ = self.get(row, small), self.get(row, huge)
            if a_ and b_:
                ns = self.cells[(row, small)]["n"]
                nh = self.cells[(row, huge)]["n"]
                pa, pb = a_ / ns * 1e6, b_ / nh * 1e6
                verdicts.append((
                    f"flat: µs/task at {huge} within {FLATNESS_MAX:g}x of {small}, {label}",
                    pb / pa <= FLATNESS_MAX, f"{pb:.2f} vs {pa:.2f} µs/task ({pb / pa:.2f}x)",
                ))  # fmt: skip
        mem = self.results.get("memory")
        if mem:
            verdicts.append((
                f"≤ {MEM_MAX_BYTES} B engine state per task at {fmt_n(mem['n'])}",
                mem["engine_b_per_task"] <= MEM_MAX_BYTES,
                f"{mem['engine_b_per_task']:.0f} B/task",
            ))  # fmt: skip
        for key, what in (("memory", "a graph dict"), ("memory_file", "a JSON file")):
            mem = self.results.get(key)
            if mem:
                verdicts.append((
                    f"≤ {MEM_ALL_MAX_BYTES} B per task in all (specs + engine state) at "
                    f"{fmt_n(mem['n'])}, from {what}",
                    mem["all_b_per_task"] <= MEM_ALL_MAX_BYTES,
                    f"{mem['all_b_per_task']:.0f} B/task ({mem['specs_b_per_task']:.0f} + "
                    f"{mem['engine_b_per_task']:.0f})",
                ))  # fmt: skip
        for label, ok, detail in verdicts:
            tag = "INFO" if ok is None else ("PASS" if ok else "FAIL")
            out.append(f"  [{tag}] {label}: {detail}")
        if self.quick:
            out.append("  (--quick: small sizes; the verdicts are indicative only)")
        out.append("")
        notes = [
            *([f"WfCommons graph: {self.wf_name}."] if self.wf_name else []),
            "Dask rows use {key: (noop, *parent_keys)} and ask for the sinks. Dask's static "
            "ordering is superlinear, so dask.get is not run above "
            f"{fmt_n(self.dask_max['dask.get (sync)'])} tasks, dask.threaded.get not above "
            f"{fmt_n(self.dask_max['dask.threaded.get'])}; dask.distributed is superlinear "
            "too (fan-out/in: 5 s at 1k, 13 s at 2k, 64 s at 4k here), so it runs the smaller "
            "stand-in graph named in its cells: "
            + ", ".join(f"{k} {fmt_n(v[0])}" for k, v in self.dist_standin.items())
            + (f" (cluster start {self.results['distributed_start_s']:.1f} s, not timed)"
               if "distributed_start_s" in self.results else "") + ".",
            f"conveyor fn rows: thread executor not run above "
            f"{fmt_n(5_000 if self.quick else 100_000)} tasks (keeps the run short).",
            *self.notes,
            f"Total benchmark time {self.results['elapsed_s']:.0f} s.",
        ]  # fmt: skip
        out.append("Notes:")
        out.extend(f"  - {x}" for x in notes)
        text = "\n".join(out)
        print(text, flush=True)
        self.results["verdicts"] = [
            {"target": label.strip(), "pass": ok, "detail": d} for label, ok, d in verdicts
        ]
        if self.args.json:
            payload = {
                "quick": self.quick,
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "cells": [
                    {"system": r.strip(), "graph": c, **v} for (r, c), v in self.cells.items()
                ],
                **self.results,
                "table": text,
            }
            Path(self.args.json).write_text(json.dumps(payload, indent=2), encoding="utf-8")


def memory_child(n: int, source: str) -> None:
    """Load and run a layered graph of ``n`` no-op tasks under tracemalloc and print, as JSON,
    the bytes per task that conveyor holds: the parsed specs (with their validated layout),
    the engine state added by loading and running (frontier, store lists, results), and both
    together ("all"). ``source`` is ``dict`` (the input dict is the caller's and not counted)
    or the path of the same graph as a JSON file (the ids are then conveyor's own)."""
    import tracemalloc

    from conveyor.graphfile import graph_from_dict, load_graph
    from conveyor.runtime.engine import Engine
    from conveyor.store.memory import MemoryStore

    tracemalloc.start()
    gc.collect()
    base = tracemalloc.get_traced_memory()[0]
    g = graphs.layered(n) if source == "dict" else None
    gc.collect()
    m0 = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    spec = graph_from_dict(g) if g is not None else load_graph(source)
    gc.collect()
    m1 = tracemalloc.get_traced_memory()[0]
    store = MemoryStore()
    store.open_graph(spec, time.time())
    stats = Engine(store, workers=1).run()
    gc.collect()
    m2, peak = tracemalloc.get_traced_memory()
    assert stats.done == n
    print(json.dumps({
        "n": n,
        "input_b_per_task": (m0 - base) / n,
        "specs_b_per_task": (m1 - m0) / n,
        "engine_b_per_task": (m2 - m1) / n,
        "all_b_per_task": (m2 - m0) / n,
        "peak_b_per_task": (peak - m0) / n,
    }))  # fmt: skip


def compile_conveyor() -> None:
    """Write conveyor's bytecode, as ``pip install`` does for the peers' packages: the first
    run would write it, unless ``PYTHONDONTWRITEBYTECODE`` is set (then every run would compile
    conveyor's modules afresh while Dask loads its compiled ones)."""
    import compileall

    import conveyor

    compileall.compile_dir(Path(conveyor.__file__).parent, quiet=1)


def whole(n: int, repeat: int = 3) -> dict[str, Any]:
    """The whole ``conveyor.run`` at layered ``n`` from a dict and from a JSON file, and the
    floor on the same graph, each the best of ``repeat`` runs in this process (one warm-up run
    of a small graph first: imports are not timed), plus the dict run in its three phases (the
    run whose total is the median). Prints one JSON line; ``--whole N`` on the command line."""
    g = graphs.layered(n)
    conveyor_run(graphs.layered(1000))  # imports and first-call costs, untimed

    def best(fn: Callable[[], Any]) -> float:
        return min(wall_times(fn, repeat))

    def floor_best() -> float:  # (its lists are dropped before conveyor runs)
        ids, parents = graphs.ids_parents(g)
        return best(lambda: floor_run(ids, parents))

    floor_s = floor_best()
    dict_s = best(lambda: conveyor_run(g))
    path = graphs.write_graph(g)
    try:
        file_s = best(lambda: conveyor_run(str(path)))
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)
    phases = median_phases(lambda: conveyor_phases(g), repeat)
    out = {
        "n": n, "floor_s": floor_s, "dict_s": dict_s, "file_s": file_s,
        "floor_rate": n / floor_s, "dict_rate": n / dict_s, "file_rate": n / file_s,
        "dict_vs_floor": dict_s / floor_s, "file_vs_floor": file_s / floor_s,
        "phases_s": {"build_validate": phases[0], "load": phases[1], "engine_run": phases[2]},
        "load_avg": os.getloadavg()[0],
    }  # fmt: skip
    print(json.dumps(out))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (< 1 min): a smoke test")
    ap.add_argument("--skip-distributed", action="store_true", help="no dask.distributed rows")
    ap.add_argument("--json", metavar="OUT", help="also write the results as JSON here")
    ap.add_argument("--end-to-end", action="store_true",
                    help="only the end-to-end row (conveyor run vs a dask script) and the import "
                    "time")  # fmt: skip
    ap.add_argument(
        "--whole", type=int, metavar="N",
        help="only the whole conveyor.run at layered N from a dict and a file, with the floor "
        "(best of 3 each; one JSON line)",
    )  # fmt: skip
    ap.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--source", default="dict", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child, args.source)
        return 0
    if args.end_to_end:
        return Bench(args).end_to_end_only()
    if args.whole:
        whole(args.whole)
        return 0
    return Bench(args).run()


if __name__ == "__main__":
    sys.exit(main())
