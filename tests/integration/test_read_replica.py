"""Analytics from a read replica: the stores' read URL against a real streaming replica.

The module starts one hot standby of the stack's PostgreSQL (``pg_basebackup -R``,
helpers_replica) and a PostgREST behind a gateway on it, then checks, for the psycopg,
httpx and supabase-py stores, sync and async: every analytics method and the journal export give
through the replica what they give through the primary; they really read the replica
(with its replay paused, a new write is missing there and present on the primary); and
every other call (writes, balances, statements) still goes to the primary.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import psycopg
import pytest
from conftest import _Awaited, stack_env
from helpers_api import new_user_id
from helpers_replica import (
    Replica,
    ReplicaApi,
    current_lsn,
    start_replica,
    start_replica_api,
    stop_replica,
    stop_replica_api,
    wait_for_replay,
    wait_until,
)
from psycopg.conninfo import make_conninfo
from psycopg.types.json import Jsonb
from supabase import AsyncClient, acreate_client, create_client
from test_cli import Cli
from test_concurrency import Ledger, connect

from ducto import (
    AsyncCreditManager,
    CreditManager,
    InsufficientCreditsError,
    JournalRow,
    StoreConnectionError,
    UsageMetrics,
    _rpc,
)
from ducto.interface import (
    AsyncHttpxSupabaseStore,
    AsyncPostgresStore,
    AsyncSupabaseStore,
    HttpxSupabaseStore,
    PostgresStore,
    SupabaseStore,
)

PRICING = {
    "models": [
        {"model": "gamma", "input": 0, "output": 0, "request": 2},
        {"model": "delta", "input": 0, "output": 0, "request": 3},
    ],
    "default": None,
}
FLAVOURS = ["postgres", "postgres-async", "http", "http-async", "supabase-py", "supabase-py-async"]


@pytest.fixture(scope="module")
def replica(database_url: str) -> Iterator[Replica]:
    """One streaming hot standby of the stack's cluster for the module."""
    stack_dir = Path(stack_env("DUCTO_STACK_DIR"))
    pgbin = Path(os.environ.get("DUCTO_PGBIN") or "/usr/lib/postgresql/15/bin")
    started = start_replica(database_url, stack_dir, pgbin)
    yield started
    stop_replica(started, database_url)
    # nothing is left: no folder, and no slot that would keep the primary's WAL
    assert not started.data_dir.exists()
    with psycopg.connect(database_url, autocommit=True) as conn:
        slots = conn.execute(
            "select count(*) from pg_replication_slots where slot_name = %s", [started.slot]
        ).fetchone()
    assert slots == (0,)


@pytest.fixture(scope="module")
def replica_api(replica: Replica) -> Iterator[ReplicaApi]:
    """The replica's REST API (PostgREST on the standby, behind a gateway)."""
    api = start_replica_api(replica, Path(stack_env("DUCTO_STACK_DIR")))
    yield api
    stop_replica_api(api)


@dataclass(frozen=True)
class Pair:
    """Two managers of one flavour: ``primary`` reads everything from the primary,
    ``routed`` has the replica as its read URL."""

    primary: CreditManager
    routed: CreditManager
    runner: asyncio.Runner | None = None  # the async flavours' loop

    def journal(self, manager: CreditManager, *args: Any, **kwargs: Any) -> list[JournalRow]:
        """``manager.export_journal(...)`` as a list, in either flavour."""
        rows = cast(Any, manager).export_journal(*args, **kwargs)
        if self.runner is None:
            return list(rows)

        async def collect() -> list[JournalRow]:
            return [row async for row in rows]

        return self.runner.run(collect())


@pytest.fixture(params=FLAVOURS)
def pair(
    request: pytest.FixtureRequest,
    database_url: str,
    supabase_url: str,
    service_role_key: str,
    replica: Replica,
    replica_api: ReplicaApi,
) -> Iterator[Pair]:
    flavour: str = request.param
    urls = (supabase_url, replica_api.url)
    if flavour == "postgres":
        stores = [
            PostgresStore(database_url, max_size=2),
            PostgresStore(database_url, max_size=2, read_dsn=replica.url),
        ]
        yield Pair(CreditManager(stores[0]), CreditManager(stores[1]))
        for store in stores:
            store.close()
    elif flavour == "http":
        https = [
            HttpxSupabaseStore(supabase_url, service_role_key),
            HttpxSupabaseStore(supabase_url, service_role_key, read_url=replica_api.url),
        ]
        yield Pair(CreditManager(https[0]), CreditManager(https[1]))
        for http in https:
            http.close()
    elif flavour == "supabase-py":
        # the app's own clients: one on the project, one on the replica's API
        client, read_client = (create_client(url, service_role_key) for url in urls)
        yield Pair(
            CreditManager(SupabaseStore(client)),
            CreditManager(SupabaseStore(client, read_client=read_client)),
        )
        for each in (client, read_client):
            each.postgrest.aclose()  # postgrest-py's name for the sync close
    else:
        with asyncio.Runner() as runner:
            astores: list[AsyncPostgresStore | AsyncHttpxSupabaseStore | AsyncSupabaseStore]
            aclients: list[AsyncClient] = []  # the app's own: it closes them
            if flavour == "supabase-py-async":
                aclients = [runner.run(acreate_client(url, service_role_key)) for url in urls]
                astores = [
                    AsyncSupabaseStore(aclients[0]),
                    AsyncSupabaseStore(aclients[0], read_client=aclients[1]),
                ]
            elif flavour == "postgres-async":
                astores = [
                    AsyncPostgresStore(database_url, max_size=2),
                    AsyncPostgresStore(database_url, max_size=2, read_dsn=replica.url),
                ]
            else:
                astores = [
                    AsyncHttpxSupabaseStore(supabase_url, service_role_key),
                    AsyncHttpxSupabaseStore(
                        supabase_url, service_role_key, read_url=replica_api.url
                    ),
                ]
            primary, routed = (
                cast(CreditManager, _Awaited(AsyncCreditManager(store), runner))
                for store in astores
            )
            yield Pair(primary, routed, runner)
            for astore in astores:
                if not isinstance(astore, AsyncSupabaseStore):
                    runner.run(astore.close())
            for aclient in aclients:
                runner.run(aclient.postgrest.aclose())


@pytest.fixture(scope="module")
def history(database_url: str, replica: Replica) -> dict[str, Any]:
    """Two days of journal at a far-future day no other test uses, written through the
    primary and replayed by the replica: grants, charges of four users on two models and
    by amount, a refund. Returns the window and the users."""
    day1 = datetime(2400, 1, 1, tzinfo=UTC) + timedelta(days=random.randrange(100_000))
    users = [new_user_id() for _ in range(4)]
    with connect(database_url) as conn:
        ledger = Ledger(conn)
        ledger.set_clock(day1 + timedelta(hours=9))
        ledger.call("credit_publish_pricing", config=Jsonb(PRICING))
        charges = []
        for index, user in enumerate(users):
            ledger.add(user, 1000 + index)
            for model, requests in (("gamma", index + 1), ("delta", 2 * index + 1)):
                metrics = Jsonb({"model": model, "requests": requests})
                charges.append(ledger.call("credit_deduct_usage", user_id=user, metrics=metrics))
            ledger.deduct(users[index], 7 + index)  # by amount: no model
        ledger.set_clock(day1 + timedelta(days=1, hours=2))
        ledger.refund(charges[1]["transaction_id"], 2)
        ledger.deduct(users[0], 11)
    wait_for_replay(replica, current_lsn(database_url))
    return {"start": day1, "end": day1 + timedelta(days=2), "users": users}


def test_the_replica_is_a_streaming_hot_standby(database_url: str, replica: Replica) -> None:
    with psycopg.connect(replica.url, autocommit=True) as conn:
        row = conn.execute("select pg_is_in_recovery()").fetchone()
        assert row == (True,)
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "select r.state from pg_stat_replication as r join pg_replication_slots as s"
            " on s.active_pid = r.pid where s.slot_name = %s",
            [replica.slot],
        ).fetchone()
        assert row == ("streaming",)


def test_analytics_through_the_replica_equal_the_primary(
    pair: Pair, history: dict[str, Any]
) -> None:
    start, end, users = history["start"], history["end"], history["users"]
    primary, routed = pair.primary, pair.routed

    stats = routed.aggregate_stats(start, end)
    assert stats == primary.aggregate_stats(start, end)
    # 4 users x (2 model charges + 1 by amount) + 1 on day 2; one refund
    assert (stats.charges, stats.refunds, stats.users) == (13, 1, 4)
    assert routed.daily_spend(start, end) == primary.daily_spend(start, end)
    by_model = routed.spend_by_model(start, end)
    assert by_model == primary.spend_by_model(start, end)
    assert {row.model for row in by_model} == {"gamma", "delta", None}
    by_user = routed.spend_by_user(start, end)
    assert by_user == primary.spend_by_user(start, end)
    assert {row.user_id for row in by_user} == set(users)
    assert routed.top_users(3, start, end) == primary.top_users(3, start, end)
    exported = pair.journal(routed, start, end, page_size=5)
    assert exported == pair.journal(primary, start, end, page_size=5)
    assert len(exported) == 4 + 13 + 1  # grants, charges, the refund


@pytest.fixture
def paused(replica: Replica) -> Iterator[psycopg.Connection[Any]]:
    """The replica with its WAL replay paused (resumed afterwards)."""
    with psycopg.connect(replica.url, autocommit=True) as conn:
        conn.execute("select pg_wal_replay_pause()")

        def is_paused() -> bool:
            row = conn.execute("select pg_get_wal_replay_pause_state()").fetchone()
            return row == ("paused",)

        wait_until("the replica pauses its replay", is_paused)
        try:
            yield conn
        finally:
            conn.execute("select pg_wal_replay_resume()")


def test_reads_go_to_the_replica_and_the_rest_to_the_primary(
    pair: Pair, database_url: str, replica: Replica, paused: psycopg.Connection[Any]
) -> None:
    user = new_user_id()
    now = datetime.now(UTC)
    start, end = now - timedelta(hours=1), now + timedelta(hours=1)

    # a write through the store with a read URL reaches the primary: a hot standby
    # would refuse it (cannot execute ... in a read-only transaction)
    added = pair.routed.add_credits(user, 42, "grant")
    assert pair.routed.get_balance(user).balance == 42
    assert pair.routed.statement(user, start, end).closing_balance == 42

    # the replica has not replayed it: the routed reads do not see it, the primary's do
    assert pair.journal(pair.routed, start, end, user) == []
    primary_rows = pair.journal(pair.primary, start, end, user)
    assert [row.id for row in primary_rows] == [added.transaction_id]
    credited = pair.primary.aggregate_stats(start, end).credited
    assert credited - pair.routed.aggregate_stats(start, end).credited >= 42

    paused.execute("select pg_wal_replay_resume()")
    wait_for_replay(replica, current_lsn(database_url))
    assert pair.journal(pair.routed, start, end, user) == primary_rows


def test_an_unreachable_replica_fails_only_the_reads_it_serves(database_url: str) -> None:
    with socket.socket() as sock:  # a loopback port nothing listens on once it is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dead = make_conninfo(database_url, host="127.0.0.1", port=port)
    store = PostgresStore(database_url, max_size=2, read_dsn=dead, connect_timeout=2)
    try:
        manager = CreditManager(store)
        user = new_user_id()
        manager.add_credits(user, 5, "grant")
        assert manager.get_balance(user).balance == 5
        now = datetime.now(UTC)
        with pytest.raises(StoreConnectionError) as refused:
            manager.aggregate_stats(now - timedelta(hours=1), now)
        assert f"127.0.0.1:{port}/" in refused.value.message  # it names the replica
    finally:
        store.close()


def test_concurrent_charges_while_analytics_read_the_replica(
    database_url: str, replica: Replica, history: dict[str, Any]
) -> None:
    """Keyed charges through stores with a read URL, each sent twice, while the same
    stores read analytics from the replica: every key is charged once on the primary, the
    floors hold, and the ledger stays whole."""
    users = [new_user_id() for _ in range(4)]
    workers, charges, credit = 8, 12, 40  # 96 charges of 2 against 4 x 40: some refused
    start, end = history["start"], history["end"]
    with connect(database_url) as conn:
        ledger = Ledger(conn)
        for user in users:
            ledger.add(user, credit)
        reference = ledger.call("credit_aggregate_stats", start=start, end=end)
    barrier = threading.Barrier(workers, timeout=60)
    charged: list[str] = []
    refused: list[str] = []

    def work(index: int) -> None:
        store = PostgresStore(database_url, max_size=2, read_dsn=replica.url)
        try:
            manager = CreditManager(store)
            manager.load_pricing_from_store()
            barrier.wait()
            for step in range(charges):
                key = f"replica-{index}-{step}-{users[0]}"
                user = users[(index + step) % len(users)]
                metrics = UsageMetrics(model="gamma", requests=1)
                try:
                    first = manager.deduct(user, metrics, idempotency_key=key)
                except InsufficientCreditsError:
                    refused.append(key)
                    continue
                again = manager.deduct(user, metrics, idempotency_key=key)
                assert again.is_replay and again.transaction_id == first.transaction_id
                charged.append(key)
                assert manager.aggregate_stats(start, end).charges == reference["charges"]
        finally:
            store.close()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(work, index) for index in range(workers)]:
            future.result()

    assert len(charged) + len(refused) == workers * charges
    with connect(database_url) as conn:
        ledger = Ledger(conn)
        balances = {user: ledger.balance(user)["balance"] for user in users}
        assert all(balance >= 0 for balance in balances.values())  # the floor held
        assert sum(credit - balance for balance in balances.values()) == 2 * len(charged)
        for user in users:
            journal = ledger.one(
                "select coalesce(sum(amount), 0) as total, count(distinct idempotency_key)"
                " filter (where type = 'usage') as keys, count(*) filter (where type = 'usage')"
                " as usage from credit_transactions where user_id = %s",
                (user,),
            )
            assert journal["total"] == balances[user]
            assert journal["keys"] == journal["usage"]  # each key charged once
        assert ledger.verify() == []


def test_cli_reads_stats_and_exports_from_the_replica(
    database_url: str,
    supabase_url: str,
    service_role_key: str,
    replica: Replica,
    replica_api: ReplicaApi,
    paused: psycopg.Connection[Any],
) -> None:
    user = new_user_id()
    now = datetime.now(UTC)
    start, end = now - timedelta(hours=1), now + timedelta(hours=1)
    window = ("--start", start.isoformat(), "--end", end.isoformat())
    export = ("export", "journal", "--format", "jsonl", "--user", user, *window)
    primary = Cli(DATABASE_URL=database_url)
    routed = [
        Cli(DATABASE_URL=database_url, DUCTO_READ_DATABASE_URL=replica.url),
        Cli(
            SUPABASE_URL=supabase_url,
            SUPABASE_SERVICE_ROLE_KEY=service_role_key,
            DUCTO_READ_SUPABASE_URL=replica_api.url,
        ),
    ]
    for cli in routed:
        cli("credits", "add", user, "3", "--type", "grant")  # the primary: replay is paused
    assert primary.json("credits", "balance", user)["balance"] == 6
    assert len(primary(*export).stdout.splitlines()) == 2
    for cli in routed:
        assert cli.json("credits", "balance", user)["balance"] == 6
        assert cli(*export).stdout == ""  # the replica has not replayed the grants
        assert cli.json("stats", "summary", *window)["charges"] >= 0

    paused.execute("select pg_wal_replay_resume()")
    wait_for_replay(replica, current_lsn(database_url))
    for cli in routed:
        assert cli(*export).stdout == primary(*export).stdout


def test_cli_refuses_a_replica_of_another_kind(
    database_url: str, supabase_url: str, service_role_key: str
) -> None:
    wrong = Cli(
        SUPABASE_URL=supabase_url,
        SUPABASE_SERVICE_ROLE_KEY=service_role_key,
        DUCTO_READ_DATABASE_URL=database_url,
    )
    assert "needs DATABASE_URL" in wrong("stats", code=3).stderr
    wrong = Cli(DATABASE_URL=database_url, DUCTO_READ_SUPABASE_URL=supabase_url)
    assert "needs SUPABASE_URL" in wrong("stats", code=3).stderr


def test_every_call_a_replica_serves_is_a_stable_function(database_url: str) -> None:
    """A hot standby runs only what cannot write: every replica-safe call is STABLE (or
    IMMUTABLE), which PostgREST also runs in a read-only transaction."""
    start, end = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 2, 1, tzinfo=UTC)
    calls = [
        _rpc.aggregate_stats(start, end),
        _rpc.daily_spend(start, end),
        _rpc.spend_by_model(start, end),
        _rpc.spend_by_user(start, end),
        _rpc.top_users(5, start, end),
        _rpc.export_journal(start, end, None, None, 10),
    ]
    assert all(call.replica_safe for call in calls)
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(
            "select p.proname, p.provolatile from pg_proc as p"
            " join pg_namespace as n on n.oid = p.pronamespace"
            " where n.nspname = 'public' and p.proname = any(%s)",
            [[call.function for call in calls]],
        ).fetchall()
    assert sorted(rows) == sorted((call.function, "s") for call in calls)
