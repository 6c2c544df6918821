"""``build`` holds nothing per row of the table once a row group is written (memory bounded by
the row groups in flight), and its summary still counts every written group's drops, those of a
resumed build's groups on disk included."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

from conveyor.errors import DropRow
from conveyor.table.build import build
from conveyor.table.samplers import category
from conveyor.table.spec import Table


def _table(drops: bool = True) -> Table:
    """Rows whose index is a multiple of 7 are dropped by ``b`` (unless ``drops`` is false)."""
    table = Table("mem", row_group_size=500, seed=1)
    table.sampler("topic", category({"x": 1, "y": 1}))

    def a(topic: str) -> int:
        return 1

    def b(a: int, row_index: int) -> int:
        if drops and row_index % 7 == 0:
            raise DropRow("sevens")
        return a + 1

    def e(b: list[int]) -> list[int]:
        return b

    table.add(a, executor="inline")
    table.add(b, executor="inline")
    table.add(e, strategy="full_column", executor="inline")
    return table


def _traced_peak(rows: int, out: Path) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        summary = build(_table(drops=False), rows, out, format="jsonl")
        assert summary.complete and summary.rows_written == rows
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_build_memory_does_not_grow_with_the_table(tmp_path: Path) -> None:
    # no drops, so no last row group to trim (trimming reads the output directory back)
    build(_table(drops=False), 500, tmp_path / "warm", format="jsonl")  # imports, caches
    small = _traced_peak(2_000, tmp_path / "small")
    big = _traced_peak(20_000, tmp_path / "big")
    # 18,000 more rows: the row lists of the written groups would add ~36 bytes a row (650 KB)
    assert big - small < 100_000, (small, big)


def test_summary_counts_the_drops_of_every_group_written_and_resumed(tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = build(_table(), 3_000, out, format="jsonl")
    assert first.complete and first.rows_written == 3_000
    dropped = first.dropped["b"]["sevens"]
    # rows 0..N-1 where N rows are kept: one in 7 of the rows generated is dropped
    assert dropped == len([r for r in range(3_000 + dropped) if r % 7 == 0]) > 0
    again = build(_table(), 3_000, out, format="jsonl")  # every group on disk: a resume
    assert again.row_groups_resumed == again.row_groups == first.row_groups
    assert again.dropped == first.dropped
