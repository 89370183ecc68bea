"""HTTP statuses that mean something, and a signed-in user's reads without an id.

Through PostgREST a ledger refusal answers with the status of its meaning (402, 403, 404,
409, 422; ``helpers_api.LEDGER_STATUS`` is the table docs/ledger.md documents) and keeps
ducto's code; SQL clients see ducto's code as the SQLSTATE, as always. One request per
status class here; every ducto error's own status is checked in test_postgrest_rpc.py.
"""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import psycopg
import pytest
from conftest import MakeUserToken
from helpers_api import (
    Api,
    error_details,
    expect_error,
    expect_ok,
    ledger_rows,
    new_user_id,
    status_of,
)


def test_each_kind_of_refusal_has_its_status_and_keeps_its_code(
    service: Api, db: psycopg.Connection[Any]
) -> None:
    user = new_user_id()
    expect_ok(service.rpc("credit_add_credits", {"p_user_id": user, "p_amount": 5}))
    charge = expect_ok(
        service.rpc(
            "credit_deduct_credits",
            {"p_user_id": user, "p_amount": 2, "p_idempotency_key": "order-1"},
        )
    )
    before = ledger_rows(db, user)
    cases: list[tuple[str, dict[str, Any], str, int]] = [
        # the account cannot pay: 402 Payment Required
        ("credit_deduct_credits", {"p_user_id": user, "p_amount": 50}, "DC010", 402),
        # nothing by that id: 404
        ("credit_refund_transaction", {"p_transaction_id": str(uuid.uuid4())}, "DC030", 404),
        # a used key with other parameters, a refund beyond the charge: 409 Conflict
        (
            "credit_deduct_credits",
            {"p_user_id": user, "p_amount": 3, "p_idempotency_key": "order-1"},
            "DC020",
            409,
        ),
        (
            "credit_refund_transaction",
            {"p_transaction_id": charge["transaction_id"], "p_amount": 3},
            "DC050",
            409,
        ),
        # an argument refused: 422
        ("credit_add_credits", {"p_user_id": user, "p_amount": 1.5}, "DC001", 422),
    ]
    for function, args, code, status in cases:
        assert status_of(code) == status
        body = expect_error(service.rpc(function, args), status, code)
        assert isinstance(error_details(body), dict)
    assert ledger_rows(db, user) == before


def test_sql_clients_still_see_ductos_code_as_the_sqlstate(database_url: str) -> None:
    with (
        psycopg.connect(database_url, autocommit=True) as conn,
        pytest.raises(psycopg.Error) as refused,
    ):
        conn.execute("select credit_deduct_credits(%s, 1)", (new_user_id(),))
    assert refused.value.sqlstate == "DC010"


def test_a_signed_in_user_reads_their_own_balance_and_plan_without_an_id(
    gateway: httpx.Client,
    anon_key: str,
    make_user_token: MakeUserToken,
    service: Api,
) -> None:
    user = new_user_id()
    expect_ok(service.rpc("credit_add_credits", {"p_user_id": user, "p_amount": 7}))
    me = Api(gateway, anon_key, make_user_token(user))
    balance = expect_ok(me.rpc("credit_get_balance", {}))
    assert (balance["user_id"], balance["balance"]) == (user, 7)
    assert expect_ok(me.rpc_get("credit_get_balance"))["balance"] == 7
    assert expect_ok(me.rpc("credit_get_user_plan"))["user_id"] == user
    # naming someone else is still refused
    expect_error(me.rpc("credit_get_balance", {"p_user_id": new_user_id()}), 403, "42501")
    # the service role has no user of its own: it must name one
    refused = expect_error(service.rpc("credit_get_balance"), 422, "DC002")
    assert "user_id is required" in refused["message"]
