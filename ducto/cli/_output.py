"""How results look: a sentence and a grid of fields for a person, or JSON for a program."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

stdout = Console(highlight=False)

#: Shown in tables for a value that is not there (no expiry, no transaction).
NONE = "—"


def plain(value: object) -> Any:
    """A result, list or value as JSON-ready data (datetimes as ISO 8601 text)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, BaseModel):  # a pricing config
        return value.model_dump(mode="json")
    if isinstance(value, Decimal):  # exact, as text
        return str(value)
    return value


def emit_json(value: object) -> None:
    """Print ``value`` as JSON on stdout, nothing else."""
    print(json.dumps(plain(value), indent=2, sort_keys=False))


def text(value: object) -> str:
    """One value as a person reads it: credits with separators, times to the second."""
    if value is None:
        return NONE
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, list | tuple):
        return ", ".join(text(item) for item in value) or NONE
    return str(value)


def credits(amount: int) -> str:
    """``1,000 credits`` (``1 credit``)."""
    return f"{amount:,} credit" + ("" if abs(amount) == 1 else "s")


def show(result: object, headline: str, *, as_json: bool) -> None:
    """A result: its JSON, or the headline and then every field, one per line."""
    if as_json:
        emit_json(result)
        return
    stdout.print(headline, soft_wrap=True)
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim")
    grid.add_column()
    for name, value in plain_fields(result):
        grid.add_row(name.replace("_", " "), text(value))
    stdout.print(grid)


def plain_fields(result: object) -> list[tuple[str, object]]:
    """The fields of a result dataclass, in order."""
    assert dataclasses.is_dataclass(result)
    return [(f.name, getattr(result, f.name)) for f in dataclasses.fields(result)]


def table(
    rows: Sequence[object], columns: Sequence[str], *, title: str, as_json: bool, empty: str
) -> None:
    """Rows of results: their JSON array, or a table of the named fields."""
    if as_json:
        emit_json(list(rows))
        return
    if not rows:
        stdout.print(empty)
        return
    out = Table(title=title, title_justify="left")
    for column in columns:
        numeric = isinstance(getattr(rows[0], column), int)
        out.add_column(column.replace("_", " "), justify="right" if numeric else "left")
    for row in rows:
        out.add_row(*(text(getattr(row, column)) for column in columns))
    stdout.print(out)
