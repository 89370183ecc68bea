"""The Python client against the real stack: CreditManager over every store flavour.

Each test runs four times: PostgresStore and HttpxSupabaseStore (through the gateway and
PostgREST), sync and async. The async managers are driven through one event loop per
test so that they are exercised exactly as an application would await them.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from ducto import (
    AsyncCreditManager,
    BalanceResult,
    CreditManager,
    DuctoError,
    IdempotencyConflictError,
    InsufficientCreditsError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    RefundError,
    ReservationStateError,
)
from ducto._migrations import latest_version
from ducto._rpc import RpcCall
from ducto.interface import (
    AsyncPostgresStore,
    HttpxSupabaseStore,
    PostgresStore,
)


def new_user() -> str:
    return f"client-{uuid.uuid4()}"


def test_lifecycle(manager: CreditManager) -> None:
    user = new_user()
    added = manager.add_credits(user, 100, tx_type="purchase", metadata={"order": "o-1"})
    assert (added.amount, added.balance_after, added.tx_type, added.is_replay) == (
        100,
        100,
        "purchase",
        False,
    )
    promo = manager.add_credits(
        user,
        20,
        tx_type="promotion",
        expires_at=datetime.now(UTC) + timedelta(days=1),
        category="promotional",
        priority=10,
    )
    assert promo.expires_at is not None and promo.balance_after == 120

    hold = manager.reserve_credits(user, 30)
    assert hold.available_after == 90
    assert manager.get_balance(user).held == 30

    settled = manager.settle_reservation(hold.reservation_id, 45, metadata={"model": "m"})
    assert (settled.amount, settled.overage, settled.balance_after) == (45, 15, 75)
    assert settled.available_after == 75

    refund = manager.refund_credits(settled.transaction_id, 5, reason="slow answer")
    assert (refund.amount, refund.total_refunded, refund.refundable_remaining) == (5, 5, 40)
    assert refund.balance_after == 80

    released = manager.release_reservation(manager.reserve_credits(user, 10).reservation_id)
    assert (released.status, released.amount, released.available_after) == ("released", 10, 80)

    balance = manager.get_balance(user)
    assert (balance.balance, balance.held, balance.available) == (80, 0, 80)
    assert manager.sweep_expired_credits(dry_run=True).dry_run is True
    assert manager.verify_ledger() == []


def test_replay_returns_the_first_result(manager: CreditManager) -> None:
    user = new_user()
    first = manager.add_credits(user, 10, idempotency_key="grant-1")
    again = manager.add_credits(user, 10, idempotency_key="grant-1")
    assert again.transaction_id == first.transaction_id and again.is_replay
    assert manager.get_balance(user).balance == 10
    with pytest.raises(IdempotencyConflictError) as info:
        manager.add_credits(user, 11, idempotency_key="grant-1")
    assert info.value.code == "DC020"


def _raises(expected: type[DuctoError], code: str, action: Callable[[], object]) -> DuctoError:
    with pytest.raises(expected) as info:
        action()
    assert info.value.code == code, info.value
    return info.value


def test_every_ledger_error_maps_to_its_exception(manager: CreditManager) -> None:
    user = new_user()
    granted = manager.add_credits(user, 10)
    _raises(InvalidInputError, "DC002", lambda: manager.get_balance("a\x01b"))
    _raises(
        InvalidInputError,
        "DC003",
        lambda: manager.add_credits(user, 1, metadata={"x": "y" * 20000}),
    )
    _raises(
        InvalidInputError, "DC004", lambda: manager.add_credits(user, 1, idempotency_key="k" * 256)
    )
    _raises(
        InvalidInputError,
        "DC005",
        lambda: manager.add_credits(user, 1, expires_at=datetime.now(UTC) - timedelta(seconds=1)),
    )
    _raises(InvalidInputError, "DC006", lambda: manager.add_credits(user, 1, tx_type="gift"))
    short = _raises(
        InsufficientCreditsError, "DC010", lambda: manager.reserve_credits(user, 6, min_balance=5)
    )
    assert short.details == {"user_id": user, "available": 10, "needed": 6, "min_balance": 5}
    _raises(NotFoundError, "DC030", lambda: manager.refund_credits(str(uuid.uuid4())))
    _raises(NotFoundError, "DC031", lambda: manager.release_reservation(str(uuid.uuid4())))
    _raises(RefundError, "DC051", lambda: manager.refund_credits(granted.transaction_id))

    hold = manager.reserve_credits(user, 2, min_balance=0)
    manager.release_reservation(hold.reservation_id)
    _raises(
        ReservationStateError, "DC040", lambda: manager.settle_reservation(hold.reservation_id, 1)
    )
    hold = manager.reserve_credits(user, 2, min_balance=0)
    used = manager.settle_reservation(hold.reservation_id, 2)
    _raises(
        ReservationStateError, "DC041", lambda: manager.settle_reservation(hold.reservation_id, 3)
    )
    _raises(RefundError, "DC050", lambda: manager.refund_credits(used.transaction_id or "", 3))
    assert manager.get_balance(user).balance == 8


@pytest.mark.parametrize("commit", [True, False])
def test_a_debit_follows_the_callers_transaction(database_url: str, commit: bool) -> None:
    user = new_user()
    with psycopg.connect(database_url, autocommit=True) as conn:
        CreditManager(PostgresStore(connection=conn)).add_credits(user, 10)
    with psycopg.connect(database_url) as conn:
        conn.execute("create temporary table app_orders (id int)")
        manager = CreditManager(PostgresStore(connection=conn))
        manager.reserve_credits(user, 4, min_balance=0)
        conn.execute("insert into app_orders values (1)")
        if commit:
            conn.commit()
        else:
            conn.rollback()
    with psycopg.connect(database_url) as conn:
        held = CreditManager(PostgresStore(connection=conn)).get_balance(user).held
    assert held == (4 if commit else 0)


class CallerFailed(Exception):
    pass


async def _async_transaction(database_url: str, user: str, fail: bool) -> BalanceResult:
    store = AsyncPostgresStore(database_url, max_size=1)
    try:
        with contextlib.suppress(CallerFailed):
            async with store.transaction() as bound:
                manager = AsyncCreditManager(bound)
                await manager.add_credits(user, 10)
                await manager.reserve_credits(user, 4, min_balance=0)
                if fail:
                    raise CallerFailed
        return await AsyncCreditManager(store).get_balance(user)
    finally:
        await store.close()


@pytest.mark.parametrize("flavour", ["sync", "async"])
@pytest.mark.parametrize("fail", [False, True])
def test_a_store_transaction_is_one_transaction(
    database_url: str, flavour: str, fail: bool
) -> None:
    user = new_user()
    if flavour == "async":
        balance = asyncio.run(_async_transaction(database_url, user, fail))
    else:
        store = PostgresStore(database_url, max_size=1)
        try:
            with contextlib.suppress(CallerFailed), store.transaction() as bound:
                manager = CreditManager(bound)
                manager.add_credits(user, 10)
                manager.reserve_credits(user, 4, min_balance=0)
                if fail:
                    raise CallerFailed
            balance = CreditManager(store).get_balance(user)
        finally:
            store.close()
    # both calls commit together, or neither does
    assert (balance.balance, balance.held) == ((0, 0) if fail else (10, 4))


def test_setup_on_the_pushed_stack_changes_nothing(manager: CreditManager) -> None:
    result = manager.setup()
    assert result.applied == ()
    assert result.schema_version == latest_version()


def test_a_refused_role_maps_to_permission_denied(
    database_url: str, supabase_url: str, anon_key: str
) -> None:
    http = HttpxSupabaseStore(supabase_url, anon_key)
    try:
        with pytest.raises(PermissionDeniedError) as info:
            CreditManager(http).add_credits(new_user(), 1)
        assert info.value.code == "42501"
    finally:
        http.close()
    with psycopg.connect(database_url) as conn:
        conn.execute("set role anon")
        with pytest.raises(PermissionDeniedError) as info:
            CreditManager(PostgresStore(connection=conn)).add_credits(new_user(), 1)
        assert info.value.code == "42501"


def test_the_http_store_works_with_the_new_api_keys(
    supabase_url: str, secret_key: str, publishable_key: str
) -> None:
    # sb_secret_... is not a JWT: the store sends it in apikey alone, and the gateway
    # runs the request as service_role; the publishable key is anon, and refused
    user = new_user()
    secret = HttpxSupabaseStore(supabase_url, secret_key)
    public = HttpxSupabaseStore(supabase_url, publishable_key)
    try:
        manager = CreditManager(secret)
        assert manager.add_credits(user, 10).balance_after == 10
        hold = manager.reserve_credits(user, 4, min_balance=0)
        assert manager.settle_reservation(hold.reservation_id, 4).balance_after == 6
        with pytest.raises(PermissionDeniedError) as info:
            CreditManager(public).reserve_credits(user, 1, min_balance=0)
        assert info.value.code == "42501"
        assert manager.get_balance(user).balance == 6
    finally:
        secret.close()
        public.close()


@pytest.mark.parametrize("amount", ["1.5", "NaN", "Infinity", "0"])
def test_the_ledgers_own_amount_check_maps_through_every_store(
    manager: CreditManager, amount: str
) -> None:
    # past the client's own checks, straight to the function: the ledger refuses it
    call = RpcCall("credit_add_credits", {"p_user_id": new_user(), "p_amount": amount})
    with pytest.raises(InvalidInputError) as info:
        manager.store.call(call)
    assert info.value.code == "DC001"
