"""Which calls a store with a read replica sends to the replica, without a server.

The history reads (the five analytics functions and the journal export) are
``replica_safe``; every other call (balances, statements, charges, setup's version
check) is not. The HTTP stores (through ``httpx.MockTransport``) post the first kind to
``read_url`` and the rest to ``url``; the psycopg stores, pointed at two ports nothing
listens on, fail each call with the address of the database it was routed to.
tests/integration/test_read_replica.py runs the same routing against a real replica.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from ducto import InvalidInputError, StoreConnectionError, UsageMetrics, _rpc
from ducto._rpc import RpcCall
from ducto.interface import (
    AsyncHttpxSupabaseStore,
    AsyncPostgresStore,
    HttpxSupabaseStore,
    PostgresStore,
)

START = datetime(2026, 1, 1, tzinfo=UTC)
END = START + timedelta(days=1)
USER = "user-1"

#: The calls a read replica may serve.
REPLICA_SAFE: dict[str, Callable[[], RpcCall]] = {
    "aggregate_stats": lambda: _rpc.aggregate_stats(START, END),
    "daily_spend": lambda: _rpc.daily_spend(START, END),
    "spend_by_model": lambda: _rpc.spend_by_model(START, END),
    "spend_by_user": lambda: _rpc.spend_by_user(START, END),
    "top_users": lambda: _rpc.top_users(10, START, END),
    "export_journal": lambda: _rpc.export_journal(START, END, None, None, 100),
}
#: Calls that must see the primary: writes, balances, a user's statement, checks.
PRIMARY_ONLY: dict[str, Callable[[], RpcCall]] = {
    "get_balance": lambda: _rpc.get_balance(USER),
    "balance_at": lambda: _rpc.balance_at(USER, END),
    "statement": lambda: _rpc.statement(USER, START, END),
    "add_credits": lambda: _rpc.add_credits(USER, 5, "grant", None, None),
    "deduct_usage": lambda: _rpc.deduct_usage(USER, UsageMetrics(model="m"), None, "key-1"),
    "get_limits": lambda: _rpc.get_limits(USER),
    "verify_ledger": _rpc.verify_ledger,
    "sweep_expired": lambda: _rpc.sweep_expired(True),
    "schema_version": _rpc.schema_version,
}


def test_only_the_history_reads_are_replica_safe() -> None:
    assert all(build().replica_safe for build in REPLICA_SAFE.values())
    assert not any(build().replica_safe for build in PRIMARY_ONLY.values())
    assert all(build().retry_safe for build in REPLICA_SAFE.values())  # reads


# ---------------------------------------------------------------- HTTP

PRIMARY_URL = "https://project.supabase.co"
READ_URL = "https://project-rr-eu.supabase.co/"


def http_hosts(flavour: str, calls: list[RpcCall], read_url: str | None) -> list[str]:
    """The host each call was posted to by a store of ``flavour`` with ``read_url``."""
    hosts: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path.startswith("/rest/v1/rpc/")
        hosts.append(request.url.host)
        return httpx.Response(200, json=[])

    transport = httpx.MockTransport(handler)
    if flavour == "sync":
        with httpx.Client(transport=transport) as client:
            store = HttpxSupabaseStore(PRIMARY_URL, "sb_secret_x", client=client, read_url=read_url)
            for call in calls:
                store.call(call)
        return hosts

    async def run() -> None:
        async with httpx.AsyncClient(transport=transport) as client:
            astore = AsyncHttpxSupabaseStore(
                PRIMARY_URL, "sb_secret_x", client=client, read_url=read_url
            )
            for call in calls:
                await astore.call(call)

    asyncio.run(run())
    return hosts


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_http_store_posts_history_reads_to_the_read_url(flavour: str) -> None:
    reads = [build() for build in REPLICA_SAFE.values()]
    others = [build() for build in PRIMARY_ONLY.values()]
    assert http_hosts(flavour, reads, READ_URL) == ["project-rr-eu.supabase.co"] * len(reads)
    assert http_hosts(flavour, others, READ_URL) == ["project.supabase.co"] * len(others)


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_http_store_without_a_read_url_posts_everything_to_the_primary(flavour: str) -> None:
    calls = [build() for build in (*REPLICA_SAFE.values(), *PRIMARY_ONLY.values())]
    assert http_hosts(flavour, calls, None) == ["project.supabase.co"] * len(calls)


@pytest.mark.parametrize("read_url", ["", "ftp://replica", "replica.example.com", 5])
def test_http_store_refuses_a_read_url_that_is_not_http(read_url: Any) -> None:
    with pytest.raises(InvalidInputError) as refused:
        HttpxSupabaseStore(PRIMARY_URL, "sb_secret_x", read_url=read_url)
    assert refused.value.code == "DC006"


# ---------------------------------------------------------------- psycopg


def closed_port() -> int:
    """A loopback port nothing listens on (a connection to it is refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def routed_to(flavour: str, call: RpcCall, primary: int, replica: int) -> str:
    """The message of the StoreConnectionError a psycopg store of ``flavour`` raises for
    ``call`` when neither its primary nor its replica answers."""
    dsn = f"postgresql://ducto@127.0.0.1:{primary}/ledger"
    read_dsn = f"postgresql://ducto@127.0.0.1:{replica}/ledger"
    with pytest.raises(StoreConnectionError) as failed:
        if flavour == "sync":
            store = PostgresStore(dsn, read_dsn=read_dsn, connect_timeout=2)
            try:
                store.call(call)
            finally:
                store.close()
        else:

            async def run() -> None:
                astore = AsyncPostgresStore(dsn, read_dsn=read_dsn, connect_timeout=2)
                try:
                    await astore.call(call)
                finally:
                    await astore.close()

            asyncio.run(run())
    return failed.value.message


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_psycopg_store_sends_history_reads_to_the_read_dsn(flavour: str) -> None:
    primary, replica = closed_port(), closed_port()
    for name, build in REPLICA_SAFE.items():
        assert f"127.0.0.1:{replica}/ledger" in routed_to(flavour, build(), primary, replica), name
    for name, build in PRIMARY_ONLY.items():
        assert f"127.0.0.1:{primary}/ledger" in routed_to(flavour, build(), primary, replica), name


def test_psycopg_store_takes_a_read_dsn_only_with_its_own_pool() -> None:
    with pytest.raises(ValueError, match="read_dsn"):
        PostgresStore(connection=object(), read_dsn="postgresql://replica/ledger")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError) as refused:
        PostgresStore("postgresql://primary/ledger", read_dsn="host=replica port")
    assert refused.value.code == "DC006"
