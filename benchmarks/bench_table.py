"""Table builder: scheduling CPU per cell and peak memory, beside hand-built tasks and a floor.

    python benchmarks/bench_table.py                    # 10k, 100k, 1M rows, median of 3:
                                                        # ~75 min on a busy 2-core machine
    python benchmarks/bench_table.py --rows 10000,100000 --repeat 1
    python benchmarks/bench_table.py --quick            # 2,000 rows, once: the smoke test
    python benchmarks/bench_table.py --sides table,floor --json out.json

The table (issue 11's benchmark): no-op generators, 1 sampler and 5 generators::

    topic  = category({"a": 1, "b": 1, "c": 1})    sampler (a full_column task per row group)
    a(topic) -> 1                                   cell
    b(a) -> a + 1,  c(a) -> a + 2                   cell, cell      (a diamond:
    d(b, c) -> b + c                                cell             a -> b, c -> d)
    e(d) -> d                                       full_column (one call per row group)

so every row has 6 cells and the build runs 4 cell tasks per row plus 2 tasks per row group.
Row groups of 1,000 rows, written as JSON Lines (``conveyor.table.output.PartWriter``: the
same writer, so the same bytes and fsyncs, for every side).

Sides (``--sides``; every one of them writes the same files, which are checked):

  table          ``conveyor.table.build.build(table, N, out, format="jsonl")`` with plain
                 ``def`` generators, every option at its default (workers=32: sync generators
                 run on the thread executor)
  table async    the same with ``async def`` generators (they run on the event loop)
  table inline   the same as ``table`` with ``executor="inline"`` on every column (informative:
                 what the thread hop costs)
  graph          the same table hand-built as plain conveyor tasks: one ``conveyor.Graph`` task
                 per cell (the sampler and the full_column column: one task per row group;
                 a cell task reads its row's value from the sampler task's list), run with
                 ``conveyor.run(graph)`` (in-memory store, workers default), then the results
                 read back and written row group by row group
  floor          the same cells run by a minimal asyncio loop (the ``async def`` generators):
                 per row group, the sampler, then each column's cells awaited with one
                 ``asyncio.gather`` per column in dependency order, then the group written. No
                 scheduler: no overlap of row groups, no retries, no limiter, no drops

Method. Each (side, size, repetition) runs in a fresh subprocess, imports done before the timed
window. The window is the same for every side: from declaring the work (the ``Table`` and its
columns; for ``graph`` building every task) to the last row group written. Inside it: process
CPU time (user + sys of every thread, ``resource.getrusage(RUSAGE_SELF)`` deltas) and wall
time; afterwards the subprocess's peak RSS (``ru_maxrss``: the whole process, interpreter and
imports included) and a digest of the data files. Sides run interleaved within each repetition
(A B C ... A B C); the figures are the medians of each over ``--repeat`` runs. CPU per cell =
CPU time / (rows x 6 cells); "ratio" is a side's CPU per cell over the ``table`` side's at the
same size.

``graph`` holds every task and result of the whole table in memory (~4 tasks per row): it runs
at a size only when the figures from the size below it, scaled linearly, fit half the memory
available and ``--timeout``; a size it does not run at is printed with the reason. A subprocess
that exceeds ``--timeout`` is stopped and reported as timed out.

Targets (issue 11), for the conveyor table sides: scheduling CPU per cell <= 15 us; flat from
10k to 1M rows (CPU per cell at 1M <= 1.3x at 10k); peak RSS at 1M <= 1.2x at 100k (bounded
by the row groups in flight, not by the table).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SIDES = ("table", "table async", "table inline", "graph", "floor")
TABLE_SIDES = ("table", "table async", "table inline")
CELLS_PER_ROW = 6
ROW_GROUP = 1000
FIELDS = ["topic", "a", "b", "c", "d", "e"]
SEED = 0
CPU_TARGET_US = 15.0
FLAT_TARGET = 1.3
RSS_TARGET = 1.2

#: Bytecode cache for the subprocesses (this sandbox sets PYTHONDONTWRITEBYTECODE=1; a user's
#: machine caches bytecode). Imports are outside the timed window anyway.
PYCACHE = Path(tempfile.gettempdir()) / "conveyor-bench-pycache"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the generators ------------------------------------------------------------------------------


def a(topic: str) -> int:
    return 1


def b(a: int) -> int:
    return a + 1


def c(a: int) -> int:
    return a + 2


def d(b: int, c: int) -> int:
    return b + c


def e(d: list[int]) -> list[int]:
    return d


async def a_async(topic: str) -> int:
    return 1


async def b_async(a: int) -> int:
    return a + 1


async def c_async(a: int) -> int:
    return a + 2


async def d_async(b: int, c: int) -> int:
    return b + c


async def e_async(d: list[int]) -> list[int]:
    return d


def make_table(kind: str) -> Any:
    """The benchmark's table: ``kind`` is ``sync``, ``async`` or ``inline``."""
    from conveyor.table.samplers import category
    from conveyor.table.spec import Table

    table = Table("bench", seed=SEED, row_group_size=ROW_GROUP)
    table.sampler("topic", category({"a": 1, "b": 1, "c": 1}))
    fns: tuple[Callable[..., Any], ...] = (
        (a_async, b_async, c_async, d_async, e_async) if kind == "async" else (a, b, c, d, e)
    )
    opts: dict[str, Any] = {"executor": "inline"} if kind == "inline" else {}
    for fn, name in zip(fns[:4], "abcd", strict=True):
        table.add(fn, name=name, **opts)
    table.add(fns[4], name="e", strategy="full_column", **opts)
    return table


# -- one run (in a fresh subprocess) -----------------------------------------------------------


def run_table(kind: str, rows: int, out: Path) -> int:
    from conveyor.table.build import build

    table = make_table(kind)
    summary = build(table, rows, out, format="jsonl")
    if not summary.complete or summary.rows_written != rows:
        raise SystemExit(f"table build incomplete: {summary.to_json()}")
    return int(summary.cells)


def run_graph(rows: int, out: Path) -> int:
    import conveyor
    from conveyor.core.tablefrontier import group_span
    from conveyor.table.output import GroupMeta, PartWriter
    from conveyor.table.samplers import category

    sampler = category({"a": 1, "b": 1, "c": 1}).bind("topic")
    groups = -(-rows // ROW_GROUP)
    spans = [group_span(g, rows, ROW_GROUP) for g in range(groups)]

    def sample(start: int, stop: int) -> list[Any]:
        return list(sampler.sample(start, stop, SEED)["topic"])

    def pick_a(topics: list[Any], i: int) -> int:
        return a(topics[i])

    def batch_e(*ds: int) -> list[int]:
        return e(list(ds))

    graph = conveyor.Graph("bench")
    add = graph.add
    for span in spans:
        g, start = span.group, span.start
        topic = add(sample, start, start + span.rows, id=f"topic[{g}]")
        ds = []
        for i in range(span.rows):
            r = start + i
            ra = add(pick_a, topic, i, id=f"a[{r}]")
            rb = add(b, ra, id=f"b[{r}]")
            rc = add(c, ra, id=f"c[{r}]")
            ds.append(add(d, rb, rc, id=f"d[{r}]"))
        add(batch_e, *ds, id=f"e[{g}]")
    tasks = len(graph)
    res = conveyor.run(graph)
    if not res.ok:
        raise SystemExit(f"graph run failed: {res.counts}")
    writer = PartWriter(out, "jsonl", FIELDS)
    for span in spans:
        g, start, n = span.group, span.start, span.rows
        cols: dict[str, list[Any]] = {"topic": res[f"topic[{g}]"]}
        for f in "abcd":
            cols[f] = [res[f"{f}[{r}]"] for r in range(start, start + n)]
        cols["e"] = res[f"e[{g}]"]
        writer.write(GroupMeta(g, start, n, list(range(start, start + n))), cols)
    return tasks


def run_floor(rows: int, out: Path) -> int:
    import asyncio

    from conveyor.core.tablefrontier import group_span
    from conveyor.table.output import GroupMeta, PartWriter
    from conveyor.table.samplers import category

    sampler = category({"a": 1, "b": 1, "c": 1}).bind("topic")
    writer = PartWriter(out, "jsonl", FIELDS)
    gather = asyncio.gather

    async def main() -> int:
        calls = 0
        for g in range(-(-rows // ROW_GROUP)):
            span = group_span(g, rows, ROW_GROUP)
            start, n = span.start, span.rows
            topic = sampler.sample(start, start + n, SEED)["topic"]
            va = await gather(*(a_async(t) for t in topic))
            vb = await gather(*(b_async(x) for x in va))
            vc = await gather(*(c_async(x) for x in va))
            vd = await gather(*(d_async(x, y) for x, y in zip(vb, vc, strict=True)))
            ve = await e_async(list(vd))
            cols = {"topic": topic, "a": va, "b": vb, "c": vc, "d": vd, "e": ve}
            writer.write(GroupMeta(g, start, n, list(range(start, start + n))), cols)
            calls += 4 * n + 2
        return calls

    return asyncio.run(main())


def child(side: str, rows: int, workdir: Path) -> dict[str, Any]:
    """One timed run; returns its figures (printed as JSON by ``--child``)."""
    import asyncio  # noqa: F401 -- every import the sides use, before the window
    import gc
    import resource

    import conveyor
    import conveyor.api
    import conveyor.runtime.engine
    import conveyor.table.build
    import conveyor.table.cells
    import conveyor.table.output
    import conveyor.table.samplers
    import conveyor.table.store  # noqa: F401

    out = workdir / "out"
    gc.collect()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if side == "graph":
        tasks = run_graph(rows, out)
    elif side == "floor":
        tasks = run_floor(rows, out)
    else:
        tasks = run_table({"table": "sync", "table async": "async",
                           "table inline": "inline"}[side], rows, out)  # fmt: skip
    t1 = time.perf_counter()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    lines, digest = data_digest(out)
    return {
        "side": side, "rows": rows, "cells": rows * CELLS_PER_ROW, "tasks": tasks,
        "cpu_s": cpu, "user_s": r1.ru_utime - r0.ru_utime, "sys_s": r1.ru_stime - r0.ru_stime,
        "wall_s": t1 - t0, "peak_rss_mb": r1.ru_maxrss / 1024, "rows_written": lines,
        "digest": digest,
    }  # fmt: skip


def data_digest(out: Path) -> tuple[int, str]:
    """Rows and a digest of the data files in row-group order, one file at a time (so the
    check adds nothing to the peak RSS, which is read before it anyway)."""
    h = hashlib.sha256()
    lines = 0
    for p in sorted(out.glob("part-*.jsonl")):
        data = p.read_bytes()
        lines += data.count(b"\n")
        h.update(data)
    return lines, h.hexdigest()


# -- the parent ---------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPYCACHEPREFIX=str(PYCACHE))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p
    )
    return env


def spawn(side: str, rows: int, timeout: float) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-table-"))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--rows", str(rows),
           "--workdir", str(work)]  # fmt: skip
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=child_env())
    except subprocess.TimeoutExpired:
        return {"side": side, "rows": rows, "error": f"timed out after {timeout:.0f} s"}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if p.returncode != 0:
        return {"side": side, "rows": rows, "error": (p.stderr.strip() or p.stdout)[-600:]}
    return dict(json.loads(p.stdout.strip().splitlines()[-1]))


def mem_available_mb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def graph_fits(prev: dict[str, Any] | None, rows: int, timeout: float) -> str | None:
    """Why the ``graph`` side cannot run at ``rows`` (``None``: it can), from its figures at the
    size below, scaled linearly."""
    if prev is None or "error" in prev:
        return None
    k = rows / prev["rows"]
    rss = prev["peak_rss_mb"] * k
    wall = prev["wall_s"] * k
    avail = mem_available_mb()
    if avail is not None and rss > avail / 2:
        return (
            f"not run: {prev['rows']:,} rows took {prev['peak_rss_mb']:.0f} MB, so"
            f" ~{rss / 1024:.1f} GB here, over half the {avail / 1024:.1f} GB available"
        )
    if wall > timeout:
        return (
            f"not run: {prev['rows']:,} rows took {prev['wall_s']:.1f} s, so ~{wall:.0f} s"
            f" here, over --timeout {timeout:.0f} s"
        )
    return None


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {**runs[0], "runs": len(runs)}
    m = dict(ok[0])
    for k in ("cpu_s", "user_s", "sys_s", "wall_s", "peak_rss_mb"):
        m[k] = statistics.median(r[k] for r in ok)
    m["cpu_us_per_cell"] = m["cpu_s"] / m["cells"] * 1e6
    m["runs"] = len(ok)
    m["failed_runs"] = len(runs) - len(ok)
    return m


def fmt_rows(n: int) -> str:
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return f"{n:,}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="10000,100000,1000000", help="sizes, comma-separated")
    ap.add_argument("--repeat", type=int, default=3, help="runs per side and size (median)")
    ap.add_argument("--quick", action="store_true", help="2,000 rows once: a smoke test")
    ap.add_argument("--sides", default=",".join(SIDES), help=f"of {', '.join(SIDES)}")
    ap.add_argument("--timeout", type=float, default=1800.0, help="per subprocess, seconds")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, int(args.rows), Path(args.workdir))))
        return 0
    sizes = (
        [2000] if args.quick else sorted({int(x.replace("_", "")) for x in args.rows.split(",")})
    )
    repeat = 1 if args.quick else args.repeat
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    unknown = [s for s in sides if s not in SIDES]
    if unknown or not sides or repeat < 1:
        ap.error(f"bad --sides {unknown} or --repeat (sides: {', '.join(SIDES)})")

    results: dict[tuple[str, int], dict[str, Any]] = {}
    skipped: dict[tuple[str, int], str] = {}
    load0 = os.getloadavg()
    t_start = time.perf_counter()
    for rows in sizes:
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in sides}
        run_here = list(sides)
        if "graph" in sides:
            below = [results[("graph", n)] for n in sizes if n < rows and ("graph", n) in results]
            why = graph_fits(below[-1] if below else None, rows, args.timeout)
            if why:
                skipped[("graph", rows)] = why
                run_here.remove("graph")
                log(f"graph at {rows:,} rows: {why}")
        for rep in range(repeat):
            for side in run_here:
                log(f"{side} {rows:,} rows, run {rep + 1}/{repeat} ...")
                r = spawn(side, rows, args.timeout)
                if "error" in r:
                    log(f"  error: {r['error']}")
                else:
                    us = r["cpu_s"] / r["cells"] * 1e6
                    log(f"  cpu {r['cpu_s']:.2f} s ({us:.1f} us/cell), wall {r['wall_s']:.2f} s,"
                        f" peak RSS {r['peak_rss_mb']:.0f} MB")  # fmt: skip
                runs[side].append(r)
        for side in run_here:
            results[(side, rows)] = median_of(runs[side])
    load1 = os.getloadavg()

    # every side wrote the same files
    problems: list[str] = []
    for rows in sizes:
        digests = {s: results[(s, rows)]["digest"] for s in sides
                   if (s, rows) in results and "error" not in results[(s, rows)]}  # fmt: skip
        if len(set(digests.values())) > 1:
            problems.append(f"{rows:,} rows: the sides wrote different data: {digests}")
        for s in sides:
            got = results.get((s, rows))
            if got is None:
                continue
            if "error" in got:
                problems.append(f"{s} at {rows:,} rows: {got['error']}")
            elif got["rows_written"] != rows:
                problems.append(f"{s} at {rows:,} rows: wrote {got['rows_written']} rows")

    text = report(sides, sizes, results, skipped, problems, repeat, load0, load1,
                  time.perf_counter() - t_start)  # fmt: skip
    print(text)
    if args.json:
        payload = {
            "quick": args.quick, "sizes": sizes, "sides": sides, "repeat": repeat,
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                        "load_before": load0, "load_after": load1},
            "results": [v for v in results.values()],
            "skipped": [{"side": s, "rows": n, "why": w} for (s, n), w in skipped.items()],
            "verdicts": verdicts(sides, sizes, results),
            "problems": problems, "table": text,
        }  # fmt: skip
        Path(args.json).write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return 1 if problems else 0


def verdicts(
    sides: list[str], sizes: list[int], results: dict[tuple[str, int], dict[str, Any]]
) -> list[dict[str, Any]]:
    """The issue's three targets for each conveyor table side that ran. Without 10k and 1M
    (or 100k and 1M) the ratios are taken over the sizes that ran, say so, and have no
    verdict (``pass`` is ``None``)."""
    out: list[dict[str, Any]] = []
    for side in (s for s in sides if s in TABLE_SIDES):
        ok = {n: results[(side, n)] for n in sizes
              if (side, n) in results and "error" not in results[(side, n)]}  # fmt: skip
        if not ok:
            continue
        us = {n: float(r["cpu_us_per_cell"]) for n, r in ok.items()}
        rss = {n: float(r["peak_rss_mb"]) for n, r in ok.items()}
        worst = max(us, key=us.__getitem__)
        out.append({
            "side": side, "target": f"CPU/cell <= {CPU_TARGET_US:g} us at every size",
            "value": round(us[worst], 2), "unit": "us", "at": [worst],
            "pass": us[worst] <= CPU_TARGET_US,
            "detail": ", ".join(f"{fmt_rows(n)} {v:.1f} us" for n, v in us.items()),
        })  # fmt: skip
        ran = sorted(ok)
        if len(ran) < 2:
            continue
        lo, hi = ran[0], ran[-1]
        flat = us[hi] / us[lo]
        out.append({
            "side": side, "target": f"flat: CPU/cell at 1M <= {FLAT_TARGET}x at 10k",
            "value": round(flat, 2), "unit": "x", "at": [lo, hi],
            "pass": flat <= FLAT_TARGET if (lo, hi) == (10_000, 1_000_000) else None,
            "detail": _over(lo, hi, (10_000, 1_000_000)),
        })  # fmt: skip
        lo = 100_000 if 100_000 in ok and hi > 100_000 else ran[-2]
        grow = rss[hi] / rss[lo]
        out.append({
            "side": side, "target": f"peak RSS at 1M <= {RSS_TARGET}x at 100k",
            "value": round(grow, 2), "unit": "x", "at": [lo, hi],
            "pass": grow <= RSS_TARGET if (lo, hi) == (100_000, 1_000_000) else None,
            "detail": _over(lo, hi, (100_000, 1_000_000)),
        })  # fmt: skip
    return out


def _over(lo: int, hi: int, wanted: tuple[int, int]) -> str:
    if (lo, hi) == wanted:
        return ""
    want = f"{fmt_rows(wanted[1])} over {fmt_rows(wanted[0])}"
    return f"measured {fmt_rows(hi)} over {fmt_rows(lo)}, not {want}: no verdict"


def report(
    sides: list[str], sizes: list[int], results: dict[tuple[str, int], dict[str, Any]],
    skipped: dict[tuple[str, int], str], problems: list[str], repeat: int,
    load0: tuple[float, ...], load1: tuple[float, ...], elapsed: float,
) -> str:  # fmt: skip
    lines = [
        f"## Table builder: {CELLS_PER_ROW} cells per row (1 sampler, 4 cell columns, 1"
        f" full_column), no-op generators, row groups of {ROW_GROUP:,}, JSONL",
        "",
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs,"
        f" load average {load0[0]:.1f} before / {load1[0]:.1f} after;"
        f" median of {repeat} fresh-process run(s) per cell; {elapsed:.0f} s in all",
        "",
        "| side | rows | cells | tasks | CPU µs/cell | ratio to table | wall s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rows in sizes:
        base = results.get(("table", rows))
        base_us = base.get("cpu_us_per_cell") if base and "error" not in base else None
        for side in sides:
            r = results.get((side, rows))
            if r is None:
                why = skipped.get((side, rows), "not run")
                lines.append(f"| {side} | {fmt_rows(rows)} | {rows * CELLS_PER_ROW:,} | - | - |"
                             f" - | - | {why} |")  # fmt: skip
                continue
            if "error" in r:
                err = r["error"].splitlines()[-1][:120] if r["error"] else "failed"
                lines.append(f"| {side} | {fmt_rows(rows)} | {rows * CELLS_PER_ROW:,} | - | - |"
                             f" - | - | {err} |")  # fmt: skip
                continue
            us = r["cpu_us_per_cell"]
            ratio = f"{us / base_us:.2f}x" if base_us else "-"
            lines.append(
                f"| {side} | {fmt_rows(rows)} | {r['cells']:,} | {r['tasks']:,} | {us:.1f} |"
                f" {ratio} | {r['wall_s']:.2f} | {r['peak_rss_mb']:.0f} |"
            )
    lines += ["", "Targets:"]
    for v in verdicts(sides, sizes, results):
        mark = {True: "PASS", False: "MISS", None: "n/a"}[v["pass"]]
        unit = " us" if v["unit"] == "us" else "x"
        detail = f" ({v['detail']})" if v["detail"] else ""
        lines.append(f"- [{mark}] {v['side']}: {v['target']}: {v['value']}{unit}{detail}")
    if not any(s in TABLE_SIDES for s in sides):
        lines.append("- (no conveyor table side ran)")
    for (side, rows), why in skipped.items():
        lines.append(f"- {side} at {fmt_rows(rows)} rows: {why}")
    if problems:
        lines += ["", "Problems:"] + [f"- {p}" for p in problems]
    else:
        lines += ["", "Every side wrote the same data files (same rows, same bytes)."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
