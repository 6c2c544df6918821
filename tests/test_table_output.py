"""A build's output directory: atomic row groups on disk, found again after a crash, read back."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conveyor.errors import UsageError
from conveyor.table.output import (
    JSON_COLUMNS_KEY,
    GroupMeta,
    PartWriter,
    load,
    read_group,
    read_manifest,
    remove_groups,
    scan,
    write_manifest,
)
from conveyor.table.partcodec import concat_parquet

SRC = Path(__file__).resolve().parents[1] / "src"
FORMATS = ["parquet", "jsonl"]

FIELDS = ["text", "n", "x", "ok", "tags", "info"]


def values(start: int, n: int) -> dict[str, list[Any]]:
    """Rows ``start..start+n`` of a table with values of several types, ``None`` in every column."""
    rows = range(start, start + n)
    return {
        "text": [None if i % 5 == 4 else f"row {i} ü" for i in rows],
        "n": [None if i % 7 == 3 else i * 10 for i in rows],
        "x": [i / 4 for i in rows],
        "ok": [i % 2 == 0 for i in rows],
        "tags": [[f"t{i}", "k"] if i % 3 else [] for i in rows],
        "info": [{"id": i, "name": f"n{i}"} if i % 4 else None for i in rows],
    }


def meta(rg: int, start: int, kept: int, rows: int | None = None, **kw: Any) -> GroupMeta:
    return GroupMeta(
        row_group=rg,
        start=start,
        rows=kept if rows is None else rows,
        kept_rows=list(range(start, start + kept)),
        dropped=kw.pop("dropped", {}),
        columns=kw.pop("columns", {"text": "fp-text"}),
        **kw,
    )


def write(out: Path, fmt: str, rg: int, size: int = 4) -> Path:
    w = PartWriter(out, fmt, FIELDS)  # type: ignore[arg-type]
    return w.write(meta(rg, rg * size, size), values(rg * size, size))


def rows_of(cols: dict[str, list[Any]]) -> list[dict[str, Any]]:
    return [dict(zip(cols, vals, strict=True)) for vals in zip(*cols.values(), strict=True)]


def names(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir())


# -- GroupMeta ------------------------------------------------------------------------------


def test_group_meta_json_round_trip_stores_kept_rows_as_ranges() -> None:
    m = GroupMeta(
        row_group=3,
        start=300,
        rows=100,
        kept_rows=[*range(300, 350), *range(351, 400)],
        dropped={"answer": {"empty": 1}},
        columns={"q": "fp1", "answer": "fp2"},
        trimmed=True,
    )
    text = m.to_json()
    assert json.loads(text)["kept_rows"] == [[300, 350], [351, 400]]
    back = GroupMeta.from_json(text)
    assert back == m and back.kept == 99


@given(st.integers(0, 10**6), st.sets(st.integers(0, 300)), st.booleans())
def test_group_meta_round_trip_any_kept_subset(start: int, kept: set[int], trimmed: bool) -> None:
    m = GroupMeta(1, start, 301, sorted(start + k for k in kept), {}, {}, trimmed)
    assert GroupMeta.from_json(m.to_json()) == m


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[1]",
        '{"row_group": 0}',
        '{"row_group": 0, "start": 0, "rows": 2, "kept_rows": [[1, 5]], "dropped": {},'
        ' "columns": {}}',
        '{"row_group": 0, "start": 0, "rows": 2, "kept_rows": "x", "dropped": {}, "columns": {}}',
    ],
)
def test_group_meta_from_json_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        GroupMeta.from_json(text)


# -- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_write_then_read_round_trips_every_value_type(fmt: str, tmp_path: Path) -> None:
    out = tmp_path / "build"
    path = write(out, fmt, 0, size=12)
    assert path == out / f"part-00000.{fmt}"
    assert names(out) == sorted(["part-00000.meta.json", path.name])
    assert read_group(out, 0) == values(0, 12)
    assert load(out) == rows_of(values(0, 12))
    assert scan(out) == {0: meta(0, 0, 12)}


@pytest.mark.parametrize("fmt", FORMATS)
def test_columns_pyarrow_cannot_type_round_trip_as_json(fmt: str, tmp_path: Path) -> None:
    cols: dict[str, list[Any]] = {
        "mixed": [1, "two", [3], None],
        "ragged": [{"a": 1}, {"b": [2]}, {}, None],  # a struct would add missing keys as None
        "empty": [{}, {}, {}, {}],  # infers struct<>, which Parquet cannot store
    }
    w = PartWriter(tmp_path, fmt, list(cols))  # type: ignore[arg-type]
    w.write(meta(0, 0, 4), cols)
    assert read_group(tmp_path, 0) == cols
    assert load(tmp_path) == rows_of(cols)


def test_parquet_notes_json_columns_in_the_schema(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    cols: dict[str, list[Any]] = {"mixed": [1, "a"], "plain": [1, 2]}
    PartWriter(tmp_path, "parquet", ["mixed", "plain"]).write(meta(0, 0, 2), cols)
    schema = pq.read_schema(tmp_path / "part-00000.parquet")
    assert json.loads(schema.metadata[JSON_COLUMNS_KEY]) == ["mixed"]
    assert str(schema.field("plain").type) == "int64"
    assert pq.read_table(tmp_path / "part-00000.parquet").column("mixed").to_pylist() == [
        "1",
        '"a"',
    ]


def test_jsonl_rows_keep_field_order_and_unicode(tmp_path: Path) -> None:
    w = PartWriter(tmp_path, "jsonl", ["z", "a"])
    w.write(meta(0, 0, 2), {"a": ["é", None], "z": [1, {"k": [1, 2]}]})
    lines = (tmp_path / "part-00000.jsonl").read_text(encoding="utf-8").splitlines()
    assert lines == ['{"z": 1, "a": "é"}', '{"z": {"k": [1, 2]}, "a": null}']


@pytest.mark.parametrize("fmt", FORMATS)
def test_load_is_in_row_group_order_whatever_the_write_order(fmt: str, tmp_path: Path) -> None:
    for rg in (2, 0, 1):
        write(tmp_path, fmt, rg)
    expected = rows_of(values(0, 12))
    assert load(tmp_path) == expected
    assert list(scan(tmp_path)) == [0, 1, 2]
    assert [r["n"] for r in load(str(tmp_path))] == [r["n"] for r in expected]


@pytest.mark.parametrize("fmt", FORMATS)
def test_load_arrow_equals_the_rows(fmt: str, tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    for rg in (1, 0):
        write(tmp_path, fmt, rg, size=5)
    table = load(tmp_path, arrow=True)
    assert table.column_names == FIELDS
    assert table.num_rows == 10
    assert table.to_pylist() == load(tmp_path)


def test_load_arrow_of_a_group_with_dropped_rows(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    w = PartWriter(tmp_path, "parquet", ["v"])
    w.write(GroupMeta(0, 0, 5, [0, 2, 4], {"v": {"bad": 2}}, {}), {"v": [0, 2, 4]})
    w.write(GroupMeta(1, 5, 5, [], {"v": {"bad": 5}}, {}), {"v": []})
    assert load(tmp_path, arrow=True).column("v").to_pylist() == [0, 2, 4]
    assert scan(tmp_path)[1].kept == 0


def test_load_arrow_unifies_types_across_parquet_groups(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    w = PartWriter(tmp_path, "parquet", ["s", "x"])
    w.write(meta(0, 0, 2), {"s": [None, None], "x": [1, 2]})  # s infers the null type here
    w.write(meta(1, 2, 2), {"s": ["a", None], "x": [0.5, None]})
    table = load(tmp_path, arrow=True)
    assert str(table.schema.field("s").type) == "string"
    assert (
        table.to_pylist()
        == load(tmp_path)
        == [
            {"s": None, "x": 1},
            {"s": None, "x": 2},
            {"s": "a", "x": 0.5},
            {"s": None, "x": None},
        ]
    )


def test_load_arrow_of_groups_whose_types_clash_keeps_the_column_as_json(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    w = PartWriter(tmp_path, "parquet", ["v"])
    w.write(meta(0, 0, 2), {"v": [1, 2]})
    w.write(meta(1, 2, 1), {"v": ["three"]})
    assert load(tmp_path) == [{"v": 1}, {"v": 2}, {"v": "three"}]
    table = load(tmp_path, arrow=True)
    assert table.column("v").to_pylist() == ["1", "2", '"three"']
    assert json.loads(table.schema.metadata[JSON_COLUMNS_KEY]) == ["v"]


def test_concat_parquet_reads_parts_directly_or_declines(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    w = PartWriter(tmp_path, "parquet", ["v"])
    a = w.write(meta(0, 0, 2), {"v": [None, None]})
    b = w.write(meta(1, 2, 1), {"v": ["x"]})
    c = w.write(meta(2, 3, 1), {"v": [3]})
    d = w.write(meta(3, 4, 2), {"v": [1, "mixed"]})
    table = concat_parquet([a, b])
    assert table is not None and table.column("v").to_pylist() == [None, None, "x"]
    assert concat_parquet([b, c]) is None  # string and int64 do not unify
    assert concat_parquet([c, d]) is None  # d holds JSON text


def test_load_arrow_of_a_build_without_groups_is_empty(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    write_manifest(tmp_path, {"version": 1})
    assert load(tmp_path, arrow=True).num_rows == 0


# -- crashes and rewrites -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_scan_ignores_and_removes_crash_leftovers(fmt: str, tmp_path: Path) -> None:
    write(tmp_path, fmt, 0)
    write(tmp_path, fmt, 1)
    # a crashed write: a temp file of the next group
    (tmp_path / f".part-00002.{fmt}.k3j2h1.tmp").write_bytes(b"half")
    (tmp_path / ".manifest.json.abcd.tmp").write_text("{")
    # data without a sidecar
    shutil.copy(tmp_path / f"part-00001.{fmt}", tmp_path / f"part-00003.{fmt}")
    # a sidecar without data (the crash between the two renames)
    write(tmp_path, fmt, 4)
    (tmp_path / f"part-00004.{fmt}").unlink()
    # a sidecar that does not parse, next to its data
    write(tmp_path, fmt, 5)
    (tmp_path / "part-00005.meta.json").write_text('{"row_group": 5')
    (tmp_path / "notes.txt").write_text("not ours")

    leftovers = names(tmp_path)
    assert load(tmp_path) == rows_of(values(0, 8))  # reading deletes nothing
    assert names(tmp_path) == leftovers

    assert list(scan(tmp_path)) == [0, 1]
    kept = [f"part-0000{rg}{ext}" for rg in (0, 1) for ext in (f".{fmt}", ".meta.json")]
    assert names(tmp_path) == sorted([*kept, "notes.txt"])
    assert load(tmp_path) == rows_of(values(0, 8))


@pytest.mark.parametrize("fmt", FORMATS)
def test_scan_drops_a_group_whose_data_is_not_its_sidecars(fmt: str, tmp_path: Path) -> None:
    write(tmp_path, fmt, 0, size=3)
    write(tmp_path, fmt, 1, size=9)
    shutil.copy(tmp_path / f"part-00001.{fmt}", tmp_path / f"part-00000.{fmt}")
    assert list(scan(tmp_path)) == [1]
    assert not (tmp_path / f"part-00000.{fmt}").exists()


def test_scan_drops_a_sidecar_that_names_another_groups_data(tmp_path: Path) -> None:
    write(tmp_path, "jsonl", 0)
    write(tmp_path, "jsonl", 1)
    sidecar = json.loads((tmp_path / "part-00001.meta.json").read_text())
    sidecar["data"]["file"] = "part-00000.jsonl"
    (tmp_path / "part-00001.meta.json").write_text(json.dumps(sidecar))
    assert list(scan(tmp_path)) == [0]
    assert names(tmp_path) == ["part-00000.jsonl", "part-00000.meta.json"]


def test_scan_of_a_missing_directory_is_empty(tmp_path: Path) -> None:
    assert scan(tmp_path / "nope") == {}


@pytest.mark.parametrize("fmt", FORMATS)
def test_rewriting_a_group_replaces_it(fmt: str, tmp_path: Path) -> None:
    write(tmp_path, fmt, 0, size=10)
    write(tmp_path, fmt, 1, size=10)
    w = PartWriter(tmp_path, fmt, FIELDS)  # type: ignore[arg-type]
    trimmed = meta(1, 10, 6, rows=10, trimmed=True)
    w.write(trimmed, values(10, 6))
    assert scan(tmp_path)[1] == trimmed
    assert read_group(tmp_path, 1) == values(10, 6)
    assert len(load(tmp_path)) == 16
    assert not [n for n in names(tmp_path) if n.endswith(".tmp")]


def test_update_rewrites_a_column_of_a_written_group(tmp_path: Path) -> None:
    write(tmp_path, "parquet", 0)
    cols = read_group(tmp_path, 0)
    cols["text"] = [f"new {i}" for i in range(4)]
    m = scan(tmp_path)[0]
    m.columns = {**m.columns, "text": "fp-text-2"}
    PartWriter(tmp_path, "parquet", FIELDS).write(m, cols)
    assert scan(tmp_path)[0].columns["text"] == "fp-text-2"
    assert [r["text"] for r in load(tmp_path)] == [f"new {i}" for i in range(4)]
    assert [r["n"] for r in load(tmp_path)] == values(0, 4)["n"]


def test_rewriting_in_the_other_format_leaves_one_data_file(tmp_path: Path) -> None:
    write(tmp_path, "parquet", 0)
    write(tmp_path, "jsonl", 0)
    assert names(tmp_path) == ["part-00000.jsonl", "part-00000.meta.json"]
    assert load(tmp_path) == rows_of(values(0, 4))


def test_remove_groups_deletes_parts_not_kept(tmp_path: Path) -> None:
    for rg in range(4):
        write(tmp_path, "jsonl", rg)
    (tmp_path / "part-00005.meta.json").write_text("{}")  # incomplete parts go too
    assert remove_groups(tmp_path, lambda rg: rg < 2) == [2, 3, 5]
    assert list(scan(tmp_path)) == [0, 1]
    assert len(names(tmp_path)) == 4
    assert remove_groups(tmp_path / "nope", lambda rg: False) == []


# -- manifest -------------------------------------------------------------------------------


def test_manifest_round_trip_and_absence(tmp_path: Path) -> None:
    assert read_manifest(tmp_path) is None
    manifest = {"version": 1, "columns": ["a", "b"], "seed": 7, "note": "ü"}
    write_manifest(tmp_path / "new", manifest)
    assert read_manifest(tmp_path / "new") == manifest
    assert names(tmp_path / "new") == ["manifest.json"]


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "\xff"])
def test_corrupt_manifest_is_a_usage_error_naming_it(text: str, tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(text, encoding="latin-1")
    with pytest.raises(UsageError, match=r"manifest\.json: corrupt"):
        read_manifest(tmp_path)


def test_load_of_a_build_with_only_a_manifest_is_empty(tmp_path: Path) -> None:
    write_manifest(tmp_path, {"version": 1})
    assert load(tmp_path) == []


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_write_refuses_wrong_value_counts(fmt: str, tmp_path: Path) -> None:
    w = PartWriter(tmp_path, fmt, ["a", "b"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"column 'b' has 2 values, not 3"):
        w.write(meta(0, 0, 3), {"a": [1, 2, 3], "b": [1, 2]})
    with pytest.raises(ValueError, match=r"column 'b' is missing"):
        w.write(meta(0, 0, 3), {"a": [1, 2, 3]})
    with pytest.raises(ValueError, match="not in the output"):
        w.write(meta(0, 0, 1), {"a": [1], "b": [2], "c": [3]})
    with pytest.raises(ValueError, match="out of order"):
        w.write(GroupMeta(0, 0, 3, [2, 1], {}, {}), {"a": [1, 2], "b": [1, 2]})
    assert names(tmp_path) == []  # nothing written by a refused write


def test_writer_refuses_bad_format_and_fields(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown output format 'csv'"):
        PartWriter(tmp_path, "csv", ["a"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unique"):
        PartWriter(tmp_path, "jsonl", ["a", "a"])


def test_load_of_a_directory_that_is_not_a_build(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("a\n1\n")
    with pytest.raises(UsageError, match="not a table build") as info:
        load(tmp_path)
    assert str(tmp_path) in str(info.value)
    with pytest.raises(UsageError, match="not a directory"):
        load(tmp_path / "data.csv")


def test_read_group_of_a_missing_group(tmp_path: Path) -> None:
    write(tmp_path, "jsonl", 0)
    with pytest.raises(UsageError, match="row group 1 is not written"):
        read_group(tmp_path, 1)


def test_damaged_data_file_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    path = write(tmp_path, "jsonl", 0)
    size = path.stat().st_size
    path.write_bytes(b"x" * size)  # same size, so the group still looks complete
    with pytest.raises(UsageError, match=r"part-00000\.jsonl: not a readable JSONL part"):
        load(tmp_path)


def test_jsonl_part_with_a_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = write(tmp_path, "jsonl", 0, size=1)
    size = path.stat().st_size
    path.write_bytes(b"[1]".ljust(size - 1) + b"\n")
    with pytest.raises(UsageError, match="a line is not a JSON object"):
        read_group(tmp_path, 0)


def test_group_meta_with_unordered_rows_cannot_be_stored() -> None:
    with pytest.raises(ValueError, match="out of order"):
        GroupMeta(0, 0, 5, [3, 1], {}, {}).to_json()


# -- pyarrow stays optional -----------------------------------------------------------------


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_importing_the_table_modules_does_not_import_pyarrow() -> None:
    res = run_python(
        "import sys, conveyor.table.output, conveyor.table.samplers\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pyarrow'))"
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_jsonl_works_without_pyarrow(tmp_path: Path) -> None:
    code = f"""
import sys
sys.modules["pyarrow"] = None  # any import of pyarrow now raises ImportError
from pathlib import Path
from conveyor.errors import UsageError
from conveyor.table.output import GroupMeta, PartWriter, load, scan
out = Path({str(tmp_path)!r})
PartWriter(out, "jsonl", ["a"]).write(GroupMeta(0, 0, 2, [0, 1], {{}}, {{}}), {{"a": [1, None]}})
assert load(out) == [{{"a": 1}}, {{"a": None}}], load(out)
assert list(scan(out)) == [0]
try:
    PartWriter(out, "parquet", ["a"])
except UsageError as e:
    print(e)
"""
    res = run_python(code)
    assert res.returncode == 0, res.stderr
    assert "writing Parquet needs pyarrow" in res.stdout


def test_group_meta_dropped_rows_stored_as_ranges_and_optional() -> None:
    """Which column dropped which rows, as ranges; an older sidecar without it loads as
    ``None`` (not known), and rows outside the group are refused."""
    m = GroupMeta(0, 10, 10, [10, 11, 15], {"a": {"x": 4}, "b": {"y": 3}},
                  {"a": "f"}, dropped_rows={"a": [12, 13, 14, 19], "b": [16, 17, 18]})  # fmt: skip
    d = json.loads(m.to_json())
    assert d["dropped_rows"] == {"a": [[12, 15], [19, 20]], "b": [[16, 19]]}
    assert GroupMeta.from_json(m.to_json()) == m
    del d["dropped_rows"]
    assert GroupMeta.from_dict(d).dropped_rows is None
    assert "dropped_rows" not in GroupMeta.from_dict(d).to_dict()
    with pytest.raises(ValueError, match="dropped by 'a' is out of order or outside"):
        GroupMeta(0, 10, 10, [], {}, {}, dropped_rows={"a": [20]}).to_json()
