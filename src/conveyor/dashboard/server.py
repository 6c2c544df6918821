"""The dashboard's HTTP server: Starlette routes served by uvicorn (``conveyor[dashboard]``,
imported only here). The live page gets each new frame pushed as a server-sent event; one
sampler thread reads the store for every open page.

Routes: ``/`` (the page), ``/events`` (SSE frames), ``/api/summary`` (the numbers, JSON),
``/task/{id}``, ``/reason/{code}``, ``/static/live.js``, ``/metrics`` (Prometheus text, from
``conveyor.observe.prometheus`` when it is installed). With a token every request must carry
it: ``?token=`` (then kept in a cookie for the page's links), ``Authorization: Bearer``, or the
cookie; otherwise 401.
"""

from __future__ import annotations

import errno
import hmac
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from conveyor.core.explain import CODES
from conveyor.dashboard import pages, panels
from conveyor.dashboard.sampler import Sampler
from conveyor.errors import GraphError, UsageError
from conveyor.store.base import Store
from conveyor.store.urls import redact

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

COOKIE = "conveyor_token"
#: Seconds between SSE keep-alive comments when nothing changed (proxies drop idle streams).
KEEPALIVE_S = 15.0
#: Headers on every answer: nothing is framed, fetched from elsewhere or sniffed.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def require_server() -> None:
    """Refuse, as one line, where ``conveyor[dashboard]`` is not installed."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UsageError(
            "the dashboard needs Starlette and uvicorn: pip install -e '.[dashboard]'"
        ) from None


def make_app(store: Store, sampler: Sampler, *, token: str | None = None) -> Starlette:
    """The ASGI app over ``store`` (a read-only handle) and a started ``sampler``."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    url = redact(store.url)

    def page(title: str, body: str, *, live: bool = False, status: int = 200) -> HTMLResponse:
        return HTMLResponse(pages.shell(title, body, store_url=url, live=live), status)

    async def index(request: Request) -> Response:
        frame = sampler.latest
        if frame.version == 0:
            frame = await run_in_threadpool(sampler.wait_newer, 0, 10.0)
        graph = frame.summary.get("graph") or "run"
        return page(f"conveyor · {graph}", frame.html, live=True)

    async def events(request: Request) -> Response:
        async def stream() -> AsyncIterator[str]:
            version = 0  # frame 0 is the empty one before the first read
            while not sampler.stopped and not await request.is_disconnected():
                frame = await run_in_threadpool(sampler.wait_newer, version, KEEPALIVE_S)
                if sampler.stopped:
                    return  # shutting down: end the stream (the client reconnects elsewhere)
                if frame.version == version:
                    yield ": keep-alive\n\n"
                    continue
                version = frame.version
                data = json.dumps({"version": frame.version, "html": frame.html})
                yield f"data: {data}\n\n"

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"X-Accel-Buffering": "no"}
        )

    async def summary(request: Request) -> Response:
        return JSONResponse(
            {**sampler.latest.summary, "version": sampler.latest.version, "error": sampler.error}
        )

    async def task(request: Request) -> Response:
        tid = request.path_params["task_id"]
        try:
            body = await run_in_threadpool(pages.task_page, store, tid, time.time())
        except GraphError as exc:
            return page("unknown task", f"<p>{panels.e(exc)}</p>", status=404)
        return page(f"task {tid}", body)

    async def reason(request: Request) -> Response:
        code = request.path_params["code"]
        if code not in CODES:
            return page(
                "unknown reason", f"<p>no reason is called {panels.e(code)}</p>", status=404
            )
        body = await run_in_threadpool(pages.reason_page, store, code, time.time())
        return page(f"why pending: {code}", body)

    async def script(request: Request) -> Response:
        return Response(pages.asset("live.js"), media_type="text/javascript")

    async def metrics(request: Request) -> Response:
        from conveyor.observe.prometheus import metrics_text  # prometheus-client: [dashboard]

        body, ctype = await run_in_threadpool(metrics_text, store)
        return Response(body, media_type=ctype)

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/events", events),
            Route("/api/summary", summary),
            Route("/task/{task_id:path}", task),
            Route("/reason/{code}", reason),
            Route("/static/live.js", script),
            Route("/metrics", metrics),
        ]
    )
    app.add_middleware(_Guard, token=token)
    return app


class _Guard:
    """ASGI middleware: the token check and the security headers."""

    def __init__(self, app: Any, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from starlette.requests import Request
        from starlette.responses import PlainTextResponse

        request = Request(scope)
        via_query = False
        if self.token is not None:
            given = request.query_params.get("token")
            via_query = given is not None
            if given is None:
                auth = request.headers.get("authorization", "")
                given = auth[7:] if auth.lower().startswith("bearer ") else None
            if given is None:
                given = request.cookies.get(COOKIE)
            if given is None or not hmac.compare_digest(given.encode(), self.token.encode()):
                resp = PlainTextResponse(
                    "401: this dashboard needs its token (?token=...)\n",
                    status_code=401,
                    headers=SECURITY_HEADERS,
                )
                await resp(scope, receive, send)
                return
        token = self.token if via_query else None

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                if token is not None:
                    cookie = f"{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"
                    headers.append((b"set-cookie", cookie.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``; a port in use or a host that is not this machine's
    is one ``UsageError``."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UsageError(f"--host {host}: {exc.strerror}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        what = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound: {exc.strerror}"
        raise UsageError(f"port {port} on {host} {what}; pick another with --port") from None
    sock.set_inheritable(True)
    return sock


def serve(app: Starlette, sock: socket.socket, on_exit: Callable[[], None]) -> None:
    """Serve ``app`` on the bound ``sock`` until Ctrl-C (or SIGTERM); ``on_exit`` is called
    on the signal, before the graceful shutdown waits for open requests (it ends the event
    streams, which would otherwise hold the shutdown up to its time-out)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            on_exit()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2
    )
    Server(config).run(sockets=[sock])
