"""Scoped credits in the client (docs/scopes.md): ``add_credits(scope=...)`` checks the
shape of a scope and sends it as ``text[]`` to every store; a balance's breakdown becomes
typed results, and a balance read from an older schema has none."""

from __future__ import annotations

import json

import pytest

from ducto import BalanceResult, InvalidInputError, ScopeBalance, _rpc
from ducto.interface.postgres import _query
from ducto.interface.supabase import _request
from ducto.models import from_row


def test_an_unscoped_grant_is_the_call_it_always_was() -> None:
    call = _rpc.add_credits("u", 5, "adjustment", None, None)
    assert "p_scope" not in call.args


def test_a_scope_is_sent_as_a_text_array() -> None:
    call = _rpc.add_credits("u", 5, "adjustment", None, None, scope=["model:a*", "job:b"])
    assert call.args["p_scope"] == ("model:a*", "job:b")
    # psycopg: a PostgreSQL array (a plain list would be sent as jsonb)
    _, params = _query(call)
    assert type(params["p_scope"]) is list and params["p_scope"] == ["model:a*", "job:b"]
    # PostgREST: a JSON array
    _, body = _request(call)
    assert json.loads(body)["p_scope"] == ["model:a*", "job:b"]


@pytest.mark.parametrize(
    "scope",
    ["model:gpt-4o", b"model:gpt-4o", [1], ["model:a", None], ["model:\x00"], {"model": "a"}],
)
def test_a_scope_of_the_wrong_shape_is_refused_before_any_call(scope: object) -> None:
    with pytest.raises(InvalidInputError) as refused:
        _rpc.add_credits("u", 5, "adjustment", None, None, scope=scope)  # type: ignore[arg-type]
    assert refused.value.code == "DC006"


def test_the_balance_breaks_down_per_scope() -> None:
    row = {
        "user_id": "u",
        "balance": 12,
        "held": 0,
        "available": 12,
        "scopes": [
            {"scope": None, "remaining": 2},
            {"scope": ["model:gpt-image-*"], "remaining": 10},
        ],
    }
    assert from_row(BalanceResult, row).scopes == (
        ScopeBalance(scope=None, remaining=2),
        ScopeBalance(scope=["model:gpt-image-*"], remaining=10),
    )


def test_a_balance_from_an_older_schema_has_no_breakdown() -> None:
    row = {"user_id": "u", "balance": 12, "held": 0, "available": 12}
    assert from_row(BalanceResult, row) == BalanceResult("u", 12, 0, 12)
    assert from_row(BalanceResult, row).scopes == ()
