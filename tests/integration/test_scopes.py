"""Scoped credits (docs/scopes.md): a grant limited to some models, jobs or features pays
only for the charges its scope matches, first among the grants a charge may draw.

- through every client flavour: image-only credits never pay for a chat charge; refunds
  give credits back to the scoped grant they came from; the breakdown per scope; a bad
  scope is refused with nothing written; the scope is part of a keyed request;
- random sequences (hypothesis) of scoped and unscoped grants, charges of several models,
  refunds, clock moves and sweeps keep every invariant, and admit a charge exactly when
  what it may draw covers it;
- 40 concurrent charges of two models against mixed grants keep them too;
- the CLI adds scoped credits and shows the breakdown.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

import httpx
import psycopg
import pytest
from conftest import MakeUserToken
from helpers_api import Api, expect_error, expect_ok, new_user_id
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.rows import DictRow, dict_row
from psycopg.types.json import Jsonb
from test_cli import Cli

from ducto import (
    CreditManager,
    IdempotencyConflictError,
    InsufficientCreditsError,
    InvalidInputError,
    ScopeBalance,
    UsageMetrics,
)
from ducto.interface import PostgresStore

Conn = psycopg.Connection[DictRow]

IMAGE = ["model:gpt-image-*"]
CHAT = ["model:gpt-4o*"]
MODELS = ["gpt-image-1", "gpt-image-2", "gpt-4o", "gpt-4o-mini", "claude-x"]
#: one credit per request for every model the tests charge
PRICING: dict[str, Any] = {
    "models": [{"model": model, "input": 0, "output": 0, "request": 1} for model in sorted(MODELS)],
    "default": None,
}


def new_user(name: str) -> str:
    return f"scopes-{name}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module")
def conn(database_url: str) -> Iterator[Conn]:
    """The ledger's owner, in autocommit; the module's pricing is published once."""
    with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as connection:
        connection.execute("select credit_publish_pricing(%s, 'scopes')", [Jsonb(PRICING)])
        yield connection


def charge(manager: CreditManager, user: str, model: str, requests: int) -> int:
    return manager.deduct(user, UsageMetrics(model=model, requests=requests)).amount


# ---------------------------------------------------------------- every client flavour


def test_image_credits_never_pay_for_a_chat_charge(manager: CreditManager) -> None:
    manager.publish_pricing_from_dict(PRICING)
    user = new_user("image")
    manager.add_credits(user, 100, scope=IMAGE)
    manager.add_credits(user, 10)
    assert charge(manager, user, "gpt-4o", 10) == 10
    with pytest.raises(InsufficientCreditsError) as refused:
        charge(manager, user, "gpt-4o", 1)
    # what a chat charge may draw: no unscoped credits left, the image ones are not its own
    assert refused.value.details is not None
    assert refused.value.details["available"] == 0
    balance = manager.get_balance(user)
    assert (balance.balance, balance.available) == (100, 100)
    assert balance.scopes == (ScopeBalance(scope=IMAGE, remaining=100),)
    assert charge(manager, user, "gpt-image-1", 60) == 60
    assert manager.get_balance(user).scopes == (ScopeBalance(scope=IMAGE, remaining=40),)
    assert manager.verify_ledger() == []


def test_refunds_give_credits_back_to_the_scoped_grant(manager: CreditManager) -> None:
    manager.publish_pricing_from_dict(PRICING)
    user = new_user("refund")
    manager.add_credits(user, 30, scope=IMAGE)
    manager.add_credits(user, 20)
    image_only = manager.deduct(user, UsageMetrics(model="gpt-image-1", requests=25))
    assert manager.get_balance(user).scopes == (
        ScopeBalance(scope=None, remaining=20),
        ScopeBalance(scope=IMAGE, remaining=5),
    )
    manager.refund_credits(image_only.transaction_id, 10)
    assert manager.get_balance(user).scopes == (
        ScopeBalance(scope=None, remaining=20),
        ScopeBalance(scope=IMAGE, remaining=15),
    )
    # 15 image credits, then 5 unscoped; a full refund refills both where they came from
    both = manager.deduct(user, UsageMetrics(model="gpt-image-2", requests=20))
    assert manager.get_balance(user).scopes == (ScopeBalance(scope=None, remaining=15),)
    manager.refund_credits(both.transaction_id)
    assert manager.get_balance(user).scopes == (
        ScopeBalance(scope=None, remaining=20),
        ScopeBalance(scope=IMAGE, remaining=15),
    )
    assert manager.verify_ledger() == []


def test_a_metered_call_naming_its_model_relies_on_that_models_credits(
    database_url: str,
) -> None:
    store = PostgresStore(database_url, max_size=1)
    manager = CreditManager(store)
    manager.publish_pricing_from_dict(PRICING)
    user = new_user("metered")
    manager.add_credits(user, 50, scope=IMAGE)
    estimate = UsageMetrics(model="gpt-image-1", requests=20)
    # without the model, the hold may rely on unscoped credits only: there are none
    with (
        pytest.raises(InsufficientCreditsError),
        manager.metered_call(user, estimate, min_balance=0),
    ):
        pass
    with manager.metered_call(
        user, estimate, metadata={"model": estimate.model}, min_balance=0
    ) as meter:
        meter.record(UsageMetrics(model="gpt-image-1", requests=30))
    assert meter.result is not None and meter.result.amount == 30
    assert manager.get_balance(user).scopes == (ScopeBalance(scope=IMAGE, remaining=20),)
    store.close()


def test_a_bad_scope_is_refused_and_writes_nothing(manager: CreditManager) -> None:
    user = new_user("bad")
    for scope, where in [
        ("model:gpt-4o", "client"),  # a lone string, not a list of entries
        ([1], "client"),
        (["gpt-4o"], "ledger"),  # no kind
        (["model:"], "ledger"),
        (["job:two words"], "ledger"),
        ([], "ledger"),
    ]:
        with pytest.raises(InvalidInputError) as refused:
            manager.add_credits(user, 5, scope=scope)  # type: ignore[arg-type]
        assert refused.value.code == "DC006", (scope, where)
    balance = manager.get_balance(user)
    assert (balance.balance, balance.scopes) == (0, ())


def test_the_scope_is_part_of_a_keyed_request(manager: CreditManager) -> None:
    user = new_user("key")
    key = f"grant-{uuid.uuid4()}"
    first = manager.add_credits(user, 5, scope=["model:b", "model:a"], idempotency_key=key)
    # the same scope in another order is the same request
    again = manager.add_credits(user, 5, scope=["model:a", "model:b"], idempotency_key=key)
    assert (again.is_replay, again.transaction_id) == (True, first.transaction_id)
    with pytest.raises(IdempotencyConflictError):
        manager.add_credits(user, 5, scope=["model:a"], idempotency_key=key)
    with pytest.raises(IdempotencyConflictError):
        manager.add_credits(user, 5, idempotency_key=key)
    assert manager.get_balance(user).scopes == (
        ScopeBalance(scope=["model:a", "model:b"], remaining=5),
    )


# ---------------------------------------------------------------- invariants


def matches(scope: list[str], model: str) -> bool:
    return any(
        entry.startswith("model:") and fnmatchcase(model, entry[len("model:") :]) for entry in scope
    )


def check_account(conn: Conn, user: str, now: datetime) -> None:
    """Every invariant of one account, from its rows (and the ledger's own verify)."""
    assert conn.execute("select * from credit_verify_ledger()").fetchall() == []
    account = conn.execute(
        "select a.balance, a.debt, (select coalesce(sum(t.amount), 0) from credit_transactions"
        " as t where t.account_id = a.id) as journal from credit_accounts as a"
        " where a.user_id = %s",
        [user],
    ).fetchone()
    if account is None:
        return
    assert account["balance"] == account["journal"]
    assert account["debt"] == 0  # nothing here may run into debt
    grants = conn.execute(
        "select g.id, g.amount, g.remaining, g.scope,"
        " g.amount - coalesce((select sum(d.amount) from credit_grant_draws as d"
        " where d.grant_id = g.id), 0) as by_draws"
        " from credit_grants as g where g.user_id = %s",
        [user],
    ).fetchall()
    for grant in grants:
        assert grant["remaining"] == grant["by_draws"]
    # no scoped grant ever paid for a charge outside its scope
    outside = conn.execute(
        "select g.scope, t.model from credit_grant_draws as d"
        " join credit_grants as g on g.id = d.grant_id"
        " join credit_transactions as t on t.id = d.transaction_id"
        " where g.user_id = %s and g.scope is not null and d.amount > 0"
        " and t.type <> 'expiry'",
        [user],
    ).fetchall()
    for row in outside:
        assert row["model"] is not None and matches(row["scope"], row["model"]), row


def may_draw(conn: Conn, user: str, model: str, now: datetime) -> int:
    """What a charge of ``model`` may draw now: unscoped and matching unexpired credits."""
    rows = conn.execute(
        "select remaining, scope from credit_grants where user_id = %s and remaining > 0"
        " and (expires_at is null or expires_at > %s)",
        [user, now],
    ).fetchall()
    return sum(
        row["remaining"] for row in rows if row["scope"] is None or matches(row["scope"], model)
    )


SCOPES = [None, IMAGE, CHAT, ["model:gpt-4o-mini", "model:gpt-image-1"]]
operation = st.one_of(
    st.tuples(
        st.just("add"),
        st.sampled_from(range(len(SCOPES))),
        st.integers(1, 40),
        st.one_of(st.none(), st.integers(1, 48)),
    ),
    st.tuples(st.just("charge"), st.sampled_from(MODELS), st.integers(1, 40)),
    st.tuples(st.just("refund"), st.integers(0, 30), st.integers(1, 40)),
    st.tuples(st.just("advance"), st.integers(1, 30)),
    st.tuples(st.just("sweep")),
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(operation, min_size=1, max_size=25))
def test_random_sequences_keep_every_invariant(conn: Conn, ops: list[tuple[Any, ...]]) -> None:
    user = new_user("random")
    now = datetime(2031, 1, 1, tzinfo=UTC)
    charges: list[tuple[str, str]] = []  # (transaction id, model)
    try:
        for op in ops:
            conn.execute("select set_config('ducto.now', %s, false)", [now.isoformat()])
            if op[0] == "add":
                _, scope, amount, hours = op
                conn.execute(
                    "select credit_add_credits(p_user_id => %s, p_amount => %s,"
                    " p_expires_at => %s, p_scope => %s)",
                    [user, amount, hours and now + timedelta(hours=hours), SCOPES[scope]],
                )
            elif op[0] == "charge":
                _, model, requests = op
                allowed = may_draw(conn, user, model, now)
                before = {
                    row["id"]: row["remaining"]
                    for row in conn.execute(
                        "select id, remaining from credit_grants where user_id = %s", [user]
                    )
                }
                try:
                    row = conn.execute(
                        "select transaction_id from credit_deduct_usage(%s, %s)",
                        [user, Jsonb({"model": model, "requests": requests})],
                    ).fetchone()
                except psycopg.Error as exc:
                    assert exc.sqlstate == "DC010"
                    assert requests > allowed, (model, requests, allowed)
                    continue
                assert row is not None
                assert requests <= allowed, (model, requests, allowed)
                charges.append((str(row["transaction_id"]), model))
                # an unscoped credit is drawn only once every matching scoped one is spent
                draws = conn.execute(
                    "select d.grant_id, g.scope, g.expires_at from credit_grant_draws as d"
                    " join credit_grants as g on g.id = d.grant_id"
                    " where d.transaction_id = %s",
                    [row["transaction_id"]],
                ).fetchall()
                if any(draw["scope"] is None for draw in draws):
                    left = conn.execute(
                        "select id, remaining, scope from credit_grants where user_id = %s"
                        " and scope is not null and remaining > 0"
                        " and (expires_at is null or expires_at > %s)",
                        [user, now],
                    ).fetchall()
                    assert not [g for g in left if matches(g["scope"], model)], (before, left)
            elif op[0] == "refund" and charges:
                _, pick, amount = op
                transaction_id, _model = charges[pick % len(charges)]
                try:
                    conn.execute(
                        "select credit_refund_transaction(%s, %s)", [transaction_id, amount]
                    )
                except psycopg.Error as exc:
                    assert exc.sqlstate == "DC050"  # beyond what is left to refund
            elif op[0] == "advance":
                now += timedelta(hours=op[1])
            elif op[0] == "sweep":
                conn.execute("select credit_sweep_expired()")
            check_account(conn, user, now)
    finally:
        conn.execute("select set_config('ducto.now', '', false)")


# ---------------------------------------------------------------- concurrency


def test_concurrent_charges_of_two_models_against_mixed_grants(
    conn: Conn, database_url: str
) -> None:
    user = new_user("concurrent")
    for amount, scope in [(150, IMAGE), (100, CHAT), (80, None), (30, IMAGE)]:
        conn.execute(
            "select credit_add_credits(p_user_id => %s, p_amount => %s, p_scope => %s)",
            [user, amount, scope],
        )
    workers = 40
    barrier = threading.Barrier(workers, timeout=60)

    def one(n: int) -> tuple[str, int, str]:
        model = "gpt-image-1" if n % 2 == 0 else "gpt-4o"
        requests = 5 + (n * 7) % 20
        with psycopg.connect(database_url, autocommit=True) as own:
            barrier.wait()
            try:
                own.execute(
                    "select credit_deduct_usage(%s, %s, '{}', %s)",
                    [user, Jsonb({"model": model, "requests": requests}), f"{user}-{n}"],
                )
            except psycopg.Error as exc:
                assert exc.sqlstate == "DC010"
                return model, requests, "refused"
        return model, requests, "charged"

    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(one, range(workers)))

    check_account(conn, user, datetime.now(UTC))
    charged = sum(requests for _, requests, outcome in results if outcome == "charged")
    balance = conn.execute(
        "select balance from credit_accounts where user_id = %s", [user]
    ).fetchone()
    assert balance is not None
    assert balance["balance"] == 360 - charged >= 0
    # each key charged once
    keys = conn.execute(
        "select idempotency_key, count(*) from credit_transactions where user_id = %s"
        " and type = 'usage' group by idempotency_key having count(*) <> 1",
        [user],
    ).fetchall()
    assert keys == []
    # a refused charge could not be paid then, nor now (credits only went down since)
    for model, requests, outcome in results:
        if outcome == "refused":
            assert may_draw(conn, user, model, datetime.now(UTC)) < requests
    assert {outcome for _, _, outcome in results} == {"charged", "refused"}


def test_concurrent_scoped_adds_holds_refunds_and_charges(conn: Conn, database_url: str) -> None:
    """Every write path of scoped credits at once: keyed scoped adds (each key used by two
    workers), holds relying on scoped credits settled by usage, refunds of the same image
    charges by two workers each, and chat charges."""
    user = new_user("mixed")
    for amount, scope in [(100, IMAGE), (60, CHAT), (30, None)]:
        conn.execute(
            "select credit_add_credits(p_user_id => %s, p_amount => %s, p_scope => %s)",
            [user, amount, scope],
        )
    images = [
        str(
            conn.execute(
                "select transaction_id from credit_deduct_usage(%s, %s)",
                [user, Jsonb({"model": "gpt-image-1", "requests": 5})],
            ).fetchone()["transaction_id"]  # type: ignore[index]
        )
        for _ in range(5)
    ]
    workers = 40
    barrier = threading.Barrier(workers, timeout=60)

    def one(n: int) -> str:
        kind = n % 4
        with psycopg.connect(database_url, autocommit=True, row_factory=dict_row) as own:
            barrier.wait()
            try:
                if kind == 0:  # two workers per key: one grant, one replay
                    own.execute(
                        "select credit_add_credits(p_user_id => %s, p_amount => 7,"
                        " p_scope => %s, p_idempotency_key => %s)",
                        [user, IMAGE if n // 8 % 2 == 0 else CHAT, f"add-{n // 8}"],
                    )
                elif kind == 1:  # a hold relying on image credits, settled by usage
                    hold = own.execute(
                        "select reservation_id from credit_reserve_credits(%s, 6,"
                        " p_metadata => %s)",
                        [user, Jsonb({"model": "gpt-image-1"})],
                    ).fetchone()
                    assert hold is not None
                    own.execute(
                        "select credit_settle_usage(%s, %s)",
                        [hold["reservation_id"], Jsonb({"model": "gpt-image-1", "requests": 6})],
                    )
                elif kind == 2:  # two workers refund each image charge
                    own.execute(
                        "select credit_refund_transaction(%s)", [images[(n // 4) % len(images)]]
                    )
                else:
                    own.execute(
                        "select credit_deduct_usage(%s, %s)",
                        [user, Jsonb({"model": "gpt-4o", "requests": 4})],
                    )
            except psycopg.Error as exc:
                return exc.sqlstate or "?"
        return "ok"

    with ThreadPoolExecutor(workers) as pool:
        outcomes = list(pool.map(one, range(workers)))

    check_account(conn, user, datetime.now(UTC))
    # refused only as the ledger says: a second refund (DC050) or too few credits (DC010)
    assert set(outcomes) <= {"ok", "DC050", "DC010"}
    assert outcomes[2::4].count("DC050") == 5  # each image charge refunded exactly once
    grants = conn.execute(
        "select g.scope, count(*) from credit_grants as g join credit_transactions as t"
        " on t.id = g.transaction_id where g.user_id = %s and t.idempotency_key is not null"
        " group by g.scope order by g.scope",
        [user],
    ).fetchall()
    # keys add-0..add-4, each used by two workers: one grant each
    assert [(row["scope"], row["count"]) for row in grants] == [(CHAT, 2), (IMAGE, 3)]
    settled = conn.execute(
        "select count(*) as n from credit_reservations where user_id = %s and status = 'settled'",
        [user],
    ).fetchone()
    assert settled is not None and settled["n"] == outcomes[1::4].count("ok")


# ---------------------------------------------------------------- through PostgREST


def test_users_read_their_own_breakdown_and_cannot_add_scoped_credits(
    gateway: httpx.Client, anon_key: str, make_user_token: MakeUserToken, service: Api
) -> None:
    user, other = new_user_id(), new_user_id()
    expect_ok(
        service.rpc(
            "credit_add_credits",
            {"p_user_id": user, "p_amount": 7, "p_scope": ["model:gpt-image-*"]},
        )
    )
    as_user = Api(gateway, anon_key, make_user_token(user))
    mine = expect_ok(as_user.rpc("credit_get_balance", {}))
    assert mine["scopes"] == [{"scope": ["model:gpt-image-*"], "remaining": 7}]
    as_other = Api(gateway, anon_key, make_user_token(other))
    expect_error(as_other.rpc("credit_get_balance", {"p_user_id": user}), 403, "42501")
    grant = {"p_user_id": user, "p_amount": 1000, "p_scope": ["model:gpt-image-*"]}
    expect_error(as_user.rpc("credit_add_credits", grant), 403, "42501")
    expect_error(Api(gateway, anon_key).rpc("credit_add_credits", grant), 401, "42501")
    # a bad scope through PostgREST: DC006 as 422, nothing written
    bad = {"p_user_id": user, "p_amount": 5, "p_scope": ["image"]}
    expect_error(service.rpc("credit_add_credits", bad), 422, "DC006")
    assert expect_ok(service.rpc("credit_get_balance", {"p_user_id": user}))["balance"] == 7


# ---------------------------------------------------------------- the CLI


def test_the_cli_adds_scoped_credits_and_shows_the_breakdown(database_url: str) -> None:
    cli = Cli(DATABASE_URL=database_url)
    user = new_user("cli")
    added = cli.json(
        "credits", "add", user, "40", "--scope", "model:gpt-image-*", "--scope", "job:report"
    )
    assert added["amount"] == 40
    cli("credits", "add", user, "5")
    assert cli.json("credits", "balance", user)["scopes"] == [
        {"scope": None, "remaining": 5},
        {"scope": ["job:report", "model:gpt-image-*"], "remaining": 40},
    ]
    shown = cli("credits", "balance", user).stdout
    assert "5 unscoped, 40 job:report model:gpt-image-*" in shown
    refused = cli("credits", "add", user, "5", "--scope", "gpt-image", code=1).stderr
    assert "scope entry 'gpt-image'" in refused
    assert cli.json("credits", "balance", user)["balance"] == 45
