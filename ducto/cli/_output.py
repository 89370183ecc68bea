"""How results look: a sentence and a grid of fields for a person, or JSON for a program."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from pydantic import BaseModel
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from ducto.models import ScopeBalance

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
    if isinstance(value, date):  # a datetime too
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
    if isinstance(value, ScopeBalance):  # a balance's breakdown: "40 model:gpt-image-*"
        return f"{value.remaining:,} {' '.join(value.scope) if value.scope else 'unscoped'}"
    if isinstance(value, list | tuple):
        return ", ".join(text(item) for item in value) or NONE
    return str(value)


def count(number: int, noun: str) -> str:
    """``1,000 credits``, ``1 credit``: the number and the noun, plural unless 1."""
    return f"{number:,} {noun}" + ("" if abs(number) == 1 else "s")


def credits(amount: int) -> str:
    """``1,000 credits`` (``1 credit``)."""
    return count(amount, "credit")


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


class Bar:
    """A horizontal bar: ``value`` against ``top``, the largest magnitude of its column,
    which fills the column. The column is 6 to 24 cells wide, as the terminal allows;
    eighths of a cell show small differences. A negative value (more refunded than spent)
    is red."""

    EIGHTHS = ("", "▏", "▎", "▍", "▌", "▋", "▊", "▉")

    def __init__(self, value: int, top: int) -> None:
        self.value = value
        self.top = top

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(6, 24)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        share = abs(self.value) / self.top if self.top else 0
        full, eighths = divmod(round(8 * options.max_width * share), 8)
        style = "red" if self.value < 0 else "cyan"
        yield Text("█" * full + self.EIGHTHS[eighths], style=style)


def table(
    rows: Sequence[object],
    columns: Sequence[str],
    *,
    title: str,
    as_json: bool,
    empty: str,
    chart: str | None = None,
    caption: str | None = None,
) -> None:
    """Rows of results: their JSON array, or a table of the named fields, and a bar of
    the ``chart`` field for each row."""
    if as_json:
        emit_json(list(rows))
        return
    if not rows:
        stdout.print(empty)
        return
    out = Table(title=title, title_justify="left", caption=caption, caption_justify="left")
    for column in columns:
        numeric = isinstance(getattr(rows[0], column), int)
        # beside bars the values stay whole: in a narrow terminal the bars give way first
        out.add_column(
            column.replace("_", " "), justify="right" if numeric else "left", no_wrap=bool(chart)
        )
    top = max(abs(getattr(row, chart)) for row in rows) if chart else 0
    if chart:
        out.add_column("")  # the bars
    for row in rows:
        cells: list[RenderableType] = [text(getattr(row, column)) for column in columns]
        if chart:
            cells.append(Bar(getattr(row, chart), top))
        out.add_row(*cells)
    stdout.print(out)
