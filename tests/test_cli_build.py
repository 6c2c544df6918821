"""``conveyor build`` as a real subprocess on spec files written here: builds read back, every
bad input refused in one line (exit 2) before a generator runs, ``--plan``, ``--summary``,
early stop, Ctrl-C, and a SIGKILL mid-build resumed into the same files as an uninterrupted
build."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conveyor.errors import UsageError
from conveyor.table.output import load, read_group
from sigint import interrupt_when

CLI = [sys.executable, "-m", "conveyor.cli"]

#: Every spec starts with this: ``called(name)`` leaves a line in ``called`` beside the spec,
#: so a test can tell that no generator ran.
PRELUDE = """
import asyncio
import time
from pathlib import Path

import conveyor

HERE = Path(__file__).parent


def called(name):
    with (HERE / "called").open("a") as f:
        f.write(name + "\\n")
"""

#: A table with a sampler, two cell columns (one drops some rows), a full_column and an index
#: column that shows the row order.
SMALL = """
t = conveyor.Table("small", row_group_size=100, seed=5)
t.sampler("n", conveyor.integers(1, 50))


@t.column
def idx(row_index):
    return row_index


@t.column
def sq(n, idx):
    called("sq")
    if idx % 10 == 3:
        raise conveyor.DropRow("ends in three")
    return n * n


@t.column(strategy="full_column")
def group_max(sq):
    return [max(sq)] * len(sq)
"""


def conveyor(
    *args: str | Path, cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def write_spec(folder: Path, body: str, name: str = "spec.py") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(PRELUDE + body)
    return path


def parts(out: Path, fmt: str = "parquet") -> list[str]:
    """The data files of the complete row groups (a data file is renamed into place after its
    sidecar, so one present means its group is written)."""
    return sorted(p.name for p in out.glob(f"part-*.{fmt}"))


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("conveyor: error: "), lines[0]
    return lines[0]


# -- building -------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_build_writes_row_groups_read_back_in_order(tmp_path: Path, fmt: str) -> None:
    spec = write_spec(tmp_path, SMALL)
    out = tmp_path / "out"
    proc = conveyor("build", spec, "--records", "250", "--out", out, "--format", fmt,
                    cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = load(out)
    assert len(rows) == 250
    idx = [r["idx"] for r in rows]
    assert idx == sorted(idx) and not [i for i in idx if i % 10 == 3]
    assert idx == [i for i in range(max(idx) + 1) if i % 10 != 3]  # the first 250 kept rows
    assert all(r["sq"] == r["n"] ** 2 and 1 <= r["n"] <= 50 for r in rows)
    # groups of 100, 100, 50 rows keep 225: one more group of 100 (rows 250-349), trimmed
    assert parts(out, fmt) == [f"part-0000{g}.{fmt}" for g in range(4)]
    for g in range(3):
        group = read_group(out, g)
        assert group["group_max"] == [max(group["sq"])] * len(group["sq"])
    last = read_group(out, 3)  # trimmed after its full_column saw all its kept rows
    assert len(last["idx"]) == 25 and len(set(last["group_max"])) == 1
    assert last["group_max"][0] >= max(last["sq"])
    if fmt == "parquet":
        import pyarrow.parquet as pq

        assert pq.read_table(out / "part-00000.parquet").num_rows == 90  # a real Parquet file
    assert "250 of 250 rows written" in proc.stderr
    assert "dropped 35 rows: sq: ends in three 35" in proc.stderr  # rows 3, 13, ..., 343


def test_spec_imports_modules_beside_it_and_names_its_table(tmp_path: Path) -> None:
    folder = tmp_path / "specs"
    folder.mkdir()
    (folder / "words_beside.py").write_text("WORDS = ['alpha', 'beta', 'gamma']\n")
    spec = write_spec(
        folder,
        """
from words_beside import WORDS

first = conveyor.Table("first", row_group_size=4)
second = conveyor.Table("second", row_group_size=4)


@second.column
def word(row_index):
    return WORDS[row_index % 3]


first.sampler("n", conveyor.integers(1, 3))

if __name__ == "__main__":  # run like a script, but not as __main__
    called("main")
""",
    )
    out = tmp_path / "out"
    proc = conveyor(
        "build", f"{spec}:second", "--records", "5", "--out", out, "--format", "jsonl", cwd=tmp_path
    )  # fmt: skip (run from another folder)
    assert proc.returncode == 0, proc.stderr
    assert [r["word"] for r in load(out)] == ["alpha", "beta", "gamma", "alpha", "beta"]
    assert json.loads((out / "manifest.json").read_text())["table"] == "second"
    assert not (folder / "called").exists()


def test_build_not_a_tty_prints_plain_lines_and_quiet_prints_nothing(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, SMALL)
    proc = conveyor("build", spec, "--records", "150", "--out", tmp_path / "a", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    plain = [line for line in proc.stderr.splitlines() if line.startswith("build small: ")]
    assert plain and plain[-1].startswith("build small: 150/150 rows, 3 row groups, ")
    assert "rows/s" in plain[-1]
    assert "\x1b[" not in proc.stderr  # no terminal control codes off a TTY
    quiet = conveyor("build", spec, "--records", "150", "--out", tmp_path / "b", "--quiet",
                     cwd=tmp_path)  # fmt: skip
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""
    assert len(load(tmp_path / "b")) == 150


@pytest.mark.skipif(os.name != "posix", reason="a pseudo-terminal")
def test_build_on_a_tty_shows_the_panel(tmp_path: Path) -> None:
    import pty

    body = SMALL.replace("@t.column\ndef sq", '@t.column(endpoint="local/test/sq")\ndef sq')
    spec = write_spec(tmp_path, body)
    leader, follower = pty.openpty()
    proc = subprocess.Popen([*CLI, "build", str(spec), "--records", "150", "--out",
                             str(tmp_path / "out")], cwd=tmp_path, stdin=follower,
                            stdout=follower, stderr=follower)  # fmt: skip
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal (EIO)
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    text = b"".join(chunks).decode(errors="replace")
    assert "conveyor build small" in text  # the panel's title
    for header in ("column", "done / planned", "dropped", "endpoint", "429s"):
        assert header in text
    assert "local/test/sq" in text
    assert "150 / 150 rows written" in text
    assert "150 of 150 rows written" in text  # then the summary


# -- bad input: one line, exit 2, no generator called ---------------------------------------------
TWO_COLUMNS = """
t = conveyor.Table("t")


@t.column
def a(row_index):
    called("a")
    return row_index
"""

BAD_SPECS: dict[str, tuple[str, list[str], list[str]]] = {
    # name: (spec body, extra argv, substrings of the error line)
    "import error": (TWO_COLUMNS + "\nimport no_such_module_zz  # <- here\n", [],
                     ["spec.py does not import: ModuleNotFoundError: No module named",
                      "(spec.py:{line})"]),
    "raises": (TWO_COLUMNS + "\nraise RuntimeError('not today')  # <- here\n", [],
               ["does not import: RuntimeError: not today (spec.py:{line})"]),
    "syntax error": (TWO_COLUMNS + "\ndef broken(:  # <- here\n", [],
                     ["does not import: SyntaxError:", "(spec.py:{line})"]),
    "exits": (TWO_COLUMNS + "\nimport sys\nsys.exit(3)\n", [],
              ["does not import: SystemExit: 3"]),
    "no table": ("x = 1\n", [], ["defines no conveyor Table"]),
    "two tables": (TWO_COLUMNS + "\nu = conveyor.Table('u')\n", [],
                   ["several tables (t, u)", "spec.py:t"]),
    "unknown name": (TWO_COLUMNS, [":nope"], ["defines no 'nope' (tables: t)"]),
    "not a table": (TWO_COLUMNS, [":a"], ["spec.py:a is a function, not a conveyor Table"]),
    "cycle": ('''
t = conveyor.Table("t")


@t.column
def a(b):
    called("a")


@t.column
def b(a):
    called("b")
''', [], ["the table's columns form a cycle: b -> a -> b"]),
    "unknown dependency": (TWO_COLUMNS + '''

@t.column
def b(a, nosuch):
    called("b")
''', [], ["column 'b' depends on 'nosuch', which no column fills"]),
    "filled twice": (TWO_COLUMNS + '''

@t.column(side_effects=["b__trace"])
def b(a):
    called("b")


@t.column(side_effects=["b__trace"])
def c(a):
    called("c")
''', [], ["columns 'b' and 'c' both fill column 'b__trace'"]),
    "endpoint key": (TWO_COLUMNS + '''

@t.column(endpoint="api")  # <- here
def b(a):
    called("b")
''', [], ["column 'b': an endpoint key reads 'provider/model/domain', got 'api'",
          "(spec.py:{line})"]),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_one_line_exit_two_no_generator_called(tmp_path: Path, case: str) -> None:
    body, suffix, wanted = BAD_SPECS[case]
    spec = write_spec(tmp_path, body)
    marked = [i for i, text in enumerate(spec.read_text().splitlines(), 1) if "# <- here" in text]
    wanted = [w.format(line=marked[0] if marked else 0) for w in wanted]
    target = str(spec) + (suffix[0] if suffix else "")
    for argv in (["--records", "10", "--out", str(tmp_path / "out")], ["--plan"]):
        proc = conveyor("build", target, *argv, cwd=tmp_path)
        assert proc.returncode == 2, (proc.stdout, proc.stderr)
        line = one_error_line(proc)
        for text in wanted:
            assert text in line, line
        assert proc.stdout == ""
    assert not (tmp_path / "called").exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("argv", "wanted"),
    [
        (["missing.py", "--records", "5", "--out", "o"], "missing.py: no such file"),
        (["spec.py:", "--records", "5", "--out", "o"], "'' after ':' is not a name"),
        (["spec.py", "--out", "o"], "--records N is required (or --plan, or --preview N)"),
        (["spec.py", "--records", "5"], "--out DIR is required (or --plan, or --preview N)"),
        (["spec.py", "--records", "5", "--out", "o", "--replace", "--update"],
         "--replace and --update exclude each other"),
        (["spec.py", "--records", "5", "--out", "o", "--format", "csv"],
         "--format must be parquet or jsonl, not 'csv'"),
        (["spec.py", "--records", "5", "--out", "o", "--summary", "nodir/s.json"],
         "--summary nodir/s.json: no directory nodir"),
        (["spec.py", "--records", "5", "--out", "o", "--update"], "holds no build to --update"),
    ],
)  # fmt: skip
def test_bad_arguments_one_line_exit_two(tmp_path: Path, argv: list[str], wanted: str) -> None:
    write_spec(tmp_path, SMALL)
    proc = conveyor("build", *argv, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert wanted in one_error_line(proc)
    assert not (tmp_path / "called").exists()


def test_out_holding_other_builds_refused_before_generators(tmp_path: Path) -> None:
    other = write_spec(tmp_path / "other", TWO_COLUMNS.replace('Table("t")', 'Table("other")'))
    out = tmp_path / "out"
    assert conveyor("build", other, "--records", "5", "--out", out, cwd=tmp_path).returncode == 0
    assert (tmp_path / "other" / "called").exists()
    spec = write_spec(tmp_path, TWO_COLUMNS)
    proc = conveyor("build", spec, "--records", "5", "--out", out, cwd=tmp_path)
    assert proc.returncode == 2
    assert "holds the build of table 'other', not 't'" in one_error_line(proc)
    # the same table with another spec: refused unless --update or --replace
    mine = tmp_path / "mine"
    assert conveyor("build", spec, "--records", "5", "--out", mine, cwd=tmp_path).returncode == 0
    (tmp_path / "called").unlink()
    spec.write_text(spec.read_text().replace("return row_index", "return row_index * 2"))
    proc = conveyor("build", spec, "--records", "5", "--out", mine, cwd=tmp_path)
    assert proc.returncode == 2
    assert "changed columns: a" in one_error_line(proc)
    proc = conveyor("build", spec, "--records", "6", "--out", mine, cwd=tmp_path)
    assert proc.returncode == 2 and "records was 5" in one_error_line(proc)
    # a directory with other files in it
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    proc = conveyor("build", spec, "--records", "5", "--out", tmp_path / "junk", cwd=tmp_path)
    assert proc.returncode == 2 and "holds no conveyor build" in one_error_line(proc)
    assert not (tmp_path / "called").exists()


def test_update_and_replace(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, SMALL)
    out = tmp_path / "out"
    assert conveyor("build", spec, "--records", "150", "--out", out, cwd=tmp_path).returncode == 0
    before = load(out)
    spec.write_text(spec.read_text().replace("[max(sq)] * len(sq)", "[min(sq)] * len(sq)"))
    summary = tmp_path / "s.json"
    proc = conveyor("build", spec, "--records", "150", "--out", out, "--update", "--summary",
                    summary, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    s = json.loads(summary.read_text())
    assert s["row_groups_updated"] == 3 and s["row_groups_resumed"] == 0
    after = load(out)
    assert [{**r, "group_max": None} for r in after] == [{**r, "group_max": None} for r in before]
    for g in (0, 1):  # not trimmed: their full_column saw exactly these rows
        group = read_group(out, g)
        assert group["group_max"] == [min(group["sq"])] * len(group["sq"])
    proc = conveyor("build", spec, "--records", "120", "--out", out, "--replace", "--summary",
                    summary, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(load(out)) == 120
    assert json.loads(summary.read_text())["rows_written"] == 120


# -- --plan ---------------------------------------------------------------------------------------
PLANNED = """
t = conveyor.Table("planned", row_group_size=100, in_flight=2, seed=1)


@t.column
def review(title, stars):  # declared first, runs after its upstreams
    called("review")


@t.column(strategy="full_column")
def rank(review):
    called("rank")


@t.column(endpoint="local/model/x")
def title(product):
    called("title")


t.sampler("product", conveyor.category({"book": 1, "lamp": 1}))
t.sampler("stars", conveyor.integers(1, 5))
"""


def test_plan_prints_order_critical_path_cells_and_mermaid(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, PLANNED)
    proc = conveyor("build", spec, "--plan", "--records", "250", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    rows = [line.split() for line in text.splitlines() if line.startswith("  ")]
    rows = [r for r in rows if r[0].isdigit()]
    # topological, keeping the declaration order where the edges allow
    assert [r[1] for r in rows] == ["product", "title", "stars", "review", "rank"]
    assert rows[1][2:] == ["cell", "1", "product", "title", "local/model/x"]
    assert rows[3][2:] == ["cell", "2", "title,", "stars", "review", "-"]
    assert "critical path: product -> title -> review -> rank (4 generators)" in text
    assert ("cells per row group of 100 rows: product 1, title 100, stars 1, review 100,"
            " rank 1; total 203") in text  # fmt: skip
    # 250 records: groups of 100, 100, 50 -> 203 + 203 + 103 tasks
    assert "250 records: 3 row groups, the last of 50 rows, 509 tasks" in text
    mermaid = text.split("```mermaid\n", 1)[1].split("```", 1)[0]
    assert mermaid.startswith("flowchart LR")
    assert mermaid.count("-->") == 4
    assert not (tmp_path / "called").exists()
    # --row-group-size is what the plan lays out; no --records: no totals
    proc = conveyor("build", spec, "--plan", "--row-group-size", "10", cwd=tmp_path)
    assert proc.returncode == 0
    assert "cells per row group of 10 rows:" in proc.stdout and "records:" not in proc.stdout


# -- summary, early stop, Ctrl-C ------------------------------------------------------------------
FAILING = """
t = conveyor.Table("failing", row_group_size=50, seed=3)
t.sampler("n", conveyor.integers(1, 9))


@t.column
def checked(n, row_index):
    if row_index % 7 == 0:
        raise conveyor.DropRow("sevens")
    if row_index % 10 == 3:
        raise ValueError(f"row {row_index} is cursed")
    return n
"""


def expected_drops(records: int, size: int) -> tuple[int, int]:
    """The rows dropped for ``sevens`` and for the ValueError by a build of ``records`` kept
    rows of FAILING: row groups are laid out by ``records`` and opened while the kept rows
    fall short (an independent count of what the builder should do)."""
    kept = sevens = cursed = 0
    start = 0
    while kept < records:  # a whole row group is generated, then the last one trimmed
        rows = min(size, records - start) if start < records else size
        for r in range(start, start + rows):
            if r % 7 == 0:
                sevens += 1
            elif r % 10 == 3:
                cursed += 1
            else:
                kept += 1
        start += rows
    return sevens, cursed


def test_summary_json(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, FAILING)
    summary = tmp_path / "summary.json"
    events = tmp_path / "events.jsonl"
    proc = conveyor("build", spec, "--records", "420", "--out", tmp_path / "out", "--summary",
                    summary, "--format", "jsonl", "--events", events, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    kinds = [json.loads(line)["event"] for line in events.read_text().splitlines()]
    assert kinds[0] == "build_started" and kinds[-1] == "build_finished"
    assert kinds.count("row_group_written") == len(parts(tmp_path / "out", "jsonl"))
    s = json.loads(summary.read_text())
    sevens, cursed = expected_drops(420, 50)
    assert s["dropped"] == {"checked": {"sevens": sevens, "error: ValueError": cursed}}
    assert s["rows_dropped"] == sevens + cursed
    assert list(s["errors"]) == ["checked: error: ValueError"]
    first = s["errors"]["checked: error: ValueError"]
    assert re.fullmatch(r"ValueError: row \d*3 is cursed \(spec\.py:\d+ in checked\)", first)
    assert s["rows_written"] == 420 and s["records"] == 420
    assert s["complete"] is True and s["exit_code"] == 0 and s["stopped"] is None
    assert s["time_to_first_row_group_s"] is not None and s["total_s"] > 0
    assert s["row_groups"] == len(parts(tmp_path / "out", "jsonl"))
    assert f"dropped {sevens + cursed} rows" in proc.stderr
    assert f"first error in checked: {first}" in proc.stderr


ALWAYS_FAILING = """
t = conveyor.Table("doomed", row_group_size=100, seed=3)


@t.column
def fails(row_index):
    raise ValueError("no")


@t.column
def after(fails):
    called("after")
"""


@pytest.mark.parametrize("quiet", [False, True])
def test_early_stop_exits_one(tmp_path: Path, quiet: bool) -> None:
    spec = write_spec(tmp_path, ALWAYS_FAILING)
    summary = tmp_path / "summary.json"
    proc = conveyor("build", spec, "--records", "300", "--out", tmp_path / "out", "--summary",
                    summary, *(["--quiet"] if quiet else []), cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    s = json.loads(summary.read_text())
    assert s["stopped"] and "early stop" in s["stopped"]
    assert s["exit_code"] == 1 and s["complete"] is False and s["rows_written"] == 0
    assert "conveyor: error: build stopped early: early stop:" in proc.stderr
    if quiet:
        assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "called").exists()  # a failed cell's downstream never runs
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["complete"] is False


SLOW = """
t = conveyor.Table("slow", row_group_size=20, in_flight=2, seed=11)
t.sampler("k", conveyor.integers(0, 1000))
t.sampler("cat", conveyor.category({"a": 2, "b": 1}))


@t.column
async def x(k, row_index, rng):
    # The rows of the later row groups wait for a gate file the test creates: a build
    # without it cannot finish, so a kill after the first row group lands mid-build. (A
    # coroutine: Ctrl-C cancels it, where a running thread would be waited for.)
    if row_index >= GATED_FROM:
        while not (HERE / "gate").exists():
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.002)
    if k % 9 == 0:
        raise conveyor.DropRow("nine")
    return round(k * rng.random(), 6)


@t.column(strategy="full_column")
def total(x):
    return [round(sum(x), 6)] * len(x)


@t.column
def label(cat, x, total):
    return f"{cat}:{x / total:.6f}"
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGINT to a child process")
def test_ctrl_c_exits_130_and_the_same_command_resumes(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "GATED_FROM = 60\n" + SLOW)
    out = tmp_path / "out"
    argv = [*CLI, "build", str(spec), "--records", "200", "--out", str(out)]
    code, _, stderr = interrupt_when(argv, tmp_path, lambda: bool(parts(out)),
                                     what="a row group written")  # fmt: skip
    assert code == 130, stderr
    assert "build interrupted" in stderr and "run the same command again to resume" in stderr
    assert "came out short" not in stderr  # an interrupted build is not an error
    written = parts(out)
    assert 1 <= len(written) <= 3  # rows 60+ wait for the gate
    (tmp_path / "gate").touch()
    summary = tmp_path / "s.json"
    proc = conveyor("build", spec, "--records", "200", "--out", out, "--summary", summary,
                    cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(summary.read_text())["row_groups_resumed"] == len(written)
    assert len(load(out)) == 200
    plain = [line for line in proc.stderr.splitlines() if line.startswith("build slow: ")]
    assert plain[-1].startswith("build slow: 200/200 rows, ")  # the resumed rows counted


THREADED = """
t = conveyor.Table("threaded", row_group_size=10, seed=2)


@t.column
def x(row_index):  # a thread: Ctrl-C cannot cancel it
    if row_index >= 10:
        (HERE / f"running-{row_index}").touch()
        while not (HERE / "gate").exists():
            time.sleep(0.01)
    return row_index
"""


@pytest.mark.skipif(os.name != "posix", reason="SIGINT to a child process")
def test_ctrl_c_while_thread_cells_run_says_so_and_a_second_one_stops(tmp_path: Path) -> None:
    import threading

    from helpers import wait_until

    spec = write_spec(tmp_path, THREADED)
    out = tmp_path / "out"
    proc = subprocess.Popen([*CLI, "build", str(spec), "--records", "50", "--out", str(out)],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    lines: list[str] = []
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")))
    reader.start()
    try:
        wait_until(lambda: bool(parts(out)), what="row group 0 written")
        # the premise: a gated cell runs in a thread, which the first Ctrl-C cannot stop
        wait_until(lambda: any(tmp_path.glob("running-*")), what="a gated cell running")
        proc.send_signal(signal.SIGINT)
        wait_until(lambda: any("conveyor: interrupted: starting nothing more" in x for x in lines),
                   what="the notice")  # fmt: skip
        assert proc.poll() is None  # waiting for the cells running in threads (gated)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        reader.join(timeout=30)
        proc.stderr.close()
    assert "Ctrl-C again to stop now" in "".join(lines)
    assert any("build interrupted" in x for x in lines)
    assert parts(out) == ["part-00000.parquet"]


def test_sigkill_mid_build_then_resume_equals_an_uninterrupted_build(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "GATED_FROM = 100\n" + SLOW)
    out = tmp_path / "out"
    args = ["build", str(spec), "--records", "200", "--out"]
    proc = subprocess.Popen([*CLI, *args, str(out)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not parts(out):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "no row group written within 60s"
            time.sleep(0.005)  # polling the directory, not waiting for an outcome
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
    at_kill = parts(out)
    # mid-build: some row groups, not all (groups 5+ hold rows >= 100, gated)
    assert 1 <= len(at_kill) <= 5
    assert not (out / "part-00009.parquet").exists()
    (tmp_path / "gate").touch()
    summary = tmp_path / "resumed.json"
    resumed = conveyor(*args, out, "--summary", summary, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    s = json.loads(summary.read_text())
    assert s["row_groups_resumed"] == len(at_kill) >= 1
    assert s["rows_written"] == 200 and s["complete"] is True

    fresh = tmp_path / "fresh"
    whole = conveyor(*args, fresh, cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    rows = load(out)
    assert len(rows) == 200 and rows == load(fresh)
    assert parts(out) == parts(fresh) and len(parts(out)) >= 10
    for name in parts(out):
        g = int(name.split("-")[1].split(".")[0])
        assert read_group(out, g) == read_group(fresh, g)
        assert (out / name).read_bytes() == (fresh / name).read_bytes()
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in fresh.iterdir())


def test_spec_name_may_be_the_tables_own_name(tmp_path: Path) -> None:
    """``spec.py:reviews`` finds ``table = Table("reviews")`` (what --plan's header shows)."""
    from conveyor.table.load_spec import load_table

    body = 'table = conveyor.Table("reviews")\ntable.sampler("n", conveyor.integers(1, 3))\n'
    spec = write_spec(tmp_path, body)
    assert load_table(f"{spec}:reviews").name == "reviews"
    assert load_table(f"{spec}:table").name == "reviews"
    with pytest.raises(UsageError, match="defines no 'other'"):
        load_table(f"{spec}:other")
