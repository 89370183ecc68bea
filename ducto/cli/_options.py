"""Options shared by several commands, and the parsers of their values."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
Metadata = Annotated[
    str | None,
    typer.Option("--metadata", help="A JSON object stored with the row, e.g. '{\"order\": 17}'."),
]
IdempotencyKey = Annotated[
    str | None,
    typer.Option("--key", help="Idempotency key: the same call with the same key happens once."),
]

WindowStart = Annotated[
    str | None,
    typer.Option(
        "--start",
        help="Start of the window, included (ISO 8601). Default: --last before --end.",
        show_default=False,
    ),
]
WindowEnd = Annotated[
    str | None,
    typer.Option("--end", help="End of the window, excluded (ISO 8601).", show_default="now"),
]
WindowLast = Annotated[
    str | None,
    typer.Option(
        "--last", help="The window's length, back from --end: 12h, 7d, 4w.", show_default="30d"
    ),
]

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

#: The longest window a report covers (every report, so that any of them answers in
#: moments: ``daily`` has a row per day). Longer periods are reported window by window.
MAX_WINDOW = timedelta(days=366)
#: The longest a reservation may wait before it times out (the ledger's bound).
MAX_HOLD = timedelta(days=7)


def metadata(value: str | None) -> dict[str, Any] | None:
    """The ``--metadata`` JSON object."""
    if value is None:
        return None
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--metadata") from exc
    if not isinstance(parsed, dict):
        raise typer.BadParameter("must be a JSON object", param_hint="--metadata")
    return parsed


def duration(value: str, option: str) -> timedelta:
    """``90s``, ``15m``, ``12h``, ``30d``, ``2w``."""
    match = _DURATION.match(value.strip())
    if not match:
        raise typer.BadParameter(
            f"{value!r} is not a duration like 90s, 15m, 12h, 30d or 2w", param_hint=option
        )
    try:
        return timedelta(**{_UNITS[match[2]]: int(match[1])})
    except OverflowError as exc:
        raise typer.BadParameter(f"{value!r} is too long", param_hint=option) from exc


def hold_timeout(value: str) -> int:
    """``--timeout``: seconds from 1 to 7 days, the range the ledger accepts for a hold."""
    length = duration(value, "--timeout")
    if not timedelta(seconds=1) <= length <= MAX_HOLD:
        raise typer.BadParameter(
            f"{value!r} is not between 1s and {MAX_HOLD.days}d", param_hint="--timeout"
        )
    return int(length.total_seconds())


def amount(value: int | None) -> int | None:
    """AMOUNT and --amount: whole credits, at least 1 (a negative number reaches here)."""
    if value is not None and value < 1:
        raise typer.BadParameter(f"{value} is not a positive whole number of credits")
    return value


def cost(value: int) -> int:
    """A settled AMOUNT: whole credits, 0 or more."""
    if value < 0:
        raise typer.BadParameter(f"{value} is not a whole number of credits, 0 or more")
    return value


def moment(value: str, option: str) -> datetime:
    """An ISO 8601 date or time; without a time zone it is UTC."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r} is not an ISO 8601 time", param_hint=option) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def month(value: str, option: str) -> datetime:
    """A month, ``YYYY-MM``: its first instant in UTC."""
    try:
        return datetime.strptime(value, "%Y-%m").replace(tzinfo=UTC)
    except ValueError as exc:
        raise typer.BadParameter(f"{value!r} is not a month (YYYY-MM)", param_hint=option) from exc


def expiry(expires_at: str | None, expires_in: str | None, key: str | None) -> datetime | None:
    """``--expires-at`` or ``--expires-in`` (not both); None for credits that never expire."""
    if expires_at and expires_in:
        raise typer.BadParameter("give --expires-at or --expires-in, not both")
    if expires_in and key:
        # a retry would compute another time, and the ledger refuses a key reused with
        # other parameters
        raise typer.BadParameter(
            "--expires-in gives a new time on every run, so a retry with --key would "
            "conflict: use --expires-at with --key"
        )
    if expires_at:
        return moment(expires_at, "--expires-at")
    if expires_in:
        return datetime.now(UTC) + duration(expires_in, "--expires-in")
    return None


def window(start: str | None, end: str | None, last: str | None) -> tuple[datetime, datetime]:
    """The window ``[start, end)`` of ``--start``, ``--end`` (default now) and ``--last``
    (default 30d, counted back from the end; not with ``--start``), at most
    :data:`MAX_WINDOW` long."""
    if start and last:
        raise typer.BadParameter("give --start or --last, not both")
    until = moment(end, "--end") if end else datetime.now(UTC)
    if start:
        since = moment(start, "--start")
    else:
        last = last or "30d"
        length = duration(last, "--last")
        if length > MAX_WINDOW:
            raise typer.BadParameter(f"{last!r} is {_TOO_LONG}", param_hint="--last")
        try:
            since = until - length
        except OverflowError as exc:  # before the year 1
            raise typer.BadParameter(f"{last!r} before {until} is before the year 1") from exc
    if since >= until:
        raise typer.BadParameter(f"the window [{since}, {until}) is empty: start is not before end")
    if until - since > MAX_WINDOW:
        raise typer.BadParameter(f"the window is {until - since} long: {_TOO_LONG}")
    return since, until


_TOO_LONG = (
    f"more than {MAX_WINDOW.days} days, the longest a report covers "
    "(report a longer period window by window)"
)
