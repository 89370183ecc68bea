"""Auto top-up (docs/stripe.md): the rule from every client, the one request a crossing
writes however many debits race over it, the monthly cap and the cooldown, and the worker
paying against a real Stripe API (localstripe, started by scripts/local-stack): a success
granted once whoever reports it, a declining card disabling the rule, a card that needs
authentication, and a worker that dies between the payment and the grant.

Test cards (localstripe's): 4242424242424242 pays, 4000000000000341 attaches and is then
declined, 4000002500003155 requires authentication (requires_action).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
import stripe
from conftest import MakeUserToken, stack_env
from helpers_api import Api, expect_error, new_user_id, permission_denied
from test_cli import Cli
from test_concurrency import Ledger, connect, run_workers

from ducto import CreditManager, InvalidInputError, NotFoundError
from ducto.interface import PostgresStore
from ducto.models import AutoTopupRule, TopupRequest
from ducto.topup import PaymentOutcome, StripeTopupPayer

PAYS = "4242424242424242"
DECLINED = "4000000000000341"
NEEDS_ACTION = "4000002500003155"


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    """A connection for setup and checks; the whole ledger must verify after the test."""
    with connect(database_url, "ducto-topup-setup") as conn:
        ledger = Ledger(conn)
        yield ledger
        assert ledger.verify() == [], "credit_verify_ledger() reports broken invariants"


@pytest.fixture(scope="module")
def stripe_client() -> stripe.StripeClient:
    return stripe.StripeClient(
        stack_env("STRIPE_SECRET_KEY"), base_addresses={"api": stack_env("STRIPE_API_BASE")}
    )


@pytest.fixture(scope="module")
def payer() -> StripeTopupPayer:
    return StripeTopupPayer(stack_env("STRIPE_SECRET_KEY"), api_base=stack_env("STRIPE_API_BASE"))


def saved_card(client: stripe.StripeClient, number: str) -> tuple[str, str]:
    """A new Stripe customer with the card ``number`` saved: (customer id, payment method id)."""
    customer = client.v1.customers.create(params={"email": "topup@example.com"})
    method = client.v1.payment_methods.create(
        params={
            "type": "card",
            "card": {"number": number, "exp_month": 12, "exp_year": 2040, "cvc": "123"},
        }
    )
    client.v1.payment_methods.attach(method.id, params={"customer": customer.id})
    return customer.id, method.id


def set_rule(ledger: Ledger, user: str, customer: str = "cus_x", method: str = "pm_x",
             **args: Any) -> dict[str, Any]:  # fmt: skip
    """Set a rule by SQL: below 500 buy 1000 at 2 minor units each, unless ``args`` say."""
    rule = {"threshold": 500, "amount": 1000, "unit_price_minor": 2, "currency": "usd",
            "cooldown_seconds": 0, **args}  # fmt: skip
    return dict(ledger.call("credit_set_auto_topup", user_id=user, stripe_customer_id=customer,
                            stripe_payment_method_id=method, **rule))  # fmt: skip


def requests_of(ledger: Ledger, user: str) -> list[dict[str, Any]]:
    return [dict(r) for r in ledger.rows(
        "select * from credit_topup_requests where user_id = %s order by created_at, id", (user,)
    )]  # fmt: skip


def events_of(ledger: Ledger, user: str, type_: str) -> list[dict[str, Any]]:
    return [dict(r) for r in ledger.rows(
        "select * from credit_events where user_id = %s and type = %s order by id", (user, type_)
    )]  # fmt: skip


def purchases(ledger: Ledger, user: str) -> list[dict[str, Any]]:
    return [dict(r) for r in ledger.rows(
        "select * from credit_transactions where user_id = %s and type = 'purchase'", (user,)
    )]  # fmt: skip


def balance_matches_journal(ledger: Ledger, user: str) -> int:
    row = ledger.one(
        "select a.balance, (select sum(t.amount) from credit_transactions as t"
        " where t.account_id = a.id)::bigint as journal"
        " from credit_accounts as a where a.user_id = %s",
        (user,),
    )
    assert row["balance"] == row["journal"]
    return int(row["balance"])


# ---------------------------------------------------------------- the rule, every client


def test_set_and_get_auto_topup(manager: CreditManager, ledger: Ledger) -> None:
    user = new_user_id()
    ledger.add(user, 1000)
    rule = manager.set_auto_topup(
        user, threshold=100, target_balance=1000, unit_price_minor=2, currency="eur",
        stripe_customer_id="cus_abc", stripe_payment_method_id="pm_abc",
        monthly_cap_credits=5000, monthly_cap_minor=10000, cooldown_seconds=60,
    )  # fmt: skip
    assert isinstance(rule, AutoTopupRule)
    assert (rule.user_id, rule.enabled, rule.threshold, rule.target_balance, rule.amount) == (
        user, True, 100, 1000, None,
    )  # fmt: skip
    assert (rule.currency, rule.monthly_cap_minor, rule.balance, rule.open_request_id) == (
        "eur", 10000, 1000, None,
    )  # fmt: skip
    assert manager.get_auto_topup(user) == rule
    # below the threshold now: the request is written at once, for what reaches the target
    ledger.deduct(user, 950)
    request = requests_of(ledger, user)
    assert [(r["credits"], r["amount_minor"], r["state"]) for r in request] == [
        (950, 1900, "pending")
    ]
    assert manager.get_auto_topup(user).open_request_id == str(request[0]["id"])

    with pytest.raises(NotFoundError):
        manager.get_auto_topup(new_user_id())
    before = manager.get_auto_topup(user)
    for bad in (
        {"amount": 10, "target_balance": 2000},  # both
        {"amount": None},  # neither
        {"amount": 10, "currency": "EUR"},
        {"amount": 10, "cooldown_seconds": -1},
        {"amount": 10, "threshold": 0},
        {"target_balance": 50},  # not above the threshold
        {"amount": 10, "stripe_customer_id": "cus x"},
    ):
        args: dict[str, Any] = {
            "threshold": 100, "unit_price_minor": 2, "currency": "usd",
            "stripe_customer_id": "cus_abc", "stripe_payment_method_id": "pm_abc", **bad,
        }  # fmt: skip
        with pytest.raises(InvalidInputError):
            manager.set_auto_topup(user, **args)
    assert manager.get_auto_topup(user) == before, "a refused rule writes nothing"


def test_only_the_service_role_handles_top_ups(
    gateway: httpx.Client, anon_key: str, make_user_token: MakeUserToken, ledger: Ledger
) -> None:
    user = new_user_id()
    ledger.add(user, 1000)
    set_rule(ledger, user)
    as_user = Api(gateway, anon_key, make_user_token(user))
    anon = Api(gateway, anon_key)
    request_id = "00000000-0000-0000-0000-000000000000"
    for caller, status in ((as_user, 403), (anon, 401)):
        for function, args in (
            ("credit_set_auto_topup", {"p_user_id": user, "p_threshold": 1,
                                       "p_unit_price_minor": 1, "p_currency": "usd",
                                       "p_stripe_customer_id": "cus_x",
                                       "p_stripe_payment_method_id": "pm_x", "p_amount": 5}),
            ("credit_get_auto_topup", {"p_user_id": user}),
            ("credit_claim_topup_requests", {}),
            ("credit_record_topup_payment", {"p_request_id": request_id,
                                             "p_payment_intent_id": "pi_x"}),
            ("credit_complete_topup", {"p_request_id": request_id, "p_payment_intent_id": "pi_x",
                                       "p_status": "succeeded"}),
        ):  # fmt: skip
            expect_error(
                caller.rpc(function, args), status, "42501",
                message=permission_denied("function", function),
            )  # fmt: skip
        for table in ("credit_auto_topups", "credit_topup_requests"):
            response = caller.select(table)
            assert response.status_code in (401, 403), response.text
    assert requests_of(ledger, user) == []


# ---------------------------------------------------------------- requests


def test_concurrent_debits_crossing_the_threshold_make_one_request(
    database_url: str, ledger: Ledger
) -> None:
    user = new_user_id()
    ledger.add(user, 1000)
    set_rule(ledger, user, threshold=500)

    def work(index: int, worker: Ledger) -> None:
        for _ in range(2):  # 50 connections, 100 debits of 10: the balance goes to 0
            worker.deduct(user, 10)

    run_workers(database_url, 50, work, application="ducto-topup-debits")
    assert balance_matches_journal(ledger, user) == 0
    assert [r["state"] for r in requests_of(ledger, user)] == ["pending"]
    assert len(events_of(ledger, user, "topup.requested")) == 1


def test_the_monthly_cap_stops_the_next_request(ledger: Ledger) -> None:
    user = new_user_id()
    ledger.add(user, 600)
    set_rule(ledger, user, amount=1000, monthly_cap_credits=1500)
    ledger.deduct(user, 200)
    (first,) = requests_of(ledger, user)
    done = ledger.call("credit_complete_topup", request_id=first["id"],
                       payment_intent_id="pi_cap_" + user[:8], status="succeeded")  # fmt: skip
    assert done["state"] == "succeeded"
    assert balance_matches_journal(ledger, user) == 1400
    ledger.deduct(user, 1000)  # below again: 1000 + 1000 would pass the cap of 1500
    assert len(requests_of(ledger, user)) == 1
    rule = ledger.call("credit_get_auto_topup", user_id=user)
    assert (rule["month_credits"], rule["open_request_id"]) == (1000, None)
    # the cap in money: 2 minor units a credit, 1000 credits = 2000 > 1999
    other = new_user_id()
    ledger.add(other, 100)
    set_rule(ledger, other, amount=1000, monthly_cap_minor=1999)
    assert requests_of(ledger, other) == []


def test_the_cooldown_holds_back_the_next_request(ledger: Ledger) -> None:
    user = new_user_id()
    ledger.add(user, 600)
    set_rule(ledger, user, cooldown_seconds=3600)
    ledger.deduct(user, 200)
    (first,) = requests_of(ledger, user)
    ledger.call("credit_complete_topup", request_id=first["id"],
                payment_intent_id="pi_cool_" + user[:8], status="succeeded")  # fmt: skip
    ledger.deduct(user, 1000)  # below the threshold again within the hour
    assert len(requests_of(ledger, user)) == 1
    assert ledger.call("credit_get_auto_topup", user_id=user)["last_requested_at"] is not None


# ---------------------------------------------------------------- the worker, against Stripe


def test_worker_pays_and_a_second_report_credits_nothing(
    manager: CreditManager, ledger: Ledger, payer: StripeTopupPayer,
    stripe_client: stripe.StripeClient,
) -> None:  # fmt: skip
    user = new_user_id()
    customer, method = saved_card(stripe_client, PAYS)
    ledger.add(user, 600)
    set_rule(ledger, user, customer, method)
    ledger.deduct(user, 200)
    reported = [r for r in manager.run_topups(payer, limit=1000) if r.user_id == user]
    assert [(r.state, r.credits) for r in reported] == [("succeeded", 1000)]
    (done,) = reported
    assert isinstance(done, TopupRequest) and done.payment_intent_id is not None
    intent = stripe_client.v1.payment_intents.retrieve(done.payment_intent_id)
    assert (intent.status, intent.amount, intent.currency, intent.customer) == (
        "succeeded", 2000, "usd", customer,
    )  # fmt: skip
    assert intent.metadata["ducto_topup_request_id"] == done.id
    assert balance_matches_journal(ledger, user) == 1400

    # the webhook reports the same payment intent, many times at once: nothing more
    def report(_: int) -> str:
        with connect(stack_env("DATABASE_URL"), "ducto-topup-report") as conn:
            return str(Ledger(conn).call(
                "credit_complete_topup", request_id=done.id,
                payment_intent_id=done.payment_intent_id, status="succeeded",
            )["state"])  # fmt: skip

    with ThreadPoolExecutor(max_workers=10) as pool:
        assert set(pool.map(report, range(10))) == {"succeeded"}
    assert manager.complete_topup(done.id, done.payment_intent_id, "succeeded").state == "succeeded"
    assert len(purchases(ledger, user)) == 1
    assert balance_matches_journal(ledger, user) == 1400
    assert len(events_of(ledger, user, "topup.succeeded")) == 1


def test_a_declining_card_disables_the_rule_after_max_failures(
    manager: CreditManager, ledger: Ledger, payer: StripeTopupPayer,
    stripe_client: stripe.StripeClient,
) -> None:  # fmt: skip
    user = new_user_id()
    customer, method = saved_card(stripe_client, DECLINED)
    ledger.add(user, 600)
    set_rule(ledger, user, customer, method, max_failures=3)
    ledger.deduct(user, 200)
    for attempt in range(1, 4):
        mine = [r for r in manager.run_topups(payer, limit=1000) if r.user_id == user]
        assert [r.state for r in mine] == ["failed"], attempt
        assert mine[0].payment_intent_id is not None  # the declined intent, named
        assert "card_declined" in (mine[0].last_error or "")
    rule = manager.get_auto_topup(user)
    assert (rule.enabled, rule.consecutive_failures, rule.open_request_id) == (False, 3, None)
    assert rule.disabled_reason is not None and "3 payments failed" in rule.disabled_reason
    assert [r["state"] for r in requests_of(ledger, user)] == ["failed"] * 3
    assert len(events_of(ledger, user, "topup.disabled")) == 1
    ledger.deduct(user, 10)  # a disabled rule requests nothing
    assert len(requests_of(ledger, user)) == 3
    assert purchases(ledger, user) == []
    # setting the rule again (a new card) starts over
    assert manager.set_auto_topup(
        user, threshold=500, amount=1000, unit_price_minor=2, currency="usd",
        stripe_customer_id=customer, stripe_payment_method_id=method,
    ).consecutive_failures == 0  # fmt: skip


def test_a_card_needing_authentication_asks_the_app(
    manager: CreditManager, ledger: Ledger, payer: StripeTopupPayer,
    stripe_client: stripe.StripeClient,
) -> None:  # fmt: skip
    user = new_user_id()
    customer, method = saved_card(stripe_client, NEEDS_ACTION)
    ledger.add(user, 600)
    set_rule(ledger, user, customer, method)
    ledger.deduct(user, 200)
    mine = [r for r in manager.run_topups(payer, limit=1000) if r.user_id == user]
    assert [r.state for r in mine] == ["requires_action"]
    (event,) = events_of(ledger, user, "topup.action_required")
    assert event["payload"]["payment_intent_id"] == mine[0].payment_intent_id
    ledger.deduct(user, 10)  # the request stays open: no second one
    assert len(requests_of(ledger, user)) == 1
    # the customer authenticates later; the webhook reports the success
    assert manager.complete_topup(mine[0].id, mine[0].payment_intent_id, "succeeded").state == (
        "succeeded"
    )
    assert balance_matches_journal(ledger, user) == 1390


def test_a_worker_killed_between_payment_and_grant_loses_nothing(
    manager: CreditManager, ledger: Ledger, payer: StripeTopupPayer,
    stripe_client: stripe.StripeClient, database_url: str,
) -> None:  # fmt: skip
    user = new_user_id()
    customer, method = saved_card(stripe_client, PAYS)
    ledger.add(user, 600)
    set_rule(ledger, user, customer, method)
    ledger.deduct(user, 200)
    # the first worker: claims for 1 s, pays, records the intent, and dies
    (claimed,) = [r for r in manager.claim_topup_requests(1000, lease_seconds=1)
                  if r.user_id == user]  # fmt: skip
    paid = payer.pay(claimed)
    assert paid == PaymentOutcome(paid.payment_intent_id, "succeeded", None)
    assert paid.payment_intent_id is not None
    manager.record_topup_payment(claimed.id, paid.payment_intent_id)
    assert purchases(ledger, user) == []
    # once the lease has run out the next run takes it again, reads the same intent back
    with connect(database_url, "ducto-topup-wait") as conn:
        conn.execute("select pg_sleep(1.2)")
    mine = [r for r in manager.run_topups(payer, limit=1000) if r.user_id == user]
    assert [(r.state, r.payment_intent_id, r.attempts) for r in mine] == [
        ("succeeded", paid.payment_intent_id, 2)
    ]
    intents = [
        i for i in stripe_client.v1.payment_intents.list(params={"limit": 100}).auto_paging_iter()
        if i.metadata.to_dict().get("ducto_topup_request_id") == claimed.id
    ]  # fmt: skip
    assert [i.id for i in intents] == [paid.payment_intent_id], "one payment"
    assert len(purchases(ledger, user)) == 1
    assert balance_matches_journal(ledger, user) == 1400


def test_stripe_unreachable_leaves_the_request_for_the_next_run(
    manager: CreditManager, ledger: Ledger
) -> None:
    user = new_user_id()
    ledger.add(user, 600)
    set_rule(ledger, user)
    ledger.deduct(user, 200)
    # a port nobody listens on
    gone = StripeTopupPayer("sk_test_local", api_base="http://127.0.0.1:9")
    gone.client = stripe.StripeClient(
        "sk_test_local", base_addresses={"api": "http://127.0.0.1:9"}, max_network_retries=0
    )
    reported = [r for r in manager.run_topups(gone, limit=1000) if r.user_id == user]
    assert reported == []
    assert [r["state"] for r in requests_of(ledger, user)] == ["processing"]
    assert purchases(ledger, user) == []


# ---------------------------------------------------------------- the CLI


def test_cli_sets_shows_and_runs_top_ups(
    database_url: str, ledger: Ledger, stripe_client: stripe.StripeClient
) -> None:
    cli = Cli(
        DATABASE_URL=database_url,
        STRIPE_SECRET_KEY=stack_env("STRIPE_SECRET_KEY"),
        STRIPE_API_BASE=stack_env("STRIPE_API_BASE"),
    )
    user = new_user_id()
    customer, method = saved_card(stripe_client, PAYS)
    ledger.add(user, 600)
    rule = json.loads(cli(
        "topup", "set", user, "--threshold", "500", "--amount", "1000", "--price", "0.5",
        "--customer", customer, "--payment-method", method, "--cooldown", "0m", "--json",
    ).stdout)  # fmt: skip
    assert (rule["user_id"], rule["threshold"], rule["amount"], rule["enabled"]) == (
        user, 500, 1000, True,
    )  # fmt: skip
    assert "Below 500 credits buy 1,000 credits" in cli("topup", "show", user).stdout
    refused = cli("topup", "set", user, "--threshold", "500", "--price", "1",
                  "--customer", customer, "--payment-method", method, code=1)  # fmt: skip
    assert "amount or target_balance" in refused.stderr
    ledger.deduct(user, 200)
    ran = json.loads(cli("topup", "run", "--limit", "1000", "--json").stdout)
    mine = [r for r in ran if r["user_id"] == user]
    assert [(r["state"], r["amount_minor"]) for r in mine] == [("succeeded", 500)]
    assert json.loads(cli("topup", "show", user, "--json").stdout)["balance"] == 1400


def test_concurrent_workers_pay_each_request_once(
    database_url: str, ledger: Ledger, payer: StripeTopupPayer,
    stripe_client: stripe.StripeClient,
) -> None:  # fmt: skip
    customer, method = saved_card(stripe_client, PAYS)
    users = [new_user_id() for _ in range(12)]
    for user in users:
        ledger.add(user, 600)
        set_rule(ledger, user, customer, method)
        ledger.deduct(user, 200)

    def work(_: int) -> list[TopupRequest]:
        store = PostgresStore(database_url, max_size=1)
        try:
            done: list[TopupRequest] = []
            while batch := CreditManager(store).run_topups(payer, limit=2):
                done += batch
            return done
        finally:
            store.close()

    with ThreadPoolExecutor(max_workers=6) as pool:
        reported = [r for done in pool.map(work, range(6)) for r in done if r.user_id in users]
    assert sorted(r.user_id for r in reported) == sorted(users), "each request reported once"
    assert {r.state for r in reported} == {"succeeded"}
    for user in users:
        assert len(purchases(ledger, user)) == 1
        assert balance_matches_journal(ledger, user) == 1400
    intents = [
        i.metadata.to_dict().get("ducto_topup_request_id")
        for i in stripe_client.v1.payment_intents.list(params={"limit": 100}).auto_paging_iter()
    ]  # fmt: skip
    for request in reported:
        assert intents.count(request.id) == 1, "one payment per request"
