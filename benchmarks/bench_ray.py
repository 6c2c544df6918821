"""conveyor's Ray executor against plain ``ray.remote`` tasks on one Ray cluster (issue 13,
"Measured"), side by side in one run.

Two workloads, each run by both sides:

- **no-op**: ``--noop-tasks`` (default 10,000) independent tasks that do nothing;
- **layered**: ``--layers`` x ``--width`` (default 20 x 100 = 2,000) tasks of ``--sleep-ms``
  (default 10) ms; every task of a layer takes the results of two tasks of the layer before.

The sides run the work as their users write it:

- **plain Ray**: ``ray.remote`` functions; no-op: ``ray.get([noop.remote() ...])``; layered:
  each task gets its parents' ``ObjectRef``s as arguments (Ray resolves them), then
  ``ray.get`` of the last layer.
- **conveyor**: ``conveyor.run(graph, executor="ray")`` of a ``conveyor.Graph`` of the same
  functions (layered: ``TaskRef`` arguments), defaults otherwise (in-memory store, in flight =
  the cluster's CPUs x 4).

Setup, the same for both: one Ray head started by this script (``ray start --head --block
--num-cpus --cpus``, outside every timed window); each measured run is a fresh driver process
that connects (``ray.init`` with the same ``runtime_env``) and warms the workers up with
``--cpus x 2`` no-op tasks, untimed. The timed window is from just before the first task is
submitted (conveyor: before ``conveyor.run``, so building and submitting the graph and every
store write count) to the moment every result is back. Runs alternate A B A B (``--reps``
each, default 3); the median of each side is reported, with the ratio conveyor/plain
(target <= 1.5x) and the load average. Measure under ``flock /tmp/bench.lock``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
TARGET = 1.5


# -- one measured run, in its own driver process -----------------------------------------------
def measure(side: str, workload: str, address: str, args: argparse.Namespace) -> float:
    import ray
    from ray_work import noop, work

    from conveyor.runtime.rayexec import worker_pythonpath

    ray.init(address=address, runtime_env={"env_vars": {"PYTHONPATH": worker_pythonpath()}},
             logging_level="warning", log_to_driver=False)  # fmt: skip
    warm = ray.remote(noop)
    ray.get([warm.remote() for _ in range(args.cpus * 2)])  # workers up, untimed
    sleep_s = args.sleep_ms / 1000
    if side == "plain":
        remote_noop, remote_work = ray.remote(noop), ray.remote(work)
        t0 = time.perf_counter()
        if workload == "noop":
            ray.get([remote_noop.remote() for _ in range(args.noop_tasks)])
        else:
            layer = [remote_work.remote(sleep_s) for _ in range(args.width)]
            for _ in range(args.layers - 1):
                w = args.width
                layer = [remote_work.remote(sleep_s, layer[i], layer[(i + 1) % w])
                         for i in range(w)]  # fmt: skip
            ray.get(layer)
        seconds = time.perf_counter() - t0
    else:
        import conveyor

        t0 = time.perf_counter()
        g = conveyor.Graph()
        if workload == "noop":
            for _ in range(args.noop_tasks):
                g.add(noop)
            n = args.noop_tasks
        else:
            prev = [g.add(work, sleep_s) for _ in range(args.width)]
            for _ in range(args.layers - 1):
                w = args.width
                prev = [g.add(work, sleep_s, prev[i], prev[(i + 1) % w]) for i in range(w)]
            n = args.layers * args.width
        result = conveyor.run(g, executor="ray")
        seconds = time.perf_counter() - t0
        if result.counts.get("done") != n:
            raise SystemExit(f"conveyor: {result.counts} of {n}")
    ray.shutdown()
    return seconds


# -- the cluster and the alternation ----------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_head(cpus: int, temp: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    log_path = Path(temp) / "head.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["ray", "start", "--head", "--block", f"--num-cpus={cpus}", f"--port={port}",
             "--node-ip-address=127.0.0.1", "--include-dashboard=false",
             "--disable-usage-stats", f"--temp-dir={temp}",
             f"--ray-client-server-port={free_port()}",
             f"--dashboard-agent-listen-port={free_port()}"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "RAY_AUTH_MODE": "disabled"},  # the drivers: a plain ray.init
        )  # fmt: skip
    deadline = time.monotonic() + 120
    while "block forever" not in log_path.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"ray start failed: {log_path.read_text()[-2000:]}")
        time.sleep(0.2)
    return proc, f"127.0.0.1:{port}"


def stop_head(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL to the head's process group: the measurements are over, nothing is kept (``ray
    start --block`` takes ~15 s to end on SIGTERM)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def one_run(side: str, workload: str, address: str, argv: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(HERE)])}
    out = subprocess.run(
        [sys.executable, __file__, "--measure", side, workload, address, *argv],
        env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"{side} {workload} failed: {out.stderr[-3000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--noop-tasks", type=int, default=10_000)
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--width", type=int, default=100)
    ap.add_argument("--sleep-ms", type=float, default=10.0)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workloads", default="noop,layered")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--measure", nargs=3, metavar=("SIDE", "WORKLOAD", "ADDRESS"))
    args = ap.parse_args()
    if args.measure:
        side, workload, address = args.measure
        print(measure(side, workload, address, args))
        return
    passed = [
        f"--noop-tasks={args.noop_tasks}", f"--layers={args.layers}", f"--width={args.width}",
        f"--sleep-ms={args.sleep_ms}", f"--cpus={args.cpus}",
    ]  # fmt: skip
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cvb", dir="/tmp") as temp:
        head, address = start_head(args.cpus, temp)
        try:
            for workload in args.workloads.split(","):
                times: dict[str, list[float]] = {"plain": [], "conveyor": []}
                load = os.getloadavg()[0]
                for _ in range(args.reps):
                    for side in ("plain", "conveyor"):  # A B A B
                        times[side].append(one_run(side, workload, address, passed))
                plain, conv = (statistics.median(times[s]) for s in ("plain", "conveyor"))
                tasks = args.noop_tasks if workload == "noop" else args.layers * args.width
                rows.append({
                    "workload": workload, "tasks": tasks, "plain_s": plain, "conveyor_s": conv,
                    "ratio": conv / plain, "runs": times, "load": [load, os.getloadavg()[0]],
                })  # fmt: skip
        finally:
            stop_head(head)
    print(f"Ray {args.cpus} CPUs, median of {args.reps} (A B A B)")
    print("| workload | tasks | plain Ray s | conveyor s | conveyor/plain | load before/after |")
    print("|---|---:|---:|---:|---:|---|")
    for r in rows:
        verdict = "PASS" if r["ratio"] <= TARGET else "FAIL"
        print(f"| {r['workload']} | {r['tasks']:,} | {r['plain_s']:.2f} | {r['conveyor_s']:.2f} "
              f"| {r['ratio']:.2f}x {verdict} (<= {TARGET}x) | {r['load'][0]:.2f} / "
              f"{r['load'][1]:.2f} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
