"""The natural calls on a charge's result type-check under ``mypy --strict`` (which checks
this file) and do what they say.

A charge's ``transaction_id`` is ``str | None`` (None: 0 credits were charged, so the
journal has no row), and ``refund_credits`` takes it as it is: the refund of a charge of
0 credits is a ``RefundError`` at run time, not a type error at every call site.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Any, assert_type, cast

import pytest

from ducto import (
    AsyncCreditManager,
    CreditManager,
    DeductionResult,
    PricingEngine,
    RefundError,
    RefundResult,
    TeamDeductionResult,
)
from ducto._rpc import RpcCall

NOW = datetime(2026, 1, 1, tzinfo=UTC)
CHARGE_ID, TEAM = str(uuid.uuid4()), uuid.uuid4()
CHARGE = DeductionResult(CHARGE_ID, None, "u", 9, 0, 1, 1, NOW, False, None)
FREE = dataclasses.replace(CHARGE, transaction_id=None, amount=0)
ENGINE = PricingEngine({"models": [{"model": "m", "input": 1, "output": 1}], "default": None})
REFUND = RefundResult(str(uuid.uuid4()), CHARGE_ID, "u", 9, 9, 0, 10, NOW, False)


def refund_a_fixed_job(manager: CreditManager) -> RefundResult:
    result = manager.deduct_fixed("u", "report")
    assert_type(result.transaction_id, str | None)
    return manager.refund_credits(result.transaction_id, reason="job failed")


def refund_a_settled_hold(manager: CreditManager) -> RefundResult:
    hold = manager.reserve_credits("u", 10)
    settled = manager.settle_reservation(uuid.UUID(hold.reservation_id), 9)
    return manager.refund_credits(settled.transaction_id, 4)


def refund_a_team_charge(manager: CreditManager, charge: TeamDeductionResult) -> RefundResult:
    return manager.refund_credits(charge.transaction_id)


async def refund_async(manager: AsyncCreditManager) -> RefundResult:
    result = await manager.deduct_fixed("u", "report")
    return await manager.refund_credits(result.transaction_id)


class Store:
    """Answers a fixed-job charge with ``charge`` and a refund with REFUND."""

    def __init__(self, charge: DeductionResult) -> None:
        self.answers = {
            "credit_deduct_fixed": dataclasses.asdict(charge),
            "credit_refund_transaction": dataclasses.asdict(REFUND),
        }
        self.calls: list[RpcCall] = []

    def call(self, call: RpcCall) -> list[dict[str, Any]]:
        self.calls.append(call)
        return [self.answers[call.function]]


class AsyncStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def call(self, call: RpcCall) -> list[dict[str, Any]]:
        return self.store.call(call)


def managers(charge: DeductionResult) -> tuple[Store, CreditManager, AsyncCreditManager]:
    """A recording store, and a manager of each flavour over it (pricing loaded)."""
    store = Store(charge)
    return (
        store,
        CreditManager(cast(Any, store), ENGINE),
        AsyncCreditManager(cast(Any, AsyncStore(store)), ENGINE),
    )


def test_a_charge_is_refunded_by_its_transaction_id() -> None:
    store, manager, async_manager = managers(CHARGE)
    assert refund_a_fixed_job(manager) == REFUND
    assert asyncio.run(refund_async(async_manager)) == REFUND
    refunds = [call for call in store.calls if call.function == "credit_refund_transaction"]
    assert [call.args["p_transaction_id"] for call in refunds] == [CHARGE_ID, CHARGE_ID]


def test_a_charge_of_0_credits_has_nothing_to_refund() -> None:
    store, manager, async_manager = managers(FREE)
    with pytest.raises(RefundError, match="nothing to refund"):
        refund_a_fixed_job(manager)
    with pytest.raises(RefundError, match="nothing to refund"):
        asyncio.run(refund_async(async_manager))
    assert [call.function for call in store.calls] == ["credit_deduct_fixed"] * 2
