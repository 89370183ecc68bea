"""``ducto export journal``: every journal row of a window, as CSV or JSON lines, streamed.

Rows are read a page at a time (:meth:`~ducto.CreditManager.export_journal`, a keyset
cursor) and written as they come, so memory stays flat however many rows there are. Only
the rows go to stdout (nothing at all with ``-o``); a progress line goes to stderr when it
is a terminal. An export is not a report: its window has no length bound (docs/cli.md).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ducto.cli import _options
from ducto.cli._session import session, stderr
from ducto.models import JournalRow

app = typer.Typer(help="Export the ledger's data, streamed.", no_args_is_help=True)

#: The columns of an export, in the order of :class:`~ducto.JournalRow` (and of the CSV).
COLUMNS = tuple(f.name for f in dataclasses.fields(JournalRow))
#: How many rows are fetched per call, and how often the progress line moves.
PAGE_SIZE = 1000


class Format(StrEnum):
    """The formats of an export."""

    CSV = "csv"
    JSONL = "jsonl"


def journal(
    ctx: typer.Context,
    fmt: Annotated[
        Format,
        typer.Option("--format", help="csv (with a header row) or jsonl (one object a line)."),
    ],
    start: Annotated[
        str, typer.Option("--start", help="Start of the window, included (ISO 8601).")
    ],
    end: Annotated[str, typer.Option("--end", help="End of the window, excluded (ISO 8601).")],
    user: Annotated[
        str | None,
        typer.Option("--user", help="Only this user's rows.", show_default="every user"),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o", "--output", help="Write to this file instead of stdout.", show_default=False
        ),
    ] = None,
) -> None:
    """Export the journal rows created in [start, end), in (account_id, seq) order.

    Times without a time zone are UTC; the window may be of any length.
    CSV has a header row; metadata and usage are JSON text, a missing value is empty.
    With -o the file appears only once the export is complete.
    """
    since, until = _options.moment(start, "--start"), _options.moment(end, "--end")
    if since >= until:
        raise typer.BadParameter(f"the window [{since}, {until}) is empty: start is not before end")
    with session(ctx.obj) as manager, _target(output) as out:
        rows = manager.export_journal(since, until, user, page_size=PAGE_SIZE)
        write = _csv_writer(out) if fmt is Format.CSV else _jsonl_writer(out)
        if not stderr.is_terminal:
            for row in rows:
                write(row)
            return
        with Progress(
            SpinnerColumn(),
            TextColumn("exporting the journal: {task.completed:,} rows"),
            TimeElapsedColumn(),
            console=stderr,
            transient=True,
        ) as progress:
            task = progress.add_task("export", total=None)
            for n, row in enumerate(rows, 1):
                write(row)
                if n % PAGE_SIZE == 0:
                    progress.update(task, completed=n)


@contextmanager
def _target(output: Path | None) -> Iterator[TextIO]:
    """stdout, or a file written beside ``output`` and renamed onto it once complete (so
    a failed export leaves no partial file under the name asked for)."""
    if output is None:
        yield sys.stdout
        sys.stdout.flush()
        return
    partial = output.with_name(f".{output.name}.partial")
    try:
        # newline="": the csv module writes its own line ends
        with partial.open("w", encoding="utf-8", newline="") as file:
            yield file
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)


def _cell(value: Any) -> Any:
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    if isinstance(value, datetime):
        return value.isoformat()
    return value  # None: csv writes an empty field


def _csv_writer(out: TextIO) -> Callable[[JournalRow], None]:
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)

    def write(row: JournalRow) -> None:
        writer.writerow([_cell(getattr(row, name)) for name in COLUMNS])

    return write


def _jsonl_writer(out: TextIO) -> Callable[[JournalRow], None]:
    def write(row: JournalRow) -> None:
        document = {name: getattr(row, name) for name in COLUMNS}
        document["created_at"] = row.created_at.isoformat()
        out.write(json.dumps(document, separators=(",", ":"), ensure_ascii=False) + "\n")

    return write


app.command("journal")(journal)
