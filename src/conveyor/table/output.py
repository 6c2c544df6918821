"""A table build's output directory: row groups written atomically, found again, read back.

Layout of ``out``::

    manifest.json              the build's manifest (written by the builder, opaque here)
    part-00000.meta.json       a row group's sidecar: GroupMeta plus the data file's name,
    part-00000.parquet         size, digest and fields; then its data (or ``.jsonl``)

The files are the truth: a row group is done exactly when its sidecar parses and names a data
file that is present with the recorded size. Every file is written to a temp file in ``out``,
fsynced, then ``os.replace``d; the sidecar goes first, so a crash leaves at worst a sidecar
without data (ignored and removed by ``scan``). Rewriting a group first removes the old data
file, so a crash can never pair a new sidecar with old data.

pyarrow (``conveyor[parquet]``) is imported only inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from conveyor.errors import UsageError

if TYPE_CHECKING:  # annotations only: never imported at run time from here
    import pyarrow as pa

__all__ = [
    "GroupMeta",
    "PartWriter",
    "load",
    "read_group",
    "read_manifest",
    "remove_groups",
    "scan",
    "write_manifest",
]

Format = Literal["parquet", "jsonl"]
MANIFEST = "manifest.json"
JSON_COLUMNS_KEY = b"conveyor.json_columns"
"""Parquet schema metadata: the columns stored as JSON text because pyarrow could not type them."""

_SIDECAR = re.compile(r"part-(\d{5,})\.meta\.json")
_DATA = re.compile(r"part-(\d{5,})\.(parquet|jsonl)")
_TEMP = re.compile(r"\.(part-\d{5,}\..+|manifest\.json)\.[^.]+\.tmp")


def _part(rg: int) -> str:
    return f"part-{rg:05d}"


def _ranges(rows: list[int]) -> list[list[int]]:
    """Ascending ints as half-open ``[a, b)`` runs: O(n), and tiny when most rows are kept."""
    out: list[list[int]] = []
    for r in rows:
        if out and out[-1][1] == r:
            out[-1][1] = r + 1
        else:
            out.append([r, r + 1])
    return out


@dataclass
class GroupMeta:
    """What one written row group holds. ``kept_rows`` are the global indices written, ascending."""

    row_group: int
    start: int
    rows: int
    kept_rows: list[int]
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)
    columns: dict[str, str] = field(default_factory=dict)
    trimmed: bool = False

    @property
    def kept(self) -> int:
        return len(self.kept_rows)

    def check(self) -> None:
        """Raise ``ValueError`` unless the indices are consistent."""
        if self.row_group < 0 or self.start < 0 or self.rows < 0:
            raise ValueError(f"row group {self.row_group}: negative index or count")
        prev = self.start - 1
        for r in self.kept_rows:
            if not prev < r < self.start + self.rows:
                raise ValueError(
                    f"row group {self.row_group}: kept row {r} is out of order or outside"
                    f" [{self.start}, {self.start + self.rows})"
                )
            prev = r

    def to_dict(self) -> dict[str, Any]:
        return {
            "row_group": self.row_group,
            "start": self.start,
            "rows": self.rows,
            "kept_rows": _ranges(self.kept_rows),
            "dropped": self.dropped,
            "columns": self.columns,
            "trimmed": self.trimmed,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GroupMeta:
        """Raise ``ValueError`` on anything malformed (extra keys are ignored)."""
        try:
            kept = [r for a, b in d["kept_rows"] for r in range(int(a), int(b))]
            meta = cls(
                row_group=int(d["row_group"]),
                start=int(d["start"]),
                rows=int(d["rows"]),
                kept_rows=kept,
                dropped={
                    str(c): {str(k): int(n) for k, n in reasons.items()}
                    for c, reasons in d["dropped"].items()
                },
                columns={str(c): str(fp) for c, fp in d["columns"].items()},
                trimmed=bool(d.get("trimmed", False)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"not a row group's metadata ({e!r})") from None
        meta.check()
        return meta

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> GroupMeta:
        try:
            d = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"not JSON ({e})") from None
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        return cls.from_dict(d)


# -- atomic files ---------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open or fsync a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a fsynced temp file in the same directory and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


# -- encoding -------------------------------------------------------------------------------


def _json_text(values: list[Any]) -> list[str | None]:
    return [None if v is None else json.dumps(v, ensure_ascii=False, default=str) for v in values]


def _arrow_table(names: list[str], columns: dict[str, list[Any]], nested_as_json: bool) -> pa.Table:
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
        pq.write_table(_arrow_table(names, columns, nested_as_json), sink)
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


# -- writing --------------------------------------------------------------------------------


class PartWriter:
    """Writes row groups of one build to ``out`` in ``fmt``; ``fields`` are its output columns."""

    def __init__(self, out: Path, fmt: Format, fields: list[str]) -> None:
        if fmt not in ("parquet", "jsonl"):
            raise UsageError(f"unknown output format {fmt!r} (use parquet or jsonl)")
        if not fields or len(set(fields)) != len(fields):
            raise ValueError(f"output fields must be non-empty and unique: {fields}")
        if fmt == "parquet":
            try:
                import pyarrow.parquet  # noqa: F401 -- fail at the start, not at the first write
            except ImportError:
                raise UsageError(
                    "writing Parquet needs pyarrow (pip install 'conveyor[parquet]')"
                ) from None
        self.out = Path(out)
        self.fmt: Format = fmt
        self.fields = list(fields)
        self.out.mkdir(parents=True, exist_ok=True)

    def write(self, meta: GroupMeta, columns: dict[str, list[Any]]) -> Path:
        """Write (or replace) one row group; returns its data file."""
        meta.check()
        unknown = sorted(set(columns) - set(self.fields))
        if unknown:
            raise ValueError(f"row group {meta.row_group}: columns not in the output: {unknown}")
        for f in self.fields:
            got = len(columns[f]) if f in columns else None
            if got != meta.kept:
                raise ValueError(
                    f"row group {meta.row_group}: column {f!r} has {got} values, not {meta.kept}"
                )
        if self.fmt == "parquet":
            data = _parquet_bytes(self.fields, columns)
        else:
            data = _jsonl_bytes(self.fields, columns, meta.kept)
        part = _part(meta.row_group)
        path = self.out / f"{part}.{self.fmt}"
        sidecar = {
            **meta.to_dict(),
            "data": {
                "file": path.name,
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "fields": self.fields,
            },
        }
        for old in ("parquet", "jsonl"):  # a rewrite: never pair the new sidecar with old data
            _unlink(self.out / f"{part}.{old}")
        _atomic_write(self.out / f"{part}.meta.json", json.dumps(sidecar).encode())
        _atomic_write(path, data)
        return path


# -- finding and reading --------------------------------------------------------------------


@dataclass(frozen=True)
class _Group:
    meta: GroupMeta
    data: Path
    fields: list[str]


def _read_sidecar(path: Path) -> tuple[GroupMeta, dict[str, Any]] | None:
    try:
        d = json.loads(path.read_bytes())
        meta = GroupMeta.from_dict(d)
        data = d["data"]
        if not (isinstance(data["file"], str) and isinstance(data["bytes"], int)):
            return None
        if not isinstance(data["fields"], list):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta, data


def _groups(out: Path, clean: bool) -> dict[int, _Group]:
    """The complete row groups in ``out``; with ``clean``, delete temp files and every part
    file that does not belong to a complete group."""
    if not out.is_dir():
        return {}
    names = [p.name for p in out.iterdir()]
    found: dict[int, _Group] = {}
    for name in names:
        m = _SIDECAR.fullmatch(name)
        if not m:
            continue
        got = _read_sidecar(out / name)
        if got is None:
            continue
        meta, data = got
        path = out / data["file"]
        if meta.row_group != int(m.group(1)) or _DATA.fullmatch(data["file"]) is None:
            continue
        try:
            complete = path.stat().st_size == data["bytes"]
        except OSError:
            complete = False
        if complete:
            found[meta.row_group] = _Group(meta, path, [str(f) for f in data["fields"]])
    if clean:
        keep = {g.data.name for g in found.values()}
        keep |= {f"{_part(rg)}.meta.json" for rg in found}
        for name in names:
            if _TEMP.fullmatch(name) or (
                (_SIDECAR.fullmatch(name) or _DATA.fullmatch(name)) and name not in keep
            ):
                _unlink(out / name)
    return found


def scan(out: Path) -> dict[int, GroupMeta]:
    """The complete row groups on disk, by index. Cleans up after a crashed write (temp files,
    data without sidecar, sidecar without data): call it only while no writer is running."""
    return {rg: g.meta for rg, g in sorted(_groups(Path(out), clean=True).items())}


def _read(group: _Group) -> dict[str, list[Any]]:
    path = group.data
    if path.suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise UsageError(
                f"{path}: reading Parquet needs pyarrow (pip install 'conveyor[parquet]')"
            ) from None
        try:
            columns = _decoded(pq.read_table(path))
        except (pa.ArrowException, OSError, ValueError) as e:
            raise UsageError(f"{path}: not a readable Parquet file ({e})") from None
    else:
        try:
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        except (OSError, ValueError) as e:
            raise UsageError(f"{path}: not a readable JSONL part ({e})") from None
        columns = {f: [row.get(f) for row in rows] for f in group.fields}
    n = group.meta.kept
    if list(columns) != group.fields or any(len(v) != n for v in columns.values()):
        raise UsageError(f"{path}: does not hold the {n} rows its sidecar records")
    return columns


def read_group(out: Path, rg: int) -> dict[str, list[Any]]:
    """The column values of one complete row group, in the order its writer's fields had."""
    group = _groups(Path(out), clean=False).get(rg)
    if group is None:
        raise UsageError(f"{out}: row group {rg} is not written")
    return _read(group)


def remove_groups(out: Path, keep: Callable[[int], bool]) -> list[int]:
    """Delete the part files (data and sidecar) of every row group ``keep`` rejects; returns
    the indices removed, ascending."""
    out = Path(out)
    if not out.is_dir():
        return []
    removed: set[int] = set()
    for p in out.iterdir():
        m = _DATA.fullmatch(p.name) or _SIDECAR.fullmatch(p.name)
        if m and not keep(int(m.group(1))):
            removed.add(int(m.group(1)))
            _unlink(p)
    if removed:
        _fsync_dir(out)
    return sorted(removed)


# -- manifest -------------------------------------------------------------------------------


def write_manifest(out: Path, manifest: dict[str, Any]) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    _atomic_write(out / MANIFEST, text.encode("utf-8"))


def read_manifest(out: Path) -> dict[str, Any] | None:
    path = Path(out) / MANIFEST
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise UsageError(f"{path}: cannot read ({e.strerror})") from None
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UsageError(f"{path}: corrupt (not JSON)") from None
    if not isinstance(manifest, dict):
        raise UsageError(f"{path}: corrupt (not a JSON object)")
    return manifest


# -- loading --------------------------------------------------------------------------------


def _union(groups: Iterable[dict[str, list[Any]]]) -> list[str]:
    names: dict[str, None] = {}
    for g in groups:
        names.update(dict.fromkeys(g))
    return list(names)


@overload
def load(path: str | Path, *, arrow: Literal[False] = False) -> list[dict[str, Any]]: ...
@overload
def load(path: str | Path, *, arrow: Literal[True]) -> pa.Table: ...
def load(path: str | Path, *, arrow: bool = False) -> list[dict[str, Any]] | pa.Table:
    """A build directory's rows in row order: a list of dicts, or with ``arrow`` one
    ``pyarrow.Table`` (types inferred as when writing; a column pyarrow cannot type stays JSON
    text, named in the schema metadata). Only complete groups are read; nothing is deleted."""
    out = Path(path)
    if not out.is_dir():
        raise UsageError(f"{out}: not a directory")
    groups = _groups(out, clean=False)
    if not groups and read_manifest(out) is None:
        raise UsageError(f"{out}: not a table build (no {MANIFEST}, no row groups)")
    parts = [_read(groups[rg]) for rg in sorted(groups)]
    names = _union(parts)
    if arrow:
        columns: dict[str, list[Any]] = {n: [] for n in names}
        for part, group in zip(parts, (groups[rg] for rg in sorted(groups)), strict=True):
            for n in names:
                columns[n].extend(part[n] if n in part else [None] * group.meta.kept)
        return _arrow_table(names, columns, nested_as_json=False)
    rows: list[dict[str, Any]] = []
    for part in parts:
        fields = list(part)
        rows.extend(
            dict(zip(fields, values, strict=True)) for values in zip(*part.values(), strict=True)
        )
    return rows
