"""Every event kind the docs list is emitted somewhere, and every kind emitted is listed
(issue 16, point 16); a ``--fail-fast`` run cancels what it leaves, with ``task_cancelled``."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

from conveyor.events import EVENT_NAMES

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "conveyor"


def emitted_kinds() -> set[str]:
    """Event kinds the code emits: ``{"event": "kind", ...}`` dicts, and ``tx.audit(now,
    "kind", ...)`` (SQL stores) or ``_record(i, "kind", ...)`` (memory store) calls, anywhere in
    ``src`` (the list itself, in events.py, does not count)."""
    kinds: set[str] = set()
    for path in SRC.rglob("*.py"):
        if path.name == "events.py" and path.parent == SRC:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            values: list[ast.expr] = []
            if isinstance(node, ast.Dict):
                pairs = zip(node.keys, node.values, strict=True)
                values = [v for k, v in pairs if isinstance(k, ast.Constant) and k.value == "event"]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                is_audit = node.func.attr in ("audit", "_record") and len(node.args) >= 2
                values = [node.args[1]] if is_audit else []
                # a running task given back (memory and SQL stores): the kind is the 3rd arg
                if node.func.attr in ("_give_back", "_release_many") and len(node.args) >= 3:
                    values = [node.args[2]]
            kinds.update(
                v.value for v in values if isinstance(v, ast.Constant) and isinstance(v.value, str)
            )
    return kinds


def readme_kinds() -> set[str]:
    """The event kinds README.md lists after "Event kinds:" (one paragraph)."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"Event kinds:(.*?)(?:\n\n|$)", text, re.S)
    assert match, "README.md lists no event kinds"
    return set(re.findall(r"`([a-z_]+)`", match.group(1)))


def test_events_listed_are_the_events_emitted() -> None:
    emitted = emitted_kinds()
    assert emitted, "found no emitted events: the scan is broken"
    assert set(EVENT_NAMES) - emitted == set(), "listed in events.EVENT_NAMES, never emitted"
    assert emitted - set(EVENT_NAMES) == set(), "emitted, missing from events.EVENT_NAMES"
    assert readme_kinds() == set(EVENT_NAMES)


def test_run_fail_fast_cancels_what_it_leaves(tmp_path: Path) -> None:
    tasks = [{"id": "bad", "cmd": "exit 3"}, {"id": "after", "cmd": "echo", "deps": ["bad"]}]
    tasks += [{"id": f"later{i}", "cmd": "echo later"} for i in range(3)]
    (tmp_path / "g.json").write_text(json.dumps({"name": "ff", "tasks": tasks}))
    argv = [sys.executable, "-m", "conveyor.cli", "run", "g.json", "--workers", "1",
            "--fail-fast", "--events", "ev.jsonl", "-q"]  # fmt: skip
    out = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    events = [json.loads(line) for line in (tmp_path / "ev.jsonl").read_text().splitlines()]
    last = {e["task"]: e["event"] for e in events if "task" in e}
    assert last == {"bad": "task_failed", "after": "task_skipped",
                    **{f"later{i}": "task_cancelled" for i in range(3)}}  # fmt: skip
    cancelled = [e for e in events if e["event"] == "task_cancelled"]
    assert {e["reason"] for e in cancelled} == {"fail_fast"}
