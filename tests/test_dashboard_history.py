"""The dashboard's pure parts: folding the audit trail into series and spans, packing spans into
worker slots, 429s per minute, what is never shown, and the SVG it draws."""

from __future__ import annotations

from typing import Any

from conveyor.dashboard import redact, svg
from conveyor.dashboard.history import RunHistory, bin_width
from conveyor.dashboard.panels import per_minute
from conveyor.dashboard.timeline import lanes

T = 1_000_000.0


def ev(ts: float, event: str, task: str, worker: str = "w1", **extra: Any) -> dict[str, Any]:
    return {"ts": T + ts, "event": event, "task": task, "worker": worker, **extra}


def test_history_counts_done_per_second_and_running_per_group() -> None:
    h = RunHistory()
    h.add(
        [ev(0.1, "task_started", "a"), ev(0.2, "task_started", "b"),
         ev(0.9, "task_finished", "a"), ev(1.5, "task_failed", "b", error="boom"),
         ev(2.1, "task_started", "c"), ev(2.4, "task_finished", "c")],
        {"a": "x", "b": "y", "c": "x"},
    )  # fmt: skip
    assert h.done_per_s == {int(T): 1, int(T) + 2: 1}
    assert h.failed_per_s == {int(T) + 1: 1}
    assert h.done_over_time() == [(float(int(T)), 1.0), (float(int(T) + 2), 2.0)]
    running = h.group_running()
    # in the first second one task of x and one of y ran at once
    assert running["x"][0] == (float(int(T)), 1.0)
    assert running["y"][0] == (float(int(T)), 1.0)
    assert h.running == {"x": 0, "y": 0}
    outcomes = {s.task: s.outcome for s in h.spans}
    assert outcomes == {"a": "done", "b": "failed", "c": "done"}
    assert [s.group for s in h.spans] == ["x", "y", "x"]


def test_history_keeps_running_spans_and_trims_old_ones() -> None:
    h = RunHistory(window_s=10.0)
    h.add([ev(0, "task_started", "old"), ev(1, "task_finished", "old"),
           ev(5, "task_started", "long")], {})  # fmt: skip
    h.add([ev(30, "task_started", "new"), ev(31, "task_finished", "new")], {})
    assert [s.task for s in h.spans] == ["new"]  # "old" ended before the window
    recent = h.recent_spans(T + 31)
    assert [s.task for s in recent] == ["long", "new"]  # a running span stays
    assert recent[0].end is None


def test_history_throughput_bins_include_empty_ones() -> None:
    h = RunHistory()
    h.add([ev(0, "task_started", "a"), ev(0.5, "task_finished", "a"),
           ev(4.5, "task_started", "b"), ev(4.6, "task_finished", "b")], {})  # fmt: skip
    base = float(int(T) // 2 * 2)
    assert h.throughput(2) == [(base, 0.5), (base + 2, 0.0), (base + 4, 0.5)]
    assert bin_width(100) == 1 and bin_width(1000) == 10 and bin_width(86_400) == 900


def test_lanes_pack_each_worker_into_its_slots() -> None:
    h = RunHistory()
    h.add([ev(0, "task_started", "a"), ev(0, "task_started", "b"),
           ev(1, "task_finished", "a"), ev(1, "task_started", "c"),
           ev(0.5, "task_started", "d", worker="w2"),
           ev(2, "task_finished", "b"), ev(2, "task_finished", "c")], {})  # fmt: skip
    got = lanes(h.recent_spans(T + 3), T + 3)
    assert [(label, [b[0] for b in bars]) for label, bars in got] == [
        ("w1 #1", ["a", "c"]),  # c reuses the slot a freed
        ("w1 #2", ["b"]),
        ("w2 #1", ["d"]),  # still running: drawn up to now
    ]
    assert got[2][1][0][3] == T + 3


def test_per_minute_is_the_trailing_minutes_rate() -> None:
    pts = [(0.0, 0.0), (30.0, 6.0), (60.0, 12.0), (120.0, 12.0)]
    assert per_minute(pts) == [(0.0, 0.0), (30.0, 12.0), (60.0, 12.0), (120.0, 0.0)]


def test_redact_hides_env_values_and_credentials() -> None:
    spec = {
        "fn": "m:f", "env": {"OPENAI_API_KEY": "sk-live-abcdef123456", "MODE": "fast"},
        "kwargs": {"api_key": "hunter2", "prompt": "use Bearer abcdefghijkl please",
                   "url": "postgresql://me:pw123@db/x", "nested": {"token": "t0k3n"}},
        "args": ["sk-proj-ABCDEFGH12345678", 3],
    }  # fmt: skip
    shown = redact.spec(spec)
    text = repr(shown)
    for secret in ("sk-live-abcdef123456", "fast", "hunter2", "abcdefghijkl", "pw123",
                   "t0k3n", "sk-proj-ABCDEFGH12345678"):  # fmt: skip
        assert secret not in text, secret
    assert shown["env"] == {"OPENAI_API_KEY": redact.HIDDEN, "MODE": redact.HIDDEN}
    assert shown["fn"] == "m:f" and shown["args"][1] == 3


def test_svg_charts_draw_points_and_escape_names() -> None:
    out = svg.line_chart({"<g>": [(T, 1.0), (T + 10, 3.0)]}, title="t & u", dashed={"<g>": 2})
    assert out.startswith("<svg") and out.endswith("</svg>")
    assert "&lt;g&gt;" in out and "<g>" not in out and "t &amp; u" in out
    assert "<polyline" in out and "stroke-dasharray" in out
    assert "no data yet" in svg.line_chart({}, title="empty")
    bar = svg.state_bar({"done": 3, "ready": 1, "failed": 0})
    assert bar.count("<rect") == 2 and "done: 3" in bar
    g = svg.gantt([("w #1", [("a/b c", "x", T, T + 1, "done")])], t0=T, t1=T + 2,
                  palette={"x": "#123456"})  # fmt: skip
    assert 'href="task/a%2Fb%20c"' in g and "#123456" in g


def test_lanes_share_a_slot_at_one_instant_and_keep_to_the_workers_slots() -> None:
    h = RunHistory()
    # a claim batch of no-ops: each starts and ends at the same instant
    h.add([e for t in ("a", "b", "c") for e in (ev(1, "task_started", t),
                                               ev(1, "task_finished", t))], {})  # fmt: skip
    assert [len(bars) for _, bars in lanes(h.recent_spans(T + 2), T + 2)] == [3]
    h = RunHistory()
    h.add([ev(0, "task_started", t) for t in "abc"], {})  # three at once on a 2-slot worker
    got = lanes(h.recent_spans(T + 1), T + 1, {"w1": 2})
    assert [label for label, _ in got] == ["w1 #1", "w1 #2"]
    assert sum(len(bars) for _, bars in got) == 3


def test_endpoint_panel_draws_limits_and_429s_per_minute() -> None:
    from collections import deque

    from conveyor.dashboard.panels import endpoints
    from conveyor.dashboard.sampler import Readings

    samples: deque[tuple[float, dict[str, dict[str, Any]]]] = deque()
    for i in range(7):  # a 429 every 10 s: 6 per minute
        st = {"limit": 8 + i, "in_flight": 4, "waiting": 2, "rate_limited": i}
        samples.append((T + 10 * i, {"openai/gpt/api.x": st}))
    now_eps = {"openai/gpt/api.x": {"limit": 14, "in_flight": 4, "waiting": 2, "rate_limited": 6,
                                    "workers": 2, "cooldown_left": 0.0}}  # fmt: skip
    r = Readings(T + 60, {"endpoints": now_eps}, [], RunHistory(), samples)
    html = endpoints(r)
    assert "<td>openai/gpt/api.x</td><td class=n>14</td>" in html
    assert "<td class=n>6.0</td>" in html  # 429s/min over the trailing minute
    assert html.count("<svg") == 3 and "429s per minute" in html
    assert "no task calls an endpoint" in endpoints(Readings(T, {}, [], RunHistory(), deque()))
