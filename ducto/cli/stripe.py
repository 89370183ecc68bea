"""``ducto stripe set-price|remove-price|prices``: which plan each Stripe price sells
(docs/stripe.md)."""

from __future__ import annotations

from typing import Annotated

import typer

from ducto.cli._options import JsonFlag
from ducto.cli._output import emit_json, plain, stdout, table
from ducto.cli._session import session

app = typer.Typer(
    help="Map Stripe prices to the plans their subscriptions sell.", no_args_is_help=True
)

PriceId = Annotated[str, typer.Argument(metavar="PRICE", help="The Stripe price id (price_...).")]


@app.command("set-price")
def set_price(
    ctx: typer.Context,
    price_id: PriceId,
    plan_id: Annotated[str, typer.Argument(metavar="PLAN", help="The ducto plan it sells.")],
    as_json: JsonFlag = False,
) -> None:
    """Map a price to a plan: its subscriptions get the plan and its allowance per period."""
    with session(ctx.obj) as manager:
        result = manager.set_price_plan(price_id, plan_id)
    if as_json:
        emit_json(plain(result))
        return
    stdout.print(f"Price {price_id} sells plan {plan_id}.")


@app.command("remove-price")
def remove_price(ctx: typer.Context, price_id: PriceId, as_json: JsonFlag = False) -> None:
    """Forget a price: its later subscription events and invoices are ignored."""
    with session(ctx.obj) as manager:
        manager.set_price_plan(price_id, None)
    if as_json:
        emit_json({"price_id": price_id, "removed": True})
        return
    stdout.print(f"Price {price_id} removed.")


@app.command()
def prices(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """List the prices mapped to plans."""
    with session(ctx.obj) as manager:
        rows = manager.list_price_plans()
    table(
        rows,
        ("price_id", "plan_id", "updated_at"),
        title="Stripe prices",
        as_json=as_json,
        empty="No prices are mapped to plans.",
    )
