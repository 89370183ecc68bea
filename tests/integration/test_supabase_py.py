"""The stores over an app's own supabase-py client, beyond what every store does.

The ``manager`` fixture already runs the client suite over ``SupabaseStore`` and
``AsyncSupabaseStore`` with the service-role key. Here, through the gateway:

- a signed-in user's client (the user's access token on the client) reads the user's own
  balance, plan, features and transactions, and every admin call is refused with
  ``PermissionDeniedError``, exactly as over ``HttpxSupabaseStore`` with the user's JWT,
  and without a row written;
- a ledger error keeps its SQLSTATE, detail and hint; a refused key is a refusal;
- a keyed call whose reply was lost is retried and answers the first result; a call
  without a key is not retried;
- the edge functions through ``supabase.functions.invoke``: credit-usage with the
  service role, credit-balance with the user's session.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from conftest import MakeUserToken
from faultproxy import FaultProxy
from helpers_api import ledger_rows
from postgrest.exceptions import APIError
from supabase import (
    AClientOptions,
    AsyncClient,
    Client,
    ClientOptions,
    acreate_client,
    create_client,
)

from ducto import (
    AsyncCreditManager,
    CreditManager,
    DuctoError,
    InsufficientCreditsError,
    PermissionDeniedError,
    PricingConfigData,
    StoreError,
    UsageMetrics,
)
from ducto.interface import AsyncSupabaseStore, HttpxSupabaseStore, SupabaseStore
from ducto.interface.supabase_py import error_from_api

PRICING = {
    "unit": "credits",
    "rounding": "ceil",
    "models": [{"model": "supabase-py-model", "input": 1_000_000, "output": 2_000_000}],
    "default": None,
}
METRICS = UsageMetrics(model="supabase-py-model", input_tokens=30, output_tokens=10)
USAGE = asdict(METRICS)  # the same usage as JSON, for the edge function
COST = 30 + 2 * 10


@contextmanager
def client_of(url: str, key: str, token: str | None = None) -> Iterator[Client]:
    """``create_client(url, key)``; with ``token``, signed in as that token's user."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(timeout=15.0) as http:
        yield create_client(url, key, ClientOptions(headers=headers, httpx_client=http))


@asynccontextmanager
async def async_client_of(
    url: str, key: str, token: str | None = None
) -> AsyncIterator[AsyncClient]:
    """``await acreate_client(url, key)``; with ``token``, signed in as that token's user."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(timeout=15.0) as http:
        yield await acreate_client(url, key, AClientOptions(headers=headers, httpx_client=http))


@pytest.fixture(scope="module")
def admin(supabase_url: str, service_role_key: str) -> Iterator[CreditManager]:
    """A manager over the service-role client, with the module's pricing published."""
    with client_of(supabase_url, service_role_key) as client:
        manager = CreditManager(SupabaseStore(client))
        manager.publish_pricing(PricingConfigData.parse(PRICING), label="supabase-py")
        yield manager


@pytest.fixture
def user(admin: CreditManager) -> str:
    """A user with 100 credits, one charge, and a plan with features."""
    user_id = str(uuid.uuid4())
    admin.add_credits(user_id, 100, tx_type="purchase")
    admin.deduct(user_id, METRICS)
    plan = f"supabase-py-{uuid.uuid4().hex[:8]}"
    admin.upsert_plan(plan, "Supabase py", {"export": True, "seats": 3})
    admin.assign_plan(user_id, plan)
    return user_id


def admin_calls(manager: Any, user_id: str) -> dict[str, Callable[[], Any]]:
    """One call of each admin operation (a sync manager, or an async one's coroutines)."""
    now = datetime.now(UTC)
    team = str(uuid.uuid4())
    some_id = str(uuid.uuid4())
    return {
        "add_credits": lambda: manager.add_credits(user_id, 10),
        "reserve_credits": lambda: manager.reserve_credits(user_id, 1, min_balance=0),
        "settle_reservation": lambda: manager.settle_reservation(some_id, 1),
        "release_reservation": lambda: manager.release_reservation(some_id),
        "refund_credits": lambda: manager.refund_credits(some_id),
        "load_pricing_from_store": lambda: manager.load_pricing_from_store(),
        "publish_pricing": lambda: manager.publish_pricing(PricingConfigData.parse(PRICING)),
        "calculate_cost": lambda: manager.calculate_cost(METRICS),
        "sweep_expired_credits": lambda: manager.sweep_expired_credits(),
        "verify_ledger": lambda: manager.verify_ledger(),
        "upsert_plan": lambda: manager.upsert_plan("pro", "Pro", {"export": True}),
        "assign_plan": lambda: manager.assign_plan(user_id, None),
        "grant_allowances": lambda: manager.grant_allowances(user_id),
        "aggregate_stats": lambda: manager.aggregate_stats(now - timedelta(days=1), now),
        "top_users": lambda: manager.top_users(5, now - timedelta(days=1), now),
        "upsert_team": lambda: manager.upsert_team(team, "Team"),
        "set_team_member": lambda: manager.set_team_member(team, user_id),
        "deduct_team": lambda: manager.deduct_team(team, user_id, METRICS),
    }


def refusals(calls: dict[str, Callable[[], Any]], run: Callable[[Any], Any]) -> dict[str, Any]:
    """Per call, the class and code of the error it raised (or what it returned)."""
    seen: dict[str, Any] = {}
    for name, call in calls.items():
        try:
            seen[name] = ("returned", run(call()))
        except DuctoError as exc:
            seen[name] = (type(exc), exc.code)
    return seen


def test_a_signed_in_users_client_reads_only_their_own_ledger(
    supabase_url: str,
    anon_key: str,
    publishable_key: str,
    make_user_token: MakeUserToken,
    admin: CreditManager,
    user: str,
    db: psycopg.Connection[Any],
) -> None:
    token = make_user_token(user)
    stranger = str(uuid.uuid4())
    admin.add_credits(stranger, 5)
    with (
        client_of(supabase_url, anon_key, token) as client,
        # the HTTP store with the user's JWT: the publishable key in apikey, the user's
        # token as the client's own Authorization header
        httpx.Client(headers={"Authorization": f"Bearer {token}"}) as http,
    ):
        # with the service's pricing engine, so that a usage charge reaches the database
        me = CreditManager(SupabaseStore(client), admin.engine)
        over_http = CreditManager(
            HttpxSupabaseStore(supabase_url, publishable_key, client=http), admin.engine
        )

        balance = me.get_balance(user)
        assert (balance.balance, balance.held, balance.available) == (100 - COST, 0, 100 - COST)
        assert balance == over_http.get_balance(user) == admin.get_balance(user)
        plan = me.get_user_plan(user)
        assert plan == over_http.get_user_plan(user) == admin.get_user_plan(user)
        assert plan.features == {"export": True, "seats": 3}
        feature = me.check_feature(user, "seats")
        assert (feature.has_feature, feature.value) == (True, 3)

        # the journal through the same client's table API: row-level security shows the
        # user's own rows, and only theirs
        answer = client.table("credit_transactions").select("type, amount, user_id").execute()
        rows = [row for row in answer.data if isinstance(row, dict)]
        assert len(rows) == len(answer.data)
        assert sorted((r["type"], r["amount"]) for r in rows) == [
            ("purchase", 100),
            ("usage", -COST),
        ]
        assert {r["user_id"] for r in rows} == {user}

        # someone else's balance is refused, not answered with zeros
        with pytest.raises(PermissionDeniedError) as info:
            me.get_balance(stranger)
        assert info.value.code == "42501"

        # every admin call is refused, exactly as over the HTTP store, and writes nothing
        before = ledger_rows(db, user, stranger)
        by_supabase_py = refusals(admin_calls(me, user), lambda result: result)
        by_http = refusals(admin_calls(over_http, user), lambda result: result)
        assert by_supabase_py == by_http
        assert by_supabase_py == dict.fromkeys(by_http, (PermissionDeniedError, "42501"))
        assert ledger_rows(db, user, stranger) == before

        # a write to the journal with the same client is refused too; error_from_api maps
        # postgrest-py's APIError like every store's error
        with pytest.raises(APIError) as raw:
            client.table("credit_transactions").insert({"user_id": user, "amount": 1}).execute()
        assert isinstance(error_from_api(raw.value), PermissionDeniedError)


def test_an_async_signed_in_users_client_reads_and_is_refused_alike(
    supabase_url: str,
    anon_key: str,
    make_user_token: MakeUserToken,
    admin: CreditManager,
    user: str,
) -> None:
    async def as_user() -> dict[str, Any]:
        async with async_client_of(supabase_url, anon_key, make_user_token(user)) as client:
            me = AsyncCreditManager(AsyncSupabaseStore(client), admin.engine)
            balance = await me.get_balance(user)
            plan = await me.get_user_plan(user)
            refused: dict[str, Any] = {}
            for name, call in admin_calls(me, user).items():
                try:
                    refused[name] = ("returned", await call())
                except DuctoError as exc:
                    refused[name] = (type(exc), exc.code)
            return {"balance": balance, "plan": plan, "refused": refused}

    seen = asyncio.run(as_user())
    assert seen["balance"] == admin.get_balance(user)
    assert seen["plan"] == admin.get_user_plan(user)
    assert set(seen["refused"].values()) == {(PermissionDeniedError, "42501")}


def test_errors_keep_their_code_detail_and_hint(
    supabase_url: str, service_role_key: str, admin: CreditManager, user: str
) -> None:
    with pytest.raises(InsufficientCreditsError) as info:
        admin.reserve_credits(user, 1000, min_balance=0)
    assert info.value.code == "DC010"
    assert info.value.details == {
        "user_id": user,
        "available": 100 - COST,
        "needed": 1000,
        "min_balance": 0,
    }
    # the same error through the HTTP store: the same class, code, message and detail
    http = HttpxSupabaseStore(supabase_url, service_role_key)
    try:
        with pytest.raises(InsufficientCreditsError) as same:
            CreditManager(http).reserve_credits(user, 1000, min_balance=0)
    finally:
        http.close()
    assert (same.value.message, same.value.detail, same.value.hint) == (
        info.value.message,
        info.value.detail,
        info.value.hint,
    )


def test_a_key_the_gateway_refuses_is_a_refusal(supabase_url: str) -> None:
    with (
        client_of(supabase_url, "not-a-key") as client,
        pytest.raises(PermissionDeniedError) as info,
    ):
        CreditManager(SupabaseStore(client)).get_balance(str(uuid.uuid4()))
    assert info.value.code == "42501"
    assert info.value.message == "Invalid API key"


def test_a_keyed_call_whose_reply_was_lost_is_retried_once_sync_and_async(
    supabase_url: str, service_role_key: str, admin: CreditManager, db: psycopg.Connection[Any]
) -> None:
    gateway = urlsplit(supabase_url)
    assert gateway.hostname and gateway.port
    user_id = str(uuid.uuid4())
    admin.add_credits(user_id, 50)
    hold_key, async_key = f"hold-{uuid.uuid4()}", f"hold-{uuid.uuid4()}"
    with FaultProxy(gateway.hostname, gateway.port) as proxy:
        through = f"http://127.0.0.1:{proxy.port}"
        with client_of(through, service_role_key) as client:
            manager = CreditManager(SupabaseStore(client))
            proxy.lose_reply_after(hold_key.encode(), hold_key.encode())
            hold = manager.reserve_credits(user_id, 20, min_balance=0, idempotency_key=hold_key)
            # without a key, a lost reply is reported: its outcome is unknown
            marker = f"no-key-{uuid.uuid4()}"
            proxy.lose_reply_after(marker.encode(), marker.encode())
            with pytest.raises(StoreError):
                manager.add_credits(user_id, 1, metadata={"marker": marker})

        async def reserve() -> bool:
            async with async_client_of(through, service_role_key) as aclient:
                proxy.lose_reply_after(async_key.encode(), async_key.encode())
                again = await AsyncCreditManager(AsyncSupabaseStore(aclient)).reserve_credits(
                    user_id, 5, min_balance=0, idempotency_key=async_key
                )
                return again.is_replay

        assert asyncio.run(reserve()) is True
    assert proxy.dropped == 3
    assert hold.is_replay
    balance = admin.get_balance(user_id)
    # both holds once; the unkeyed grant reached the ledger once and was never resent
    assert (balance.balance, balance.held) == (51, 25)
    grants = db.execute(
        "select count(*) from public.credit_transactions where user_id = %s and amount = 1",
        [user_id],
    ).fetchone()
    assert grants == (1,)


def test_edge_functions_through_functions_invoke(
    supabase_url: str,
    service_role_key: str,
    anon_key: str,
    make_user_token: MakeUserToken,
    admin: CreditManager,
    user: str,
) -> None:
    key = f"invoke-{uuid.uuid4()}"
    with client_of(supabase_url, service_role_key) as server:
        charged = server.functions.invoke(
            "credit-usage",
            {"body": {"user_id": user, "metrics": USAGE, "idempotency_key": key}},
        )
        again = server.functions.invoke(
            "credit-usage",
            {
                "body": {"user_id": user, "metrics": USAGE, "idempotency_key": key},
                "responseType": "json",
            },
        )
    assert isinstance(charged, bytes) and isinstance(again, dict)
    first = json.loads(charged)
    assert (first["amount"], first["balance_after"], first["is_replay"]) == (
        COST,
        100 - 2 * COST,
        False,
    )
    assert (again["transaction_id"], again["is_replay"]) == (first["transaction_id"], True)

    with client_of(supabase_url, anon_key, make_user_token(user)) as client:
        account = client.functions.invoke(
            "credit-balance?limit=100", {"method": "GET", "responseType": "json"}
        )
    assert isinstance(account, dict)
    balance = admin.get_balance(user)
    assert (account["user_id"], account["balance"], account["available"]) == (
        user,
        balance.balance,
        balance.available,
    )
    assert account["plan"]["features"] == {"export": True, "seats": 3}
    assert [t["amount"] for t in account["transactions"]] == [-COST, -COST, 100]
