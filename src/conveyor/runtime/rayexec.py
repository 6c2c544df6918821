"""The Ray executor, driver side: each started task becomes one Ray task; one waiter thread
collects what finished and posts it to the engine.

conveyor decides; Ray executes. The engine claims tasks exactly as with threads (depth-first
key, fair share, admission against the cluster's resources, retries, durable state) and hands
each claimed task here, which submits it with ``ray.remote(...).options(...)`` (resources and
label selector from ``core/raymap.py``; Ray's own retries off: conveyor's count). How many run
at once is the engine's ``workers``: by default the cluster's CPUs times ``IN_FLIGHT_PER_CPU``,
enough that Ray always has the next task queued, few enough that conveyor, not Ray's queue,
chooses what starts next.

**A lost cluster.** The waiter checks that the cluster's GCS still accepts connections while
tasks are out; after ``LOST_AFTER`` failed checks in a row it tells the engine, which hands the
running tasks back to the store (``task_released``, not a failure) and ends the run. What
finished is recorded already; a durable store runs the rest when the graph is run again.

Importing this module does not import Ray; ``connect`` does.

Size: the executor and ``connect``, which finds, probes and joins the cluster, stay together:
``connect`` works out the GCS address that the executor's lost-cluster check then watches.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from conveyor.core.admission import Offer
from conveyor.core.raymap import cluster_offer, node_shortfall, ray_options
from conveyor.errors import GraphError, UsageError
from conveyor.runtime.executors import Running
from conveyor.runtime.messages import Finished
from conveyor.runtime.rayremote import TaskInfo, function_task, run_command

if TYPE_CHECKING:
    from conveyor.store.base import Store

__all__ = ["CONNECT_TIMEOUT_S", "IN_FLIGHT_PER_CPU", "RayExecutor", "connect"]

#: Seconds a Ray address has to accept a connection before ``connect`` gives up (Ray's own
#: wait for an absent cluster is minutes long).
CONNECT_TIMEOUT_S = 3.0
#: Tasks out on Ray per cluster CPU (the default ``workers``): enough that Ray always has the
#: next task at hand even for tasks of a millisecond (measured: 4 per CPU ran 10,000 no-op tasks
#: at half the speed of 16), few enough that conveyor, not Ray's queue, orders the rest.
IN_FLIGHT_PER_CPU = 16
#: The longest the waiter waits for more tasks to finish before it reports those that did (and
#: looks up: new tasks, health checks, shutdown).
_WAIT_S = 0.005
#: Seconds between checks that the cluster answers, and failed checks that mean it is lost.
_HEALTH_S = 1.0
LOST_AFTER = 3

Post = Callable[[Finished], None]


class RayExecutor:
    """One driver's connection to a Ray cluster, and the tasks it has out there."""

    def __init__(self, ray: Any, address: str, gcs: tuple[str, int] | None, owns: bool) -> None:
        self._ray = ray
        #: The address the user gave (``auto``, ``host:port``) or where Ray was started.
        self.address = address
        self._gcs = gcs
        self._owns = owns  # conveyor called ray.init: it calls ray.shutdown too
        self._cmd = self._remote_of(run_command)
        #: Ray remote functions by (function, resources, labels): one per function and shape,
        #: made (and exported to the cluster) once.
        self._remotes: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()
        self._out: dict[Any, Running] = {}  # ObjectRef -> its run
        self._wake = threading.Event()
        self._post: Post | None = None
        self._on_lost: Callable[[str], None] | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._nodes: list[dict[str, float]] | None = None  # each alive node's resources
        #: Why the cluster was given up on (``None`` while it answers).
        self.lost: str | None = None

    # -- what the cluster offers ----------------------------------------------------------------
    def offer(self) -> tuple[dict[str, float], dict[str, Any]]:
        """The cluster's resources (conveyor's names) and its nodes' labels, merged."""
        ray = self._ray
        labels = [n.get("Labels") or {} for n in ray.nodes() if n.get("Alive")]
        return cluster_offer(ray.cluster_resources(), labels)

    def check_fit(self, store: Store, offered: tuple[dict[str, float], dict[str, Any]]) -> None:
        """Refuse (``GraphError``) a task the cluster could never hold although the worker's
        own ``resources``/``labels`` (given by the user, not read from the cluster) would let
        conveyor start it: Ray would keep it pending for ever."""
        slots = self.default_slots()
        message = store.unfit(Offer(slots, dict(offered[0]), offered[1], slots), time.time())
        if message is not None:
            raise GraphError(message.replace("on this worker", "on the Ray cluster", 1))

    def default_slots(self) -> int:
        """Tasks to keep out on Ray at once when the user sets no ``workers``."""
        cpus = float(self._ray.cluster_resources().get("CPU", 1.0))
        return max(1, int(cpus * IN_FLIGHT_PER_CPU))

    # -- the engine's side ----------------------------------------------------------------------
    def attach(self, post: Post, on_lost: Callable[[str], None]) -> None:
        """Report finished tasks with ``post``; call ``on_lost(reason)`` once if the cluster
        stops answering."""
        self._post = post
        self._on_lost = on_lost

    def start_function(
        self, run: Running, fn: Callable[..., Any] | str, args: Any, kwargs: Any, info: TaskInfo
    ) -> None:
        remote = self._remote(run, fn)
        self._track(run, remote.remote((args, kwargs, tuple(info))))

    def start_command(
        self, run: Running, cmd: str | list[str], env: dict[str, str] | None, cwd: str | None,
        timeout: float | None, info: TaskInfo,
    ) -> None:  # fmt: skip
        remote = self._remote(run, None)
        self._track(run, remote.remote((cmd, env, cwd, timeout, tuple(info))))

    def cancel(self, run: Running) -> None:
        """Best effort: a function task's Ray worker is killed (``force``), a command gets
        ``KeyboardInterrupt`` and kills its process group. The late report is dropped (the
        run is ``abandoned``)."""
        ref = run.ref
        if ref is None or self.lost is not None:
            return
        with contextlib.suppress(Exception):
            self._ray.cancel(ref, force=run.claim.spec.cmd is None)

    def shutdown(self) -> None:
        self._closed = True
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5)
        if self._owns and self.lost is None:
            with contextlib.suppress(Exception):
                self._ray.shutdown()

    # -- submitting -----------------------------------------------------------------------------
    def _remote_of(self, body: Callable[..., Any]) -> Any:
        return self._ray.remote(max_retries=0, retry_exceptions=False)(body)

    def _remote(self, run: Running, fn: Callable[..., Any] | str | None) -> Any:
        """The Ray remote function for ``fn`` (``None``: a command) with this task's
        resources and label selector as options."""
        spec = run.claim.spec
        shaped = bool(spec.resources or spec.labels)
        if fn is None and not shaped:
            return self._cmd
        if spec.resources:
            short = node_shortfall(spec.resources, self._node_resources())
            if short is not None:  # a worker told it has more than the cluster has
                raise GraphError(f"task {spec.id!r} can never run on the Ray cluster: {short}")
        shape = (tuple(sorted(spec.resources.items())), repr(sorted(spec.labels.items())))
        try:
            key: tuple[Any, ...] = (fn, *shape) if shaped else (fn,)
            remote = self._remotes.get(key)
        except TypeError:  # an unhashable callable: made for this task alone
            key, remote = (), None
        if remote is None:
            remote = self._cmd if fn is None else self._remote_of(function_task(fn))
            if shaped:
                remote = remote.options(**ray_options(spec.resources, spec.labels))
            if key:
                self._remotes[key] = remote
        return remote

    def _node_resources(self) -> list[dict[str, float]]:
        """Each alive node's resources in conveyor's names, read once."""
        if self._nodes is None:
            nodes = [n for n in self._ray.nodes() if n.get("Alive")]
            self._nodes = [cluster_offer(n.get("Resources") or {}, ())[0] for n in nodes]
        return self._nodes

    def _track(self, run: Running, ref: Any) -> None:
        run.ref = ref
        with self._lock:
            self._out[ref] = run
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._wait_loop, name="conveyor-ray", daemon=True
                )
                self._thread.start()
        if not self._wake.is_set():  # (setting it takes a lock: not once per task)
            self._wake.set()

    # -- the waiter thread ----------------------------------------------------------------------
    def _wait_loop(self) -> None:
        """Collect finished tasks: O(tasks out) per ``ray.wait``, many at a time."""
        ray = self._ray
        next_check = time.monotonic() + _HEALTH_S
        failures = 0
        while not self._closed:
            with self._lock:
                refs = list(self._out)
            if refs:
                # a quarter of what is out, or what is ready after _WAIT_S: a few ray.wait
                # calls for many short tasks, and at most _WAIT_S late for long ones
                want = max(1, len(refs) // 4)
                ready, _ = ray.wait(refs, num_returns=want, timeout=_WAIT_S)
                if ready:
                    self._report(ready)
            else:
                self._wake.wait(_HEALTH_S)
                self._wake.clear()
            now = time.monotonic()
            if now >= next_check:
                next_check = now + _HEALTH_S
                failures = 0 if self._answers() else failures + 1
                if failures >= LOST_AFTER and refs:
                    self._give_up()
                    return

    def _report(self, ready: list[Any]) -> None:
        ray = self._ray
        with self._lock:
            runs = [self._out.pop(ref) for ref in ready]
        try:
            outcomes = ray.get(ready)
        except Exception:  # one of them failed in Ray itself: ask each on its own
            outcomes = []
            for ref in ready:
                try:
                    outcomes.append(ray.get(ref))
                except Exception as exc:
                    outcomes.append((False, _ray_error(exc)))
        post = self._post
        assert post is not None
        for run, (ok, value) in zip(runs, outcomes, strict=True):
            post(Finished(run, ok, value))

    def _answers(self) -> bool:
        """Whether the cluster's GCS accepts a connection (``True`` when its address is not
        known)."""
        if self._gcs is None:
            return True
        try:
            socket.create_connection(self._gcs, timeout=_HEALTH_S).close()
        except OSError:
            return False
        return True

    def _give_up(self) -> None:
        host, port = self._gcs or ("?", 0)
        self.lost = f"the Ray cluster at {host}:{port} stopped answering"
        with self._lock:
            self._out.clear()
        if self._on_lost is not None:
            self._on_lost(self.lost)


def _ray_error(exc: BaseException) -> str:
    """Ray's failure of a task (its worker died, it was cancelled, its result could not be
    pickled) as one line: the cause's own message when Ray wraps one (a ``RayTaskError``'s
    first line only says where it happened)."""
    name = type(exc).__name__
    if name == "TaskCancelledError":
        return "cancelled"
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"ray: {name}: {type(cause).__name__}: {_first_line(cause)}"[:500]
    return f"ray: {name}: {_first_line(exc)}"[:500]


def _first_line(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # Ray colours its messages
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


# -- connecting ------------------------------------------------------------------------------------
def connect(address: str | None, timeout: float = CONNECT_TIMEOUT_S) -> RayExecutor:
    """Connect to the Ray cluster at ``address`` (``host:port``, ``"auto"``: the one
    ``ray start`` recorded on this machine or ``$RAY_ADDRESS``; ``None``: that one if any, else
    a new local Ray). A driver that called ``ray.init`` itself keeps its connection. An address
    that does not accept a connection within ``timeout`` seconds is a ``UsageError``."""
    try:
        import ray
    except ImportError:
        raise UsageError(
            "the ray executor needs Ray, which is not installed: pip install -e '.[ray]'"
        ) from None
    if ray.is_initialized():
        return RayExecutor(ray, address or "(connected)", _gcs_address(ray), owns=False)
    target = _resolve(address)
    if target is not None:
        host, port = _split(target, address)
        why = _probe_gcs(host, port, timeout)
        if why is not None:
            named = (
                address if address not in (None, "auto")
                else f"{target} (the cluster $RAY_ADDRESS or `ray start` named on this machine)"
            )  # fmt: skip
            raise UsageError(
                f"no Ray cluster answers at {named}: {why}; start one with "
                "`ray start --head` or check the address"
            )
    elif address == "auto":
        raise UsageError(
            "Ray address auto: no running Ray cluster found on this machine ($RAY_ADDRESS "
            "unset); start one with `ray start --head` or give the address as host:port"
        )
    if target is not None:
        _token_auth_as_ray_start_does()
    local: dict[str, Any] = {} if target is not None else {"include_dashboard": False}
    try:
        ray.init(
            address=target, runtime_env={"env_vars": {"PYTHONPATH": worker_pythonpath()}},
            logging_level=logging.WARNING, **local,
        )  # fmt: skip
    except Exception as exc:
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
        where = address or "a new local Ray"
        raise UsageError(f"cannot connect to Ray at {where}: {first}") from None
    return RayExecutor(ray, address or target or "local", _gcs_address(ray), owns=True)


def _probe_gcs(host: str, port: int, timeout: float) -> str | None:
    """Why ``host:port`` is not a Ray cluster's GCS, or ``None`` when it answers as one.

    A TCP connection is not enough: ``ray.init`` against anything else that accepts one (a web
    server, another service) retries for minutes. So ask the GCS for its cluster id, the first
    call ``ray.init`` makes, with a deadline of ``timeout`` seconds. Only "unreachable" and "no
    answer in time" count as not a cluster: any other answer (even a refusal for want of a
    token) comes from a GCS."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    try:
        import grpc
        from ray._private.gcs_utils import create_gcs_channel
        from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc
    except ImportError:  # a Ray laid out otherwise: the TCP check is all there is
        return None
    channel = create_gcs_channel(f"{host}:{port}")
    try:
        stubs: Any = gcs_service_pb2_grpc
        request: Any = cast("Any", gcs_service_pb2).GetClusterIdRequest()
        stubs.NodeInfoGcsServiceStub(channel).GetClusterId(request, timeout=timeout)
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"it accepts connections but gave no Ray answer within {timeout:g} s"
        if code == grpc.StatusCode.UNAVAILABLE:
            return "it accepts connections but does not speak Ray's protocol (gRPC)"
    finally:
        channel.close()
    return None


def _token_auth_as_ray_start_does() -> None:
    """Send this machine's Ray token (``~/.ray/auth_token``) when there is one and
    ``$RAY_AUTH_MODE`` says nothing: the rule by which ``ray start`` turns token authentication
    on (a driver does not apply it itself, and fails ~20 s later). A cluster without
    authentication accepts such a driver too."""
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    with contextlib.suppress(Exception):
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _resolve(address: str | None) -> str | None:
    """``host:port`` of the cluster ``address`` names, ``None`` for "start a local one"."""
    try:
        from ray._private.services import canonicalize_bootstrap_address

        resolved: str | None = canonicalize_bootstrap_address(cast("str", address))
        return resolved
    except Exception:
        if address in (None, "auto"):
            return os.environ.get("RAY_ADDRESS") or None
        return address


def _split(target: str, given: str | None) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    try:
        return (host or "127.0.0.1"), int(port)
    except ValueError:
        pass
    if given in (None, "auto") and os.environ.get("RAY_ADDRESS"):  # it came from there
        raise UsageError(
            f"$RAY_ADDRESS must be host:port or auto, got {os.environ['RAY_ADDRESS']!r}"
        )
    raise UsageError(f"the Ray address must be auto or host:port, got {given!r}")


def _gcs_address(ray: Any) -> tuple[str, int] | None:
    """Where the connected cluster's GCS listens (for the health check)."""
    try:
        gcs = str(ray.get_runtime_context().gcs_address)
    except Exception:
        return None
    host, _, port = gcs.rpartition(":")
    return (host, int(port)) if port.isdigit() else None


def worker_pythonpath() -> str:
    """The driver's import path for Ray workers started for this run: conveyor itself and the
    folders graph files name functions from (not the interpreter's own folders, which the
    workers have)."""
    import conveyor

    own = os.path.dirname(os.path.dirname(os.path.abspath(conveyor.__file__)))
    skip = tuple({sys.prefix, sys.base_prefix, sys.exec_prefix})
    paths = [own]
    for entry in sys.path:
        path = os.path.abspath(entry or os.getcwd())
        if path not in paths and os.path.isdir(path) and not path.startswith(skip):
            paths.append(path)
    return os.pathsep.join(paths)
