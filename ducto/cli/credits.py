"""``ducto credits ...``: add, look up, hold, charge and refund a user's credits."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from ducto.cli import _options
from ducto.cli._command import NumbersAsValues
from ducto.cli._options import IdempotencyKey, JsonFlag, Metadata
from ducto.cli._output import credits, show, text
from ducto.cli._session import session
from ducto.usage import UsageMetrics

app = typer.Typer(
    help="Add, look up, hold, charge and refund a user's credits.", no_args_is_help=True
)

UserId = Annotated[
    str, typer.Argument(metavar="USER", help="The user's id (auth.uid() on Supabase).")
]
Amount = Annotated[
    int,
    typer.Argument(metavar="AMOUNT", callback=_options.amount, help="Whole credits, at least 1."),
]
ReservationId = Annotated[
    str, typer.Argument(metavar="RESERVATION", help="The id `ducto credits reserve` printed.")
]


class TxType(StrEnum):
    """What a grant is (the ledger's transaction types for added credits)."""

    GRANT = "grant"
    PURCHASE = "purchase"
    ADJUSTMENT = "adjustment"
    PROMOTION = "promotion"


class Category(StrEnum):
    """Whether granted credits were paid for."""

    PAID = "paid"
    PROMOTIONAL = "promotional"


@app.command(cls=NumbersAsValues)
def add(
    ctx: typer.Context,
    user_id: UserId,
    amount: Amount,
    tx_type: Annotated[TxType, typer.Option("--type", help="What the grant is.")] = (
        TxType.ADJUSTMENT
    ),
    category: Annotated[Category, typer.Option(help="Paid for or not.")] = Category.PAID,
    priority: Annotated[
        int, typer.Option(min=0, max=100, help="0 (spent first) to 100 (spent last).")
    ] = 50,
    expires_at: Annotated[
        str | None, typer.Option(help="When they expire (ISO 8601; UTC unless a zone is given).")
    ] = None,
    expires_in: Annotated[
        str | None, typer.Option(help="How long until they expire: 90m, 12h, 30d, 2w.")
    ] = None,
    scope: Annotated[
        list[str] | None,
        typer.Option(
            help="Limit the grant to some charges: model:<glob>, job:<name> or feature:<name>;"
            " repeat for several (docs/scopes.md). Without it the credits pay for anything."
        ),
    ] = None,
    key: IdempotencyKey = None,
    metadata: Metadata = None,
    as_json: JsonFlag = False,
) -> None:
    """Add credits to a user's account, as a new grant."""
    expires = _options.expiry(expires_at, expires_in, key)
    meta = _options.metadata(metadata)
    with session(ctx.obj) as manager:
        result = manager.add_credits(
            user_id,
            amount,
            tx_type.value,
            meta,
            expires,
            category=category.value,
            priority=priority,
            idempotency_key=key,
            scope=scope or None,
        )
    lasts = f"expires {text(result.expires_at)}" if result.expires_at else "never expires"
    show(
        result,
        f"{_replay(result.is_replay)}Added {credits(result.amount)} to {result.user_id} "
        f"({result.tx_type}, {result.category}, {lasts}). "
        f"Balance: {credits(result.balance_after)}.",
        as_json=as_json,
    )


@app.command()
def balance(ctx: typer.Context, user_id: UserId, as_json: JsonFlag = False) -> None:
    """Show a user's balance, the credits held by reservations, and what is available."""
    with session(ctx.obj) as manager:
        result = manager.get_balance(user_id)
    show(
        result,
        f"{result.user_id}: {credits(result.available)} available "
        f"({text(result.balance)} balance, {text(result.held)} held).",
        as_json=as_json,
    )


Count = Annotated[int, typer.Option(min=0, show_default=False)]


@app.command()
def deduct(
    ctx: typer.Context,
    user_id: UserId,
    model: Annotated[
        str | None, typer.Option(help="Charge usage of this model, priced by the active pricing.")
    ] = None,
    input_tokens: Count = 0,
    output_tokens: Count = 0,
    cached_input_tokens: Count = 0,
    cache_creation_tokens: Count = 0,
    reasoning_tokens: Count = 0,
    tool_calls: Count = 0,
    requests: Annotated[int, typer.Option(min=0)] = 1,
    job: Annotated[
        str | None, typer.Option(help="Charge this fixed-cost job of the active pricing instead.")
    ] = None,
    key: IdempotencyKey = None,
    metadata: Metadata = None,
    as_json: JsonFlag = False,
) -> None:
    """Charge usage (--model and its counts) or a fixed-cost job (--job) at the active pricing.

    The database prices and charges it in one transaction, keeping the pricing's floor; the
    token counts are disjoint (docs/pricing.md).
    """
    if model is None and job is None:
        raise typer.BadParameter(
            "say what to charge: --model M with its token counts (usage), "
            "or --job NAME (a fixed-cost job)"
        )
    if model is not None and job is not None:
        raise typer.BadParameter("give --model (usage) or --job (a fixed-cost job), not both")
    meta = _options.metadata(metadata)
    with session(ctx.obj) as manager:
        manager.load_pricing_from_store()
        if job is not None:
            result = manager.deduct_fixed(user_id, job, key, meta)
        else:
            assert model is not None
            usage = UsageMetrics(
                model,
                input_tokens,
                output_tokens,
                cached_input_tokens,
                cache_creation_tokens,
                reasoning_tokens,
                tool_calls,
                requests,
            )
            result = manager.deduct(user_id, usage, key, meta)
    show(
        result,
        f"{_replay(result.is_replay)}Charged {credits(result.amount)} to {result.user_id} "
        f"at pricing version {result.pricing_version}. "
        f"Balance: {credits(result.balance_after)}.",
        as_json=as_json,
    )


@app.command(cls=NumbersAsValues)
def reserve(
    ctx: typer.Context,
    user_id: UserId,
    amount: Amount,
    operation_type: Annotated[str, typer.Option(help="What the hold is for.")] = "usage",
    min_balance: Annotated[
        int | None, typer.Option(min=0, help="Floor left available after the hold (default 5).")
    ] = None,
    timeout: Annotated[
        str, typer.Option(help="Released by itself after this long: 90s, 15m, 12h, 7d.")
    ] = "15m",
    key: IdempotencyKey = None,
    metadata: Metadata = None,
    as_json: JsonFlag = False,
) -> None:
    """Hold credits for an operation whose cost is not known yet (settle or release it)."""
    seconds = _options.hold_timeout(timeout)
    meta = _options.metadata(metadata)
    with session(ctx.obj) as manager:
        result = manager.reserve_credits(
            user_id,
            amount,
            operation_type,
            meta,
            min_balance,
            timeout_seconds=seconds,
            idempotency_key=key,
        )
    show(
        result,
        f"{_replay(result.is_replay)}Held {credits(result.amount)} of {result.user_id} "
        f"until {text(result.expires_at)}: reservation {result.reservation_id}. "
        f"Available: {credits(result.available_after)}.",
        as_json=as_json,
    )


@app.command(cls=NumbersAsValues)
def settle(
    ctx: typer.Context,
    reservation_id: ReservationId,
    actual_amount: Annotated[
        int,
        typer.Argument(
            metavar="AMOUNT", callback=_options.cost, help="What the operation cost (0 or more)."
        ),
    ],
    metadata: Metadata = None,
    as_json: JsonFlag = False,
) -> None:
    """Charge what a reserved operation cost; more than the hold is charged too."""
    meta = _options.metadata(metadata)
    with session(ctx.obj) as manager:
        result = manager.settle_reservation(reservation_id, actual_amount, meta)
    over = f", {credits(result.overage)} over the hold" if result.overage else ""
    show(
        result,
        f"{_replay(result.is_replay)}Charged {credits(result.amount)} to {result.user_id}"
        f"{over}. Balance: {credits(result.balance_after)}.",
        as_json=as_json,
    )


@app.command()
def release(ctx: typer.Context, reservation_id: ReservationId, as_json: JsonFlag = False) -> None:
    """Let a reservation go without charging it."""
    with session(ctx.obj) as manager:
        result = manager.release_reservation(reservation_id)
    show(
        result,
        f"{_replay(result.is_replay)}Released the hold of {credits(result.amount)} on "
        f"{result.user_id}. Available: {credits(result.available_after)}.",
        as_json=as_json,
    )


@app.command()
def refund(
    ctx: typer.Context,
    transaction_id: Annotated[
        str, typer.Argument(metavar="TRANSACTION", help="The charge to refund.")
    ],
    amount: Annotated[
        int | None, typer.Option(min=1, help="Refund this much (default: all that is left).")
    ] = None,
    reason: Annotated[str | None, typer.Option(help="Why, kept with the refund.")] = None,
    key: IdempotencyKey = None,
    metadata: Metadata = None,
    as_json: JsonFlag = False,
) -> None:
    """Give back a charge (usage, fixed job or settled reservation), fully or partly."""
    meta = _options.metadata(metadata)
    with session(ctx.obj) as manager:
        result = manager.refund_credits(transaction_id, amount, reason, meta, idempotency_key=key)
    show(
        result,
        f"{_replay(result.is_replay)}Refunded {credits(result.amount)} to {result.user_id} "
        f"({credits(result.refundable_remaining)} of the charge left to refund). "
        f"Balance: {credits(result.balance_after)}.",
        as_json=as_json,
    )


@app.command()
def void(
    ctx: typer.Context,
    grant_id: Annotated[str, typer.Argument(metavar="GRANT", help="The grant to void.")],
    amount: Annotated[
        int | None, typer.Option(min=1, help="Void this much (default: all that is left).")
    ] = None,
    reason: Annotated[str | None, typer.Option(help="Why, kept with the void.")] = None,
    key: IdempotencyKey = None,
    as_json: JsonFlag = False,
) -> None:
    """Remove what is left of a grant, or part of it; what was spent stays spent."""
    with session(ctx.obj) as manager:
        result = manager.void_grant(grant_id, amount, reason, idempotency_key=key)
    show(
        result,
        f"{_replay(result.is_replay)}Voided {credits(result.amount)} of grant {result.grant_id}"
        f" of {result.user_id} ({credits(result.remaining)} left in it). "
        f"Balance: {credits(result.balance_after)}.",
        as_json=as_json,
    )


def _replay(is_replay: bool) -> str:
    return "Replayed (nothing changed): " if is_replay else ""
