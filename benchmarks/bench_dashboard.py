"""Does an open dashboard slow the workers? A durable SQLite run with and without
``conveyor dashboard`` watching it, side by side.

The run: ``benchmarks/graphs.py``'s layered graph (width 100, 3 parents) of ``--n`` no-op tasks
(default 20,000), ``--workers`` ``conveyor worker --quiet`` processes (default 4) with their
default settings, on a fresh SQLite store per run.

- **without**: submit, then the workers.
- **with**: submit, then ``conveyor dashboard --db URL --port 0`` (its defaults: it reads the
  store every ``--every`` seconds, default 1) and a client that holds the page's event stream
  open (``/events``, what an open browser tab does) and reads every frame; once the first frame
  came (the page shows the run), the workers.
  The dashboard keeps reading and pushing frames until the last worker exits.

The same rules for both: the same graph and settings; one timed window, from the start of the
first worker to the exit of the last (submission, and the dashboard's start up to its first
frame, are before it; before it too, for both, ``os.sync()``: the last run's files are written
back outside the window); runs interleaved without, with, without, with ... (``--repeat``
each, default 3); the median rate of each side; every run checks that all N tasks are done.
Prints the ratio with / without (the target: >= 0.95) and the load average beside it.

    flock /tmp/bench.lock python benchmarks/bench_dashboard.py [--n 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import bench_durable as durable  # noqa: E402
import graphs  # noqa: E402


class EventReader:
    """An open page: reads the dashboard's event stream on a thread, counting frames."""

    def __init__(self, url: str) -> None:
        self.frames = 0
        self._stream = urllib.request.urlopen(url.rstrip("/") + "/events", timeout=60)
        self._first = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        # the page is open once it shows the run: the dashboard's start and first read of the
        # store are behind us (as the submission is), not inside the timed window
        if not self._first.wait(timeout=120):
            raise RuntimeError("the dashboard pushed no frame in 120 s")

    def _read(self) -> None:
        try:
            for line in self._stream:
                if line.startswith(b"data: "):
                    self.frames += 1
                    self._first.set()
        except Exception:  # closed under us at the end, or the server went away
            return

    def close(self) -> None:
        self._stream.close()


def start_dashboard(url: str, wd: Path, every: float) -> tuple[subprocess.Popen[str], str]:
    cmd = [*durable.conveyor_cmd(), "dashboard", "--db", url, "--port", "0", "--every", str(every)]
    proc = subprocess.Popen(
        cmd, cwd=wd, stderr=subprocess.PIPE, text=True, env=durable.worker_env()
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()
    m = re.search(r"(http://\S+)", line)
    if not m:
        proc.kill()
        raise RuntimeError(f"the dashboard did not start: {line}{proc.stderr.read()}")
    return proc, m.group(1)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux ``/proc``; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(
    graph_file: Path, n: int, workers: int, watched: bool, every: float, timeout: float
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as d:
        wd = Path(d)
        url = durable.sqlite_url(wd)
        _secs, err = durable.submit(graph_file, url, wd, timeout)
        if err:
            raise RuntimeError(err)
        dash = reader = None
        if watched:
            dash, page = start_dashboard(url, wd, every)
            reader = EventReader(page)
        os.sync()  # the last run's files written back now, not inside this window
        load = os.getloadavg()[0]
        cpu0 = cpu_seconds(dash.pid) if dash is not None else 0.0
        cmd = [*durable.conveyor_cmd(), "worker", "--db", url, "--quiet"]
        secs, timed_out, codes, _outs, errs = durable.run_processes([cmd] * workers, wd, timeout)
        frames, dash_cpu = 0, 0.0
        if dash is not None and reader is not None:
            dash_cpu = cpu_seconds(dash.pid) - cpu0
            frames = reader.frames
            reader.close()
            dash.terminate()
            dash.wait(timeout=30)
            if dash.stderr is not None:
                dash.stderr.close()
        if timed_out or any(c != 0 for c in codes):
            raise RuntimeError(f"workers: timed out={timed_out}, exits {codes}: {errs[0][-300:]}")
        done = durable.store_counts(url).get("done", 0)
        if done != n:
            raise RuntimeError(f"only {done} of {n} tasks done")
        return {
            "watched": watched,
            "seconds": secs,
            "rate": n / secs,
            "frames": frames,
            "dashboard_cpu_s": dash_cpu,
            "load_before": load,
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000, help="tasks (no-ops)")
    ap.add_argument("--workers", type=int, default=4, help="conveyor worker processes")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each side, interleaved")
    ap.add_argument("--every", type=float, default=1.0, help="the dashboard's --every")
    ap.add_argument("--timeout", type=float, default=300.0, help="limit per run (seconds)")
    ap.add_argument("--json", type=Path, help="write every run here")
    ap.add_argument(
        "--control",
        action="store_true",
        help="an A/A control: the second side runs without a dashboard too (the "
        "ratio is then the noise floor of this machine and order)",
    )
    args = ap.parse_args(argv)

    gdir = Path(tempfile.mkdtemp(prefix="bench-dashboard-graph-"))
    graph_file = graphs.write_graph(graphs.layered(args.n), gdir, name=f"layered-{args.n}")
    runs: list[dict[str, Any]] = []
    for i in range(args.repeat):
        for watched in (False, True):
            r = one_run(
                graph_file,
                args.n,
                args.workers,
                watched and not args.control,
                args.every,
                args.timeout,
            )
            r["watched"] = watched  # the side it stands for (--control: both without)
            runs.append(r)
            side = "with dashboard" if watched else "without"
            durable.log(
                f"  run {i + 1} {side:15s} {r['rate']:8,.0f} tasks/s "
                f"({r['seconds']:.2f} s, {r['frames']} frames pushed, dashboard CPU "
                f"{r['dashboard_cpu_s']:.2f} s, "
                f"load {r['load_before']:.2f})"
            )
    without = statistics.median(r["rate"] for r in runs if not r["watched"])
    with_ = statistics.median(r["rate"] for r in runs if r["watched"])
    ratio = with_ / without
    load = os.getloadavg()
    print(
        f"## Dashboard overhead: SQLite, layered N={args.n:,}, {args.workers} workers "
        f"(median of {args.repeat}, interleaved)\n"
    )
    print("| side | tasks/s (median) | every run |")
    print("|---|---:|---|")
    for label, watched, med in (
        ("without a dashboard", False, without),
        (
            "second side, control: without a dashboard too"
            if args.control
            else f"with `conveyor dashboard --every {args.every:g}` open",
            True,
            with_,
        ),
    ):
        each = ", ".join(f"{r['rate']:,.0f}" for r in runs if r["watched"] == watched)
        print(f"| {label} | {med:,.0f} | {each} |")
    verdict = "PASS" if ratio >= 0.95 else "FAIL"
    if args.control:
        verdict = "not judged: an A/A control, no dashboard on either side"
    print(
        f"\nwith / without = {ratio:.3f} (target >= 0.95: {verdict}); "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    if args.json is not None:
        args.json.write_text(json.dumps({"runs": runs, "ratio": ratio, "load": load}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
