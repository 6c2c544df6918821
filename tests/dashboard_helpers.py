"""Starting a real ``conveyor dashboard`` process on a real store, for the dashboard's tests."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: The secrets a graph of the tests carries: no page may show any of them.
SECRETS = ("s3cret-env-value", "sk-test-0123456789abcdef", "hunter2-password")


def secret_graph(path: Path, n: int = 6, sleep: float = 0.0) -> Path:
    """A graph of ``n`` tasks in two groups (``fn: time:sleep``), one of them with an ``env``
    value and credentials in its arguments, and a child of the first two."""
    tasks: list[dict[str, Any]] = [
        {"id": f"t{i}", "fn": "time:sleep", "args": [sleep], "group": "ab"[i % 2]} for i in range(n)
    ]
    tasks.append({"id": "secretive", "fn": "time:sleep", "args": [0.0],
                  "env": {"OPENAI_API_KEY": SECRETS[0]},
                  "meta": {"api_key": SECRETS[1], "password": SECRETS[2]},
                  "parents": ["t0", "t1"]})  # fmt: skip
    graph = {"name": "dash", "groups": {"a": {"weight": 2, "cap": 2}, "b": {"weight": 1}},
             "tasks": tasks}  # fmt: skip
    path.write_text(json.dumps(graph))
    return path


def cli(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


@contextmanager
def dashboard(db: str | None, *args: str, cwd: Path) -> Iterator[str]:
    """A ``conveyor dashboard`` process on a free port; yields its URL (with ``?token=`` when
    it prints one). Stopped with SIGTERM at the end."""
    store = [] if db is None else ["--db", db]
    proc = subprocess.Popen(
        [sys.executable, "-m", "conveyor.cli", "dashboard", *store, "--port", "0", *args],
        cwd=cwd, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # the process prints its URL once it listens
        m = re.search(r"(http://\S+)", line)
        assert m, f"dashboard did not start: {line}{proc.stderr.read() if not m else ''}"
        yield m.group(1)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def base(url: str) -> str:
    return url.split("?", 1)[0].rstrip("/")


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
    """Status, body and headers of a GET (an HTTP error's too)."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


def summary(url: str, **headers: str) -> dict[str, Any]:
    code, body, _ = get(base(url) + "/api/summary", headers)
    assert code == 200, body
    return dict(json.loads(body))
