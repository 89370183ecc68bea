"""The cost of the Python client over the bare driver, in the same run on the same stack.

For each store, one loop calls an RPC through ``CreditManager`` and another sends the very
same RPC with the bare driver (psycopg on one connection; httpx on one client), in
alternating rounds; the script prints the median time per call of each and their ratio.
Target: the manager costs less than 10% over the bare driver.

Then the stores over an app's supabase-py client against ``HttpxSupabaseStore``, the same
call through the same gateway: ``SupabaseStore`` (and ``AsyncSupabaseStore`` against
``AsyncHttpxSupabaseStore``), where the ratio printed is the HTTP store's rate over the
supabase-py store's (throughput, higher is better). Target: at least 0.9.

Run against a running stack (``eval "$(scripts/local-stack up)"``):

    .venv/bin/python bench/client_overhead.py [calls per round, default 2000]
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable

import httpx
import psycopg
from psycopg.types.json import Jsonb
from supabase import acreate_client, create_client

from ducto import AsyncCreditManager, CreditManager
from ducto.interface import (
    AsyncHttpxSupabaseStore,
    AsyncSupabaseStore,
    HttpxSupabaseStore,
    PostgresStore,
    SupabaseStore,
)

ROUNDS = 5


def per_call(loop: Callable[[int], None], calls: int) -> float:
    start = time.perf_counter()
    loop(calls)
    return (time.perf_counter() - start) / calls


def medians(first: Callable[[int], None], second: Callable[[int], None]) -> tuple[float, float]:
    """The median time per call of each loop, over alternating rounds."""
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    first(50)  # warm up connections and plans
    second(50)
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(ROUNDS):
        times[0].append(per_call(first, calls))
        times[1].append(per_call(second, calls))
    return statistics.median(times[0]), statistics.median(times[1])


def compare(
    name: str, manager_loop: Callable[[int], None], bare_loop: Callable[[int], None]
) -> None:
    m, b = medians(manager_loop, bare_loop)
    print(f"{name:<34} manager {m * 1e6:8.1f} us  bare {b * 1e6:8.1f} us  ratio {m / b:5.3f}")


def compare_stores(
    name: str, store_loop: Callable[[int], None], httpx_loop: Callable[[int], None]
) -> None:
    s, h = medians(store_loop, httpx_loop)
    print(f"{name:<34} supabase-py {s * 1e6:8.1f} us  httpx {h * 1e6:8.1f} us  ratio {h / s:5.3f}")


def supabase_py(url: str, key: str, user: str) -> None:
    """SupabaseStore and AsyncSupabaseStore against the HTTP stores, same call, same gateway."""
    client = create_client(url, key)
    over_client = CreditManager(SupabaseStore(client))
    http_store = HttpxSupabaseStore(url, key)
    over_httpx = CreditManager(http_store)
    compare_stores(
        "supabase-py: get_balance",
        lambda n: [over_client.get_balance(user) for _ in range(n)] and None,
        lambda n: [over_httpx.get_balance(user) for _ in range(n)] and None,
    )
    compare_stores(
        "supabase-py: add_credits",
        lambda n: [over_client.add_credits(user, 1) for _ in range(n)] and None,
        lambda n: [over_httpx.add_credits(user, 1) for _ in range(n)] and None,
    )
    client.postgrest.aclose()
    http_store.close()

    with asyncio.Runner() as runner:
        aclient = runner.run(acreate_client(url, key))
        aover_client = AsyncCreditManager(AsyncSupabaseStore(aclient))
        ahttp_store = AsyncHttpxSupabaseStore(url, key)
        aover_httpx = AsyncCreditManager(ahttp_store)

        async def balances(manager: AsyncCreditManager, n: int) -> None:
            for _ in range(n):
                await manager.get_balance(user)

        compare_stores(
            "supabase-py async: get_balance",
            lambda n: runner.run(balances(aover_client, n)),
            lambda n: runner.run(balances(aover_httpx, n)),
        )
        runner.run(aclient.postgrest.aclose())
        runner.run(ahttp_store.close())


def main() -> None:
    database_url = os.environ["DATABASE_URL"]
    url, key = os.environ["SUPABASE_URL"], os.environ["SUPABASE_SERVICE_ROLE_KEY"]
    user = f"bench-{uuid.uuid4()}"

    store = PostgresStore(database_url, max_size=1)
    manager = CreditManager(store)
    manager.add_credits(user, 10**12)
    with psycopg.connect(database_url, autocommit=True) as conn:

        def bare_pg_balance(n: int) -> None:
            for _ in range(n):
                conn.execute(
                    "select * from public.credit_get_balance(p_user_id => %s)", [user]
                ).fetchall()

        def bare_pg_add(n: int) -> None:
            for _ in range(n):
                # the same call the manager sends, every argument named
                conn.execute(
                    "select * from public.credit_add_credits(p_user_id => %s, p_amount => %s,"
                    " p_tx_type => %s, p_category => %s, p_priority => %s, p_expires_at => %s,"
                    " p_metadata => %s, p_idempotency_key => %s)",
                    [user, 1, "adjustment", "paid", 50, None, Jsonb({}), None],
                ).fetchall()

        compare(
            "postgres: get_balance",
            lambda n: [manager.get_balance(user) for _ in range(n)] and None,
            bare_pg_balance,
        )
        # a write whose cost does not grow with the calls before it (holds would)
        compare(
            "postgres: add_credits",
            lambda n: [manager.add_credits(user, 1) for _ in range(n)] and None,
            bare_pg_add,
        )
    store.close()

    http_store = HttpxSupabaseStore(url, key)
    http_manager = CreditManager(http_store)
    headers = {"apikey": key, "Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    with httpx.Client(base_url=url, headers=headers) as client:

        def bare_http_balance(n: int) -> None:
            body = json.dumps({"p_user_id": user})
            for _ in range(n):
                client.post("/rest/v1/rpc/credit_get_balance", content=body).json()

        compare(
            "http: get_balance",
            lambda n: [http_manager.get_balance(user) for _ in range(n)] and None,
            bare_http_balance,
        )
    http_store.close()

    supabase_py(url, key, user)


if __name__ == "__main__":
    main()
