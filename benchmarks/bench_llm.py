"""LLM columns: conveyor beside NVIDIA NeMo Data Designer 0.9.7, one fake endpoint (issue 12).

    python benchmarks/bench_llm.py                      # 4 scenarios, 2,000 records, once:
                                                        # ~25 min (Data Designer's runs are most
                                                        # of it); its venv is made on first use
    python benchmarks/bench_llm.py --repeat 3 --json out.json
    python benchmarks/bench_llm.py --scenario defaults,two --records 1000
    python benchmarks/bench_llm.py --quick              # 200 records, every scenario, both tools
    python benchmarks/bench_llm.py --only conveyor      # no Data Designer (no venv needed)

The workload, the same for both tools: a category sampler and two chained LLM text columns,
the second's prompt using the first::

    category  sampler: one of book, lamp, kettle, chair (equal weights)
    title     "Write a short product title for a {{ category }}."
    review    "Write a short review of the product titled: {{ title }}"

so ``2 x records`` chat completions, against ``python -m conveyor.testing.fake_llm`` (a real
aiohttp server in its own process, one per endpoint, started fresh for every run so its
counters are clean): 200 ms per call, a hidden concurrency ``capacity`` beyond which it answers
429 at once (with Retry-After: the time until a slot frees, or a fixed ``--retry-after``).

Scenarios (``--scenario``):

  defaults      capacity 16; each tool at its defaults (Data Designer: max_parallel_requests 4)
  dd32          capacity 16; Data Designer told max_parallel_requests=32 (a guess too high)
  ra8           capacity 8 and every 429 says Retry-After: 1; Data Designer told 16
  two           two endpoints, capacities 16 and 4: ``title`` calls the first, ``review`` the
                second (two servers, two model aliases in both tools). Data Designer runs twice:
                told the true capacities (16 and 4: its best case) and at its defaults (4, 4;
                4 happens to be the slow endpoint's capacity, which bounds the run)

Conveyor is never told a capacity: each side runs as its users run it. Conveyor: a ``Table``
with ``conveyor.llm_text`` columns and ``conveyor.table.build.build(table, records, out)``, every
option at its default (cells at once: 512 for a table that calls endpoints; row groups of 1,000,
3 in flight; Parquet; one ``GET /models`` probe per endpoint before building). Data
Designer (``benchmarks/peer_datadesigner.py``, in its own venv, made on first use under
``--venv``: ``python -m venv`` and ``pip install data-designer==0.9.7``): a ``ModelProvider``
per server, a ``ModelConfig`` per alias, ``DataDesigner(...).create(builder,
num_records=N)``, everything at its defaults (``buffer_size`` 1,000, 3 row groups in flight,
a readiness call per model before generating, column statistics after) but the
``max_parallel_requests`` a scenario tells it. Row groups are 1,000 records for both.
``NEMO_TELEMETRY_ENABLED=false``; its statistics count tokens with tiktoken, whose
``cl100k_base`` file the venv setup fetches once (best effort, outside any timed window) into
the venv's ``TIKTOKEN_CACHE_DIR`` so no run fetches it (without network the statistics log a
warning at once and go on).

Method. Each run is its own process per tool (``--only`` picks tools); imports are done before
the timed window (each driver imports the libraries its tool loads lazily: conveyor openai,
httpx, aiohttp, jinja2, pyarrow; Data Designer pandas, pyarrow, httpx, networkx). The window is
the same for both: from the call of ``build()`` / ``create()`` to its return, measured inside
the process (``wall``). The time to the first row group is the time from that call until the
first row group's Parquet file appears in the output directory (conveyor:
``part-00000.parquet``, renamed into place; Data Designer: ``parquet-files/batch_*.parquet``),
seen by this script polling every 20 ms; "last" likewise for the last one (Data Designer's
column statistics run after it, inside ``create()``).
Tools run interleaved within each repetition (conveyor, then Data Designer, per scenario);
figures are medians over ``--repeat``.

Reported per scenario and tool: wall time, calls served (the fake servers' ``/stats``, Data
Designer's readiness calls included), the share of the ideal bound, 429s (count and share of
all requests), the time to the first and last row group, the tool's CPU per call served (its
process's user + sys time inside the window; the fake servers are other processes), and the
throughput ratio conveyor / Data Designer (records per second). Each run logs the machine's load
average before and after it (in the JSON too): on a shared machine CPU contention shows up as
lost throughput, most for the tool that needs the most calls per second.

The ideal bound is the wall time no scheduler can beat: every call takes ``latency`` and an
endpoint serves at most ``capacity`` at once, so with ``calls_e`` calls of the workload to
endpoint ``e`` (records per column that calls it) the wall time is at least
``max_e(calls_e x latency / capacity_e)``; "% of ideal" is that bound over the measured wall
time. (With two endpoints the bound is the slower one's; the chain makes the first endpoint's
work a prefix, which the bound ignores.)

Targets (issue 12), for conveyor: >= 90 % of the ideal bound in every single-endpoint scenario
without being told the capacity, >= 85 % with two endpoints, 429s <= 3 % of requests, and so
>= 1.5x Data Designer's throughput where it is mis-configured (its default 4 at capacity 16, 32
at 16, 16 at 8). With two endpoints neither of its configurations is mis-configured where it
counts: the run is bound by the capacity-4 endpoint, and both give it 4; the two-endpoint rows
show how near each tool gets to the bound.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parents[1]
PEER = ROOT / "benchmarks" / "peer_datadesigner.py"
DD_VERSION = "0.9.7"
DEFAULT_VENV = Path.home() / ".cache" / "conveyor-bench" / f"dd-{DD_VERSION}"
TOOLS = ("conveyor", "datadesigner")
CATEGORIES = ["book", "lamp", "kettle", "chair"]
COLUMNS = [  # (name, prompt, which endpoint: index into the scenario's endpoints, -1 the last)
    ("title", "Write a short product title for a {{ category }}.", 0),
    ("review", "Write a short review of the product titled: {{ title }}", -1),
]
ROW_GROUP = 1000  # both tools' default
POLL_S = 0.02
TARGET_SINGLE, TARGET_TWO, TARGET_429, TARGET_RATIO = 0.90, 0.85, 0.03, 1.5


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- scenarios -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    capacity: int
    retry_after: float | None = None


@dataclass(frozen=True)
class DDVariant:
    label: str  # what it was told, for the table
    parallel: tuple[int | None, ...]  # max_parallel_requests per endpoint; None: its default
    misconfigured: bool  # the ratio target applies


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    endpoints: tuple[Endpoint, ...]
    dd: tuple[DDVariant, ...]

    def calls_per_endpoint(self, records: int) -> list[int]:
        calls = [0] * len(self.endpoints)
        for _, _, e in COLUMNS:
            calls[e % len(self.endpoints)] += records
        return calls

    def ideal_s(self, records: int, latency: float) -> float:
        """max over endpoints of calls x latency / capacity: no schedule is faster."""
        return max(
            n * latency / ep.capacity
            for n, ep in zip(self.calls_per_endpoint(records), self.endpoints, strict=True)
        )

    @property
    def target(self) -> float:
        return TARGET_TWO if len(self.endpoints) > 1 else TARGET_SINGLE


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("defaults", "capacity 16, defaults", (Endpoint(16),),
                 (DDVariant("default (4)", (None,), True),)),
        Scenario("dd32", "capacity 16, DD told 32", (Endpoint(16),),
                 (DDVariant("told 32", (32,), True),)),
        Scenario("ra8", "capacity 8, Retry-After 1, DD told 16", (Endpoint(8, 1.0),),
                 (DDVariant("told 16", (16,), True),)),
        Scenario("two", "two endpoints, capacities 16 and 4", (Endpoint(16), Endpoint(4)),
                 (DDVariant("told 16 + 4 (true)", (16, 4), False),
                  DDVariant("default (4 + 4)", (None, None), False))),
    )
}  # fmt: skip


# -- the fake servers ------------------------------------------------------------------------------


class FakeServer:
    """``python -m conveyor.testing.fake_llm`` in its own process, on a free port."""

    def __init__(self, ep: Endpoint, latency: float, logfile: Path) -> None:
        cmd = [sys.executable, "-m", "conveyor.testing.fake_llm", "--port", "0",
               "--latency-ms", f"{latency * 1000:g}", "--capacity", str(ep.capacity)]  # fmt: skip
        if ep.retry_after is not None:
            cmd += ["--retry-after", f"{ep.retry_after:g}"]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        self._err = open(logfile, "w", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._err, text=True,
                                     env=env)  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until it listens or dies
        if not line.startswith("fake-llm listening on "):
            self.stop()
            raise RuntimeError(f"the fake server did not start: {line!r} (see {logfile})")
        self.url = line.split()[-1]

    def stats(self) -> dict[str, int]:
        root = self.url.removesuffix("/v1")
        with urllib.request.urlopen(f"{root}/stats", timeout=10) as r:
            out: dict[str, int] = json.loads(r.read())
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._err.close()


# -- Data Designer's venv --------------------------------------------------------------------------


def dd_env(venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(NEMO_TELEMETRY_ENABLED="false", HF_HUB_OFFLINE="1",
               TIKTOKEN_CACHE_DIR=str(venv / "tiktoken-cache"))  # fmt: skip
    return env


def ensure_dd_venv(venv: Path) -> Path:
    """The venv's python, after making the venv (once) with data-designer==0.9.7."""
    python = venv / "bin" / "python"
    check = [str(python), "-c",
             "import importlib.metadata as m; print(m.version('data-designer'))"]  # fmt: skip
    if python.exists():
        p = subprocess.run(check, capture_output=True, text=True, env=dd_env(venv))
        if p.returncode == 0 and p.stdout.strip() == DD_VERSION:
            return python
    log(f"making Data Designer's venv at {venv} (~800 MB, a few minutes) ...")
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    install = [str(python), "-m", "pip", "install", "--quiet", f"data-designer=={DD_VERSION}"]
    p = subprocess.run(install, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"pip install data-designer=={DD_VERSION} failed:\n{p.stderr[-3000:]}")
    # its column statistics count tokens with tiktoken's cl100k_base: fetch it now, not
    # inside a timed run (best effort: without network they log a warning and go on)
    fetch = [str(python), "-c", "import tiktoken; tiktoken.get_encoding('cl100k_base')"]
    try:
        subprocess.run(fetch, capture_output=True, env=dd_env(venv), timeout=120)
    except subprocess.TimeoutExpired:
        pass
    p = subprocess.run(check, capture_output=True, text=True, env=dd_env(venv))
    if p.stdout.strip() != DD_VERSION:
        raise SystemExit(f"Data Designer's venv at {venv} is broken: {p.stderr[-2000:]}")
    return python


# -- one run ---------------------------------------------------------------------------------------


@dataclass
class Run:
    scenario: str
    tool: str  # "conveyor" or "datadesigner"
    variant: str  # what the tool was told
    records: int
    rep: int
    wall_s: float
    rows: int
    ideal_s: float
    requests: int
    served: int
    rate_limited: int
    max_in_flight: list[int]
    first_group_s: float | None
    last_group_s: float | None
    cpu_s: float  # the tool's process, user + sys, inside the window
    load: tuple[float, float]  # the machine's 1-minute load average before and after the run
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def of_ideal(self) -> float:
        return self.ideal_s / self.wall_s

    @property
    def share_429(self) -> float:
        return self.rate_limited / self.requests if self.requests else 0.0


def driver_config(s: Scenario, servers: list[FakeServer], parallel: tuple[int | None, ...],
                  records: int, out: Path) -> dict[str, Any]:  # fmt: skip
    """The workload for either driver: a model alias per endpoint (its own model name, so
    conveyor's limiter keys ``openai/<model>/chat`` differ too)."""
    models = [
        {"alias": f"m{i}", "model": f"fake-model-{i}", "url": srv.url, "max_parallel_requests": p}
        for i, (srv, p) in enumerate(zip(servers, parallel, strict=True))
    ]
    columns = [{"name": n, "prompt": pr, "model": f"m{e % len(servers)}"} for n, pr, e in COLUMNS]
    return {"records": records, "out": str(out), "dataset": "bench", "categories": CATEGORIES,
            "models": models, "columns": columns}  # fmt: skip


def groups_dir(tool: str, out: Path) -> tuple[Path, str]:
    if tool == "conveyor":
        return out, "part-*.parquet"
    return out / "bench" / "parquet-files", "*.parquet"


def run_once(s: Scenario, tool: str, variant: DDVariant | None, *, records: int, latency: float,
             rep: int, work: Path, dd_python: Path | None, venv: Path,
             conveyor_src: Path = ROOT / "src") -> Run:  # fmt: skip
    label = "not told" if variant is None else variant.label
    tag = f"{s.name}-{tool}-{rep}" + ("" if variant is None else f"-{variant.parallel}")
    tag = "".join(c if c.isalnum() or c in "-_" else "_" for c in tag)
    run_dir = work / tag
    run_dir.mkdir(parents=True)
    servers: list[FakeServer] = []
    try:
        for i, ep in enumerate(s.endpoints):
            servers.append(FakeServer(ep, latency, run_dir / f"server{i}.log"))
        out = run_dir / "out"
        parallel = variant.parallel if variant is not None else (None,) * len(servers)
        cfg = driver_config(s, servers, parallel, records, out)
        cfg_file = run_dir / "config.json"
        cfg_file.write_text(json.dumps(cfg), encoding="utf-8")
        if tool == "conveyor":
            cmd = [sys.executable, str(Path(__file__).resolve()), "--driver", str(cfg_file)]
            env = {**os.environ, "PYTHONPATH": str(conveyor_src)}
        else:
            assert dd_python is not None
            cmd = [str(dd_python), str(PEER), str(cfg_file)]
            env = dd_env(venv)
        expected = math.ceil(records / ROW_GROUP)
        load0 = os.getloadavg()[0]
        with open(run_dir / "stdout.txt", "w+", encoding="utf-8") as so, \
                open(run_dir / "stderr.txt", "w", encoding="utf-8") as se:  # fmt: skip
            proc = subprocess.Popen(cmd, stdout=so, stderr=se, env=env, cwd=run_dir)
            try:
                first, last = _watch_groups(proc, *groups_dir(tool, out), expected)
            except BaseException:  # Ctrl-C, SIGTERM: leave no driver behind
                proc.kill()
                proc.wait()
                raise
            so.seek(0)
            result = _result(so)
        if proc.returncode != 0 or result is None:
            err = (run_dir / "stderr.txt").read_text(encoding="utf-8")[-3000:]
            raise RuntimeError(f"{tool} failed in {s.name} (exit {proc.returncode}):\n{err}")
        stats = [srv.stats() for srv in servers]
        load = (load0, os.getloadavg()[0])
    finally:
        for srv in servers:
            srv.stop()
    started = result["started"]
    return Run(
        scenario=s.name, tool=tool, variant=label, records=records, rep=rep,
        wall_s=result["wall_s"], rows=result["rows"], ideal_s=s.ideal_s(records, latency),
        requests=sum(st["requests"] for st in stats), served=sum(st["served"] for st in stats),
        rate_limited=sum(st["rate_limited"] for st in stats),
        max_in_flight=[st["max_in_flight"] for st in stats],
        first_group_s=None if first is None else first - started,
        last_group_s=None if last is None else last - started,
        cpu_s=result["cpu_s"], load=load,
        detail={k: v for k, v in result.items()
                if k not in ("started", "wall_s", "rows", "cpu_s")},
    )  # fmt: skip


def _watch_groups(proc: subprocess.Popen[bytes], where: Path, pattern: str,
                  expected: int) -> tuple[float | None, float | None]:  # fmt: skip
    """Poll ``where`` until ``proc`` exits: the wall-clock times the first row group file and
    the ``expected``-th appeared."""
    first = last = None
    while True:
        done = proc.poll() is not None
        if last is None and where.is_dir():
            n = sum(1 for _ in where.glob(pattern))
            now = time.time()
            if n and first is None:
                first = now
            if n >= expected:
                last = now
        if done:
            return first, last
        time.sleep(POLL_S)


def _result(stdout: TextIO) -> dict[str, Any] | None:
    for line in stdout.read().splitlines():
        if line.startswith("RESULT "):
            out: dict[str, Any] = json.loads(line.removeprefix("RESULT "))
            return out
    return None


# -- conveyor's driver (this file, run as a subprocess) --------------------------------------------


def conveyor_driver(cfg_path: str) -> None:
    """Build the workload with conveyor as a user would; print the timed window."""
    import httpx  # noqa: F401  - what conveyor imports lazily, imported before the window
    import jinja2  # noqa: F401
    import openai  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    try:
        import aiohttp  # noqa: F401  - the openai SDK's transport when installed
    except ImportError:
        pass

    import conveyor
    from conveyor.table.build import build

    cfg = json.loads(Path(cfg_path).read_text(encoding="utf-8"))
    os.environ["CONVEYOR_BENCH_KEY"] = "unused"
    table = conveyor.Table("bench", seed=0)
    table.sampler("category", conveyor.category(cfg["categories"]))
    for m in cfg["models"]:
        table.model(m["alias"], model=m["model"], base_url=m["url"],
                    api_key_env="CONVEYOR_BENCH_KEY")  # fmt: skip
    for col in cfg["columns"]:
        table.add(conveyor.llm_text(col["prompt"], model=col["model"]), name=col["name"])

    started = time.time()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    summary = build(table, cfg["records"], cfg["out"])
    wall = time.monotonic() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)

    result = {
        "started": started, "wall_s": wall, "rows": summary.rows_written,
        "cpu_s": r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime,
        "complete": summary.complete, "row_group_size": table.row_group_size,
        "row_groups_in_flight": table.in_flight, "endpoints": summary.endpoints,
        "own_first_group_s": summary.time_to_first_row_group_s, "dropped": summary.dropped,
        "conveyor": str(Path(conveyor.__file__).parent),
    }  # fmt: skip
    print("RESULT " + json.dumps(result), flush=True)


# -- the report ------------------------------------------------------------------------------------


def median(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


@dataclass
class Row:
    scenario: str
    tool: str
    variant: str
    wall_s: float
    calls: float
    of_ideal: float
    rate_limited: float
    share_429: float
    first_group_s: float | None
    last_group_s: float | None
    rows_per_s: float
    cpu_ms_per_call: float
    misconfigured: bool = False
    ratio: float | None = None  # conveyor's records/s over this Data Designer row's


def summarise(runs: list[Run], scenarios: list[Scenario]) -> list[Row]:
    rows: list[Row] = []
    for s in scenarios:
        conv: Row | None = None
        keys = [("conveyor", "not told", False)] + [
            ("datadesigner", v.label, v.misconfigured) for v in s.dd
        ]
        for tool, variant, mis in keys:
            rs = [r for r in runs if r.scenario == s.name and r.tool == tool
                  and r.variant == variant]  # fmt: skip
            if not rs:
                continue
            wall = statistics.median(r.wall_s for r in rs)
            row = Row(
                s.name, tool, variant, wall, statistics.median(r.served for r in rs),
                statistics.median(r.of_ideal for r in rs),
                statistics.median(r.rate_limited for r in rs),
                statistics.median(r.share_429 for r in rs),
                median([r.first_group_s for r in rs]), median([r.last_group_s for r in rs]),
                statistics.median(r.rows / r.wall_s for r in rs),
                statistics.median(1000 * r.cpu_s / r.served for r in rs), misconfigured=mis,
            )  # fmt: skip
            if tool == "conveyor":
                conv = row
            elif conv is not None:
                row.ratio = conv.rows_per_s / row.rows_per_s
            rows.append(row)
    return rows


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def table_md(rows: list[Row], scenarios: dict[str, Scenario]) -> str:
    out = ["| scenario | tool | capacity told | wall s | calls | % of ideal | 429s | "
           "1st row group s | last row group s | CPU ms/call | conveyor/DD |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        tool = "conveyor" if r.tool == "conveyor" else f"Data Designer {DD_VERSION}"
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}x"
        out.append(
            f"| {scenarios[r.scenario].title} | {tool} | {r.variant} | {r.wall_s:.1f} | "
            f"{r.calls:,.0f} | {r.of_ideal:.0%} | {r.rate_limited:,.0f} ({r.share_429:.1%}) | "
            f"{_s(r.first_group_s)} | {_s(r.last_group_s)} | {r.cpu_ms_per_call:.1f} | {ratio} |"
        )
    return "\n".join(out)


def verdicts(rows: list[Row], scenarios: dict[str, Scenario]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(scenario: str, what: str, value: str, ok: bool) -> None:
        out.append({"scenario": scenario, "target": what, "value": value, "pass": ok})

    for r in rows:
        s = scenarios[r.scenario]
        if r.tool == "conveyor":
            add(s.name, f"conveyor >= {s.target:.0%} of ideal", f"{r.of_ideal:.0%}",
                r.of_ideal >= s.target)  # fmt: skip
            add(s.name, f"conveyor 429s <= {TARGET_429:.0%}", f"{r.share_429:.1%}",
                r.share_429 <= TARGET_429)  # fmt: skip
        elif r.misconfigured and r.ratio is not None:
            add(s.name, f"conveyor >= {TARGET_RATIO}x DD ({r.variant})", f"{r.ratio:.2f}x",
                r.ratio >= TARGET_RATIO)  # fmt: skip
    return out


# -- main ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=None, help="default 2,000 (--quick: 200)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per scenario and tool (median)")
    ap.add_argument("--scenario", default=",".join(SCENARIOS),
                    help=f"comma-separated, of {', '.join(SCENARIOS)} (default: all)")  # fmt: skip
    ap.add_argument("--only", choices=TOOLS, default=None, help="run one tool only")
    ap.add_argument("--latency-ms", type=float, default=200.0, help="per call (default 200)")
    ap.add_argument("--quick", action="store_true", help="200 records: a smoke run")
    ap.add_argument("--venv", type=Path, default=DEFAULT_VENV, help=f"default {DEFAULT_VENV}")
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the runs' directories")
    ap.add_argument("--conveyor-src", type=Path, default=ROOT / "src",
                    help="the conveyor source tree to run (default: this checkout's)")  # fmt: skip
    ap.add_argument("--driver", help=argparse.SUPPRESS)  # internal: conveyor's side of a run
    args = ap.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the fake servers and the driver are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.driver:
        conveyor_driver(args.driver)
        return 0
    records = args.records or (200 if args.quick else 2000)
    names = [n.strip() for n in args.scenario.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown or not names:
        ap.error(f"unknown scenario {unknown}; choose from {', '.join(SCENARIOS)}")
    if records < 1 or args.repeat < 1 or args.latency_ms <= 0:
        ap.error("--records, --repeat and --latency-ms must be positive")
    scenarios = [SCENARIOS[n] for n in names]
    tools = [args.only] if args.only else list(TOOLS)
    latency = args.latency_ms / 1000.0
    dd_python = ensure_dd_venv(args.venv) if "datadesigner" in tools else None

    work = Path(tempfile.mkdtemp(prefix="conveyor-bench-llm-"))
    runs: list[Run] = []
    try:
        for rep in range(args.repeat):
            for s in scenarios:
                plan: list[tuple[str, DDVariant | None]] = []
                if "conveyor" in tools:
                    plan.append(("conveyor", None))
                if "datadesigner" in tools:
                    plan += [("datadesigner", v) for v in s.dd]
                for tool, variant in plan:
                    log(f"[{rep + 1}/{args.repeat}] {s.name}: {tool}"
                        + ("" if variant is None else f" ({variant.label})") + " ...")  # fmt: skip
                    r = run_once(s, tool, variant, records=records, latency=latency, rep=rep,
                                 work=work, dd_python=dd_python, venv=args.venv,
                                 conveyor_src=args.conveyor_src.resolve())  # fmt: skip
                    log(f"    {r.wall_s:.1f} s, {r.of_ideal:.0%} of ideal, {r.served} served, "
                        f"{r.rate_limited} 429s, first row group "
                        f"{_s(r.first_group_s)} s, CPU {r.cpu_s:.1f} s, load "
                        f"{r.load[0]:.1f} -> {r.load[1]:.1f}")  # fmt: skip
                    if r.rows != records:
                        raise RuntimeError(f"{tool} wrote {r.rows} rows, not {records}")
                    runs.append(r)
    finally:
        if args.keep:
            log(f"runs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    by_name = {s.name: s for s in scenarios}
    rows = summarise(runs, scenarios)
    checks = verdicts(rows, by_name)
    print(f"\n{records:,} records, {len(COLUMNS)} chained LLM columns, {args.latency_ms:g} ms per "
          f"call, median of {args.repeat}; ideal = max over endpoints of calls x latency / "
          "capacity\n")  # fmt: skip
    print(table_md(rows, by_name))
    ratios = [r for r in rows if r.ratio is not None]
    if ratios:
        print("\nThroughput, conveyor / Data Designer:")
        for r in ratios:
            print(f"  {by_name[r.scenario].title}, DD {r.variant}: {r.ratio:.2f}x")
    print("\nTargets:")
    for c in checks:
        mark = "PASS" if c["pass"] else "MISS"
        print(f"  [{mark}] {c['scenario']}: {c['target']}: {c['value']}")
    if args.json is not None:
        data = {
            "records": records, "repeat": args.repeat, "latency_ms": args.latency_ms,
            "quick": args.quick, "tools": tools, "scenarios": names,
            "conveyor_src": str(args.conveyor_src.resolve()),
            "data_designer": DD_VERSION if dd_python else None,
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
            "runs": [{**asdict(r), "of_ideal": r.of_ideal, "share_429": r.share_429}
                     for r in runs],
            "rows": [asdict(r) for r in rows], "verdicts": checks,
        }  # fmt: skip
        args.json.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
