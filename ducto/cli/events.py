"""``ducto events ...``: the outbox of durable events (docs/events.md).

``deliver`` POSTs every due delivery to its endpoint, signed, and reports it (run it from
cron, or leave it to the edge function ``credit-events-deliver``); ``list`` shows events;
``alert`` and ``endpoint`` configure balance alerts and where events go.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated

import typer

from ducto.cli._options import JsonFlag
from ducto.cli._output import count, emit_json, show, stdout, table
from ducto.cli._session import session

app = typer.Typer(help="Durable events: deliver, list, alerts and endpoints.", no_args_is_help=True)
alert = typer.Typer(help="Balance alerts (balance.low thresholds).", no_args_is_help=True)
endpoint = typer.Typer(help="Endpoints events are POSTed to.", no_args_is_help=True)
app.add_typer(alert, name="alert")
app.add_typer(endpoint, name="endpoint")

EventTypes = Annotated[
    list[str] | None,
    typer.Option("--type", help="An event type (repeat for several).", show_default="every type"),
]


@app.command()
def deliver(
    ctx: typer.Context,
    batch_size: Annotated[
        int, typer.Option(min=1, max=1000, help="Deliveries claimed per call.")
    ] = 50,
    lease: Annotated[
        int, typer.Option(min=2, max=3600, help="Seconds a claim is this worker's alone.")
    ] = 60,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds to wait for a receiver's answer.")
    ] = 10.0,
    as_json: JsonFlag = False,
) -> None:
    """POST every due event delivery, signed, and mark each delivered (2xx) or failed
    (retried later, with backoff). Several workers may run at once."""
    with session(ctx.obj) as manager:
        report = manager.deliver_events(
            batch_size=batch_size, lease_seconds=lease, timeout=min(timeout, lease - 1)
        )
    if as_json:
        emit_json(report)
        return
    stdout.print(
        f"{count(report.delivered, 'delivery')} delivered,"
        f" {count(report.failed, 'delivery')} failed (retried later).",
        soft_wrap=True,
    )
    for error in report.errors:
        stdout.print(f"  {error}", soft_wrap=True)


@app.command("list")
def list_events(
    ctx: typer.Context,
    user: Annotated[
        str | None, typer.Option("--user", help="Only this user's events.", show_default="all")
    ] = None,
    after: Annotated[
        str | None, typer.Option("--after", help="Only events after this event id (a cursor).")
    ] = None,
    types: EventTypes = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many.")] = 100,
    as_json: JsonFlag = False,
) -> None:
    """Events of the outbox, oldest first."""
    with session(ctx.obj) as manager:
        events = manager.list_events(user, after=after, types=types, limit=limit)
    table(
        events,
        ("id", "created_at", "type", "user_id", "payload", "delivery"),
        title="Events",
        as_json=as_json,
        empty="No events.",
    )


@alert.command("set")
def set_alert(
    ctx: typer.Context,
    user: Annotated[str | None, typer.Option("--user", help="The user (or team:<id>).")] = None,
    plan: Annotated[str | None, typer.Option("--plan", help="Every account on a plan.")] = None,
    threshold: Annotated[
        int | None, typer.Option("--threshold", min=1, help="Fire below this many credits.")
    ] = None,
    percent: Annotated[
        str | None, typer.Option("--percent", help="Fire below this % of the last top-up.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Set a balance.low threshold (once per downward crossing; re-arms above it)."""
    value: Decimal | None = None
    if percent is not None:
        try:
            value = Decimal(percent)
        except InvalidOperation as exc:
            raise typer.BadParameter(f"not a number: {percent!r}", param_hint="--percent") from exc
    with session(ctx.obj) as manager:
        created = manager.set_alert(user, plan_id=plan, threshold=threshold, percent=value)
    show(created, f"Alert {created.id} is set.", as_json=as_json)


@alert.command("delete")
def delete_alert(
    ctx: typer.Context,
    alert_id: Annotated[str, typer.Argument(help="The alert's id.")],
    as_json: JsonFlag = False,
) -> None:
    """Delete a balance.low threshold."""
    with session(ctx.obj) as manager:
        deleted = manager.delete_alert(alert_id)
    if as_json:
        emit_json({"deleted": deleted})
        return
    stdout.print(f"Alert {alert_id} " + ("deleted." if deleted else "did not exist."))


@alert.command("list")
def list_alerts(
    ctx: typer.Context,
    user: Annotated[str | None, typer.Option("--user", help="Only this user's.")] = None,
    plan: Annotated[str | None, typer.Option("--plan", help="Only this plan's.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Balance alerts: a user's, a plan's, or all."""
    with session(ctx.obj) as manager:
        alerts = manager.list_alerts(user, plan_id=plan)
    table(
        alerts,
        ("id", "user_id", "plan_id", "threshold", "percent"),
        title="Balance alerts",
        as_json=as_json,
        empty="No alerts.",
    )


@endpoint.command("set")
def set_endpoint(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(help="Where to POST events (http or https).")],
    secret: Annotated[
        str, typer.Option("--secret", envvar="DUCTO_EVENTS_SECRET", help="The signing secret.")
    ],
    types: EventTypes = None,
    disabled: Annotated[bool, typer.Option("--disabled", help="Deliver nothing to it.")] = False,
    endpoint_id: Annotated[
        str | None, typer.Option("--id", help="Change this endpoint instead of adding one.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Add an endpoint, or change one (--id)."""
    with session(ctx.obj) as manager:
        saved = manager.set_event_endpoint(
            url, secret, event_types=types, enabled=not disabled, endpoint_id=endpoint_id
        )
    show(saved, f"Endpoint {saved.id} is saved.", as_json=as_json)


@endpoint.command("list")
def list_endpoints(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Every endpoint (without its secret)."""
    with session(ctx.obj) as manager:
        endpoints = manager.list_event_endpoints()
    table(
        endpoints,
        ("id", "url", "event_types", "enabled"),
        title="Event endpoints",
        as_json=as_json,
        empty="No endpoints.",
    )
