"""Plans, feature gates and allowances from every client (docs/plans-teams.md).

- the Python client over the four store flavours (conftest's ``manager`` fixture);
- a signed-in user through the gateway and PostgREST: their own plan and features only;
  anon nothing; no user writes a plan or an assignment;
- the allowance job run by many workers at once: each user gets each period's allowance
  exactly once, and the ledger stays consistent.

Plan ids carry a fresh suffix so tests never share a plan; a test that needs a default plan
restores the database's default afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
from conftest import MakeUserToken
from helpers_api import Api, expect_error, expect_ok, new_user_id, permission_denied
from test_concurrency import Ledger, connect, new_prefix, run_workers

from ducto import (
    CheckFeatureResult,
    CreditManager,
    GetUserPlanResult,
    InvalidInputError,
    NotFoundError,
)


def new_plan_id(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def no_default_plan(database_url: str) -> Iterator[None]:
    """No plan is the default during the test; the database's default comes back after."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("select id from public.credit_plans where is_default").fetchone()
        conn.execute("update public.credit_plans set is_default = false where is_default")
        yield
        conn.execute("update public.credit_plans set is_default = false where is_default")
        if row is not None:
            conn.execute("update public.credit_plans set is_default = true where id = %s", row)


# ---------------------------------------------------------------- the Python client


def test_plan_lifecycle(manager: CreditManager, no_default_plan: None) -> None:
    user = new_user_id()
    nobody = manager.get_user_plan(user)
    assert nobody == GetUserPlanResult(user, None, None, {}, False, None, None, None, None)
    assert manager.check_feature(user, "export") == CheckFeatureResult(
        user, "export", False, None, None
    )

    pro = new_plan_id("pro")
    features = {"export": True, "seats": 5, "zero": 0, "tier": "gold", "beta": False, "x": None}
    plan = manager.upsert_plan(pro, "Pro", features, allowance=100, allowance_period="month")
    assert (plan.plan_id, plan.features, plan.allowance, plan.rollover_cap) == (
        pro,
        features,
        100,
        None,
    )
    assigned = manager.assign_plan(user, pro)
    assert (assigned.plan_id, assigned.plan_name, assigned.is_default) == (pro, "Pro", False)
    assert assigned.assigned_at is not None
    assert manager.get_user_plan(user) == assigned

    answers = {f: manager.check_feature(user, f) for f in [*features, "absent"]}
    assert {f: a.has_feature for f, a in answers.items()} == {
        "export": True,
        "seats": True,
        "zero": True,
        "tier": True,
        "beta": False,
        "x": False,
        "absent": False,
    }
    assert answers["seats"].value == 5 and answers["tier"].value == "gold"
    assert answers["absent"].value is None and answers["seats"].plan_id == pro

    # the default plan covers users without an assignment
    free = new_plan_id("free")
    manager.upsert_plan(free, "Free", {"export": False}, is_default=True)
    other = new_user_id()
    assert (manager.get_user_plan(other).plan_id, manager.get_user_plan(other).is_default) == (
        free,
        True,
    )
    assert manager.assign_plan(user, None).plan_id == free


def test_allowances_are_granted_once_per_period(manager: CreditManager) -> None:
    user = new_user_id()
    plan = new_plan_id("monthly")
    manager.upsert_plan(plan, "Monthly", allowance=40, allowance_period="month", rollover_cap=10)
    manager.assign_plan(user, plan)
    first = manager.grant_allowances(user)
    assert (first.users, first.granted, first.already_granted, first.amount) == (1, 1, 0, 40)
    again = manager.grant_allowances(user)
    assert (again.granted, again.already_granted, again.amount) == (0, 1, 0)
    assert manager.get_balance(user).balance == 40


def test_plan_errors(manager: CreditManager) -> None:
    with pytest.raises(NotFoundError) as missing:
        manager.assign_plan(new_user_id(), new_plan_id("missing"))
    assert missing.value.code == "DC080"
    with pytest.raises(InvalidInputError) as bad:
        manager.upsert_plan(new_plan_id("bad"), "Bad", allowance=5)  # no period
    assert bad.value.code == "DC006"
    with pytest.raises(InvalidInputError) as client_side:
        manager.check_feature(new_user_id(), "")
    assert client_side.value.code == "DC006"
    with pytest.raises(InvalidInputError) as features:
        manager.upsert_plan(new_plan_id("nan"), "NaN", {"limit": float("nan")})
    assert features.value.code == "DC006"


# ---------------------------------------------------------------- through PostgREST


@pytest.fixture(scope="module")
def planned_user(service: Api) -> dict[str, Any]:
    """A user on a plan with an ``sso`` feature, assigned by the service role."""
    user = new_user_id()
    plan = new_plan_id("sso")
    expect_ok(
        service.rpc(
            "credit_upsert_plan",
            {"p_plan_id": plan, "p_name": "SSO", "p_features": {"sso": True, "seats": 3}},
        )
    )
    expect_ok(service.rpc("credit_assign_plan", {"p_user_id": user, "p_plan_id": plan}))
    return {"user_id": user, "plan_id": plan}


def test_user_reads_own_plan_and_features(
    gateway: httpx.Client,
    anon_key: str,
    make_user_token: MakeUserToken,
    planned_user: dict[str, Any],
) -> None:
    user = planned_user["user_id"]
    as_user = Api(gateway, anon_key, make_user_token(user))
    plan = expect_ok(as_user.rpc("credit_get_user_plan", {"p_user_id": user}))
    assert (plan["plan_id"], plan["features"]) == (
        planned_user["plan_id"],
        {"sso": True, "seats": 3},
    )
    seats = expect_ok(
        as_user.rpc("credit_check_feature", {"p_user_id": user, "p_feature": "seats"})
    )
    assert (seats["has_feature"], seats["value"]) == (True, 3)
    # GET works too: both are read-only
    sso = as_user.rpc_get("credit_check_feature", {"p_user_id": user, "p_feature": "sso"})
    assert expect_ok(sso)["has_feature"] is True
    # through RLS: their assignment and their plan, nothing else
    rows = as_user.select("credit_user_plans").json()
    assert [r["user_id"] for r in rows] == [user]
    plans = {r["id"] for r in as_user.select("credit_plans").json()}
    assert planned_user["plan_id"] in plans
    assert plans <= {planned_user["plan_id"], *default_plans(as_user)}


def default_plans(api: Api) -> set[str]:
    return {r["id"] for r in api.select("credit_plans", {"is_default": "is.true"}).json()}


def test_user_cannot_read_another_plan_or_write_plans(
    gateway: httpx.Client,
    anon_key: str,
    make_user_token: MakeUserToken,
    planned_user: dict[str, Any],
    db: psycopg.Connection[Any],
) -> None:
    stranger = Api(gateway, anon_key, make_user_token(new_user_id()))
    victim = planned_user["user_id"]
    for function, args in [
        ("credit_get_user_plan", {"p_user_id": victim}),
        ("credit_check_feature", {"p_user_id": victim, "p_feature": "sso"}),
    ]:
        expect_error(
            stranger.rpc(function, args),
            403,
            "42501",
            message="a signed-in user may read only their own plan",
        )
    assert stranger.select("credit_user_plans", {"user_id": f"eq.{victim}"}).json() == []
    assert stranger.select("credit_plans", {"id": f"eq.{planned_user['plan_id']}"}).json() == []

    before = db.execute(
        "select p.*, up.* from credit_plans as p join credit_user_plans as up on up.plan_id = p.id"
        " where up.user_id = %s",
        (victim,),
    ).fetchall()
    as_victim = Api(gateway, anon_key, make_user_token(victim))
    for function, args in [
        ("credit_upsert_plan", {"p_plan_id": planned_user["plan_id"], "p_name": "Hacked"}),
        ("credit_assign_plan", {"p_user_id": victim, "p_plan_id": planned_user["plan_id"]}),
        ("credit_grant_allowances", {"p_user_id": victim}),
    ]:
        expect_error(
            as_victim.rpc(function, args),
            403,
            "42501",
            message=permission_denied("function", function),
        )
    for table, body in [
        ("credit_plans", {"id": "mine", "name": "Mine", "created_at": "now()"}),
        ("credit_user_plans", {"user_id": victim, "plan_id": "mine", "assigned_at": "now()"}),
    ]:
        expect_error(
            as_victim.request("POST", table, json_body=body),
            403,
            "42501",
            message=permission_denied("table", table),
        )
    expect_error(
        as_victim.request(
            "PATCH",
            "credit_plans",
            params={"id": f"eq.{planned_user['plan_id']}"},
            json_body={"features": {"sso": True, "everything": True}},
        ),
        403,
        "42501",
        message=permission_denied("table", "credit_plans"),
    )
    after = db.execute(
        "select p.*, up.* from credit_plans as p join credit_user_plans as up on up.plan_id = p.id"
        " where up.user_id = %s",
        (victim,),
    ).fetchall()
    assert after == before


def test_anon_reads_no_plan(
    gateway: httpx.Client, anon_key: str, planned_user: dict[str, Any]
) -> None:
    anon = Api(gateway, anon_key)
    for function, args in [
        ("credit_get_user_plan", {"p_user_id": planned_user["user_id"]}),
        ("credit_check_feature", {"p_user_id": planned_user["user_id"], "p_feature": "sso"}),
    ]:
        expect_error(
            anon.rpc(function, args), 401, "42501", message=permission_denied("function", function)
        )
    for table in ("credit_plans", "credit_user_plans", "credit_allowance_grants"):
        expect_error(anon.select(table), 401, "42501", message=permission_denied("table", table))


# ---------------------------------------------------------------- concurrency


def test_concurrent_allowance_jobs_grant_each_user_once(database_url: str) -> None:
    """16 workers run the job for the same 20 users at once: 20 grants, no more."""
    prefix = new_prefix("allowance")
    users = [f"{prefix}-{n:02d}" for n in range(20)]
    plan = new_plan_id("weekly")
    with connect(database_url) as conn:
        setup = Ledger(conn)
        setup.call(
            "credit_upsert_plan",
            plan_id=plan,
            name="Weekly",
            allowance=25,
            allowance_period="week",
            rollover_cap=5,
        )
        for user in users:
            setup.call("credit_assign_plan", user_id=user, plan_id=plan)

    def work(index: int, worker: Ledger) -> list[int]:
        # each worker runs the job for every user, starting at a different one
        order = users[index % len(users) :] + users[: index % len(users)]
        return [int(worker.call("credit_grant_allowances", user_id=u)["granted"]) for u in order]

    granted = run_workers(database_url, 16, work, application=f"ducto-{prefix}")
    assert sum(map(sum, granted)) == len(users)

    with connect(database_url) as conn:
        check = Ledger(conn)
        rows = check.rows(
            """
            select a.user_id, a.balance, count(ag.*) as allowances
            from credit_accounts as a
            left join credit_allowance_grants as ag on ag.account_id = a.id
            where a.user_id like %s || '%%'
            group by a.user_id, a.balance
            order by a.user_id
            """,
            (prefix,),
        )
        assert [(r["user_id"], r["balance"], r["allowances"]) for r in rows] == [
            (u, 25, 1) for u in users
        ]
        assert check.verify() == []
