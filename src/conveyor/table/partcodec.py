"""The bytes of one part file: row-group columns to Parquet or JSONL and back.

Parquet goes through pyarrow (imported inside the functions only): types are inferred per
column; a column pyarrow cannot type is stored as JSON text and named in the schema metadata
under ``JSON_COLUMNS_KEY``, and decoded back on reading. JSONL is one object per row, the
fields in order (``json.dumps(..., ensure_ascii=False, default=str)``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from conveyor.errors import UsageError

if TYPE_CHECKING:  # annotations only: never imported at run time from here
    import pyarrow as pa

__all__ = [
    "JSON_COLUMNS_KEY",
    "Format",
    "arrow_table",
    "concat_parquet",
    "decode_part",
    "encode_part",
]

Format = Literal["parquet", "jsonl"]
JSON_COLUMNS_KEY = b"conveyor.json_columns"
"""Parquet schema metadata: the columns stored as JSON text because pyarrow could not type them."""


def _json_text(values: list[Any]) -> list[str | None]:
    return [None if v is None else json.dumps(v, ensure_ascii=False, default=str) for v in values]


def arrow_table(
    names: list[str], columns: dict[str, list[Any]], nested_as_json: bool = False
) -> pa.Table:
    """One Arrow table, types inferred per column. A column pyarrow cannot type -- or, with
    ``nested_as_json``, any nested one -- is stored as JSON text and listed in the metadata.
    Nested columns are checked to round-trip: pyarrow fills a struct's missing keys with None."""
    import pyarrow as pa

    arrays = []
    as_json: list[str] = []
    for name in names:
        values = columns[name]
        try:
            arr = pa.array(values)
            if pa.types.is_nested(arr.type) and (nested_as_json or arr.to_pylist() != values):
                raise ValueError("nested values that do not round-trip")
        except (pa.ArrowException, ValueError, TypeError, OverflowError):
            arr = pa.array(_json_text(values), type=pa.string())
            as_json.append(name)
        arrays.append(arr)
    table = pa.Table.from_arrays(arrays, names=names)
    if as_json:
        table = table.replace_schema_metadata({JSON_COLUMNS_KEY: json.dumps(as_json).encode()})
    return table


def _parquet_bytes(names: list[str], columns: dict[str, list[Any]]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    def encode(nested_as_json: bool) -> bytes:
        sink = pa.BufferOutputStream()
        pq.write_table(arrow_table(names, columns, nested_as_json), sink)
        return bytes(sink.getvalue().to_pybytes())

    try:
        return encode(nested_as_json=False)
    except pa.ArrowException:  # e.g. an empty dict infers struct<>, which Parquet cannot hold
        return encode(nested_as_json=True)


def _jsonl_bytes(names: list[str], columns: dict[str, list[Any]], n: int) -> bytes:
    lines = (
        json.dumps({f: columns[f][i] for f in names}, ensure_ascii=False, default=str) + "\n"
        for i in range(n)
    )
    return "".join(lines).encode("utf-8")


def _decoded(table: pa.Table) -> dict[str, list[Any]]:
    meta = table.schema.metadata or {}
    as_json = set(json.loads(meta.get(JSON_COLUMNS_KEY, b"[]")))
    out: dict[str, list[Any]] = {}
    for name in table.column_names:
        values = table.column(name).to_pylist()
        out[name] = (
            [None if v is None else json.loads(v) for v in values] if name in as_json else values
        )
    return out


def encode_part(fmt: Format, names: list[str], columns: dict[str, list[Any]], n: int) -> bytes:
    """The file bytes of ``n`` rows; every ``columns[name]`` holds ``n`` values."""
    if fmt == "parquet":
        return _parquet_bytes(names, columns)
    return _jsonl_bytes(names, columns, n)


def decode_part(path: Path, fields: list[str]) -> dict[str, list[Any]]:
    """The columns of a part file (by suffix); a JSONL part's are ``fields``, in that order."""
    if path.suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise UsageError(
                f"{path}: reading Parquet needs pyarrow (pip install -e '.[parquet]')"
            ) from None
        try:
            return _decoded(pq.read_table(path))
        except (pa.ArrowException, OSError, ValueError) as e:
            raise UsageError(f"{path}: not a readable Parquet file ({e})") from None
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, ValueError) as e:
        raise UsageError(f"{path}: not a readable JSONL part ({e})") from None
    if not all(isinstance(row, dict) for row in rows):
        raise UsageError(f"{path}: not a readable JSONL part (a line is not a JSON object)")
    return {f: [row.get(f) for row in rows] for f in fields}


def concat_parquet(paths: list[Path]) -> pa.Table | None:
    """Parquet parts as one table without a detour through Python values, or None when that
    cannot give what ``arrow_table`` would: a part holds JSON-text columns, or the parts' types
    do not unify (e.g. int in one, string in another)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        tables = [pq.read_table(p) for p in paths]
        if any(JSON_COLUMNS_KEY in (t.schema.metadata or {}) for t in tables):
            return None
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowException, OSError):
        return None
