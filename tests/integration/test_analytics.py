"""Usage analytics from every client (docs/analytics.md): typed rows over the four store
flavours, the window checks, and service-role-only access through PostgREST.

The journal rows are written once, at a day far in the future that no other test uses
(the ledger's clock, ``ducto.now``, is moved on the writing connection), so the expected
numbers are exact although the database is shared.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from conftest import MakeUserToken
from helpers_api import Api, expect_error, new_user_id, permission_denied
from psycopg.types.json import Jsonb
from test_concurrency import Ledger, connect

from ducto import (
    AggregateStatsRow,
    CreditManager,
    DailySpendRow,
    InvalidInputError,
    SpendByModelRow,
    SpendByUserRow,
    TopUserRow,
)

PRICING = {
    "models": [
        {"model": "alpha", "input": 0, "output": 0, "request": 1},
        {"model": "beta", "input": 0, "output": 0, "request": 1},
    ],
    "default": None,
}


@pytest.fixture(scope="module")
def window(database_url: str) -> dict[str, Any]:
    """Day 1: ann spends 10 on alpha, ben 5 on beta, cat 4 on alpha from a team pool;
    day 2: 3 of ann's charge are refunded. Returns the users and the first day."""
    day1 = datetime(2300, 1, 1, tzinfo=UTC) + timedelta(days=random.randrange(100_000))
    ann, ben, cat = new_user_id(), new_user_id(), new_user_id()
    team = str(uuid.uuid4())
    with connect(database_url) as conn:
        ledger = Ledger(conn)
        ledger.set_clock(day1 + timedelta(hours=8))
        ledger.call("credit_publish_pricing", config=Jsonb(PRICING))
        for user in (ann, ben):
            ledger.add(user, 100)
        ledger.call("credit_upsert_team", team_id=team, name="Analytics")
        ledger.add(f"team:{team}", 100)
        ledger.call("credit_set_team_member", team_id=team, user_id=cat)
        charge = ledger.call(
            "credit_deduct_usage", user_id=ann, metrics=Jsonb({"model": "alpha", "requests": 10})
        )
        ledger.call(
            "credit_deduct_usage", user_id=ben, metrics=Jsonb({"model": "beta", "requests": 5})
        )
        ledger.call(
            "credit_deduct_team",
            team_id=team,
            user_id=cat,
            metrics=Jsonb({"model": "alpha", "requests": 4}),
        )
        ledger.set_clock(day1 + timedelta(days=1, hours=3))
        ledger.refund(charge["transaction_id"], 3)
    return {"day1": day1, "ann": ann, "ben": ben, "cat": cat}


def test_every_report_over_a_window(manager: CreditManager, window: dict[str, Any]) -> None:
    day1: datetime = window["day1"]
    day2, end = day1 + timedelta(days=1), day1 + timedelta(days=2)
    ann, ben, cat = window["ann"], window["ben"], window["cat"]

    assert manager.aggregate_stats(day1, end) == AggregateStatsRow(
        day1, end, spent=19, refunded=3, net_spent=16, credited=300, expired=0, charges=3,
        refunds=1, users=3,
    )  # fmt: skip
    assert manager.daily_spend(day1, end) == [
        DailySpendRow(day1.date(), 19, 0, 19, 3, 3),
        DailySpendRow(date.fromordinal(day1.toordinal() + 1), 0, 3, -3, 0, 0),
    ]
    assert manager.spend_by_model(day1, end) == [
        SpendByModelRow("alpha", 14, 3, 11, 2, 2),
        SpendByModelRow("beta", 5, 0, 5, 1, 1),
    ]
    assert manager.spend_by_user(day1, end) == sorted(
        [
            SpendByUserRow(ann, 10, 3, 7, 1),
            SpendByUserRow(ben, 5, 0, 5, 1),
            SpendByUserRow(cat, 4, 0, 4, 1),
        ],
        key=lambda r: (-r.net_spent, r.user_id),
    )
    assert manager.top_users(1, day1, end) == [TopUserRow(1, ann, 7, 10, 3, 1)]
    assert manager.aggregate_stats(day2, end).net_spent == -3


def test_window_checks(manager: CreditManager, window: dict[str, Any]) -> None:
    day1: datetime = window["day1"]
    with pytest.raises(InvalidInputError) as naive:
        manager.daily_spend(day1.replace(tzinfo=None), day1 + timedelta(days=1))
    assert naive.value.code == "DC006"
    with pytest.raises(InvalidInputError) as backwards:
        manager.aggregate_stats(day1, day1 - timedelta(seconds=1))
    assert backwards.value.code == "DC006"  # the database's own check
    with pytest.raises(InvalidInputError) as limit:
        manager.top_users(0, day1, day1 + timedelta(days=1))
    assert limit.value.code == "DC006"


@pytest.mark.parametrize(
    "function",
    [
        "credit_aggregate_stats",
        "credit_daily_spend",
        "credit_spend_by_model",
        "credit_spend_by_user",
        "credit_top_users",
    ],
)
def test_only_the_service_role_reads_analytics(
    gateway: httpx.Client,
    anon_key: str,
    make_user_token: MakeUserToken,
    window: dict[str, Any],
    function: str,
) -> None:
    args: dict[str, Any] = {
        "p_start": window["day1"].isoformat(),
        "p_end": (window["day1"] + timedelta(days=2)).isoformat(),
    }
    if function == "credit_top_users":
        args["p_limit"] = 10
    as_ann = Api(gateway, anon_key, make_user_token(window["ann"]))
    message = permission_denied("function", function)
    expect_error(as_ann.rpc(function, args), 403, "42501", message=message)
    expect_error(Api(gateway, anon_key).rpc(function, args), 401, "42501", message=message)
