"""Writing a benchmark's table into the README, between its two marker comments."""

from __future__ import annotations

from pathlib import Path


def replace_table(readme: Path, name: str, table: str) -> None:
    """Put ``table`` between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` in ``readme``."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    text = readme.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{readme}: no {start} ... {end} block to replace")
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    readme.write_text(f"{before}{start}\n{table}\n{end}{after}")
