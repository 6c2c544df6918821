"""Whether a SQLite store sits on a network filesystem, where its file locks are not to be
trusted (NFS and the like: https://www.sqlite.org/faq.html#q5), so that ``conveyor worker``
and ``conveyor submit`` can say so and point to PostgreSQL.

``mount_of`` and ``network_fs_warning`` are pure (they take the text of ``/proc/mounts``);
``sqlite_fs_warning`` reads it.
"""

from __future__ import annotations

import os
import re

__all__ = ["NETWORK_FS", "mount_of", "network_fs_warning", "sqlite_fs_warning"]

#: Filesystem types (``/proc/mounts``' third field) shared over a network: SQLite's locking
#: is unsafe or unreliable on them when several hosts write one file.
NETWORK_FS = frozenset(
    {
        "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "lustre", "gpfs",
        "beegfs", "glusterfs", "fuse.glusterfs", "ceph", "fuse.ceph", "fuse.cephfs",
        "fuse.sshfs", "sshfs", "ocfs2", "gfs2", "panfs", "pvfs2", "orangefs", "fuse.s3fs",
        "fuse.rclone", "fuse.juicefs", "wekafs", "quobyte", "davfs", "fuse.davfs2",
    }
)  # fmt: skip

_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    """``/proc/mounts`` writes a space in a path as ``\\040`` (tab, newline, backslash too)."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def mount_of(path: str, mounts: str) -> tuple[str, str] | None:
    """``(mount point, fstype)`` of the mount holding the absolute ``path``, from the text of
    ``/proc/mounts``: the longest mount point that contains it (the last one mounted, if one
    point is mounted twice). ``None`` when no line matches."""
    best: tuple[str, str] | None = None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point, fstype = _unescape(fields[1]), fields[2]
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[0])):
            best = (point, fstype)
    return best


def network_fs_warning(path: str, mounts: str) -> str | None:
    """One warning line when the SQLite file at the absolute ``path`` is on a network
    filesystem, else ``None``."""
    found = mount_of(path, mounts)
    if found is None or found[1] not in NETWORK_FS:
        return None
    point, fstype = found
    return (
        f"conveyor: warning: the SQLite store {path} is on a network filesystem ({fstype} at "
        f"{point}); SQLite's file locking is not safe there when workers on several hosts share "
        "it: use PostgreSQL (--db postgresql://...)"
    )


def sqlite_fs_warning(url: str, mounts_file: str = "/proc/mounts") -> str | None:
    """``network_fs_warning`` for a store URL (``None`` for anything but ``sqlite://``, or
    where ``/proc/mounts`` cannot be read)."""
    if not url.startswith("sqlite:"):
        return None
    from conveyor.errors import StoreError
    from conveyor.store.urls import sqlite_target

    try:
        path = sqlite_target(url)[0]
    except StoreError:
        return None  # the command that opens it says what is wrong
    # The file may not exist yet: its folder decides (symlinks resolved, as the kernel does).
    real = os.path.realpath(path)
    try:
        with open(mounts_file, encoding="utf-8", errors="replace") as f:
            mounts = f.read()
    except OSError:
        return None
    return network_fs_warning(real, mounts)
