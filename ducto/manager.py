"""High-level credit manager.

Orchestrates the credit lifecycle over a store: every method validates its arguments,
sends one RPC through the store, and returns a typed result, or raises the typed
exception for the SQLSTATE the ledger answered. :class:`AsyncCreditManager` is the same
over an async store; both build their calls and parse their answers with one core
(``ducto._rpc``), and the code of :class:`CreditManager` is generated from that of
:class:`AsyncCreditManager` (``scripts/unasync.py``), so the two cannot drift.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar
from uuid import UUID

import httpx

from ducto import _rpc
from ducto._rpc import RpcCall
from ducto.errors import (
    IdempotencyConflictError,
    InsufficientCreditsError,
    InvalidInputError,
    PricingNotLoadedError,
    SchemaError,
)
from ducto.events import CreditEventEmitter
from ducto.interface.base import AsyncCreditStore, CreditStore
from ducto.models import (
    AddCreditsResult,
    AggregateStatsRow,
    AllowanceResult,
    AutoTopupRule,
    BalanceAlert,
    BalanceAtResult,
    BalanceResult,
    CheckFeatureResult,
    CheckpointResult,
    CreditMetadata,
    DailySpendRow,
    DeductionResult,
    DeliveryReport,
    EventDeliveryClaim,
    EventEndpoint,
    GetUserPlanResult,
    JournalRow,
    LedgerEvent,
    LedgerIssue,
    LimitsResult,
    PartitionRow,
    PlanResult,
    PricePlan,
    RefundResult,
    ReleaseResult,
    ReserveResult,
    SetupResult,
    SpendByModelRow,
    SpendByUserRow,
    SpendWindow,
    StatementResult,
    SweepResult,
    TeamDeductionResult,
    TeamMemberResult,
    TeamResult,
    TopupRequest,
    TopUserRow,
    VoidResult,
)
from ducto.pricing import CostResult, PricingConfigData, PricingEngine, PricingVersion
from ducto.topup import TopupPayer
from ducto.usage import UsageMetrics
from ducto.webhooks import DeliveryOutcome, delivery_outcome, delivery_request

#: The floor reserve_credits() applies when none is given and no pricing is loaded.
DEFAULT_MIN_BALANCE = 5

_T = TypeVar("_T")

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
        self.usage = _rpc.usage_metrics(metrics)


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


# -- async source: scripts/unasync.py writes the sync flavour below from it --
class AsyncCreditManager:
    """Orchestrates credit operations over an :class:`~ducto.interface.AsyncCreditStore`.

    Args:
        store: An AsyncCreditStore adapter (AsyncHttpxSupabaseStore, AsyncPostgresStore, ...).
            A store given a read replica (``read_dsn``, ``read_url``, ``read_client``)
            answers the analytics and ``export_journal`` from it; every other method from
            the primary.
        engine: An optional pre-configured PricingEngine. If omitted, call
            load_pricing_from_store() or publish_pricing_from_dict() before deduct().
        emitter: An optional CreditEventEmitter for lifecycle events (``ducto.events``).
    """

    def __init__(
        self,
        store: AsyncCreditStore,
        engine: PricingEngine | None = None,
        emitter: CreditEventEmitter | None = None,
    ) -> None:
        self.store = store
        self._engine = engine
        self._emitter = emitter

    @property
    def emitter(self) -> CreditEventEmitter | None:
        """The CreditEventEmitter told of every operation, or None."""
        return self._emitter

    async def _one(self, cls: type[_T], call: RpcCall) -> _T:
        """Send ``call``, parse its one row as ``cls``, and tell the emitter."""
        try:
            result = _rpc.one(cls, await self.store.call(call))
        except InsufficientCreditsError as exc:
            if self._emitter is not None:
                self._emitter.refused(exc)
            raise
        if self._emitter is not None:
            self._emitter.observe(result)
        return result

    @property
    def engine(self) -> PricingEngine | None:
        """The current PricingEngine, or None if not loaded."""
        return self._engine

    async def load_pricing_from_store(self) -> None:
        """Load the active pricing config from the store (``credit_pricing_config``).

        Raises:
            PricingNotLoadedError: no pricing has been published.
        """
        self._engine = PricingEngine.from_version(await self.get_pricing())

    async def publish_pricing(self, config: PricingConfigData, label: str | None = None) -> None:
        """Publish new pricing and update the engine in one call.

        The new version is active for every client as soon as this returns; the engine
        is built from the config as the database stored it.

        Raises:
            PricingConfigError: the database refused the config (nothing changed).
        """
        published = await self._one(PricingVersion, _rpc.publish_pricing(config, label))
        self._engine = PricingEngine.from_version(published)

    async def publish_pricing_from_dict(self, data: PricingConfigData | dict[str, Any]) -> None:
        """Load pricing from a PricingConfigData or raw dict and sync it (publish it).

        Raises:
            PricingConfigError: the config is invalid (nothing is published).
        """
        await self.publish_pricing(PricingConfigData.parse(data))

    async def get_pricing(self, version: int | None = None) -> PricingVersion:
        """A published pricing version; the active one when ``version`` is None."""
        return await self._one(PricingVersion, _rpc.get_pricing(version))

    async def pricing_versions(self) -> list[PricingVersion]:
        """Every published pricing version, newest (the active one) first."""
        return _rpc.many(PricingVersion, await self.store.call(_rpc.list_pricing_versions()))

    async def calculate_cost(self, metrics: UsageMetrics, version: int | None = None) -> CostResult:
        """What the database charges for ``metrics`` (active or given version); no write."""
        return await self._one(CostResult, _rpc.calculate_cost(metrics, version))

    async def deduct(
        self,
        user_id: str | UUID,
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
        return await self._one(DeductionResult, call)

    async def deduct_fixed(
        self,
        user_id: str | UUID,
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
        return await self._one(DeductionResult, call)

    @asynccontextmanager
    async def metered_call(
        self,
        user_id: str | UUID,
        estimate: UsageMetrics | int,
        *,
        idempotency_key: str | None = None,
        metadata: CreditMetadata | None = None,
        operation_type: str = "usage",
        min_balance: int | None = None,
        timeout_seconds: int = 900,
        max_overage: int | None = None,
    ) -> AsyncIterator[MeteredCall]:
        """Hold an estimate around a model call, then charge what it actually used.

        ``estimate`` is credits, or usage priced by the engine. Before the block, the
        estimate is reserved (``InsufficientCreditsError`` here means the call should not
        be made). In the block, ``record()`` the usage. After it, the hold is settled with
        the recorded usage, priced by the database (an overage beyond the hold is
        charged too), even when the block raised after recording; with nothing recorded it
        is released. ``idempotency_key`` names the request: a retried request with the same
        key is not charged again. A retry that measured the same usage gets the first
        charge as ``result``, with ``is_replay``; one that measured other usage raises
        ``IdempotencyConflictError`` (the key's first charge stands). Either way its new
        hold is released. ``max_overage`` bounds the charge beyond the hold, as in
        ``settle_reservation``; beyond it ``OverageLimitError`` leaves the hold active, to
        be settled (``meter.reservation``) or to time out.
        """
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
                call = _rpc.settle_usage(
                    hold.reservation_id, meter.usage, None, idempotency_key, max_overage
                )
                try:
                    meter.result = await self._one(DeductionResult, call)
                except IdempotencyConflictError:
                    # the key's request was charged already, with other usage: this hold
                    # is not charged, and not left to count against the account
                    await self.release_reservation(hold.reservation_id)
                    raise
        if meter.usage is None:
            raise _no_usage(hold)

    async def setup(self) -> SetupResult:
        """Run bundled SQL migrations through the store (see the store's ``setup``)."""
        return await self.store.setup()

    async def add_credits(
        self,
        user_id: str | UUID,
        amount: int,
        tx_type: str = "adjustment",
        metadata: CreditMetadata | None = None,
        expires_at: datetime | None = None,
        *,
        category: str = "paid",
        priority: int = 50,
        idempotency_key: str | None = None,
        scope: Sequence[str] | None = None,
    ) -> AddCreditsResult:
        """Add credits to a user's account as a new grant.

        ``tx_type`` is one of grant, purchase, adjustment, promotion; ``category`` paid or
        promotional; ``priority`` 0 (spent first) to 100; ``expires_at`` None for never.
        ``scope`` limits the grant to some charges: entries ``model:<glob>``,
        ``job:<name>``, ``feature:<name>`` (docs/scopes.md); None for any charge.
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
            scope=scope,
        )
        return await self._one(AddCreditsResult, call)

    async def reserve_credits(
        self,
        user_id: str | UUID,
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
        return await self._one(ReserveResult, call)

    async def settle_reservation(
        self,
        reservation_id: str | UUID,
        actual_amount: int,
        metadata: CreditMetadata | None = None,
        *,
        max_overage: int | None = None,
    ) -> DeductionResult:
        """Charge the actual amount of a reservation; an overage beyond the hold is kept.

        The overage is bounded: at most ``max_overage`` credits beyond the hold, by default
        9 times the hold (a settle charges at most 10 times what it held). Beyond it,
        ``OverageLimitError``: nothing is charged and the hold stays as it was.
        """
        call = _rpc.settle_reservation(reservation_id, actual_amount, metadata, max_overage)
        return await self._one(DeductionResult, call)

    async def release_reservation(self, reservation_id: str | UUID) -> ReleaseResult:
        """Let a reservation go without charging it."""
        call = _rpc.release_reservation(reservation_id)
        return await self._one(ReleaseResult, call)

    async def refund_credits(
        self,
        transaction_id: str | UUID | None,
        amount: int | None = None,
        reason: str | None = None,
        metadata: CreditMetadata | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> RefundResult:
        """Refund a previous credit deduction, fully (amount None) or partly.

        ``transaction_id`` is the ``transaction_id`` of a charge's result, as text or a
        ``uuid.UUID``. A charge of 0 credits has none (None): refunding it raises
        ``RefundError``, since nothing was charged.
        """
        call = _rpc.refund_transaction(transaction_id, amount, reason, metadata, idempotency_key)
        return await self._one(RefundResult, call)

    async def void_grant(
        self,
        grant_id: str | UUID,
        amount: int | None = None,
        reason: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> VoidResult:
        """Remove what is left of a grant (amount None), or part of it, with a ``void`` row.

        What was spent stays spent: more than is left raises ``RefundError`` (DC121), an
        unknown grant ``NotFoundError``. A replayed key returns the first result.
        """
        return await self._one(
            VoidResult, _rpc.void_grant(grant_id, amount, reason, idempotency_key)
        )

    async def set_price_plan(self, price_id: str, plan_id: str | None) -> PricePlan | None:
        """Map a Stripe price to the plan it sells; None removes the price (returns None).

        A subscription to the price assigns the plan, and each paid period invoice grants
        the plan's allowance (docs/stripe.md). An unknown plan raises ``NotFoundError``.
        """
        rows = _rpc.many(PricePlan, await self.store.call(_rpc.set_price_plan(price_id, plan_id)))
        return rows[0] if rows else None

    async def list_price_plans(self) -> list[PricePlan]:
        """Every Stripe price mapped to a plan, by price id."""
        return _rpc.many(PricePlan, await self.store.call(_rpc.list_price_plans()))

    async def get_balance(self, user_id: str | UUID) -> BalanceResult:
        """Get a user's current credit balance, held credits and available credits."""
        return await self._one(BalanceResult, _rpc.get_balance(user_id))

    async def balance_at(self, user_id: str | UUID, at: datetime) -> BalanceAtResult:
        """The balance of a user's journal at an instant: its rows created at or before ``at``.

        This is the journal's balance: credits that lapsed count until the sweep journals
        their expiry, and holds never count (``get_balance`` is what can be spent now).
        """
        return await self._one(BalanceAtResult, _rpc.balance_at(user_id, at))

    async def statement(
        self, user_id: str | UUID, start: datetime, end: datetime
    ) -> StatementResult:
        """A user's statement of the window [start, end).

        Opening and closing balances (the journal's, just before ``start`` and just before
        ``end``), the totals of the window by journal type, by model and by the category of
        the grants credited, and the grants that expire in the 30 days after ``end`` with
        what is left of them now.
        """
        return await self._one(StatementResult, _rpc.statement(user_id, start, end))

    async def set_limits(
        self,
        user_id: str | UUID,
        *,
        windows: Sequence[SpendWindow] = (),
        max_active_holds: int | None = None,
        credit_line: int | None = None,
        credit_line_grace_seconds: int | None = None,
    ) -> LimitsResult:
        """Set a user's (or a team pool's, ``"team:<id>"``) whole limit configuration.

        Replaces what was set before: what is left out is no limit (no spend windows, no
        cap on active holds, and the plan's credit line). Charges and new holds are then
        refused with ``LimitExceededError`` past a window, ``TooManyHoldsError`` past the
        cap, and admitted down to ``min_balance - credit_line``; with a grace,
        ``CreditLineOverdueError`` once the balance has been below zero that long.
        Returns the limits as ``get_limits`` reads them.
        """
        call = _rpc.set_limits(
            user_id, windows, max_active_holds, credit_line, credit_line_grace_seconds
        )
        return await self._one(LimitsResult, call)

    async def get_limits(self, user_id: str | UUID) -> LimitsResult:
        """A user's limits, with what each spend window has used and held now."""
        return await self._one(LimitsResult, _rpc.get_limits(user_id))

    async def set_plan_credit_line(
        self, plan_id: str, credit_line: int, credit_line_grace_seconds: int | None = None
    ) -> None:
        """Set the credit line of a plan's users (an account's own credit line wins)."""
        call = _rpc.set_plan_credit_line(plan_id, credit_line, credit_line_grace_seconds)
        await self.store.call(call)

    # ------------------------------------------------------------ auto top-up (docs/stripe.md)

    async def set_auto_topup(
        self,
        user_id: str | UUID,
        *,
        threshold: int,
        unit_price_minor: int | Decimal,
        currency: str,
        stripe_customer_id: str,
        stripe_payment_method_id: str,
        amount: int | None = None,
        target_balance: int | None = None,
        monthly_cap_credits: int | None = None,
        monthly_cap_minor: int | None = None,
        cooldown_seconds: int = 3600,
        max_failures: int = 3,
        enabled: bool = True,
    ) -> AutoTopupRule:
        """Set a user's (or team pool's) auto top-up rule, replacing the one before.

        Below ``threshold`` a debit requests ``amount`` credits, or what takes the balance
        to ``target_balance`` (give one), charged ``ceil(credits * unit_price_minor)`` minor
        units of ``currency`` on the saved payment method, at most once per
        ``cooldown_seconds`` and within the monthly caps. Setting a rule starts its failure
        count over; enabling it while the balance is below the threshold requests at once.

        Raises:
            InvalidInputError: a bad value (nothing is written).
        """
        call = _rpc.set_auto_topup(
            user_id, threshold, unit_price_minor, currency, stripe_customer_id,
            stripe_payment_method_id, amount, target_balance, monthly_cap_credits,
            monthly_cap_minor, cooldown_seconds, max_failures, enabled,
        )  # fmt: skip
        return await self._one(AutoTopupRule, call)

    async def get_auto_topup(self, user_id: str | UUID) -> AutoTopupRule:
        """A user's auto top-up rule with this month's requests and the open one.

        Raises:
            NotFoundError: the user has no rule.
        """
        return await self._one(AutoTopupRule, _rpc.get_auto_topup(user_id))

    async def claim_topup_requests(
        self, limit: int = 10, *, lease_seconds: int = 300
    ) -> list[TopupRequest]:
        """Claim up to ``limit`` due top-up requests for ``lease_seconds`` (then another
        worker may take them again, with the same Stripe idempotency key)."""
        call = _rpc.claim_topup_requests(limit, lease_seconds)
        return _rpc.many(TopupRequest, await self.store.call(call))

    async def record_topup_payment(
        self, request_id: str | UUID, payment_intent_id: str
    ) -> TopupRequest:
        """Record the PaymentIntent made for a request (a later run reads it back).

        Raises:
            NotFoundError: no such request.
            TopupConflictError: the request already has another payment intent.
        """
        call = _rpc.record_topup_payment(request_id, payment_intent_id)
        return _rpc.one(TopupRequest, await self.store.call(call))

    async def complete_topup(
        self,
        request_id: str | UUID,
        payment_intent_id: str | None,
        status: str,
        error: str | None = None,
    ) -> TopupRequest:
        """Report a request's payment: ``succeeded`` grants its credits once (keyed by the
        payment intent; the worker and the webhook may both report it),
        ``requires_action`` writes ``topup.action_required``, ``processing`` waits, and
        ``failed`` / ``requires_payment_method`` / ``canceled`` count a failure (a retry
        after the cooldown, or the rule disabled after ``max_failures`` in a row).

        Raises:
            NotFoundError: no such request.
            TopupConflictError: the request already has another payment intent.
        """
        call = _rpc.complete_topup(request_id, payment_intent_id, status, error)
        return _rpc.one(TopupRequest, await self.store.call(call))

    async def run_topups(
        self, payer: TopupPayer, *, limit: int = 10, lease_seconds: int = 300
    ) -> list[TopupRequest]:
        """Claim due top-up requests, pay each with ``payer`` (``StripeTopupPayer``) and
        report it; the requests as reported. A request Stripe could not be reached for is
        left to its lease and tried again by a later run."""
        reported = []
        for request in await self.claim_topup_requests(limit, lease_seconds=lease_seconds):
            outcome = await asyncio.to_thread(payer.pay, request)
            if outcome.payment_intent_id is not None and request.payment_intent_id is None:
                # recorded before it is reported: a run after a crash reads it back
                await self.record_topup_payment(request.id, outcome.payment_intent_id)
            if outcome.status is None:
                continue
            reported.append(
                await self.complete_topup(
                    request.id, outcome.payment_intent_id, outcome.status, outcome.error
                )
            )
        return reported

    async def export_journal(
        self,
        start: datetime,
        end: datetime,
        user_id: str | UUID | None = None,
        *,
        page_size: int = 1000,
    ) -> AsyncIterator[JournalRow]:
        """Every journal row created in the window [start, end), one user's or everyone's.

        Rows come in ``(account_id, seq)`` order, fetched ``page_size`` (1 to 10000) at a
        time with a keyset cursor (the last row's ``(account_id, seq)``), so memory stays
        flat however long the window and each page costs the same. Each page is its own
        call: rows appended while the export runs are in it when they fall in the window
        after the cursor, and no row is read twice or skipped (journal rows never change).
        """
        after: tuple[int, int] | None = None
        while True:
            call = _rpc.export_journal(start, end, user_id, after, page_size)
            fetched = 0
            for row in _rpc.many(JournalRow, await self.store.call(call)):
                yield row
                fetched += 1
                after = (row.account_id, row.seq)  # the next page starts after it
            if fetched < page_size:
                return

    # ------------------------------------------------------------ events (docs/events.md)

    async def list_events(
        self,
        user_id: str | UUID | None = None,
        *,
        after: str | UUID | None = None,
        types: Sequence[str] | None = None,
        limit: int = 100,
    ) -> list[LedgerEvent]:
        """Events of the outbox in id (time) order after the cursor ``after`` (an event id):
        one user's, or everyone's (service role, ``user_id`` None). ``types`` filters by
        type; ``limit`` is 1 to 1000."""
        call = _rpc.list_events(user_id, after, types, limit)
        return _rpc.many(LedgerEvent, await self.store.call(call))

    async def poll_events(
        self, after: str | UUID | None = None, *, limit: int = 100
    ) -> list[LedgerEvent]:
        """Every user's events after the cursor ``after`` (an event id), in id order, for a
        reader that keeps a cursor: no event can later commit below the last one returned.
        While a transaction that wrote events is still open it answers none (ask again).
        Service role."""
        return _rpc.many(LedgerEvent, await self.store.call(_rpc.poll_events(after, limit)))

    async def dispatch_events(
        self, after: str | UUID | None = None, *, limit: int = 100
    ) -> str | None:
        """Feed the outbox to this manager's emitter: every event after the cursor ``after``
        (up to ``limit``, read with :meth:`poll_events`, so none is skipped), to its
        subscribers, in id order. Returns the cursor to pass next time (the last event's
        id; ``after`` when there was none).

        Raises:
            InvalidInputError: the manager has no emitter.
        """
        if self._emitter is None:
            raise InvalidInputError("dispatch_events needs a manager with an emitter", code="DC006")
        events = await self.poll_events(after, limit=limit)
        cursor = self._emitter.feed(events)
        return cursor if cursor is not None else None if after is None else str(after)

    async def set_alert(
        self,
        user_id: str | UUID | None = None,
        *,
        plan_id: str | None = None,
        threshold: int | None = None,
        percent: int | float | Decimal | None = None,
    ) -> BalanceAlert:
        """Set a ``balance.low`` threshold of a user (or team pool ``team:<id>``) or of a
        plan: ``threshold`` credits, or ``percent`` of the account's last top-up. Setting
        one that exists returns it.

        Raises:
            InvalidInputError: not exactly one owner or one kind of threshold, or a bad value.
            NotFoundError: the plan does not exist.
        """
        call = _rpc.set_alert(user_id, plan_id, threshold, percent)
        return _rpc.one(BalanceAlert, await self.store.call(call))

    async def delete_alert(self, alert_id: str | UUID) -> bool:
        """Delete a ``balance.low`` threshold; False when there was none."""
        rows = await self.store.call(_rpc.delete_alert(alert_id))
        return bool(rows[0]["value"])

    async def list_alerts(
        self, user_id: str | UUID | None = None, *, plan_id: str | None = None
    ) -> list[BalanceAlert]:
        """A user's, a plan's, or (neither given) every ``balance.low`` threshold."""
        call = _rpc.list_alerts(user_id, plan_id)
        return _rpc.many(BalanceAlert, await self.store.call(call))

    async def set_grant_expiring_days(self, days: int) -> int:
        """How many days (1 to 365) before its expiry a grant's ``grant.expiring`` fires."""
        rows = await self.store.call(_rpc.set_grant_expiring_days(days))
        return int(rows[0]["value"])

    async def emit_due_events(self) -> int:
        """Write the events due by time alone (``grant.expiring``); how many were written.
        (A pg_cron job can call ``credit_emit_due_events()`` instead.)"""
        rows = await self.store.call(_rpc.emit_due_events())
        return int(rows[0]["value"])

    async def set_event_endpoint(
        self,
        url: str,
        secret: str,
        *,
        event_types: Sequence[str] | None = None,
        enabled: bool = True,
        endpoint_id: str | UUID | None = None,
    ) -> EventEndpoint:
        """Add an endpoint events are POSTed to (signed with ``secret``, 16 to 200
        characters), or change ``endpoint_id``. It gets the events written while it is
        enabled, of ``event_types`` (None: every type)."""
        call = _rpc.set_event_endpoint(url, secret, event_types, enabled, endpoint_id)
        return _rpc.one(EventEndpoint, await self.store.call(call))

    async def list_event_endpoints(self) -> list[EventEndpoint]:
        """Every endpoint, without its secret."""
        return _rpc.many(EventEndpoint, await self.store.call(_rpc.list_event_endpoints()))

    async def claim_event_deliveries(
        self, limit: int = 50, *, lease_seconds: int = 60
    ) -> list[EventDeliveryClaim]:
        """Claim up to ``limit`` due deliveries for ``lease_seconds``: no other worker gets
        them meanwhile. Report each with :meth:`finish_event_delivery`."""
        call = _rpc.claim_event_deliveries(limit, lease_seconds)
        return _rpc.many(EventDeliveryClaim, await self.store.call(call))

    async def finish_event_delivery(
        self,
        claim_id: str | UUID,
        delivered: bool,
        *,
        error: str | None = None,
        retry_after: int | None = None,
    ) -> bool:
        """Report a claimed delivery: delivered, or failed and due again after
        ``retry_after`` seconds (None: the ledger's backoff, 10 s doubling up to an hour).
        False: the claim was no longer current (its lease ended); nothing changed."""
        call = _rpc.finish_event_delivery(claim_id, delivered, error, retry_after)
        rows = await self.store.call(call)
        return bool(rows[0]["value"])

    async def deliver_events(
        self,
        *,
        batch_size: int = 50,
        lease_seconds: int = 60,
        timeout: float = 10.0,
        max_batches: int = 100,
        http: httpx.AsyncClient | None = None,
    ) -> DeliveryReport:
        """POST every due delivery to its endpoint, signed (``ducto.webhooks``), and report
        each: delivered on a 2xx answer; failed otherwise (another status, a timeout, a
        refused connection) and retried later. Runs until no delivery is due, or
        ``max_batches`` batches. ``timeout`` (seconds) must be shorter than the lease, so
        a claim is reported while it is still current. ``http``: a client to send with.
        """
        if not 0 < timeout < lease_seconds:
            raise InvalidInputError(
                f"timeout must be above 0 and below lease_seconds ({lease_seconds}),"
                f" got {timeout!r}",
                code="DC006",
            )
        claimed = delivered = 0
        errors: list[str] = []
        async with self._http_client(http, timeout) as client:
            for _ in range(max_batches):
                claims = await self.claim_event_deliveries(batch_size, lease_seconds=lease_seconds)
                for claim in claims:
                    outcome = await self._post(client, claim, timeout)
                    await self.finish_event_delivery(
                        claim.claim_id,
                        outcome.delivered,
                        error=outcome.error,
                        retry_after=outcome.retry_after,
                    )
                    if outcome.delivered:
                        delivered += 1
                    else:
                        errors.append(f"{claim.event_id} -> {claim.url}: {outcome.error}")
                claimed += len(claims)
                if len(claims) < batch_size:
                    break
        return DeliveryReport(claimed, delivered, claimed - delivered, tuple(errors))

    @staticmethod
    @asynccontextmanager
    async def _http_client(
        http: httpx.AsyncClient | None, timeout: float
    ) -> AsyncIterator[httpx.AsyncClient]:
        """``http``, or a client of our own for the block."""
        if http is not None:
            yield http
            return
        async with httpx.AsyncClient(timeout=timeout) as client:
            yield client

    @staticmethod
    async def _post(
        client: httpx.AsyncClient, claim: EventDeliveryClaim, timeout: float
    ) -> DeliveryOutcome:
        """One attempt of a claimed delivery; a transport error or a timeout is a failure."""
        headers, body = delivery_request(claim)
        try:
            response = await client.post(claim.url, content=body, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            return DeliveryOutcome(False, f"{type(exc).__name__}: {exc}"[:500])
        return delivery_outcome(response.status_code, response.headers)

    async def sweep_expired_credits(self, dry_run: bool = False) -> SweepResult:
        """Sweep expired credits and timed-out holds from all users' accounts."""
        return await self._one(SweepResult, _rpc.sweep_expired(dry_run))

    async def verify_ledger(self, since: datetime | None = None) -> list[LedgerIssue]:
        """Recompute every ledger invariant; an empty list means the ledger is consistent.

        With ``since``, each account is checked from its newest checkpoint at or before it
        (``take_checkpoints``), reading only the journal rows after it; what a checkpoint
        summarizes was verified when it was taken and is trusted. An account without one is
        checked in full.
        """
        return _rpc.many(LedgerIssue, await self.store.call(_rpc.verify_ledger(since)))

    async def take_checkpoints(self, period_start: datetime) -> CheckpointResult:
        """Record every account's state at a month boundary (UTC), after verifying the rows
        since the previous checkpoints.

        The boundary must be a month start, an hour past, with no transaction begun before
        it still running (``InvalidInputError``, DC006 or DC130); a ledger that breaks an
        invariant is refused (``LedgerInconsistentError``, DC131). Taking a boundary again
        records nothing more.
        """
        return await self._one(CheckpointResult, _rpc.take_checkpoints(period_start))

    async def partitions(self) -> list[PartitionRow]:
        """The partitions of the journal and of its draws, one per month and a default one
        each (service role).

        A default partition holds the rows of months without a partition: its ``row_count``
        should be 0 (docs/operations.md, "Partitions").
        """
        return _rpc.many(PartitionRow, await self.store.call(_rpc.partitions()))

    async def schema_version(self) -> str | None:
        """The version of ducto's schema in the database (None when it is not installed).

        It is the timestamp of the newest migration applied; ``ducto status`` compares it
        with the newest migration this client ships.
        """
        try:
            rows = await self.store.call(_rpc.schema_version())
        except SchemaError:
            return None
        return str(rows[0]["value"])

    # ------------------------------------------------------------ plans and features

    async def upsert_plan(
        self,
        plan_id: str,
        name: str,
        features: Mapping[str, Any] | None = None,
        *,
        allowance: int | None = None,
        allowance_period: str | None = None,
        rollover_cap: int | None = None,
        is_default: bool = False,
    ) -> PlanResult:
        """Create or replace a plan (service role).

        ``allowance`` credits are granted per ``allowance_period`` (day, week, month or
        year, UTC) by :meth:`grant_allowances`; up to ``rollover_cap`` unspent credits carry
        into the next period. ``is_default`` makes it the plan of users without one.
        """
        call = _rpc.upsert_plan(
            plan_id, name, features, allowance, allowance_period, rollover_cap, is_default
        )
        return await self._one(PlanResult, call)

    async def assign_plan(self, user_id: str | UUID, plan_id: str | None) -> GetUserPlanResult:
        """Put a user on a plan; None removes the assignment (back to the default plan)."""
        return await self._one(GetUserPlanResult, _rpc.assign_plan(user_id, plan_id))

    async def get_user_plan(self, user_id: str | UUID) -> GetUserPlanResult:
        """Fetch user's current plan (including feature entitlements).

        A user without an assignment gets the default plan (``is_default``), or no plan and
        no features when there is no default plan: never an error.
        """
        return await self._one(GetUserPlanResult, _rpc.get_user_plan(user_id))

    async def check_feature(self, user_id: str | UUID, feature: str) -> CheckFeatureResult:
        """Check whether a user's plan has a specific feature entitlement.

        Feature values follow a truthy convention: False / None / absent => has_feature
        False; True / numeric / string => has_feature True. ``value`` carries the value, so a
        numeric limit can be used.
        """
        call = _rpc.check_feature(user_id, feature)
        return await self._one(CheckFeatureResult, call)

    async def grant_allowances(self, user_id: str | UUID | None = None) -> AllowanceResult:
        """Grant this period's plan allowances, once per user and period (all users or one)."""
        return await self._one(AllowanceResult, _rpc.grant_allowances(user_id))

    # ------------------------------------------------------------ usage analytics

    async def aggregate_stats(self, start: datetime, end: datetime) -> AggregateStatsRow:
        """Aggregate statistics across all users in a time window [start, end).

        Net spend is what charges took minus what refunds made in the window gave back.
        """
        return await self._one(AggregateStatsRow, _rpc.aggregate_stats(start, end))

    async def daily_spend(self, start: datetime, end: datetime) -> list[DailySpendRow]:
        """Daily spend aggregation in a time window: one row per UTC day, oldest first."""
        return _rpc.many(DailySpendRow, await self.store.call(_rpc.daily_spend(start, end)))

    async def spend_by_model(self, start: datetime, end: datetime) -> list[SpendByModelRow]:
        """Aggregate spend by model in a time window, highest net spend first."""
        return _rpc.many(SpendByModelRow, await self.store.call(_rpc.spend_by_model(start, end)))

    async def spend_by_user(self, start: datetime, end: datetime) -> list[SpendByUserRow]:
        """Aggregate spend by user in a time window, highest net spend first."""
        return _rpc.many(SpendByUserRow, await self.store.call(_rpc.spend_by_user(start, end)))

    async def top_users(self, limit: int, start: datetime, end: datetime) -> list[TopUserRow]:
        """Top users by spend in a time window: the ``limit`` (1 to 1000) highest net spends."""
        return _rpc.many(TopUserRow, await self.store.call(_rpc.top_users(limit, start, end)))

    # ------------------------------------------------------------ teams

    async def upsert_team(self, team_id: str | UUID, name: str, min_balance: int = 0) -> TeamResult:
        """Create a team with its credit pool, or rename it and move its floor.

        The pool is the account ``team:<team_id>`` (``TeamResult.account_user_id``): top it
        up with add_credits, read it with get_balance.
        """
        return await self._one(TeamResult, _rpc.upsert_team(team_id, name, min_balance))

    async def set_team_member(
        self,
        team_id: str | UUID,
        user_id: str | UUID,
        role: str = "member",
        *,
        spend_limit: int | None = None,
        limit_period: str | None = None,
    ) -> TeamMemberResult:
        """Add a member (role owner, admin or member) or change their role and limit.

        ``spend_limit`` caps the member's net spend from the pool per ``limit_period``
        (day, week or month, UTC); None means no limit.
        """
        call = _rpc.set_team_member(team_id, user_id, role, spend_limit, limit_period)
        return await self._one(TeamMemberResult, call)

    async def remove_team_member(self, team_id: str | UUID, user_id: str | UUID) -> bool:
        """Remove a member; False when they were not one. Their past charges stay theirs."""
        rows = await self.store.call(_rpc.remove_team_member(team_id, user_id))
        return bool(rows[0]["value"])

    async def deduct_team(
        self,
        team_id: str | UUID,
        user_id: str | UUID,
        metrics: UsageMetrics,
        idempotency_key: str | None = None,
        metadata: CreditMetadata | None = None,
    ) -> TeamDeductionResult:
        """Deduct from a team's shared balance pool.

        Calculates cost via the pricing engine, then debits the team pool, in one database
        call that prices the usage under the active pricing version and attributes the
        charge to ``user_id``.

        Raises:
            PricingNotLoadedError: If pricing hasn't been loaded.
            NotTeamMemberError: ``user_id`` is not a member of the team.
            MemberLimitExceededError: the charge would exceed the member's spending limit.
            TeamPoolExhaustedError: the pool cannot pay it above its floor.
        """
        _engine(self._engine)
        call = _rpc.deduct_team(team_id, user_id, metrics, metadata, idempotency_key)
        return await self._one(TeamDeductionResult, call)


# -- sync flavour: generated from the async source above by scripts/unasync.py; do not edit --
class CreditManager:
    """Orchestrates credit operations over a :class:`~ducto.interface.CreditStore`.

    Args:
        store: A CreditStore adapter (HttpxSupabaseStore, PostgresStore, ...).
            A store given a read replica (``read_dsn``, ``read_url``, ``read_client``)
            answers the analytics and ``export_journal`` from it; every other method from
            the primary.
        engine: An optional pre-configured PricingEngine. If omitted, call
            load_pricing_from_store() or publish_pricing_from_dict() before deduct().
        emitter: An optional CreditEventEmitter for lifecycle events (``ducto.events``).
    """

    def __init__(
        self,
        store: CreditStore,
        engine: PricingEngine | None = None,
        emitter: CreditEventEmitter | None = None,
    ) -> None:
        self.store = store
        self._engine = engine
        self._emitter = emitter

    @property
    def emitter(self) -> CreditEventEmitter | None:
        """The CreditEventEmitter told of every operation, or None."""
        return self._emitter

    def _one(self, cls: type[_T], call: RpcCall) -> _T:
        """Send ``call``, parse its one row as ``cls``, and tell the emitter."""
        try:
            result = _rpc.one(cls, self.store.call(call))
        except InsufficientCreditsError as exc:
            if self._emitter is not None:
                self._emitter.refused(exc)
            raise
        if self._emitter is not None:
            self._emitter.observe(result)
        return result

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
        published = self._one(PricingVersion, _rpc.publish_pricing(config, label))
        self._engine = PricingEngine.from_version(published)

    def publish_pricing_from_dict(self, data: PricingConfigData | dict[str, Any]) -> None:
        """Load pricing from a PricingConfigData or raw dict and sync it (publish it).

        Raises:
            PricingConfigError: the config is invalid (nothing is published).
        """
        self.publish_pricing(PricingConfigData.parse(data))

    def get_pricing(self, version: int | None = None) -> PricingVersion:
        """A published pricing version; the active one when ``version`` is None."""
        return self._one(PricingVersion, _rpc.get_pricing(version))

    def pricing_versions(self) -> list[PricingVersion]:
        """Every published pricing version, newest (the active one) first."""
        return _rpc.many(PricingVersion, self.store.call(_rpc.list_pricing_versions()))

    def calculate_cost(self, metrics: UsageMetrics, version: int | None = None) -> CostResult:
        """What the database charges for ``metrics`` (active or given version); no write."""
        return self._one(CostResult, _rpc.calculate_cost(metrics, version))

    def deduct(
        self,
        user_id: str | UUID,
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
        return self._one(DeductionResult, call)

    def deduct_fixed(
        self,
        user_id: str | UUID,
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
        return self._one(DeductionResult, call)

    @contextmanager
    def metered_call(
        self,
        user_id: str | UUID,
        estimate: UsageMetrics | int,
        *,
        idempotency_key: str | None = None,
        metadata: CreditMetadata | None = None,
        operation_type: str = "usage",
        min_balance: int | None = None,
        timeout_seconds: int = 900,
        max_overage: int | None = None,
    ) -> Iterator[MeteredCall]:
        """Hold an estimate around a model call, then charge what it actually used.

        ``estimate`` is credits, or usage priced by the engine. Before the block, the
        estimate is reserved (``InsufficientCreditsError`` here means the call should not
        be made). In the block, ``record()`` the usage. After it, the hold is settled with
        the recorded usage, priced by the database (an overage beyond the hold is
        charged too), even when the block raised after recording; with nothing recorded it
        is released. ``idempotency_key`` names the request: a retried request with the same
        key is not charged again. A retry that measured the same usage gets the first
        charge as ``result``, with ``is_replay``; one that measured other usage raises
        ``IdempotencyConflictError`` (the key's first charge stands). Either way its new
        hold is released. ``max_overage`` bounds the charge beyond the hold, as in
        ``settle_reservation``; beyond it ``OverageLimitError`` leaves the hold active, to
        be settled (``meter.reservation``) or to time out.
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
                call = _rpc.settle_usage(
                    hold.reservation_id, meter.usage, None, idempotency_key, max_overage
                )
                try:
                    meter.result = self._one(DeductionResult, call)
                except IdempotencyConflictError:
                    # the key's request was charged already, with other usage: this hold
                    # is not charged, and not left to count against the account
                    self.release_reservation(hold.reservation_id)
                    raise
        if meter.usage is None:
            raise _no_usage(hold)

    def setup(self) -> SetupResult:
        """Run bundled SQL migrations through the store (see the store's ``setup``)."""
        return self.store.setup()

    def add_credits(
        self,
        user_id: str | UUID,
        amount: int,
        tx_type: str = "adjustment",
        metadata: CreditMetadata | None = None,
        expires_at: datetime | None = None,
        *,
        category: str = "paid",
        priority: int = 50,
        idempotency_key: str | None = None,
        scope: Sequence[str] | None = None,
    ) -> AddCreditsResult:
        """Add credits to a user's account as a new grant.

        ``tx_type`` is one of grant, purchase, adjustment, promotion; ``category`` paid or
        promotional; ``priority`` 0 (spent first) to 100; ``expires_at`` None for never.
        ``scope`` limits the grant to some charges: entries ``model:<glob>``,
        ``job:<name>``, ``feature:<name>`` (docs/scopes.md); None for any charge.
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
            scope=scope,
        )
        return self._one(AddCreditsResult, call)

    def reserve_credits(
        self,
        user_id: str | UUID,
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
        return self._one(ReserveResult, call)

    def settle_reservation(
        self,
        reservation_id: str | UUID,
        actual_amount: int,
        metadata: CreditMetadata | None = None,
        *,
        max_overage: int | None = None,
    ) -> DeductionResult:
        """Charge the actual amount of a reservation; an overage beyond the hold is kept.

        The overage is bounded: at most ``max_overage`` credits beyond the hold, by default
        9 times the hold (a settle charges at most 10 times what it held). Beyond it,
        ``OverageLimitError``: nothing is charged and the hold stays as it was.
        """
        call = _rpc.settle_reservation(reservation_id, actual_amount, metadata, max_overage)
        return self._one(DeductionResult, call)

    def release_reservation(self, reservation_id: str | UUID) -> ReleaseResult:
        """Let a reservation go without charging it."""
        call = _rpc.release_reservation(reservation_id)
        return self._one(ReleaseResult, call)

    def refund_credits(
        self,
        transaction_id: str | UUID | None,
        amount: int | None = None,
        reason: str | None = None,
        metadata: CreditMetadata | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> RefundResult:
        """Refund a previous credit deduction, fully (amount None) or partly.

        ``transaction_id`` is the ``transaction_id`` of a charge's result, as text or a
        ``uuid.UUID``. A charge of 0 credits has none (None): refunding it raises
        ``RefundError``, since nothing was charged.
        """
        call = _rpc.refund_transaction(transaction_id, amount, reason, metadata, idempotency_key)
        return self._one(RefundResult, call)

    def void_grant(
        self,
        grant_id: str | UUID,
        amount: int | None = None,
        reason: str | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> VoidResult:
        """Remove what is left of a grant (amount None), or part of it, with a ``void`` row.

        What was spent stays spent: more than is left raises ``RefundError`` (DC121), an
        unknown grant ``NotFoundError``. A replayed key returns the first result.
        """
        return self._one(VoidResult, _rpc.void_grant(grant_id, amount, reason, idempotency_key))

    def set_price_plan(self, price_id: str, plan_id: str | None) -> PricePlan | None:
        """Map a Stripe price to the plan it sells; None removes the price (returns None).

        A subscription to the price assigns the plan, and each paid period invoice grants
        the plan's allowance (docs/stripe.md). An unknown plan raises ``NotFoundError``.
        """
        rows = _rpc.many(PricePlan, self.store.call(_rpc.set_price_plan(price_id, plan_id)))
        return rows[0] if rows else None

    def list_price_plans(self) -> list[PricePlan]:
        """Every Stripe price mapped to a plan, by price id."""
        return _rpc.many(PricePlan, self.store.call(_rpc.list_price_plans()))

    def get_balance(self, user_id: str | UUID) -> BalanceResult:
        """Get a user's current credit balance, held credits and available credits."""
        return self._one(BalanceResult, _rpc.get_balance(user_id))

    def balance_at(self, user_id: str | UUID, at: datetime) -> BalanceAtResult:
        """The balance of a user's journal at an instant: its rows created at or before ``at``.

        This is the journal's balance: credits that lapsed count until the sweep journals
        their expiry, and holds never count (``get_balance`` is what can be spent now).
        """
        return self._one(BalanceAtResult, _rpc.balance_at(user_id, at))

    def statement(self, user_id: str | UUID, start: datetime, end: datetime) -> StatementResult:
        """A user's statement of the window [start, end).

        Opening and closing balances (the journal's, just before ``start`` and just before
        ``end``), the totals of the window by journal type, by model and by the category of
        the grants credited, and the grants that expire in the 30 days after ``end`` with
        what is left of them now.
        """
        return self._one(StatementResult, _rpc.statement(user_id, start, end))

    def set_limits(
        self,
        user_id: str | UUID,
        *,
        windows: Sequence[SpendWindow] = (),
        max_active_holds: int | None = None,
        credit_line: int | None = None,
        credit_line_grace_seconds: int | None = None,
    ) -> LimitsResult:
        """Set a user's (or a team pool's, ``"team:<id>"``) whole limit configuration.

        Replaces what was set before: what is left out is no limit (no spend windows, no
        cap on active holds, and the plan's credit line). Charges and new holds are then
        refused with ``LimitExceededError`` past a window, ``TooManyHoldsError`` past the
        cap, and admitted down to ``min_balance - credit_line``; with a grace,
        ``CreditLineOverdueError`` once the balance has been below zero that long.
        Returns the limits as ``get_limits`` reads them.
        """
        call = _rpc.set_limits(
            user_id, windows, max_active_holds, credit_line, credit_line_grace_seconds
        )
        return self._one(LimitsResult, call)

    def get_limits(self, user_id: str | UUID) -> LimitsResult:
        """A user's limits, with what each spend window has used and held now."""
        return self._one(LimitsResult, _rpc.get_limits(user_id))

    def set_plan_credit_line(
        self, plan_id: str, credit_line: int, credit_line_grace_seconds: int | None = None
    ) -> None:
        """Set the credit line of a plan's users (an account's own credit line wins)."""
        call = _rpc.set_plan_credit_line(plan_id, credit_line, credit_line_grace_seconds)
        self.store.call(call)

    # ------------------------------------------------------------ auto top-up (docs/stripe.md)

    def set_auto_topup(
        self,
        user_id: str | UUID,
        *,
        threshold: int,
        unit_price_minor: int | Decimal,
        currency: str,
        stripe_customer_id: str,
        stripe_payment_method_id: str,
        amount: int | None = None,
        target_balance: int | None = None,
        monthly_cap_credits: int | None = None,
        monthly_cap_minor: int | None = None,
        cooldown_seconds: int = 3600,
        max_failures: int = 3,
        enabled: bool = True,
    ) -> AutoTopupRule:
        """Set a user's (or team pool's) auto top-up rule, replacing the one before.

        Below ``threshold`` a debit requests ``amount`` credits, or what takes the balance
        to ``target_balance`` (give one), charged ``ceil(credits * unit_price_minor)`` minor
        units of ``currency`` on the saved payment method, at most once per
        ``cooldown_seconds`` and within the monthly caps. Setting a rule starts its failure
        count over; enabling it while the balance is below the threshold requests at once.

        Raises:
            InvalidInputError: a bad value (nothing is written).
        """
        call = _rpc.set_auto_topup(
            user_id, threshold, unit_price_minor, currency, stripe_customer_id,
            stripe_payment_method_id, amount, target_balance, monthly_cap_credits,
            monthly_cap_minor, cooldown_seconds, max_failures, enabled,
        )  # fmt: skip
        return self._one(AutoTopupRule, call)

    def get_auto_topup(self, user_id: str | UUID) -> AutoTopupRule:
        """A user's auto top-up rule with this month's requests and the open one.

        Raises:
            NotFoundError: the user has no rule.
        """
        return self._one(AutoTopupRule, _rpc.get_auto_topup(user_id))

    def claim_topup_requests(
        self, limit: int = 10, *, lease_seconds: int = 300
    ) -> list[TopupRequest]:
        """Claim up to ``limit`` due top-up requests for ``lease_seconds`` (then another
        worker may take them again, with the same Stripe idempotency key)."""
        call = _rpc.claim_topup_requests(limit, lease_seconds)
        return _rpc.many(TopupRequest, self.store.call(call))

    def record_topup_payment(self, request_id: str | UUID, payment_intent_id: str) -> TopupRequest:
        """Record the PaymentIntent made for a request (a later run reads it back).

        Raises:
            NotFoundError: no such request.
            TopupConflictError: the request already has another payment intent.
        """
        call = _rpc.record_topup_payment(request_id, payment_intent_id)
        return _rpc.one(TopupRequest, self.store.call(call))

    def complete_topup(
        self,
        request_id: str | UUID,
        payment_intent_id: str | None,
        status: str,
        error: str | None = None,
    ) -> TopupRequest:
        """Report a request's payment: ``succeeded`` grants its credits once (keyed by the
        payment intent; the worker and the webhook may both report it),
        ``requires_action`` writes ``topup.action_required``, ``processing`` waits, and
        ``failed`` / ``requires_payment_method`` / ``canceled`` count a failure (a retry
        after the cooldown, or the rule disabled after ``max_failures`` in a row).

        Raises:
            NotFoundError: no such request.
            TopupConflictError: the request already has another payment intent.
        """
        call = _rpc.complete_topup(request_id, payment_intent_id, status, error)
        return _rpc.one(TopupRequest, self.store.call(call))

    def run_topups(
        self, payer: TopupPayer, *, limit: int = 10, lease_seconds: int = 300
    ) -> list[TopupRequest]:
        """Claim due top-up requests, pay each with ``payer`` (``StripeTopupPayer``) and
        report it; the requests as reported. A request Stripe could not be reached for is
        left to its lease and tried again by a later run."""
        reported = []
        for request in self.claim_topup_requests(limit, lease_seconds=lease_seconds):
            outcome = payer.pay(request)
            if outcome.payment_intent_id is not None and request.payment_intent_id is None:
                # recorded before it is reported: a run after a crash reads it back
                self.record_topup_payment(request.id, outcome.payment_intent_id)
            if outcome.status is None:
                continue
            reported.append(
                self.complete_topup(
                    request.id, outcome.payment_intent_id, outcome.status, outcome.error
                )
            )
        return reported

    def export_journal(
        self,
        start: datetime,
        end: datetime,
        user_id: str | UUID | None = None,
        *,
        page_size: int = 1000,
    ) -> Iterator[JournalRow]:
        """Every journal row created in the window [start, end), one user's or everyone's.

        Rows come in ``(account_id, seq)`` order, fetched ``page_size`` (1 to 10000) at a
        time with a keyset cursor (the last row's ``(account_id, seq)``), so memory stays
        flat however long the window and each page costs the same. Each page is its own
        call: rows appended while the export runs are in it when they fall in the window
        after the cursor, and no row is read twice or skipped (journal rows never change).
        """
        after: tuple[int, int] | None = None
        while True:
            call = _rpc.export_journal(start, end, user_id, after, page_size)
            fetched = 0
            for row in _rpc.many(JournalRow, self.store.call(call)):
                yield row
                fetched += 1
                after = (row.account_id, row.seq)  # the next page starts after it
            if fetched < page_size:
                return

    # ------------------------------------------------------------ events (docs/events.md)

    def list_events(
        self,
        user_id: str | UUID | None = None,
        *,
        after: str | UUID | None = None,
        types: Sequence[str] | None = None,
        limit: int = 100,
    ) -> list[LedgerEvent]:
        """Events of the outbox in id (time) order after the cursor ``after`` (an event id):
        one user's, or everyone's (service role, ``user_id`` None). ``types`` filters by
        type; ``limit`` is 1 to 1000."""
        call = _rpc.list_events(user_id, after, types, limit)
        return _rpc.many(LedgerEvent, self.store.call(call))

    def poll_events(
        self, after: str | UUID | None = None, *, limit: int = 100
    ) -> list[LedgerEvent]:
        """Every user's events after the cursor ``after`` (an event id), in id order, for a
        reader that keeps a cursor: no event can later commit below the last one returned.
        While a transaction that wrote events is still open it answers none (ask again).
        Service role."""
        return _rpc.many(LedgerEvent, self.store.call(_rpc.poll_events(after, limit)))

    def dispatch_events(self, after: str | UUID | None = None, *, limit: int = 100) -> str | None:
        """Feed the outbox to this manager's emitter: every event after the cursor ``after``
        (up to ``limit``, read with :meth:`poll_events`, so none is skipped), to its
        subscribers, in id order. Returns the cursor to pass next time (the last event's
        id; ``after`` when there was none).

        Raises:
            InvalidInputError: the manager has no emitter.
        """
        if self._emitter is None:
            raise InvalidInputError("dispatch_events needs a manager with an emitter", code="DC006")
        events = self.poll_events(after, limit=limit)
        cursor = self._emitter.feed(events)
        return cursor if cursor is not None else None if after is None else str(after)

    def set_alert(
        self,
        user_id: str | UUID | None = None,
        *,
        plan_id: str | None = None,
        threshold: int | None = None,
        percent: int | float | Decimal | None = None,
    ) -> BalanceAlert:
        """Set a ``balance.low`` threshold of a user (or team pool ``team:<id>``) or of a
        plan: ``threshold`` credits, or ``percent`` of the account's last top-up. Setting
        one that exists returns it.

        Raises:
            InvalidInputError: not exactly one owner or one kind of threshold, or a bad value.
            NotFoundError: the plan does not exist.
        """
        call = _rpc.set_alert(user_id, plan_id, threshold, percent)
        return _rpc.one(BalanceAlert, self.store.call(call))

    def delete_alert(self, alert_id: str | UUID) -> bool:
        """Delete a ``balance.low`` threshold; False when there was none."""
        rows = self.store.call(_rpc.delete_alert(alert_id))
        return bool(rows[0]["value"])

    def list_alerts(
        self, user_id: str | UUID | None = None, *, plan_id: str | None = None
    ) -> list[BalanceAlert]:
        """A user's, a plan's, or (neither given) every ``balance.low`` threshold."""
        call = _rpc.list_alerts(user_id, plan_id)
        return _rpc.many(BalanceAlert, self.store.call(call))

    def set_grant_expiring_days(self, days: int) -> int:
        """How many days (1 to 365) before its expiry a grant's ``grant.expiring`` fires."""
        rows = self.store.call(_rpc.set_grant_expiring_days(days))
        return int(rows[0]["value"])

    def emit_due_events(self) -> int:
        """Write the events due by time alone (``grant.expiring``); how many were written.
        (A pg_cron job can call ``credit_emit_due_events()`` instead.)"""
        rows = self.store.call(_rpc.emit_due_events())
        return int(rows[0]["value"])

    def set_event_endpoint(
        self,
        url: str,
        secret: str,
        *,
        event_types: Sequence[str] | None = None,
        enabled: bool = True,
        endpoint_id: str | UUID | None = None,
    ) -> EventEndpoint:
        """Add an endpoint events are POSTed to (signed with ``secret``, 16 to 200
        characters), or change ``endpoint_id``. It gets the events written while it is
        enabled, of ``event_types`` (None: every type)."""
        call = _rpc.set_event_endpoint(url, secret, event_types, enabled, endpoint_id)
        return _rpc.one(EventEndpoint, self.store.call(call))

    def list_event_endpoints(self) -> list[EventEndpoint]:
        """Every endpoint, without its secret."""
        return _rpc.many(EventEndpoint, self.store.call(_rpc.list_event_endpoints()))

    def claim_event_deliveries(
        self, limit: int = 50, *, lease_seconds: int = 60
    ) -> list[EventDeliveryClaim]:
        """Claim up to ``limit`` due deliveries for ``lease_seconds``: no other worker gets
        them meanwhile. Report each with :meth:`finish_event_delivery`."""
        call = _rpc.claim_event_deliveries(limit, lease_seconds)
        return _rpc.many(EventDeliveryClaim, self.store.call(call))

    def finish_event_delivery(
        self,
        claim_id: str | UUID,
        delivered: bool,
        *,
        error: str | None = None,
        retry_after: int | None = None,
    ) -> bool:
        """Report a claimed delivery: delivered, or failed and due again after
        ``retry_after`` seconds (None: the ledger's backoff, 10 s doubling up to an hour).
        False: the claim was no longer current (its lease ended); nothing changed."""
        call = _rpc.finish_event_delivery(claim_id, delivered, error, retry_after)
        rows = self.store.call(call)
        return bool(rows[0]["value"])

    def deliver_events(
        self,
        *,
        batch_size: int = 50,
        lease_seconds: int = 60,
        timeout: float = 10.0,
        max_batches: int = 100,
        http: httpx.Client | None = None,
    ) -> DeliveryReport:
        """POST every due delivery to its endpoint, signed (``ducto.webhooks``), and report
        each: delivered on a 2xx answer; failed otherwise (another status, a timeout, a
        refused connection) and retried later. Runs until no delivery is due, or
        ``max_batches`` batches. ``timeout`` (seconds) must be shorter than the lease, so
        a claim is reported while it is still current. ``http``: a client to send with.
        """
        if not 0 < timeout < lease_seconds:
            raise InvalidInputError(
                f"timeout must be above 0 and below lease_seconds ({lease_seconds}),"
                f" got {timeout!r}",
                code="DC006",
            )
        claimed = delivered = 0
        errors: list[str] = []
        with self._http_client(http, timeout) as client:
            for _ in range(max_batches):
                claims = self.claim_event_deliveries(batch_size, lease_seconds=lease_seconds)
                for claim in claims:
                    outcome = self._post(client, claim, timeout)
                    self.finish_event_delivery(
                        claim.claim_id,
                        outcome.delivered,
                        error=outcome.error,
                        retry_after=outcome.retry_after,
                    )
                    if outcome.delivered:
                        delivered += 1
                    else:
                        errors.append(f"{claim.event_id} -> {claim.url}: {outcome.error}")
                claimed += len(claims)
                if len(claims) < batch_size:
                    break
        return DeliveryReport(claimed, delivered, claimed - delivered, tuple(errors))

    @staticmethod
    @contextmanager
    def _http_client(http: httpx.Client | None, timeout: float) -> Iterator[httpx.Client]:
        """``http``, or a client of our own for the block."""
        if http is not None:
            yield http
            return
        with httpx.Client(timeout=timeout) as client:
            yield client

    @staticmethod
    def _post(client: httpx.Client, claim: EventDeliveryClaim, timeout: float) -> DeliveryOutcome:
        """One attempt of a claimed delivery; a transport error or a timeout is a failure."""
        headers, body = delivery_request(claim)
        try:
            response = client.post(claim.url, content=body, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            return DeliveryOutcome(False, f"{type(exc).__name__}: {exc}"[:500])
        return delivery_outcome(response.status_code, response.headers)

    def sweep_expired_credits(self, dry_run: bool = False) -> SweepResult:
        """Sweep expired credits and timed-out holds from all users' accounts."""
        return self._one(SweepResult, _rpc.sweep_expired(dry_run))

    def verify_ledger(self, since: datetime | None = None) -> list[LedgerIssue]:
        """Recompute every ledger invariant; an empty list means the ledger is consistent.

        With ``since``, each account is checked from its newest checkpoint at or before it
        (``take_checkpoints``), reading only the journal rows after it; what a checkpoint
        summarizes was verified when it was taken and is trusted. An account without one is
        checked in full.
        """
        return _rpc.many(LedgerIssue, self.store.call(_rpc.verify_ledger(since)))

    def take_checkpoints(self, period_start: datetime) -> CheckpointResult:
        """Record every account's state at a month boundary (UTC), after verifying the rows
        since the previous checkpoints.

        The boundary must be a month start, an hour past, with no transaction begun before
        it still running (``InvalidInputError``, DC006 or DC130); a ledger that breaks an
        invariant is refused (``LedgerInconsistentError``, DC131). Taking a boundary again
        records nothing more.
        """
        return self._one(CheckpointResult, _rpc.take_checkpoints(period_start))

    def partitions(self) -> list[PartitionRow]:
        """The partitions of the journal and of its draws, one per month and a default one
        each (service role).

        A default partition holds the rows of months without a partition: its ``row_count``
        should be 0 (docs/operations.md, "Partitions").
        """
        return _rpc.many(PartitionRow, self.store.call(_rpc.partitions()))

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

    # ------------------------------------------------------------ plans and features

    def upsert_plan(
        self,
        plan_id: str,
        name: str,
        features: Mapping[str, Any] | None = None,
        *,
        allowance: int | None = None,
        allowance_period: str | None = None,
        rollover_cap: int | None = None,
        is_default: bool = False,
    ) -> PlanResult:
        """Create or replace a plan (service role).

        ``allowance`` credits are granted per ``allowance_period`` (day, week, month or
        year, UTC) by :meth:`grant_allowances`; up to ``rollover_cap`` unspent credits carry
        into the next period. ``is_default`` makes it the plan of users without one.
        """
        call = _rpc.upsert_plan(
            plan_id, name, features, allowance, allowance_period, rollover_cap, is_default
        )
        return self._one(PlanResult, call)

    def assign_plan(self, user_id: str | UUID, plan_id: str | None) -> GetUserPlanResult:
        """Put a user on a plan; None removes the assignment (back to the default plan)."""
        return self._one(GetUserPlanResult, _rpc.assign_plan(user_id, plan_id))

    def get_user_plan(self, user_id: str | UUID) -> GetUserPlanResult:
        """Fetch user's current plan (including feature entitlements).

        A user without an assignment gets the default plan (``is_default``), or no plan and
        no features when there is no default plan: never an error.
        """
        return self._one(GetUserPlanResult, _rpc.get_user_plan(user_id))

    def check_feature(self, user_id: str | UUID, feature: str) -> CheckFeatureResult:
        """Check whether a user's plan has a specific feature entitlement.

        Feature values follow a truthy convention: False / None / absent => has_feature
        False; True / numeric / string => has_feature True. ``value`` carries the value, so a
        numeric limit can be used.
        """
        call = _rpc.check_feature(user_id, feature)
        return self._one(CheckFeatureResult, call)

    def grant_allowances(self, user_id: str | UUID | None = None) -> AllowanceResult:
        """Grant this period's plan allowances, once per user and period (all users or one)."""
        return self._one(AllowanceResult, _rpc.grant_allowances(user_id))

    # ------------------------------------------------------------ usage analytics

    def aggregate_stats(self, start: datetime, end: datetime) -> AggregateStatsRow:
        """Aggregate statistics across all users in a time window [start, end).

        Net spend is what charges took minus what refunds made in the window gave back.
        """
        return self._one(AggregateStatsRow, _rpc.aggregate_stats(start, end))

    def daily_spend(self, start: datetime, end: datetime) -> list[DailySpendRow]:
        """Daily spend aggregation in a time window: one row per UTC day, oldest first."""
        return _rpc.many(DailySpendRow, self.store.call(_rpc.daily_spend(start, end)))

    def spend_by_model(self, start: datetime, end: datetime) -> list[SpendByModelRow]:
        """Aggregate spend by model in a time window, highest net spend first."""
        return _rpc.many(SpendByModelRow, self.store.call(_rpc.spend_by_model(start, end)))

    def spend_by_user(self, start: datetime, end: datetime) -> list[SpendByUserRow]:
        """Aggregate spend by user in a time window, highest net spend first."""
        return _rpc.many(SpendByUserRow, self.store.call(_rpc.spend_by_user(start, end)))

    def top_users(self, limit: int, start: datetime, end: datetime) -> list[TopUserRow]:
        """Top users by spend in a time window: the ``limit`` (1 to 1000) highest net spends."""
        return _rpc.many(TopUserRow, self.store.call(_rpc.top_users(limit, start, end)))

    # ------------------------------------------------------------ teams

    def upsert_team(self, team_id: str | UUID, name: str, min_balance: int = 0) -> TeamResult:
        """Create a team with its credit pool, or rename it and move its floor.

        The pool is the account ``team:<team_id>`` (``TeamResult.account_user_id``): top it
        up with add_credits, read it with get_balance.
        """
        return self._one(TeamResult, _rpc.upsert_team(team_id, name, min_balance))

    def set_team_member(
        self,
        team_id: str | UUID,
        user_id: str | UUID,
        role: str = "member",
        *,
        spend_limit: int | None = None,
        limit_period: str | None = None,
    ) -> TeamMemberResult:
        """Add a member (role owner, admin or member) or change their role and limit.

        ``spend_limit`` caps the member's net spend from the pool per ``limit_period``
        (day, week or month, UTC); None means no limit.
        """
        call = _rpc.set_team_member(team_id, user_id, role, spend_limit, limit_period)
        return self._one(TeamMemberResult, call)

    def remove_team_member(self, team_id: str | UUID, user_id: str | UUID) -> bool:
        """Remove a member; False when they were not one. Their past charges stay theirs."""
        rows = self.store.call(_rpc.remove_team_member(team_id, user_id))
        return bool(rows[0]["value"])

    def deduct_team(
        self,
        team_id: str | UUID,
        user_id: str | UUID,
        metrics: UsageMetrics,
        idempotency_key: str | None = None,
        metadata: CreditMetadata | None = None,
    ) -> TeamDeductionResult:
        """Deduct from a team's shared balance pool.

        Calculates cost via the pricing engine, then debits the team pool, in one database
        call that prices the usage under the active pricing version and attributes the
        charge to ``user_id``.

        Raises:
            PricingNotLoadedError: If pricing hasn't been loaded.
            NotTeamMemberError: ``user_id`` is not a member of the team.
            MemberLimitExceededError: the charge would exceed the member's spending limit.
            TeamPoolExhaustedError: the pool cannot pay it above its floor.
        """
        _engine(self._engine)
        call = _rpc.deduct_team(team_id, user_id, metrics, metadata, idempotency_key)
        return self._one(TeamDeductionResult, call)
