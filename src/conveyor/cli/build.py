"""``conveyor build SPEC[:TABLE]``: build a table into a directory of row groups, with a
progress panel and a summary; ``--plan`` prints the column DAG instead, before anything runs.

Exit codes: 0 the build is complete, 1 it stopped early (too many failures) or came out
short, 2 bad input (one line, before any generator runs), 130 Ctrl-C (the row groups written
stay: the same command resumes).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from conveyor.cli import options as opt
from conveyor.cli.errors import exit_now, user_errors
from conveyor.outcome import INTERRUPTED

if TYPE_CHECKING:
    from conveyor.core.tableplan import TablePlan
    from conveyor.table.build import BuildStatus, BuildSummary
    from conveyor.table.spec import Table

Spec = Annotated[
    str, typer.Argument(metavar="SPEC[:TABLE]", help="Python file defining a conveyor.Table.")
]
Records = Annotated[
    int | None, typer.Option("--records", "-n", min=1, help="Rows to write (kept rows).")
]
Out = Annotated[Path | None, typer.Option("--out", "-o", help="Output directory.")]
RowGroupSize = Annotated[
    int | None,
    typer.Option("--row-group-size", min=1, help="Rows per row group (default: the table's)."),
]
InFlight = Annotated[
    int | None,
    typer.Option("--in-flight", min=1, help="Row groups open at once (default: the table's)."),
]
Format = Annotated[
    str | None,
    typer.Option("--format", help="parquet|jsonl (default: parquet when pyarrow is installed)."),
]
SummaryFile = Annotated[
    Path | None, typer.Option("--summary", help="Write the build's summary here as JSON.")
]
Replace = Annotated[
    bool, typer.Option("--replace", help="Discard what --out holds and start over.")
]
Update = Annotated[
    bool,
    typer.Option(
        "--update", help="Regenerate only the changed columns (and their downstream) in --out."
    ),
]
Preview = Annotated[
    int | None,
    typer.Option(
        "--preview",
        min=1,
        max=10_000,
        help="Generate this many rows (at most 10,000), print them as a table, write nothing.",
    ),
]
Models = Annotated[
    Path | None,
    typer.Option(
        "--models",
        help="A YAML file of providers and model aliases (replaces the"
        " spec's aliases of the same name).",
    ),
]
BuildWorkers = Annotated[
    int | None,
    typer.Option(
        "--workers",
        "-w",
        min=1,
        help="Cells run at once (default 32; 512 when columns call endpoints, whose"
        " adaptive limits cap their calls).",
    ),
]
PlanOnly = Annotated[
    bool,
    typer.Option("--plan", help="Print the column DAG and the work per row group; run nothing."),
]

FORMATS = ("parquet", "jsonl")
INTERRUPTED_NOTICE = (
    b"\nconveyor: interrupted: starting nothing more, waiting for the running cells"
    b" (Ctrl-C again to stop now)\n"
)


def build(
    spec: Spec,
    records: Records = None,
    out: Out = None,
    row_group_size: RowGroupSize = None,
    in_flight: InFlight = None,
    format: Format = None,
    workers: BuildWorkers = None,
    events: opt.Events = None,
    summary: SummaryFile = None,
    replace: Replace = False,
    update: Update = False,
    quiet: opt.Quiet = False,
    plan: PlanOnly = False,
    preview: Preview = None,
    models: Models = None,
) -> None:
    """Build a table's rows into --out, row group by row group (or --plan: show its DAG;
    --preview N: show N rows and write nothing)."""
    from conveyor.errors import UsageError
    from conveyor.table.load_spec import load_table

    with user_errors():
        if replace and update:
            raise UsageError("--replace and --update exclude each other")
        if format is not None and format not in FORMATS:
            raise UsageError(f"--format must be parquet or jsonl, not {format!r}")
        if preview is not None:
            given = [
                f
                for f, v in (
                    ("--records", records),
                    ("--out", out),
                    ("--plan", plan),
                    ("--replace", replace),
                    ("--update", update),
                    ("--summary", summary),
                    ("--events", events),
                    ("--format", format),
                    ("--row-group-size", row_group_size),
                    ("--in-flight", in_flight),
                )
                if v
            ]
            if given:
                raise UsageError(f"--preview writes nothing: it excludes {given[0]}")
        elif not plan:
            if records is None:
                raise UsageError("--records N is required (or --plan, or --preview N)")
            if out is None:
                raise UsageError("--out DIR is required (or --plan, or --preview N)")
            if summary is not None and not summary.parent.is_dir():
                raise UsageError(f"--summary {summary}: no directory {summary.parent}")
        table = load_table(spec)
        if models is not None:
            table.models_from(models)
        shown = copy.copy(table)
        if row_group_size is not None:
            shown.row_group_size = row_group_size
        if in_flight is not None:
            shown.in_flight = in_flight
        table_plan = shown.plan()  # a cycle, an unknown dependency, a field filled twice
        if plan:
            typer.echo(plan_text(shown, table_plan, records))
            return
    if preview is not None:
        raise typer.Exit(_preview(table, preview, workers=workers, quiet=quiet))
    assert records is not None and out is not None
    code = _run(table, records, out, row_group_size=row_group_size, in_flight=in_flight,
                format=format, workers=workers, events=events, summary_file=summary,
                replace=replace, update=update, quiet=quiet)  # fmt: skip
    raise typer.Exit(code)


def _run(
    table: Table, records: int, out: Path, *, row_group_size: int | None,
    in_flight: int | None, format: str | None, workers: int | None, events: Path | None,
    summary_file: Path | None, replace: bool, update: bool, quiet: bool,
) -> int:  # fmt: skip
    from conveyor.cli.buildview import make_display, summary_lines
    from conveyor.table.build import build as build_table

    display = make_display(quiet=quiet, records=records)
    noticed: list[bool] = []

    def on_status(status: BuildStatus) -> None:
        # The engine takes the first Ctrl-C between two of its steps and stops starting
        # cells (a second one stops at once); say so once, on its next tick.
        if status.interrupted and not noticed and not quiet:
            noticed.append(True)
            sys.stderr.write(INTERRUPTED_NOTICE.decode())
            sys.stderr.flush()
        if display is not None:
            display.update(status)

    with user_errors():
        try:
            result = build_table(
                table, records, out, row_group_size=row_group_size, in_flight=in_flight,
                format=format, workers=workers, events=events, replace=replace,
                update=update, on_status=on_status,
                status_every_s=0.25,
            )  # fmt: skip
        except KeyboardInterrupt as stop:
            if display is not None:
                display.close()
            got = getattr(stop, "summary", None)  # a BuildInterrupted carries the summary
            if got is not None:
                if summary_file is not None:
                    summary_file.write_text(json.dumps(got.to_json(), indent=2) + "\n")
                if not quiet:
                    for line in summary_lines(got):
                        typer.echo(line, err=True)
            typer.echo(f"conveyor: build interrupted; the row groups written stay in {out}:"
                       " run the same command again to resume", err=True)  # fmt: skip
            exit_now(INTERRUPTED)  # a generator's thread cannot be stopped: do not wait
        finally:
            if display is not None:
                display.close()
        if summary_file is not None:
            summary_file.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    if not quiet:
        for line in summary_lines(result):
            typer.echo(line, err=True)
    elif result.exit_code != 0:
        typer.echo(f"conveyor: error: {_not_complete(result)}", err=True)
    return result.exit_code


def _preview(table: Table, rows: int, *, workers: int | None, quiet: bool) -> int:
    """Build ``rows`` rows into a temporary directory (one row group), print them as a table
    on stdout, and remove the directory."""
    import shutil
    import tempfile

    from conveyor.cli.buildview import make_display, summary_lines
    from conveyor.table.build import build as build_table
    from conveyor.table.output import load

    tmp = Path(tempfile.mkdtemp(prefix="conveyor-preview-"))
    display = make_display(quiet=quiet, records=rows)
    try:
        with user_errors():
            try:
                result = build_table(table, rows, tmp, row_group_size=rows, in_flight=1,
                                     format="jsonl", workers=workers,
                                     on_status=None if display is None else display.update,
                                     status_every_s=0.25)  # fmt: skip
            finally:
                if display is not None:
                    display.close()
            got = load(tmp)
    except KeyboardInterrupt:
        shutil.rmtree(tmp, ignore_errors=True)
        exit_now(INTERRUPTED)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    typer.echo(preview_text(got, table.plan().fields))
    if result.exit_code != 0 or not quiet:
        lines = summary_lines(result)
        lines[0] = lines[0].split(" written to ")[0] + " previewed, nothing written"
        for line in lines:
            typer.echo(line, err=True)
    return result.exit_code


def preview_text(rows: list[dict[str, object]], fields: list[str], width: int = 48) -> str:
    """The rows as a table (rich, plain text), long values cut to ``width`` characters."""
    import io

    from rich.console import Console
    from rich.table import Table as RichTable

    grid = RichTable(show_lines=False, header_style="bold")
    for f in fields:
        grid.add_column(f, overflow="fold", max_width=width)
    for r in rows:
        cells = []
        for f in fields:
            v = r.get(f)
            text = v if isinstance(v, str) else json.dumps(v, default=str)
            cells.append(text if len(text) <= width * 3 else text[: width * 3 - 3] + "...")
        grid.add_row(*cells)
    buf = io.StringIO()
    Console(file=buf, width=max(80, min(240, (width + 3) * len(fields))),
            highlight=False, markup=False).print(grid)  # fmt: skip
    return buf.getvalue().rstrip()


def _not_complete(result: BuildSummary) -> str:
    if result.stopped:
        return f"build stopped early: {result.stopped}"
    return f"build came out short: {result.rows_written:,} of {result.records:,} rows"


# -- --plan ---------------------------------------------------------------------------------------
def plan_text(table: Table, plan: TablePlan, records: int | None) -> str:
    """What ``--plan`` prints: the generators in topological order, the critical path, the
    cells per generator in a row group (and, for ``records``, the row groups and tasks), and
    the DAG as a Mermaid block."""
    from conveyor.core.tablefrontier import group_span

    size = table.row_group_size
    samplers = {c.name for c in table.columns if c.sampler is not None}
    lines = [
        f"table {table.name}: {len(plan.nodes)} generators, {len(plan.fields)} columns;"
        f" row groups of {size:,} rows, {table.in_flight} in flight, seed {table.seed}",
        "",
        "generators in topological order:",
    ]
    rows = [("#", "generator", "strategy", "depth", "deps", "fields", "endpoint")]
    for i, n in enumerate(plan.nodes):
        strategy = f"{n.strategy} (sampler)" if n.name in samplers else n.strategy
        rows.append((str(i + 1), n.name, strategy, str(plan.depth[i]), ", ".join(n.deps) or "-",
                     ", ".join(n.fields), n.endpoint or "-"))  # fmt: skip
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    lines.extend("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
                 for r in rows)  # fmt: skip
    path = plan.critical_path()
    lines += ["", f"critical path: {' -> '.join(path)} ({len(path)} generators)", ""]
    per_group = plan.tasks_per_group(size)
    cells = ", ".join(f"{n.name} {k:,}" for n, k in zip(plan.nodes, per_group, strict=True))
    lines.append(f"cells per row group of {size:,} rows: {cells}; total {sum(per_group):,}")
    if records is not None:
        groups = -(-records // size)
        tasks = sum(sum(plan.tasks_per_group(group_span(g, records, size).rows))
                    for g in range(groups))  # fmt: skip
        last = group_span(groups - 1, records, size).rows
        short = f", the last of {last:,} rows" if last != size else ""
        lines.append(f"{records:,} records: {groups:,} row groups{short}, {tasks:,} tasks"
                     " (more when rows are dropped: more row groups make them up)")  # fmt: skip
    lines += ["", "```mermaid", plan.mermaid(), "```"]
    return "\n".join(lines)
