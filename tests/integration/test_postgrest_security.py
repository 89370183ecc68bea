"""The ledger from the attacker's side: the gateway, PostgREST and real JWTs.

Who may do what (docs/security.md):

- without a project key the gateway answers 401 before PostgREST sees anything;
- ``anon`` (the anon key, no user token) may call no ledger RPC and read no table;
- a signed-in user (``authenticated``) reads only their own rows of four tables and
  their own balance (and plan: test_plans.py), and may call nothing else;
- no API role, not even ``service_role``, writes a ledger table directly;
- a token PostgREST cannot trust (forged, unsigned, expired, issued in the future)
  is refused with 401 ``PGRST301``.

Every refusal is checked twice: the exact HTTP status and error body, and, through a
superuser connection, that the victim's ledger rows did not change.

PostgREST 12.0.2 behaviour pinned here (assert what it does, not what one expects):

- a JWT is checked with 30 s of leeway: ``exp`` up to 30 s ago and ``iat`` up to
  30 s ahead are accepted; beyond that ``JWT expired`` / ``JWTIssuedAtFuture``;
- a token without ``exp`` is accepted; a validly signed token without ``role``
  runs as the anon role; HS512 signed with the secret is accepted like HS256;
- ``42501`` is 401 for anon (with ``WWW-Authenticate: Bearer``), 403 with a token.
"""

from __future__ import annotations

import time
import warnings
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import psycopg
import pytest
from conftest import MakeUserToken
from helpers_api import (
    JSON,
    LEDGER_TABLES,
    Api,
    expect_error,
    expect_ok,
    expect_rows,
    ledger_rows,
    new_user_id,
    permission_denied,
)
from psycopg import sql

# The RPCs of docs/ledger.md; the catalog may hold more (all are tested below).
DOCUMENTED_RPCS = {
    "credit_add_credits",
    "credit_deduct_credits",
    "credit_reserve_credits",
    "credit_settle_reservation",
    "credit_release_reservation",
    "credit_refund_transaction",
    "credit_get_balance",
    "credit_sweep_expired",
    "credit_verify_ledger",
    "credit_publish_pricing",
    "credit_get_pricing",
    "credit_list_pricing_versions",
    "credit_calculate_cost",
    "credit_deduct_usage",
    "credit_deduct_fixed",
    "credit_settle_usage",
}
# What a signed-in user may call (for their own id only).
USER_RPCS = {
    "credit_get_balance",
    "credit_get_user_plan",
    "credit_check_feature",
    "credit_balance_at",
    "credit_statement",
    "credit_list_events",
    "credit_get_limits",
}
# The tables a signed-in user may read (their own rows).
USER_TABLES = ("credit_accounts", "credit_transactions", "credit_grants", "credit_reservations")
SERVICE_ONLY_TABLES = ("credit_grant_draws", "credit_idempotency_keys")

OTHER_SECRET = "not-the-stack-secret-" + "0123456789abcdef" * 4  # long enough for HS512


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def anon(gateway: httpx.Client, anon_key: str) -> Api:
    """The anon key alone: the gateway forwards ``Bearer <anon key>``."""
    return Api(gateway, anon_key)


def fund(service: Api, user: str) -> JSON:
    """Give a user rows in every table: credits, a keyed usage, a hold, a settled hold."""
    add = expect_ok(service.rpc("credit_add_credits", {"p_user_id": user, "p_amount": 100}))
    usage = expect_ok(
        service.rpc(
            "credit_deduct_credits",
            {"p_user_id": user, "p_amount": 10, "p_idempotency_key": f"key-{user}"},
        )
    )
    hold = expect_ok(service.rpc("credit_reserve_credits", {"p_user_id": user, "p_amount": 5}))
    done = expect_ok(service.rpc("credit_reserve_credits", {"p_user_id": user, "p_amount": 4}))
    expect_ok(
        service.rpc(
            "credit_settle_reservation",
            {"p_reservation_id": done["reservation_id"], "p_actual_amount": 4},
        )
    )
    return {
        "user_id": user,
        "account_id": None,
        "add_tx": add["transaction_id"],
        "grant_id": add["grant_id"],
        "usage_tx": usage["transaction_id"],
        "reservation_id": hold["reservation_id"],
    }


@pytest.fixture(scope="module")
def alice(service: Api, db: psycopg.Connection[Any]) -> JSON:
    """User A, funded by the service role: balance 86, held 5, available 81."""
    user = fund(service, new_user_id())
    row = db.execute(
        "select id from public.credit_accounts where user_id = %s", (user["user_id"],)
    ).fetchone()
    assert row is not None
    user["account_id"] = row[0]
    return user


@pytest.fixture(scope="module")
def bob(service: Api, db: psycopg.Connection[Any]) -> JSON:
    """User B, funded the same way."""
    user = fund(service, new_user_id())
    row = db.execute(
        "select id from public.credit_accounts where user_id = %s", (user["user_id"],)
    ).fetchone()
    assert row is not None
    user["account_id"] = row[0]
    return user


@pytest.fixture(scope="module")
def as_alice(
    gateway: httpx.Client, anon_key: str, make_user_token: MakeUserToken, alice: JSON
) -> Api:
    """Alice signed in: the anon key plus her access token, as supabase-js sends them."""
    return Api(gateway, anon_key, make_user_token(alice["user_id"]))


@pytest.fixture(scope="module")
def rpcs(db: psycopg.Connection[Any]) -> dict[str, list[tuple[str, str]]]:
    """Every ducto function in ``public`` and its required arguments (name, type)."""
    rows = db.execute(
        """
        select
            p.proname,
            coalesce(p.proargnames[1:p.pronargs - p.pronargdefaults], '{}'),
            array(
                select pg_catalog.format_type(t, null)
                from unnest(p.proargtypes[0:p.pronargs - p.pronargdefaults - 1]) as t
            )
        from pg_catalog.pg_proc as p
        where p.pronamespace = 'public'::regnamespace
          and p.proname like 'credit\\_%'
          and p.prokind = 'f'
        order by 1
        """
    ).fetchall()
    functions = {name: list(zip(names, types, strict=True)) for name, names, types in rows}
    assert len(functions) == len(rows), "an overloaded ducto function (PostgREST cannot pick)"
    assert set(functions) >= DOCUMENTED_RPCS
    return functions


def arguments(required: list[tuple[str, str]], victim: JSON) -> dict[str, Any]:
    """Plausible values for a function's required arguments, aimed at ``victim``'s rows."""
    by_name = {
        "p_user_id": victim["user_id"],
        "p_reservation_id": victim["reservation_id"],
        "p_transaction_id": victim["usage_tx"],
        "p_amount": 1,
        "p_actual_amount": 1,
    }
    by_type = {
        "text": victim["user_id"],
        "numeric": 1,
        "integer": 1,
        "bigint": 1,
        "boolean": False,
        "uuid": victim["reservation_id"],
        "jsonb": {},
    }
    return {name: by_name.get(name, by_type.get(kind)) for name, kind in required}


def bearer(api: Api) -> str:
    return api.headers["Authorization"].removeprefix("Bearer ")


def gateway_refusal(response: httpx.Response) -> str:
    """The message of the gateway's 401, after checking it has PostgREST's error shape."""
    assert response.status_code == 401
    body = response.json()
    assert sorted(body) == ["code", "details", "hint", "message"]
    assert (body["code"], body["details"]) == ("42501", None)
    assert response.headers["access-control-allow-origin"] == "*"
    return str(body["message"])


# ---------------------------------------------------------------------------
# The gateway: no project key, no entry
# ---------------------------------------------------------------------------


def test_no_apikey_is_refused_by_the_gateway(
    gateway: httpx.Client, service_role_key: str, db: psycopg.Connection[Any], alice: JSON
) -> None:
    before = ledger_rows(db, alice["user_id"])
    # even a valid service-role JWT in Authorization does not replace the apikey header
    no_key = Api(gateway, None, service_role_key)
    response = no_key.rpc("credit_add_credits", {"p_user_id": alice["user_id"], "p_amount": 1})
    assert response.status_code == 401
    assert gateway_refusal(response) == "No API key found in request"
    response = no_key.select("credit_accounts")
    assert response.status_code == 401
    assert ledger_rows(db, alice["user_id"]) == before


def test_unknown_apikey_is_refused_by_the_gateway(
    gateway: httpx.Client,
    service_role_key: str,
    make_user_token: MakeUserToken,
    db: psycopg.Connection[Any],
    alice: JSON,
) -> None:
    before = ledger_rows(db, alice["user_id"])
    forged_key = service_role_key[:-2] + ("AA" if service_role_key[-2:] != "AA" else "BB")
    for key in ("not-a-key", make_user_token(alice["user_id"]), forged_key):
        api = Api(gateway, key, service_role_key)
        response = api.rpc("credit_add_credits", {"p_user_id": alice["user_id"], "p_amount": 1})
        assert response.status_code == 401, key
        assert gateway_refusal(response) == "Invalid API key"
    assert ledger_rows(db, alice["user_id"]) == before


# ---------------------------------------------------------------------------
# anon: nothing at all
# ---------------------------------------------------------------------------


def test_anon_can_call_no_ledger_rpc(
    anon: Api,
    db: psycopg.Connection[Any],
    rpcs: dict[str, list[tuple[str, str]]],
    alice: JSON,
) -> None:
    before = ledger_rows(db, alice["user_id"])
    for function, required in rpcs.items():
        response = anon.rpc(function, arguments(required, alice))
        expect_error(response, 401, "42501", message=permission_denied("function", function))
        assert response.headers.get("www-authenticate") == "Bearer", function
    # GET on the stable reader is refused the same way
    expect_error(
        anon.rpc_get("credit_get_balance", {"p_user_id": alice["user_id"]}),
        401,
        "42501",
        message=permission_denied("function", "credit_get_balance"),
    )
    assert ledger_rows(db, alice["user_id"]) == before


@pytest.mark.parametrize("table", LEDGER_TABLES)
def test_anon_can_read_no_table(anon: Api, table: str) -> None:
    expect_error(anon.select(table), 401, "42501", message=permission_denied("table", table))
    expect_error(
        anon.select(table, {"select": "*", "limit": "1"}),
        401,
        "42501",
        message=permission_denied("table", table),
    )


def test_anon_bearer_anon_key_is_the_same_as_no_token(
    gateway: httpx.Client, anon_key: str, alice: JSON
) -> None:
    explicit = Api(gateway, anon_key, anon_key)
    expect_error(
        explicit.rpc("credit_get_balance", {"p_user_id": alice["user_id"]}),
        401,
        "42501",
        message=permission_denied("function", "credit_get_balance"),
    )


# ---------------------------------------------------------------------------
# A signed-in user: their own rows and balance, nothing else
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("table", USER_TABLES)
def test_user_reads_own_rows_only(
    as_alice: Api, db: psycopg.Connection[Any], alice: JSON, bob: JSON, table: str
) -> None:
    rows = expect_rows(as_alice.select(table, {"order": "created_at"}))
    assert rows, f"alice sees none of her own {table}"
    column = "user_id"
    assert {row[column] for row in rows} == {alice["user_id"]}
    own = db.execute(
        f"select count(*) from public.{table} where user_id = %s",  # table is a constant
        (alice["user_id"],),
    ).fetchone()
    assert own == (len(rows),)
    # asking for bob's rows by name returns nothing, as does every other trick
    assert expect_rows(as_alice.select(table, {"user_id": f"eq.{bob['user_id']}"})) == []
    assert expect_rows(as_alice.select(table, {"user_id": f"neq.{alice['user_id']}"})) == []
    assert (
        expect_rows(
            as_alice.select(table, {"or": f"(user_id.eq.{bob['user_id']},user_id.is.null)"})
        )
        == []
    )


def test_user_cannot_see_others_by_id_count_or_embedding(
    as_alice: Api, alice: JSON, bob: JSON
) -> None:
    # a row id of bob's, even when known, is invisible
    assert (
        expect_rows(as_alice.select("credit_transactions", {"id": f"eq.{bob['usage_tx']}"})) == []
    )
    assert expect_rows(as_alice.select("credit_grants", {"id": f"eq.{bob['grant_id']}"})) == []
    assert (
        expect_rows(as_alice.select("credit_reservations", {"id": f"eq.{bob['reservation_id']}"}))
        == []
    )
    assert expect_rows(as_alice.select("credit_accounts", {"id": f"eq.{bob['account_id']}"})) == []
    # an exact count counts her rows, not the table's
    response = as_alice.request(
        "GET", "credit_transactions", params={"select": "id"}, headers={"Prefer": "count=exact"}
    )
    rows = expect_rows(response)
    assert response.headers["content-range"] == f"0-{len(rows) - 1}/{len(rows)}"
    # embedding goes through row-level security too
    embedded = expect_rows(
        as_alice.select("credit_accounts", {"select": "user_id,credit_transactions(user_id)"})
    )
    assert len(embedded) == 1
    assert {row["user_id"] for row in embedded[0]["credit_transactions"]} == {alice["user_id"]}


@pytest.mark.parametrize("table", SERVICE_ONLY_TABLES)
def test_user_cannot_read_draws_or_keys(as_alice: Api, table: str) -> None:
    # no SELECT grant for authenticated: 403, not an empty list
    expect_error(as_alice.select(table), 403, "42501", message=permission_denied("table", table))


def test_user_reads_own_balance(as_alice: Api, alice: JSON) -> None:
    expected = {
        "user_id": alice["user_id"],
        "balance": 86,
        "held": 5,
        "available": 81,
        "scopes": [{"scope": None, "remaining": 86}],
    }
    assert (
        expect_ok(as_alice.rpc("credit_get_balance", {"p_user_id": alice["user_id"]})) == expected
    )
    assert (
        expect_ok(as_alice.rpc_get("credit_get_balance", {"p_user_id": alice["user_id"]}))
        == expected
    )


def test_user_cannot_read_another_balance(as_alice: Api, bob: JSON) -> None:
    for response in (
        as_alice.rpc("credit_get_balance", {"p_user_id": bob["user_id"]}),
        as_alice.rpc_get("credit_get_balance", {"p_user_id": bob["user_id"]}),
        # an id with no account yet is refused too: no probing for who has an account
        as_alice.rpc("credit_get_balance", {"p_user_id": new_user_id()}),
    ):
        expect_error(
            response, 403, "42501", message="a signed-in user may read only their own balance"
        )


def test_user_can_call_nothing_but_own_readers(
    as_alice: Api,
    db: psycopg.Connection[Any],
    rpcs: dict[str, list[tuple[str, str]]],
    alice: JSON,
    bob: JSON,
) -> None:
    before = ledger_rows(db, alice["user_id"], bob["user_id"])
    refused = sorted(set(rpcs) - USER_RPCS)
    assert {"credit_add_credits", "credit_sweep_expired", "credit_verify_ledger"} <= set(refused)
    for function in refused:
        # on her own account (a user crediting herself) and on bob's
        for victim in (alice, bob):
            expect_error(
                as_alice.rpc(function, arguments(rpcs[function], victim)),
                403,
                "42501",
                message=permission_denied("function", function),
            )
    assert ledger_rows(db, alice["user_id"], bob["user_id"]) == before


def test_user_cannot_sweep_an_expired_grant(
    service: Api, as_alice: Api, anon: Api, db: psycopg.Connection[Any], alice: JSON
) -> None:
    """With work for the sweep waiting, a user's or anon's sweep changes nothing."""
    expires = datetime.now(UTC) + timedelta(seconds=1)
    expect_ok(
        service.rpc(
            "credit_add_credits",
            {"p_user_id": alice["user_id"], "p_amount": 2, "p_expires_at": expires.isoformat()},
        )
    )
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.2)
    before = ledger_rows(db, alice["user_id"])
    expect_error(as_alice.rpc("credit_sweep_expired", {}), 403, "42501")
    expect_error(anon.rpc("credit_sweep_expired", {}), 401, "42501")
    assert ledger_rows(db, alice["user_id"]) == before
    # the service role's sweep does expire it, so the refusals above were not vacuous
    expect_ok(service.rpc("credit_sweep_expired", {}))
    expiry = db.execute(
        "select amount from public.credit_transactions where user_id = %s and type = 'expiry'",
        (alice["user_id"],),
    ).fetchall()
    assert expiry == [(-2,)]


def test_user_token_wins_over_the_service_apikey(
    gateway: httpx.Client,
    service_role_key: str,
    as_alice: Api,
    db: psycopg.Connection[Any],
    alice: JSON,
) -> None:
    """An edge function forwarding a user's token with the service key acts as the user."""
    api = Api(gateway, service_role_key, bearer(as_alice))
    before = ledger_rows(db, alice["user_id"])
    expect_error(
        api.rpc("credit_add_credits", {"p_user_id": alice["user_id"], "p_amount": 1000}),
        403,
        "42501",
        message=permission_denied("function", "credit_add_credits"),
    )
    assert ledger_rows(db, alice["user_id"]) == before


# ---------------------------------------------------------------------------
# Tokens PostgREST must not trust
# ---------------------------------------------------------------------------

BAD_TOKENS: list[tuple[str, dict[str, Any], str]] = [
    # (name, make_user_token keyword arguments, PostgREST's message)
    ("forged signature", {"secret": OTHER_SECRET}, "JWSError JWSInvalidSignature"),
    (
        "alg none claiming service_role",
        {"alg": "none", "extra": {"role": "service_role"}},
        "JWSError JWSNoSignatures",
    ),
    ("expired 2 minutes ago", {"expires_in": -120}, "JWT expired"),
    (
        "service_role claim signed with a wrong key",
        {"secret": OTHER_SECRET, "extra": {"role": "service_role"}},
        "JWSError JWSInvalidSignature",
    ),
    (
        "issued 2 minutes in the future",
        {"extra": {"iat": "<now+120>"}},
        "JWTIssuedAtFuture",
    ),
    ("not valid before 2 minutes from now", {"extra": {"nbf": "<now+120>"}}, "JWTNotYetValid"),
]


@pytest.mark.parametrize(
    ("options", "message"), [case[1:] for case in BAD_TOKENS], ids=[case[0] for case in BAD_TOKENS]
)
def test_untrusted_token_is_401_and_writes_nothing(
    gateway: httpx.Client,
    anon_key: str,
    make_user_token: MakeUserToken,
    db: psycopg.Connection[Any],
    alice: JSON,
    options: dict[str, Any],
    message: str,
) -> None:
    now = int(time.time())
    extra = {
        key: now + 120 if value == "<now+120>" else value
        for key, value in options.get("extra", {}).items()
    }
    token = make_user_token(alice["user_id"], **{**options, "extra": extra})
    api = Api(gateway, anon_key, token)
    before = ledger_rows(db, alice["user_id"])
    for response in (
        api.rpc("credit_add_credits", {"p_user_id": alice["user_id"], "p_amount": 1000}),
        api.rpc("credit_get_balance", {"p_user_id": alice["user_id"]}),
        api.select("credit_transactions"),
    ):
        expect_error(response, 401, "PGRST301", message=message)
        assert response.headers["www-authenticate"] == (
            f'Bearer error="invalid_token", error_description="{message}"'
        )
    assert ledger_rows(db, alice["user_id"]) == before


def test_garbage_bearer_is_401(gateway: httpx.Client, anon_key: str) -> None:
    for token in ("not-a-jwt", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30"):
        response = Api(gateway, anon_key, token).select("credit_accounts")
        expect_error(response, 401, "PGRST301")


def test_clock_leeway_of_30_seconds(
    gateway: httpx.Client, anon_key: str, make_user_token: MakeUserToken, alice: JSON
) -> None:
    """PostgREST 12.0.2 allows 30 s of skew on exp and iat (documented, not a ducto choice)."""
    now = int(time.time())
    args = {"p_user_id": alice["user_id"]}
    slightly_expired = make_user_token(alice["user_id"], expires_in=-5)
    slightly_future = make_user_token(alice["user_id"], extra={"iat": now + 5})
    for token in (slightly_expired, slightly_future):
        expect_ok(Api(gateway, anon_key, token).rpc("credit_get_balance", args))
    far_future = make_user_token(alice["user_id"], extra={"iat": now + 60})
    expect_error(
        Api(gateway, anon_key, far_future).rpc("credit_get_balance", args),
        401,
        "PGRST301",
        message="JWTIssuedAtFuture",
    )


def test_other_hmac_algorithms_with_the_secret_are_accepted(
    gateway: httpx.Client, anon_key: str, make_user_token: MakeUserToken, alice: JSON
) -> None:
    """PostgREST 12.0.2 accepts HS384/HS512 signed with the secret, like HS256: no weaker."""
    for alg in ("HS384", "HS512"):
        with warnings.catch_warnings():
            # PyJWT warns when a stack's secret is shorter than the hash (RFC 7518 3.2)
            warnings.simplefilter("ignore", jwt.warnings.InsecureKeyLengthWarning)
            token = make_user_token(alice["user_id"], alg=alg)
        api = Api(gateway, anon_key, token)
        assert expect_ok(api.rpc("credit_get_balance", {"p_user_id": alice["user_id"]}))
        forged = make_user_token(alice["user_id"], alg=alg, secret=OTHER_SECRET)
        expect_error(
            Api(gateway, anon_key, forged).select("credit_accounts"),
            401,
            "PGRST301",
            message="JWSError JWSInvalidSignature",
        )


def test_token_without_sub_reads_no_balance_and_no_rows(
    gateway: httpx.Client,
    anon_key: str,
    make_user_token: MakeUserToken,
    db: psycopg.Connection[Any],
    alice: JSON,
) -> None:
    # a validly signed authenticated token without `sub`: auth.uid() is null
    token = make_user_token(alice["user_id"], extra={"sub": None})
    api = Api(gateway, anon_key, token)
    before = ledger_rows(db, alice["user_id"])
    expect_error(
        api.rpc("credit_get_balance", {"p_user_id": alice["user_id"]}),
        403,
        "42501",
        message="a signed-in user may read only their own balance",
    )
    for table in USER_TABLES:
        assert expect_rows(api.select(table)) == []
    expect_error(
        api.rpc("credit_add_credits", {"p_user_id": alice["user_id"], "p_amount": 1}),
        403,
        "42501",
    )
    assert ledger_rows(db, alice["user_id"]) == before


def test_token_without_role_runs_as_anon(
    gateway: httpx.Client, anon_key: str, jwt_secret: str, alice: JSON
) -> None:
    now = int(time.time())
    claims = {"sub": alice["user_id"], "aud": "authenticated", "iat": now, "exp": now + 60}
    api = Api(gateway, anon_key, jwt.encode(claims, jwt_secret, algorithm="HS256"))
    expect_error(
        api.select("credit_accounts"),
        401,
        "42501",
        message=permission_denied("table", "credit_accounts"),
    )
    expect_error(
        api.rpc("credit_get_balance", {"p_user_id": alice["user_id"]}),
        401,
        "42501",
        message=permission_denied("function", "credit_get_balance"),
    )


def test_token_with_null_role_is_refused(
    gateway: httpx.Client, anon_key: str, make_user_token: MakeUserToken, alice: JSON
) -> None:
    """PostgREST 12.0.2 turns a JSON null role into the role name "null"."""
    token = make_user_token(alice["user_id"], extra={"role": None})
    expect_error(
        Api(gateway, anon_key, token).select("credit_accounts"),
        400,
        "22023",
        message='role "null" does not exist',
    )


def test_token_with_a_role_authenticator_cannot_become(
    gateway: httpx.Client, anon_key: str, make_user_token: MakeUserToken, alice: JSON
) -> None:
    # signed with the real secret (the worst case): still no way to become postgres
    token = make_user_token(alice["user_id"], extra={"role": "postgres"})
    expect_error(
        Api(gateway, anon_key, token).select("credit_accounts"),
        403,
        "42501",
        message='permission denied to set role "postgres"',
    )
    token = make_user_token(alice["user_id"], extra={"role": "no_such_role"})
    expect_error(
        Api(gateway, anon_key, token).select("credit_accounts"),
        400,
        "22023",
        message='role "no_such_role" does not exist',
    )


def test_token_whose_sub_is_not_a_uuid_reads_nothing(
    gateway: httpx.Client, anon_key: str, make_user_token: MakeUserToken
) -> None:
    """auth.uid() casts sub to uuid, so such a token fails rather than matching a text id."""
    api = Api(gateway, anon_key, make_user_token("not-a-uuid"))
    body = expect_error(api.select("credit_accounts"), 400, "22P02")
    assert body["message"] == 'invalid input syntax for type uuid: "not-a-uuid"'
    expect_error(api.rpc("credit_get_balance", {"p_user_id": "not-a-uuid"}), 400, "22P02")


# ---------------------------------------------------------------------------
# Direct writes on the ledger tables: refused for every API role
# ---------------------------------------------------------------------------


def write_requests(table: str, victim: JSON) -> list[tuple[str, dict[str, str], Any]]:
    """(method, query, body) for an INSERT, UPDATE and DELETE of ``victim``'s rows."""
    now = datetime.now(UTC).isoformat()
    user = {"user_id": f"eq.{victim['user_id']}"}
    by_tx = {"transaction_id": f"eq.{victim['usage_tx']}"}
    by_account = {"account_id": f"eq.{victim['account_id']}"}
    inserts: dict[str, dict[str, Any]] = {
        "credit_accounts": {"user_id": new_user_id(), "balance": 1_000_000},
        "credit_transactions": {
            "account_id": victim["account_id"],
            "seq": 999,
            "user_id": victim["user_id"],
            "type": "adjustment",
            "amount": 1_000_000,
            "balance_after": 1_000_000,
            "created_at": now,
        },
        "credit_grants": {
            "account_id": victim["account_id"],
            "user_id": victim["user_id"],
            "transaction_id": victim["add_tx"],
            "category": "paid",
            "priority": 0,
            "amount": 1_000_000,
            "remaining": 1_000_000,
            "created_at": now,
        },
        "credit_grant_draws": {"transaction_id": victim["usage_tx"], "amount": -10},
        "credit_reservations": {
            "account_id": victim["account_id"],
            "user_id": victim["user_id"],
            "amount": 1,
            "operation_type": "x",
            "expires_at": now,
            "created_at": now,
        },
        "credit_idempotency_keys": {
            "account_id": victim["account_id"],
            "idempotency_key": "planted",
            "operation": "usage",
            "request": {},
            "result": {},
            "created_at": now,
        },
    }
    updates: dict[str, tuple[dict[str, str], dict[str, Any]]] = {
        "credit_accounts": (user, {"balance": 1_000_000}),
        "credit_transactions": (user, {"amount": 1_000_000}),
        "credit_grants": (user, {"remaining": 1_000_000}),
        "credit_grant_draws": (by_tx, {"amount": 0}),
        "credit_reservations": (user, {"status": "released"}),
        "credit_idempotency_keys": (by_account, {"result": {"planted": True}}),
    }
    filters = {
        "credit_grant_draws": by_tx,
        "credit_idempotency_keys": by_account,
    }
    where, patch = updates[table]
    return [
        ("POST", {}, inserts[table]),
        ("PATCH", where, patch),
        ("DELETE", filters.get(table, user), None),
        # no filter at all: PostgREST 12 sends it, the privileges refuse it (hosted Supabase
        # preloads safeupdate, which would refuse it first with 21000; the compat stack does not)
        ("PATCH", {}, patch),
        ("DELETE", {}, None),
    ]


@pytest.mark.parametrize("table", LEDGER_TABLES)
@pytest.mark.parametrize(
    ("caller", "status"), [("service_role", 403), ("user", 403), ("anon", 401)]
)
def test_direct_writes_on_ledger_tables_are_refused(
    service: Api,
    as_alice: Api,
    anon: Api,
    db: psycopg.Connection[Any],
    alice: JSON,
    bob: JSON,
    table: str,
    caller: str,
    status: int,
) -> None:
    api = {"service_role": service, "user": as_alice, "anon": anon}[caller]
    before = ledger_rows(db, alice["user_id"], bob["user_id"])
    for method, query, body in write_requests(table, alice):
        response = api.request(method, table, params=query, json_body=body)
        expect_error(response, status, "42501", message=permission_denied("table", table))
    # an upsert needs INSERT too
    response = api.request(
        "POST",
        table,
        json_body=write_requests(table, alice)[0][2],
        headers={"Prefer": "resolution=merge-duplicates"},
    )
    expect_error(response, status, "42501", message=permission_denied("table", table))
    assert ledger_rows(db, alice["user_id"], bob["user_id"]) == before


def test_private_schema_is_not_exposed(service: Api) -> None:
    not_exposed = "The schema must be one of the following: public, graphql_public"
    expect_error(
        service.rpc("clock", {}, headers={"Content-Profile": "credit_private"}),
        406,
        "PGRST106",
        message=not_exposed,
    )
    expect_error(
        service.request("GET", "rpc/clock", headers={"Accept-Profile": "credit_private"}),
        406,
        "PGRST106",
        message=not_exposed,
    )
    expect_error(
        service.request("GET", "credit_accounts", headers={"Accept-Profile": "credit_private"}),
        406,
        "PGRST106",
        message=not_exposed,
    )
    # and its helpers are not in public either
    for helper in ("clock", "fail", "whole", "lock_account", "append_transaction"):
        expect_error(service.rpc(helper, {}), 404, "PGRST202")


# ---------------------------------------------------------------------------
# S7-lite: the API roles cannot create objects (checked in SQL: PostgREST runs no DDL)
# ---------------------------------------------------------------------------

DDL = [
    "create table public.ducto_attack ()",
    "create view public.ducto_attack as select 1 as x",
    "create function public.ducto_attack() returns int language sql as 'select 1'",
    "create schema ducto_attack",
    "create table credit_private.ducto_attack ()",
    "create function credit_private.ducto_attack() returns int language sql as 'select 1'",
    "create table extensions.ducto_attack ()",
]


@pytest.mark.parametrize("role", ["anon", "authenticated", "service_role"])
@pytest.mark.parametrize("statement", DDL)
def test_api_roles_cannot_create_objects(database_url: str, role: str, statement: str) -> None:
    """The API roles have USAGE on public and extensions (and ducto's schema), not CREATE."""
    with psycopg.connect(database_url) as conn:
        conn.execute(f"set local role {role}")  # role is a constant
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)
        conn.rollback()


def test_temp_objects_cannot_shadow_the_ledger(database_url: str) -> None:
    """A session may create temp tables (TEMP is PostgreSQL's default for PUBLIC, as on
    Supabase); relations in pg_temp are searched first even with ``search_path = ''``, so
    a ledger function with an unqualified table name would write into them. It must not.
    """
    user = new_user_id()
    with psycopg.connect(database_url) as conn:
        columns = {
            table: conn.execute(
                """
                select string_agg(
                    format('%%I %%s', attname, format_type(atttypid, atttypmod)), ', '
                    order by attnum)
                from pg_catalog.pg_attribute
                where attrelid = %s::regclass and attnum > 0 and not attisdropped
                """,
                (f"public.{table}",),
            ).fetchone()
            for table in LEDGER_TABLES
        }
        conn.execute("set local role authenticated")
        for table, row in columns.items():
            assert row is not None
            conn.execute(
                sql.SQL("create temp table {} ({})").format(sql.Identifier(table), sql.SQL(row[0]))
            )
        # every write path, as the service role would call it
        conn.execute("set local role service_role")

        def one(query: str, *args: Any) -> tuple[Any, ...]:
            row = conn.execute(query, args).fetchone()
            assert row is not None
            return row

        assert one("select balance_after from public.credit_add_credits(%s, 7, %s)", user, "grant")
        assert one("select balance_after from public.credit_add_credits(%s, 3)", user) == (10,)
        usage = one(
            "select transaction_id, balance_after from public.credit_deduct_credits(%s, 2, 0,"
            " '{}', 'shadow-key')",
            user,
        )
        assert usage[1] == 8
        hold = one("select reservation_id from public.credit_reserve_credits(%s, 4)", user)[0]
        assert one("select balance_after from public.credit_settle_reservation(%s, 5)", hold) == (
            3,
        )
        other = one("select reservation_id from public.credit_reserve_credits(%s, 1)", user)[0]
        assert one("select status from public.credit_release_reservation(%s)", other) == (
            "released",
        )
        assert one(
            "select balance_after from public.credit_refund_transaction(%s, 1)", usage[0]
        ) == (4,)
        assert one("select dry_run from public.credit_sweep_expired(true)") == (True,)
        issues = conn.execute(
            "select * from public.credit_verify_ledger() where user_id = %s", (user,)
        ).fetchall()
        assert issues == []
        # and the read path, as the user herself
        conn.execute("set local role authenticated")
        conn.execute(
            "select set_config('request.jwt.claims', %s, true)",
            (f'{{"sub": "{user}", "role": "authenticated"}}',),
        )
        assert one("select balance, held from public.credit_get_balance(%s)", user) == (4, 0)
        assert one("select count(*) from public.credit_transactions") == (5,)

        conn.execute("reset role")
        for table in LEDGER_TABLES:
            shadow = conn.execute(f"select count(*) from pg_temp.{table}").fetchone()
            assert shadow == (0,), table
        journal = "select count(*) from public.credit_transactions where user_id = %s"
        assert one(journal, user) == (5,)
        conn.rollback()
