"""Voids and price mappings on the client side, without a server: arguments are checked
before any call, and the ledger's refusals map to their typed errors."""

from __future__ import annotations

import uuid

import pytest

from ducto import InvalidInputError, NotFoundError, RefundError, _rpc
from ducto.errors import error_from_sqlstate


def test_a_void_is_sent_as_the_ledger_names_it() -> None:
    grant = uuid.uuid4()
    call = _rpc.void_grant(grant, 5, "mistake", "k1")
    assert call.function == "credit_void_grant"
    assert call.args == {
        "p_grant_id": str(grant),
        "p_amount": 5,
        "p_reason": "mistake",
        "p_idempotency_key": "k1",
    }
    # only a keyed void may be sent twice
    assert call.retry_safe
    assert not _rpc.void_grant(grant, None, None, None).retry_safe


def test_bad_void_arguments_are_refused_before_any_call() -> None:
    with pytest.raises(InvalidInputError):
        _rpc.void_grant("not-a-uuid", None, None, None)
    with pytest.raises(InvalidInputError, match="amount"):
        _rpc.void_grant(uuid.uuid4(), 0, None, None)
    with pytest.raises(InvalidInputError, match="amount"):
        _rpc.void_grant(uuid.uuid4(), 2.5, None, None)  # type: ignore[arg-type]


def test_bad_price_arguments_are_refused_before_any_call() -> None:
    with pytest.raises(InvalidInputError, match="price_id"):
        _rpc.set_price_plan(" ", "pro")
    with pytest.raises(InvalidInputError, match="plan_id"):
        _rpc.set_price_plan("price_1", "")
    assert _rpc.set_price_plan("price_1", None).args == {
        "p_price_id": "price_1",
        "p_plan_id": None,
    }


def test_the_ledger_refusals_are_typed() -> None:
    assert isinstance(error_from_sqlstate("DC120", "grant not found", "{}"), NotFoundError)
    assert isinstance(error_from_sqlstate("DC121", "nothing left", "{}"), RefundError)
    assert isinstance(error_from_sqlstate("DC122", "unknown customer", "{}"), NotFoundError)
    assert isinstance(error_from_sqlstate("DC123", "another user", "{}"), InvalidInputError)
