"""Both managers over a recording store, without a server.

- every argument the client can check is refused before any call is sent, with its code;
- a usage charge needs pricing loaded first;
- ``metered_call`` holds, then settles the recorded usage or releases the hold, in the
  calls it sends.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from ducto import (
    AsyncCreditManager,
    CreditManager,
    DeductionResult,
    DuctoError,
    InvalidInputError,
    MeteredCall,
    PricingEngine,
    PricingNotLoadedError,
    ReleaseResult,
    ReserveResult,
    UsageMetrics,
)
from ducto._rpc import RpcCall

NOW = datetime(2026, 1, 1, tzinfo=UTC)
NAIVE = datetime(2026, 1, 1)
TEAM = str(uuid.uuid4())
HOLD_ID, CHARGE_ID = str(uuid.uuid4()), str(uuid.uuid4())
USAGE = UsageMetrics(model="m", input_tokens=10)
ENGINE = PricingEngine({"models": [{"model": "m", "input": 1000, "output": 1000}], "default": None})
HOLD = ReserveResult(HOLD_ID, "u", 7, "usage", NOW, 3, NOW, False)
RELEASED = ReleaseResult(HOLD_ID, "u", 7, "released", 10, False)
SETTLED = DeductionResult(CHARGE_ID, HOLD_ID, "u", 9, 2, 1, 1, NOW, False, 1)
#: rows a test's store answers, by function
ANSWERS = {
    "credit_reserve_credits": dataclasses.asdict(HOLD),
    "credit_release_reservation": dataclasses.asdict(RELEASED),
    "credit_settle_usage": dataclasses.asdict(SETTLED),
}


class Store:
    """Records every call and answers from ``ANSWERS``."""

    def __init__(self) -> None:
        self.calls: list[RpcCall] = []

    def call(self, call: RpcCall) -> list[dict[str, Any]]:
        self.calls.append(call)
        return [ANSWERS[call.function]]


class AsyncStore(Store):
    async def call(self, call: RpcCall) -> list[dict[str, Any]]:  # type: ignore[override]
        return super().call(call)


class Manager:
    """A CreditManager, or an AsyncCreditManager whose calls are run to completion."""

    def __init__(self, flavour: str, engine: PricingEngine | None = None) -> None:
        self.store = Store() if flavour == "sync" else AsyncStore()
        cls = CreditManager if flavour == "sync" else AsyncCreditManager
        self.target = cls(cast(Any, self.store), engine)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.target, name)

        def run(*args: Any, **kwargs: Any) -> Any:
            result = method(*args, **kwargs)
            if inspect.isasyncgen(result):  # an export: every row it yields
                return asyncio.run(collect(result))
            if inspect.isgenerator(result):
                return list(result)
            return asyncio.run(result) if inspect.iscoroutine(result) else result

        return run


async def collect(rows: AsyncIterator[Any]) -> list[Any]:
    return [row async for row in rows]


@pytest.fixture(params=["sync", "async"])
def flavour(request: pytest.FixtureRequest) -> str:
    return cast(str, request.param)


Use = Callable[[Any], object]
#: a use of the manager, and the code of the error it must raise
Case = tuple[Use, str]

REFUSED: dict[str, Case] = {
    "amount 0": (lambda m: m.add_credits("u", 0), "DC001"),
    "negative amount": (lambda m: m.add_credits("u", -1), "DC001"),
    "amount past 2^53-1": (lambda m: m.add_credits("u", 2**53), "DC001"),
    "fractional amount": (lambda m: m.add_credits("u", 1.5), "DC001"),
    "bool amount": (lambda m: m.add_credits("u", True), "DC001"),
    "blank user": (lambda m: m.add_credits(" ", 1), "DC002"),
    "user not a string": (lambda m: m.get_balance(7), "DC002"),
    "NaN in metadata": (lambda m: m.add_credits("u", 1, metadata={"x": float("nan")}), "DC003"),
    "metadata not JSON": (lambda m: m.add_credits("u", 1, metadata={"x": object()}), "DC003"),
    "metadata not a mapping": (lambda m: m.add_credits("u", 1, metadata=[1]), "DC003"),
    "key not a string": (lambda m: m.add_credits("u", 1, idempotency_key=5), "DC004"),
    "naive expiry": (lambda m: m.add_credits("u", 1, expires_at=NAIVE), "DC005"),
    "reserve 0": (lambda m: m.reserve_credits("u", 0), "DC001"),
    "negative floor": (lambda m: m.reserve_credits("u", 1, min_balance=-1), "DC001"),
    "settle no hold": (lambda m: m.settle_reservation("", 1), "DC006"),
    "settle negative": (lambda m: m.settle_reservation(HOLD_ID, -1), "DC001"),
    "release no hold": (lambda m: m.release_reservation(""), "DC006"),
    "refund no charge": (lambda m: m.refund_credits(""), "DC006"),
    "refund 0": (lambda m: m.refund_credits(CHARGE_ID, 0), "DC001"),
    "metrics not UsageMetrics": (lambda m: m.calculate_cost({"model": "m"}), "DC007"),
    "pricing not a config": (lambda m: m.publish_pricing({"default": None}), "DC060"),
    "bad pricing dict": (lambda m: m.publish_pricing_from_dict({"models": []}), "DC060"),
    "plan without id": (lambda m: m.upsert_plan("", "Pro"), "DC006"),
    "features not a mapping": (lambda m: m.upsert_plan("pro", "Pro", [1]), "DC006"),
    "allowance 0": (lambda m: m.upsert_plan("pro", "Pro", allowance=0), "DC001"),
    "blank feature": (lambda m: m.check_feature("u", ""), "DC006"),
    "naive window": (lambda m: m.aggregate_stats(NAIVE, NOW), "DC006"),
    "top 0 users": (lambda m: m.top_users(0, NOW, NOW), "DC006"),
    "naive instant": (lambda m: m.balance_at("u", NAIVE), "DC006"),
    "instant not a datetime": (lambda m: m.balance_at("u", "2026-01-01"), "DC006"),
    "balance_at blank user": (lambda m: m.balance_at("", NOW), "DC002"),
    "naive statement end": (lambda m: m.statement("u", NOW, NAIVE), "DC006"),
    "statement blank user": (lambda m: m.statement(" ", NOW, NOW), "DC002"),
    "top 1001 users": (lambda m: m.top_users(1001, NOW, NOW), "DC006"),
    "naive export start": (lambda m: m.export_journal(NAIVE, NOW), "DC006"),
    "export page of 0": (lambda m: m.export_journal(NOW, NOW, page_size=0), "DC006"),
    "export page of 10001": (lambda m: m.export_journal(NOW, NOW, page_size=10_001), "DC006"),
    "export blank user": (lambda m: m.export_journal(NOW, NOW, " "), "DC002"),
    "team not a UUID": (lambda m: m.upsert_team("team-1", "Team"), "DC006"),
    "negative team floor": (lambda m: m.upsert_team(TEAM, "Team", -1), "DC001"),
    "member limit": (lambda m: m.set_team_member(TEAM, "u", spend_limit=-1), "DC001"),
    "remove blank member": (lambda m: m.remove_team_member(TEAM, ""), "DC002"),
    "alert of nobody": (lambda m: m.set_alert(threshold=5), "DC006"),
    "alert of a user and a plan": (lambda m: m.set_alert("u", plan_id="pro", threshold=5), "DC006"),
    "alert threshold 0": (lambda m: m.set_alert("u", threshold=0), "DC001"),
    "alert percent 0": (lambda m: m.set_alert("u", percent=0), "DC006"),
    "delete alert no id": (lambda m: m.delete_alert("alert-1"), "DC006"),
    "events of unknown type": (lambda m: m.list_events(types=["balance.lo"]), "DC006"),
    "events after no id": (lambda m: m.list_events(after="x"), "DC006"),
    "events limit 0": (lambda m: m.list_events(limit=0), "DC006"),
    "poll after no id": (lambda m: m.poll_events("x"), "DC006"),
    "poll limit 1001": (lambda m: m.poll_events(limit=1001), "DC006"),
    "expiring days 0": (lambda m: m.set_grant_expiring_days(0), "DC006"),
    "endpoint blank url": (lambda m: m.set_event_endpoint(" ", "s" * 16), "DC006"),
    "claim 0": (lambda m: m.claim_event_deliveries(0), "DC006"),
    "finish no claim": (lambda m: m.finish_event_delivery("c", True), "DC006"),
    "deliver timeout past lease": (lambda m: m.deliver_events(timeout=60.0), "DC006"),
    "dispatch without emitter": (lambda m: m.dispatch_events(), "DC006"),
}
PRICED: dict[str, Case] = {
    "deduct metrics": (lambda m: m.deduct("u", {"model": "m"}), "DC007"),
    "deduct blank user": (lambda m: m.deduct("", USAGE), "DC002"),
    "blank job": (lambda m: m.deduct_fixed("u", ""), "DC006"),
    "team charge": (lambda m: m.deduct_team("team-1", "u", USAGE), "DC006"),
}
UNPRICED: dict[str, Use] = {
    "deduct": lambda m: m.deduct("u", USAGE),
    "deduct_fixed": lambda m: m.deduct_fixed("u", "report"),
    "deduct_team": lambda m: m.deduct_team(TEAM, "u", USAGE),
}


def refused(manager: Manager, use: Use) -> DuctoError:
    """The error ``use`` raised on ``manager``."""
    with pytest.raises(DuctoError) as caught:
        use(manager)
    return caught.value


@pytest.mark.parametrize("case", REFUSED.values(), ids=REFUSED.keys())
def test_arguments_are_refused_before_any_call(flavour: str, case: Case) -> None:
    manager = Manager(flavour)
    error = refused(manager, case[0])
    assert isinstance(error, InvalidInputError) and error.code == case[1]
    assert manager.store.calls == []


@pytest.mark.parametrize("case", PRICED.values(), ids=PRICED.keys())
def test_usage_arguments_are_refused_before_any_call(flavour: str, case: Case) -> None:
    manager = Manager(flavour, ENGINE)
    assert refused(manager, case[0]).code == case[1]
    assert manager.store.calls == []


@pytest.mark.parametrize("use", UNPRICED.values(), ids=UNPRICED.keys())
def test_a_usage_charge_needs_pricing_first(flavour: str, use: Use) -> None:
    manager = Manager(flavour)
    assert isinstance(refused(manager, use), PricingNotLoadedError)
    assert manager.store.calls == []


# ---------------------------------------------------------------- metered_call


def metered(
    manager: Manager, estimate: UsageMetrics | int, usage: UsageMetrics | None
) -> MeteredCall:
    """A metered_call block that records ``usage`` (unless None), in either flavour."""
    target = manager.target
    if isinstance(target, CreditManager):
        with target.metered_call("u", estimate, idempotency_key="req-1") as meter:
            if usage is not None:
                meter.record(usage)
        return meter

    async def run() -> MeteredCall:
        async with target.metered_call("u", estimate, idempotency_key="req-1") as meter:
            if usage is not None:
                meter.record(usage)
        return meter

    return asyncio.run(run())


def test_metered_call_refuses_its_estimate_before_any_call(flavour: str) -> None:
    manager = Manager(flavour)
    with pytest.raises(InvalidInputError) as caught:
        metered(manager, 0, USAGE)
    assert caught.value.code == "DC001"
    with pytest.raises(PricingNotLoadedError):
        metered(manager, USAGE, USAGE)  # usage is priced by the engine: none is loaded
    assert manager.store.calls == []


def test_metered_call_settles_the_recorded_usage(flavour: str) -> None:
    manager = Manager(flavour, ENGINE)
    meter = metered(manager, USAGE, UsageMetrics(model="m", input_tokens=9000))
    hold, settle = manager.store.calls
    # the estimate is priced by the engine: 10 tokens at 1000 per million is 1 credit
    assert (hold.function, hold.args["p_amount"]) == ("credit_reserve_credits", 1)
    assert settle.function == "credit_settle_usage"
    assert settle.args["p_reservation_id"] == HOLD.reservation_id
    assert settle.args["p_metrics"] == {**USAGE.to_json(), "input_tokens": 9000}
    assert settle.args["p_idempotency_key"] == "req-1"
    assert meter.result == SETTLED


def test_metered_call_without_usage_releases_the_hold_and_says_so(flavour: str) -> None:
    manager = Manager(flavour)
    with pytest.raises(InvalidInputError, match="without record") as caught:
        metered(manager, 5, None)
    assert caught.value.code == "DC007"
    assert [call.function for call in manager.store.calls] == [
        "credit_reserve_credits",
        "credit_release_reservation",
    ]
