"""Results for people and for pipes: a readable table at a terminal, Parquet otherwise."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import pyarrow as pa

from smcli.stage import OutputTarget, new_meta, write_table


def wants_table(output: str | None, force: bool = False) -> bool:
    """A human reads stdout: no -o given and stdout is a terminal (or ``--table``)."""
    if force and output is not None:
        from smcli.errors import UsageError

        raise UsageError("--table prints to stdout; it does not go with -o")
    return force or (output is None and sys.stdout.isatty())


def emit(table: pa.Table, kind: str, producer: dict, output: str | None, *,
         title: str = "", show: Sequence[str] | None = None, group: str | None = None,
         force_table: bool = False) -> int:
    """Write ``table`` as an smcli file of ``kind`` to -o / a pipe, or print it at a terminal.

    ``show`` picks the columns printed; ``group`` starts a new block when its value changes.
    Returns the number of rows.
    """
    if not wants_table(output, force_table):
        from smcli.stage import resolve_output

        target: OutputTarget = resolve_output(output)
        return write_table(target, table, new_meta(kind, producer))
    from rich.table import Table

    cols = list(show or table.column_names)
    rows = table.select(cols).to_pylist()
    out = console()
    view = Table(title=title or None, show_lines=False, title_justify="left")
    for c in cols:
        numeric = c == "rank" or c.endswith(("score", "cosine"))
        view.add_column(c, overflow="fold", justify="right" if numeric else "left")
    previous = _START
    for row in rows:
        if group is not None:
            if previous is not _START and row[group] != previous:
                view.add_section()
            previous = row[group]
        view.add_row(*[_fmt(row[c]) for c in cols])
    out.print(view)
    return len(rows)


def console(**options):
    """A rich console on stdout (120 columns in a pipe) whose broken pipe reaches the CLI's
    handler (a quiet exit 141) instead of rich's own exit 1, the code of bad input."""
    import errno

    from rich.console import Console

    class PipeConsole(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    return PipeConsole(**{"width": None if sys.stdout.isatty() else 120, **options})


_START = object()


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)
