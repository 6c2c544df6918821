"""A real Ray head node for the tests: ``ray start --head --block`` as a process of its own
session, so that stopping it (or killing it mid-run, as a lost cluster) ends every process it
started, and nothing else."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from helpers import wait_until


def ray_missing() -> str | None:
    """Why the Ray tests cannot run here, or ``None``."""
    if importlib.util.find_spec("ray") is None:
        return "Ray is not installed (pip install -e '.[dev]' brings it)"
    if shutil.which("ray") is None:
        return "the `ray` command is not on PATH"
    return None


def free_port() -> int:
    """A free port (for an address nothing should listen on)."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: all bound at once, so the kernel cannot hand one out twice
    (it did, one port at a time: Ray refused its own client server on the GCS's port)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class RayHead:
    """One single-node Ray cluster: ``cpus`` CPUs, a custom resource ``slot`` (1) and the node
    label ``zone=a``."""

    def __init__(self, cpus: int = 2) -> None:
        self.cpus = cpus
        self.port, self._client_port, self._agent_port = free_ports(3)
        self.address = f"127.0.0.1:{self.port}"
        # a short path: Ray's unix sockets live under it (at most 107 bytes)
        self.temp = Path(tempfile.mkdtemp(prefix="cvr", dir="/tmp"))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RayHead:
        cmd = [
            "ray", "start", "--head", "--block", f"--num-cpus={self.cpus}",
            f"--port={self.port}", "--node-ip-address=127.0.0.1",
            "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={self.temp}",
            f"--ray-client-server-port={self._client_port}",
            f"--dashboard-agent-listen-port={self._agent_port}", '--resources={"slot": 1}',
            "--labels=zone=a",
        ]  # fmt: skip
        log = open(self.temp / "head.log", "wb")  # noqa: SIM115 - the process keeps it
        self.proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            # no token authentication, whatever ~/.ray holds: the in-process driver connects
            # with a plain ray.init
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"},
        )  # fmt: skip
        log.close()
        wait_until(self._up, timeout=90, what=f"ray head at {self.address}", every=0.2)
        return self

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"ray start exited: {(self.temp / 'head.log').read_text()}")
        log = (self.temp / "head.log").read_text(errors="replace")
        return "block forever" in log  # printed once every process of the node is up

    def kill(self) -> None:
        """Kill every process of the cluster at once (SIGKILL): a lost cluster."""
        if self.proc is not None:
            try:  # the group, also when the head itself is gone and its children are not
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()

    def stop(self) -> None:
        """Stop the cluster and remove its files. SIGKILL to its process group at once: a test
        cluster keeps nothing worth a graceful stop (``ray start --block`` takes ~15 s to end on
        SIGTERM)."""
        self.kill()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                shutil.rmtree(self.temp)
                break
            except OSError:
                time.sleep(0.1)
