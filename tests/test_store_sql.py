"""The SQL text of the durable stores names its rules: no state numbers and no hand-written key
in ``store/sql/*.sql``; the loader fills them in from ``TaskState``, ``core/transitions.py`` and
``core/ordering.py`` and refuses a name it does not know."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import conveyor.store
from conveyor.core.ordering import KEY_COLUMNS
from conveyor.core.transitions import SKIPPABLE, UNFINISHED
from conveyor.model import TaskState
from conveyor.store import sqlqueries
from conveyor.store.postgres import PostgresIo
from conveyor.store.sqlite import SqliteIo

SQL_DIR = Path(conveyor.store.__file__).parent / "sql"


def _code(path: Path) -> str:
    """The file without its comments."""
    return "\n".join(line.split("--")[0] for line in path.read_text().splitlines())


@pytest.mark.parametrize("name", ["queries.sql", "schema.sql"])
def test_sql_files_name_states_and_the_key(name: str) -> None:
    code = _code(SQL_DIR / name)
    numbers = re.findall(r"\bstate\s*(?:=|<>|IN\s*\()\s*\d", code, flags=re.I)
    assert numbers == [], f"{name} spells task states as numbers: {numbers}"
    assert not re.search(r"THEN\s+\d\s+ELSE\s+state", code), f"{name}: a state number in a CASE"
    assert "neg_depth, root_seq, seq" not in code, f"{name} writes the key by hand: use {{KEY}}"


def test_sql_loaded_queries_carry_the_named_values() -> None:
    for dialect in ("sqlite", "postgres"):
        q = sqlqueries.load_queries(dialect)
        assert not any(re.search(r"\{[A-Z_]+\}", sql) for sql in q.values())
        assert f"state = {int(TaskState.READY)}" in q["any_ready"]
        assert f"IN ({', '.join(str(int(s)) for s in sorted(UNFINISHED))})" in q["unfinished"]
        assert f"IN ({', '.join(str(int(s)) for s in sorted(SKIPPABLE))})" in q["children_to_skip"]
        assert f"ORDER BY {', '.join(KEY_COLUMNS)}" in q["ready_window"]
    for io in (SqliteIo, PostgresIo):
        statements = [s for _v, block in sqlqueries.load_migrations(io.dialect, io.types)
                      for s in block]  # fmt: skip
        assert not any(re.search(r"\{[A-Z_]+\}", s) for s in statements)
        ready = next(s for s in statements if "INDEX tasks_ready" in s)
        assert ready.endswith(f"({', '.join(KEY_COLUMNS)}) WHERE state = {int(TaskState.READY)}")


def test_sql_loader_refuses_an_unknown_name() -> None:
    with pytest.raises(ValueError, match=r"unknown name \{REDY\}"):
        sqlqueries._fill("SELECT 1 FROM tasks WHERE state = {REDY}", sqlqueries.CONSTANTS, "q")
    with pytest.raises(ValueError, match=r"unknown name \{LOOP\}"):  # a fragment naming itself
        sqlqueries._fill("SELECT {LOOP}", {}, "q", {"LOOP": "1 + {LOOP}"})


def test_sql_fragments_are_filled_in_where_named_and_each_is_used() -> None:
    got = sqlqueries._fill("UPDATE t {SET_READY} WHERE {COND}", sqlqueries.CONSTANTS, "q",
                           {"SET_READY": "SET state = {READY}", "COND": "seq = 1"})  # fmt: skip
    assert got == f"UPDATE t SET state = {int(TaskState.READY)} WHERE seq = 1"
    text = (Path(sqlqueries.__file__).parent / "sql" / "queries.sql").read_text()
    names = re.findall(r"^-- fragment: ([A-Z_]+)$", text, flags=re.M)
    assert names  # the release clauses are fragments
    for name in names:  # a fragment no query names would be dead text
        assert text.count("{" + name + "}") >= 1, name
