"""No key, clock or number lets a caller pay less: each hole, tried through PostgREST as
the service role an app server uses (the clock through SQL, which is where it was open).

- a settle's key names one request: another usage under a used key is refused and its hold
  kept, not taken as a free replay;
- a team member's keys are the member's own: no member replays, blocks or reads another's;
- the ledger's clock is the transaction's: no session setting moves it in an install;
- a settle's overage is bounded (9 times the hold by default, or the call's max_overage);
- the largest balance is 2^53 - 1, and analytics totals are exact past bigint;
- a plan change within a period tops the allowance up, never grants both in full.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from helpers_api import (
    JSON,
    Api,
    error_details,
    expect_error,
    expect_ok,
    expect_rows,
    ledger_rows,
    new_user_id,
)

MAX_AMOUNT = 2**53 - 1
# 1 credit per request, 1 per 1,000 input tokens: {"model": "trust-unit", ...}
PRICING = {
    "models": [{"model": "trust-unit", "input": 1000, "output": 0, "request": 1}],
    "default": None,
}


def usage(input_tokens: int) -> JSON:
    return {"model": "trust-unit", "input_tokens": input_tokens}


@pytest.fixture(scope="module")
def priced(service: Api) -> None:
    expect_ok(service.rpc("credit_publish_pricing", {"p_config": PRICING}))


def funded(service: Api, amount: int = 1000) -> str:
    user = new_user_id()
    expect_ok(service.rpc("credit_add_credits", {"p_user_id": user, "p_amount": amount}))
    return user


def hold(service: Api, user: str, amount: int) -> str:
    reply = expect_ok(
        service.rpc("credit_reserve_credits", {"p_user_id": user, "p_amount": amount})
    )
    return str(reply["reservation_id"])


def hold_status(db: psycopg.Connection[Any], reservation_id: str) -> str:
    row = db.execute(
        "select status from credit_reservations where id = %s", (reservation_id,)
    ).fetchone()
    assert row is not None
    return str(row[0])


def balance(service: Api, user: str) -> int:
    return int(expect_ok(service.rpc("credit_get_balance", {"p_user_id": user}))["balance"])


# ---------------------------------------------------------------- a settle's key


def test_a_used_settle_key_does_not_make_another_usage_free(
    service: Api, db: psycopg.Connection[Any], priced: None
) -> None:
    user = funded(service)
    first, second = hold(service, user, 20), hold(service, user, 20)
    settled = expect_ok(
        service.rpc(
            "credit_settle_usage",
            {"p_reservation_id": first, "p_metrics": usage(14000), "p_idempotency_key": "req-1"},
        )
    )
    assert (settled["amount"], settled["is_replay"]) == (15, False)
    before = ledger_rows(db, user)

    # a hundred times the usage under the same key: refused, nothing charged, hold kept
    refused = expect_error(
        service.rpc(
            "credit_settle_usage",
            {
                "p_reservation_id": second,
                "p_metrics": usage(1_400_000),
                "p_idempotency_key": "req-1",
            },
        ),
        409,
        "DC020",
    )
    assert error_details(refused)["request"]["usage"] == usage(1_400_000)
    assert ledger_rows(db, user) == before
    assert hold_status(db, second) == "active"

    # the same request retried on the other hold is a replay, and lets that hold go
    again = expect_ok(
        service.rpc(
            "credit_settle_usage",
            {"p_reservation_id": second, "p_metrics": usage(14000), "p_idempotency_key": "req-1"},
        )
    )
    assert again["is_replay"] and again["transaction_id"] == settled["transaction_id"]
    assert hold_status(db, second) == "released"
    assert balance(service, user) == 1000 - 15


# ---------------------------------------------------------------- a team member's keys


@pytest.fixture(scope="module")
def pool(service: Api, priced: None) -> JSON:
    team_id, alice, bob = str(uuid.uuid4()), new_user_id(), new_user_id()
    expect_ok(service.rpc("credit_upsert_team", {"p_team_id": team_id, "p_name": "Trust"}))
    expect_ok(service.rpc("credit_add_credits", {"p_user_id": f"team:{team_id}", "p_amount": 500}))
    for member in (alice, bob):
        expect_ok(
            service.rpc("credit_set_team_member", {"p_team_id": team_id, "p_user_id": member})
        )
    return {"team_id": team_id, "alice": alice, "bob": bob}


def team_charge(service: Api, pool: JSON, member: str, requests: int, key: str) -> Any:
    return service.rpc(
        "credit_deduct_team",
        {
            "p_team_id": pool["team_id"],
            "p_user_id": pool[member],
            "p_metrics": {"model": "trust-unit", "requests": requests},
            "p_metadata": {"secret": f"{member}'s prompt"},
            "p_idempotency_key": key,
        },
    )


def test_a_member_can_neither_block_nor_replay_nor_read_another_members_request(
    service: Api, pool: JSON
) -> None:
    # bob reads the pool's journal, guesses alice's next key and uses it first ...
    claimed = expect_ok(team_charge(service, pool, "bob", 1, "chat-42"))
    # ... alice's charge under that key is hers: charged, neither blocked nor a replay
    hers = expect_ok(team_charge(service, pool, "alice", 7, "chat-42"))
    assert not hers["is_replay"] and hers["transaction_id"] != claimed["transaction_id"]
    assert (hers["user_id"], hers["amount"]) == (pool["alice"], 7)
    # her own retry is a replay; her own other request under it is refused, and the error
    # carries her request, never bob's
    assert expect_ok(team_charge(service, pool, "alice", 7, "chat-42"))["is_replay"]
    refused = expect_error(team_charge(service, pool, "alice", 8, "chat-42"), 409, "DC020")
    assert pool["bob"] not in refused["details"] and "bob's prompt" not in refused["details"]
    assert error_details(refused)["idempotency_key"] == "chat-42"
    # and bob's retry is still his replay
    again = expect_ok(team_charge(service, pool, "bob", 1, "chat-42"))
    assert again["is_replay"] and again["transaction_id"] == claimed["transaction_id"]


# ---------------------------------------------------------------- the clock


def test_no_session_setting_moves_an_installed_ledgers_clock(
    new_database: Callable[..., str],
) -> None:
    """An install (`supabase db push`, no test clock): ducto.now is an inert setting."""
    url = new_database(migrated=True)
    soon = datetime.now(UTC) + timedelta(hours=1)
    with psycopg.connect(url, autocommit=True) as conn:
        for role in ("postgres", "service_role"):
            user = f"clock-{role}"
            conn.execute(f"set role {role}")
            conn.execute("select credit_add_credits(%s, 10, p_expires_at => %s)", (user, soon))
            # backdating: the journal row is written at the real time all the same
            conn.execute("set ducto.now = '2001-01-01 00:00:00+00'")
            conn.execute("select credit_add_credits(%s, 5)", (user,))
            # spending after the expiry: the grant is spent as the real time allows
            conn.execute(
                "select set_config('ducto.now', %s, false)", (str(soon + timedelta(hours=1)),)
            )
            conn.execute("select credit_deduct_credits(%s, 12)", (user,))
            conn.execute("reset ducto.now")
            conn.execute("reset role")
            rows = conn.execute(
                "select type, amount, created_at > now() - interval '1 hour' from"
                " credit_transactions where user_id = %s order by seq",
                (user,),
            ).fetchall()
            assert rows == [("adjustment", 10, True), ("adjustment", 5, True), ("usage", -12, True)]
        assert conn.execute("select count(*) from credit_verify_ledger()").fetchone() == (0,)


# ---------------------------------------------------------------- the overage bound


def test_a_settle_beyond_its_overage_bound_is_refused_and_the_hold_kept(
    service: Api, db: psycopg.Connection[Any]
) -> None:
    user = funded(service, 105)
    small = hold(service, user, 10)
    before = ledger_rows(db, user)
    refused = expect_error(
        service.rpc(
            "credit_settle_reservation", {"p_reservation_id": small, "p_actual_amount": 10_000}
        ),
        422,
        "DC042",
    )
    assert error_details(refused) == {
        "reservation_id": small,
        "held": 10,
        "actual_amount": 10_000,
        "max_overage": 90,
    }
    assert ledger_rows(db, user) == before and hold_status(db, small) == "active"
    # 9 times the hold over it is the default bound, and allowed
    settled = expect_ok(
        service.rpc(
            "credit_settle_reservation", {"p_reservation_id": small, "p_actual_amount": 100}
        )
    )
    assert (settled["amount"], settled["overage"], settled["balance_after"]) == (100, 90, 5)

    # a call may allow more (or less); a timed-out hold is bounded the same way
    other = hold(service, user, 5)
    db.execute(
        "update credit_reservations set expires_at = now() - interval '1 minute' where id = %s",
        (other,),
    )
    expect_error(
        service.rpc(
            "credit_settle_reservation",
            {"p_reservation_id": other, "p_actual_amount": 9, "p_max_overage": 3},
        ),
        422,
        "DC042",
    )
    wide = expect_ok(
        service.rpc(
            "credit_settle_reservation",
            {"p_reservation_id": other, "p_actual_amount": 500, "p_max_overage": 495},
        )
    )
    assert wide["overage"] == 495 and balance(service, user) == -495
    expect_error(
        service.rpc(
            "credit_settle_reservation",
            {
                "p_reservation_id": hold(service, funded(service), 1),
                "p_actual_amount": 1,
                "p_max_overage": -1,
            },
        ),
        422,
        "DC001",
    )


# ---------------------------------------------------------------- numbers past bigint


def test_the_largest_balance_is_refused_with_ducto_own_error(
    service: Api, db: psycopg.Connection[Any]
) -> None:
    user = funded(service, MAX_AMOUNT)
    before = ledger_rows(db, user)
    body = expect_error(
        service.rpc("credit_add_credits", {"p_user_id": user, "p_amount": 1}), 422, "DC008"
    )
    assert error_details(body)["maximum"] == MAX_AMOUNT
    assert ledger_rows(db, user) == before
    assert balance(service, user) == MAX_AMOUNT


def test_analytics_totals_are_exact_past_bigint(service: Api, database_url: str) -> None:
    # 1,025 users credited the largest amount on a far day no other test (or run) uses:
    # 1,025 * (2^53 - 1) is above 2^63 - 1
    day = datetime(2200, 1, 1, 12, tzinfo=UTC) + timedelta(days=uuid.uuid4().int % 36500)
    prefix = f"bigsum-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("select set_config('ducto.now', %s, false)", (day.isoformat(),))
        with conn.transaction():
            for i in range(1025):
                conn.execute("select credit_add_credits(%s, %s)", (f"{prefix}-{i}", MAX_AMOUNT))
        for i in range(2):  # two charges of the largest amount: spent passes bigint too
            conn.execute("select credit_deduct_credits(%s, %s)", (f"{prefix}-{i}", MAX_AMOUNT))
    window = {"p_start": day.isoformat(), "p_end": (day + timedelta(hours=1)).isoformat()}
    stats = expect_ok(service.rpc("credit_aggregate_stats", window))
    assert stats["credited"] == 1025 * MAX_AMOUNT > 2**63 - 1
    assert stats["spent"] == 2 * MAX_AMOUNT
    daily = expect_rows(service.rpc("credit_daily_spend", window))
    assert [row["spent"] for row in daily] == [2 * MAX_AMOUNT]


# ---------------------------------------------------------------- a plan change


def test_an_upgrade_within_the_period_tops_up_instead_of_granting_both(service: Api) -> None:
    basic, pro = f"trust-basic-{uuid.uuid4().hex[:8]}", f"trust-pro-{uuid.uuid4().hex[:8]}"
    for plan, allowance in ((basic, 100), (pro, 500)):
        expect_ok(
            service.rpc(
                "credit_upsert_plan",
                {
                    "p_plan_id": plan,
                    "p_name": plan,
                    "p_allowance": allowance,
                    "p_allowance_period": "month",
                },
            )
        )
    user = new_user_id()
    expect_ok(service.rpc("credit_assign_plan", {"p_user_id": user, "p_plan_id": basic}))
    grant = expect_ok(service.rpc("credit_grant_allowances", {"p_user_id": user}))
    assert grant["amount"] == 100
    expect_ok(service.rpc("credit_deduct_credits", {"p_user_id": user, "p_amount": 40}))
    expect_ok(service.rpc("credit_assign_plan", {"p_user_id": user, "p_plan_id": pro}))
    topped = expect_ok(service.rpc("credit_grant_allowances", {"p_user_id": user}))
    assert (topped["granted"], topped["amount"]) == (1, 440)
    assert balance(service, user) == 500
    # switching back and forth in the month grants nothing more
    for plan in (basic, pro):
        expect_ok(service.rpc("credit_assign_plan", {"p_user_id": user, "p_plan_id": plan}))
        assert expect_ok(service.rpc("credit_grant_allowances", {"p_user_id": user}))["amount"] == 0
    assert balance(service, user) == 500
