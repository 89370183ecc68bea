"""Money back and subscriptions from Stripe (docs/stripe.md), against the real database:
concurrent refund and dispute events of one payment, concurrent voids of one grant, and
concurrent deliveries of one invoice keep the ledger's invariants and change it once.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from conftest import MakeUserToken
from helpers_api import new_user_id
from psycopg.types.json import Jsonb
from test_cli import Cli
from test_concurrency import (
    BARRIER_TIMEOUT,
    Ledger,
    Outcome,
    attempt,
    connect,
    new_prefix,
    run_workers,
)

from ducto import (
    CreditManager,
    InvalidInputError,
    NotFoundError,
    PricePlan,
    RefundError,
    VoidResult,
)

WORKERS = 24


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    """A connection for setup and checks; the whole ledger must verify after the test."""
    with connect(database_url, "ducto-stripe-setup") as conn:
        ledger = Ledger(conn)
        yield ledger
        assert ledger.verify() == [], "credit_verify_ledger() reports broken invariants"


def buy(ledger: Ledger, user: str, credits: int, cents: int, payment: str) -> dict[str, object]:
    return dict(
        ledger.call(
            "credit_stripe_record_purchase",
            user_id=user,
            credits=credits,
            checkout_session_id=f"cs_{payment}",
            payment_intent_id=payment,
            amount_total=cents,
            metadata=Jsonb({"source": "stripe", "payment_intent": payment}),
        )
    )


def journal_total(ledger: Ledger, user: str) -> int:
    row = ledger.one(
        "select coalesce(sum(amount), 0)::bigint as total from credit_transactions"
        " where user_id = %s",
        (user,),
    )
    return int(row["total"])


def test_concurrent_refund_events_claw_back_the_largest_once(
    database_url: str, ledger: Ledger
) -> None:
    """Workers deliver refund events of 30, 60 and 100% of one payment, several times
    each and in any order: the claw-back ends at the full purchase, spent credits as debt."""
    user = new_prefix("stripe-refund")
    payment = f"pi_{user}"
    buy(ledger, user, 100, 1000, payment)
    ledger.deduct(user, 80)
    moment = threading.Barrier(WORKERS, timeout=BARRIER_TIMEOUT)
    amounts = (300, 600, 1000)

    def work(index: int, worker: Ledger) -> int:
        moment.wait()
        row = worker.call(
            "credit_stripe_charge_refunded",
            payment_intent_id=payment,
            amount_refunded=amounts[index % len(amounts)],
        )
        return int(row["change"])

    changes = run_workers(
        database_url, WORKERS, work, application=f"ducto-{user}", barriers=[moment]
    )
    # every change is a step up to a larger cumulative refund, adding up to all 100
    assert sum(changes) == 100
    assert all(change >= 0 for change in changes)
    balance = ledger.balance(user)
    assert balance["balance"] == -80
    assert journal_total(ledger, user) == -80
    account = ledger.one("select debt from credit_accounts where user_id = %s", (user,))
    assert account["debt"] == 80


def test_concurrent_dispute_events_net_to_zero(database_url: str, ledger: Ledger) -> None:
    """Withdrawn and reinstated events of two disputes, each delivered many times at once,
    with refunds of another payment of the same account: once both disputes are
    reinstated the account holds exactly what the refunds left it."""
    user = new_prefix("stripe-dispute")
    first, second = f"pi_{user}_1", f"pi_{user}_2"
    buy(ledger, user, 100, 1000, first)
    buy(ledger, user, 50, 500, second)
    ledger.deduct(user, 120)
    moment = threading.Barrier(WORKERS, timeout=BARRIER_TIMEOUT)

    def work(index: int, worker: Ledger) -> str:
        moment.wait()
        if index % 3 == 2:
            worker.call(
                "credit_stripe_charge_refunded",
                payment_intent_id=second,
                amount_refunded=250 * (1 + index % 2),
            )
            return "refund"
        funds = "withdrawn" if index < WORKERS // 2 else "reinstated"
        dispute = f"dp_{user}_{index % 2}"
        worker.call(
            "credit_stripe_dispute",
            dispute_id=dispute,
            payment_intent_id=first,
            amount=1000 if index % 2 else 400,
            funds=funds,
        )
        return funds

    outcomes = run_workers(
        database_url, WORKERS, work, application=f"ducto-{user}", barriers=[moment]
    )
    assert Counter(outcomes)["reinstated"] > 0
    # reinstated is final: both disputes end reinstated whatever the order
    for index in range(2):
        ledger.call(
            "credit_stripe_dispute",
            dispute_id=f"dp_{user}_{index}",
            payment_intent_id=first,
            amount=1000 if index else 400,
            funds="reinstated",
        )
    payments = ledger.rows(
        "select payment_intent_id, clawed_back, withdrawn from credit_stripe_payments"
        " where payment_intent_id in (%s, %s) order by payment_intent_id",
        (first, second),
    )
    assert [(p["clawed_back"], p["withdrawn"]) for p in payments] == [(0, 0), (50, 0)]
    # bought 150, spent 120, the second purchase's 50 refunded
    assert ledger.balance(user)["balance"] == -20
    assert journal_total(ledger, user) == -20


def test_concurrent_voids_of_one_grant_never_take_more_than_is_left(
    database_url: str, ledger: Ledger
) -> None:
    """Workers void 3 credits each of a grant of 40, half of them under one shared key:
    the grant loses at most 40, the shared key once."""
    user = new_prefix("stripe-void")
    grant = ledger.add(user, 40)["grant_id"]
    moment = threading.Barrier(WORKERS, timeout=BARRIER_TIMEOUT)

    def work(index: int, worker: Ledger) -> Outcome:
        moment.wait()
        key = "shared" if index % 2 else None
        return attempt(
            lambda: worker.call("credit_void_grant", grant_id=grant, amount=3, idempotency_key=key),
            frozenset({"DC121"}),
        )

    outcomes = run_workers(
        database_url, WORKERS, work, application=f"ducto-{user}", barriers=[moment]
    )
    replies = [o.reply for o in outcomes if o.reply is not None]
    first_time = [r for r in replies if not r["is_replay"]]
    assert len(first_time) == 13  # 13 voids of 3 fit in 40, the 14th finds 1 left
    assert ledger.balance(user)["balance"] == 1
    assert journal_total(ledger, user) == 1


def test_concurrent_deliveries_of_one_invoice_grant_once(database_url: str, ledger: Ledger) -> None:
    """Every worker delivers the same paid invoice: one allowance, expiring at the end of
    the period it pays for."""
    user = new_prefix("stripe-invoice")
    plan = user.replace("_", "-").lower()[:60]
    ledger.call(
        "credit_upsert_plan", plan_id=plan, name="Pro", allowance=500, allowance_period="month"
    )
    ledger.call("credit_set_price_plan", price_id=f"price_{user}", plan_id=plan)
    customer = f"cus_{user}"
    period_end = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
    ledger.call(
        "credit_stripe_subscription_changed",
        subscription_id=f"sub_{user}",
        customer_id=customer,
        price_id=f"price_{user}",
        status="active",
        event_created=datetime.now(UTC),
        user_id=user,
    )
    moment = threading.Barrier(WORKERS, timeout=BARRIER_TIMEOUT)

    def work(index: int, worker: Ledger) -> str:
        moment.wait()
        row = worker.call(
            "credit_stripe_invoice_paid",
            invoice_id=f"in_{user}",
            customer_id=customer,
            subscription_id=f"sub_{user}",
            price_id=f"price_{user}",
            billing_reason="subscription_create",
            period_end=period_end,
        )
        return str(row["outcome"])

    outcomes = run_workers(
        database_url, WORKERS, work, application=f"ducto-{user}", barriers=[moment]
    )
    assert Counter(outcomes) == {"granted": 1, "replay": WORKERS - 1}
    grants = ledger.rows("select amount, expires_at from credit_grants where user_id = %s", (user,))
    assert [(g["amount"], g["expires_at"]) for g in grants] == [(500, period_end)]
    plan_row = ledger.call("credit_get_user_plan", user_id=user)
    assert plan_row["plan_id"] == plan
    # the allowance job does not grant a subscription's plan a second time
    ledger.call("credit_grant_allowances", user_id=user)
    assert ledger.balance(user)["balance"] == 500


# ---------------------------------------------------------------- every store, the CLI


def test_void_grant_and_price_plans_through_every_store(
    manager: CreditManager, ledger: Ledger
) -> None:
    user = new_prefix("stripe-api")
    grant = str(ledger.add(user, 50)["grant_id"])
    voided = manager.void_grant(grant, 20, "given by mistake", idempotency_key=f"{user}-v")
    assert isinstance(voided, VoidResult)
    assert (voided.grant_id, voided.amount, voided.remaining, voided.balance_after) == (
        grant,
        20,
        30,
        30,
    )
    assert not voided.is_replay
    again = manager.void_grant(grant, 20, "given by mistake", idempotency_key=f"{user}-v")
    assert again.is_replay and again.transaction_id == voided.transaction_id
    with pytest.raises(RefundError) as refused:
        manager.void_grant(grant, 31)
    assert refused.value.code == "DC121"
    with pytest.raises(NotFoundError):
        manager.void_grant(str(uuid.uuid4()))
    with pytest.raises(InvalidInputError):
        manager.void_grant(grant, 0)
    assert manager.void_grant(grant).remaining == 0
    assert manager.get_balance(user).balance == 0

    plan = user.replace("_", "-").lower()[:60]
    ledger.call("credit_upsert_plan", plan_id=plan, name="Pro")
    price = f"price_{user}"
    mapped = manager.set_price_plan(price, plan)
    assert isinstance(mapped, PricePlan) and (mapped.price_id, mapped.plan_id) == (price, plan)
    assert any(p.price_id == price and p.plan_id == plan for p in manager.list_price_plans())
    with pytest.raises(NotFoundError):
        manager.set_price_plan(price, f"{plan}-missing")
    assert manager.set_price_plan(price, None) is None
    assert all(p.price_id != price for p in manager.list_price_plans())


def test_void_and_prices_from_the_cli(database_url: str, ledger: Ledger) -> None:
    cli = Cli(DATABASE_URL=database_url)
    user = new_prefix("stripe-cli")
    grant = str(ledger.add(user, 9)["grant_id"])
    voided = cli.json("credits", "void", grant, "--amount", "4", "--reason", "test")
    assert (voided["amount"], voided["remaining"]) == (4, 5)
    assert "Voided 5" in cli("credits", "void", grant).stdout
    assert cli("credits", "void", grant, code=1).stderr.startswith("error: ")

    plan = user.replace("_", "-").lower()[:60]
    ledger.call("credit_upsert_plan", plan_id=plan, name="Pro")
    price = f"price_{user}"
    assert cli.json("stripe", "set-price", price, plan)["plan_id"] == plan
    assert {"price_id": price, "plan_id": plan}.items() <= next(
        row for row in cli.json("stripe", "prices") if row["price_id"] == price
    ).items()
    cli("stripe", "remove-price", price)
    assert all(row["price_id"] != price for row in cli.json("stripe", "prices"))


def test_stripe_rpcs_are_the_service_roles_only(
    gateway: httpx.Client, anon_key: str, make_user_token: MakeUserToken
) -> None:
    """Through PostgREST, anon and a signed-in user may call none of them."""
    user = new_user_id()
    calls = {
        "credit_void_grant": {"p_grant_id": str(uuid.uuid4())},
        "credit_stripe_charge_refunded": {"p_payment_intent_id": "pi_x", "p_amount_refunded": 1},
        "credit_stripe_dispute": {
            "p_dispute_id": "dp_x",
            "p_payment_intent_id": "pi_x",
            "p_amount": 1,
            "p_funds": "withdrawn",
        },
        "credit_set_price_plan": {"p_price_id": "price_x", "p_plan_id": None},
        "credit_list_price_plans": {},
    }
    for token in (anon_key, make_user_token(user)):
        headers = {"apikey": anon_key, "Authorization": f"Bearer {token}"}
        for function, args in calls.items():
            response = gateway.post(f"/rest/v1/rpc/{function}", json=args, headers=headers)
            assert response.status_code in (401, 403), (function, response.text)
        for table in ("credit_stripe_payments", "credit_stripe_customers"):
            response = gateway.get(f"/rest/v1/{table}", headers=headers)
            assert response.status_code in (401, 403) or response.json() == [], table


def test_concurrent_subscription_events_end_at_the_newest(
    database_url: str, ledger: Ledger
) -> None:
    """Workers deliver a subscription's events in every order at once: the newest event
    (canceled) decides, whatever arrived last, and the plan it gave is removed."""
    user = new_prefix("stripe-sub")
    plan = user.replace("_", "-").lower()[:60]
    ledger.call("credit_upsert_plan", plan_id=plan, name="Pro")
    ledger.call("credit_set_price_plan", price_id=f"price_{user}", plan_id=plan)
    start = datetime(2030, 1, 1, tzinfo=UTC)
    statuses = ("active", "past_due", "active", "canceled")
    moment = threading.Barrier(WORKERS, timeout=BARRIER_TIMEOUT)

    def work(index: int, worker: Ledger) -> bool:
        moment.wait()
        step = index % len(statuses)
        row = worker.call(
            "credit_stripe_subscription_changed",
            subscription_id=f"sub_{user}",
            customer_id=f"cus_{user}",
            price_id=f"price_{user}",
            status=statuses[step],
            event_created=start + timedelta(seconds=step),
            user_id=user,
        )
        return bool(row["applied"])

    applied = run_workers(
        database_url, WORKERS, work, application=f"ducto-{user}", barriers=[moment]
    )
    assert any(applied)
    state = ledger.one(
        "select status, event_created from credit_stripe_subscriptions where subscription_id = %s",
        (f"sub_{user}",),
    )
    assert (state["status"], state["event_created"]) == ("canceled", start + timedelta(seconds=3))
    assert ledger.call("credit_get_user_plan", user_id=user)["plan_id"] is None


def test_refunds_racing_their_purchase_are_never_lost(database_url: str, ledger: Ledger) -> None:
    """The checkout event and refund events of one payment arrive at once, many times
    each: whichever comes first, the purchase ends clawed back in full, exactly once."""
    user = new_prefix("stripe-race")
    payment = f"pi_{user}"
    moment = threading.Barrier(WORKERS, timeout=BARRIER_TIMEOUT)

    def work(index: int, worker: Ledger) -> None:
        moment.wait()
        if index % 3 == 0:
            buy(worker, user, 60, 600, payment)
        else:
            worker.call(
                "credit_stripe_charge_refunded",
                payment_intent_id=payment,
                amount_refunded=300 if index % 2 else 600,
            )

    run_workers(database_url, WORKERS, work, application=f"ducto-{user}", barriers=[moment])
    payment_row = ledger.one(
        "select refunded, clawed_back from credit_stripe_payments where payment_intent_id = %s",
        (payment,),
    )
    assert (payment_row["refunded"], payment_row["clawed_back"]) == (600, 60)
    assert ledger.balance(user)["balance"] == 0
    assert journal_total(ledger, user) == 0
