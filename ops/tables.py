"""Tables for the command line that scripts can read as well as people.

On a terminal, a rich table as wide as the terminal whose cells fold (never an ellipsis).
Anywhere else (a pipe, a file, cron), plain text: a title line, then one line per row with
columns aligned by spaces and nothing cut or wrapped, so ``grep`` and ``awk`` see every
row whole. Cells are strings; ``cell`` turns the rest into text without Python reprs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import click

MISSING = "-"


def cell(value: Any) -> str:
    """Text for a cell: ``-`` for nothing, JSON for structures, never a Python repr."""
    if value is None or value == "":
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    if sys.stdout.isatty():
        _rich(title, columns, rows)
    else:
        for line in plain_lines(title, columns, rows):
            click.echo(line)


def plain_lines(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    # A newline inside a cell would split a row in two for line-oriented tools.
    flat = [[" ".join(str(c).splitlines()) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in flat)]) for i, h in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    return [title, line(columns), *(line(r) for r in flat)]


def _rich(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        # Text, not str: a cell holding "[...]" is data, not rich markup.
        table.add_row(*(Text(str(c)) for c in row))
    Console().print(table)
