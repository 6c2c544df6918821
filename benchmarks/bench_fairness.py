"""Fair-share benchmark: weighted shares under saturation, and the heavy-root scenario.

    python benchmarks/bench_fairness.py            # full sizes (~15 s)
    python benchmarks/bench_fairness.py --quick    # small sizes (~5 s)
    python benchmarks/bench_fairness.py --json out.json

1. Weighted shares. Groups a, b, c with weights 1:2:3, each with a backlog of 10 ms tasks, on
   12 slots. Measured twice:
   - simulated: the pure ``AdmissionQueue`` driven by a discrete-event loop on a simulated clock
     (10,000 tasks per group, durations 10 ms +-20 % from a seeded RNG), so it runs in seconds;
   - real: ``conveyor.run`` with 12 threads running ``time.sleep(0.01)`` tasks (600 per group).
   Reported over the saturated window (after a warm-up of 5 % of it, until the first group's
   backlog runs dry): each group's time-weighted mean running count, and the largest deviation
   of the instantaneous running count from the 2/4/6 target (target: within 1; for the real
   engine, states shorter than 1 ms -- a batch of finishes not yet refilled -- are not counted).
2. Heavy root (one big job in front of a small one). Group "heavy" floods the queue first with
   tasks of one root; group "light" submits its tasks right after. p95 of the light tasks' wait
   (start - submit) with fair share (equal weights) against a FIFO baseline (one group: a single
   depth-first heap, no fair share). Target: fair p95 <= 40 % of FIFO. Simulated and real.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import statistics
import threading
import time
from collections.abc import Sequence
from typing import Any

import conveyor
from conveyor.core.admission import AdmissionQueue, GroupInfo, Offer, Shape

SLOTS = 12
WEIGHTS = {"a": 1.0, "b": 2.0, "c": 3.0}
TARGET = {g: SLOTS * w / sum(WEIGHTS.values()) for g, w in WEIGHTS.items()}  # 2 / 4 / 6
TASK_S = 0.010
WARMUP = 0.05  # fraction of the saturated window ignored at its start
# A real engine drains a batch of finishes before it refills the slots, so for microseconds a
# group runs fewer than its share; "instant" deviations count states lasting >= 10 % of a task.
MIN_STATE_S = 0.001


# -- shares from (start, end, group) intervals -----------------------------------------------------
def share_report(
    intervals: Sequence[tuple[float, float, str]], *, min_state_s: float = 0.0
) -> dict[str, Any]:
    """Time-weighted running counts over the saturated window, and the worst deviation from the
    target among states that lasted at least ``min_state_s``. The window ends when the first
    group starts its last task."""
    last_start = {g: max(s for s, _e, gg in intervals if gg == g) for g in WEIGHTS}
    t0 = min(s for s, _e, _g in intervals)
    t_end = min(last_start.values())
    t_begin = t0 + WARMUP * (t_end - t0)
    events = sorted(
        [(s, 1, g) for s, _e, g in intervals] + [(e, -1, g) for _s, e, g in intervals],
        key=lambda x: (x[0], x[1]),  # ends before starts at the same instant
    )
    running = dict.fromkeys(WEIGHTS, 0)
    area = dict.fromkeys(WEIGHTS, 0.0)
    worst = 0.0
    prev = t0
    for t, d, g in events:
        if t > prev:
            lo, hi = max(prev, t_begin), min(t, t_end)
            if hi > lo:
                for h in WEIGHTS:
                    area[h] += running[h] * (hi - lo)
                    if hi - lo >= min_state_s:
                        worst = max(worst, abs(running[h] - TARGET[h]))
            prev = t
        running[g] += d
    span = t_end - t_begin
    mean = {g: area[g] / span for g in WEIGHTS}
    return {
        "window_s": span,
        "mean_running": mean,
        "mean_deviation": max(abs(mean[g] - TARGET[g]) for g in WEIGHTS),
        "max_instant_deviation": worst,
    }


# -- 1. weighted shares ----------------------------------------------------------------------------
def simulate_shares(per_group: int, seed: int = 1) -> dict[str, Any]:
    """The pure queue on a simulated clock: pick while slots are free, then jump to the next
    finish. Returns the share report plus the cost per decision."""
    rng = random.Random(seed)
    q = AdmissionQueue({g: GroupInfo(w) for g, w in WEIGHTS.items()})
    sid = {g: q.shape_id(Shape(g)) for g in WEIGHTS}
    group_of: list[str] = []
    for g in WEIGHTS:
        for _ in range(per_group):
            i = len(group_of)
            q.push(i, (0, 1, i), sid[g])
            group_of.append(g)
    started_at: list[float] = [0.0] * len(group_of)
    intervals: list[tuple[float, float, str]] = []
    running: list[tuple[float, int]] = []
    now = 0.0
    decisions = 0
    spent = 0.0
    while True:
        while len(running) < SLOTS:
            offer = Offer(SLOTS - len(running), capacity=SLOTS)
            t = time.perf_counter()
            got = q.pick(offer, lambda i: True, now)
            spent += time.perf_counter() - t
            decisions += 1
            if got is None:
                break
            (i,) = got.members
            q.started(got.group)
            started_at[i] = now
            heapq.heappush(running, (now + TASK_S * rng.uniform(0.8, 1.2), i))
        if not running:
            break
        now, i = heapq.heappop(running)
        q.finished(group_of[i])
        intervals.append((started_at[i], now, group_of[i]))
    rep = share_report(intervals)
    rep["us_per_decision"] = spent / decisions * 1e6
    rep["simulated_s"] = now
    return rep


def real_shares(per_group: int) -> dict[str, Any]:
    """``conveyor.run`` on 12 threads; running counts as the scheduler sees them, from the
    store's ``task_started``/``task_finished`` events (engine clock)."""
    seen: dict[str, float] = {}
    intervals: list[tuple[float, float, str]] = []

    def emit(ev: dict[str, Any]) -> None:  # called on the engine thread
        kind, tid = ev.get("event"), ev.get("task")
        if kind == "task_started":
            seen[tid] = ev["ts"]
        elif kind == "task_finished" and tid in seen:
            intervals.append((seen.pop(tid), ev["ts"], tid[0]))

    def work() -> None:
        time.sleep(TASK_S)  # the workload: a 10 ms task

    g = conveyor.Graph("shares", groups={k: {"weight": w} for k, w in WEIGHTS.items()})
    for k in WEIGHTS:
        for n in range(per_group):
            g.add(work, id=f"{k}{n}", group=k)
    t = time.perf_counter()
    res = conveyor.run(g, workers=SLOTS, emit=emit)
    wall = time.perf_counter() - t
    assert res.ok
    rep = share_report(intervals, min_state_s=MIN_STATE_S)
    rep["wall_s"] = wall
    return rep


# -- 2. heavy root ---------------------------------------------------------------------------------
def p95(xs: Sequence[float]) -> float:
    return statistics.quantiles(xs, n=20)[-1] if len(xs) > 1 else xs[0]


def simulate_heavy_root(heavy: int, light: int, *, fair: bool, seed: int = 2) -> list[float]:
    """Waits of the light tasks: heavy's tasks are queued first (one root), light's right after."""
    rng = random.Random(seed)
    groups = {"heavy": GroupInfo(1.0), "light": GroupInfo(1.0)} if fair else None
    q = AdmissionQueue(groups)
    shape = {g: q.shape_id(Shape(g if fair else "default")) for g in ("heavy", "light")}
    group_of = ["heavy"] * heavy + ["light"] * light
    for i, g in enumerate(group_of):
        root = 1 if g == "heavy" else 2
        q.push(i, (-1, root, i), shape[g])
    waits: list[float] = []
    running: list[tuple[float, int]] = []
    now = 0.0
    while True:
        while len(running) < SLOTS:
            got = q.pick(Offer(SLOTS - len(running), capacity=SLOTS), lambda i: True, now)
            if got is None:
                break
            (i,) = got.members
            q.started(got.group)
            if group_of[i] == "light":
                waits.append(now)
            heapq.heappush(running, (now + TASK_S * rng.uniform(0.8, 1.2), i))
        if not running:
            return waits
        now, i = heapq.heappop(running)
        q.finished(q.shapes[shape[group_of[i]]].group)


def real_heavy_root(heavy: int, light: int, *, fair: bool) -> list[float]:
    """The same through ``conveyor.run``: a heavy root fanning out, then light's tasks."""
    waits: list[float] = []
    lock = threading.Lock()
    t0 = [0.0]

    def heavy_task() -> None:
        time.sleep(TASK_S)

    def light_task() -> None:
        with lock:
            waits.append(time.perf_counter() - t0[0])
        time.sleep(TASK_S)

    groups = {"heavy": {}, "light": {}} if fair else {}
    g = conveyor.Graph("heavy-root", groups=groups)
    root = g.add(None, id="root", group="heavy" if fair else "default")
    for n in range(heavy):
        g.add(heavy_task, id=f"h{n}", deps=[root], group="heavy" if fair else "default")
    for n in range(light):
        g.add(light_task, id=f"l{n}", group="light" if fair else "default")
    t0[0] = time.perf_counter()
    res = conveyor.run(g, workers=SLOTS)
    assert res.ok
    return waits


# -- main ------------------------------------------------------------------------------------------
def fmt_shares(rep: dict[str, Any]) -> str:
    mean = rep["mean_running"]
    return (
        f"a/b/c = {mean['a']:.2f} / {mean['b']:.2f} / {mean['c']:.2f} slots "
        f"(target 2/4/6; mean off by {rep['mean_deviation']:.2f}, "
        f"worst instant {rep['max_instant_deviation']:.2f})"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke test)")
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args(argv)
    sim_n, real_n = (1_000, 150) if args.quick else (10_000, 600)
    heavy_sim, light_sim = (2_000, 200) if args.quick else (20_000, 2_000)
    heavy_real, light_real = (300, 60) if args.quick else (1_200, 240)
    out: dict[str, Any] = {"slots": SLOTS, "task_s": TASK_S, "quick": args.quick}

    print(f"1. weighted fair share, weights 1:2:3, {SLOTS} slots, {TASK_S * 1e3:.0f} ms tasks")
    sim = simulate_shares(sim_n)
    print(f"   simulated ({sim_n:,} tasks/group, {sim['window_s']:.1f} s saturated): "
          + fmt_shares(sim))  # fmt: skip
    print(f"   admission cost: {sim['us_per_decision']:.1f} us per decision (3 groups)")
    real = real_shares(real_n)
    print(f"   real engine ({real_n} tasks/group, {real['wall_s']:.2f} s wall): "
          + fmt_shares(real))  # fmt: skip
    out["shares"] = {"simulated": sim, "real": real}

    print("2. heavy root: 'heavy' floods the queue first, 'light' submits right after")
    rows = {}
    for label, fn, sizes in (
        ("simulated", simulate_heavy_root, (heavy_sim, light_sim)),
        ("real engine", real_heavy_root, (heavy_real, light_real)),
    ):
        # one small unmeasured run of each first, so neither measured side pays first-call costs
        fn(SLOTS, SLOTS, fair=False)
        fn(SLOTS, SLOTS, fair=True)
        fifo = p95(fn(*sizes, fair=False))
        fair = p95(fn(*sizes, fair=True))
        ratio = fair / fifo if fifo else float("nan")
        rows[label] = {"heavy": sizes[0], "light": sizes[1], "fifo_p95_s": fifo,
                       "fair_p95_s": fair, "ratio": ratio}  # fmt: skip
        verdict = "ok" if ratio <= 0.40 else "MISSED"
        print(
            f"   {label} ({sizes[0]:,} heavy + {sizes[1]:,} light): light p95 wait "
            f"FIFO {fifo:.3f} s, fair {fair:.3f} s, ratio {ratio:.1%} (target <= 40%: {verdict})"
        )
    out["heavy_root"] = rows
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
