"""Limits on the client side, without a server: the refusals map to their typed errors
with the window, the limit and what is used; set_limits' arguments are checked before any
call and sent as the ledger's JSON."""

from __future__ import annotations

import json

import pytest

from ducto import (
    CreditLineOverdueError,
    InsufficientCreditsError,
    InvalidInputError,
    LimitExceededError,
    SpendWindow,
    TooManyHoldsError,
    _rpc,
)
from ducto.errors import error_from_sqlstate

DETAIL = {
    "user_id": "u",
    "window": {"period": "hours", "hours": 24, "model_pattern": "img-*", "window_start": "x"},
    "spend_limit": 100,
    "used": 90,
    "held": 8,
    "needed": 5,
}


def test_a_window_refusal_names_the_window_and_the_numbers() -> None:
    error = error_from_sqlstate("DC085", "spending limit exceeded", json.dumps(DETAIL))
    assert isinstance(error, LimitExceededError)
    assert isinstance(error, InsufficientCreditsError)
    assert error.window == DETAIL["window"]
    assert (error.spend_limit, error.used, error.held, error.needed) == (100, 90, 8, 5)


def test_a_refusal_without_detail_has_no_numbers() -> None:
    error = error_from_sqlstate("DC085", "spending limit exceeded")
    assert isinstance(error, LimitExceededError)
    assert (error.window, error.spend_limit, error.used) == ({}, None, None)


def test_the_other_limit_codes() -> None:
    assert type(error_from_sqlstate("DC086", "too many holds")) is TooManyHoldsError
    assert not isinstance(error_from_sqlstate("DC086", "x"), InsufficientCreditsError)
    overdue = error_from_sqlstate("DC087", "overdue")
    assert type(overdue) is CreditLineOverdueError
    assert isinstance(overdue, InsufficientCreditsError)


def test_set_limits_sends_the_ledgers_json() -> None:
    call = _rpc.set_limits(
        "u",
        [SpendWindow("week", 7), SpendWindow("hours", 3, hours=2, model_pattern="gpt-*")],
        2,
        10,
        60,
    )
    assert call.function == "credit_set_limits" and call.retry_safe
    assert call.args["p_windows"] == [
        {"period": "week", "spend_limit": 7},
        {"period": "hours", "spend_limit": 3, "hours": 2, "model_pattern": "gpt-*"},
    ]
    assert (call.args["p_max_active_holds"], call.args["p_credit_line"]) == (2, 10)


@pytest.mark.parametrize(
    ("windows", "says"),
    [
        ([SpendWindow("year", 1)], "windows[0].period must be one of"),
        ([SpendWindow("day", -1)], "windows[0].spend_limit must be a whole number"),
        ([SpendWindow("day", 1.5)], "windows[0].spend_limit must be a whole number"),  # type: ignore[arg-type]
        ([SpendWindow("hours", 1, hours=True)], "windows[0].hours must be an int"),
        ([SpendWindow("day", 1, model_pattern=" ")], "windows[0].model_pattern"),
        ([{"period": "day", "spend_limit": 1}], "windows[0] must be a SpendWindow"),
        ("day:1", "windows must be a sequence of SpendWindow"),
    ],
)
def test_bad_windows_are_refused_before_any_call(windows: object, says: str) -> None:
    with pytest.raises(InvalidInputError) as refused:
        _rpc.set_limits("u", windows, None, None, None)  # type: ignore[arg-type]
    assert says in refused.value.message


def test_bad_numbers_are_refused_before_any_call() -> None:
    with pytest.raises(InvalidInputError, match="credit_line"):
        _rpc.set_limits("u", [], None, -1, None)
    with pytest.raises(InvalidInputError, match="max_active_holds"):
        _rpc.set_limits("u", [], "2", None, None)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="credit_line"):
        _rpc.set_plan_credit_line("free", -5, None)
