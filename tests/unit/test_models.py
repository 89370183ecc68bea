"""Results and errors without a server: a row becomes the same frozen result whichever
store read it, and every SQLSTATE becomes its exception."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from ducto import (
    CostResult,
    DailySpendRow,
    DeductionResult,
    DuctoError,
    PricingConfigData,
    PricingVersion,
    StatementResult,
    StoreError,
)
from ducto.errors import SQLSTATE_ERRORS, error_from_sqlstate
from ducto.models import from_row

RESERVATION = uuid.UUID("5f1c1f57-5e0b-4b1e-9d7e-0f4a4d1d2a3b")
WHEN = datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)
CONFIG = {"models": [{"model": "m", "input": 1.5, "output": 2}], "default": None}

# (result class, the row as psycopg reads it, the same row as PostgREST's JSON)
ROWS: list[tuple[type[Any], dict[str, Any], dict[str, Any]]] = [
    (
        DeductionResult,
        {
            "transaction_id": None,
            "reservation_id": RESERVATION,
            "user_id": "u",
            "amount": 0,
            "overage": 0,
            "balance_after": 5,
            "available_after": 5,
            "created_at": WHEN,
            "is_replay": False,
            "pricing_version": None,
        },
        {
            "transaction_id": None,
            "reservation_id": str(RESERVATION),
            "user_id": "u",
            "amount": 0,
            "overage": 0,
            "balance_after": 5,
            "available_after": 5,
            "created_at": "2026-03-04T05:06:07.89+00:00",
            "is_replay": False,
            "pricing_version": None,
        },
    ),
    (
        CostResult,
        {
            "pricing_version": 3,
            "model": "m",
            "matched": "m",
            "exact_cost": Decimal("0.0015"),
            "credits": 1,
            "min_balance": 0,
        },
        {
            "pricing_version": 3,
            "model": "m",
            "matched": "m",
            "exact_cost": Decimal("0.0015"),  # the HTTP store parses fractions as Decimal
            "credits": 1,
            "min_balance": 0,
        },
    ),
    (
        DailySpendRow,
        {
            "day": date(2026, 3, 4),
            "spent": 10,
            "refunded": 1,
            "net_spent": 9,
            "charges": 2,
            "users": 1,
        },
        {"day": "2026-03-04", "spent": 10, "refunded": 1, "net_spent": 9, "charges": 2, "users": 1},
    ),
    (
        PricingVersion,
        {"version": 3, "label": None, "config": CONFIG, "is_active": True, "created_at": WHEN},
        {
            "version": 3,
            "label": None,
            "config": CONFIG,
            "is_active": True,
            "created_at": "2026-03-04T05:06:07.89Z",
        },
    ),
    (
        StatementResult,
        {
            "user_id": "u",
            "period_start": WHEN,
            "period_end": WHEN,
            "opening_balance": 5,
            "closing_balance": 7,
            # jsonb: psycopg parses it, so times inside are ISO text in both rows
            "by_type": [{"type": "grant", "count": 1, "amount": 2}],
            "by_model": [],
            "by_category": [{"category": "paid", "count": 1, "amount": 2}],
            "expiring": [
                {
                    "grant_id": str(RESERVATION),
                    "category": "paid",
                    "remaining": 2,
                    "expires_at": "2026-03-04T05:06:07.89+00:00",
                }
            ],
            "expiring_total": 2,
        },
        {
            "user_id": "u",
            "period_start": "2026-03-04T05:06:07.89+00:00",
            "period_end": "2026-03-04T05:06:07.89Z",
            "opening_balance": 5,
            "closing_balance": 7,
            "by_type": [{"type": "grant", "count": 1, "amount": 2}],
            "by_model": [],
            "by_category": [{"category": "paid", "count": 1, "amount": 2}],
            "expiring": [
                {
                    "grant_id": str(RESERVATION),
                    "category": "paid",
                    "remaining": 2,
                    "expires_at": "2026-03-04T05:06:07.89Z",
                }
            ],
            "expiring_total": 2,
        },
    ),
]


@pytest.mark.parametrize(
    ("cls", "psycopg_row", "json_row"), ROWS, ids=[r[0].__name__ for r in ROWS]
)
def test_a_row_is_the_same_result_from_either_store(
    cls: type[Any], psycopg_row: dict[str, Any], json_row: dict[str, Any]
) -> None:
    result = from_row(cls, psycopg_row)
    assert from_row(cls, json_row) == result
    with pytest.raises(dataclasses.FrozenInstanceError):
        # frozen, like the journal row it reports
        setattr(result, dataclasses.fields(result)[0].name, None)


def test_ids_are_text_and_times_are_aware() -> None:
    result = from_row(DeductionResult, ROWS[0][2])
    assert result.reservation_id == str(RESERVATION)  # psycopg reads a uuid as UUID
    assert result.created_at == WHEN and result.created_at.tzinfo is not None


def test_a_jsonb_config_becomes_a_pricing_config() -> None:
    version = from_row(PricingVersion, ROWS[3][2])
    assert version.config == PricingConfigData.parse(CONFIG)
    assert version.created_at == WHEN


def test_a_statement_holds_typed_totals() -> None:
    statement = from_row(StatementResult, ROWS[4][2])
    assert statement.by_type[0].amount == 2 and statement.by_model == ()
    assert statement.expiring[0].expires_at == WHEN
    assert statement.opening_balance + sum(t.amount for t in statement.by_type) == 7


def test_a_row_without_a_field_is_refused() -> None:
    row = dict(ROWS[0][1])
    del row["overage"]
    with pytest.raises(KeyError, match="overage"):
        from_row(DeductionResult, row)


@pytest.mark.parametrize("code", sorted(SQLSTATE_ERRORS))
def test_every_sqlstate_maps_to_its_exception(code: str) -> None:
    error = error_from_sqlstate(code, "message", '{"needed": 6}', "hint")
    assert type(error) is SQLSTATE_ERRORS[code]
    assert (error.code, error.message, error.details, error.hint) == (
        code,
        "message",
        {"needed": 6},
        "hint",
    )


@pytest.mark.parametrize("code", [None, "", "XX000", "P0001"])
def test_an_unknown_sqlstate_is_a_store_error(code: str | None) -> None:
    error = error_from_sqlstate(code, "boom", "", "")
    assert type(error) is StoreError
    assert (error.code, error.detail, error.hint) == (code, None, None)


@pytest.mark.parametrize("detail", [None, "", "not json", "[1, 2]", "7"])
def test_details_is_a_dict_or_empty(detail: str | None) -> None:
    assert DuctoError("x", detail=detail).details == {}
