"""The seed-column samplers: values depend on (seed, column, global row) only."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conveyor.errors import UsageError
from conveyor.table.samplers import (
    BLOCK,
    Sampler,
    category,
    choice,
    integers,
    row_seed,
    seed_file,
    uniform,
)

SRC = Path(__file__).resolve().parents[1] / "src"

ROWS = [
    {"q": "one", "n": 1, "tags": ["a"]},
    {"q": "two", "n": 2, "tags": []},
    {"q": "three", "n": 3, "tags": ["b", "c"]},
    {"q": "four", "n": None, "tags": ["d"]},
    {"q": "five", "n": 5, "tags": ["e"]},
]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def write_csv(path: Path) -> Path:
    lines = ["q,n", *(f"{r['q']},{r['n'] if r['n'] is not None else ''}" for r in ROWS)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_parquet(path: Path) -> Path:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    return path


def bound(s: Sampler, name: str = "col") -> Sampler:
    return s.bind(name)


def concat(s: Sampler, cuts: list[int], seed: int) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {f: [] for f in s.fields}
    for a, b in itertools.pairwise(cuts):
        for f, vals in s.sample(a, b, seed).items():
            out[f].extend(vals)
    return out


# -- row_seed ------------------------------------------------------------------------------


def test_row_seed_is_64_bit_and_differs_by_every_input() -> None:
    base = row_seed(7, "city", 100)
    assert 0 <= base < 2**64
    assert row_seed(7, "city", 100) == base
    others = {row_seed(8, "city", 100), row_seed(7, "town", 100), row_seed(7, "city", 101)}
    assert base not in others and len(others) == 3


def test_row_seed_same_in_processes_with_different_hash_salts() -> None:
    code = "from conveyor.table.samplers import row_seed; print(row_seed(3, 'name', 12345))"
    seen = set()
    for salt in ("1", "2"):
        env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONHASHSEED": salt}
        res = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        seen.add(res.stdout.strip())
    assert seen == {str(row_seed(3, "name", 12345))}


def test_values_are_pinned_across_versions() -> None:
    """A dataset must rebuild identically after an upgrade: any change here changes every value
    of every build (bump the build format instead of editing these numbers)."""
    assert row_seed(0, "a", 0) == 17027971938842200624
    assert row_seed(2**64 - 1, "città", 10**12) == 13919803070708768180
    assert bound(category(["a", "b", "c"]), "c").sample(1020, 1030, 42)["c"] == list("cbacaaaaac")
    assert bound(integers(1, 6), "d").sample(0, 10, 7)["d"] == [4, 6, 3, 3, 4, 4, 2, 5, 6, 6]
    assert bound(uniform(0, 1), "u").sample(5, 7, 1)["u"] == [
        0.5728117184284648,
        0.6601379539369278,
    ]


# -- split invariance ----------------------------------------------------------------------


def partitions(max_n: int = 3 * BLOCK) -> st.SearchStrategy[tuple[int, list[int]]]:
    """(offset, cuts): ``cuts`` splits [offset, offset + n) into consecutive ranges."""

    @st.composite
    def build(draw: st.DrawFn) -> tuple[int, list[int]]:
        offset = draw(st.sampled_from([0, 1, BLOCK - 3, 10**9 + 7]))
        n = draw(st.integers(0, max_n))
        inner = draw(st.lists(st.integers(0, n), max_size=12))
        cuts = sorted({0, n, *inner})
        return offset, [offset + c for c in cuts]

    return build()


SAMPLERS = {
    "category": lambda _tmp: category({"a": 1, "b": 2, "c": 3}),
    "choice": lambda _tmp: choice([10, 20, 30]),
    "uniform": lambda _tmp: uniform(-1, 1),
    "integers": lambda _tmp: integers(0, 10**6),
    "big_integers": lambda _tmp: integers(-(2**70), 2**70),
    "seed_random": lambda tmp: seed_file(write_jsonl(tmp / "s.jsonl", ROWS)),
    "seed_cycle": lambda tmp: seed_file(write_jsonl(tmp / "s.jsonl", ROWS), order="cycle"),
}


@pytest.mark.parametrize("kind", sorted(SAMPLERS))
def test_sampler_any_split_gives_the_same_values(kind: str, tmp_path: Path) -> None:
    s = bound(SAMPLERS[kind](tmp_path))

    @settings(max_examples=40, deadline=None)
    @given(partitions())
    def check(case: tuple[int, list[int]]) -> None:
        _offset, cuts = case
        whole = s.sample(cuts[0], cuts[-1], seed=11)
        assert concat(s, cuts, seed=11) == whole
        assert all(len(v) == cuts[-1] - cuts[0] for v in whole.values())

    check()


def test_sampler_values_do_not_depend_on_call_order() -> None:
    a, b = bound(category(["x", "y", "z"])), bound(category(["x", "y", "z"]))
    later_first = [b.sample(5000, 6000, 1), b.sample(0, 1000, 1)]
    assert [a.sample(0, 1000, 1), a.sample(5000, 6000, 1)] == later_first[::-1]


@pytest.mark.parametrize("kind", ["category", "uniform", "integers", "seed_random"])
def test_sampler_seed_and_column_change_the_values(kind: str, tmp_path: Path) -> None:
    s1 = bound(SAMPLERS[kind](tmp_path), "col")
    s2 = bound(SAMPLERS[kind](tmp_path), "other")
    base = s1.sample(0, 200, seed=1)
    assert s1.sample(0, 200, seed=2) != base
    assert list(s2.sample(0, 200, seed=1).values()) != list(base.values())


def test_sample_before_bind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="category sampler is not bound"):
        category(["a"]).sample(0, 1, 0)
    with pytest.raises(ValueError, match="seedfile sampler is not bound"):
        seed_file(tmp_path / "missing.csv").sample(0, 1, 0)


def test_sample_bad_range_is_refused() -> None:
    with pytest.raises(ValueError, match="bad row range"):
        bound(category(["a"])).sample(5, 4, 0)


# -- distributions -------------------------------------------------------------------------


def test_category_frequencies_match_weights() -> None:
    weights = {"a": 1, "b": 3, "c": 6, "never": 0}
    n = 20_000
    counts = Counter(bound(category(weights)).sample(0, n, seed=5)["col"])
    assert counts["never"] == 0
    for value, w in weights.items():
        p = w / 10
        sigma = (n * p * (1 - p)) ** 0.5
        assert abs(counts[value] - n * p) <= 4 * sigma + 1, (value, counts)


def test_category_with_weights_list_and_equal_default() -> None:
    c = bound(category(["a", "b"], weights=[0.0, 2.5])).sample(0, 500, 1)["col"]
    assert set(c) == {"b"}
    counts = Counter(bound(category(["a", "b"])).sample(0, 20_000, 1)["col"])
    assert abs(counts["a"] - 10_000) < 4 * 71


def test_choice_is_uniform_over_the_list() -> None:
    counts = Counter(bound(choice(["r", "g", "b", "k"])).sample(0, 20_000, 2)["col"])
    assert set(counts) == {"r", "g", "b", "k"}
    assert all(abs(c - 5000) < 4 * 62 for c in counts.values()), counts


def test_integers_are_inclusive_of_both_ends() -> None:
    values = bound(integers(1, 6)).sample(0, 3000, seed=9)["col"]
    assert set(values) == {1, 2, 3, 4, 5, 6}
    assert all(type(v) is int for v in values)
    assert set(bound(integers(-3, -3)).sample(0, 50, 0)["col"]) == {-3}
    assert set(bound(integers(0, 1)).sample(0, 200, 0)["col"]) == {0, 1}


def test_integers_huge_range_stays_in_bounds() -> None:
    lo, hi = -(2**70), 2**70
    values = bound(integers(lo, hi)).sample(0, 2000, 0)["col"]
    assert all(lo <= v <= hi for v in values)
    assert min(values) < -(2**68) and max(values) > 2**68


def test_uniform_stays_in_range_with_the_right_mean() -> None:
    values = bound(uniform(2, 4)).sample(0, 20_000, 3)["col"]
    assert all(2 <= v < 4 for v in values)
    assert abs(sum(values) / len(values) - 3) < 0.02


def test_category_million_rows_is_fast() -> None:
    s = bound(category({"a": 1, "b": 2, "c": 7}))
    t = time.perf_counter()
    values = s.sample(0, 1_000_000, 0)["col"]
    assert len(values) == 1_000_000
    assert time.perf_counter() - t < 1.5  # ~0.2 s; a Random() per row would take ~5 s


# -- describe / fingerprint ----------------------------------------------------------------


def test_fingerprint_changes_with_parameters_only() -> None:
    assert category({"a": 1, "b": 1}).fingerprint() == category({"a": 2, "b": 2}).fingerprint()
    assert category({"a": 1, "b": 1}).fingerprint() != category({"a": 1, "b": 2}).fingerprint()
    assert category(["a", "b"]).fingerprint() != category(["a", "c"]).fingerprint()
    assert integers(1, 6).fingerprint() != integers(1, 7).fingerprint()
    assert uniform(0, 1).fingerprint() != uniform(0, 2).fingerprint()
    assert uniform(0, 1).fingerprint() == uniform(0.0, 1.0).fingerprint()
    assert integers(0, 1).fingerprint() != uniform(0, 1).fingerprint()


def test_describe_is_one_line() -> None:
    for s in (category({"a": 1, "b": 3}), choice(range(100)), uniform(0, 1), integers(1, 6)):
        text = s.describe()
        assert "\n" not in text and text
    assert "0.75" in category({"a": 1, "b": 3}).describe()
    assert "100 values" in choice(range(100)).describe()


def test_bind_sets_the_single_field() -> None:
    s = category(["a"])
    assert s.fields == ()
    assert s.bind("city") is s
    assert s.fields == ("city",) and s.name == "city"
    assert list(s.sample(0, 2, 0)) == ["city"]


# -- seed files ----------------------------------------------------------------------------


def seed_path(fmt: str, tmp: Path) -> Path:
    if fmt == "jsonl":
        return write_jsonl(tmp / "seed.jsonl", ROWS)
    if fmt == "csv":
        return write_csv(tmp / "seed.csv")
    return write_parquet(tmp / "seed.parquet")


def file_rows(fmt: str) -> list[tuple[Any, Any]]:
    if fmt == "csv":  # the csv module: every value a string
        return [(r["q"], "" if r["n"] is None else str(r["n"])) for r in ROWS]
    return [(r["q"], r["n"]) for r in ROWS]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_seed_file_cycle_gives_file_rows_in_order(fmt: str, tmp_path: Path) -> None:
    s = bound(seed_file(seed_path(fmt, tmp_path), columns=["q", "n"], order="cycle"), "src")
    assert s.fields == ("q", "n")
    got = s.sample(3, 15, seed=0)
    expect = file_rows(fmt)
    assert list(zip(got["q"], got["n"], strict=True)) == [expect[i % 5] for i in range(3, 15)]


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_seed_file_random_draws_whole_file_rows(fmt: str, tmp_path: Path) -> None:
    s = bound(seed_file(seed_path(fmt, tmp_path), columns=["q", "n"]), "src")
    got = s.sample(0, 400, seed=4)
    pairs = list(zip(got["q"], got["n"], strict=True))
    assert set(pairs) == set(file_rows(fmt))  # every file row drawn, columns never mixed
    assert pairs[:20] != [file_rows(fmt)[i % 5] for i in range(20)]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_seed_file_default_fields_are_all_columns(fmt: str, tmp_path: Path) -> None:
    s = bound(seed_file(seed_path(fmt, tmp_path), order="cycle"), "src")
    assert s.fields == ("q", "n", "tags")
    got = s.sample(0, 5, 0)
    assert got["tags"] == [r["tags"] for r in ROWS]


def test_seed_file_jsonl_missing_keys_are_none(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "s.jsonl", [{"a": 1}, {"b": 2}])
    got = bound(seed_file(path, order="cycle")).sample(0, 2, 0)
    assert got == {"a": [1, None], "b": [None, 2]}


def test_seed_file_fingerprint_follows_content(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "s.jsonl", ROWS)
    first = seed_file(path).fingerprint()
    assert seed_file(path).fingerprint() == first
    assert seed_file(path, order="cycle").fingerprint() != first
    assert seed_file(path, columns=["q"]).fingerprint() != first
    write_jsonl(path, ROWS[:4])
    assert seed_file(path).fingerprint() != first


def test_seed_file_is_read_once_and_kept(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "s.jsonl", ROWS)
    s = bound(seed_file(path, order="cycle"))
    before = s.sample(0, 5, 0)
    path.unlink()
    assert s.sample(0, 5, 0) == before


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_seed_file_describe_names_file_and_rows(fmt: str, tmp_path: Path) -> None:
    text = seed_file(seed_path(fmt, tmp_path)).describe()
    assert f"seed.{fmt}" in text and "5 rows" in text and "\n" not in text


# -- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: category([]), "no values"),
        (lambda: category({}), "no values"),
        (lambda: category({"a": -1, "b": 2}), "must be finite and >= 0"),
        (lambda: category({"a": 0, "b": 0}), "sum to zero"),
        (lambda: category(["a", "b"], weights=[1]), "2 values but 1 weights"),
        (lambda: category({"a": 1}, weights=[1]), "not both"),
        (lambda: category(["a"], weights=[float("nan")]), "finite"),
        (lambda: category(["a"], weights=["x"]), "not a number"),
        (lambda: category("abc"), "not a string"),
        (lambda: choice([]), "no values"),
        (lambda: integers(3, 2), "above high"),
        (lambda: integers(1.5, 2), "not an int"),
        (lambda: uniform(1, 1), "below high"),
        (lambda: uniform(0, float("inf")), "finite"),
    ],
)
def test_bad_sampler_parameters_are_usage_errors(make: Any, message: str) -> None:
    with pytest.raises(UsageError, match=message) as info:
        make()
    assert "\n" not in str(info.value)


def test_seed_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"seed\.txt.*unknown suffix"):
        seed_file(tmp_path / "seed.txt")
    with pytest.raises(UsageError, match="order must be"):
        seed_file(tmp_path / "s.jsonl", order="shuffle")  # type: ignore[arg-type]

    missing = bound(seed_file(tmp_path / "nope.jsonl"))
    with pytest.raises(UsageError, match=r"nope\.jsonl: cannot read"):
        missing.sample(0, 1, 0)

    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(UsageError, match=r"empty\.jsonl: no rows"):
        bound(seed_file(tmp_path / "empty.jsonl")).sample(0, 1, 0)
    (tmp_path / "header.csv").write_text("a,b\n")
    with pytest.raises(UsageError, match=r"header\.csv: no rows"):
        seed_file(tmp_path / "header.csv").fingerprint()
    (tmp_path / "blank.csv").write_text("")
    with pytest.raises(UsageError, match=r"blank\.csv: no header"):
        seed_file(tmp_path / "blank.csv").fingerprint()

    path = write_jsonl(tmp_path / "s.jsonl", ROWS)
    with pytest.raises(UsageError, match=r"s\.jsonl: no column 'answer'"):
        bound(seed_file(path, columns=["q", "answer"])).sample(0, 1, 0)

    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(UsageError, match=r"bad\.jsonl: line 2 is not a JSON object"):
        seed_file(tmp_path / "bad.jsonl").fingerprint()
    (tmp_path / "broken.jsonl").write_text('{"a": 1\n')
    with pytest.raises(UsageError, match=r"broken\.jsonl: line 1 is not JSON"):
        seed_file(tmp_path / "broken.jsonl").fingerprint()
    (tmp_path / "ragged.csv").write_text("a,b\n1,2\n3\n")
    with pytest.raises(UsageError, match=r"ragged\.csv: line 3 has 1 fields"):
        seed_file(tmp_path / "ragged.csv").fingerprint()


def test_seed_file_corrupt_parquet_is_a_usage_error(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(UsageError, match=r"bad\.parquet: not a readable Parquet file"):
        seed_file(tmp_path / "bad.parquet").fingerprint()
