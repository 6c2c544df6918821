"""``conveyor dashboard`` (a live page of a run, served on 127.0.0.1) and ``conveyor report``
(the same panels as one self-contained HTML file, plots as PNG). Both read the store on a
read-only connection; the server and the plotting library are imported only here
(``conveyor[dashboard]``)."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import time
from pathlib import Path
from typing import Annotated

import typer

from conveyor.cli.errors import user_errors
from conveyor.cli.inputs import durable_store
from conveyor.errors import UsageError

DbOptional = Annotated[
    str | None, typer.Option("--db", help="Store URL: sqlite:///run.db or postgresql://...")
]


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def dashboard(
    db: DbOptional = None,
    host: Annotated[str, typer.Option("--host", help="Address to serve on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port.")] = 8765,
    allow_remote: Annotated[
        bool,
        typer.Option(
            "--allow-remote",
            help="Serve on a --host other than this machine's "
            "loopback (then every request needs the token).",
        ),
    ] = False,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="CONVEYOR_DASHBOARD_TOKEN",
            help="Token every request must carry (with --allow-remote and none given: "
            "one is made up and printed).",
        ),
    ] = None,
    build: Annotated[
        Path | None, typer.Option("--build", help="Also show the table build writing OUT_DIR.")
    ] = None,
    every: Annotated[
        float, typer.Option("--every", min=0.2, help="Seconds between reads of the store.")
    ] = 1.0,
    window: Annotated[
        float, typer.Option("--window", min=10, help="Seconds of the timeline.")
    ] = 300.0,
) -> None:
    """Serve a live page of the run in --db: progress, throughput, ETA, fair share, endpoints,
    why-pending, workers, a timeline; updates are pushed. Ctrl-C stops it."""
    with user_errors():
        if db is None and build is None:
            raise UsageError("give --db URL (a run), --build OUT_DIR (a table build), or both")
        if not _loopback(host):
            if not allow_remote:
                raise UsageError(
                    f"--host {host} serves the dashboard beyond this machine: add "
                    "--allow-remote (a token is then required)"
                )
            token = token or secrets.token_urlsafe(18)
        if build is not None and not build.is_dir():
            raise UsageError(f"--build {build}: no such directory")
        from conveyor.dashboard.server import require_server

        require_server()
        _serve(db, host, port, token, build, every, window)


#: The dashboard's niceness: on a machine its workers keep busy, they come first.
NICE = 10


def _serve(
    db: str | None,
    host: str,
    port: int,
    token: str | None,
    build: Path | None,
    every: float,
    window: float,
) -> None:
    from contextlib import nullcontext

    from conveyor.dashboard import panels, server
    from conveyor.dashboard.buildpanel import read_build
    from conveyor.dashboard.sampler import READ_SHARE, Sampler
    from conveyor.store.memory import MemoryStore

    with contextlib.suppress(OSError):  # a viewer yields the CPU to the workers it watches
        os.nice(NICE)
    opened = durable_store(db, readonly=True) if db is not None else nullcontext(MemoryStore())
    with opened as store:
        sock = server.bind(host, port)
        reader = (lambda: read_build(build)) if build is not None else None
        sampler = Sampler(
            store,
            panels.render,
            every=every,
            window_s=window,
            build=reader,
            read_budget=READ_SHARE * every,
        )
        sampler.start()
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        url = f"http://{shown}:{bound}/" + (f"?token={token}" if token else "")
        typer.echo(f"conveyor: dashboard on {url} (Ctrl-C stops it)", err=True)
        try:
            app = server.make_app(store, sampler, token=token)
            server.serve(app, sock, on_exit=sampler.release_waiters)
        finally:
            sampler.stop()
            sock.close()


def said(rows: int) -> None:
    typer.echo(f"conveyor: report: {rows:,} audit rows read", err=True)


def report(
    db: Annotated[
        str, typer.Option("--db", help="Store URL: sqlite:///run.db or postgresql://...")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write.")] = Path(
        "run.html"
    ),
    png: Annotated[
        Path | None, typer.Option("--png", help="Also write the plots as PNG files here.")
    ] = None,
    window: Annotated[
        float, typer.Option("--window", min=10, help="Seconds of the timeline (the run's end).")
    ] = 300.0,
) -> None:
    """Write one self-contained HTML file (no network needed to open it) with the dashboard's
    panels for the run in --db; --png DIR writes the plots as images too."""
    from conveyor.dashboard.report import read_all, write_report

    with user_errors():
        if not out.parent.is_dir():
            raise UsageError(f"-o {out}: directory {str(out.parent)!r} does not exist")
        if out.is_dir():
            raise UsageError(f"-o {out}: is a directory; give the HTML file to write")
        if png is not None and png.exists() and not png.is_dir():
            raise UsageError(f"--png {png}: not a directory")
        began = time.monotonic()
        with durable_store(db, readonly=True) as store:
            readings = read_all(store, window_s=window, progress=said)
            size = write_report(readings, store.url, out)
        typer.echo(
            f"conveyor: wrote {out} ({size / 1024:.0f} KiB, "
            f"{readings.history.events:,} audit rows, "
            f"{time.monotonic() - began:.1f} s)",
            err=True,
        )
        if png is not None:
            from conveyor.dashboard.pngs import write_pngs

            made = write_pngs(readings, png)
            typer.echo(f"conveyor: wrote {len(made)} plots to {png}/", err=True)
