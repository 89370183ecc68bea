"""Python, the edge functions (Deno) and supabase-js (Node) on one ledger.

The stack's database is a fresh cluster that ``supabase db push --db-url`` set up
(``scripts/local-stack up``; the first test checks the CLI's history). On it, three
clients interleave operations on the same users:

- Python: ``CreditManager`` over ``PostgresStore`` (psycopg, next to the database), and
  over the app's own supabase-py client, ``SupabaseStore`` and ``AsyncSupabaseStore``
  (service role, through the gateway);
- Deno: the edge functions through the gateway (``credit-usage`` with the service-role
  key, ``credit-topup-webhook`` with a signed event, ``credit-balance`` with the user's
  JWT);
- JavaScript: ``examples/supabase-js/ledger.mjs`` under Node, driven line by line
  (``tests/js/driver.mjs``).

After every step every client must report the same balance, held and available credits;
the same usage costs the same credits whichever client charges it; an idempotency key
used by one client is a replay for the others; and at the end all three read the same
journal, which matches the arithmetic of the steps. A plan and a team pool set up by
Python read the same to the signed-in user (credit-balance, and the plan RPC from
supabase-js).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psycopg
import pytest
from conftest import make_user_token, stack_env
from supabase import acreate_client, create_client

from ducto import AsyncCreditManager, CreditManager, PricingConfigData, UsageMetrics
from ducto.interface import AsyncSupabaseStore, PostgresStore, SupabaseStore

ROOT = Path(__file__).resolve().parents[2]
MIGRATION_NAME = re.compile(r"^([0-9]+)_.*\.sql$")

# 1 credit per input token, 2 per output token; no floor.
PRICING = {
    "unit": "credits",
    "rounding": "ceil",
    "models": [{"model": "clients-model", "input": 1_000_000, "output": 2_000_000}],
    "default": None,
}
USAGE = UsageMetrics(model="clients-model", input_tokens=30, output_tokens=10)
METRICS = asdict(USAGE)  # the same usage as JSON, for the Deno and JS clients
COST = 30 * 1 + 10 * 2

_T = TypeVar("_T")


class JsClient:
    """The supabase-js driver: one JSON order per line in, one answer per line out."""

    def __init__(self) -> None:
        node = shutil.which("node")
        assert node, "node is not installed"
        self.process = subprocess.Popen(
            # Node 20 has WebSocket (which supabase-js needs to load) behind a flag
            [node, "--experimental-websocket", str(ROOT / "tests" / "js" / "driver.mjs")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "NODE_NO_WARNINGS": "1"},
        )

    def __call__(self, op: str, **order: Any) -> Any:
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps({"op": op, **order}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, f"the supabase-js driver stopped (exit code {self.process.poll()})"
        answer = json.loads(line)
        assert "ok" in answer, answer
        return answer["ok"]

    def close(self) -> None:
        assert self.process.stdin and self.process.stdout
        self.process.stdin.close()
        assert self.process.wait(timeout=30) == 0
        self.process.stdout.close()


class Functions:
    """The edge functions, called through the gateway as a hosted project's clients do."""

    def __init__(self, client: httpx.Client, service_key: str, webhook_secret: str) -> None:
        self.client = client
        self.service_key = service_key
        self.webhook_secret = webhook_secret

    def charge(self, user: str, metrics: dict[str, Any], key: str) -> dict[str, Any]:
        response = self.client.post(
            "/functions/v1/credit-usage",
            json={"user_id": user, "metrics": metrics, "idempotency_key": key},
            headers={"Authorization": f"Bearer {self.service_key}"},
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def top_up(self, user: str, credits: int, event_id: str) -> dict[str, Any]:
        payload = json.dumps(
            {
                "id": event_id,
                "type": "checkout.session.completed",
                "data": {
                    "object": {
                        "id": f"cs_{event_id}",
                        "client_reference_id": user,
                        "payment_status": "paid",
                        "metadata": {"credits": str(credits)},
                    }
                },
            }
        ).encode()
        at = int(time.time())
        mac = hmac.new(self.webhook_secret.encode(), f"{at}.".encode() + payload, hashlib.sha256)
        response = self.client.post(
            "/functions/v1/credit-topup-webhook",
            content=payload,
            headers={"Stripe-Signature": f"t={at},v1={mac.hexdigest()}"},
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def account(self, token: str) -> dict[str, Any]:
        response = self.client.get(
            "/functions/v1/credit-balance",
            params={"limit": "100"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture(scope="module")
def python(database_url: str) -> Iterator[CreditManager]:
    store = PostgresStore(database_url, max_size=2)
    manager = CreditManager(store)
    # the pricing every client charges under, published by Python
    manager.publish_pricing(PricingConfigData.parse(PRICING), label="clients agree")
    yield manager
    store.close()


class SupabasePy:
    """CreditManager over the app's own supabase-py clients, sync and async (service role)."""

    def __init__(self, url: str, key: str, runner: asyncio.Runner) -> None:
        self.runner = runner
        self.client = create_client(url, key)
        self.aclient = runner.run(acreate_client(url, key))
        self.sync = CreditManager(SupabaseStore(self.client))
        self.asynchronous = AsyncCreditManager(AsyncSupabaseStore(self.aclient))
        # the pricing Python published, loaded from the database
        self.sync.load_pricing_from_store()
        self.run(self.asynchronous.load_pricing_from_store())

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return self.runner.run(coroutine)

    def close(self) -> None:
        self.client.postgrest.aclose()
        self.run(self.aclient.postgrest.aclose())


@pytest.fixture(scope="module")
def supabase_py(
    python: CreditManager, supabase_url: str, service_role_key: str
) -> Iterator[SupabasePy]:
    with asyncio.Runner() as runner:
        clients = SupabasePy(supabase_url, service_role_key, runner)
        yield clients
        clients.close()


@pytest.fixture(scope="module")
def js() -> Iterator[JsClient]:
    client = JsClient()
    yield client
    client.close()


@pytest.fixture(scope="module")
def deno(gateway: httpx.Client, service_role_key: str) -> Functions:
    return Functions(gateway, service_role_key, stack_env("STRIPE_WEBHOOK_SECRET"))


def test_the_database_came_from_supabase_db_push(database_url: str) -> None:
    files = sorted(
        match.group(1)
        for path in (ROOT / "supabase" / "migrations").glob("*.sql")
        if (match := MIGRATION_NAME.match(path.name))
    )
    with psycopg.connect(database_url) as conn:
        pushed = conn.execute(
            "select version from supabase_migrations.schema_migrations order by version"
        ).fetchall()
    assert [version for (version,) in pushed] == files


def test_python_deno_and_js_share_one_ledger(
    python: CreditManager,
    supabase_py: SupabasePy,
    js: JsClient,
    deno: Functions,
    db: psycopg.Connection[Any],
) -> None:
    sp, asp = supabase_py.sync, supabase_py.asynchronous
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    tokens = {alice: make_user_token(alice), bob: make_user_token(bob)}
    run = uuid.uuid4().hex[:8]
    expected = {alice: 0, bob: 0}
    held = {alice: 0, bob: 0}

    def all_agree(user: str) -> None:
        """Python (psycopg; supabase-py, sync and async), the balance function and
        supabase-js see the expected numbers."""
        by_python = asdict(python.get_balance(user))
        by_supabase_py = asdict(sp.get_balance(user))
        by_async_supabase_py = asdict(supabase_py.run(asp.get_balance(user)))
        by_deno = deno.account(tokens[user])
        by_js = js("balance", user=user, token=tokens[user])
        truth = (expected[user], held[user], expected[user] - held[user])
        for view in (by_python, by_supabase_py, by_async_supabase_py, by_deno, by_js):
            assert (view["balance"], view["held"], view["available"]) == truth

    # credits in, one way per client
    assert (
        python.add_credits(alice, 1000, "purchase", idempotency_key=f"order-{run}").amount == 1000
    )
    expected[alice] += 1000
    all_agree(alice)
    assert deno.top_up(alice, 500, f"evt_a_{run}")["credited"] is True
    expected[alice] += 500
    all_agree(alice)
    added = js("rpc", name="credit_add_credits", args={"p_user_id": bob, "p_amount": 300})
    expected[bob] += added["amount"]
    all_agree(bob)

    # the same usage costs the same credits through every client
    by_python = python.deduct(alice, USAGE, idempotency_key=f"py-{run}")
    expected[alice] -= COST
    all_agree(alice)
    by_deno = deno.charge(alice, METRICS, f"deno-{run}")
    expected[alice] -= COST
    all_agree(alice)
    by_js = js("charge", user=alice, metrics=METRICS, key=f"js-{run}")
    expected[alice] -= COST
    all_agree(alice)
    by_sp = sp.deduct(alice, USAGE, idempotency_key=f"sp-{run}")
    expected[alice] -= COST
    all_agree(alice)
    by_asp = supabase_py.run(asp.deduct(alice, USAGE, idempotency_key=f"asp-{run}"))
    expected[alice] -= COST
    all_agree(alice)
    amounts = [by_python.amount, by_deno["amount"], by_js["amount"], by_sp.amount, by_asp.amount]
    assert amounts == [COST] * 5
    for engine in (python.engine, sp.engine, asp.engine):
        assert engine is not None and engine.price(USAGE).credits == COST
    assert supabase_py.run(asp.calculate_cost(USAGE)) == sp.calculate_cost(USAGE)

    # a key used by one client is a replay for the others: nothing is charged twice
    replays = [
        js("charge", user=alice, metrics=METRICS, key=f"py-{run}"),
        asdict(python.deduct(alice, USAGE, idempotency_key=f"deno-{run}")),
        deno.charge(alice, METRICS, f"js-{run}"),
        asdict(sp.deduct(alice, USAGE, idempotency_key=f"asp-{run}")),
        asdict(supabase_py.run(asp.deduct(alice, USAGE, idempotency_key=f"sp-{run}"))),
        deno.charge(alice, METRICS, f"sp-{run}"),
        asdict(sp.deduct(alice, USAGE, idempotency_key=f"py-{run}")),
    ]
    assert [r["transaction_id"] for r in replays] == [
        by_python.transaction_id,
        by_deno["transaction_id"],
        by_js["transaction_id"],
        by_asp.transaction_id,
        by_sp.transaction_id,
        by_sp.transaction_id,
        by_python.transaction_id,
    ]
    assert all(r["is_replay"] for r in replays)
    again = js(
        "rpc",
        name="credit_add_credits",
        args={
            "p_user_id": alice,
            "p_amount": 1000,
            "p_tx_type": "purchase",
            "p_idempotency_key": f"order-{run}",
        },
    )
    assert again["is_replay"] is True
    assert deno.top_up(alice, 500, f"evt_a_{run}")["replay"] is True
    all_agree(alice)

    # a hold by Python, settled by JavaScript; a Deno charge refunded by Python
    hold = python.reserve_credits(alice, 100, min_balance=0)
    held[alice] += 100
    all_agree(alice)
    settle = {"p_reservation_id": hold.reservation_id, "p_actual_amount": 80}
    js("rpc", name="credit_settle_reservation", args=settle)
    held[alice] -= 100
    expected[alice] -= 80
    all_agree(alice)
    python.refund_credits(by_deno["transaction_id"], 20, reason="partly failed")
    expected[alice] += 20
    all_agree(alice)

    # bob, through all three
    deno.top_up(bob, 200, f"evt_b_{run}")
    expected[bob] += 200
    python.deduct(bob, USAGE)
    js("charge", user=bob, metrics=METRICS)
    deno.charge(bob, METRICS, f"bob-{run}")
    expected[bob] -= 3 * COST
    all_agree(bob)

    # one journal, read by each client
    for user in (alice, bob):
        fields = ("id", "seq", "type", "amount", "balance_after")
        in_db = [
            dict(zip(fields, row, strict=True))
            for row in db.execute(
                "select id::text, seq, type, amount, balance_after from credit_transactions"
                " where user_id = %s order by seq",
                (user,),
            )
        ]
        by_function = [
            {k: row[k] for k in fields}
            for row in reversed(deno.account(tokens[user])["transactions"])
        ]
        by_supabase_js = [
            {k: row[k] for k in fields} for row in js("journal", user=user, token=tokens[user])
        ]
        assert by_function == in_db
        assert by_supabase_js == in_db
        assert in_db[-1]["balance_after"] == expected[user]
    assert python.verify_ledger() == []


def test_a_users_plan_and_team_pool_read_alike(
    python: CreditManager, js: JsClient, deno: Functions
) -> None:
    user, team, run = str(uuid.uuid4()), str(uuid.uuid4()), uuid.uuid4().hex[:8]
    token = make_user_token(user)
    plan = f"agree-{run}"
    python.upsert_plan(plan, "Agree", {"export": True, "seats": 3})
    python.assign_plan(user, plan)
    python.upsert_team(team, "Agree")
    python.add_credits(f"team:{team}", 500)
    python.set_team_member(team, user)
    python.deduct_team(team, user, USAGE)
    pool = python.get_balance(f"team:{team}").balance
    assert pool == 500 - COST
    features = python.get_user_plan(user).features
    by_function = deno.account(token)
    for view in (by_function["plan"], js("plan", user=user, token=token)):
        assert (view["plan_id"], view["features"]) == (plan, features)
    assert [(t["team_id"], t["pool_balance"]) for t in by_function["teams"]] == [(team, pool)]
