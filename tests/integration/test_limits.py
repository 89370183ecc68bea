"""Limits from every client (docs/limits.md): ``set_limits`` and ``get_limits`` as typed
results over the store flavours with their typed refusals, the refusals' HTTP statuses and
fields through PostgREST, who may read limits, the CLI, and concurrent charges and holds
against one window, one cap on holds and one credit line.

Every test works on fresh users. Setup writes go through a psycopg connection whose ledger
clock (``ducto.now``) can be moved: a balance that went below zero a day ago makes a
credit line's grace run out for every client, which uses the real clock.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from conftest import MakeUserToken
from helpers_api import Api, error_details, expect_error, expect_ok, new_user_id, permission_denied
from psycopg.types.json import Jsonb
from test_cli import Cli
from test_concurrency import Ledger, Outcome, accounts_of, attempt, connect, run_workers

from ducto import (
    CreditLineOverdueError,
    CreditManager,
    InsufficientCreditsError,
    InvalidInputError,
    LimitExceededError,
    LimitsResult,
    SpendWindow,
    SpendWindowUsage,
    TooManyHoldsError,
    UsageMetrics,
)

WORKERS = 40
PRICING = {
    "models": [
        {"model": "lim-chat", "input": 0, "output": 0, "request": 1},
        {"model": "lim-img-*", "input": 0, "output": 0, "request": 1},
    ],
    "default": None,
}


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    """A connection for setup and checks; the whole ledger must verify after the test."""
    with connect(database_url, "ducto-limits-setup") as conn:
        ledger = Ledger(conn)
        yield ledger
        ledger.set_clock(None)
        assert ledger.verify() == [], "credit_verify_ledger() reports broken invariants"


@pytest.fixture(scope="module")
def priced(database_url: str) -> None:
    """The pricing of these tests' models, published once."""
    with connect(database_url, "ducto-limits-pricing") as conn:
        Ledger(conn).call("credit_publish_pricing", config=Jsonb(PRICING))


# ---------------------------------------------------------------- every store


def test_limits_through_every_store(manager: CreditManager, ledger: Ledger, priced: None) -> None:
    user = new_user_id()
    ledger.add(user, 1000)
    manager.load_pricing_from_store()

    limits = manager.set_limits(
        user,
        windows=[
            SpendWindow("day", 10),
            SpendWindow("hours", 4, hours=24, model_pattern="LIM-IMG-*"),
        ],
        max_active_holds=2,
    )
    assert isinstance(limits, LimitsResult)
    assert (limits.user_id, limits.max_active_holds, limits.active_holds, limits.held) == (
        user,
        2,
        0,
        0,
    )
    assert (limits.credit_line, limits.credit_line_grace_seconds, limits.balance) == (0, None, 1000)
    day, img = limits.windows
    assert isinstance(day, SpendWindowUsage)
    assert (day.period, day.hours, day.model_pattern, day.spend_limit) == ("day", None, None, 10)
    assert day.window_start == datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    assert (img.period, img.hours, img.model_pattern, img.remaining) == (
        "hours",
        24,
        "lim-img-*",
        4,
    )

    manager.deduct(user, UsageMetrics(model="lim-chat", requests=5))
    hold = manager.reserve_credits(user, 3, min_balance=0)
    with pytest.raises(LimitExceededError) as refused:
        manager.deduct(user, UsageMetrics(model="lim-chat", requests=3))
    error = refused.value
    assert isinstance(error, InsufficientCreditsError)
    assert error.code == "DC085"
    assert error.window["period"] == "day"
    assert (error.spend_limit, error.used, error.held, error.needed) == (10, 5, 3, 3)

    # the image window counts only image models, and every active hold
    with pytest.raises(LimitExceededError) as image:
        manager.deduct(user, UsageMetrics(model="lim-img-x", requests=2))
    assert image.value.window["model_pattern"] == "lim-img-*"
    assert (image.value.used, image.value.held) == (0, 3)

    manager.reserve_credits(user, 1, min_balance=0)
    with pytest.raises(TooManyHoldsError) as capped:
        manager.reserve_credits(user, 1, min_balance=0)
    assert capped.value.details["max_active_holds"] == 2
    manager.release_reservation(hold.reservation_id)

    now = manager.get_limits(user)
    assert [(w.used, w.held, w.remaining) for w in now.windows] == [(5, 1, 4), (0, 1, 3)]
    assert (now.active_holds, now.held) == (1, 1)
    assert manager.get_balance(user).balance == 995  # the refusals wrote nothing

    # set_limits replaces the whole configuration: nothing given, no limits
    cleared = manager.set_limits(user)
    assert (cleared.windows, cleared.max_active_holds) == ((), None)
    manager.deduct(user, UsageMetrics(model="lim-chat", requests=50))


def test_bad_limits_are_refused_and_write_nothing(manager: CreditManager) -> None:
    user = new_user_id()
    manager.set_limits(user, windows=[SpendWindow("week", 7)])
    bad: list[dict[str, object]] = [
        {"windows": [SpendWindow("year", 1)]},  # refused by the client
        {"windows": [SpendWindow("hours", 1)]},  # no hours: refused by the ledger
        {"windows": [SpendWindow("day", 1, hours=3)]},
        {"windows": [SpendWindow("day", 1, model_pattern="*")]},
        {"windows": [SpendWindow("day", -1)]},
        {"max_active_holds": -1},
        {"credit_line_grace_seconds": 60},  # a grace needs a credit line
        {"credit_line": -5},
    ]
    for arguments in bad:
        with pytest.raises(InvalidInputError):
            manager.set_limits(user, **arguments)  # type: ignore[arg-type]
    assert [(w.period, w.spend_limit) for w in manager.get_limits(user).windows] == [("week", 7)]


def test_a_credit_line_and_its_grace(
    manager: CreditManager, ledger: Ledger, database_url: str
) -> None:
    user = new_user_id()
    ledger.add(user, 10)
    limits = manager.set_limits(user, credit_line=100, credit_line_grace_seconds=3600)
    assert (limits.credit_line, limits.credit_line_grace_seconds) == (100, 3600)

    # went below zero a day ago: the hour of grace is over
    ledger.set_clock(datetime.now(UTC) - timedelta(days=1))
    assert ledger.deduct(user, 30)["balance_after"] == -20
    ledger.set_clock(None)
    with pytest.raises(CreditLineOverdueError) as overdue:
        manager.reserve_credits(user, 1, min_balance=0)
    assert isinstance(overdue.value, InsufficientCreditsError)
    assert overdue.value.details["balance"] == -20
    state = manager.get_limits(user)
    assert state.below_zero_since is not None and state.credit_line_due_at is not None
    assert state.credit_line_due_at - state.below_zero_since == timedelta(hours=1)

    # paid back, it may use the line again
    manager.add_credits(user, 20)
    assert manager.reserve_credits(user, 50, min_balance=0).available_after == -50
    with pytest.raises(InsufficientCreditsError) as beyond:
        manager.reserve_credits(user, 51, min_balance=0)
    assert beyond.value.code == "DC010"


def test_a_plans_credit_line(manager: CreditManager, ledger: Ledger) -> None:
    plan = f"lim-{new_user_id()[:8]}"
    user = new_user_id()
    manager.upsert_plan(plan, "With a credit line")
    manager.set_plan_credit_line(plan, 40)
    manager.assign_plan(user, plan)
    assert manager.get_limits(user).credit_line == 40  # before the account exists, too
    ledger.add(user, 1)
    assert manager.reserve_credits(user, 41, min_balance=0).available_after == -40
    # the account's own credit line wins over the plan's
    manager.set_limits(user, credit_line=45)
    assert manager.reserve_credits(user, 5, min_balance=0).available_after == -45


# ---------------------------------------------------------------- PostgREST


def test_refusals_and_reads_through_postgrest(
    service: Api,
    gateway: httpx.Client,
    anon_key: str,
    make_user_token: MakeUserToken,
    ledger: Ledger,
) -> None:
    user = new_user_id()
    ledger.add(user, 100)
    expect_ok(
        service.rpc(
            "credit_set_limits",
            {
                "p_user_id": user,
                "p_windows": [{"period": "week", "spend_limit": 6}],
                "p_max_active_holds": 1,
            },
        )
    )
    expect_ok(service.rpc("credit_deduct_credits", {"p_user_id": user, "p_amount": 4}))
    body = expect_error(
        service.rpc("credit_deduct_credits", {"p_user_id": user, "p_amount": 3}), 402, "DC085"
    )
    details = error_details(body)
    assert (details["spend_limit"], details["used"], details["held"], details["needed"]) == (
        6,
        4,
        0,
        3,
    )
    assert details["window"]["period"] == "week"
    expect_ok(service.rpc("credit_reserve_credits", {"p_user_id": user, "p_amount": 1}))
    expect_error(
        service.rpc("credit_reserve_credits", {"p_user_id": user, "p_amount": 1}), 429, "DC086"
    )

    as_user = Api(gateway, anon_key, make_user_token(user))
    own = expect_ok(as_user.rpc("credit_get_limits", {}))
    assert own["user_id"] == user
    assert [(w["used"], w["held"], w["remaining"]) for w in own["windows"]] == [(4, 1, 1)]
    named = expect_ok(as_user.rpc("credit_get_limits", {"p_user_id": user}))
    assert named["windows"] == own["windows"]

    stranger = Api(gateway, anon_key, make_user_token(new_user_id()))
    expect_error(
        stranger.rpc("credit_get_limits", {"p_user_id": user}), 403, "42501",
        message="a signed-in user may read only their own limits",
    )  # fmt: skip
    expect_error(
        as_user.rpc("credit_set_limits", {"p_user_id": user}), 403, "42501",
        message=permission_denied("function", "credit_set_limits"),
    )  # fmt: skip
    anon = Api(gateway, anon_key)
    for function, args in (
        ("credit_get_limits", {"p_user_id": user}),
        ("credit_set_limits", {"p_user_id": user}),
        ("credit_set_plan_credit_line", {"p_plan_id": "free", "p_credit_line": 10}),
    ):
        expect_error(
            anon.rpc(function, args), 401, "42501",
            message=permission_denied("function", function),
        )  # fmt: skip
    # a user reads their own limits' rows, nobody else's
    rows = as_user.select("credit_spend_windows", {"select": "period,spend_limit"})
    assert rows.status_code == 200 and rows.json() == [{"period": "week", "spend_limit": 6}]
    assert stranger.select("credit_spend_windows").json() == []
    assert stranger.select("credit_account_limits").json() == []


# ---------------------------------------------------------------- the CLI


def test_cli_sets_and_shows_limits(database_url: str) -> None:
    cli = Cli(DATABASE_URL=database_url)
    user = new_user_id()
    set_ = cli.json(
        "limits", "set", user, "--window", "day:100", "--window", "24h:50:lim-img-*",
        "--max-holds", "3", "--credit-line", "20", "--grace", "2d",
    )  # fmt: skip
    assert set_["max_active_holds"] == 3
    assert (set_["credit_line"], set_["credit_line_grace_seconds"]) == (20, 172800)
    shown = cli.json("limits", "show", user)
    windows = [
        (w["period"], w["hours"], w["model_pattern"], w["spend_limit"]) for w in shown["windows"]
    ]
    assert windows == [("day", None, None, 100), ("hours", 24, "lim-img-*", 50)]
    assert "Spend windows" in cli("limits", "show", user).stdout
    assert "PERIOD:LIMIT" in cli("limits", "set", user, "--window", "year:5", code=2).stderr
    refused = cli("limits", "set", user, "--window", "0h:5", code=1)
    assert "DC006" in refused.stderr
    again = json.loads(cli("limits", "show", user, "--json").stdout)  # unchanged
    assert [{**w, "window_start": None} for w in again.pop("windows")] == [
        {**w, "window_start": None} for w in shown.pop("windows")
    ]
    assert again == shown


# ---------------------------------------------------------------- concurrency


def test_concurrent_charges_and_holds_never_pass_a_window(
    database_url: str, ledger: Ledger
) -> None:
    """40 workers charge 3 and hold 2 (then settle the hold at 2) against a window of 100:
    the window's spend plus its active holds never passes 100, and it is filled to within
    the smallest request."""
    user = new_user_id()
    ledger.add(user, 10_000)
    ledger.call(
        "credit_set_limits", user_id=user, windows=Jsonb([{"period": "day", "spend_limit": 100}])
    )

    def work(index: int, worker: Ledger) -> list[Outcome]:
        outcomes = []
        for _ in range(3):
            outcomes.append(attempt(lambda: worker.deduct(user, 3), frozenset({"DC085"})))
            hold = attempt(lambda: worker.reserve(user, 2, min_balance=0), frozenset({"DC085"}))
            outcomes.append(hold)
            if hold.reply is not None and index % 2 == 0:
                worker.settle(hold.reply["reservation_id"], 2)
        return outcomes

    batches = run_workers(database_url, WORKERS, work, application=user)
    outcomes = [o for batch in batches for o in batch]
    assert {o.code for o in outcomes if o.reply is None} == {"DC085"}
    limits = ledger.call("credit_get_limits", user_id=user)
    [window] = limits["windows"]
    replies = [o.reply for o in outcomes if o.reply is not None]
    # a hold's reply names its operation type; a charge's does not
    charged = sum(r["amount"] for r in replies if "operation_type" not in r)
    held_or_settled = sum(r["amount"] for r in replies if "operation_type" in r)
    assert charged + held_or_settled == window["used"] + window["held"]
    assert 98 <= window["used"] + window["held"] <= 100
    [account] = accounts_of(ledger, user)
    assert account["balance"] == account["journal"] == 10_000 - window["used"]


def test_concurrent_holds_never_pass_the_cap(database_url: str, ledger: Ledger) -> None:
    user = new_user_id()
    ledger.add(user, 1000)
    ledger.call("credit_set_limits", user_id=user, max_active_holds=5)

    def work(index: int, worker: Ledger) -> Outcome:
        return attempt(lambda: worker.reserve(user, 1, min_balance=0), frozenset({"DC086"}))

    outcomes = run_workers(database_url, WORKERS, work, application=user)
    assert Counter(o.code for o in outcomes) == {None: 5, "DC086": WORKERS - 5}
    assert ledger.balance(user)["held"] == 5


def test_concurrent_charges_stop_at_the_credit_line(database_url: str, ledger: Ledger) -> None:
    user = new_user_id()
    ledger.add(user, 100)
    ledger.call("credit_set_limits", user_id=user, credit_line=150)

    def work(index: int, worker: Ledger) -> Outcome:
        return attempt(lambda: worker.deduct(user, 10, min_balance=0), frozenset({"DC010"}))

    outcomes = run_workers(database_url, WORKERS, work, application=user)
    assert Counter(o.code for o in outcomes) == {None: 25, "DC010": WORKERS - 25}
    [account] = accounts_of(ledger, user)
    assert (account["balance"], account["debt"], account["journal"]) == (-150, 150, -150)
    ledger.add(user, 200)  # new credits pay the debt first
    [account] = accounts_of(ledger, user)
    assert (account["balance"], account["debt"], account["remaining"]) == (50, 0, 50)


def test_concurrent_settings_leave_one_whole_configuration(
    database_url: str, ledger: Ledger
) -> None:
    """40 workers set the limits of one new account at once: the account is created once,
    and what stays is one worker's whole configuration, never a mix of two."""
    user = new_user_id()

    def work(index: int, worker: Ledger) -> Outcome:
        windows = [
            {"period": "day", "spend_limit": index},
            {"period": "week", "spend_limit": 1000 + index},
        ]
        return attempt(
            lambda: worker.call(
                "credit_set_limits", user_id=user, windows=Jsonb(windows), max_active_holds=index
            ),
            frozenset(),
        )

    outcomes = run_workers(database_url, WORKERS, work, application=user)
    assert all(o.reply is not None for o in outcomes)
    limits = ledger.call("credit_get_limits", user_id=user)
    index = limits["max_active_holds"]
    assert [(w["period"], w["spend_limit"]) for w in limits["windows"]] == [
        ("day", index),
        ("week", 1000 + index),
    ]
    assert ledger.one("select count(*) as n from credit_accounts where user_id = %s", (user,)) == {
        "n": 1
    }


def test_concurrent_team_charges_never_pass_the_pools_window(
    database_url: str, ledger: Ledger, priced: None
) -> None:
    """40 charges of 3 credits by 4 members against a pool's daily window of 50."""
    team = new_user_id()
    members = [new_user_id() for _ in range(4)]
    ledger.call("credit_upsert_team", team_id=team, name="Limited")
    for member in members:
        ledger.call("credit_set_team_member", team_id=team, user_id=member)
    pool = f"team:{team}"
    ledger.add(pool, 1000)
    ledger.call(
        "credit_set_limits", user_id=pool, windows=Jsonb([{"period": "day", "spend_limit": 50}])
    )

    def work(index: int, worker: Ledger) -> Outcome:
        return attempt(
            lambda: worker.call(
                "credit_deduct_team",
                team_id=team,
                user_id=members[index % 4],
                metrics=Jsonb({"model": "lim-chat", "requests": 3}),
            ),
            frozenset({"DC085"}),
        )

    outcomes = run_workers(database_url, WORKERS, work, application=pool)
    assert Counter(o.code for o in outcomes) == {None: 16, "DC085": WORKERS - 16}
    [window] = ledger.call("credit_get_limits", user_id=pool)["windows"]
    assert (window["used"], window["remaining"]) == (48, 2)
    [account] = accounts_of(ledger, pool)
    assert account["balance"] == account["journal"] == 1000 - 48
