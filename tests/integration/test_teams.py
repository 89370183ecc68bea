"""Teams and their credit pools (docs/plans-teams.md), from every client.

- the Python client over the four store flavours: a team's lifecycle, and every refusal
  as its own typed error (never something that looks like success);
- members and strangers through the gateway and PostgREST: members read their team's
  pool (balance and journal) through row-level security, other users and anon read
  nothing, and nobody but the service role writes;
- many members spending from one pool at once: the pool never goes below its floor, no
  member exceeds their limit, every refusal is justified by what it reports, and the
  members' attributed spend sums to the pool's.
"""

from __future__ import annotations

import json
import random
import threading
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import pytest
from conftest import MakeUserToken
from helpers_api import (
    JSON,
    Api,
    error_details,
    expect_error,
    expect_ok,
    expect_rows,
    new_user_id,
    permission_denied,
)
from psycopg.types.json import Jsonb
from test_concurrency import BARRIER_TIMEOUT, Ledger, connect, deadlocks, run_workers

from ducto import (
    CreditManager,
    IdempotencyConflictError,
    InsufficientCreditsError,
    InvalidInputError,
    MemberLimitExceededError,
    NotFoundError,
    NotTeamMemberError,
    PermissionDeniedError,
    PricingNotLoadedError,
    TeamPoolExhaustedError,
    UsageMetrics,
)

# 1 credit per request: UsageMetrics("unit", requests=n) costs n
PRICING = {"models": [{"model": "unit", "input": 0, "output": 0, "request": 1}], "default": None}


def units(n: int) -> UsageMetrics:
    return UsageMetrics("unit", requests=n)


# ---------------------------------------------------------------- the Python client


def test_team_lifecycle(manager: CreditManager, bare_manager: CreditManager) -> None:
    manager.publish_pricing_from_dict(PRICING)
    team = str(uuid.uuid4())
    owner, member, stranger = new_user_id(), new_user_id(), new_user_id()
    created = manager.upsert_team(team, "Acme", min_balance=10)
    assert (created.team_id, created.name, created.min_balance) == (team, "Acme", 10)
    pool = created.account_user_id
    assert pool == f"team:{team}"
    manager.add_credits(pool, 100, tx_type="purchase")
    assert manager.set_team_member(team, owner, "owner").spend_limit is None
    limited = manager.set_team_member(team, member, spend_limit=30, limit_period="day")
    assert (limited.role, limited.spend_limit, limited.spent_in_period) == ("member", 30, 0)

    charge = manager.deduct_team(team, member, units(12), metadata={"chat": "c-1"})
    assert (charge.team_id, charge.user_id, charge.amount) == (team, member, 12)
    assert (charge.balance_after, charge.available_after) == (88, 88)
    assert (charge.spent_in_period, charge.spend_limit, charge.limit_period) == (30 - 18, 30, "day")
    assert charge.pricing_version is not None and charge.transaction_id is not None
    assert manager.get_balance(pool).balance == 88

    keyed = manager.deduct_team(team, member, units(3), idempotency_key="turn-1")
    again = manager.deduct_team(team, member, units(3), idempotency_key="turn-1")
    assert again.is_replay and again.transaction_id == keyed.transaction_id
    with pytest.raises(IdempotencyConflictError) as conflict:
        manager.deduct_team(team, member, units(4), idempotency_key="turn-1")
    assert conflict.value.details["idempotency_key"] == "turn-1"
    # a member's keys are the member's own: the owner's "turn-1" is another request
    mine = manager.deduct_team(team, owner, units(3), idempotency_key="turn-1")
    assert not mine.is_replay and mine.transaction_id != keyed.transaction_id

    # each refusal is its own typed error, and a kind of "not enough credits" or "not allowed"
    with pytest.raises(MemberLimitExceededError) as over:
        manager.deduct_team(team, member, units(16))
    assert isinstance(over.value, InsufficientCreditsError) and over.value.code == "DC083"
    assert over.value.details["spent"] == 15 and over.value.details["needed"] == 16
    with pytest.raises(NotTeamMemberError) as outsider:
        manager.deduct_team(team, stranger, units(1))
    assert isinstance(outsider.value, PermissionDeniedError) and outsider.value.code == "DC082"
    assert manager.deduct_team(team, owner, units(72)).available_after == 10
    with pytest.raises(TeamPoolExhaustedError) as empty:
        manager.deduct_team(team, owner, units(1))
    assert isinstance(empty.value, InsufficientCreditsError) and empty.value.code == "DC084"
    assert empty.value.details == {
        "team_id": team,
        "user_id": owner,
        "available": 10,
        "needed": 1,
        "min_balance": 10,
    }
    assert manager.get_balance(pool).balance == 10

    with pytest.raises(NotFoundError) as unknown:
        manager.deduct_team(str(uuid.uuid4()), owner, units(1))
    assert unknown.value.code == "DC081"
    with pytest.raises(InvalidInputError) as not_uuid:
        manager.deduct_team("acme", owner, units(1))
    assert not_uuid.value.code == "DC006"
    with pytest.raises(PricingNotLoadedError):
        bare_manager.deduct_team(team, owner, units(1))

    assert manager.remove_team_member(team, member) is True
    assert manager.remove_team_member(team, member) is False
    with pytest.raises(NotTeamMemberError):
        manager.deduct_team(team, member, units(1))
    assert manager.verify_ledger() == []


# ---------------------------------------------------------------- through PostgREST


@pytest.fixture(scope="module")
def team(service: Api) -> JSON:
    """A team with two members who have spent from its pool, and a stranger."""
    expect_ok(service.rpc("credit_publish_pricing", {"p_config": PRICING}))
    team_id, alice, bob, carol = str(uuid.uuid4()), new_user_id(), new_user_id(), new_user_id()
    expect_ok(service.rpc("credit_upsert_team", {"p_team_id": team_id, "p_name": "Acme"}))
    expect_ok(service.rpc("credit_add_credits", {"p_user_id": f"team:{team_id}", "p_amount": 50}))
    for user, limit in ((alice, None), (bob, 20)):
        expect_ok(
            service.rpc(
                "credit_set_team_member",
                {
                    "p_team_id": team_id,
                    "p_user_id": user,
                    "p_spend_limit": limit,
                    "p_limit_period": None if limit is None else "month",
                },
            )
        )
    for user, n in ((alice, 4), (bob, 6)):
        expect_ok(
            service.rpc(
                "credit_deduct_team",
                {
                    "p_team_id": team_id,
                    "p_user_id": user,
                    "p_metrics": {"model": "unit", "requests": n},
                },
            )
        )
    return {
        "team_id": team_id,
        "pool": f"team:{team_id}",
        "alice": alice,
        "bob": bob,
        "carol": carol,
    }


def as_user(gateway: httpx.Client, anon_key: str, token: MakeUserToken, user: str) -> Api:
    return Api(gateway, anon_key, token(user))


def test_members_read_the_pool_through_rls(
    gateway: httpx.Client, anon_key: str, make_user_token: MakeUserToken, team: JSON
) -> None:
    for name in ("alice", "bob"):
        member = as_user(gateway, anon_key, make_user_token, team[name])
        [account] = expect_rows(member.select("credit_accounts", {"user_id": f"eq.{team['pool']}"}))
        assert account["balance"] == 40
        journal = expect_rows(
            member.select(
                "credit_transactions",
                {
                    "user_id": f"eq.{team['pool']}",
                    "order": "seq",
                    "select": "type,amount,attributed_user_id",
                },
            )
        )
        assert journal == [
            {"type": "adjustment", "amount": 50, "attributed_user_id": None},
            {"type": "usage", "amount": -4, "attributed_user_id": team["alice"]},
            {"type": "usage", "amount": -6, "attributed_user_id": team["bob"]},
        ]
        [row] = expect_rows(member.select("credit_teams"))
        assert (row["id"], row["name"]) == (team["team_id"], "Acme")
        # their own membership, not the other member's
        assert [m["user_id"] for m in expect_rows(member.select("credit_team_members"))] == [
            team[name]
        ]


def test_other_users_and_anon_read_nothing_of_the_pool(
    gateway: httpx.Client, anon_key: str, make_user_token: MakeUserToken, team: JSON
) -> None:
    carol = as_user(gateway, anon_key, make_user_token, team["carol"])
    pool = {"user_id": f"eq.{team['pool']}"}
    for table in ("credit_accounts", "credit_transactions", "credit_grants", "credit_reservations"):
        assert expect_rows(carol.select(table, pool)) == [], table
    assert expect_rows(carol.select("credit_teams")) == []
    assert expect_rows(carol.select("credit_team_members")) == []
    expect_error(
        carol.rpc("credit_get_balance", {"p_user_id": team["pool"]}),
        403,
        "42501",
        message="a signed-in user may read only their own balance",
    )
    anon = Api(gateway, anon_key)
    for table in ("credit_teams", "credit_team_members"):
        expect_error(anon.select(table), 401, "42501", message=permission_denied("table", table))


def test_only_the_service_role_changes_a_team(
    gateway: httpx.Client,
    anon_key: str,
    make_user_token: MakeUserToken,
    team: JSON,
    db: psycopg.Connection[Any],
) -> None:
    before = db.execute(
        "select (select balance from credit_accounts where user_id = %s),"
        " (select array_agg(m order by m.user_id) from credit_team_members as m"
        "  where m.team_id = %s)",
        (team["pool"], team["team_id"]),
    ).fetchone()
    for name in ("bob", "carol"):
        user = as_user(gateway, anon_key, make_user_token, team[name])
        for function, args in [
            (
                "credit_deduct_team",
                {
                    "p_team_id": team["team_id"],
                    "p_user_id": team[name],
                    "p_metrics": {"model": "unit"},
                },
            ),
            ("credit_set_team_member", {"p_team_id": team["team_id"], "p_user_id": team[name]}),
            (
                "credit_remove_team_member",
                {"p_team_id": team["team_id"], "p_user_id": team["alice"]},
            ),
            ("credit_upsert_team", {"p_team_id": team["team_id"], "p_name": "Mine"}),
        ]:
            expect_error(
                user.rpc(function, args),
                403,
                "42501",
                message=permission_denied("function", function),
            )
        # bob lifting his own limit by writing the table
        expect_error(
            user.request(
                "PATCH",
                "credit_team_members",
                params={"user_id": f"eq.{team[name]}"},
                json_body={"spend_limit": None, "limit_period": None},
            ),
            403,
            "42501",
            message=permission_denied("table", "credit_team_members"),
        )
    after = db.execute(
        "select (select balance from credit_accounts where user_id = %s),"
        " (select array_agg(m order by m.user_id) from credit_team_members as m"
        "  where m.team_id = %s)",
        (team["pool"], team["team_id"]),
    ).fetchone()
    assert after == before


def test_a_removed_member_stops_seeing_the_pool(
    gateway: httpx.Client, anon_key: str, make_user_token: MakeUserToken, service: Api
) -> None:
    team_id, dave = str(uuid.uuid4()), new_user_id()
    expect_ok(service.rpc("credit_upsert_team", {"p_team_id": team_id, "p_name": "Short"}))
    expect_ok(service.rpc("credit_add_credits", {"p_user_id": f"team:{team_id}", "p_amount": 5}))
    expect_ok(service.rpc("credit_set_team_member", {"p_team_id": team_id, "p_user_id": dave}))
    as_dave = as_user(gateway, anon_key, make_user_token, dave)
    pool = {"user_id": f"eq.team:{team_id}"}
    assert len(expect_rows(as_dave.select("credit_accounts", pool))) == 1
    removed = service.rpc("credit_remove_team_member", {"p_team_id": team_id, "p_user_id": dave})
    assert removed.status_code == 200 and removed.json() is True
    assert expect_rows(as_dave.select("credit_accounts", pool)) == []
    assert expect_rows(as_dave.select("credit_transactions", pool)) == []


def test_refusals_through_postgrest_carry_their_codes(service: Api, team: JSON) -> None:
    body = expect_error(
        service.rpc(
            "credit_deduct_team",
            {
                "p_team_id": team["team_id"],
                "p_user_id": team["carol"],
                "p_metrics": {"model": "unit"},
            },
        ),
        403,
        "DC082",
    )
    assert error_details(body) == {"team_id": team["team_id"], "user_id": team["carol"]}
    expect_error(
        service.rpc(
            "credit_deduct_team",
            {
                "p_team_id": team["team_id"],
                "p_user_id": team["bob"],
                "p_metrics": {"model": "unit", "requests": 15},
            },
        ),
        402,
        "DC083",
    )


# ---------------------------------------------------------------- many members, one pool

MEMBERS = 16
ATTEMPTS = 40
POOL = 1500
FLOOR = 100
LIMIT = 60
REFUSALS = frozenset({"DC083", "DC084"})


@dataclass(frozen=True)
class Charge:
    """One attempted team charge: its cost, and the reply or the refusal with its detail."""

    cost: int
    reply: dict[str, Any] | None = None
    code: str | None = None
    detail: dict[str, Any] | None = None


def charge(worker: Ledger, team_id: str, member: str, cost: int) -> Charge:
    try:
        reply = worker.call(
            "credit_deduct_team",
            team_id=team_id,
            user_id=member,
            metrics=Jsonb({"model": "unit", "requests": cost}),
        )
    except psycopg.Error as exc:
        if exc.sqlstate not in REFUSALS:
            raise
        return Charge(cost, code=exc.sqlstate, detail=json.loads(exc.diag.message_detail or ""))
    return Charge(cost, reply=dict(reply))


def test_members_spending_at_once_keep_the_pool_and_their_limits(database_url: str) -> None:
    """16 members x 40 charges of 1 to 9 credits on a pool of 1,500 with a floor of 100;
    the even-numbered members may spend 60 a day. The limited members reach their limit
    early (8 x 60); the others' demand (about 8 x 200) then empties the pool."""
    team_id = str(uuid.uuid4())
    pool = f"team:{team_id}"
    members = [f"member-{team_id[:8]}-{n:02d}" for n in range(MEMBERS)]
    limits = {m: LIMIT if n % 2 == 0 else None for n, m in enumerate(members)}
    # one instant for every worker, so no period boundary falls inside the run
    clock = datetime(2031, 6, 15, 12, tzinfo=UTC)
    with connect(database_url) as conn:
        setup = Ledger(conn)
        setup.call("credit_publish_pricing", config=Jsonb(PRICING))
        setup.call("credit_upsert_team", team_id=team_id, name="Hot pool", min_balance=FLOOR)
        setup.add(pool, POOL)
        for member, limit in limits.items():
            setup.call(
                "credit_set_team_member",
                team_id=team_id,
                user_id=member,
                spend_limit=limit,
                limit_period=None if limit is None else "day",
            )
    start = threading.Barrier(MEMBERS, timeout=BARRIER_TIMEOUT)

    def work(index: int, worker: Ledger) -> list[Charge]:
        worker.set_clock(clock)
        rng = random.Random(index)
        start.wait()
        return [charge(worker, team_id, members[index], rng.randint(1, 9)) for _ in range(ATTEMPTS)]

    with connect(database_url) as conn:
        check = Ledger(conn)
        application = f"ducto-team-{team_id[:8]}"
        deadlocks_before = deadlocks(check)
        results = run_workers(
            database_url, MEMBERS, work, application=application, barriers=[start]
        )

        spent: Counter[str] = Counter()
        refusals: Counter[str] = Counter()
        for member, charges in zip(members, results, strict=True):
            for c in charges:
                if c.reply is not None:
                    assert c.reply["amount"] == c.cost and c.reply["available_after"] >= FLOOR
                    spent[member] += c.cost
                    continue
                # every refusal is justified by the numbers it reports
                assert c.code is not None and c.detail is not None
                refusals[c.code] += 1
                assert c.detail["user_id"] == member and c.detail["needed"] == c.cost
                if c.code == "DC083":
                    assert c.detail["spend_limit"] == limits[member] == LIMIT
                    assert c.detail["spent"] + c.cost > LIMIT >= c.detail["spent"]
                else:
                    assert c.detail["available"] >= FLOOR > c.detail["available"] - c.cost
        assert refusals["DC084"] > 0, "the pool ran down to its floor"
        assert refusals["DC083"] > 0, "limited members reached their limit"

        for member, limit in limits.items():
            assert limit is None or spent[member] <= limit, member
        journal = check.rows(
            "select t.amount, t.balance_after, t.attributed_user_id from credit_transactions as t"
            " where t.user_id = %s and t.type = 'usage' order by t.seq",
            (pool,),
        )
        assert min(row["balance_after"] for row in journal) >= FLOOR
        attributed: Counter[str] = Counter()
        for row in journal:
            attributed[row["attributed_user_id"]] -= row["amount"]
        assert attributed == spent
        assert check.balance(pool)["balance"] == POOL - sum(spent.values()) >= FLOOR
        assert check.verify() == []
        assert deadlocks(check, application) == deadlocks_before


def test_one_keyed_team_charge_from_every_worker_charges_once(database_url: str) -> None:
    """16 workers send one member's keyed charge at the same moment: one journal row."""
    team_id = str(uuid.uuid4())
    member = f"member-{team_id[:8]}"
    with connect(database_url) as conn:
        setup = Ledger(conn)
        setup.call("credit_publish_pricing", config=Jsonb(PRICING))
        setup.call("credit_upsert_team", team_id=team_id, name="Keyed")
        setup.add(f"team:{team_id}", 100)
        setup.call("credit_set_team_member", team_id=team_id, user_id=member)
    moment = threading.Barrier(MEMBERS, timeout=BARRIER_TIMEOUT)

    def work(index: int, worker: Ledger) -> dict[str, Any]:
        moment.wait()
        return dict(
            worker.call(
                "credit_deduct_team",
                team_id=team_id,
                user_id=member,
                metrics=Jsonb({"model": "unit", "requests": 7}),
                idempotency_key="same-turn",
            )
        )

    replies = run_workers(
        database_url, MEMBERS, work, application=f"ducto-key-{team_id[:8]}", barriers=[moment]
    )
    assert len({r["transaction_id"] for r in replies}) == 1
    assert sum(not r["is_replay"] for r in replies) == 1
    with connect(database_url) as conn:
        check = Ledger(conn)
        assert check.balance(f"team:{team_id}")["balance"] == 93
        journal = check.rows(
            "select count(*) as n from credit_transactions where user_id = %s and type = 'usage'",
            (f"team:{team_id}",),
        )
        assert journal[0]["n"] == 1
