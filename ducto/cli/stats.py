"""``ducto stats [REPORT]``: what was spent in a window [start, end): in all, per day, per
model, per user, or the top spenders (docs/analytics.md says what counts)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Annotated, NamedTuple

import typer

from ducto.cli import _options
from ducto.cli._options import JsonFlag, WindowEnd, WindowLast, WindowStart
from ducto.cli._output import count, credits, show, table, text
from ducto.cli._session import session
from ducto.manager import CreditManager
from ducto.models import AggregateStatsRow


class Report(StrEnum):
    """The reports of ``ducto stats``, one per analytics method of the manager."""

    SUMMARY = "summary"
    DAILY = "daily"
    MODELS = "models"
    USERS = "users"
    TOP = "top"


class Layout(NamedTuple):
    """How a report's rows are shown: the fields, the title, the field drawn as bars."""

    columns: tuple[str, ...]
    title: str
    chart: str | None = None
    caption: str | None = None


SPEND = ("spent", "refunded", "net_spent", "charges")
LAYOUTS = {
    Report.DAILY: Layout(("day", *SPEND, "users"), "Spend per UTC day", chart="net_spent"),
    Report.MODELS: Layout(
        ("model", *SPEND, "users"),
        "Spend per model",
        chart="net_spent",
        caption=f"{text(None)}: charges by amount and fixed-cost jobs (no model).",
    ),
    Report.USERS: Layout(("user_id", *SPEND), "Spend per user"),
    Report.TOP: Layout(
        ("rank", "user_id", "net_spent", "spent", "refunded", "charges"),
        "Top users by net spend",
    ),
}


def stats(
    ctx: typer.Context,
    report: Annotated[Report, typer.Argument(help="What to report.")] = Report.SUMMARY,
    limit: Annotated[
        int | None,
        typer.Option(min=1, max=1000, help="How many users top shows.", show_default="10"),
    ] = None,
    start: WindowStart = None,
    end: WindowEnd = None,
    last: WindowLast = None,
    as_json: JsonFlag = False,
) -> None:
    """Report the spend of a window [start, end), by default the last 30 days.

    summary: the window's totals (the default)
    daily: spend per UTC day, with a bar chart
    models: spend per model, with a bar chart
    users: spend per user (a team pool's charges count for the member who spent)
    top: the users with the highest net spend, ranked
    """
    if limit is not None and report is not Report.TOP:
        raise typer.BadParameter("only the top report takes a limit", param_hint="--limit")
    since, until = _options.window(start, end, last)
    window = f"from {text(since)} to {text(until)}"
    with session(ctx.obj) as manager:
        result = _fetch(manager, report, since, until, limit or 10)
    if isinstance(result, AggregateStatsRow):
        headline = (
            f"Net spend {window}: {credits(result.net_spent)} by {count(result.users, 'user')} "
            f"({count(result.charges, 'charge')}, {count(result.refunds, 'refund')})."
        )
        show(result, headline, as_json=as_json)
        return
    layout = LAYOUTS[report]
    table(
        result,
        layout.columns,
        title=f"{layout.title}, {window}",
        as_json=as_json,
        empty=f"No charges {window}.",  # (daily has a row for every day)
        chart=layout.chart,
        caption=layout.caption,
    )


def _fetch(
    manager: CreditManager, report: Report, start: datetime, end: datetime, limit: int
) -> AggregateStatsRow | Sequence[object]:
    match report:
        case Report.SUMMARY:
            return manager.aggregate_stats(start, end)
        case Report.DAILY:
            return manager.daily_spend(start, end)
        case Report.MODELS:
            return manager.spend_by_model(start, end)
        case Report.USERS:
            return manager.spend_by_user(start, end)
        case Report.TOP:
            return manager.top_users(limit, start, end)
