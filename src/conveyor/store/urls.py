"""Store URLs: ``open_store(url)`` picks the implementation from the scheme, and the options a
URL may carry are parsed here for every backend.

Kept apart from ``store/base.py`` so that the interface never imports its implementations, and
light: the implementations are imported only when a URL names them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conveyor.clock import SYSTEM_CLOCK, Clock
from conveyor.errors import StoreError
from conveyor.events import EventSink
from conveyor.store.base import Store

if TYPE_CHECKING:
    from conveyor.store.codec import ResultCodec

MEMORY_URLS = ("memory://", "memory", ":memory:")
#: Conveyor's own options in a store URL; the rest of a PostgreSQL URL goes to libpq. SQLite
#: also takes ``timeout`` (its busy timeout, seconds).
STORE_OPTIONS = frozenset({"results", "results_dir", "inline_max", "batch", "lost_budget", "lease"})


def open_store(
    url: str | None,
    *,
    emit: EventSink | None = None,
    clock: Clock = SYSTEM_CLOCK,
    readonly: bool = False,
) -> Store:
    """Open the store named by ``url``: ``None`` or ``memory://`` for an in-process store,
    ``sqlite:///path/run.db``, ``postgresql://...``. ``emit`` receives the events of committed
    transitions; ``clock`` stamps them inside transactions (see ``Store``). ``readonly``: a
    durable store on a connection that cannot write (a viewer's: it creates nothing and takes
    no write lock), which must exist already."""
    if url is None or url in MEMORY_URLS:
        from conveyor.store.memory import MemoryStore

        store: Store = MemoryStore()
    elif url.startswith("sqlite://"):
        from conveyor.store.sqlite import SqliteStore

        store = SqliteStore.from_url(url, readonly=readonly)
    elif url.startswith(("postgresql://", "postgres://")):
        from conveyor.store.postgres import PostgresStore

        store = PostgresStore.from_url(url, readonly=readonly)
    else:
        raise StoreError(
            f"unknown store URL {url!r}: use memory://, sqlite:///path/run.db or postgresql://..."
        )
    store.emit = emit
    store.clock = clock
    return store


def store_missing(url: str) -> str | None:
    """Why no durable store exists at ``url`` (a path that is not there, a database without
    conveyor's tables), or ``None`` when one does. Creates nothing: for commands that only
    read or change an existing run."""
    if url.startswith("sqlite:"):
        path = Path(sqlite_target(url)[0])
        if not path.exists():
            return f"{str(path)!r} does not exist"
        if not path.is_file():
            return f"{str(path)!r} is not a store file"
        from conveyor.store.sqlite import SqliteStore

        return None if SqliteStore.holds_store(url) else "the file holds no conveyor store"
    if url.startswith(("postgresql://", "postgres://")):
        from conveyor.store.postgres import PostgresStore

        return None if PostgresStore.holds_store(url) else "the database holds no conveyor store"
    return None


def parse_options(query: Mapping[str, list[str]], url: str) -> dict[str, Any]:
    """The store options a URL may carry (``?results=pickle&inline_max=65536&batch=1``);
    others are left out. A bad value is a ``StoreError`` naming it."""
    out: dict[str, Any] = {}
    for key, values in query.items():
        value = values[-1]
        try:
            if key in ("timeout", "lease"):
                out[key] = float(value)
            elif key in ("inline_max", "batch", "lost_budget"):
                out[key] = int(value)
                if out[key] < 1:
                    raise ValueError
            elif key == "results":
                if value not in ("auto", "json", "pickle"):
                    raise ValueError
                out[key] = value
            elif key == "results_dir":
                out[key] = value
        except ValueError:
            raise StoreError(f"{url}: bad value {value!r} for option {key!r}") from None
    return out


def sqlite_target(url: str) -> tuple[str, dict[str, Any]]:
    """The database file a ``sqlite:///relative/run.db`` or ``sqlite:////abs/run.db`` URL names,
    and its options (``?timeout=5&results=...``)."""
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(url)
    if parts.scheme != "sqlite" or parts.netloc or not url.startswith("sqlite:///"):
        raise StoreError(
            f"bad SQLite URL {url!r}: use sqlite:///relative/run.db or sqlite:////abs/run.db"
        )
    path = url[len("sqlite:///") :].split("?", 1)[0]
    if not path or path.endswith("/"):
        raise StoreError(f"bad SQLite URL {url!r}: it names no file")
    return path, parse_options(parse_qs(parts.query), url)


def postgres_target(url: str) -> tuple[str, dict[str, Any]]:
    """The libpq connection string of a ``postgresql://`` URL (conveyor's options taken out,
    a connect timeout of 10 s unless it names one), and conveyor's options."""
    from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        query = parse_qs(parts.query, keep_blank_values=True)
    except ValueError as exc:
        raise StoreError(f"bad PostgreSQL URL {url!r}: {exc}") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise StoreError(f"bad PostgreSQL URL {url!r}: it must start with postgresql://")
    options = parse_options({k: v for k, v in query.items() if k in STORE_OPTIONS}, url)
    rest = {k: v for k, v in query.items() if k not in STORE_OPTIONS}
    rest.setdefault("connect_timeout", ["10"])
    return urlunsplit(parts._replace(query=urlencode(rest, doseq=True))), options


def codec_from(options: Mapping[str, Any], default_dir: str | None) -> ResultCodec:
    """The result codec the URL options ask for; large results go to ``default_dir`` unless
    ``results_dir`` says otherwise."""
    from conveyor.store.codec import ResultCodec

    return ResultCodec(
        mode=options.get("results", "auto"),
        inline_max=options.get("inline_max", 1 << 20),
        results_dir=options.get("results_dir", default_dir),
    )


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password:
        netloc = parts.netloc.replace(":" + parts.password + "@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
