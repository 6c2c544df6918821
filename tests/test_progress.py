"""The plain progress line (``conveyor.progress``): its total follows tasks that join at run
time, it never shows a negative ETA, its rate counts only what this run finished, and a run's
end prints one final line."""

from __future__ import annotations

import io

from conveyor.progress import PlainProgress, line


def counts(done: int = 0, running: int = 0, ready: int = 0) -> dict[str, int]:
    return {"done": done, "running": running, "ready": ready}


def test_a_child_joining_after_the_last_line_is_in_the_final_total() -> None:
    out = io.StringIO()
    p = PlainProgress(9, out, every=3600.0)  # no periodic line in this test
    p.update(counts(done=9, running=1), total=10)  # a child joined: throttled, not printed
    p.close(counts(done=10), total=10)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, lines  # the run's end prints one line
    assert lines[0].startswith("[conveyor] 10/10 finished"), lines
    assert lines[0].endswith("ETA 0s"), lines


def test_the_line_never_counts_more_finished_than_total_nor_a_negative_eta() -> None:
    text = line(counts(done=10), 9, 2.0)
    assert "10/10 finished" in text and "ETA 0s" in text and "-" not in text, text


def test_the_rate_counts_only_what_this_run_finished() -> None:
    rerun = line(counts(done=100), 100, 0.5, already=100)  # everything was done before
    assert "0 tasks/s" in rerun and "ETA 0s" in rerun, rerun
    resumed = line(counts(done=60, ready=40), 100, 10.0, already=50)
    assert "1 tasks/s" in resumed and "ETA 40s" in resumed, resumed
