"""A fake OpenAI-compatible chat server: for trying a spec without spending money, and for tests.

    python -m conveyor.testing.fake_llm --port 8000 --latency-ms 200 --capacity 16 \\
        [--retry-after S] [--fail-rate F] [--host 127.0.0.1] [--seed N] [--model NAME]

prints ``fake-llm listening on http://127.0.0.1:8000/v1`` once it serves, and stops on SIGTERM
or Ctrl-C. In Python (tests, benchmarks) the server runs on its own thread and event loop::

    with FakeLLM(capacity=8, latency=0.05) as llm:
        client = openai.OpenAI(base_url=llm.url, api_key="unused", max_retries=0)
        ...
        assert llm.stats().rate_limited == 0

It owns sockets, a thread and the clock; what it answers is decided in
``conveyor.testing.chat_reply`` (pure). Behaviour:

- ``POST /v1/chat/completions``: the reply in OpenAI's format with ``usage``, after ``latency``
  seconds; JSON output when ``response_format`` asks for it (see ``chat_reply``). A malformed
  request gets 400 at once.
- A hidden concurrency ``capacity``: a request that finds ``capacity`` requests in flight gets
  429 at once, with OpenAI's ``rate_limit_exceeded`` body and ``retry-after`` (seconds) and
  ``retry-after-ms`` headers: ``retry_after`` seconds if given, else the time until a slot frees
  (the oldest request in flight finishes: the honest answer for a concurrency limit).
- ``fail_rate``: that share of admitted requests (drawn in arrival order from a ``seed``\\ ed RNG)
  answer 500 ``server_error`` after their latency; they hold a slot like any other request.
- ``GET /v1/models`` lists the one model; ``GET /stats`` returns ``FakeLLMStats`` as JSON.

aiohttp (``pip install -e '.[llm]'``) is imported only when a server starts.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import heapq
import json
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from conveyor.testing.chat_reply import BadRequest, completion_body, parse_chat_request

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["FakeLLM", "FakeLLMStats", "main"]


@dataclass(frozen=True, slots=True)
class FakeLLMStats:
    """Counters since the server started. ``requests`` counts every chat completion request;
    each ends as one of ``served`` (200), ``rate_limited`` (429), ``failed`` (500 from
    ``fail_rate``), ``invalid`` (400), is still ``in_flight`` or was cut off by ``stop()``.
    Tokens count served replies."""

    requests: int = 0
    served: int = 0
    rate_limited: int = 0
    failed: int = 0
    invalid: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens: int = 0


class FakeLLM:
    """The fake server; ``start()``/``stop()`` or ``with``. ``set_capacity`` and ``set_latency``
    apply to requests that arrive afterwards, from any thread."""

    def __init__(
        self,
        capacity: int = 16,
        latency: float = 0.2,
        *,
        retry_after: float | None = None,
        fail_rate: float = 0.0,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
        model: str = "fake-model",
    ) -> None:
        if not 0.0 <= fail_rate <= 1.0:
            raise ValueError(f"fail_rate must be between 0 and 1, not {fail_rate}")
        if retry_after is not None and retry_after < 0:
            raise ValueError(f"retry_after must be >= 0 seconds, not {retry_after}")
        self.set_capacity(capacity)
        self.set_latency(latency)
        self.retry_after, self.fail_rate = retry_after, fail_rate
        self.host, self.port, self.model = host, port, model
        self._rng = random.Random(seed)
        self._lock = threading.Lock()  # counters: written on the server's loop, read anywhere
        # FakeLLMStats' fields, mutable: a frozen record rebuilt per request cost ~7% of the CPU
        self._counts = {f.name: 0 for f in dataclasses.fields(FakeLLMStats)}
        self._finishing: dict[int, float] = {}  # request serial -> monotonic time it finishes
        self._serial = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # -- control, from any thread -------------------------------------------------------------

    @property
    def url(self) -> str:
        """The OpenAI ``base_url``: ``http://HOST:PORT/v1``."""
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 address
        return f"http://{host}:{self.port}/v1"

    def set_capacity(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, not {capacity}")
        self.capacity = capacity

    def set_latency(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"latency must be >= 0 seconds, not {seconds}")
        self.latency = seconds

    def stats(self) -> FakeLLMStats:
        with self._lock:
            return FakeLLMStats(**{**self._counts, "in_flight": len(self._finishing)})

    def start(self) -> FakeLLM:
        """Serve on a daemon thread; returns once listening (``port`` is then the real one)."""
        if self._thread is not None:
            raise RuntimeError("this FakeLLM is already running")
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="fake-llm", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise RuntimeError(f"the fake LLM server failed to start: {self._error}") from (
                self._error
            )
        return self

    def stop(self) -> None:
        """Stop serving and join the thread; requests in flight are cut off."""
        if self._thread is None:
            return
        self.request_stop()
        self._thread.join()
        self._thread = None

    def request_stop(self) -> None:
        """Ask the serving loop to stop, from any thread or a signal handler; returns at once."""
        loop, stopped = self._loop, self._stopped
        if loop is not None and stopped is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stopped.set)

    def __enter__(self) -> FakeLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the server, on its own loop ----------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self.serve())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._ready.set()

    async def serve(self, on_ready: Callable[[FakeLLM], None] | None = None) -> None:
        """Serve on the running loop until ``request_stop()``; ``on_ready`` once listening."""
        try:
            from aiohttp import web
        except ImportError as exc:
            raise ModuleNotFoundError(
                "the fake LLM server needs aiohttp: pip install -e '.[llm]'"
            ) from exc
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/stats", self._stats)
        # stopping cuts requests in flight off (aiohttp would wait up to 60 s for them)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.1)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port, backlog=1024)
            await site.start()
            self.port = runner.addresses[0][1]
            if on_ready is not None:
                on_ready(self)
            self._ready.set()
            await self._stopped.wait()
        finally:
            await runner.cleanup()

    async def _chat(self, request: web.Request) -> web.Response:
        try:
            body: object = await request.json()
        except ValueError:
            body = None
        now = time.monotonic()
        with self._lock:
            serial, self._serial = self._serial, self._serial + 1
            self._count(requests=1)
        try:
            chat = parse_chat_request(body)
            reply = completion_body(chat, serial=serial, created=int(time.time()))
        except BadRequest as exc:
            with self._lock:
                self._count(invalid=1)
            return _error(400, exc.message, "invalid_request_error", exc.param)
        with self._lock:
            if len(self._finishing) >= self.capacity:
                self._count(rate_limited=1)
                return self._rate_limited(now)
            latency = self.latency
            self._finishing[serial] = now + latency
            top = max(self._counts["max_in_flight"], len(self._finishing))
            self._counts["max_in_flight"] = top
            fail = self._rng.random() < self.fail_rate
        try:
            await asyncio.sleep(latency)
        finally:
            with self._lock:
                del self._finishing[serial]
        if fail:
            with self._lock:
                self._count(failed=1)
            message = "The server had an error while processing your request. Sorry about that!"
            return _error(500, message, "server_error", None)
        usage = reply["usage"]
        with self._lock:
            self._count(
                served=1,
                prompt_tokens=usage["prompt_tokens"],
                completion_tokens=usage["completion_tokens"],
                tokens=usage["total_tokens"],
            )
        return _json(reply)

    def _count(self, **deltas: int) -> None:
        """Add to counters; the caller holds ``_lock``."""
        for name, delta in deltas.items():
            self._counts[name] += delta

    def _rate_limited(self, now: float) -> web.Response:
        """The 429; the caller holds ``_lock``."""
        if self.retry_after is not None:
            wait, seconds = self.retry_after, f"{self.retry_after:g}"
        else:
            wait = max(0.0, self._next_slot(now) - now)
            seconds = f"{wait:.3f}"
        headers = {"retry-after": seconds, "retry-after-ms": str(round(wait * 1000))}
        message = (
            f"Rate limit reached for requests to {self.model} on conveyor's fake server. "
            f"Please try again in {wait:.3f}s."
        )
        return _error(429, message, "requests", None, code="rate_limit_exceeded", headers=headers)

    def _next_slot(self, now: float) -> float:
        """When a request would next be admitted: once ``in_flight - capacity + 1`` requests
        have finished (one, unless ``set_capacity`` went below the load); with capacity 0 (an
        outage) never, so one latency from now is the hint. The caller holds ``_lock``."""
        must_finish = len(self._finishing) - self.capacity + 1
        if self.capacity == 0 or must_finish <= 0:
            return now + self.latency if self.capacity == 0 else now
        return heapq.nsmallest(must_finish, self._finishing.values())[-1]  # O(n log k), n <= load

    async def _models(self, request: web.Request) -> web.Response:
        model = {"id": self.model, "object": "model", "created": 0, "owned_by": "conveyor"}
        return _json({"object": "list", "data": [model]})

    async def _stats(self, request: web.Request) -> web.Response:
        return _json(dataclasses.asdict(self.stats()))


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    from aiohttp import web

    return web.json_response(body, status=status, headers=headers)


def _error(
    status: int,
    message: str,
    kind: str,
    param: str | None,
    *,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}``."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return _json(body, status, headers)


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {text}")
    return value


def _at_least_zero(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in "invalid int value"
    return parse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m conveyor.testing.fake_llm",
        description="A fake OpenAI-compatible chat completions server with a hidden capacity.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    parser.add_argument(
        "--port", type=_at_least_zero(int), default=8000, help="default: 8000; 0: any free port"
    )
    parser.add_argument(
        "--latency-ms", type=_at_least_zero(float), default=200.0,
        help="how long each request takes (default: 200)",
    )  # fmt: skip
    parser.add_argument(
        "--capacity", type=_at_least_zero(int), default=16,
        help="requests served at once; more get 429 (default: 16)",
    )  # fmt: skip
    parser.add_argument(
        "--retry-after", type=_at_least_zero(float), default=None, metavar="S",
        help="seconds in every 429's Retry-After (default: until the next slot frees)",
    )  # fmt: skip
    parser.add_argument(
        "--fail-rate", type=_fraction, default=0.0, metavar="F",
        help="the share of requests answered 500 (default: 0)",
    )  # fmt: skip
    parser.add_argument(
        "--seed", type=int, default=0, metavar="N", help="for --fail-rate's draws (default: 0)"
    )
    parser.add_argument(
        "--model", default="fake-model", help="the name /v1/models lists (default: fake-model)"
    )
    args = parser.parse_args(argv)
    server = FakeLLM(
        args.capacity,
        args.latency_ms / 1000.0,
        retry_after=args.retry_after,
        fail_rate=args.fail_rate,
        seed=args.seed,
        host=args.host,
        port=args.port,
        model=args.model,
    )
    try:
        asyncio.run(_serve_until_signal(server))
    except OSError as exc:  # the port is taken, the host is not ours
        print(f"fake-llm: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"fake-llm stopped: {json.dumps(dataclasses.asdict(server.stats()))}", file=sys.stderr)


async def _serve_until_signal(server: FakeLLM) -> None:
    import signal

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, server.request_stop)

    def announce(llm: FakeLLM) -> None:
        print(f"fake-llm listening on {llm.url}", flush=True)

    await server.serve(on_ready=announce)


if __name__ == "__main__":
    main()
