"""A reply lost after the ledger committed: a retry with the same idempotency key never
charges twice, through psycopg and through PostgREST."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from faultproxy import FaultProxy
from psycopg_pool import ConnectionPool

from ducto import AsyncCreditManager, CreditManager, StoreError
from ducto.errors import StoreConnectionError
from ducto.interface import (
    AsyncHttpxSupabaseStore,
    AsyncPostgresStore,
    HttpxSupabaseStore,
    PostgresStore,
)


@pytest.fixture
def db_proxy(database_url: str) -> Iterator[tuple[FaultProxy, str]]:
    """A proxy in front of the database, and a DSN that goes through it."""
    parts = urlsplit(database_url)
    assert parts.hostname and parts.port
    with FaultProxy(parts.hostname, parts.port) as proxy:
        netloc = parts.netloc.rsplit(":", 1)[0] + f":{proxy.port}"
        yield proxy, urlunsplit(parts._replace(netloc=netloc))


def journal_rows(database_url: str, user_id: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "select count(*) from public.credit_transactions where user_id = %s", [user_id]
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_postgres_store_retries_a_keyed_call_whose_reply_was_lost(
    database_url: str, db_proxy: tuple[FaultProxy, str]
) -> None:
    proxy, dsn = db_proxy
    user, key = f"fault-{uuid.uuid4()}", f"topup-{uuid.uuid4()}"
    store = PostgresStore(dsn, max_size=1)
    try:
        proxy.lose_reply_after(key.encode(), key.encode())
        result = CreditManager(store).add_credits(user, 10, idempotency_key=key)
    finally:
        store.close()
    assert proxy.dropped == 1
    # the first attempt committed; the retry found it and changed nothing
    assert result.is_replay
    assert journal_rows(database_url, user) == 1


def test_postgres_store_does_not_retry_a_call_without_a_key(
    database_url: str, db_proxy: tuple[FaultProxy, str]
) -> None:
    proxy, dsn = db_proxy
    user = f"fault-{uuid.uuid4()}"
    store = PostgresStore(dsn, max_size=1)
    try:
        proxy.lose_reply_after(user.encode(), user.encode())
        with pytest.raises(StoreError):
            CreditManager(store).add_credits(user, 10)
    finally:
        store.close()
    # the outcome is unknown to the caller, so it is reported, never guessed twice
    assert journal_rows(database_url, user) == 1


def test_http_store_retries_a_keyed_call_whose_reply_was_lost(
    database_url: str, supabase_url: str, service_role_key: str
) -> None:
    gateway = urlsplit(supabase_url)
    assert gateway.hostname and gateway.port
    user, key = f"fault-{uuid.uuid4()}", f"hold-{uuid.uuid4()}"
    direct = HttpxSupabaseStore(supabase_url, service_role_key)
    CreditManager(direct).add_credits(user, 50)
    direct.close()
    with FaultProxy(gateway.hostname, gateway.port) as proxy:
        store = HttpxSupabaseStore(f"http://127.0.0.1:{proxy.port}", service_role_key)
        try:
            proxy.lose_reply_after(key.encode(), key.encode())
            hold = CreditManager(store).reserve_credits(user, 20, idempotency_key=key)
            balance = CreditManager(store).get_balance(user)
        finally:
            store.close()
    assert proxy.dropped == 1
    assert hold.is_replay
    assert (balance.held, balance.available) == (20, 30)


def test_async_stores_retry_a_keyed_call_whose_reply_was_lost(
    database_url: str,
    db_proxy: tuple[FaultProxy, str],
    supabase_url: str,
    service_role_key: str,
) -> None:
    proxy, dsn = db_proxy
    gateway = urlsplit(supabase_url)
    assert gateway.hostname and gateway.port

    async def charge_twice_lost() -> list[bool]:
        replays = []
        user, key = f"fault-{uuid.uuid4()}", f"topup-{uuid.uuid4()}"
        pg = AsyncPostgresStore(dsn, max_size=1)
        try:
            proxy.lose_reply_after(key.encode(), key.encode())
            added = await AsyncCreditManager(pg).add_credits(user, 10, idempotency_key=key)
            replays.append(added.is_replay)
        finally:
            await pg.close()
        with FaultProxy(gateway.hostname or "", gateway.port or 0) as http_proxy:
            http = AsyncHttpxSupabaseStore(f"http://127.0.0.1:{http_proxy.port}", service_role_key)
            try:
                hold_key = f"hold-{uuid.uuid4()}"
                http_proxy.lose_reply_after(hold_key.encode(), hold_key.encode())
                hold = await AsyncCreditManager(http).reserve_credits(
                    user, 4, idempotency_key=hold_key
                )
                replays.append(hold.is_replay)
                balance = await AsyncCreditManager(http).get_balance(user)
                assert (balance.balance, balance.held) == (10, 4)
            finally:
                await http.close()
            assert http_proxy.dropped == 1
        return replays

    assert asyncio.run(charge_twice_lost()) == [True, True]
    assert proxy.dropped == 1


def test_a_lock_timeout_is_reported_not_retried_and_the_key_stays_free(database_url: str) -> None:
    user, key = f"fault-{uuid.uuid4()}", f"topup-{uuid.uuid4()}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        CreditManager(PostgresStore(connection=conn)).add_credits(user, 1)
    store = PostgresStore(f"{database_url}&options=-c%20lock_timeout%3D200", max_size=1)
    try:
        with psycopg.connect(database_url) as holder:
            holder.execute(
                "select 1 from public.credit_accounts where user_id = %s for update", [user]
            )
            with pytest.raises(StoreError) as info:
                CreditManager(store).add_credits(user, 5, idempotency_key=key)
            assert info.value.code == "55P03"
            holder.rollback()
        # nothing was written and the key was not consumed: the retry is the first effect
        retried = CreditManager(store).add_credits(user, 5, idempotency_key=key)
    finally:
        store.close()
    assert not retried.is_replay
    assert retried.balance_after == 6
    assert journal_rows(database_url, user) == 2


def test_a_retry_that_cannot_connect_after_a_lost_reply_leaves_the_outcome_unknown(
    database_url: str,
    db_proxy: tuple[FaultProxy, str],
    supabase_url: str,
    service_role_key: str,
) -> None:
    proxy, dsn = db_proxy
    gateway = urlsplit(supabase_url)
    assert gateway.hostname and gateway.port
    user = f"fault-{uuid.uuid4()}"
    direct_store = PostgresStore(database_url, max_size=1)
    direct = CreditManager(direct_store)
    direct.add_credits(user, 50)
    pg_key, http_key = f"hold-{uuid.uuid4()}", f"hold-{uuid.uuid4()}"
    errors: list[StoreError] = []
    # the first attempt commits and its answer is lost; every retry finds the server gone
    pool = ConnectionPool(
        dsn, min_size=1, max_size=1, timeout=0.5, kwargs={"autocommit": True}, open=True
    )
    try:
        proxy.lose_reply_after(pg_key.encode(), pg_key.encode(), then_refuse=True)
        with pytest.raises(StoreError) as pg_error:
            CreditManager(PostgresStore(pool=pool)).reserve_credits(user, 5, idempotency_key=pg_key)
        errors.append(pg_error.value)
    finally:
        pool.close()
    with FaultProxy(gateway.hostname, gateway.port) as http_proxy:
        store = HttpxSupabaseStore(f"http://127.0.0.1:{http_proxy.port}", service_role_key)
        try:
            http_proxy.lose_reply_after(http_key.encode(), http_key.encode(), then_refuse=True)
            with pytest.raises(StoreError) as http_error:
                CreditManager(store).reserve_credits(user, 7, idempotency_key=http_key)
            errors.append(http_error.value)
        finally:
            store.close()
    # the ledger did act: the errors must not say that nothing was sent
    for error in errors:
        assert not isinstance(error, StoreConnectionError), error
        assert "may or may not have taken effect" in error.message
    # and a retry with the key settles it: both holds were made, once
    try:
        assert direct.reserve_credits(user, 5, idempotency_key=pg_key).is_replay
        assert direct.reserve_credits(user, 7, idempotency_key=http_key).is_replay
        assert direct.get_balance(user).held == 12
    finally:
        direct_store.close()
