"""A throwaway PostgreSQL server for the test session: ``initdb`` + ``pg_ctl`` from
``/usr/lib/postgresql/*/bin`` on a unix socket in a temp dir, run as the ``postgres`` user
(``runuser``) when the tests run as root. A template database is cloned per test."""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

_counter = itertools.count()


def find_bin() -> Path | None:
    """The newest PostgreSQL ``bin`` directory with ``initdb`` and ``pg_ctl``, if any."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PgServer:
    """Start with ``start()``; ``new_database()`` returns a URL of a fresh database."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="conveyor-pg-"))
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.as_root = os.geteuid() == 0
        self.log = self.root / "server.log"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)

    def start(self) -> None:
        self.sock.mkdir()
        if self.as_root:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.sock, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync",
                  "-E", "UTF8")  # fmt: skip
        opts = (
            f"-k {self.sock} -c listen_addresses='' -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.log), "-w", "start")
        self.sql("postgres", "CREATE DATABASE conveyor_template")

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@/{dbname}?host={self.sock}"

    def sql(self, dbname: str, statement: str) -> None:
        import psycopg

        with psycopg.connect(self.url(dbname), autocommit=True) as conn:
            conn.execute(statement)

    def new_database(self) -> str:
        name = f"t{os.getpid()}_{next(_counter)}"
        self.sql("postgres", f"CREATE DATABASE {name} TEMPLATE conveyor_template")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except (subprocess.SubprocessError, OSError):
            pass
        shutil.rmtree(self.root, ignore_errors=True)
