"""Stripe events sent by the Stripe server itself: localstripe (started by
scripts/local-stack) signs each event with the webhook's secret and posts it to the real
``credit-stripe-webhook`` through the gateway, as Stripe would.

Covered this way: ``payment_intent.succeeded`` and ``payment_intent.payment_failed`` of the
auto top-up worker's payments (granted or counted once, whoever reports first),
``customer.subscription.created`` and ``customer.subscription.deleted`` (the plan of a
mapped price assigned, then removed). localstripe sends ``invoice.payment_succeeded``, not
``invoice.paid``: the webhook ignores it, so a plan's allowance is not granted here
(test_stripe_money.py and the Deno tests cover ``invoice.paid`` with signed documents).

localstripe delivers an event to its webhooks one after the other, in the order they were
first registered. The tests register the ducto webhook, then a witness: a small HTTP server
in this process. When the witness has an event, the ducto webhook has answered it, so a
test can wait for a delivery that changes nothing. Every wait polls with a deadline.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import httpx
import pytest
import stripe
from conftest import stack_env
from helpers_api import new_user_id
from test_auto_topup import (
    DECLINED,
    PAYS,
    balance_matches_journal,
    events_of,
    purchases,
    requests_of,
    saved_card,
    set_rule,
)
from test_concurrency import Ledger, connect

from ducto import CreditManager
from ducto.interface import PostgresStore
from ducto.models import TopupRequest
from ducto.topup import StripeTopupPayer

T = TypeVar("T")

#: The events ducto's webhook is registered for (all that localstripe sends of ours).
EVENTS = [
    "payment_intent.succeeded",
    "payment_intent.payment_failed",
    "customer.subscription.created",
    "customer.subscription.deleted",
    "invoice.payment_succeeded",
]
DUCTO_WEBHOOK = "ducto"
WITNESS_WEBHOOK = "ducto-witness"
DEADLINE_SECONDS = 30.0


def until(what: str, check: Callable[[], T | None]) -> T:
    """Poll ``check`` until it returns something truthy; fail after the deadline."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within {DEADLINE_SECONDS:.0f} s")
        time.sleep(0.1)


class Witness:
    """An HTTP endpoint that records the (type, object id) of each event posted to it."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()
        self.lock = threading.Lock()
        witness = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server names the handler of POST so
                body = self.rfile.read(int(self.headers["Content-Length"]))
                event = json.loads(body)
                with witness.lock:
                    witness.seen.add((event["type"], event["data"]["object"]["id"]))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(self, type_: str, object_id: str) -> None:
        """Until localstripe has delivered ``type_`` of ``object_id`` (to ducto first)."""

        def delivered() -> bool:
            with self.lock:
                return (type_, object_id) in self.seen

        until(f"{type_} of {object_id} delivered", delivered)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Webhooks:
    """localstripe's webhook configuration (``POST /_config/webhooks/<id>``)."""

    def __init__(self, witness: Witness) -> None:
        self.base = stack_env("STRIPE_API_BASE")
        self.ducto_url = stack_env("SUPABASE_URL") + "/functions/v1/credit-stripe-webhook"
        self.secret = stack_env("STRIPE_WEBHOOK_SECRET")
        self.witness = witness

    def register(self, id_: str, url: str, secret: str, events: list[str]) -> None:
        response = httpx.post(
            f"{self.base}/_config/webhooks/{id_}",
            json={"url": url, "secret": secret, "events": events},
        )
        assert response.status_code == 200, response.text

    def sign_with(self, secret: str) -> None:
        """Deliver to ducto's webhook signed with ``secret`` (then the witness)."""
        self.register(DUCTO_WEBHOOK, self.ducto_url, secret, EVENTS)
        self.register(WITNESS_WEBHOOK, self.witness.url, "whsec_witness", EVENTS)

    def stop(self) -> None:
        # localstripe cannot remove a webhook: one for no event sends nothing
        self.register(DUCTO_WEBHOOK, self.ducto_url, self.secret, [])
        self.register(WITNESS_WEBHOOK, self.witness.url, "whsec_witness", [])


@pytest.fixture(scope="module")
def witness() -> Iterator[Witness]:
    witness = Witness()
    yield witness
    witness.close()


@pytest.fixture
def webhooks(witness: Witness) -> Iterator[Webhooks]:
    """ducto's webhook (then the witness) receives localstripe's events during the test
    only: the other tests of the top-up worker expect no webhook."""
    hooks = Webhooks(witness)
    hooks.sign_with(hooks.secret)
    yield hooks
    hooks.stop()


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    """A connection for setup and checks; the whole ledger must verify after the test."""
    with connect(database_url, "ducto-stripe-server") as conn:
        ledger = Ledger(conn)
        yield ledger
        assert ledger.verify() == [], "credit_verify_ledger() reports broken invariants"


@pytest.fixture
def manager(database_url: str) -> Iterator[CreditManager]:
    store = PostgresStore(database_url, max_size=2)
    yield CreditManager(store)
    store.close()


@pytest.fixture(scope="module")
def stripe_client() -> stripe.StripeClient:
    return stripe.StripeClient(
        stack_env("STRIPE_SECRET_KEY"), base_addresses={"api": stack_env("STRIPE_API_BASE")}
    )


@pytest.fixture(scope="module")
def payer() -> StripeTopupPayer:
    return StripeTopupPayer(stack_env("STRIPE_SECRET_KEY"), api_base=stack_env("STRIPE_API_BASE"))


def topup_user(ledger: Ledger, client: stripe.StripeClient, card: str, **rule: Any) -> str:
    """A user with 600 credits, a rule (below 500 buy 1000 for 2000 cents) on a localstripe
    customer paying with ``card``, and then a debit of 200: one request is due."""
    user = new_user_id()
    customer, method = saved_card(client, card)
    ledger.add(user, 600)
    set_rule(ledger, user, customer, method, **rule)
    ledger.deduct(user, 200)
    return user


def claim(manager: CreditManager, user: str) -> TopupRequest:
    (mine,) = [r for r in manager.claim_topup_requests(1000) if r.user_id == user]
    return mine


def request_state(ledger: Ledger, user: str, state: str) -> list[dict[str, Any]]:
    """The user's requests once the first is in ``state``, else [] (for until())."""
    found = requests_of(ledger, user)
    return found if found and found[0]["state"] == state else []


# ---------------------------------------------------------------- auto top-up


def test_the_webhook_reports_a_payment_first_and_the_worker_adds_nothing(
    manager: CreditManager, ledger: Ledger, payer: StripeTopupPayer,
    stripe_client: stripe.StripeClient, webhooks: Webhooks,
) -> None:  # fmt: skip
    user = topup_user(ledger, stripe_client, PAYS)
    request = claim(manager, user)
    paid = payer.pay(request)  # the worker pays, and has not reported yet
    assert paid.status == "succeeded" and paid.payment_intent_id is not None
    # localstripe delivers payment_intent.succeeded: the webhook grants
    (done,) = until("grant by the webhook", lambda: request_state(ledger, user, "succeeded"))
    assert done["payment_intent_id"] == paid.payment_intent_id
    assert balance_matches_journal(ledger, user) == 1400
    # the worker's report comes second: the same request, nothing more
    again = manager.complete_topup(request.id, paid.payment_intent_id, "succeeded")
    assert (again.state, again.transaction_id) == ("succeeded", str(done["transaction_id"]))
    assert len(purchases(ledger, user)) == 1
    assert balance_matches_journal(ledger, user) == 1400
    assert len(events_of(ledger, user, "topup.succeeded")) == 1


def test_the_worker_reports_a_payment_first_and_the_delivery_adds_nothing(
    manager: CreditManager, ledger: Ledger, payer: StripeTopupPayer,
    stripe_client: stripe.StripeClient, webhooks: Webhooks,
) -> None:  # fmt: skip
    user = topup_user(ledger, stripe_client, PAYS)
    (done,) = [r for r in manager.run_topups(payer, limit=1000) if r.user_id == user]
    assert done.state == "succeeded" and done.payment_intent_id is not None
    assert balance_matches_journal(ledger, user) == 1400
    webhooks.witness.wait("payment_intent.succeeded", done.payment_intent_id)
    assert [r["state"] for r in requests_of(ledger, user)] == ["succeeded"]
    assert len(purchases(ledger, user)) == 1
    assert balance_matches_journal(ledger, user) == 1400
    assert len(events_of(ledger, user, "topup.succeeded")) == 1


def test_a_declined_payment_counts_one_failure_whoever_reports_first(
    manager: CreditManager, ledger: Ledger, payer: StripeTopupPayer,
    stripe_client: stripe.StripeClient, webhooks: Webhooks,
) -> None:  # fmt: skip
    # the retry a failure schedules is due in an hour: no run here takes it
    rule = {"max_failures": 2, "cooldown_seconds": 3600}

    def failures(user: str) -> int:
        return int(ledger.call("credit_get_auto_topup", user_id=user)["consecutive_failures"])

    # the worker first, then localstripe's payment_intent.payment_failed
    first = topup_user(ledger, stripe_client, DECLINED, **rule)
    (failed,) = [r for r in manager.run_topups(payer, limit=1000) if r.user_id == first]
    assert failed.state == "failed" and failed.payment_intent_id is not None
    webhooks.witness.wait("payment_intent.payment_failed", failed.payment_intent_id)
    # webhook first: the worker pays, localstripe's event fails the request, then the worker
    second = topup_user(ledger, stripe_client, DECLINED, **rule)
    request = claim(manager, second)
    outcome = payer.pay(request)
    assert outcome.status == "failed" and outcome.payment_intent_id is not None
    until("failure by the webhook", lambda: request_state(ledger, second, "failed"))
    assert failures(second) == 1
    manager.complete_topup(request.id, outcome.payment_intent_id, "failed", outcome.error)

    for user in (first, second):
        assert failures(user) == 1, "one declined payment, one failure"
        rule_now = ledger.call("credit_get_auto_topup", user_id=user)
        assert rule_now["enabled"] is True  # max_failures 2: two reports would disable it
        # the failed request and its one retry
        assert [r["state"] for r in requests_of(ledger, user)] == ["failed", "pending"]
        assert events_of(ledger, user, "topup.disabled") == []
        assert purchases(ledger, user) == []
        assert balance_matches_journal(ledger, user) == 400


def test_concurrent_workers_and_deliveries_grant_each_request_once(
    database_url: str, ledger: Ledger, payer: StripeTopupPayer,
    stripe_client: stripe.StripeClient, webhooks: Webhooks,
) -> None:  # fmt: skip
    users = [topup_user(ledger, stripe_client, PAYS) for _ in range(10)]

    def work(_: int) -> list[TopupRequest]:
        store = PostgresStore(database_url, max_size=1)
        try:
            done: list[TopupRequest] = []
            while batch := CreditManager(store).run_topups(payer, limit=1):
                done += batch
            return done
        finally:
            store.close()

    # five workers report while localstripe delivers each payment's event
    with ThreadPoolExecutor(max_workers=5) as pool:
        reported = [r for done in pool.map(work, range(5)) for r in done if r.user_id in users]
    assert sorted(r.user_id for r in reported) == sorted(users), "each request reported once"
    for request in reported:
        assert request.payment_intent_id is not None
        webhooks.witness.wait("payment_intent.succeeded", request.payment_intent_id)
    for user in users:
        assert [r["state"] for r in requests_of(ledger, user)] == ["succeeded"]
        assert len(purchases(ledger, user)) == 1
        assert len(events_of(ledger, user, "topup.succeeded")) == 1
        assert balance_matches_journal(ledger, user) == 1400


def test_a_delivery_signed_with_another_secret_changes_nothing(
    manager: CreditManager, ledger: Ledger, payer: StripeTopupPayer,
    stripe_client: stripe.StripeClient, webhooks: Webhooks,
) -> None:  # fmt: skip
    webhooks.sign_with("whsec_" + uuid.uuid4().hex)
    user = topup_user(ledger, stripe_client, PAYS)
    request = claim(manager, user)
    paid = payer.pay(request)
    assert paid.status == "succeeded" and paid.payment_intent_id is not None
    webhooks.witness.wait("payment_intent.succeeded", paid.payment_intent_id)
    # the webhook refused it: the request is still the worker's to report
    assert [r["state"] for r in requests_of(ledger, user)] == ["processing"]
    assert purchases(ledger, user) == []
    assert balance_matches_journal(ledger, user) == 400
    assert manager.complete_topup(request.id, paid.payment_intent_id, "succeeded").state == (
        "succeeded"
    )
    assert balance_matches_journal(ledger, user) == 1400


# ---------------------------------------------------------------- subscriptions


def mapped_price(ledger: Ledger, client: stripe.StripeClient) -> tuple[str, str]:
    """A ducto plan and a localstripe plan (Stripe's older name of a price) mapped to it
    with credit_set_price_plan: (plan id, price id)."""
    plan = "stripe-server-" + uuid.uuid4().hex[:12]
    ledger.call("credit_upsert_plan", plan_id=plan, name="Pro", allowance=500,
                allowance_period="month")  # fmt: skip
    price = client.v1.plans.create(params={
        "id": "price_" + uuid.uuid4().hex[:16], "amount": 1000, "currency": "usd",
        "interval": "month", "product": {"name": "Pro"},
    })  # fmt: skip
    ledger.call("credit_set_price_plan", price_id=price.id, plan_id=plan)
    return plan, price.id


def paying_customer(client: stripe.StripeClient) -> str:
    """A localstripe customer whose invoices are paid with a saved card."""
    customer, method = saved_card(client, PAYS)
    client.v1.customers.update(
        customer, params={"invoice_settings": {"default_payment_method": method}}
    )
    return customer


def plan_of(ledger: Ledger, user: str) -> str | None:
    assigned: str | None = ledger.call("credit_get_user_plan", user_id=user)["plan_id"]
    return assigned


def subscription_status(ledger: Ledger, subscription_id: str) -> str:
    row = ledger.one(
        "select status from credit_stripe_subscriptions where subscription_id = %s",
        (subscription_id,),
    )
    return str(row["status"])


def test_a_subscription_assigns_its_plan_and_its_cancellation_removes_it(
    ledger: Ledger, stripe_client: stripe.StripeClient, webhooks: Webhooks
) -> None:
    user = new_user_id()
    plan, price = mapped_price(ledger, stripe_client)
    customer = paying_customer(stripe_client)
    # the app creates the subscription with the user's id in its metadata
    subscription = stripe_client.v1.subscriptions.create(params={
        "customer": customer, "items": [{"plan": price}], "metadata": {"user_id": user},
    })  # fmt: skip
    assert subscription.status == "active"
    until("plan assigned by customer.subscription.created", lambda: plan_of(ledger, user) == plan)
    row = ledger.one(
        "select customer_id, user_id, price_id, status from credit_stripe_subscriptions"
        " where subscription_id = %s",
        (subscription.id,),
    )
    assert dict(row) == {
        "customer_id": customer, "user_id": user, "price_id": price, "status": "active",
    }  # fmt: skip
    # its first invoice: localstripe says invoice.payment_succeeded, which ducto does not
    # handle (the allowance comes with invoice.paid): no credits
    invoice = subscription.latest_invoice
    assert isinstance(invoice, str)
    webhooks.witness.wait("invoice.payment_succeeded", invoice)
    assert ledger.balance(user)["balance"] == 0
    assert ledger.rows("select 1 from credit_transactions where user_id = %s", (user,)) == []

    stripe_client.v1.subscriptions.cancel(subscription.id)
    until("plan removed by customer.subscription.deleted", lambda: plan_of(ledger, user) is None)
    assert subscription_status(ledger, subscription.id) == "canceled"

    # a later subscription of the customer without metadata: the customer is the user
    again = stripe_client.v1.subscriptions.create(
        params={"customer": customer, "items": [{"plan": price}]}
    )
    until("plan assigned to the customer's user", lambda: plan_of(ledger, user) == plan)
    stripe_client.v1.subscriptions.cancel(again.id)
    until("plan removed again", lambda: plan_of(ledger, user) is None)
    assert subscription_status(ledger, again.id) == "canceled"


def test_concurrent_subscriptions_assign_and_remove_each_plan(
    ledger: Ledger, stripe_client: stripe.StripeClient, webhooks: Webhooks
) -> None:
    plan, price = mapped_price(ledger, stripe_client)
    users = [new_user_id() for _ in range(8)]
    customers = {user: paying_customer(stripe_client) for user in users}

    def subscribe(user: str) -> str:
        return str(stripe_client.v1.subscriptions.create(params={
            "customer": customers[user], "items": [{"plan": price}],
            "metadata": {"user_id": user},
        }).id)  # fmt: skip

    # every user subscribes at once; localstripe delivers the events concurrently
    with ThreadPoolExecutor(max_workers=8) as pool:
        subscriptions = dict(zip(users, pool.map(subscribe, users), strict=True))
    until("every plan assigned", lambda: all(plan_of(ledger, u) == plan for u in users))
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(stripe_client.v1.subscriptions.cancel, subscriptions.values()))
    until("every plan removed", lambda: all(plan_of(ledger, u) is None for u in users))
    for user, subscription in subscriptions.items():
        assert subscription_status(ledger, subscription) == "canceled"
        row = ledger.one(
            "select user_id from credit_stripe_customers where customer_id = %s",
            (customers[user],),
        )
        assert row["user_id"] == user
