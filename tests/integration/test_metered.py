"""metered_call(): hold an estimate before a model call, charge the measured usage after.

Sync managers over both stores, and the async flavour over both async stores.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from ducto import (
    AsyncCreditManager,
    BalanceResult,
    CreditManager,
    IdempotencyConflictError,
    InsufficientCreditsError,
    InvalidInputError,
    ScopeBalance,
    UsageMetrics,
)
from ducto.interface import (
    AsyncHttpxSupabaseStore,
    AsyncPostgresStore,
    HttpxSupabaseStore,
    PostgresStore,
)

# 1 credit per 1000 input tokens, 4 per 1000 output tokens; no floor
CONFIG: dict[str, Any] = {
    "models": [{"model": "chat-model", "input": 1000, "output": 4000}],
    "default": None,
}
ESTIMATE = UsageMetrics(model="chat-model", input_tokens=2000, output_tokens=1000)  # 6


class ModelCallFailed(Exception):
    """What a failing model call raises in these tests."""


@pytest.fixture(params=["postgres", "http"])
def sync_manager(
    request: pytest.FixtureRequest, database_url: str, supabase_url: str, service_role_key: str
) -> Iterator[CreditManager]:
    store: PostgresStore | HttpxSupabaseStore
    if request.param == "postgres":
        store = PostgresStore(database_url, max_size=2)
    else:
        store = HttpxSupabaseStore(supabase_url, service_role_key)
    manager = CreditManager(store)
    manager.publish_pricing_from_dict(CONFIG)
    yield manager
    store.close()


def funded(manager: CreditManager, credits: int = 100) -> str:
    user = f"metered-{uuid.uuid4()}"
    manager.add_credits(user, credits)
    return user


def holds(db: psycopg.Connection[Any], user: str) -> list[tuple[str, int | None]]:
    return db.execute(
        "select status, settled_amount from credit_reservations where user_id = %s"
        " order by created_at",
        (user,),
    ).fetchall()


def test_settles_the_usage_with_its_overage(
    sync_manager: CreditManager, db: psycopg.Connection[Any]
) -> None:
    user = funded(sync_manager)
    with sync_manager.metered_call(user, ESTIMATE, idempotency_key="req-1") as meter:
        assert meter.reservation.amount == 6
        assert sync_manager.get_balance(user).held == 6
        # the stream ran longer than estimated: 10 credits
        meter.record(UsageMetrics(model="chat-model", input_tokens=2000, output_tokens=2000))
    assert meter.result is not None
    assert (meter.result.amount, meter.result.overage, meter.result.balance_after) == (10, 4, 90)
    assert meter.result.pricing_version is not None
    assert holds(db, user) == [("settled", 10)]
    row = db.execute(
        "select type, model, usage ->> 'output_tokens' from credit_transactions where id = %s",
        (meter.result.transaction_id,),
    ).fetchone()
    assert row == ("capture", "chat-model", "2000")
    assert sync_manager.get_balance(user).held == 0


def test_a_failed_call_releases_the_hold(
    sync_manager: CreditManager, db: psycopg.Connection[Any]
) -> None:
    user = funded(sync_manager)
    with (
        pytest.raises(ModelCallFailed),
        sync_manager.metered_call(user, ESTIMATE) as meter,
    ):
        raise ModelCallFailed
    assert meter.result is None
    assert holds(db, user) == [("released", None)]
    assert sync_manager.get_balance(user).available == 100


def test_usage_recorded_before_a_failure_is_still_charged(
    sync_manager: CreditManager, db: psycopg.Connection[Any]
) -> None:
    user = funded(sync_manager)
    with (
        pytest.raises(ModelCallFailed),
        sync_manager.metered_call(user, ESTIMATE) as meter,
    ):
        meter.record(UsageMetrics(model="chat-model", input_tokens=3000))
        raise ModelCallFailed  # e.g. the client disconnected after the stream
    assert holds(db, user) == [("settled", 3)]
    assert sync_manager.get_balance(user).balance == 97


def test_no_recorded_usage_releases_and_says_so(
    sync_manager: CreditManager, db: psycopg.Connection[Any]
) -> None:
    user = funded(sync_manager)
    with (
        pytest.raises(InvalidInputError, match="without record"),
        sync_manager.metered_call(user, 5),
    ):
        pass
    assert holds(db, user) == [("released", None)]


def test_a_retried_request_is_charged_once(
    sync_manager: CreditManager, db: psycopg.Connection[Any]
) -> None:
    user = funded(sync_manager)
    with sync_manager.metered_call(user, ESTIMATE, idempotency_key="turn-9") as first:
        first.record(UsageMetrics(model="chat-model", input_tokens=5000))
    # the client retries the request and the model reports the same usage: a replay
    with sync_manager.metered_call(user, ESTIMATE, idempotency_key="turn-9") as retry:
        retry.record(UsageMetrics(model="chat-model", input_tokens=5000))
    assert first.result is not None and retry.result is not None
    assert retry.result.is_replay
    assert retry.result.transaction_id == first.result.transaction_id
    # a retry that measured other usage is another request under a used key: refused,
    # and its hold let go
    with (
        pytest.raises(IdempotencyConflictError, match="turn-9"),
        sync_manager.metered_call(user, ESTIMATE, idempotency_key="turn-9") as other,
    ):
        other.record(UsageMetrics(model="chat-model", input_tokens=7000))
    assert other.result is None
    assert holds(db, user) == [("settled", 5), ("released", None), ("released", None)]
    assert sync_manager.get_balance(user) == BalanceResult(
        user, 95, 0, 95, (ScopeBalance(scope=None, remaining=95),)
    )
    assert not sync_manager.verify_ledger()


def test_a_failed_first_attempt_does_not_block_the_retry(
    sync_manager: CreditManager, db: psycopg.Connection[Any]
) -> None:
    user = funded(sync_manager)
    with (
        pytest.raises(ModelCallFailed),
        sync_manager.metered_call(user, ESTIMATE, idempotency_key="turn-3"),
    ):
        raise ModelCallFailed
    with sync_manager.metered_call(user, ESTIMATE, idempotency_key="turn-3") as retry:
        retry.record(UsageMetrics(model="chat-model", input_tokens=4000))
    assert retry.result is not None and not retry.result.is_replay
    assert holds(db, user) == [("released", None), ("settled", 4)]


def test_an_estimate_the_user_cannot_afford_stops_before_the_call(
    sync_manager: CreditManager,
) -> None:
    user = funded(sync_manager, credits=5)
    called = False
    with (
        pytest.raises(InsufficientCreditsError),
        sync_manager.metered_call(user, ESTIMATE),
    ):
        called = True
    assert not called


@pytest.mark.parametrize("flavour", ["postgres-async", "http-async"])
def test_async_metered_call(
    flavour: str,
    database_url: str,
    supabase_url: str,
    service_role_key: str,
    db: psycopg.Connection[Any],
) -> None:
    async def scenario() -> str:
        store: AsyncPostgresStore | AsyncHttpxSupabaseStore
        if flavour == "postgres-async":
            store = AsyncPostgresStore(database_url, max_size=2)
        else:
            store = AsyncHttpxSupabaseStore(supabase_url, service_role_key)
        manager = AsyncCreditManager(store)
        try:
            await manager.publish_pricing_from_dict(CONFIG)
            user = f"metered-{uuid.uuid4()}"
            await manager.add_credits(user, 100)
            async with manager.metered_call(user, ESTIMATE, idempotency_key="a-1") as meter:
                meter.record(UsageMetrics(model="chat-model", output_tokens=2000))
            assert meter.result is not None and meter.result.amount == 8
            async with manager.metered_call(user, ESTIMATE, idempotency_key="a-1") as again:
                again.record(UsageMetrics(model="chat-model", output_tokens=2000))
            assert again.result is not None and again.result.is_replay
            with pytest.raises(ModelCallFailed):
                async with manager.metered_call(user, 3):
                    raise ModelCallFailed
            return user
        finally:
            await store.close()

    user = asyncio.run(scenario())
    assert holds(db, user) == [("settled", 8), ("released", None), ("released", None)]
