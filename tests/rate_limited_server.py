"""A real rate-limited HTTP server for tests and benchmarks (aiohttp, 127.0.0.1, ephemeral port).

It serves at most ``capacity`` requests at once, each taking ``latency`` seconds; a request
beyond that is answered at once with 429. ``capacity`` (and ``latency``) can change while it
runs: ``server.set_capacity(n)`` or ``POST /admin?capacity=n``. It runs its own event loop in a
background thread, so sync tests, async tests and the benchmark all start and stop it the same
way::

    with RateLimitedServer(capacity=8, latency=0.05) as server:
        httpx.get(server.url + "/work")

Retry-After on a 429 (``retry_after=``):
- ``"next_slot"`` (default): the time until the oldest request in flight finishes, in seconds
  with millisecond precision -- the honest answer for a concurrency limit;
- ``"ceil"``: the same rounded up to whole seconds (what strict RFC 9110 servers send);
- ``"none"``: no header at all;
- a number: that many seconds, always.

Other paths: ``/quota`` answers 429 with OpenAI's ``insufficient_quota`` body, ``/status/N``
answers status N (with ``?retry_after=`` if given), ``/stats`` returns the counters as JSON.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any

from aiohttp import web


class RateLimitedServer:
    def __init__(
        self, capacity: int, latency: float, *, retry_after: str | float = "next_slot"
    ) -> None:
        self.capacity = capacity
        self.latency = latency
        self.retry_after = retry_after
        self.served = 0
        self.rejected = 0
        self.max_in_flight = 0
        self._finishing: dict[int, float] = {}  # request id -> when it will finish
        self._next_id = 0
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._stopped: asyncio.Event | None = None
        self._error: BaseException | None = None

    # -- control, from any thread -----------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def in_flight(self) -> int:
        return len(self._finishing)

    def set_capacity(self, capacity: int) -> None:
        self.capacity = capacity  # read by the handler on its next request

    def set_latency(self, latency: float) -> None:
        self.latency = latency

    def start(self) -> RateLimitedServer:
        self._thread = threading.Thread(target=self._run, name="rate-limited-server", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise RuntimeError("rate-limited server failed to start") from self._error
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        stopped = self._stopped
        assert stopped is not None
        self._loop.call_soon_threadsafe(stopped.set)
        self._thread.join()
        self._thread = None

    def __enter__(self) -> RateLimitedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the server, on its own loop --------------------------------------------------------

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> None:
        self._stopped = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/work", self._work)
        app.router.add_post("/admin", self._admin)
        app.router.add_get("/stats", self._stats)
        app.router.add_route("*", "/quota", self._quota)
        app.router.add_route("*", "/status/{code}", self._status)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        try:
            await self._stopped.wait()
        finally:
            await self._runner.cleanup()

    def _retry_after_header(self, now: float) -> dict[str, str]:
        mode = self.retry_after
        if mode == "none":
            return {}
        if isinstance(mode, int | float):
            return {"Retry-After": f"{mode:g}"}
        wait = max(0.0, min(self._finishing.values(), default=now) - now)
        if mode == "ceil":
            return {"Retry-After": str(max(1, math.ceil(wait)))}
        return {"Retry-After": f"{wait:.3f}"}

    async def _work(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        if len(self._finishing) >= self.capacity:
            self.rejected += 1
            return web.Response(status=429, text="busy", headers=self._retry_after_header(now))
        rid = self._next_id
        self._next_id += 1
        latency = self.latency
        self._finishing[rid] = now + latency
        self.max_in_flight = max(self.max_in_flight, len(self._finishing))
        try:
            await asyncio.sleep(latency)
        finally:
            del self._finishing[rid]
        self.served += 1
        return web.Response(text="ok")

    async def _admin(self, request: web.Request) -> web.Response:
        if "capacity" in request.query:
            self.set_capacity(int(request.query["capacity"]))
        if "latency" in request.query:
            self.set_latency(float(request.query["latency"]))
        return web.json_response(self._counters())

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self._counters())

    async def _quota(self, request: web.Request) -> web.Response:
        body = {
            "error": {
                "message": "You exceeded your current quota.",
                "type": "insufficient_quota",
                "code": "insufficient_quota",
            }
        }
        return web.json_response(body, status=429)

    async def _status(self, request: web.Request) -> web.Response:
        headers = {}
        if "retry_after" in request.query:
            headers["Retry-After"] = request.query["retry_after"]
        return web.Response(status=int(request.match_info["code"]), text="", headers=headers)

    def _counters(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "latency": self.latency,
            "in_flight": self.in_flight,
            "served": self.served,
            "rejected": self.rejected,
            "max_in_flight": self.max_in_flight,
        }


def main(argv: list[str] | None = None) -> None:
    """Run standalone (the benchmark gives the server its own process and core).

    Prints ``PORT <n>`` once listening; stops when stdin closes.
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capacity", type=int, required=True)
    parser.add_argument("--latency", type=float, required=True)
    parser.add_argument("--retry-after", default="next_slot")
    args = parser.parse_args(argv)
    retry_after: str | float = args.retry_after
    if retry_after not in ("next_slot", "ceil", "none"):
        retry_after = float(retry_after)
    with RateLimitedServer(args.capacity, args.latency, retry_after=retry_after) as server:
        print(f"PORT {server.port}", flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
