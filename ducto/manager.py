"""High-level credit manager.

Orchestrates the credit lifecycle over a store: every method validates its arguments,
sends one RPC through the store, and returns a typed result, or raises the typed
exception for the SQLSTATE the ledger answered. :class:`AsyncCreditManager` is the same
over an async store; both build their calls and parse their answers with one core
(``ducto._rpc``).
"""

from __future__ import annotations

from datetime import datetime

from ducto import _rpc
from ducto.errors import InsufficientCreditsError, PricingNotLoadedError, SchemaError
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

#: The floor reserve_credits() applies when none is given and no pricing is loaded.
DEFAULT_MIN_BALANCE = 5

__all__ = [
    "DEFAULT_MIN_BALANCE",
    "AsyncCreditManager",
    "CreditManager",
    "InsufficientCreditsError",
    "PricingNotLoadedError",
]


class CreditManager:
    """Orchestrates credit operations over a :class:`~ducto.interface.CreditStore`.

    Args:
        store: A CreditStore adapter (HttpxSupabaseStore, PostgresStore, ...).
    """

    def __init__(self, store: CreditStore) -> None:
        self.store = store

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

        If min_balance is not specified, the default minimum (5) is used.

        Raises:
            InsufficientCreditsError: available - amount would go below min_balance.
        """
        call = _rpc.reserve_credits(
            user_id,
            amount,
            operation_type,
            DEFAULT_MIN_BALANCE if min_balance is None else min_balance,
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

    def schema_version(self) -> str | None:
        """The version of ducto's schema in the database (None when it is not installed).

        It is the timestamp of the newest migration applied; ``ducto status`` compares it
        with the newest migration this client ships.
        """
        try:
            rows = self.store.call(_rpc.schema_version())
        except SchemaError:
            return None
        return str(rows[0]["value"])


class AsyncCreditManager:
    """The async flavour of :class:`CreditManager`, over an async store."""

    def __init__(self, store: AsyncCreditStore) -> None:
        self.store = store

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
        """Reserve credits for an upcoming operation (default min_balance 5)."""
        call = _rpc.reserve_credits(
            user_id,
            amount,
            operation_type,
            DEFAULT_MIN_BALANCE if min_balance is None else min_balance,
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

    async def schema_version(self) -> str | None:
        """The version of ducto's schema in the database (None when it is not installed)."""
        try:
            rows = await self.store.call(_rpc.schema_version())
        except SchemaError:
            return None
        return str(rows[0]["value"])
