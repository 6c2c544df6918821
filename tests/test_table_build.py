"""The table builder end to end: ``build()`` (real files in a temp directory, read back with
``load``) and ``TableStore`` on the real engine: generators sync and async, dependencies,
side-effect columns, drops, ``full_column`` batches, ``--records N``, reproducibility, errors and
retries through the endpoint limiter, early stop, late results, bounded memory."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conveyor.errors import DropRow, UsageError
from conveyor.runtime.context import current
from conveyor.runtime.engine import Engine
from conveyor.table import output
from conveyor.table.build import BuildStatus, BuildSummary, build
from conveyor.table.samplers import category, integers, uniform
from conveyor.table.spec import Table
from conveyor.table.store import GroupDone, TableStore

EP = "example/model/test"


class Status(Exception):
    """An SDK-like HTTP error: ``status_code`` is how conveyor classifies it."""

    def __init__(self, code: int) -> None:
        super().__init__(f"HTTP {code}")
        self.status_code = code


class Calls:
    """Generator calls counted per column (and per column and row), from any thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_column: Counter[str] = Counter()
        self.by_cell: Counter[tuple[str, int]] = Counter()

    def __call__(self, column: str, row: int = -1) -> int:
        """Count one call; returns how many calls this cell has had (this one included)."""
        with self.lock:
            self.by_column[column] += 1
            self.by_cell[(column, row)] += 1
            return self.by_cell[(column, row)]


def jsonl(table: Table, records: int, out: Path, **options: Any) -> BuildSummary:
    return build(table, records, out, format="jsonl", **options)


def metas(out: Path) -> dict[int, output.GroupMeta]:
    return output.scan(out)


def dropped_rule(i: int) -> bool:
    """Rows the generators below drop, decided by the row alone."""
    return i % 3 == 0 or i % 7 == 2


def reference_table(calls: Calls | None = None, **kw: Any) -> Table:
    """A sampler, a sync and an async cell column (one dropping rows by DropRow, one by
    keep_when), a column with a side effect, a full_column batch. Every value is a function
    of the row (sampler and ``rng`` seeded per row), so any layout yields the same rows."""
    calls = calls or Calls()
    t = Table("ref", seed=11, **kw)
    t.sampler("topic", category({"cats": 3, "dogs": 1}))
    t.sampler("n", integers(1, 6))

    @t.column
    def question(topic: str, n: int, rng: Any, row_index: int) -> str:
        calls("question", row_index)
        if row_index % 3 == 0:
            raise DropRow("multiple of three")
        return f"{topic}-{n}-{rng.randint(0, 999)}"

    @t.column(keep_when=lambda v: v != "bad", side_effects=["answer__len"])
    async def answer(question: str, row_index: int) -> dict[str, Any]:
        calls("answer", row_index)
        await asyncio.sleep(0)
        value = "bad" if row_index % 7 == 2 else question.upper()
        return {"answer": value, "answer__len": len(value)}

    @t.column(strategy="full_column", deps={"a": "answer"})
    def rank(a: list[str], answer__len: list[int], row_indices: list[int]) -> list[int]:
        calls("rank")
        assert len(a) == len(answer__len) == len(row_indices)
        return [i * 1000 + n for i, n in zip(row_indices, answer__len, strict=True)]

    return t


# -- what a build writes --------------------------------------------------------------------


def test_sync_async_deps_side_effects_drops(tmp_path: Path) -> None:
    calls = Calls()
    t = reference_table(calls)
    s = jsonl(t, 20, tmp_path / "o", row_group_size=8, in_flight=2, workers=4)
    rows = output.load(tmp_path / "o")
    want = [i for i in range(1000) if not dropped_rule(i)][:20]
    assert len(rows) == 20 == s.rows_written and s.complete and s.exit_code == 0
    assert list(rows[0]) == ["topic", "n", "question", "answer", "answer__len", "rank"]
    for r, i in zip(rows, want, strict=True):
        assert r["topic"] in ("cats", "dogs") and 1 <= r["n"] <= 6
        assert r["question"].startswith(f"{r['topic']}-{r['n']}-")
        assert r["answer"] == r["question"].upper() and r["answer__len"] == len(r["answer"])
        assert r["rank"] == i * 1000 + r["answer__len"]  # the global row index, kept rows only
    # every row group written: kept rows + dropped rows = its rows; drops counted by reason
    for meta in metas(tmp_path / "o").values():
        if not meta.trimmed:
            n = sum(sum(r.values()) for r in meta.dropped.values())
            assert meta.kept + n == meta.rows
    # a dropped row's downstream generators were never called: answer ran on question's rows
    qrows = {i for (c, i) in calls.by_cell if c == "question" and i % 3}
    assert {i for (c, i) in calls.by_cell if c == "answer"} == qrows
    assert all(n == 1 for (c, _), n in calls.by_cell.items() if c != "rank")
    total = sum(m.rows for m in metas(tmp_path / "o").values())
    assert s.dropped == {
        "question": {"multiple of three": sum(1 for i in range(total) if i % 3 == 0)},
        "answer": {"keep_when": sum(1 for i in range(total) if i % 3 and i % 7 == 2)},
    }  # the trimmed group's drops are counted over all its rows
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["complete"] is True and manifest["rows_written"] == 20


def test_records_means_rows_written_the_same_whatever_the_layout(tmp_path: Path) -> None:
    """N kept rows are written when rows drop: more row groups, the last one trimmed; the
    rows are the first N kept ones in row order whatever the workers and groups in flight."""
    want = [i for i in range(1000) if not dropped_rule(i)][:23]
    outs = []
    for k, (workers, in_flight, size) in enumerate([(1, 1, 8), (8, 3, 8), (3, 2, 5), (16, 5, 64)]):
        out = tmp_path / f"o{k}"
        calls = Calls()
        s = jsonl(reference_table(calls), 23, out, workers=workers, in_flight=in_flight,
                  row_group_size=size)  # fmt: skip
        assert s.rows_written == 23 and s.complete
        rows = output.load(out)
        assert [r["rank"] // 1000 for r in rows] == want
        kept = sorted(r for m in metas(out).values() for r in m.kept_rows)
        assert kept == want
        # no row group made in vain: each one opened was needed, and is on disk
        assert calls.by_column["question"] == sum(m.rows for m in metas(out).values())
        outs.append(rows)
    assert all(o == outs[0] for o in outs[1:])


def test_parquet_written_and_read_back(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    s = build(reference_table(), 10, tmp_path / "p", format="parquet", row_group_size=4)
    assert s.format == "parquet"
    assert sorted(p.name for p in (tmp_path / "p").glob("*.parquet"))
    rows = output.load(tmp_path / "p")
    jsonl(reference_table(), 10, tmp_path / "j", row_group_size=4)
    assert rows == output.load(tmp_path / "j")
    assert output.load(tmp_path / "p", arrow=True).num_rows == 10


def test_rng_and_samplers_reproducible(tmp_path: Path) -> None:
    def table(seed: int) -> Table:
        t = Table("r", seed=seed)
        t.sampler("u", uniform(0, 1))
        t.sampler("c", category(["x", "y", "z"]))

        @t.column
        def noisy(u: float, rng: Any) -> float:
            return u + rng.random()

        @t.column(strategy="full_column")
        def shuffled(c: list[str], rng: Any) -> list[str]:
            out = list(c)
            rng.shuffle(out)
            return out

        return t

    jsonl(table(1), 30, tmp_path / "a", row_group_size=7, workers=8)
    jsonl(table(1), 30, tmp_path / "b", row_group_size=7, workers=1, in_flight=1)
    jsonl(table(2), 30, tmp_path / "c", row_group_size=7)
    a, b, c = (output.load(tmp_path / x) for x in "abc")
    assert a == b
    assert [r["u"] for r in a] != [r["u"] for r in c]
    assert [r["noisy"] for r in a] != [r["noisy"] for r in c]


# -- full_column ----------------------------------------------------------------------------


def test_full_column_sees_only_kept_rows(tmp_path: Path) -> None:
    seen: list[list[int]] = []
    t = Table("fc")

    @t.column
    def x(row_index: int) -> int:
        if row_index % 4 == 1:
            raise DropRow("odd one")
        return row_index

    @t.column(strategy="full_column")
    def total(x: list[int], row_indices: list[int]) -> list[int]:
        seen.append(list(row_indices))
        assert x == row_indices  # the slices are the kept rows' values, in order
        return [sum(x)] * len(x)

    jsonl(t, 12, tmp_path / "o", row_group_size=6)
    assert seen and all(i % 4 != 1 for rows in seen for i in rows)
    for meta in metas(tmp_path / "o").values():
        if not meta.trimmed:
            assert meta.kept_rows in seen


def test_full_column_wrong_count_fails_its_group_and_the_build_goes_on(tmp_path: Path) -> None:
    t = Table("wc", row_group_size=5)
    t.sampler("v", integers(0, 9))

    @t.column(strategy="full_column")
    def emb(v: list[int], row_indices: list[int]) -> list[int]:
        if 7 in row_indices:
            return v[:2]  # the second row group: 2 values for 5 rows
        return v

    @t.column
    def after(emb: int) -> int:
        return emb

    s = jsonl(t, 15, tmp_path / "o", in_flight=2)
    assert s.rows_written == 15 and s.complete
    assert s.errors == {
        "emb: error: wrong number of values": "column 'emb' (full_column) returned 2 values"
        " for 5 rows"
    }
    assert s.dropped == {"emb": {"error: wrong number of values": 5}}
    m = metas(tmp_path / "o")
    assert m[1].kept_rows == [] and m[1].dropped == {"emb": {"error: wrong number of values": 5}}
    assert sorted(m) == [0, 1, 2, 3]  # one more group made up for the five rows
    assert [r["after"] for r in output.load(tmp_path / "o")] == [
        r["v"] for r in output.load(tmp_path / "o")
    ]


# -- errors ---------------------------------------------------------------------------------


def _flaky_table(calls: Calls, error: Callable[[], Exception], fails: int, **col: Any) -> Table:
    """Row 1's first ``fails`` calls raise ``error()``."""
    t = Table("flaky", row_group_size=4)

    @t.column(**col)
    def x(row_index: int) -> int:
        n = calls("x", row_index)
        if row_index == 1 and n <= fails:
            raise error()
        return row_index

    return t


@pytest.mark.parametrize(
    "error", [lambda: Status(503), lambda: Status(429), lambda: ConnectionError("reset")],
    ids=["503", "429", "ConnectionError"],
)  # fmt: skip
@pytest.mark.parametrize("options", [{}, {"timeout_s": 30}], ids=["runs", "one-cell-tasks"])
def test_retryable_error_is_retried_then_succeeds(
    tmp_path: Path, error: Callable[[], Exception], options: dict[str, Any]
) -> None:
    calls = Calls()
    s = jsonl(_flaky_table(calls, error, 1, **options), 4, tmp_path / "o")
    assert calls.by_cell[("x", 1)] == 2
    assert [r["x"] for r in output.load(tmp_path / "o")] == [0, 1, 2, 3]
    assert s.dropped == {} and s.complete


@pytest.mark.parametrize("options", [{}, {"timeout_s": 30}], ids=["runs", "one-cell-tasks"])
def test_exhausted_retries_drop_the_row(tmp_path: Path, options: dict[str, Any]) -> None:
    calls = Calls()
    s = jsonl(_flaky_table(calls, lambda: ConnectionError("reset"), 99, retries=1, **options),
              4, tmp_path / "o")  # fmt: skip
    assert calls.by_cell[("x", 1)] == 2  # the call and one retry
    assert s.dropped == {"x": {"error: ConnectionError": 1}}
    assert s.errors["x: error: ConnectionError"].startswith("ConnectionError: reset")
    assert [r["x"] for r in output.load(tmp_path / "o")] == [0, 2, 3, 4]


@pytest.mark.parametrize("options", [{}, {"timeout_s": 30}], ids=["runs", "one-cell-tasks"])
def test_non_retryable_error_drops_the_row_at_once(tmp_path: Path, options: dict[str, Any]) -> None:
    calls = Calls()
    s = jsonl(_flaky_table(calls, lambda: ValueError("nope"), 99, **options), 4, tmp_path / "o")
    assert calls.by_cell[("x", 1)] == 1
    assert s.dropped == {"x": {"error: ValueError": 1}}
    assert s.errors["x: error: ValueError"].startswith("ValueError: nope")
    assert [r["x"] for r in output.load(tmp_path / "o")] == [0, 2, 3, 4]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_endpoint_429_reaches_the_limiter_before_the_retry(tmp_path: Path, kind: str) -> None:
    seen_by_retry: list[int] = []
    t = Table("ep", row_group_size=3)

    def body(row_index: int) -> int:
        stats = current().limiter.statistics()
        if row_index == 1:
            if not seen_by_retry and stats.get(EP) is not None and not stats[EP].rate_limited:
                seen_by_retry.append(-1)  # first call
                raise Status(429)
            seen_by_retry.append(stats[EP].rate_limited)
        return row_index

    if kind == "sync":
        t.add(body, name="x", endpoint="example/model/test")
    else:

        async def abody(row_index: int) -> int:
            return body(row_index)

        t.add(abody, name="x", endpoint="example/model/test")
    s = jsonl(t, 3, tmp_path / "o")
    assert seen_by_retry == [-1, 1], "the retry ran before the limiter counted the 429"
    assert s.endpoints[EP]["rate_limited"] == 1
    assert s.endpoints[EP]["calls"] == 4
    assert [r["x"] for r in output.load(tmp_path / "o")] == [0, 1, 2]


def test_a_failing_cell_blocks_neither_its_group_nor_newer_ones(tmp_path: Path) -> None:
    """Row 0 keeps failing (retryable) until row group 1 is on disk: the engine keeps
    starting and finishing newer groups meanwhile, and row 0 then drops, its group is
    written too."""
    out = tmp_path / "o"
    t = Table("block", row_group_size=2, in_flight=2)

    @t.column(retries=4)  # ~4 s of backoff at most: group 1 needs a few ms
    async def x(row_index: int) -> int:
        if row_index == 0:
            if not (out / "part-00001.meta.json").exists():
                raise ConnectionError("still down")
            raise ValueError("gave up")
        return row_index

    s = jsonl(t, 6, out)
    assert s.dropped == {"x": {"error: ValueError": 1}}
    assert [r["x"] for r in output.load(out)] == [1, 2, 3, 4, 5, 6]


def test_early_stop_writes_complete_groups_and_exits_1(tmp_path: Path) -> None:
    calls = Calls()
    t = Table("es", row_group_size=10, in_flight=2, early_stop_window=20)

    @t.column
    def x(row_index: int) -> int:
        calls("x", row_index)
        if row_index % 5:
            raise ValueError("broken")
        return row_index

    s = jsonl(t, 1000, tmp_path / "o")
    assert s.stopped is not None and s.stopped.startswith("early stop:")
    assert s.exit_code == 1 and not s.complete
    assert sum(calls.by_column.values()) < 100
    m = metas(tmp_path / "o")
    assert m, "no complete row group was written"
    for meta in m.values():
        assert meta.kept + sum(meta.dropped.get("x", {}).values()) == meta.rows == 10
    assert (
        s.rows_written == sum(meta.kept for meta in m.values()) == len(output.load(tmp_path / "o"))
    )
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["complete"] is False


# -- the store on the engine ----------------------------------------------------------------


def run_store(table: Table, records: int, on_group: Callable[[GroupDone], None],
              workers: int = 8) -> TableStore:  # fmt: skip
    store = TableStore(table, table.plan(), records=records, on_group=on_group)
    Engine(store, workers=workers).run()
    return store


def test_late_result_for_a_dropped_row_is_discarded() -> None:
    """Row 0's ``slow`` cell is still running when ``dropper`` drops the row: its result
    comes back late (its row group still open), is refused (``stale``) and changes nothing."""
    holder: list[TableStore] = []
    t = Table("late", row_group_size=3)

    @t.column
    def dropper(row_index: int) -> int:
        if row_index == 0:
            raise DropRow("gone")
        return row_index

    async def until(what: Callable[[TableStore], object]) -> None:
        for _ in range(2000):
            if holder and what(holder[0]):
                return
            await asyncio.sleep(0.005)
        raise AssertionError("waited 10 s in vain")

    @t.column
    async def slow(row_index: int) -> int:
        if row_index == 0:  # comes back after its row was dropped
            await until(lambda s: s.dropped["dropper"]["gone"])
        if row_index == 1:  # keeps the row group open until then
            await until(lambda s: s.stale)
        return row_index

    @t.column
    def after(slow: int, dropper: int) -> int:
        assert slow != 0
        return slow

    groups: list[GroupDone] = []
    store = TableStore(t, t.plan(), records=3, on_group=groups.append)
    holder.append(store)
    Engine(store, workers=4).run()
    assert store.stale == 1
    assert [g.kept_rows for g in groups] == [[1, 2], [3, 4, 5]]
    assert groups[0].columns["slow"] == [1, 2] and groups[0].columns["after"] == [1, 2]


def test_open_row_groups_never_exceed_in_flight(tmp_path: Path) -> None:
    peak = [0]
    holder: list[TableStore] = []
    t = Table("mem", row_group_size=4, in_flight=2)

    @t.column
    def x(row_index: int) -> int:
        if holder:
            peak[0] = max(peak[0], len(holder[0].open_groups()), len(holder[0].frontier.groups))
        if row_index % 5 == 0:
            raise DropRow("fifth")
        return row_index

    written: list[int] = []

    def on_group(g: GroupDone) -> None:
        assert len(holder[0].frontier.groups) <= 2
        written.append(g.span.group)

    store = TableStore(t, t.plan(), records=40, on_group=on_group)
    holder.append(store)
    assert len(store.open_groups()) == 2
    Engine(store, workers=16).run()
    assert 1 <= peak[0] <= 2
    assert sorted(written) == list(range(len(written))) and len(written) >= 12
    # and through build(): every status snapshot shows at most in_flight open groups
    statuses: list[BuildStatus] = []
    t2 = Table("mem2", row_group_size=4, in_flight=3)

    @t2.column
    async def y(row_index: int) -> int:
        await asyncio.sleep(0.001)
        return row_index

    s = jsonl(t2, 200, tmp_path / "o", on_status=statuses.append, status_every_s=0)
    assert s.complete and len(statuses) >= 2
    assert max(len(st.row_groups_open) for st in statuses) <= 3
    assert statuses[-1].rows_written == 200 and statuses[-1].columns[0].done == 200


# -- resume, --update, --replace ------------------------------------------------------------


def versioned(calls: Calls, version: int, *, drop_more: bool = False, buggy: bool = False) -> Table:
    """The same table in two versions: only ``b``'s generator differs; ``c`` reads ``b``;
    ``d`` and ``e`` do not. ``buggy``: version 1's ``b`` fails on some rows (version 2 is the
    fix); ``drop_more``: version 2's ``b`` drops some rows."""
    t = Table("v", row_group_size=5, in_flight=2, seed=3)
    t.sampler("topic", category(["x", "y", "z"]))

    @t.column
    def a(topic: str, row_index: int) -> str:
        calls("a", row_index)
        if row_index % 6 == 4:
            raise DropRow("a drops")
        return f"{topic}{row_index}"

    if version == 1:

        @t.column
        def b(a: str, row_index: int) -> str:
            calls("b", row_index)
            if buggy and row_index % 5 == 2:
                raise ValueError("b1 is broken")
            return a + "/b1"

    else:

        @t.column
        def b(a: str, row_index: int) -> str:
            calls("b", row_index)
            if drop_more and row_index % 4 == 1:
                raise DropRow("b2 drops")
            return a + "/b2"

    @t.column(strategy="full_column")
    def c(b: list[str]) -> list[str]:
        calls("c")
        return [v + "/c" for v in b]

    @t.column
    def d(topic: str, rng: Any, row_index: int) -> float:
        calls("d", row_index)
        return rng.random()

    @t.column
    def e(a: str, d: float, row_index: int) -> str:
        calls("e", row_index)
        return f"{a}:{d:.3f}"

    return t


def test_resume_builds_only_the_missing_groups(tmp_path: Path) -> None:
    out = tmp_path / "o"
    first = Calls()
    s1 = jsonl(versioned(first, 1), 17, out)
    before = output.load(out)
    assert s1.rows_written == 17 and len(before) == 17
    # a crash lost row group 1 (and the manifest says the build did not finish)
    for p in out.glob("part-00001.*"):
        p.unlink()
    again = Calls()
    s2 = jsonl(versioned(again, 1), 17, out)
    assert s2.row_groups_resumed == len(metas(out)) - 1 and s2.complete
    assert {i for (_, i) in again.by_cell if i >= 0} == set(range(5, 10))
    assert again.by_column["c"] == 1
    assert output.load(out) == before
    # once more: nothing to do, nothing called
    idle = Calls()
    s3 = jsonl(versioned(idle, 1), 17, out)
    assert not idle.by_column and s3.rows_written == 17 and s3.complete
    assert output.load(out) == before


def test_update_recomputes_only_the_changed_column_and_its_downstream(tmp_path: Path) -> None:
    out = tmp_path / "o"
    jsonl(versioned(Calls(), 1), 17, out)
    before = output.load(out)
    old = metas(out)
    calls = Calls()
    statuses: list[BuildStatus] = []
    s = jsonl(versioned(calls, 2), 17, out, update=True, on_status=statuses.append)
    after = output.load(out)
    # the progress counts only cells to compute: none for the generators that stand
    planned = {c.name: c.planned for c in statuses[-1].columns}
    assert planned["a"] == calls.by_column["a"] and planned["d"] == calls.by_column["d"]
    assert s.complete and s.row_groups_updated == len(old) == len(metas(out))
    # the last group was trimmed (its cut rows are gone): it is built again whole
    (last,) = [g for g, m in old.items() if m.trimmed]
    cut = range(old[last].start, old[last].start + old[last].rows)
    kept_by_a = [i for i in cut if i % 6 != 4]
    assert calls.by_column["b"] == sum(m.kept for g, m in old.items() if g != last) + len(kept_by_a)
    assert calls.by_column["c"] == len(old)
    assert {(c, i) for (c, i) in calls.by_cell if c in "ade"} == {
        *(("a", i) for i in cut),
        *(("d", i) for i in cut),
        *(("e", i) for i in kept_by_a),
    }
    assert len(after) == len(before) == 17
    for was, new in zip(before, after, strict=True):
        for col in ("topic", "a", "d", "e"):
            assert was[col] == new[col]
        assert new["b"] == was["a"] + "/b2" and new["c"] == new["b"] + "/c"
    fresh = _fresh(tmp_path, 2)
    assert after == output.load(fresh)  # as if built with version 2 at once
    assert metas(out) == metas(fresh)  # drops by the columns that stand still counted
    assert s.dropped == {
        "a": {
            "a drops": sum(
                1 for g in old.values() for i in range(g.start, g.start + g.rows) if i % 6 == 4
            )
        }
    }
    # updated to what is on disk: nothing left to do
    idle = Calls()
    jsonl(versioned(idle, 2), 17, out)
    assert not idle.by_column


def _fresh(tmp_path: Path, version: int, **kw: Any) -> Path:
    out = tmp_path / f"fresh{version}"
    s = jsonl(versioned(Calls(), version, **kw), 17, out)
    out.with_suffix(".drops.json").write_text(json.dumps(s.dropped))
    return out


def fresh_drops(out: Path) -> dict[str, dict[str, int]]:
    """The drops the summary of ``_fresh``'s build counted."""
    drops: dict[str, dict[str, int]] = json.loads(out.with_suffix(".drops.json").read_text())
    return drops


def test_update_that_drops_more_rows_still_writes_n_rows(tmp_path: Path) -> None:
    out = tmp_path / "o"
    jsonl(versioned(Calls(), 1), 17, out)
    calls = Calls()
    s = jsonl(versioned(calls, 2, drop_more=True), 17, out, update=True)
    rows = output.load(out)
    assert s.complete and s.rows_written == 17 == len(rows)
    assert all(not r["b"].startswith(("x1/", "y1/", "z1/")) for r in rows)
    assert rows == output.load(_fresh(tmp_path, 2, drop_more=True))


def test_changed_spec_refused_without_update_or_replace(tmp_path: Path) -> None:
    from conveyor.errors import UsageError

    out = tmp_path / "o"
    jsonl(versioned(Calls(), 1), 17, out)
    before = output.load(out)
    calls = Calls()
    with pytest.raises(UsageError) as e:
        jsonl(versioned(calls, 2), 17, out)
    msg = str(e.value)
    assert "changed columns: b, c" in msg and "--update" in msg and "--replace" in msg
    assert "\n" not in msg and not calls.by_column
    assert output.load(out) == before
    # --replace starts over: every column again
    s = jsonl(versioned(calls, 2), 17, out, replace=True)
    assert s.complete and s.row_groups_resumed == 0
    assert set(calls.by_column) == {"a", "b", "c", "d", "e"}
    assert calls.by_column["a"] == sum(m.rows for m in metas(out).values())
    assert output.load(out) == output.load(_fresh(tmp_path, 2))


def test_another_tables_directory_is_refused(tmp_path: Path) -> None:
    from conveyor.errors import UsageError

    out = tmp_path / "o"
    jsonl(versioned(Calls(), 1), 17, out)
    other = Table("other")

    @other.column
    def x(row_index: int) -> int:
        raise AssertionError("never called")

    for options in ({}, {"update": True}):
        with pytest.raises(UsageError) as e:
            jsonl(other, 5, out, **options)
        assert str(e.value).startswith(f"{out} holds the build of table 'v', not 'other'")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="holds no conveyor build"):
        jsonl(other, 5, tmp_path / "junk")
    with pytest.raises(UsageError, match="holds no build to --update"):
        jsonl(other, 5, tmp_path / "new", update=True)


def test_update_gives_rows_a_changed_column_dropped_another_chance(tmp_path: Path) -> None:
    """Version 1 of ``b`` failed on some rows (they were dropped); ``--update`` to the fixed
    version computes those rows again, needs fewer row groups, and the result is what a fresh
    build of version 2 gives."""
    out = tmp_path / "o"
    s1 = jsonl(versioned(Calls(), 1, buggy=True), 17, out)
    generated = sum(m.rows for m in metas(out).values())
    broken = [i for i in range(generated) if i % 5 == 2 and i % 6 != 4]
    assert s1.dropped["b"] == {"error: ValueError": len(broken)}
    groups_before = len(metas(out))
    s = jsonl(versioned(Calls(), 2), 17, out, update=True)
    rows = output.load(out)
    assert s.complete and s.rows_written == 17 == len(rows)
    assert "b" not in s.dropped
    fresh = _fresh(tmp_path, 2)
    assert rows == output.load(fresh)
    assert metas(out) == metas(fresh)  # the groups no longer needed are gone
    assert len(metas(out)) < groups_before
    assert s.dropped == fresh_drops(fresh)  # the groups removed no longer count


def test_a_row_dropped_while_its_batch_runs_is_counted_once() -> None:
    """``batch`` (a full_column root) was handed rows 0-3; meanwhile ``z`` drops row 0, then
    the batch leaves row 0 out too: the row counts as dropped by ``z`` alone, the batch's
    values for the other rows are kept."""
    holder: list[TableStore] = []
    t = Table("race", row_group_size=4)

    @t.column
    def z(row_index: int) -> int:
        if row_index == 0:
            raise DropRow("z drops")
        return row_index

    @t.column(strategy="full_column")
    async def batch(row_indices: list[int]) -> list[Any]:
        if 0 in row_indices:
            for _ in range(2000):
                if holder and holder[0].dropped["z"]["z drops"]:
                    break
                await asyncio.sleep(0.005)
            else:
                raise AssertionError("row 0 was never dropped")
        return [DropRow("batch drops") if i == 0 else i * 10 for i in row_indices]

    groups: list[GroupDone] = []
    store = TableStore(t, t.plan(), records=4, on_group=groups.append)
    holder.append(store)
    Engine(store, workers=4).run()
    assert groups[0].kept_rows == [1, 2, 3] and groups[0].columns["batch"] == [10, 20, 30]
    assert groups[0].dropped == {"z": {"z drops": 1}}
    assert store.dropped["batch"] == Counter()


@pytest.mark.parametrize("strategy", ["cell", "full_column"])
def test_early_stop_when_one_column_of_several_always_fails(tmp_path: Path, strategy: str) -> None:
    """Two columns work, one always fails: no row is ever kept, so ``--records`` alone would
    open row groups forever; the failing column's outcomes stop the build (a full_column's
    outcome counts for each row it covered)."""
    calls = Calls()
    t = Table("broken", row_group_size=5, in_flight=2, early_stop_window=20)

    @t.column
    def a(row_index: int) -> int:
        if calls("a") > 500:  # the guard: without early stop, fail everything to end the test
            raise ValueError("the guard")
        return row_index

    @t.column
    def c(a: int) -> int:
        return a

    def b(c: Any) -> Any:
        raise ValueError("always")

    t.add(b, strategy=strategy)
    s = jsonl(t, 10, tmp_path / "o")
    assert s.stopped is not None and "column 'b'" in s.stopped, s.stopped
    assert calls.by_column["a"] <= 60 and s.exit_code == 1 and s.rows_written == 0


def test_update_of_a_group_whose_rows_all_dropped(tmp_path: Path) -> None:
    """Row group 1 kept no row (``a`` dropped them all, and ``a`` stands): ``--update`` of
    ``b`` reopens it with nothing to compute, and its ``full_column`` ``c`` must not wait for
    rows that will never come."""

    def table(version: int) -> Table:
        t = Table("empty", row_group_size=3)

        @t.column
        def a(row_index: int) -> int:
            if 3 <= row_index < 6:
                raise DropRow("group 1")
            return row_index

        if version == 1:

            @t.column
            def b(a: int) -> int:
                return a

        else:

            @t.column
            def b(a: int) -> int:
                return -a

        @t.column(strategy="full_column")
        def c(b: list[int]) -> list[int]:
            return [sum(b)] * len(b)

        return t

    out = tmp_path / "o"
    jsonl(table(1), 6, out)
    assert metas(out)[1].kept_rows == []
    s = jsonl(table(2), 6, out, update=True)
    assert s.complete and [r["b"] for r in output.load(out)] == [0, -1, -2, -6, -7, -8]
    assert metas(out)[1].dropped == {"a": {"group 1": 3}}
    fps = table(2).fingerprints()
    assert all(m.columns == fps for m in metas(out).values()), "a group was not updated"


def test_full_column_leaving_out_every_row_of_a_group(tmp_path: Path) -> None:
    t = Table("dedup", row_group_size=3)
    t.sampler("v", integers(0, 9))

    @t.column(strategy="full_column")
    def dedup(v: list[int], row_indices: list[int]) -> list[Any]:
        if 4 in row_indices:  # row group 1: every row a duplicate
            return [DropRow("duplicate")] * len(v)
        return v

    s = jsonl(t, 6, tmp_path / "o")
    assert s.complete and s.stopped is None and s.rows_written == 6
    assert sorted(metas(tmp_path / "o")) == [0, 1, 2]
    assert s.dropped == {"dedup": {"duplicate": 3}}


@pytest.mark.parametrize("options", [{}, {"timeout_s": 30}], ids=["runs", "one-cell-tasks"])
def test_early_stop_counts_rows_dropped_after_their_retries(
    tmp_path: Path, options: dict[str, Any]
) -> None:
    """Cheap cells run several to an engine task and retry on their own; a cell with a
    timeout is one engine task that the engine retries: rows dropped either way count."""
    calls = Calls()
    t = Table("down", row_group_size=5, early_stop_window=10, retries=0)

    @t.column(**options)
    def x(row_index: int) -> int:
        if calls("x") > 300:  # the guard: a non-retryable error, which early stop counts
            raise ValueError("the guard")
        raise ConnectionError("refused")

    s = jsonl(t, 10, tmp_path / "o")
    assert s.stopped is not None and s.stopped.startswith("early stop")
    assert calls.by_column["x"] <= 50
    assert s.dropped == {"x": {"error: ConnectionError": calls.by_column["x"]}}


@pytest.mark.parametrize("options", [{}, {"timeout_s": 30}], ids=["runs", "one-cell-tasks"])
def test_a_retry_waiting_for_a_dropped_row_does_not_hold_the_build(
    options: dict[str, Any],
) -> None:
    """``b``'s cell of row 0 waits a minute to be retried; meanwhile ``a`` drops row 0: the
    retry no longer matters, and the build is over now, not in a minute (the store, driven
    by hand the way the engine drives it)."""
    t = Table("wait", row_group_size=1)

    @t.column
    def a(row_index: int) -> int:
        raise DropRow("gone")

    @t.column(**options)
    def b(row_index: int) -> int:
        raise ConnectionError("refused")

    groups: list[GroupDone] = []
    store = TableStore(t, t.plan(), records=1, on_group=groups.append)
    now = 1000.0
    claims = {c.spec.id: c for c in store.claim("w", 10, now, 30.0)}
    assert sorted(claims) == ["a[0]", "b[0]"]
    b_claim = claims["b[0]"]
    if options:  # an engine task: the engine failed it and set when to retry
        assert store.fail(b_claim, "ConnectionError: refused", now, now + 60.0) is True
    else:  # a run: the store retries its cells itself
        from conveyor.table.cells import RunOut

        store.complete(b_claim, RunOut([b_claim.spec.fn([{}], [0]).outcomes[0]], 0.001), now)
    assert store.next_wakeup() is not None
    a_claim = claims["a[0]"]
    a_value = a_claim.spec.fn(*a_claim.spec.args)
    store.complete(a_claim, a_value, now)
    assert [g.kept_rows for g in groups] == [[]]
    assert store.next_wakeup() is None, "the build waits for a retry that no longer matters"


def test_full_column_with_side_effects_and_keep_when(tmp_path: Path) -> None:
    t = Table("fcs", row_group_size=4)
    t.sampler("v", integers(0, 99))

    @t.column(strategy="full_column", side_effects=["emb__norm"], keep_when=lambda e: e % 2)
    def emb(v: list[int]) -> dict[str, list[int]]:
        return {"emb": [x + 1 for x in v], "emb__norm": [x * 2 for x in v]}

    @t.column
    def after(emb: int, emb__norm: int) -> int:
        return emb + emb__norm

    s = jsonl(t, 9, tmp_path / "o")
    rows = output.load(tmp_path / "o")
    assert len(rows) == 9 and s.complete
    for r in rows:
        assert r["emb"] == r["v"] + 1 and r["emb__norm"] == 2 * r["v"] and r["emb"] % 2
        assert r["after"] == r["emb"] + r["emb__norm"]
    assert s.dropped == {"emb": {"keep_when": s.dropped["emb"]["keep_when"]}}
    assert s.dropped["emb"]["keep_when"] >= 1


def test_an_endpoint_at_its_cap_leaves_slots_to_other_columns(tmp_path: Path) -> None:
    """``a``'s calls (endpoint, deeper, so first in line) cannot finish before every ``b``
    cell has: the store hands out no more ``a`` cells than the endpoint's cap (1.5 x the
    limiter's starting limit of 8: 12), so ``b`` still gets worker slots (else ``a`` would
    hold all 16 and wait for ``b`` forever)."""
    b_done: list[int] = []
    t = Table("caps", row_group_size=30, early_stop_window=8)  # starved: stop soon

    @t.column
    def z(row_index: int) -> int:
        return row_index

    @t.column(endpoint="example/a/test")
    async def a(z: int) -> int:
        for _ in range(1000):
            if len(b_done) == 30:
                return z
            await asyncio.sleep(0.005)
        raise ValueError("starved: b never got a slot")

    @t.column
    async def b(row_index: int) -> int:
        await asyncio.sleep(0.005)
        b_done.append(row_index)
        return row_index

    s = jsonl(t, 30, tmp_path / "o", workers=16)
    assert s.dropped == {} and s.rows_written == 30


def test_a_crashed_update_is_finished_by_the_next_build(tmp_path: Path) -> None:
    """An --update that died after rewriting some groups: the manifest already names the new
    spec, group 0 still holds the old one. The same command without --update redoes just
    that group's changed columns."""
    import shutil

    out, old = tmp_path / "o", tmp_path / "old"
    jsonl(versioned(Calls(), 1), 17, old)
    jsonl(versioned(Calls(), 1), 17, out)
    jsonl(versioned(Calls(), 2), 17, out, update=True)
    for p in out.glob("part-00000.*"):
        p.unlink()
    for p in old.glob("part-00000.*"):
        shutil.copy(p, out / p.name)
    assert metas(out)[0].columns != metas(out)[1].columns
    calls = Calls()
    s = jsonl(versioned(calls, 2), 17, out)
    assert s.complete and s.row_groups_updated == 1
    assert set(calls.by_column) == {"b", "c"}
    assert calls.by_column["b"] == metas(out)[0].kept and calls.by_column["c"] == 1
    assert output.load(out) == output.load(_fresh(tmp_path, 2))


def _columns_table(calls: Calls, names: list[str], drops: bool = True) -> Table:
    """``a``, then any of ``c`` (drops some rows, when ``drops``) and ``x``, in ``names``'s
    order."""
    t = Table("cols", row_group_size=4)

    def a(row_index: int) -> int:
        calls("a", row_index)
        return row_index

    def c(a: int) -> int:
        calls("c", a)
        if drops and a % 4 == 1:
            raise DropRow("c drops")
        return a * 10

    def x(a: int) -> int:
        calls("x", a)
        return -a

    for name in names:
        t.add({"a": a, "c": c, "x": x}[name])
    return t


@pytest.mark.parametrize("drops", [True, False], ids=["it-dropped-rows", "it-dropped-none"])
def test_update_removing_a_column(tmp_path: Path, drops: bool) -> None:
    """The groups are written again without it; rows it dropped come back (they compute
    ``a``, the other rows nothing), and otherwise no generator runs."""
    out, fresh = tmp_path / "o", tmp_path / "fresh"
    jsonl(_columns_table(Calls(), ["a", "c"], drops), 6, out)
    calls = Calls()
    s = jsonl(_columns_table(calls, ["a"], drops), 6, out, update=True)
    f = jsonl(_columns_table(Calls(), ["a"], drops), 6, fresh)
    assert s.complete and output.load(out) == output.load(fresh) == [{"a": i} for i in range(6)]
    assert metas(out) == metas(fresh) and s.dropped == f.dropped == {}
    assert set(calls.by_column) == ({"a"} if drops else set())
    if drops:  # rows 1 and 5 ``c`` had dropped, and the trimmed last group (rows 6-9) whole
        assert sorted(i for (_, i) in calls.by_cell) == [1, 5, 6, 7, 8, 9]


def test_refused_spec_names_new_removed_and_reordered_columns(tmp_path: Path) -> None:
    from conveyor.errors import UsageError

    out = tmp_path / "o"
    jsonl(_columns_table(Calls(), ["a", "c", "x"]), 6, out)
    with pytest.raises(UsageError, match=r"another spec \(removed columns: c\)"):
        jsonl(_columns_table(Calls(), ["a", "x"]), 6, out)
    out2 = tmp_path / "o2"
    jsonl(_columns_table(Calls(), ["a", "c"]), 6, out2)
    with pytest.raises(UsageError, match=r"another spec \(new columns: x\)"):
        jsonl(_columns_table(Calls(), ["a", "c", "x"]), 6, out2)
    with pytest.raises(UsageError, match=r"another spec \(the columns' order\)"):
        jsonl(_columns_table(Calls(), ["a", "x", "c"]), 6, out)


def test_update_adding_a_column_that_drops_rows(tmp_path: Path) -> None:
    out, fresh = tmp_path / "o", tmp_path / "fresh"
    jsonl(_columns_table(Calls(), ["a"]), 6, out)
    calls = Calls()
    s = jsonl(_columns_table(calls, ["a", "c"]), 6, out, update=True)
    f = jsonl(_columns_table(Calls(), ["a", "c"]), 6, fresh)
    assert s.complete and output.load(out) == output.load(fresh)
    assert metas(out) == metas(fresh) and s.dropped == f.dropped == {"c": {"c drops": 3}}
    assert {i for (c, i) in calls.by_cell if c == "a"} == {6, 7, 8, 9}  # the new group only


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["keep_when", "DropRow"])
def test_a_build_whose_every_row_is_dropped_stops_instead_of_generating_forever(
    tmp_path: Path, how: str
) -> None:
    """Filters are no errors, so early stop never sees them: five row groups in a row that
    keep nothing end the build (exit 1) with the reason, and the drops are counted."""
    t = Table("nothing", row_group_size=20, seed=1)
    t.sampler("k", integers(0, 9))
    if how == "keep_when":
        t.add(lambda k: k, name="x", keep_when=lambda v: v > 100)
    else:

        def x(k: int) -> int:
            raise DropRow("never")

        t.add(x)
    summary = build(t, 50, tmp_path / "out", format="jsonl")
    assert summary.exit_code == 1 and summary.rows_written == 0
    assert summary.stopped is not None and "every row of the last 5 row groups" in summary.stopped
    reason = "keep_when" if how == "keep_when" else "never"
    assert list(summary.dropped) == ["x"] and list(summary.dropped["x"]) == [reason]
    # five written groups (20 + 20 + 10 + 20 + 20 rows) and what was in flight, not more
    assert 90 <= summary.dropped["x"][reason] <= 90 + 3 * 20


@pytest.mark.timeout(60)
def test_ctrl_c_from_inside_a_running_build_stops_it_cleanly(tmp_path: Path) -> None:
    """A real SIGINT lands while the engine is mid-step (sent from a cell, so it arrives at
    a random point of the engine thread's work). Raised right there, it once lost a claim
    taken off the queue and the loop waited for it forever; now the first Ctrl-C is posted
    to the loop, which stops between steps, and the build raises KeyboardInterrupt with the
    row groups it completed written."""
    import os
    import signal

    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    sent: list[int] = []
    t = Table("intr", row_group_size=4, in_flight=1, seed=5)
    t.sampler("u", uniform(0, 1))

    def x(u: float, rng: Any, row_index: int) -> float:
        if row_index == 10 and not sent:
            sent.append(row_index)
            os.kill(os.getpid(), signal.SIGINT)
        if row_index % 5 == 3:
            raise DropRow("fifth")
        return float(u + rng.random())

    t.add(x)
    for attempt in range(5):  # the race window is narrow: try a few times
        sent.clear()
        out = tmp_path / f"o{attempt}"
        with pytest.raises(KeyboardInterrupt):
            build(t, 20, out, format="jsonl")
        assert sent == [10]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
        assert len(output.scan(out)) < 5  # stopped mid-build


def test_every_row_group_has_its_started_and_written_events(tmp_path: Path) -> None:
    """The first groups open when the store is made: their ``row_group_started`` events were
    lost when the event sink was attached after that."""
    t = Table("ev", row_group_size=10, in_flight=3)
    t.sampler("n", integers(0, 9))
    t.add(lambda n: n, name="x")
    events = tmp_path / "e.jsonl"
    jsonl(t, 50, tmp_path / "o", events=str(events))
    kinds = [json.loads(line) for line in events.read_text().splitlines()]
    started = sorted(e["row_group"] for e in kinds if e["event"] == "row_group_started")
    written = sorted(e["row_group"] for e in kinds if e["event"] == "row_group_written")
    assert started == written == [0, 1, 2, 3, 4]
    assert kinds[0]["event"] == "build_started" and kinds[-1]["event"] == "build_finished"


def test_a_parameter_with_a_default_is_an_option_not_a_column(tmp_path: Path) -> None:
    t = Table("opt")
    t.sampler("n", integers(1, 3))

    def b(n: int, extra: int = 5) -> int:
        return n + extra

    t.add(b)
    assert [n.deps for n in t.plan().nodes] == [(), ("n",)]
    rows = output.load(tmp_path / "o") if jsonl(t, 6, tmp_path / "o").complete else []
    assert [r["b"] - r["n"] for r in rows] == [5] * 6


def test_resuming_with_another_layout_says_which_options_to_repeat(tmp_path: Path) -> None:
    t = Table("lay", row_group_size=4)
    t.sampler("n", integers(1, 3))
    jsonl(t, 10, tmp_path / "o")
    with pytest.raises(UsageError, match="made with --row-group-size 4: pass the same"):
        jsonl(t, 10, tmp_path / "o", row_group_size=5)
    with pytest.raises(UsageError, match="made with --records 10: pass the same"):
        jsonl(t, 12, tmp_path / "o")


# -- --update of a group where a changed column had dropped rows ------------------------------


#: the rows version 1 of ``chain``'s ``c`` drops (25 records)
DROPPED_BY_C = {0, 6, 12, 18, 24, 30}


def chain(calls: Calls, *, b: int = 1, c: int = 1, keep: int = 6) -> Table:
    """``n -> a -> b -> c``: ``c`` drops the rows where ``row % keep == 0`` (``keep=6``: the
    first row of every group of 6; 25 records are 6 groups, rows 0-30, none trimmed: rows
    0-24 keep 20, then a group of rows 25-30 keeps 5); ``s`` is a ``full_column`` over ``a``
    that no version changes. ``b`` and ``c`` come in versions."""
    t = Table("chain", row_group_size=6, in_flight=2, seed=5)
    t.sampler("n", integers(0, 99))

    @t.column
    def a(n: int, row_index: int) -> str:
        calls("a", row_index)
        return f"a{n}"

    if b == 1:

        @t.column
        def b(a: str, row_index: int) -> str:
            calls("b", row_index)
            return a + "/b1"

    else:

        @t.column
        def b(a: str, row_index: int) -> str:
            calls("b", row_index)
            return a + "/b2"

    if c == 1:

        @t.column
        def c(b: str, row_index: int) -> str:
            calls("c", row_index)
            if row_index % 6 == 0:
                raise DropRow("c1 drops")
            return b + "/c1"

    else:

        @t.column
        def c(b: str, row_index: int) -> str:
            calls("c", row_index)
            if row_index % keep == 0:
                raise DropRow("c2 drops")
            return b + "/c2"

    @t.column(strategy="full_column")
    def s(a: list[str]) -> list[str]:
        calls("s")
        return [v + "!" for v in a]

    return t


def _same_as_fresh(tmp_path: Path, out: Path, s: BuildSummary, table: Table) -> None:
    """``out`` holds what a fresh build of ``table`` writes (rows, sidecars, drops)."""
    fresh = tmp_path / "fresh"
    f = jsonl(table, 25, fresh)
    assert s.complete and s.rows_written == 25
    assert output.load(out) == output.load(fresh)
    assert metas(out) == metas(fresh)
    assert s.dropped == f.dropped


def test_update_of_the_last_column_that_drops_rows_reruns_only_it(tmp_path: Path) -> None:
    """Only ``c`` changed (same rows dropped, other values): ``c`` runs for every row, ``a``
    and ``b`` only for the rows ``c`` had dropped (they have no values on disk), ``s`` (a
    full_column that settles on ``c``: which rows it sees depends on it) once per group with
    kept rows."""
    out = tmp_path / "o"
    jsonl(chain(Calls()), 25, out)
    assert not any(m.trimmed for m in metas(out).values()) and len(metas(out)) == 6
    calls = Calls()
    s = jsonl(chain(calls, c=2), 25, out, update=True)
    assert {i for (col, i) in calls.by_cell if col == "a"} == DROPPED_BY_C
    assert {i for (col, i) in calls.by_cell if col == "b"} == DROPPED_BY_C
    assert calls.by_column["a"] == calls.by_column["b"] == 6
    # ``s`` waits for ``c`` (it settles on it): group 4's only row is dropped by ``c``, so
    # ``s`` has no row to see there and is not called (it was, over that row, before ``c``
    # dropped it, when it did not wait)
    assert calls.by_column["c"] == 31 and calls.by_column["s"] == 5
    _same_as_fresh(tmp_path, out, s, chain(Calls(), c=2))
    assert {g: m.dropped_rows for g, m in metas(out).items()} == {
        g: {"c": [6 * g]} for g in range(5)
    } | {5: {"c": [30]}}


def test_update_of_a_filter_that_now_keeps_more_rows(tmp_path: Path) -> None:
    """``c`` now drops every 12th row only: the rows it had dropped are revived and some kept,
    so fewer groups are needed; ``a`` and ``b`` run for the revived rows only."""
    out = tmp_path / "o"
    jsonl(chain(Calls()), 25, out)
    calls = Calls()
    s = jsonl(chain(calls, c=2, keep=12), 25, out, update=True)
    assert {i for (col, i) in calls.by_cell if col in "ab"} == DROPPED_BY_C
    assert calls.by_column["a"] == calls.by_column["b"] == 6
    assert calls.by_column["c"] == 31
    _same_as_fresh(tmp_path, out, s, chain(Calls(), c=2, keep=12))


def test_update_of_an_upstream_column_of_the_dropping_one(tmp_path: Path) -> None:
    """``b`` changed, so ``c`` (its downstream) is stale too: ``b`` and ``c`` run for every
    row, ``a`` only for the rows ``c`` had dropped."""
    out = tmp_path / "o"
    jsonl(chain(Calls()), 25, out)
    calls = Calls()
    s = jsonl(chain(calls, b=2), 25, out, update=True)
    assert {i for (col, i) in calls.by_cell if col == "a"} == DROPPED_BY_C
    assert calls.by_column["b"] == calls.by_column["c"] == 31
    _same_as_fresh(tmp_path, out, s, chain(Calls(), b=2))


def test_update_of_groups_whose_sidecars_do_not_say_who_dropped_which_rows(
    tmp_path: Path,
) -> None:
    """Sidecars written before the rows dropped were recorded per column: a group where a
    changed column dropped rows is built again whole (``a`` and ``b`` run for every row)."""
    out = tmp_path / "o"
    jsonl(chain(Calls()), 25, out)
    for p in out.glob("part-*.meta.json"):
        d = json.loads(p.read_text())
        assert "dropped_rows" in d
        del d["dropped_rows"]
        p.write_text(json.dumps(d))
    assert all(m.dropped_rows is None for m in metas(out).values())
    calls = Calls()
    s = jsonl(chain(calls, c=2), 25, out, update=True)
    assert calls.by_column["a"] == calls.by_column["b"] == calls.by_column["c"] == 31
    _same_as_fresh(tmp_path, out, s, chain(Calls(), c=2))


def _ranked(delay: bool) -> Table:
    """``review`` feeds ``rank`` (a full_column over it) and ``verdict`` (a cell filter that
    drops every 4th row, slowly when ``delay``): ``rank`` must see the rows ``verdict`` kept,
    whatever finishes first."""
    t = Table("ranked", row_group_size=12, in_flight=2, seed=3)
    t.sampler("n", integers(0, 999))

    @t.column
    def review(n: int) -> str:
        return "x" * (n % 17)

    @t.column
    def verdict(review: str, row_index: int) -> int:
        if delay:
            time.sleep(0.002 * (row_index % 3))
        if row_index % 4 == 1:
            raise DropRow("low score")
        return len(review)

    @t.column(strategy="full_column")
    def rank(review: list[str]) -> list[int]:
        order = sorted(range(len(review)), key=lambda i: (len(review[i]), i))
        out = [0] * len(review)
        for r, i in enumerate(order):
            out[i] = r
        return out

    # two full_column generators unrelated to each other, each with a cell below it: they
    # must not wait for each other's cells (that would never end)
    @t.column(strategy="full_column")
    def total_a(n: list[int]) -> list[int]:
        return [sum(n)] * len(n)

    @t.column
    def below_a(total_a: int) -> int:
        return total_a + 1

    @t.column(strategy="full_column")
    def total_b(review: list[str]) -> list[int]:
        return [len(review)] * len(review)

    @t.column
    def below_b(total_b: int) -> int:
        return total_b + 1

    return t


def test_a_full_column_sees_the_rows_a_sibling_filter_kept_whatever_the_timing(
    tmp_path: Path,
) -> None:
    """``rank`` does not read ``verdict``, which drops rows; it waits for it (it settles on
    it), so its input is the kept rows, and the build is the same with one worker and many,
    fast or slow."""
    plan = _ranked(False).plan()
    settles = {n.name: sorted(plan.nodes[j].name for j in plan.settle[i])
               for i, n in enumerate(plan.nodes) if plan.settle[i]}  # fmt: skip
    # not the cells below the other full_column generators (they wait for their own)
    assert settles == {"rank": ["verdict"], "total_a": ["review", "verdict"],
                       "total_b": ["verdict"]}  # fmt: skip
    a = jsonl(_ranked(False), 50, tmp_path / "a", workers=1)
    b = jsonl(_ranked(True), 50, tmp_path / "b", workers=16)
    assert a.exit_code == b.exit_code == 0
    rows_a, rows_b = output.load(tmp_path / "a"), output.load(tmp_path / "b")
    assert rows_a == rows_b
    for g, meta in metas(tmp_path / "a").items():
        if not meta.trimmed:  # (the last group is cut after it was ranked)
            ranks = output.read_group(tmp_path / "a", g)["rank"]
            assert sorted(ranks) == list(range(len(ranks)))  # a ranking of the kept rows
