"""The warning for a SQLite store on a network filesystem: ``/proc/mounts`` text as Linux
writes it (escaped spaces, a mount point mounted over, bind mounts), and the real commands."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conveyor.store.sharedfs import mount_of, network_fs_warning, sqlite_fs_warning

MOUNTS = r"""sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
/dev/sda1 / ext4 rw,relatime,errors=remount-ro 0 0
tmpfs /tmp tmpfs rw,nosuid,nodev 0 0
nas:/export/home /home nfs4 rw,relatime,vers=4.2,rsize=1048576,wsize=1048576,hard,proto=tcp 0 0
/dev/sdb1 /home/alice/local ext4 rw,relatime 0 0
//files/share /mnt/my\040share cifs rw,relatime,vers=3.1.1 0 0
10.0.0.5@o2ib:/scratch /scratch lustre rw,flock,lazystatfs 0 0
user@host:/data /mnt/sshfs fuse.sshfs rw,nosuid,nodev,relatime,user_id=0 0 0
/dev/sdc1 /scratch/local xfs rw,relatime 0 0
"""


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/home/bob/run.db", ("/home", "nfs4")),
        ("/home/alice/local/run.db", ("/home/alice/local", "ext4")),  # mounted inside the NFS
        ("/homework/run.db", ("/", "ext4")),  # a prefix of a name is not a parent folder
        ("/mnt/my share/run.db", ("/mnt/my share", "cifs")),  # \040 is a space
        ("/scratch/x/run.db", ("/scratch", "lustre")),
        ("/scratch/local/run.db", ("/scratch/local", "xfs")),
        ("/tmp/run.db", ("/tmp", "tmpfs")),
    ],
)
def test_mount_of_picks_the_innermost_mount(path: str, expected: tuple[str, str]) -> None:
    assert mount_of(path, MOUNTS) == expected


def test_mount_of_takes_the_last_of_two_mounts_on_one_point() -> None:
    over = MOUNTS + "nas2:/home /home nfs rw 0 0\n/dev/sdd1 /home ext4 rw 0 0\n"
    assert mount_of("/home/bob/run.db", over) == ("/home", "ext4")


@pytest.mark.parametrize(
    ("path", "network"),
    [("/home/bob/run.db", True), ("/mnt/my share/r.db", True), ("/scratch/r.db", True),
     ("/mnt/sshfs/r.db", True), ("/home/alice/local/r.db", False), ("/tmp/r.db", False),
     ("/scratch/local/r.db", False)],
)  # fmt: skip
def test_network_fs_warning_names_the_filesystem_and_postgresql(path: str, network: bool) -> None:
    warning = network_fs_warning(path, MOUNTS)
    if not network:
        assert warning is None
        return
    assert warning is not None and "\n" not in warning
    assert path in warning and "postgresql://" in warning


def test_sqlite_fs_warning_reads_a_mounts_file_and_ignores_other_urls(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/sda1 / ext4 rw 0 0\nnas:/x {tmp_path} nfs rw 0 0\n")
    warning = sqlite_fs_warning(f"sqlite:///{tmp_path}/run.db", str(mounts))
    assert warning is not None and "(nfs at" in warning
    assert sqlite_fs_warning("postgresql://localhost/x", str(mounts)) is None
    assert sqlite_fs_warning(f"sqlite:///{tmp_path}/run.db", str(tmp_path / "absent")) is None


def test_submit_and_worker_on_a_local_disk_print_no_warning(tmp_path: Path) -> None:
    # tmp_path is on a local filesystem here; a network one would print the warning line
    assert sqlite_fs_warning(f"sqlite:///{tmp_path}/run.db") is None
    (tmp_path / "g.json").write_text('{"name": "g", "tasks": [{"id": "a", "cmd": "true"}]}')
    db = f"sqlite:///{tmp_path}/run.db"
    for argv in (["submit", "g.json", "--db", db], ["worker", "--db", db]):
        out = subprocess.run([sys.executable, "-m", "conveyor.cli", *argv], cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert "warning" not in out.stderr
