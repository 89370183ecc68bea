"""Crashes and faults lose nothing: keyed charges from concurrent clients, broken mid-call.

Each test runs about eight concurrent clients making keyed charges (``deduct`` with an
idempotency key, through ``CreditManager`` as an application does), breaks something
under them, and keeps an acknowledgement log of what every client saw. Then
:func:`helpers_crash.audit` checks that every charge a client saw succeed is in the
journal exactly once, that a charge that failed left nothing (unless its error left
the outcome unknown, and a retry with the same key settled it), that every balance is
what the acknowledged charges left, and that ``credit_verify_ledger()`` is empty. Each
test prints its counts.

The tests that crash PostgreSQL or restart PostgREST do it on a stack of their own
(:class:`helpers_crash.ThrowawayStack`); the others use the shared test stack.
"""

from __future__ import annotations

import asyncio
import functools
import os
import random
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import psycopg_pool
import pytest
from faultproxy import FaultProxy
from helpers_crash import (
    PRICING,
    UNKNOWN_OUTCOME,
    AckLog,
    Charge,
    ThrowawayStack,
    audit,
    charge_until_settled,
    usage,
)

from ducto import AsyncCreditManager, CreditManager, DeductionResult, StoreError
from ducto.interface import AsyncPostgresStore, HttpxSupabaseStore, PostgresStore
from ducto.models import from_row

WORKERS = 8
GRANT = 1_000_000


@pytest.fixture(scope="module")
def crash_stack() -> Iterator[ThrowawayStack]:
    """A stack of this module's own, which its tests crash and restart."""
    stack = ThrowawayStack()
    try:
        yield stack.up()
    finally:
        stack.down()


def funded_users(manager: CreditManager, prefix: str, count: int) -> dict[str, int]:
    """``count`` new users with GRANT credits each (user -> credits granted)."""
    users = {f"{prefix}-{uuid.uuid4().hex[:8]}-{n}": GRANT for n in range(count)}
    for user in users:
        manager.add_credits(user, GRANT)
    return users


def new_key() -> str:
    return f"fault-{uuid.uuid4()}"


def charger(manager: CreditManager) -> Charge:
    """A keyed charge of ``credits`` through ``manager``: (key, user, credits) -> result."""
    return lambda key, user, credits: manager.deduct(user, usage(credits), idempotency_key=key)


def load(
    manager: CreditManager, users: list[str], log: AckLog, stop: threading.Event
) -> Callable[[int], None]:
    """A client's loop: keyed charges of 1 to 3 credits until ``stop``, each settled."""

    def client(worker: int) -> None:
        rng = random.Random(worker)
        n = 0
        while not stop.is_set():
            charge_until_settled(charger(manager), new_key(), rng.choice(users), n % 3 + 1, log)
            n += 1

    return client


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def under_load(
    manager: CreditManager, users: list[str], log: AckLog, fault: Callable[[], None]
) -> None:
    """Run WORKERS clients; once they have charges acknowledged, run ``fault``; stop
    them when more charges have been acknowledged after it."""
    stop = threading.Event()
    with ThreadPoolExecutor(WORKERS) as pool:
        clients = [pool.submit(load(manager, users, log, stop), n) for n in range(WORKERS)]
        try:
            wait_for(lambda: len(log.acknowledged) >= 3 * WORKERS, "charges before the fault")
            fault()
            after = len(log.acknowledged)
            wait_for(lambda: len(log.acknowledged) >= after + 3 * WORKERS, "charges after it")
        finally:
            stop.set()
        for future in clients:
            future.result()


def client_pool(
    dsn: str, max_size: int = WORKERS, min_size: int = 1, **options: Any
) -> psycopg_pool.ConnectionPool:
    """A pool as PostgresStore makes one (autocommit), whose statistics the test reads;
    open, with its ``min_size`` connections made."""
    pool = psycopg_pool.ConnectionPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        kwargs={"autocommit": True},
        open=False,
        **options,
    )
    pool.open(wait=True, timeout=30)
    return pool


# ---------------------------------------------------------------- crashes (own stack)


def test_postgres_stopped_in_immediate_mode_under_load(crash_stack: ThrowawayStack) -> None:
    # a pool that waits less than the database is down: a call whose connection broke
    # finds none for its retry, and must say that its outcome is unknown
    pool = client_pool(crash_stack.database_url, timeout=0.3)
    manager = CreditManager(PostgresStore(pool=pool))
    log = AckLog()
    try:
        manager.publish_pricing_from_dict(PRICING)
        users = funded_users(manager, "immediate", 3)

        def crash() -> None:
            crash_stack.stop_postgres_immediately()
            time.sleep(1)
            crash_stack.start_postgres()

        under_load(manager, list(users), log, crash)
    finally:
        pool.close()
    broken = pool.get_stats().get("returns_bad", 0)
    counts = audit(crash_stack.database_url, "pg_ctl stop -m immediate", log, users, broken=broken)
    assert broken > 0  # the crash did break calls in flight
    # their retries were settled by retrying with the key; a call that found no
    # connection at all failed, and left nothing (audit)
    assert counts.retried > 0


def test_backend_killed_in_the_middle_of_a_debit(crash_stack: ThrowawayStack) -> None:
    pool = client_pool(crash_stack.database_url)
    manager = CreditManager(PostgresStore(pool=pool))
    victim_pool = client_pool(
        f"{crash_stack.database_url}&application_name=ducto-victim", max_size=1
    )
    victim_manager = CreditManager(PostgresStore(pool=victim_pool))
    log = AckLog()
    try:
        manager.publish_pricing_from_dict(PRICING)
        users = funded_users(manager, "sigkill", 4)
        victim_manager.load_pricing_from_store()
        # the victim's account is its own: the load must not hold its lock
        victim, *others = users
        victim_key = f"victim-{uuid.uuid4()}"
        killed: list[DeductionResult | None] = []

        def kill_the_debit() -> None:
            # Lock the victim's grants: its debit locks the account, journals the charge
            # and updates the balance, then waits to draw from a grant. Kill it there.
            holder = psycopg.connect(crash_stack.database_url, autocommit=False)
            try:
                holder.execute(
                    "select 1 from public.credit_grants as g join public.credit_accounts as a"
                    " on a.id = g.account_id where a.user_id = %s for update of g",
                    [victim],
                )
                charging = threading.Thread(
                    target=lambda: killed.append(
                        charge_until_settled(charger(victim_manager), victim_key, victim, 7, log)
                    )
                )
                charging.start()
                [pid] = waiting_on_locks(crash_stack.database_url, "ducto-victim", 1)
                wrote = holder.execute(
                    "select count(*) from pg_locks where pid = %s and mode = 'RowExclusiveLock'"
                    " and relation = 'public.credit_transactions'::regclass",
                    [pid],
                ).fetchone()
                assert wrote == (1,), "the debit has not journaled its charge yet"
                os.kill(pid, signal.SIGKILL)
            finally:
                holder.close()  # gone already: the postmaster ends every backend after a crash
            charging.join(timeout=60)

        under_load(manager, others, log, kill_the_debit)
    finally:
        pool.close()
        victim_pool.close()
    broken = pool.get_stats().get("returns_bad", 0) + victim_pool.get_stats().get("returns_bad", 0)
    counts = audit(crash_stack.database_url, "SIGKILL of a debit", log, users, broken=broken)
    # the killed debit never committed: its retry was the first charge, not a replay
    assert victim_pool.get_stats().get("returns_bad", 0) >= 1
    assert killed and killed[0] is not None and not killed[0].is_replay
    assert counts.failed == 0


def test_postgrest_restarted_under_load(crash_stack: ThrowawayStack) -> None:
    setup = PostgresStore(crash_stack.database_url, max_size=1)
    try:
        CreditManager(setup).publish_pricing_from_dict(PRICING)
        users = funded_users(CreditManager(setup), "pgrst", 3)
    finally:
        setup.close()
    unanswered = Counter[int]()
    # the gateway's answers while PostgREST is away: PostgREST's error shape, as JSON
    gateway_errors: list[tuple[str, object]] = []

    def count_unanswered(response: httpx.Response) -> None:
        if response.status_code >= 500:
            unanswered[response.status_code] += 1
        if response.status_code == 502:
            response.read()
            gateway_errors.append((response.headers["content-type"], response.json()))

    client = httpx.Client(timeout=10, event_hooks={"response": [count_unanswered]})
    # retries of keyed calls that outlast a restart: 0.05 s doubling, 6 s in all
    store = HttpxSupabaseStore(
        crash_stack.supabase_url, crash_stack.service_role_key, attempts=8, client=client
    )
    manager = CreditManager(store)
    log = AckLog()
    try:
        manager.load_pricing_from_store()

        def restart_twice() -> None:
            crash_stack.restart_postgrest(signal.SIGTERM)  # gracefully, then not
            time.sleep(0.3)
            crash_stack.restart_postgrest(signal.SIGKILL)

        under_load(manager, list(users), log, restart_twice)
    finally:
        client.close()
    counts = audit(
        crash_stack.database_url,
        "PostgREST restarted",
        log,
        users,
        **{f"http_{status}": n for status, n in sorted(unanswered.items())},
    )
    assert unanswered  # the restart did turn calls away
    for content_type, body in gateway_errors:
        assert content_type == "application/json"
        assert isinstance(body, dict) and sorted(body) == ["code", "details", "hint", "message"]
        assert body["code"] == "bad_gateway"
    assert counts.failed == 0  # and the store's retries saw every keyed call through


# ---------------------------------------------------------------- faults (shared stack)


@pytest.fixture
def pricing(database_url: str) -> Iterator[CreditManager]:
    """A manager on the shared stack with PRICING published (to fund users and check)."""
    store = PostgresStore(database_url, max_size=1)
    manager = CreditManager(store)
    manager.publish_pricing_from_dict(PRICING)
    yield manager
    store.close()


def left_nothing(database_url: str, keys: list[str]) -> bool:
    """Whether no journal row carries any of ``keys``."""
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "select count(*) from public.credit_transactions where idempotency_key = any(%s)",
            [keys],
        ).fetchone()
    return row is not None and row[0] == 0


def waiting_on_locks(database_url: str, application: str, count: int) -> list[int]:
    """Wait until ``count`` backends of ``application`` wait on a lock; their pids."""
    query = (
        "select pid from pg_stat_activity where application_name = %s and wait_event_type = 'Lock'"
    )
    pids: list[int] = []
    # autocommit: a transaction would see one snapshot of pg_stat_activity throughout
    with psycopg.connect(database_url, autocommit=True) as watcher:

        def enough() -> bool:
            pids[:] = [row[0] for row in watcher.execute(query, [application])]
            return len(pids) >= count

        wait_for(enough, f"{count} calls of {application} to wait on a lock", timeout=30)
    return pids


def locked(database_url: str, user: str) -> psycopg.Connection[Any]:
    """A connection that holds ``user``'s account row locked until it rolls back."""
    holder = psycopg.connect(database_url)
    holder.execute("select 1 from public.credit_accounts where user_id = %s for update", [user])
    return holder


def retry_failed(log: AckLog, charge: Charge) -> int:
    """Retry every failed charge with its key; each must be a first charge, not a replay."""
    failed = list(log.failed)
    for key in failed:
        user, credits = log.requests[key]
        result = charge_until_settled(charge, key, user, credits, log)
        assert result is not None and not result.is_replay
    return len(failed)


def test_a_client_cancels_its_calls_with_psycopg(database_url: str, pricing: CreditManager) -> None:
    users = funded_users(pricing, "cancel", 2)
    hot, cold = users
    application = f"ducto-cancel-{uuid.uuid4().hex[:8]}"
    conns = [
        psycopg.connect(database_url, autocommit=True, application_name=application)
        for _ in range(WORKERS)
    ]
    managers = [CreditManager(PostgresStore(connection=conn), pricing.engine) for conn in conns]
    log, cancels = AckLog(), 0
    try:
        # 1. every client's charge waits on the hot account's lock; half of them cancel it
        holder = locked(database_url, hot)
        with ThreadPoolExecutor(WORKERS) as pool:
            try:
                waits = [
                    pool.submit(charge_until_settled, charger(manager), new_key(), hot, 2, log)
                    for manager in managers
                ]
                waiting_on_locks(database_url, application, WORKERS)
                for conn in conns[::2]:
                    conn.cancel_safe()
                cancels += len(conns[::2])
                wait_for(lambda: len(log.failed) == WORKERS // 2, "the cancelled calls to fail")
            finally:
                holder.close()
            for future in waits:
                future.result()
        assert {getattr(exc, "code", None) for exc in log.failed.values()} == {"57014"}
        assert left_nothing(database_url, list(log.failed))
        assert retry_failed(log, charger(managers[0])) == WORKERS // 2

        # 2. clients charge while cancels land at random moments: each call is charged, or
        #    refused with nothing written
        def client(manager: CreditManager) -> None:
            for _ in range(12):
                charge_until_settled(charger(manager), new_key(), cold, 1, log)

        with ThreadPoolExecutor(WORKERS) as pool:
            running = [pool.submit(client, m) for m in managers]
            rng = random.Random(13)
            while not all(future.done() for future in running):
                rng.choice(conns).cancel_safe()
                cancels += 1
                time.sleep(rng.uniform(0, 0.01))
            for done in running:
                done.result()
    finally:
        for conn in conns:
            conn.close()
    refused = list(log.failed)
    assert left_nothing(database_url, refused)
    audit(database_url, "psycopg cancel", log, users, cancels=cancels, refused=len(refused))


def test_a_client_cancels_its_asyncio_tasks(database_url: str, pricing: CreditManager) -> None:
    users = funded_users(pricing, "task", 2)
    hot, cold = users
    application = f"ducto-task-{uuid.uuid4().hex[:8]}"
    log, cancelled = AckLog(), Counter[str]()

    async def scenario() -> None:
        store = AsyncPostgresStore(
            f"{database_url}&application_name={application}", max_size=WORKERS
        )
        manager = AsyncCreditManager(store, pricing.engine)
        inflight: dict[str, asyncio.Task[DeductionResult]] = {}

        async def charge(key: str, user: str, credits: int) -> DeductionResult:
            """A keyed charge; a cancelled attempt leaves its outcome unknown: retry it."""
            log.request(key, user, credits)
            while True:
                task = asyncio.create_task(manager.deduct(user, usage(credits), key))
                inflight[key] = task
                try:
                    result = await task
                except asyncio.CancelledError:
                    log.retry(key)
                    continue
                finally:
                    del inflight[key]
                log.ack(key, credits, result)
                return result

        try:
            # 1. charges wait on the hot account's lock; half of them are cancelled there,
            #    so they cannot have committed: their retries are first charges
            holder = await asyncio.to_thread(locked, database_url, hot)
            keys = [new_key() for _ in range(WORKERS)]
            waits = [asyncio.create_task(charge(key, hot, 2)) for key in keys]
            try:
                await asyncio.to_thread(waiting_on_locks, database_url, application, WORKERS)
                for key in keys[::2]:
                    inflight[key].cancel()
                    cancelled["waiting"] += 1
                # released once every cancelled charge is retried, and waits again
                while not all(key in log.retried and key in inflight for key in keys[::2]):
                    await asyncio.sleep(0.01)
            finally:
                holder.close()
            first = await asyncio.gather(*waits)
            assert not any(result.is_replay for result in first)

            # 2. tasks cancelled at random moments, before, during or after the commit
            async def client(worker: int) -> None:
                for _ in range(12):
                    await charge(new_key(), cold, worker % 3 + 1)

            clients = asyncio.gather(*(client(n) for n in range(WORKERS)))
            rng = random.Random(7)
            while not clients.done():
                await asyncio.sleep(rng.uniform(0, 0.01))
                if inflight:
                    inflight[rng.choice(list(inflight))].cancel()
                    cancelled["anywhere"] += 1
            await clients
        finally:
            await store.close()

    asyncio.run(scenario())
    counts = audit(database_url, "asyncio task cancelled", log, users, **cancelled)
    assert counts.retried >= cancelled["waiting"] > 0


def test_statement_and_lock_timeouts_refuse_with_nothing_written(
    database_url: str, pricing: CreditManager
) -> None:
    users = funded_users(pricing, "timeout", 2)
    hot, cold = users
    application = f"ducto-timeout-{uuid.uuid4().hex[:8]}"
    settings = ["lock_timeout%3D300", "statement_timeout%3D300"]
    stores = [
        PostgresStore(
            f"{database_url}&application_name={application}&options=-c%20{setting}",
            max_size=WORKERS // 2,
        )
        for setting in settings
    ]
    # the charges on the free account have no timeout: a busy machine must not fail them
    stores.append(PostgresStore(database_url, max_size=WORKERS))
    managers = [CreditManager(store, pricing.engine) for store in stores]
    log = AckLog()

    def client(worker: int) -> None:
        # one charge on the locked account among charges on a free one
        for n in range(6):
            if n == 2:
                charge_until_settled(charger(managers[worker % 2]), new_key(), hot, 1, log)
            else:
                charge_until_settled(charger(managers[2]), new_key(), cold, 1, log)

    holder = locked(database_url, hot)
    try:
        with ThreadPoolExecutor(WORKERS) as pool:
            for future in [pool.submit(client, n) for n in range(WORKERS)]:
                future.result()
    finally:
        holder.close()
    codes = Counter(getattr(exc, "code", None) for exc in log.failed.values())
    assert codes == {"55P03": WORKERS // 2, "57014": WORKERS // 2}
    assert left_nothing(database_url, list(log.failed))
    try:
        retried = retry_failed(log, charger(managers[0]))
    finally:
        for store in stores:
            store.close()
    audit(database_url, "statement and lock timeouts", log, users, timed_out=retried)


def test_an_exhausted_pool_refuses_with_nothing_written(
    database_url: str, pricing: CreditManager
) -> None:
    users = funded_users(pricing, "pool", 2)
    hot, cold = users
    application = f"ducto-pool-{uuid.uuid4().hex[:8]}"
    # two connections, both taken by charges waiting on a lock; a short wait for a third
    pool = client_pool(
        f"{database_url}&application_name={application}", max_size=2, min_size=2, timeout=0.3
    )
    manager = CreditManager(PostgresStore(pool=pool), pricing.engine)
    log = AckLog()
    holder = locked(database_url, hot)
    try:
        with ThreadPoolExecutor(WORKERS) as threads:
            try:
                waits = [
                    threads.submit(charge_until_settled, charger(manager), new_key(), hot, 3, log)
                    for _ in range(2)
                ]
                waiting_on_locks(database_url, application, 2)
                turned_away = [
                    threads.submit(charge_until_settled, charger(manager), new_key(), cold, 1, log)
                    for _ in range(WORKERS - 2)
                ]
                for future in turned_away:
                    assert future.result() is None
            finally:
                holder.close()
            for future in waits:
                assert future.result() is not None
        assert all(
            isinstance(exc.__cause__, psycopg_pool.PoolTimeout) for exc in log.failed.values()
        )
        assert left_nothing(database_url, list(log.failed))
        exhausted = retry_failed(log, charger(manager))
    finally:
        pool.close()
    counts = audit(database_url, "connection pool exhausted", log, users, turned_away=exhausted)
    assert exhausted == WORKERS - 2
    assert counts.failed == 0


def test_lost_replies_of_the_credit_usage_edge_function(
    database_url: str, supabase_url: str, service_role_key: str, pricing: CreditManager
) -> None:
    users = funded_users(pricing, "edge", 2)
    gateway = urlsplit(supabase_url)
    assert gateway.hostname and gateway.port
    log = AckLog()
    requests = [(new_key(), list(users)[n % 2], n % 3 + 1) for n in range(WORKERS * 6)]
    lost = {key for key, _, _ in requests[::4]}
    headers = {"Authorization": f"Bearer {service_role_key}", "apikey": service_role_key}

    with FaultProxy(gateway.hostname, gateway.port) as proxy:
        for key in lost:
            # the function charged, answered, and its answer never reached the caller
            proxy.lose_reply_after(b"/functions/v1/credit-usage", key.encode())

        def credit_usage(http: httpx.Client, key: str, user: str, credits: int) -> DeductionResult:
            try:
                response = http.post(
                    "/functions/v1/credit-usage",
                    json={
                        "user_id": user,
                        "metrics": {"model": "fault-model", "input_tokens": credits * 1000},
                        "idempotency_key": key,
                    },
                )
            except httpx.TransportError as exc:
                # sent, never answered: what the ledger did is unknown
                raise StoreError(f"credit-usage: {exc!r}; {UNKNOWN_OUTCOME}") from exc
            assert response.status_code == 200, response.text
            return from_row(DeductionResult, response.json())

        def client(worker: int) -> None:
            with httpx.Client(
                base_url=f"http://127.0.0.1:{proxy.port}", headers=headers, timeout=15
            ) as http:
                for key, user, credits in requests[worker::WORKERS]:
                    charge_until_settled(
                        functools.partial(credit_usage, http), key, user, credits, log
                    )

        with ThreadPoolExecutor(WORKERS) as pool:
            for future in [pool.submit(client, n) for n in range(WORKERS)]:
                future.result()
        dropped = proxy.dropped
    counts = audit(database_url, "edge function, lost replies", log, users, lost_replies=dropped)
    assert dropped == len(lost)
    # each lost reply was retried with its key and answered from the journal, not charged
    assert lost <= log.retried
    assert {key for key, result in log.acknowledged.items() if result.is_replay} == lost
    assert counts.failed == 0
