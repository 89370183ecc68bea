"""Upgrading a ledger in use: this release's migrations applied to a database that the
previous release's schema has been writing, with rows of every kind.

The database gets the migrations up to the previous schema (the second release heading of
CHANGELOG.md), then a ledger of several users: paid and promotional grants with priorities
and expiries, a grant used up, a grant expired but not swept, deducts, usage and fixed-job
charges, a hold settled with an overage that became debt, a refund, a team pool charged by
a member.
Then ``setup()`` (what `ducto setup` runs) upgrades it, applying this release's
migrations, and:

- every account, journal row, grant, draw and balance reads the same as before;
- ``credit_verify_ledger()`` finds nothing, and every constraint is validated;
- the ledger keeps working on the upgraded schema: the unswept grant is expired by the
  next debit, the used-up grant is never drawn from, and every operation still verifies.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from helpers_process import install_test_clock
from psycopg.rows import dict_row

from ducto import CreditManager, SetupResult
from ducto._migrations import PREPARE_RECORD, RECORD, bundled, latest_version
from ducto.interface import PostgresStore

ROOT = Path(__file__).resolve().parents[2]
PRICING = json.loads((ROOT / "examples" / "pricing.json").read_text(encoding="utf-8"))
TEAM = "7a3a1c2e-0000-4000-8000-000000000001"
T0 = "2030-01-01 00:00:00+00"
T_LATER = "2030-01-01 02:00:00+00"  # the 1-hour grant has expired; nothing has swept it

# What must read the same after the upgrade.
SNAPSHOT = {
    "accounts": "select user_id, balance, debt, version from credit_accounts order by user_id",
    "journal": """select account_id, seq, type, amount, balance_after, grant_id, refund_of,
                         reservation_id, pricing_version, usage, model, job_name,
                         attributed_user_id, metadata
                  from credit_transactions order by account_id, seq""",
    "grants": """select id, category, priority, amount, remaining, expires_at
                 from credit_grants order by id""",
    "draws": "select transaction_id, grant_id, amount from credit_grant_draws order by id",
    # the columns every release answers (a release may add some)
    "balances": """select b.user_id, b.balance, b.held, b.available from credit_accounts as a,
                   lateral credit_get_balance(a.user_id) as b order by a.user_id""",
}


def previous_schema() -> str:
    """The schema of the release before this one: the second heading of CHANGELOG.md."""
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    schemas = re.findall(r"^## \S+ \(schema (\d+)\)$", changelog, re.MULTILINE)
    assert len(schemas) >= 2, "CHANGELOG.md names no previous release"
    return str(schemas[1])


def install_the_previous_release(url: str) -> None:
    """The database as setup() of the previous release left it: its migrations applied and
    recorded, each in its own transaction."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(PREPARE_RECORD)
        for migration in bundled():
            if migration.version > previous_schema():
                break
            with conn.transaction():
                conn.execute(migration.sql.encode())
                conn.execute(RECORD, (migration.version, migration.name))


def setup(url: str) -> SetupResult:
    store = PostgresStore(url, max_size=1)
    try:
        return CreditManager(store).setup()
    finally:
        store.close()


def rows(conn: psycopg.Connection[Any], query: str, *params: object) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(query, params).fetchall()


def one(conn: psycopg.Connection[Any], query: str, *params: object) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return row[0]


def write_ledger(conn: psycopg.Connection[Any]) -> dict[str, dict[str, Any]]:
    """Rows of every kind, written by the schema before the upgrade; the first results of
    the calls in RETRIED."""
    conn.execute("select set_config('ducto.now', %s, false)", (T0,))
    conn.execute(
        "select credit_publish_pricing(%s::jsonb, 'before upgrade')", (json.dumps(PRICING),)
    )
    for call, params in [
        # alice: paid 1000, a promotional 200 spent first (priority 10, used up below),
        # and 30 spent last (priority 90) that expire in an hour, unswept
        ("credit_add_credits('alice', 1000, 'purchase')", ()),
        (
            "credit_add_credits('alice', 200, 'promotion', 'promotional', 10, %s::timestamptz)",
            ("2030-01-02 00:00:00+00",),
        ),
        (
            "credit_add_credits('alice', 30, 'grant', 'promotional', 90, %s::timestamptz)",
            ("2030-01-01 01:00:00+00",),
        ),
        ("credit_deduct_credits('alice', 250)", ()),
        (
            "credit_deduct_usage('alice', %s::jsonb)",
            (json.dumps({"model": "gpt-4o", "input_tokens": 1000, "output_tokens": 500}),),
        ),
        ("credit_deduct_fixed('alice', 'topic_generation')", ()),
        # dave: 20 that expire in an hour, for the sweep after the upgrade
        (
            "credit_add_credits('dave', 20, 'grant', 'paid', 50, %s::timestamptz)",
            ("2030-01-01 01:00:00+00",),
        ),
        # bob: a grant used up, then a hold settled beyond everything he has: debt
        ("credit_add_credits('bob', 40)", ()),
        ("credit_deduct_credits('bob', 40)", ()),
        ("credit_add_credits('bob', 10)", ()),
        # erin: 100 bought through the Stripe webhook, a fifth of the money refunded
        (
            "credit_stripe_record_purchase('erin', 100, 'cs_erin', 'pi_erin', 1000, %s::jsonb)",
            (json.dumps(ERIN_CHECKOUT),),
        ),
        ("credit_stripe_charge_refunded('pi_erin', 200)", ()),
        # a team pool charged by its member
        ("credit_upsert_team(%s::uuid, 'research')", (TEAM,)),
        ("credit_set_team_member(%s::uuid, 'carol', 'member', 500, 'month')", (TEAM,)),
        ("credit_add_credits('team:' || %s, 300)", (TEAM,)),
        (
            "credit_deduct_team(%s::uuid, 'carol', %s::jsonb)",
            (TEAM, json.dumps({"model": "claude-sonnet-4", "input_tokens": 2000})),
        ),
    ]:
        conn.execute(f"select {call}", params)
    hold = one(conn, "select reservation_id from credit_reserve_credits('bob', 10)")
    conn.execute("select credit_settle_reservation(%s, 25)", (hold,))
    charge = one(conn, "select transaction_id from credit_deduct_credits('alice', 40)")
    conn.execute("select credit_refund_transaction(%s, 15, 'upgrade test')", (charge,))
    for key in ("hold-1", "hold-2"):
        conn.execute("select credit_reserve_credits('alice', 5, p_idempotency_key => %s)", (key,))
    return {call: rows(conn, f"select * from {call}", *params)[0] for call, params in RETRIED}


# Calls made before the upgrade and retried after it: each must be a replay of its first
# result. The schema before recorded the keys in credit_idempotency_keys, and the usages
# in full; the schema after stores usages compact.
RETRIED: list[tuple[str, tuple[object, ...]]] = [
    (
        "credit_deduct_usage('alice', %s::jsonb, '{}', 'chat-1')",
        (json.dumps({"model": "gpt-4o", "input_tokens": 300, "output_tokens": 20}),),
    ),
    (
        "credit_deduct_team(%s::uuid, 'carol', %s::jsonb, '{}', 'team-1')",
        (TEAM, json.dumps({"model": "gpt-4o-mini", "input_tokens": 1000})),
    ),
    ("credit_deduct_credits('alice', 5, 0, '{}', 'plain-1')", ()),
    # a hold settled by usage with a key, and one without (a replay by the hold)
    (
        "credit_settle_usage((select (k.result ->> 'reservation_id')::uuid"
        " from credit_idempotency_keys as k where k.idempotency_key = 'hold-1'),"
        " %s::jsonb, '{}', 'settle-1')",
        (json.dumps({"model": "o3", "input_tokens": 100}),),
    ),
    (
        "credit_settle_usage((select (k.result ->> 'reservation_id')::uuid"
        " from credit_idempotency_keys as k where k.idempotency_key = 'hold-2'), %s::jsonb)",
        (json.dumps({"model": "o3", "input_tokens": 200, "requests": 1}),),
    ),
]


ERIN_CHECKOUT = {
    "source": "stripe",
    "checkout_session_id": "cs_erin",
    "payment_intent": "pi_erin",
    "amount_total": 1000,
    "currency": "usd",
}


def test_this_release_keeps_a_ledger_in_use(new_database: Callable[..., str]) -> None:
    url = new_database()
    install_the_previous_release(url)
    install_test_clock(url)  # the ledger is written at set times
    with psycopg.connect(url, autocommit=True) as conn:
        firsts = write_ledger(conn)
        conn.execute("select set_config('ducto.now', %s, false)", (T_LATER,))
        old = {name: rows(conn, query) for name, query in SNAPSHOT.items()}
        assert one(conn, "select debt from credit_accounts where user_id = 'bob'") == 15
        assert rows(conn, "select * from credit_verify_ledger()") == []

    versions = tuple(m.version for m in bundled())
    released = tuple(v for v in versions if v <= previous_schema())
    assert setup(url) == SetupResult(versions[len(released) :], released, latest_version())
    # a migration that defines the clock brings back now(), as in every install
    install_test_clock(url)

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("select set_config('ducto.now', %s, false)", (T_LATER,))
        assert {name: rows(conn, query) for name, query in SNAPSHOT.items()} == old
        assert rows(conn, "select * from credit_verify_ledger()") == []
        assert (
            one(
                conn,
                """select count(*) from pg_constraint
                   where connamespace = 'public'::regnamespace and not convalidated""",
            )
            == 0
        )
        # the stored column of 20261127000900_credit_lean_debit
        assert rows(
            conn,
            """select spendable, remaining > 0 as has_credits, count(*)
               from credit_grants group by 1, 2 order by 1, 2""",
        ) == [
            # alice's promotional 200, bob's 40 and 10
            {"spendable": False, "has_credits": False, "count": 3},
            # alice's paid 1000 and expired 30, dave's 20, the team's 300, erin's 100
            {"spendable": True, "has_credits": True, "count": 5},
        ]
        # erin's purchase is found by its payment intent: a refund of half its money in all
        # claws back half its credits in all
        assert rows(
            conn,
            "select known, change from credit_stripe_charge_refunded('pi_erin', 500)",
        ) == [{"known": True, "change": 30}]
        assert one(conn, "select balance from credit_accounts where user_id = 'erin'") == 50

        # The ledger keeps working. Alice's next debit first journals the expiry of the
        # 30 credits (due an hour ago, never swept), then draws by priority.
        expired_before = one(conn, "select count(*) from credit_transactions where type = 'expiry'")
        balance = one(conn, "select balance from credit_accounts where user_id = 'alice'")
        result = rows(conn, "select * from credit_deduct_credits('alice', 100)")[0]
        assert result["balance_after"] == balance - 30 - 100
        assert (
            one(conn, "select count(*) from credit_transactions where type = 'expiry'")
            == expired_before + 1
        )
        # Keys used before the upgrade still name their first request: a retry is a
        # replay of the first result, another request under the key is refused.
        for call, params in RETRIED:
            replay = rows(conn, f"select * from {call}", *params)[0]
            assert replay == {**firsts[call], "is_replay": True}, call
        with pytest.raises(psycopg.Error) as refused:
            conn.execute("select credit_deduct_credits('alice', 6, 0, '{}', 'plain-1')")
        assert refused.value.sqlstate == "DC020"
        # A key used after it is recorded on the charge's journal row, and replays too.
        again = [
            rows(conn, "select * from credit_deduct_credits('alice', 7, 0, '{}', 'plain-2')")[0]
            for _ in range(2)
        ]
        assert (again[0]["is_replay"], again[1]["is_replay"]) == (False, True)
        assert {**again[1], "is_replay": False} == again[0]
        assert (
            one(
                conn,
                """select count(*) from credit_transactions
                   where idempotency_key = 'plain-2' and request_hash is not null""",
            )
            == 1
        )

        # Bob's debt is paid first by new credits; his used-up grant is never drawn from.
        conn.execute("select credit_add_credits('bob', 50)")
        assert one(conn, "select debt from credit_accounts where user_id = 'bob'") == 0
        conn.execute("select credit_deduct_credits('bob', 35)")
        conn.execute(
            "select credit_deduct_team(%s::uuid, 'carol', %s::jsonb)",
            (TEAM, json.dumps({"model": "gpt-4o-mini", "input_tokens": 10000})),
        )
        conn.execute("select credit_deduct_fixed('alice', 'roadmap_generation')")
        # the sweep finds dave's 20 (alice's 30 were expired by her debit)
        assert rows(conn, "select expired_grants, expired_amount from credit_sweep_expired()") == [
            {"expired_grants": 1, "expired_amount": 20}
        ]
        assert rows(conn, "select * from credit_verify_ledger()") == []
        assert (
            one(
                conn,
                """select count(*) from credit_grant_draws as d
                   join credit_grants as g on g.id = d.grant_id
                   where g.user_id = 'bob' and g.amount = 40 and d.amount > 0""",
            )
            == 1
        )
