"""Statements from every client (docs/statements.md): ``balance_at`` and ``statement`` as
typed results over the store flavours, their input checks, property tests against the
journal itself, and who may read a statement through PostgREST.

The journal rows are written at instants far in the future that no other test uses (the
ledger's clock, ``ducto.now``, is moved on the writing connection), so the expected
numbers are exact although the database is shared. The random journal is written with its
clock jumping back and forth: rows of an account then carry created_at out of seq order,
as rows of concurrent operations can, and a balance at T must still be the sum of the rows
created at or before T, not the balance_after of the newest one.
"""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from conftest import MakeUserToken
from helpers_api import Api, expect_error, new_user_id, permission_denied
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb
from test_concurrency import Ledger, connect

from ducto import (
    BalanceAtResult,
    CreditManager,
    ExpiringGrant,
    InvalidInputError,
    StatementCategoryTotal,
    StatementModelTotal,
    StatementResult,
    StatementTypeTotal,
)

PRICING = {
    "models": [{"model": "gamma", "input": 0, "output": 0, "request": 1}],
    "default": None,
}
MICROSECOND = timedelta(microseconds=1)


@pytest.fixture(scope="module")
def history(database_url: str) -> dict[str, Any]:
    """Day 1 08:00: 100 paid credits, 30 promotional expiring on day 40; day 1 09:00: 12
    of gamma and 5 by amount; day 2 08:00: 2 of the gamma charge refunded."""
    day1 = datetime(2400, 1, 1, tzinfo=UTC) + timedelta(days=random.randrange(100_000))
    user = new_user_id()
    with connect(database_url) as conn:
        ledger = Ledger(conn)
        ledger.set_clock(day1 + timedelta(hours=8))
        ledger.call("credit_publish_pricing", config=Jsonb(PRICING))
        ledger.add(user, 100)
        promo = ledger.add(
            user, 30, category="promotional", priority=90, expires_at=day1 + timedelta(days=40)
        )
        ledger.set_clock(day1 + timedelta(hours=9))
        charge = ledger.call(
            "credit_deduct_usage", user_id=user, metrics=Jsonb({"model": "gamma", "requests": 12})
        )
        ledger.deduct(user, 5)
        ledger.set_clock(day1 + timedelta(days=1, hours=8))
        ledger.refund(charge["transaction_id"], 2)
    return {"day1": day1, "user": user, "promo": str(promo["grant_id"])}


def test_balance_at_and_statement(manager: CreditManager, history: dict[str, Any]) -> None:
    day1: datetime = history["day1"]
    user: str = history["user"]
    first = day1 + timedelta(hours=8)

    assert manager.balance_at(user, first - MICROSECOND) == BalanceAtResult(
        user, first - MICROSECOND, 0
    )
    assert manager.balance_at(user, first).balance == 130  # at or before: the instant counts
    assert manager.balance_at(user, day1 + timedelta(hours=9)).balance == 113
    assert manager.balance_at(user, day1 + timedelta(days=3)).balance == 115

    end = day1 + timedelta(days=10)
    assert manager.statement(user, day1, end) == StatementResult(
        user_id=user,
        period_start=day1,
        period_end=end,
        opening_balance=0,
        closing_balance=115,
        by_type=(
            StatementTypeTotal("adjustment", 2, 130),
            StatementTypeTotal("refund", 1, 2),
            StatementTypeTotal("usage", 2, -17),
        ),
        by_model=(StatementModelTotal("gamma", 2, -10),),
        by_category=(
            StatementCategoryTotal("paid", 1, 100),
            StatementCategoryTotal("promotional", 1, 30),
        ),
        expiring=(ExpiringGrant(history["promo"], "promotional", 30, day1 + timedelta(days=40)),),
        expiring_total=30,
    )
    # the window is [start, end): the refund at its end is the next window's
    second = manager.statement(user, day1 + timedelta(hours=9), day1 + timedelta(days=1, hours=8))
    assert (second.opening_balance, second.closing_balance) == (130, 113)
    assert second.by_category == () and second.expiring == ()


def test_input_checks(manager: CreditManager, history: dict[str, Any]) -> None:
    day1: datetime = history["day1"]
    user: str = history["user"]
    with pytest.raises(InvalidInputError) as naive:
        manager.balance_at(user, day1.replace(tzinfo=None))
    assert naive.value.code == "DC006"
    with pytest.raises(InvalidInputError) as empty:
        manager.statement(user, day1, day1)
    assert empty.value.code == "DC006"  # the database's own check
    with pytest.raises(InvalidInputError) as naive_end:
        manager.statement(user, day1, day1.replace(tzinfo=None))
    assert naive_end.value.code == "DC006"


# ---------------------------------------------------------------- properties


@pytest.fixture(scope="module")
def journal(database_url: str) -> dict[str, Any]:
    """A user's random journal of 60 operations over 10 days, written with the clock
    jumping back and forth; returns the user, the days and the rows as the journal has them."""
    rng = random.Random(14)
    start = datetime(2600, 1, 1, tzinfo=UTC) + timedelta(days=random.randrange(100_000))
    user = new_user_id()
    with connect(database_url) as conn:
        ledger = Ledger(conn)
        ledger.set_clock(start)
        ledger.call("credit_publish_pricing", config=Jsonb(PRICING))
        charges: list[Any] = []
        for _ in range(60):
            # whole seconds, so some rows share an instant
            ledger.set_clock(start + timedelta(seconds=rng.randrange(10 * 86_400)))
            kind = rng.choice(["add", "add", "deduct", "usage", "refund"])
            if kind == "add" or ledger.balance(user)["available"] < 40:
                ledger.add(user, rng.randrange(20, 200), tx_type=rng.choice(["grant", "purchase"]))
            elif kind == "deduct":
                charges.append(ledger.deduct(user, rng.randrange(1, 30))["transaction_id"])
            elif kind == "usage":
                metrics = {"model": "gamma", "requests": rng.randrange(1, 30)}
                row = ledger.call("credit_deduct_usage", user_id=user, metrics=Jsonb(metrics))
                charges.append(row["transaction_id"])
            elif charges:
                ledger.refund(charges.pop(rng.randrange(len(charges))), 1)
        rows = ledger.rows(
            "select seq, type, amount, created_at from public.credit_transactions"
            " where user_id = %s order by seq",
            (user,),
        )
    times = [r["created_at"] for r in rows]
    assert times != sorted(times), "the journal should have rows out of time order"
    return {"user": user, "start": start, "end": start + timedelta(days=10), "rows": rows}


def journal_sum(rows: list[Any], at: datetime) -> int:
    return sum(r["amount"] for r in rows if r["created_at"] <= at)


PROPERTY = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@PROPERTY
@given(
    offset=st.integers(min_value=-60, max_value=10 * 86_400 + 60), shift=st.sampled_from([-1, 0, 1])
)
def test_balance_at_is_the_sum_of_the_journal_up_to_t(
    manager: CreditManager, journal: dict[str, Any], offset: int, shift: int
) -> None:
    # whole seconds hit rows' own instants; one microsecond either side tests the edge
    at = journal["start"] + timedelta(seconds=offset) + shift * MICROSECOND
    assert manager.balance_at(journal["user"], at).balance == journal_sum(journal["rows"], at)


@PROPERTY
@given(
    a=st.integers(min_value=-60, max_value=10 * 86_400 + 60),
    b=st.integers(min_value=-60, max_value=10 * 86_400 + 60),
)
def test_opening_plus_movements_is_closing(
    manager: CreditManager, journal: dict[str, Any], a: int, b: int
) -> None:
    if a == b:
        b += 1
    start, end = (journal["start"] + timedelta(seconds=s) for s in sorted((a, b)))
    rows = journal["rows"]
    statement = manager.statement(journal["user"], start, end)

    assert statement.opening_balance == journal_sum(rows, start - MICROSECOND)
    assert statement.closing_balance == journal_sum(rows, end - MICROSECOND)
    movements = sum(t.amount for t in statement.by_type)
    assert statement.opening_balance + movements == statement.closing_balance
    expected: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for row in rows:
        if start <= row["created_at"] < end:
            expected[row["type"]][0] += 1
            expected[row["type"]][1] += row["amount"]
    assert statement.by_type == tuple(
        StatementTypeTotal(kind, count, amount)
        for kind, (count, amount) in sorted(expected.items())
    )


# ---------------------------------------------------------------- who may read


def test_a_signed_in_user_reads_only_their_own_statement(
    gateway: httpx.Client,
    anon_key: str,
    make_user_token: MakeUserToken,
    history: dict[str, Any],
) -> None:
    day1: datetime = history["day1"]
    user: str = history["user"]
    window = {"p_start": day1.isoformat(), "p_end": (day1 + timedelta(days=10)).isoformat()}
    at = {"p_at": (day1 + timedelta(days=3)).isoformat()}
    as_user = Api(gateway, anon_key, make_user_token(user))

    own = as_user.rpc("credit_statement", window)
    assert own.status_code == 200, own.text
    assert (own.json()["user_id"], own.json()["closing_balance"]) == (user, 115)
    named = as_user.rpc("credit_statement", {"p_user_id": user, **window})
    assert named.status_code == 200 and named.json() == own.json()
    balance = as_user.rpc("credit_balance_at", at)
    assert balance.status_code == 200 and balance.json()["balance"] == 115

    stranger = Api(gateway, anon_key, make_user_token(new_user_id()))
    message = "a signed-in user may read only their own statement"
    expect_error(
        stranger.rpc("credit_statement", {"p_user_id": user, **window}), 403, "42501",
        message=message,
    )  # fmt: skip
    expect_error(
        stranger.rpc("credit_balance_at", {"p_user_id": user, **at}), 403, "42501",
        message=message,
    )  # fmt: skip

    anon = Api(gateway, anon_key)
    for function, args in (("credit_statement", window), ("credit_balance_at", at)):
        expect_error(
            anon.rpc(function, {"p_user_id": user, **args}), 401, "42501",
            message=permission_denied("function", function),
        )  # fmt: skip
