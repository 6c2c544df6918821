"""Which filesystem a path is on (Linux's mount table), to warn before SQLite is shared across
machines where its locking does not hold: SQLite's docs say POSIX locks are broken on many NFS
implementations, and a store there can be corrupted by workers on two nodes."""

from __future__ import annotations

from pathlib import Path

__all__ = ["UNSAFE_FOR_SQLITE", "filesystem_type", "mount_type", "unsafe_for_sqlite"]

#: Network filesystems whose locks SQLite cannot trust across machines.
UNSAFE_FOR_SQLITE = frozenset({"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs"})

MOUNTS = Path("/proc/self/mounts")


def mount_type(mounts: str, path: str) -> str | None:
    """The type of the mount holding absolute ``path`` in mount-table text (the longest
    mount point that is ``path`` or one of its parents)."""
    best: tuple[int, str] | None = None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) > best[0]):
            best = (len(point), fields[2])
    return None if best is None else best[1]


def filesystem_type(path: Path) -> str | None:
    """The filesystem type of ``path`` (``None`` where the mount table cannot be read)."""
    try:
        mounts = MOUNTS.read_text()
    except OSError:
        return None
    return mount_type(mounts, str(path.resolve()))


def unsafe_for_sqlite(kind: str) -> bool:
    return kind in UNSAFE_FOR_SQLITE
