"""The dashboard's one reader of the store: every ``every`` seconds it reads the summary, the
workers and the audit rows committed since its last read, folds them into the run's history
and renders the live panels once, whatever the number of open pages. Reads only, on the
read-only store handle it is given; nothing here runs on a worker's path."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape
from typing import Any

from conveyor.dashboard.history import RunHistory
from conveyor.store.base import Store

#: Audit rows read per page.
PAGE = 2000
#: The share of each step's time spent following the audit trail: a fast run (tens of
#: thousands of rows a second) is followed with a lag, caught up when it slows or ends, so that
#: the dashboard never takes more than a sliver of a core from the workers it watches. The
#: headline numbers (``Store.status``) are current at every step regardless.
READ_SHARE = 0.04
#: A read that took t seconds is followed by at least BUSY_FACTOR * t seconds of rest.
BUSY_FACTOR = 4.0
#: Endpoint samples kept (one per step: an hour at the default pace).
ENDPOINT_SAMPLES = 3600


@dataclass
class Readings:
    """What one step read: the inputs of the panels."""

    now: float
    status: dict[str, Any]
    workers: list[dict[str, Any]]
    history: RunHistory
    #: ``(ts, {endpoint: {limit, in_flight, waiting, rate_limited, ...}})``, oldest first.
    endpoint_samples: deque[tuple[float, dict[str, dict[str, Any]]]]
    caught_up: bool = True
    build: dict[str, Any] | None = None


@dataclass
class Frame:
    """One rendered picture of the run, pushed to every open page."""

    version: int
    html: str
    summary: dict[str, Any] = field(default_factory=dict)


class Sampler:
    """Reads the store on a thread of its own; ``latest`` is the newest ``Frame``."""

    def __init__(
        self,
        store: Store,
        render: Callable[[Readings], tuple[str, dict[str, Any]]],
        *,
        every: float = 1.0,
        window_s: float = 300.0,
        read_budget: float | None = None,
        clock: Callable[[], float] = time.time,
        build: Callable[[], dict[str, Any] | None] | None = None,
    ) -> None:
        self.store = store
        self.render = render
        self.every = every
        #: Seconds each read may spend on the audit trail (``None``: all of it, the report's).
        self.read_budget = read_budget
        self.clock = clock
        self.build = build
        self.feed = store.event_feed()
        self.history = RunHistory(window_s=window_s)
        self.endpoints: deque[tuple[float, dict[str, dict[str, Any]]]] = deque(
            maxlen=ENDPOINT_SAMPLES
        )
        self.latest = Frame(0, "")
        self.error: str | None = None
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self) -> Readings:
        """Read the store once and fold what is new into the history."""
        caught_up = False
        budget = self.read_budget
        until = None if budget is None else time.monotonic() + budget
        while until is None or time.monotonic() < until:
            events = self.feed.poll(PAGE)
            started = [str(e["task"]) for e in events if e.get("event") == "task_started"]
            self.history.add(events, self.store.task_groups(sorted(set(started))))
            if len(events) < PAGE:
                caught_up = True
                break
        now = self.clock()
        status = self.store.status(now)
        self.endpoints.append((now, status.get("endpoints", {})))
        return Readings(
            now,
            status,
            self.store.worker_rows(now),
            self.history,
            self.endpoints,
            caught_up,
            self.build() if self.build else None,
        )

    def step(self) -> Frame:
        readings = self.read()
        html, summary = self.render(readings)
        return self._publish(html, summary)

    def wait_newer(self, version: int, timeout: float) -> Frame:
        """The newest frame once it is newer than ``version`` (or at ``timeout``, or once the
        sampler stops: ``stopped``)."""
        with self._changed:
            self._changed.wait_for(
                lambda: self.latest.version > version or self._stop.is_set(), timeout
            )
            return self.latest

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def release_waiters(self) -> None:
        """Wake every ``wait_newer`` and make it return at once from now on (the server is
        shutting down: the event streams end instead of holding it up). Safe in a signal
        handler: it waits for nothing but the condition's lock."""
        self._stop.set()
        with self._changed:
            self._changed.notify_all()

    def start(self) -> Sampler:
        self._thread = threading.Thread(target=self._loop, name="dashboard-sampler", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        good = ""
        while not self._stop.is_set():
            began = time.monotonic()
            try:
                good = self.step().html
                self.error = None
            except Exception as exc:  # a store that went away: say so on the page, keep trying
                self.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self._publish(
                    f'<p class="banner error">cannot read the store: '
                    f"{escape(self.error)}; trying again</p>{good}",
                    self.latest.summary,
                )
            took = time.monotonic() - began
            # A large store makes each read slow: reading stays under a fifth of the time.
            self._stop.wait(max(0.05, self.every - took, BUSY_FACTOR * took))

    def _publish(self, html: str, summary: dict[str, Any]) -> Frame:
        with self._changed:
            self.latest = Frame(self.latest.version + 1, html, summary)
            self._changed.notify_all()
            return self.latest

    def stop(self) -> None:
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
