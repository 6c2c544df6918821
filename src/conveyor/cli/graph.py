"""``conveyor graph FILE``: a graph's shape (counts, depth, width, critical paths) or Mermaid."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from conveyor.cli import options as opt
from conveyor.cli.errors import user_errors

if TYPE_CHECKING:
    from conveyor.model import GraphSpec

#: Task ids a printed path shows before it elides the middle.
PATH_SHOWN = 8


def graph(
    file: opt.GraphFile,
    mermaid: Annotated[bool, typer.Option("--mermaid", help="Print a Mermaid flowchart.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print facts as JSON.")] = False,
) -> None:
    """Print a graph's counts, depth, width and critical paths (or --mermaid)."""
    import dataclasses
    import json

    from conveyor.core.dag import facts
    from conveyor.graphfile import load_graph

    with user_errors():
        spec = load_graph(file, check_functions=False)
    if mermaid:
        typer.echo(to_mermaid(spec))
        return
    f = facts([t.id for t in spec.tasks], [t.deps for t in spec.tasks],
              [t.runtime_s for t in spec.tasks])  # fmt: skip
    if as_json:
        typer.echo(json.dumps({"name": spec.name, **dataclasses.asdict(f)}, indent=2))
        return
    typer.echo(f"graph {spec.name}")
    typer.echo(f"  tasks {f.tasks}, edges {f.edges}, roots {f.roots}, leaves {f.leaves}")
    typer.echo(f"  depth {f.depth} levels, widest level {f.width} tasks")
    typer.echo(f"  critical path by count: {len(f.critical_path)} tasks: {path(f.critical_path)}")
    if f.critical_path_runtime is not None:
        typer.echo(
            f"  critical path by runtime_s: {f.critical_runtime_s:.1f}s over "
            f"{len(f.critical_path_runtime)} tasks: {path(f.critical_path_runtime)}"
        )
        typer.echo(f"  total runtime_s {f.total_runtime_s:.1f}s")
    if spec.groups:
        gs = ", ".join(f"{g.name}(w={g.weight:g}, cap={g.cap})" for g in spec.groups.values())
        typer.echo(f"  groups {gs}")


def path(ids: list[str], limit: int = PATH_SHOWN) -> str:
    """``a -> b -> c``, with the middle elided beyond ``limit`` ids."""
    if len(ids) <= limit:
        return " -> ".join(ids)
    return " -> ".join(ids[: limit // 2]) + " -> ... -> " + " -> ".join(ids[-limit // 2 :])


def to_mermaid(spec: GraphSpec) -> str:
    """A Mermaid ``flowchart TD`` of the graph; ids are quoted into safe node names."""
    names = {t.id: f"t{i}" for i, t in enumerate(spec.tasks)}
    lines = ["flowchart TD"]
    for t in spec.tasks:
        label = t.id.replace('"', "'")
        lines.append(f'    {names[t.id]}["{label}"]')
    for t in spec.tasks:
        for d in t.deps:
            lines.append(f"    {names[d]} --> {names[t.id]}")
    return "\n".join(lines)
