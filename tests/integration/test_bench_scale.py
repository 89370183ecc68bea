"""bench/scale/generate.sql, the generator of `make bench-scale`, writes a valid ledger.

At a tiny size, in a fresh database of its own (the generator needs an empty ledger, and
the other tests share the stack's): credit_verify_ledger() finds nothing, each balance is
its journal's sum, every kind of row the generator promises is there, and the ledger's own
functions keep it valid when they charge and refund its accounts concurrently.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "bench" / "scale" / "generate.sql"
PRICING = json.loads((ROOT / "examples" / "pricing.json").read_text())

ROWS = 600
USERS = 20
SPAN = "24 months"
WORKERS = 8
CHARGES_EACH = 15

USAGE = {"model": "gpt-4o", "input_tokens": 500, "output_tokens": 200}


def generate(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("select credit_publish_pricing(%s, 'bench')", (Jsonb(PRICING),))
        conn.execute(f"set ducto_scale.rows = {ROWS}")
        conn.execute(f"set ducto_scale.users = {USERS}")
        conn.execute(f"set ducto_scale.span = '{SPAN}'")
        # the whole file, as psql -f runs it: no parameters, so one simple query
        conn.execute(GENERATOR.read_text().encode())


def issues(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute("select * from credit_verify_ledger()").fetchall()


def unbalanced(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    """Accounts whose balance or version is not their journal's sum or count."""
    return conn.execute(
        """
        select a.user_id, a.balance, sum(t.amount), a.version, count(t.id)
        from credit_accounts as a
        left join credit_transactions as t on t.account_id = a.id
        group by a.id
        having a.balance <> coalesce(sum(t.amount), 0) or a.version <> count(t.id)
        """
    ).fetchall()


def test_the_generated_ledger_verifies_and_stays_valid(new_database: Callable[..., str]) -> None:
    url = new_database(migrated=True)
    generate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        assert issues(conn) == []
        assert unbalanced(conn) == []
        kinds: dict[str, int] = dict(
            conn.execute(
                "select case when usage is not null then 'priced usage'"
                " when type = 'usage' then 'deduct' else type end, count(*)"
                " from credit_transactions group by 1"
            ).fetchall()
        )
        # per account, 30 planned rows: a purchase, a promotion (lapsed 23 months ago, so
        # with its expiry row), refunds at rows 10 and 30, deducts and priced usage
        assert kinds == {
            "purchase": USERS,
            "promotion": USERS,
            "expiry": USERS,
            "refund": 2 * USERS,
            "deduct": 9 * USERS,
            "priced usage": 17 * USERS,
        }
        accounts = conn.execute(
            "select count(*), min(version), max(version), min(balance) from credit_accounts"
        ).fetchone()
        assert accounts is not None
        assert accounts[:3] == (USERS, ROWS // USERS + 1, ROWS // USERS + 1)
        assert accounts[3] > 0
        # every charge is keyed, as the benchmark's are, and its key is unique per account
        assert conn.execute(
            "select count(*) from credit_transactions"
            " where type = 'usage' and (idempotency_key is null or request_hash is null)"
        ).fetchone() == (0,)
        # the rows span the months, up to now
        span = conn.execute(
            "select max(created_at) - min(created_at) > interval '700 days',"
            " max(created_at) <= now() from credit_transactions"
        ).fetchone()
        assert span == (True, True)
        # a journal row's id carries its created_at, as the ledger's own ids do
        assert conn.execute(
            "select count(*) from credit_transactions"
            " where substr(id::text, 15, 1) <> '7'"
            " or ('x' || substr(replace(id::text, '-', ''), 1, 12))::bit(48)::bigint"
            " <> floor(extract(epoch from created_at) * 1000)::bigint"
        ).fetchone() == (0,)

    # Concurrent keyed usage charges (the benchmark's) on the generated accounts, and
    # refunds of generated charges: the ledger's functions find the generated grants, keys
    # and draws as they would have written them.
    def charge(worker: int) -> list[int]:
        rng = random.Random(worker)
        charged = []
        with psycopg.connect(url, autocommit=True) as conn:
            for n in range(CHARGES_EACH):
                user = f"bench-{rng.randint(1, USERS)}"
                row = conn.execute(
                    "select amount from credit_deduct_usage(%s, %s, '{}', %s)",
                    (user, Jsonb(USAGE), f"k-{worker}-{n}"),
                ).fetchone()
                assert row is not None
                charged.append(row[0])
        return charged

    with psycopg.connect(url, autocommit=True) as conn:
        before = conn.execute("select sum(balance) from credit_accounts").fetchone()
        refundable = conn.execute(
            "select id, amount from credit_transactions as t"
            " where type = 'usage' and not exists ("
            "    select from credit_transactions as r where r.refund_of = t.id)"
            " order by created_at desc limit 5"
        ).fetchall()
    with ThreadPoolExecutor(WORKERS) as pool:
        charged = [amount for amounts in pool.map(charge, range(WORKERS)) for amount in amounts]
    assert len(charged) == WORKERS * CHARGES_EACH and all(amount > 0 for amount in charged)

    with psycopg.connect(url, autocommit=True) as conn:
        for transaction_id, _ in refundable:
            conn.execute("select credit_refund_transaction(%s)", (transaction_id,))
        after = conn.execute("select sum(balance) from credit_accounts").fetchone()
        assert before is not None and after is not None
        assert after[0] == before[0] - sum(charged) - sum(amount for _, amount in refundable)
        assert issues(conn) == []
        assert unbalanced(conn) == []
        # each key charged once
        assert conn.execute(
            "select count(*), count(distinct (account_id, idempotency_key))"
            " from credit_transactions where idempotency_key like 'k-%'"
        ).fetchone() == (len(charged), len(charged))
