"""``ducto topup set|show|run``: an account's Stripe auto top-up rule, and the worker that
pays the due requests (docs/stripe.md)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated

import typer

from ducto.cli import _options
from ducto.cli._options import JsonFlag
from ducto.cli._output import credits, emit_json, plain, stdout, table, text
from ducto.cli._session import session
from ducto.models import AutoTopupRule

app = typer.Typer(
    help="Set and show an account's Stripe auto top-up rule; pay the due top-ups.",
    no_args_is_help=True,
)

UserId = Annotated[
    str,
    typer.Argument(
        metavar="USER", help="The user's id (auth.uid() on Supabase), or team:<team id>."
    ),
]


def _price(value: str) -> Decimal:
    try:
        price = Decimal(value)
    except InvalidOperation:
        raise typer.BadParameter(f"{value!r} is not a number", param_hint="--price") from None
    return price


@app.command("set")
def set_(
    ctx: typer.Context,
    user_id: UserId,
    threshold: Annotated[int, typer.Option(min=1, help="Top up when a debit goes below this.")],
    price: Annotated[
        str, typer.Option(help="Price of one credit in minor units of --currency (e.g. 0.5).")
    ],
    customer: Annotated[str, typer.Option(help="The Stripe customer id (cus_...).")],
    payment_method: Annotated[
        str, typer.Option(help="The customer's saved payment method id (pm_...).")
    ],
    amount: Annotated[
        int | None, typer.Option(min=1, help="Credits bought per top-up.", show_default=False)
    ] = None,
    target: Annotated[
        int | None,
        typer.Option(min=1, help="Buy what takes the balance up to this.", show_default=False),
    ] = None,
    currency: Annotated[str, typer.Option(help="ISO 4217 code, lower case.")] = "usd",
    cap_credits: Annotated[
        int | None, typer.Option(min=1, help="Most credits a month.", show_default="no cap")
    ] = None,
    cap_money: Annotated[
        int | None,
        typer.Option(min=1, help="Most money a month, in minor units.", show_default="no cap"),
    ] = None,
    cooldown: Annotated[
        str, typer.Option(help="Least time between two top-ups: 90m, 12h, 30d.")
    ] = "1h",
    max_failures: Annotated[
        int, typer.Option(min=1, max=100, help="Failed payments in a row that disable it.")
    ] = 3,
    disable: Annotated[bool, typer.Option("--disable", help="Keep the rule, off.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Set an account's auto top-up rule (give --amount or --target)."""
    cooldown_seconds = int(_options.duration(cooldown, "--cooldown").total_seconds())
    with session(ctx.obj) as manager:
        rule = manager.set_auto_topup(
            user_id,
            threshold=threshold,
            amount=amount,
            target_balance=target,
            unit_price_minor=_price(price),
            currency=currency,
            stripe_customer_id=customer,
            stripe_payment_method_id=payment_method,
            monthly_cap_credits=cap_credits,
            monthly_cap_minor=cap_money,
            cooldown_seconds=cooldown_seconds,
            max_failures=max_failures,
            enabled=not disable,
        )
    _show(rule, as_json, f"Auto top-up of {rule.user_id} set.")


@app.command()
def show(ctx: typer.Context, user_id: UserId, as_json: JsonFlag = False) -> None:
    """Show an account's auto top-up rule, this month's top-ups and the open one."""
    with session(ctx.obj) as manager:
        rule = manager.get_auto_topup(user_id)
    _show(rule, as_json, f"Auto top-up of {rule.user_id}.")


@app.command()
def run(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="Most requests to pay.")] = 10,
    lease: Annotated[
        int, typer.Option(min=1, max=3600, help="Seconds a claimed request is this run's.")
    ] = 300,
    as_json: JsonFlag = False,
) -> None:
    """Pay the due top-up requests with Stripe (STRIPE_SECRET_KEY; STRIPE_API_BASE to point
    elsewhere) and report each one to the ledger."""
    from ducto.topup import StripeTopupPayer

    try:
        payer = StripeTopupPayer()
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    with session(ctx.obj) as manager:
        reported = manager.run_topups(payer, limit=limit, lease_seconds=lease)
    table(
        reported,
        ("id", "user_id", "state", "credits", "amount_minor", "currency", "payment_intent_id",
         "last_error"),
        title="Top-ups",
        as_json=as_json,
        empty="No top-up was due.",
    )  # fmt: skip


def _show(rule: AutoTopupRule, as_json: bool, headline: str) -> None:
    if as_json:
        emit_json(plain(rule))
        return
    stdout.print(headline)
    buy = (
        f"{credits(rule.amount)}"
        if rule.amount is not None
        else f"up to {credits(rule.target_balance or 0)}"
    )
    state = "enabled" if rule.enabled else f"disabled ({text(rule.disabled_reason)})"
    stdout.print(
        f"Below {credits(rule.threshold)} buy {buy} at {text(rule.unit_price_minor)}"
        f" {rule.currency} minor units a credit; {state}."
    )
    stdout.print(
        f"This month: {credits(rule.month_credits)}, {text(rule.month_minor)} minor units"
        f" (caps {text(rule.monthly_cap_credits)} / {text(rule.monthly_cap_minor)})."
        f" Failures in a row: {text(rule.consecutive_failures)} of {text(rule.max_failures)}."
    )
    stdout.print(f"Balance {credits(rule.balance)}; open request {text(rule.open_request_id)}.")
