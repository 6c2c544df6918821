"""Ctrl-C for real: start a process, wait until it is busy, send it SIGINT, collect its output."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from helpers import wait_until


def interrupt_when(
    argv: list[str], cwd: Path, ready: Callable[[], bool], what: str
) -> tuple[int, str, str]:
    """Run ``argv``, send SIGINT once ``ready()``; its exit code, stdout and stderr. The process
    is killed if it outlives the test."""
    return interrupt_once(argv, cwd, lambda _pid: ready(), what)


def interrupt_once(
    argv: list[str], cwd: Path, ready: Callable[[int], bool], what: str
) -> tuple[int, str, str]:
    """``interrupt_when`` with ``ready`` given the process's pid."""
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        wait_until(lambda: ready(proc.pid), what=what)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, stdout, stderr
