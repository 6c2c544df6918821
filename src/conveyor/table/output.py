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

Size: writing, finding, checking and reading back row groups, in two formats, share the sidecar
and naming rules here: the directory's format has one home.
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
from conveyor.table.partcodec import (
    JSON_COLUMNS_KEY,
    Format,
    arrow_table,
    concat_parquet,
    decode_part,
    encode_part,
)

if TYPE_CHECKING:  # annotations only: never imported at run time from here
    import pyarrow as pa

__all__ = [
    "JSON_COLUMNS_KEY",
    "Format",
    "GroupMeta",
    "PartWriter",
    "load",
    "read_group",
    "read_manifest",
    "remove_groups",
    "scan",
    "write_manifest",
]

MANIFEST = "manifest.json"

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
    #: per column, the global indices of the rows it dropped, ascending (``--update`` gives
    #: them another chance when the column changes); ``None``: not recorded (an older sidecar)
    dropped_rows: dict[str, list[int]] | None = None

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
        for c, rows in (self.dropped_rows or {}).items():
            prev = self.start - 1
            for r in rows:
                if not prev < r < self.start + self.rows:
                    raise ValueError(
                        f"row group {self.row_group}: row {r} dropped by {c!r} is out of order"
                        f" or outside [{self.start}, {self.start + self.rows})"
                    )
                prev = r

    def to_dict(self) -> dict[str, Any]:
        self.check()
        return {
            "row_group": self.row_group,
            "start": self.start,
            "rows": self.rows,
            "kept_rows": _ranges(self.kept_rows),
            "dropped": self.dropped,
            "columns": self.columns,
            "trimmed": self.trimmed,
            **(
                {}
                if self.dropped_rows is None
                else {"dropped_rows": {c: _ranges(r) for c, r in self.dropped_rows.items()}}
            ),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GroupMeta:
        """Raise ``ValueError`` on anything malformed (extra keys are ignored)."""
        try:
            kept = [r for a, b in d["kept_rows"] for r in range(int(a), int(b))]
            by = d.get("dropped_rows")
            dropped_rows = (
                None
                if by is None
                else {
                    str(c): [r for a, b in runs for r in range(int(a), int(b))]
                    for c, runs in by.items()
                }
            )
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
                dropped_rows=dropped_rows,
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
                    "writing Parquet needs pyarrow (pip install -e '.[parquet]')"
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
            if f not in columns:
                raise ValueError(f"row group {meta.row_group}: column {f!r} is missing")
            if len(columns[f]) != meta.kept:
                raise ValueError(
                    f"row group {meta.row_group}: column {f!r} has {len(columns[f])} values,"
                    f" not {meta.kept}"
                )
        data = encode_part(self.fmt, self.fields, columns, meta.kept)
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


def _group(out: Path, rg: int) -> _Group | None:
    """Row group ``rg`` if it is complete on disk (its sidecar alone is read)."""
    got = _read_sidecar(out / f"{_part(rg)}.meta.json")
    if got is None:
        return None
    meta, data = got
    named = _DATA.fullmatch(data["file"])
    if named is None or not meta.row_group == rg == int(named.group(1)):
        return None
    path = out / data["file"]
    try:
        if path.stat().st_size != data["bytes"]:
            return None
    except OSError:
        return None
    return _Group(meta, path, [str(f) for f in data["fields"]])


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
        named = _DATA.fullmatch(data["file"])
        if named is None or not meta.row_group == int(m.group(1)) == int(named.group(1)):
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
    columns = decode_part(group.data, group.fields)
    n = group.meta.kept
    if list(columns) != group.fields or any(len(v) != n for v in columns.values()):
        raise UsageError(f"{group.data}: does not hold the {n} rows its sidecar records")
    return columns


def read_group(out: Path, rg: int) -> dict[str, list[Any]]:
    """The column values of one complete row group, in the order its writer's fields had."""
    group = _group(Path(out), rg)
    if group is None:
        raise UsageError(f"{out}: row group {rg} is not written")
    return _read(group)


def read_meta(out: Path, rg: int) -> GroupMeta | None:
    """The sidecar of row group ``rg`` if the group is complete on disk, else ``None``."""
    group = _group(Path(out), rg)
    return None if group is None else group.meta


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


def _same_parquet_fields(groups: list[_Group]) -> bool:
    first = groups[0].fields
    return all(g.data.suffix == ".parquet" and g.fields == first for g in groups)


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
    ordered = [groups[rg] for rg in sorted(groups)]
    if arrow and ordered and _same_parquet_fields(ordered):
        table = concat_parquet([g.data for g in ordered])  # fast: no Python values
        if table is not None and table.num_rows == sum(g.meta.kept for g in ordered):
            return table
    parts = [_read(g) for g in ordered]
    names = _union(parts)
    if arrow:
        columns: dict[str, list[Any]] = {n: [] for n in names}
        for part, group in zip(parts, ordered, strict=True):
            for n in names:
                columns[n].extend(part[n] if n in part else [None] * group.meta.kept)
        return arrow_table(names, columns)
    rows: list[dict[str, Any]] = []
    for part in parts:
        fields = list(part)
        rows.extend(
            dict(zip(fields, values, strict=True)) for values in zip(*part.values(), strict=True)
        )
    return rows
