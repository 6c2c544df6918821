"""Reading a seed file's columns: Parquet (pyarrow, imported here only when needed), CSV (the
csv module: every value a string) and JSONL (the union of the objects' keys, missing ones None).
Pure over bytes: the caller reads the file (once) and digests the same bytes."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from conveyor.errors import UsageError

__all__ = ["read_seed_columns"]


def read_seed_columns(path: Path, raw: bytes) -> dict[str, list[Any]]:
    """The columns of a seed file's bytes, by the path's suffix (``.parquet``; ``.csv``; else
    JSONL). ``UsageError`` naming ``path`` if they cannot be read."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _parse_parquet(path, raw)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(f"seed file {path}: not UTF-8 text") from None
    if suffix == ".csv":
        return _parse_csv(path, text)
    return _parse_jsonl(path, text)


def _parse_parquet(path: Path, raw: bytes) -> dict[str, list[Any]]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError(
            f"seed file {path}: reading Parquet needs pyarrow (pip install -e '.[parquet]')"
        ) from None
    try:
        table = pq.read_table(pa.BufferReader(raw))
    except (pa.ArrowException, OSError) as e:
        raise UsageError(f"seed file {path}: not a readable Parquet file ({e})") from None
    return {name: table.column(name).to_pylist() for name in table.column_names}


def _parse_csv(path: Path, text: str) -> dict[str, list[Any]]:
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if not header:
        raise UsageError(f"seed file {path}: no header row")
    data: dict[str, list[Any]] = {name: [] for name in header}
    for lineno, row in enumerate(reader, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise UsageError(
                f"seed file {path}: line {lineno} has {len(row)} fields, the header {len(header)}"
            )
        for name, value in zip(header, row, strict=True):
            data[name].append(value)
    return data


def _parse_jsonl(path: Path, text: str) -> dict[str, list[Any]]:
    rows: list[dict[str, Any]] = []
    names: dict[str, None] = {}  # the union of keys, in order of first appearance
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"seed file {path}: line {lineno} is not JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise UsageError(f"seed file {path}: line {lineno} is not a JSON object")
        names.update(dict.fromkeys(obj))
        rows.append(obj)
    return {name: [row.get(name) for row in rows] for name in names}
