"""A PostgreSQL store behind password authentication: every connection a worker makes (the run's,
the heartbeat's) logs in with the URL's password. The store shows that URL with the password
as ``***`` in its messages; the heartbeat used to open its connection from that shown URL and
the worker failed to start ("password authentication failed")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pg import PgServer

PASSWORD = "s3cret-pw"


@pytest.fixture
def password_url(pg_server: PgServer) -> str:
    """A database whose owner ``pwuser`` must give its password over the server's socket."""
    hba = pg_server.data / "pg_hba.conf"
    rule = "local all pwuser scram-sha-256\n"
    if rule not in hba.read_text():
        pg_server.sql("postgres", "SET password_encryption = 'scram-sha-256'; "
                      f"CREATE ROLE pwuser LOGIN PASSWORD '{PASSWORD}'")  # fmt: skip
        hba.write_text(rule + hba.read_text())  # the first matching line wins
        pg_server.sql("postgres", "SELECT pg_reload_conf()")
    url = pg_server.new_database()
    name = url.split("@/", 1)[1].split("?", 1)[0]
    pg_server.sql("postgres", f"ALTER DATABASE {name} OWNER TO pwuser")
    pg_server.sql(name, "ALTER SCHEMA public OWNER TO pwuser")
    return f"postgresql://pwuser:{PASSWORD}@/{name}?host={pg_server.sock}"


def test_a_worker_logs_in_with_the_password_on_every_connection(
    password_url: str, tmp_path: Path
) -> None:
    without = password_url.replace(f":{PASSWORD}@", "@")
    refused = subprocess.run([sys.executable, "-m", "conveyor.cli", "status", "--db", without],
                             cwd=tmp_path, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert refused.returncode == 2 and "password" in refused.stderr  # the server asks for it
    (tmp_path / "g.json").write_text(json.dumps({"tasks": [{"id": "a"}, {"id": "b"}]}))
    for args in (["submit", "g.json"], ["worker", "--idle-exit", "0"]):
        done = subprocess.run([sys.executable, "-m", "conveyor.cli", *args, "--db", password_url],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert PASSWORD not in done.stderr + done.stdout
    assert "2 done" in done.stderr
