"""``ducto limits set|show``: an account's spend windows, cap on holds and credit line
(docs/limits.md)."""

from __future__ import annotations

import re
from typing import Annotated

import typer

from ducto.cli import _options
from ducto.cli._options import JsonFlag
from ducto.cli._output import credits, emit_json, plain, stdout, table, text
from ducto.cli._session import session
from ducto.models import LimitsResult, SpendWindow

app = typer.Typer(
    help="Set and show an account's spending limits, cap on holds and credit line.",
    no_args_is_help=True,
)

UserId = Annotated[
    str,
    typer.Argument(
        metavar="USER", help="The user's id (auth.uid() on Supabase), or team:<team id>."
    ),
]

# PERIOD:LIMIT[:MODEL_PATTERN], PERIOD being day, week, month or a number of hours (24h)
_WINDOW = re.compile(r"^(day|week|month|(\d+)h):(\d+)(?::(.+))?$")


def window(value: str) -> SpendWindow:
    """``--window day:1000``, ``--window 24h:500:img-*``."""
    match = _WINDOW.match(value.strip())
    if not match:
        raise typer.BadParameter(
            f"{value!r} is not PERIOD:LIMIT[:MODEL_PATTERN] with PERIOD day, week, month or"
            " a number of hours like 24h",
            param_hint="--window",
        )
    period, hours, limit, pattern = match.groups()
    return SpendWindow(
        period="hours" if hours else period,
        spend_limit=int(limit),
        hours=int(hours) if hours else None,
        model_pattern=pattern,
    )


@app.command("set")
def set_(
    ctx: typer.Context,
    user_id: UserId,
    windows: Annotated[
        list[str] | None,
        typer.Option(
            "--window",
            help="A spend window PERIOD:LIMIT[:MODEL_PATTERN], PERIOD day, week, month (UTC)"
            " or hours like 24h (rolling); repeat for several.",
            show_default=False,
        ),
    ] = None,
    max_holds: Annotated[
        int | None,
        typer.Option(min=0, help="Most holds active at once.", show_default="no cap"),
    ] = None,
    credit_line: Annotated[
        int | None,
        typer.Option(min=0, help="How far below min_balance it may go.", show_default="the plan's"),
    ] = None,
    grace: Annotated[
        str | None,
        typer.Option(
            help="How long it may stay below zero on its credit line: 90m, 12h, 30d, 2w.",
            show_default="no deadline",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Set an account's whole limit configuration; what is left out is no limit.

    No --window: no spend windows; no --max-holds: no cap; no --credit-line: the plan's.
    """
    specs = [window(value) for value in windows or []]
    grace_seconds = None
    if grace is not None:
        grace_seconds = int(_options.duration(grace, "--grace").total_seconds())
    with session(ctx.obj) as manager:
        result = manager.set_limits(
            user_id,
            windows=specs,
            max_active_holds=max_holds,
            credit_line=credit_line,
            credit_line_grace_seconds=grace_seconds,
        )
    _show(result, as_json, f"Limits of {result.user_id} set.")


@app.command()
def show(ctx: typer.Context, user_id: UserId, as_json: JsonFlag = False) -> None:
    """Show an account's limits, with what each window has used and held now."""
    with session(ctx.obj) as manager:
        result = manager.get_limits(user_id)
    _show(result, as_json, f"Limits of {result.user_id}.")


def _show(result: LimitsResult, as_json: bool, headline: str) -> None:
    if as_json:
        emit_json(plain(result))
        return
    stdout.print(headline)
    cap = "no cap" if result.max_active_holds is None else text(result.max_active_holds)
    stdout.print(
        f"Active holds: {text(result.active_holds)} of {cap} ({credits(result.held)} held)."
    )
    line = f"Credit line: {credits(result.credit_line)}"
    if result.credit_line_grace_seconds is not None:
        line += f", grace {text(result.credit_line_grace_seconds)} s"
    stdout.print(line + f". Balance: {credits(result.balance)}.")
    if result.credit_line_due_at is not None:
        stdout.print(
            f"Below zero since {text(result.below_zero_since)},"
            f" due {text(result.credit_line_due_at)}."
        )
    table(
        result.windows,
        ("period", "hours", "model_pattern", "spend_limit", "used", "held", "remaining"),
        title="Spend windows",
        as_json=False,
        empty="No spend windows.",
    )
