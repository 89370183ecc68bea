"""High-level credit manager.

Orchestrates the credit lifecycle over a store: every method validates its arguments,
sends one RPC through the store, and returns a typed result, or raises the typed
exception for the SQLSTATE the ledger answered. :class:`AsyncCreditManager` is the same
over an async store; both build their calls and parse their answers with one core
(``ducto._rpc``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from typing import Any

from ducto import _rpc
from ducto.errors import InsufficientCreditsError, InvalidInputError, PricingNotLoadedError
from ducto.interface.base import AsyncCreditStore, CreditStore
from ducto.models import (
    AddCreditsResult,
    BalanceResult,
    CreditMetadata,
    DeductionResult,
    LedgerIssue,
    RefundResult,
    ReleaseResult,
    ReserveResult,
    SetupResult,
    SweepResult,
)
from ducto.pricing import CostResult, PricingConfigData, PricingEngine, PricingVersion
from ducto.usage import UsageMetrics

#: The floor reserve_credits() applies when none is given and no pricing is loaded.
DEFAULT_MIN_BALANCE = 5

__all__ = [
    "DEFAULT_MIN_BALANCE",
    "AsyncCreditManager",
    "CreditManager",
    "InsufficientCreditsError",
    "MeteredCall",
    "PricingNotLoadedError",
]


class MeteredCall:
    """A hold around one model call whose cost is known only at its end.

    Yielded by :meth:`CreditManager.metered_call`: call :meth:`record` with the usage the
    call reported; on leaving the block the hold is settled with that usage (priced by
    the database, overage included) or, when nothing was recorded, released.
    """

    def __init__(self, reservation: ReserveResult) -> None:
        #: The hold taken before the call.
        self.reservation = reservation
        #: The usage recorded, if any.
        self.usage: UsageMetrics | None = None
        #: The charge, once the block has ended and the hold was settled.
        self.result: DeductionResult | None = None

    def record(self, metrics: UsageMetrics) -> None:
        """Record what the call used (the last recorded usage is charged)."""
        if not isinstance(metrics, UsageMetrics):
            raise InvalidInputError(
                f"metrics must be a UsageMetrics, got {type(metrics).__name__}", code="DC007"
            )
        self.usage = metrics


def _no_usage(reservation: ReserveResult) -> InvalidInputError:
    return InvalidInputError(
        f"metered_call ended without record(): hold {reservation.reservation_id} was released"
        " and nothing was charged",
        code="DC007",
    )


def _min_balance(engine: PricingEngine | None, min_balance: int | None) -> int:
    if min_balance is not None:
        return min_balance
    return DEFAULT_MIN_BALANCE if engine is None else engine.min_balance


def _engine(engine: PricingEngine | None) -> PricingEngine:
    if engine is None:
        raise PricingNotLoadedError(
            "pricing is not loaded: call load_pricing_from_store(), publish_pricing() or"
            " publish_pricing_from_dict() first"
        )
    return engine


def _hold_amount(engine: PricingEngine | None, estimate: UsageMetrics | int) -> int:
    # an estimate priced at 0 still holds 1 credit: a hold is never empty
    if isinstance(estimate, UsageMetrics):
        return max(_engine(engine).cost(estimate), 1)
    return estimate


class CreditManager:
    """Orchestrates credit operations over a :class:`~ducto.interface.CreditStore`.

    Args:
        store: A CreditStore adapter (HttpxSupabaseStore, PostgresStore, ...).
        engine: An optional pre-configured PricingEngine. If omitted, call
            load_pricing_from_store() or publish_pricing_from_dict() before deduct().
    """

    def __init__(self, store: CreditStore, engine: PricingEngine | None = None) -> None:
        self.store = store
        self._engine = engine

    @property
    def engine(self) -> PricingEngine | None:
        """The current PricingEngine, or None if not loaded."""
        return self._engine

    def load_pricing_from_store(self) -> None:
        """Load the active pricing config from the store (``credit_pricing_config``).

        Raises:
            PricingNotLoadedError: no pricing has been published.
        """
        self._engine = PricingEngine.from_version(self.get_pricing())

    def publish_pricing(self, config: PricingConfigData, label: str | None = None) -> None:
        """Publish new pricing and update the engine in one call.

        The new version is active for every client as soon as this returns; the engine
        is built from the config as the database stored it.

        Raises:
            PricingConfigError: the database refused the config (nothing changed).
        """
        published = _rpc.one(PricingVersion, self.store.call(_rpc.publish_pricing(config, label)))
        self._engine = PricingEngine.from_version(published)

    def publish_pricing_from_dict(self, data: PricingConfigData | dict[str, Any]) -> None:
        """Load pricing from a PricingConfigData or raw dict and sync it (publish it).

        Raises:
            PricingConfigError: the config is invalid (nothing is published).
        """
        self.publish_pricing(PricingConfigData.parse(data))

    def get_pricing(self, version: int | None = None) -> PricingVersion:
        """A published pricing version; the active one when ``version`` is None."""
        return _rpc.one(PricingVersion, self.store.call(_rpc.get_pricing(version)))

    def pricing_versions(self) -> list[PricingVersion]:
        """Every published pricing version, newest (the active one) first."""
        return _rpc.many(PricingVersion, self.store.call(_rpc.list_pricing_versions()))

    def calculate_cost(self, metrics: UsageMetrics, version: int | None = None) -> CostResult:
        """What the database charges for ``metrics`` (active or given version); no write."""
        return _rpc.one(CostResult, self.store.call(_rpc.calculate_cost(metrics, version)))

    def deduct(
        self,
        user_id: str,
        metrics: UsageMetrics,
        idempotency_key: str | None = None,
        metadata: CreditMetadata | None = None,
    ) -> DeductionResult:
        """Full deduction flow: calculate -> reserve -> deduct, in one database call.

        The database prices ``metrics`` under the active pricing version and charges it
        in the same transaction, keeping that version's ``min_balance``; the journal row
        records the version and the metrics.

        Raises:
            PricingNotLoadedError: If pricing hasn't been loaded.
            InsufficientCreditsError: If the user lacks sufficient balance (including the
                min_balance floor).
            UnknownModelError: No pricing entry matches the model and there is no default.
        """
        _engine(self._engine)
        call = _rpc.deduct_usage(user_id, metrics, metadata, idempotency_key)
        return _rpc.one(DeductionResult, self.store.call(call))

    def deduct_fixed(
        self,
        user_id: str,
        job_name: str,
        idempotency_key: str | None = None,
        metadata: CreditMetadata | None = None,
    ) -> DeductionResult:
        """Shortcut for fixed-cost batch jobs: charge the job's price in the active pricing.

        Raises:
            PricingNotLoadedError: If pricing hasn't been loaded.
            UnknownJobError: The active pricing has no such job.
            InsufficientCreditsError: As for deduct().
        """
        _engine(self._engine)
        call = _rpc.deduct_fixed(user_id, job_name, metadata, idempotency_key)
        return _rpc.one(DeductionResult, self.store.call(call))

    @contextmanager
    def metered_call(
        self,
        user_id: str,
        estimate: UsageMetrics | int,
        *,
        idempotency_key: str | None = None,
        metadata: CreditMetadata | None = None,
        operation_type: str = "usage",
        min_balance: int | None = None,
        timeout_seconds: int = 900,
    ) -> Iterator[MeteredCall]:
        """Hold an estimate around a model call, then charge what it actually used.

        ``estimate`` is credits, or usage priced by the engine. Before the block, the
        estimate is reserved (``InsufficientCreditsError`` here means the call should not
        be made). In the block, ``record()`` the usage. After it, the hold is settled with
        the recorded usage, priced by the database (an overage beyond the hold is
        charged too), even when the block raised after recording; with nothing recorded it
        is released. ``idempotency_key`` names the request: a retried request with the same
        key is not charged again (its new hold is released and ``result`` is the first
        charge, with ``is_replay``).
        """
        hold = self.reserve_credits(
            user_id,
            _hold_amount(self._engine, estimate),
            operation_type,
            metadata,
            min_balance,
            timeout_seconds=timeout_seconds,
        )
        meter = MeteredCall(hold)
        try:
            yield meter
        finally:
            if meter.usage is None:
                self.release_reservation(hold.reservation_id)
            else:
                call = _rpc.settle_usage(hold.reservation_id, meter.usage, None, idempotency_key)
                meter.result = _rpc.one(DeductionResult, self.store.call(call))
        if meter.usage is None:
            raise _no_usage(hold)

    def setup(self) -> SetupResult:
        """Run bundled SQL migrations through the store (see the store's ``setup``)."""
        return self.store.setup()

    def add_credits(
        self,
        user_id: str,
        amount: int,
        tx_type: str = "adjustment",
        metadata: CreditMetadata | None = None,
        expires_at: datetime | None = None,
        *,
        category: str = "paid",
        priority: int = 50,
        idempotency_key: str | None = None,
    ) -> AddCreditsResult:
        """Add credits to a user's account as a new grant.

        ``tx_type`` is one of grant, purchase, adjustment, promotion; ``category`` paid or
        promotional; ``priority`` 0 (spent first) to 100; ``expires_at`` None for never.
        """
        call = _rpc.add_credits(
            user_id,
            amount,
            tx_type,
            metadata,
            expires_at,
            category=category,
            priority=priority,
            idempotency_key=idempotency_key,
        )
        return _rpc.one(AddCreditsResult, self.store.call(call))

    def reserve_credits(
        self,
        user_id: str,
        amount: int,
        operation_type: str = "usage",
        metadata: CreditMetadata | None = None,
        min_balance: int | None = None,
        *,
        timeout_seconds: int = 900,
        idempotency_key: str | None = None,
    ) -> ReserveResult:
        """Reserve credits for an upcoming operation.

        If min_balance is not specified, the engine's configured minimum is used (defaults
        to 5 if no engine is loaded).

        Raises:
            InsufficientCreditsError: available - amount would go below min_balance.
        """
        call = _rpc.reserve_credits(
            user_id,
            amount,
            operation_type,
            _min_balance(self._engine, min_balance),
            metadata,
            timeout_seconds=timeout_seconds,
            idempotency_key=idempotency_key,
        )
        return _rpc.one(ReserveResult, self.store.call(call))

    def settle_reservation(
        self, reservation_id: str, actual_amount: int, metadata: CreditMetadata | None = None
    ) -> DeductionResult:
        """Charge the actual amount of a reservation; an overage beyond the hold is kept."""
        call = _rpc.settle_reservation(reservation_id, actual_amount, metadata)
        return _rpc.one(DeductionResult, self.store.call(call))

    def release_reservation(self, reservation_id: str) -> ReleaseResult:
        """Let a reservation go without charging it."""
        call = _rpc.release_reservation(reservation_id)
        return _rpc.one(ReleaseResult, self.store.call(call))

    def refund_credits(
        self,
        transaction_id: str,
        amount: int | None = None,
        reason: str | None = None,
        metadata: CreditMetadata | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> RefundResult:
        """Refund a previous credit deduction, fully (amount None) or partly."""
        call = _rpc.refund_transaction(transaction_id, amount, reason, metadata, idempotency_key)
        return _rpc.one(RefundResult, self.store.call(call))

    def get_balance(self, user_id: str) -> BalanceResult:
        """Get a user's current credit balance, held credits and available credits."""
        return _rpc.one(BalanceResult, self.store.call(_rpc.get_balance(user_id)))

    def sweep_expired_credits(self, dry_run: bool = False) -> SweepResult:
        """Sweep expired credits and timed-out holds from all users' accounts."""
        return _rpc.one(SweepResult, self.store.call(_rpc.sweep_expired(dry_run)))

    def verify_ledger(self) -> list[LedgerIssue]:
        """Recompute every ledger invariant; an empty list means the ledger is consistent."""
        return _rpc.many(LedgerIssue, self.store.call(_rpc.verify_ledger()))


class AsyncCreditManager:
    """The async flavour of :class:`CreditManager`, over an async store."""

    def __init__(self, store: AsyncCreditStore, engine: PricingEngine | None = None) -> None:
        self.store = store
        self._engine = engine

    @property
    def engine(self) -> PricingEngine | None:
        """The current PricingEngine, or None if not loaded."""
        return self._engine

    async def load_pricing_from_store(self) -> None:
        """Load the active pricing config from the store (``credit_pricing_config``)."""
        self._engine = PricingEngine.from_version(await self.get_pricing())

    async def publish_pricing(self, config: PricingConfigData, label: str | None = None) -> None:
        """Publish new pricing and update the engine in one call."""
        call = _rpc.publish_pricing(config, label)
        published = _rpc.one(PricingVersion, await self.store.call(call))
        self._engine = PricingEngine.from_version(published)

    async def publish_pricing_from_dict(self, data: PricingConfigData | dict[str, Any]) -> None:
        """Load pricing from a PricingConfigData or raw dict and sync it (publish it)."""
        await self.publish_pricing(PricingConfigData.parse(data))

    async def get_pricing(self, version: int | None = None) -> PricingVersion:
        """A published pricing version; the active one when ``version`` is None."""
        return _rpc.one(PricingVersion, await self.store.call(_rpc.get_pricing(version)))

    async def pricing_versions(self) -> list[PricingVersion]:
        """Every published pricing version, newest (the active one) first."""
        return _rpc.many(PricingVersion, await self.store.call(_rpc.list_pricing_versions()))

    async def calculate_cost(self, metrics: UsageMetrics, version: int | None = None) -> CostResult:
        """What the database charges for ``metrics`` (active or given version); no write."""
        return _rpc.one(CostResult, await self.store.call(_rpc.calculate_cost(metrics, version)))

    async def deduct(
        self,
        user_id: str,
        metrics: UsageMetrics,
        idempotency_key: str | None = None,
        metadata: CreditMetadata | None = None,
    ) -> DeductionResult:
        """Full deduction flow: calculate -> reserve -> deduct (see CreditManager.deduct)."""
        _engine(self._engine)
        call = _rpc.deduct_usage(user_id, metrics, metadata, idempotency_key)
        return _rpc.one(DeductionResult, await self.store.call(call))

    async def deduct_fixed(
        self,
        user_id: str,
        job_name: str,
        idempotency_key: str | None = None,
        metadata: CreditMetadata | None = None,
    ) -> DeductionResult:
        """Shortcut for fixed-cost batch jobs (see CreditManager.deduct_fixed)."""
        _engine(self._engine)
        call = _rpc.deduct_fixed(user_id, job_name, metadata, idempotency_key)
        return _rpc.one(DeductionResult, await self.store.call(call))

    @asynccontextmanager
    async def metered_call(
        self,
        user_id: str,
        estimate: UsageMetrics | int,
        *,
        idempotency_key: str | None = None,
        metadata: CreditMetadata | None = None,
        operation_type: str = "usage",
        min_balance: int | None = None,
        timeout_seconds: int = 900,
    ) -> AsyncIterator[MeteredCall]:
        """Hold an estimate around a model call, then charge what it actually used
        (see CreditManager.metered_call)."""
        hold = await self.reserve_credits(
            user_id,
            _hold_amount(self._engine, estimate),
            operation_type,
            metadata,
            min_balance,
            timeout_seconds=timeout_seconds,
        )
        meter = MeteredCall(hold)
        try:
            yield meter
        finally:
            if meter.usage is None:
                await self.release_reservation(hold.reservation_id)
            else:
                call = _rpc.settle_usage(hold.reservation_id, meter.usage, None, idempotency_key)
                meter.result = _rpc.one(DeductionResult, await self.store.call(call))
        if meter.usage is None:
            raise _no_usage(hold)

    async def setup(self) -> SetupResult:
        """Run bundled SQL migrations through the store (see the store's ``setup``)."""
        return await self.store.setup()

    async def add_credits(
        self,
        user_id: str,
        amount: int,
        tx_type: str = "adjustment",
        metadata: CreditMetadata | None = None,
        expires_at: datetime | None = None,
        *,
        category: str = "paid",
        priority: int = 50,
        idempotency_key: str | None = None,
    ) -> AddCreditsResult:
        """Add credits to a user's account as a new grant."""
        call = _rpc.add_credits(
            user_id,
            amount,
            tx_type,
            metadata,
            expires_at,
            category=category,
            priority=priority,
            idempotency_key=idempotency_key,
        )
        return _rpc.one(AddCreditsResult, await self.store.call(call))

    async def reserve_credits(
        self,
        user_id: str,
        amount: int,
        operation_type: str = "usage",
        metadata: CreditMetadata | None = None,
        min_balance: int | None = None,
        *,
        timeout_seconds: int = 900,
        idempotency_key: str | None = None,
    ) -> ReserveResult:
        """Reserve credits for an upcoming operation (default min_balance: the engine's,
        or 5 without one)."""
        call = _rpc.reserve_credits(
            user_id,
            amount,
            operation_type,
            _min_balance(self._engine, min_balance),
            metadata,
            timeout_seconds=timeout_seconds,
            idempotency_key=idempotency_key,
        )
        return _rpc.one(ReserveResult, await self.store.call(call))

    async def settle_reservation(
        self, reservation_id: str, actual_amount: int, metadata: CreditMetadata | None = None
    ) -> DeductionResult:
        """Charge the actual amount of a reservation; an overage beyond the hold is kept."""
        call = _rpc.settle_reservation(reservation_id, actual_amount, metadata)
        return _rpc.one(DeductionResult, await self.store.call(call))

    async def release_reservation(self, reservation_id: str) -> ReleaseResult:
        """Let a reservation go without charging it."""
        call = _rpc.release_reservation(reservation_id)
        return _rpc.one(ReleaseResult, await self.store.call(call))

    async def refund_credits(
        self,
        transaction_id: str,
        amount: int | None = None,
        reason: str | None = None,
        metadata: CreditMetadata | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> RefundResult:
        """Refund a previous credit deduction, fully (amount None) or partly."""
        call = _rpc.refund_transaction(transaction_id, amount, reason, metadata, idempotency_key)
        return _rpc.one(RefundResult, await self.store.call(call))

    async def get_balance(self, user_id: str) -> BalanceResult:
        """Get a user's current credit balance, held credits and available credits."""
        return _rpc.one(BalanceResult, await self.store.call(_rpc.get_balance(user_id)))

    async def sweep_expired_credits(self, dry_run: bool = False) -> SweepResult:
        """Sweep expired credits and timed-out holds from all users' accounts."""
        return _rpc.one(SweepResult, await self.store.call(_rpc.sweep_expired(dry_run)))

    async def verify_ledger(self) -> list[LedgerIssue]:
        """Recompute every ledger invariant; an empty list means the ledger is consistent."""
        return _rpc.many(LedgerIssue, await self.store.call(_rpc.verify_ledger()))
