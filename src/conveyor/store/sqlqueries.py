"""The SQL text of the stores, loaded once per dialect: named queries (``sql/queries.sql``) and
forward migrations (``sql/schema.sql``).

Names in braces are filled in while loading, so that the SQL never spells a rule by hand:
task states (``{READY}``, ``{DONE}`` ...) from ``TaskState``; sets of states (``{UNFINISHED}``,
``{SKIPPABLE}``, ``{RETRYABLE}``) from ``core/transitions.py``; ``{KEY}``, the columns of the
depth-first key, from ``core/ordering.py``; and in the schema the dialect's type names
(``{SEQ}``, ``{REAL}`` ...); and in the queries their shared clauses, ``-- fragment:`` blocks.
They are constants, not parameters: a partial index applies only where the planner sees the
state in the query text. A name left unknown is an error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path

from conveyor.core.ordering import KEY_COLUMNS
from conveyor.core.transitions import RETRYABLE, SKIPPABLE, UNFINISHED
from conveyor.model import TaskState

_SQL_DIR = Path(__file__).parent / "sql"
_NAME = re.compile(r"^--\s*name:\s*([\w]+)(?:@(\w+))?\s*$")
_FRAGMENT = re.compile(r"^--\s*fragment:\s*([A-Z_]+)\s*$")
_PARAM = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)")
_BRACED = re.compile(r"\{([A-Z_]+)\}")


def _states(states: Iterable[TaskState]) -> str:
    return ", ".join(str(int(s)) for s in sorted(states))


#: What ``{NAME}`` stands for in both files.
CONSTANTS: Mapping[str, str] = {
    **{s.name: str(int(s)) for s in TaskState},
    "UNFINISHED": _states(UNFINISHED),
    "SKIPPABLE": _states(SKIPPABLE),
    "RETRYABLE": _states(RETRYABLE),
    "KEY": ", ".join(KEY_COLUMNS),
}


def _fill(
    text: str,
    values: Mapping[str, str],
    where: str,
    fragments: Mapping[str, str] | None = None,
    within: tuple[str, ...] = (),
) -> str:
    """``text`` with each ``{NAME}`` filled in: a fragment's text, itself filled (``within``:
    the fragments being filled, which may not name themselves), or a value."""

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if fragments is not None and key in fragments and key not in within:
            return _fill(fragments[key], values, where, fragments, (*within, key))
        try:
            return values[key]
        except KeyError:
            raise ValueError(f"{where}: unknown name {m.group(0)}") from None

    return _BRACED.sub(sub, text)


@cache
def load_queries(dialect: str) -> dict[str, str]:
    """``queries.sql`` as ``{name: sql}`` for one dialect (``name@dialect`` overrides win).
    A ``-- fragment: NAME`` block is SQL text that ``{NAME}`` stands for in the queries (and
    in other fragments): a clause several queries share, written once."""
    common: dict[str, str] = {}
    special: dict[str, str] = {}
    fragments: dict[str, str] = {}
    name: str | None = None
    target: dict[str, str] = common
    lines: list[str] = []

    def flush() -> None:
        if name is not None:
            target[name] = "\n".join(lines).strip().rstrip(";")

    for line in (_SQL_DIR / "queries.sql").read_text().splitlines():
        m = _NAME.match(line) or _FRAGMENT.match(line)
        if m:
            flush()
            name, lines = m.group(1), []
            if m.re is _FRAGMENT:
                target = fragments
            else:
                target = common if m.group(2) is None else special if m.group(2) == dialect else {}
        elif not line.lstrip().startswith("--"):
            lines.append(line)
    flush()

    out = {
        k: _fill(v, CONSTANTS, f"queries.sql: {k}", fragments)
        for k, v in {**common, **special}.items()
    }
    if dialect == "postgres":
        out = {k: _PARAM.sub(r"%(\1)s", v.replace("%", "%%")) for k, v in out.items()}
    return out


@cache
def load_migrations(
    dialect: str, types: tuple[tuple[str, str], ...]
) -> list[tuple[int, list[str]]]:
    """``schema.sql`` as ``[(version, [statement, ...])]`` with the dialect's type names."""
    values = {**CONSTANTS, **dict(types)}
    out: list[tuple[int, list[str]]] = []
    text = (_SQL_DIR / "schema.sql").read_text()
    for part in re.split(r"^-- migration: (\d+)\s*$", text, flags=re.M)[1:]:
        if part.strip().isdigit():
            out.append((int(part), []))
            continue
        body = "\n".join(line.split("--")[0] for line in part.splitlines())
        body = _fill(body, values, f"schema.sql: migration {out[-1][0]}")
        out[-1][1].extend(s.strip() for s in body.split(";") if s.strip())
    return out
