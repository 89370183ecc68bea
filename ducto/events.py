"""Lifecycle events of the credit ledger, for an app to subscribe to.

A :class:`CreditEventEmitter` given to a manager (``CreditManager(store, emitter=...)``)
hears about every operation that manager completes::

    emitter = CreditEventEmitter(low_balance_threshold=100)
    emitter.subscribe(CreditEventType.LOW_BALANCE, lambda e: notify(e.user_id, e.balance))
    manager = CreditManager(store, emitter=emitter)

Events are emitted after the operation's database call returned: the ledger has already
committed it (or, with a store bound to the caller's connection, written it into the
caller's transaction). A subscriber that raises is logged on the ``ducto.events`` logger
and skipped: it never changes what the operation returns, and cannot roll it back.

What emits what (docs/events.md has the full table):

- ``credits_added``: add_credits; grant_allowances (``user_id`` None: a batch);
- ``credits_reserved``: reserve_credits;
- ``credits_deducted``: every charge (deduct, deduct_fixed, settle_reservation,
  metered_call, deduct_team with ``team_id`` set and ``user_id`` the member);
- ``credits_refunded``: refund_credits;
- ``insufficient_credits``: any operation refused with InsufficientCreditsError (a team
  member's limit or an empty team pool included);
- ``low_balance``: a reserve or a charge that leaves ``available`` below the threshold,
  every time, not only when crossing it;
- ``credits_expired``: sweep_expired_credits that expired credits (``user_id`` None: the
  sweep covers every account).

A replay (``is_replay``) changed nothing, so it emits nothing. Credits that expire during
another operation, without a sweep, are journalled by the database but not emitted here:
follow the database itself for those (docs/events.md).

The database's own events (the outbox ``credit_events``: ``balance.low``,
``balance.depleted``, ``grant.expiring``, ``grant.expired``, ``charge.refunded``,
``limit.reached``), written by any client in the transaction of their change, reach the
same subscribers through :meth:`CreditEventEmitter.feed`, or a manager's
``dispatch_events(cursor)`` that reads the outbox after a cursor and feeds them::

    cursor = None
    while True:
        cursor = manager.dispatch_events(cursor)   # store the cursor to resume after
        time.sleep(5)

Such an event's ``source`` is its :class:`~ducto.models.LedgerEvent`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

from ducto.errors import InsufficientCreditsError
from ducto.models import (
    AddCreditsResult,
    AllowanceResult,
    DeductionResult,
    LedgerEvent,
    RefundResult,
    ReserveResult,
    SweepResult,
    TeamDeductionResult,
)

__all__ = ["CreditEvent", "CreditEventEmitter", "CreditEventHandler", "CreditEventType"]

_log = logging.getLogger("ducto.events")


class CreditEventType(StrEnum):
    """The kinds of lifecycle events."""

    CREDITS_ADDED = "credits_added"
    CREDITS_RESERVED = "credits_reserved"
    CREDITS_DEDUCTED = "credits_deducted"
    CREDITS_REFUNDED = "credits_refunded"
    INSUFFICIENT_CREDITS = "insufficient_credits"
    LOW_BALANCE = "low_balance"
    CREDITS_EXPIRED = "credits_expired"
    # the database's outbox (credit_events), fed by CreditEventEmitter.feed
    BALANCE_LOW = "balance.low"
    BALANCE_DEPLETED = "balance.depleted"
    GRANT_EXPIRING = "grant.expiring"
    GRANT_EXPIRED = "grant.expired"
    CHARGE_REFUNDED = "charge.refunded"
    LIMIT_REACHED = "limit.reached"
    TOPUP_REQUESTED = "topup.requested"
    TOPUP_SUCCEEDED = "topup.succeeded"
    TOPUP_ACTION_REQUIRED = "topup.action_required"
    TOPUP_DISABLED = "topup.disabled"


@dataclass(frozen=True, slots=True)
class CreditEvent:
    """One lifecycle event.

    ``amount`` is the credits added, reserved, deducted, refunded or expired; for
    ``insufficient_credits`` the credits that were needed, for ``low_balance`` the
    threshold. ``balance`` is the account's balance after the operation, or its available
    credits for ``credits_reserved``, ``low_balance`` and ``insufficient_credits``; None
    when unknown (a sweep, an allowance run).
    ``source`` is the operation's typed result, or the error it raised.
    """

    type: CreditEventType
    user_id: str | None
    amount: int
    balance: int | None
    source: object
    team_id: str | None = None


#: A subscriber: called with each event it subscribed to; its return value is ignored.
CreditEventHandler = Callable[[CreditEvent], object]


class CreditEventEmitter:
    """Delivers lifecycle events to subscribers; a failing subscriber is logged, not raised.

    Args:
        low_balance_threshold: emit ``low_balance`` when a reserve or a charge leaves fewer
            available credits than this; None (the default) never emits it.
    """

    def __init__(self, low_balance_threshold: int | None = None) -> None:
        self.low_balance_threshold = low_balance_threshold
        self._handlers: list[tuple[CreditEventType | None, CreditEventHandler]] = []

    def subscribe(
        self, event_type: CreditEventType | None, handler: CreditEventHandler
    ) -> Callable[[], None]:
        """Call ``handler`` for every event of ``event_type`` (None: every event).

        Returns a function that unsubscribes it.
        """
        entry = (None if event_type is None else CreditEventType(event_type), handler)
        self._handlers.append(entry)
        return lambda: self._handlers.remove(entry)

    def emit(self, event: CreditEvent) -> None:
        """Deliver ``event`` to its subscribers, in subscription order."""
        for event_type, handler in list(self._handlers):
            if event_type is None or event_type is event.type:
                try:
                    handler(event)
                except Exception:
                    # the operation has happened: a subscriber cannot undo or fail it
                    _log.exception("credit event subscriber %r failed on %s", handler, event.type)

    def feed(self, events: Iterable[LedgerEvent]) -> str | None:
        """Emit events of the outbox (``credit_events``) to the subscribers, in order.

        ``amount`` is the payload's ``threshold`` (balance.low), ``remaining``
        (grant.expiring) or ``amount`` (the others; 0 when it has none); ``balance`` the
        payload's ``balance``, if any. Returns the last event's id (the next cursor), or
        None when there was none.
        """
        last: str | None = None
        for record in events:
            payload = record.payload
            amount = payload.get("threshold", payload.get("remaining", payload.get("amount")))
            balance = payload.get("balance")
            self.emit(
                CreditEvent(
                    CreditEventType(record.type),
                    record.user_id,
                    _int(amount),
                    balance if isinstance(balance, int) else None,
                    record,
                )
            )
            last = record.id
        return last

    def observe(self, result: object) -> None:
        """Emit the events a manager's operation result stands for (none for a replay)."""
        if getattr(result, "is_replay", False):
            return
        for event in self._events_of(result):
            self.emit(event)

    def refused(self, error: InsufficientCreditsError) -> None:
        """Emit ``insufficient_credits`` for an operation refused for lack of credits."""
        details = error.details
        self.emit(
            CreditEvent(
                CreditEventType.INSUFFICIENT_CREDITS,
                _text(details.get("user_id")),
                _int(details.get("needed")),
                details.get("available"),
                error,
                _text(details.get("team_id")),
            )
        )

    def _events_of(self, result: object) -> list[CreditEvent]:
        match result:
            case AddCreditsResult():
                return [
                    CreditEvent(
                        CreditEventType.CREDITS_ADDED,
                        result.user_id,
                        result.amount,
                        result.balance_after,
                        result,
                    )
                ]
            case ReserveResult():
                return [
                    CreditEvent(
                        CreditEventType.CREDITS_RESERVED,
                        result.user_id,
                        result.amount,
                        result.available_after,
                        result,
                    ),
                    *self._low(result.user_id, result.available_after, result),
                ]
            case DeductionResult():
                charged = [
                    CreditEvent(
                        CreditEventType.CREDITS_DEDUCTED,
                        result.user_id,
                        result.amount,
                        result.balance_after,
                        result,
                    )
                ]
                # a hold settled with 0, or usage priced at 0, charged nothing
                return charged[: result.amount > 0] + self._low(
                    result.user_id, result.available_after, result
                )
            case TeamDeductionResult():
                charged = [
                    CreditEvent(
                        CreditEventType.CREDITS_DEDUCTED,
                        result.user_id,
                        result.amount,
                        result.balance_after,
                        result,
                        result.team_id,
                    )
                ]
                return charged[: result.amount > 0] + self._low(
                    result.user_id, result.available_after, result, result.team_id
                )
            case RefundResult():
                return [
                    CreditEvent(
                        CreditEventType.CREDITS_REFUNDED,
                        result.user_id,
                        result.amount,
                        result.balance_after,
                        result,
                    )
                ]
            case SweepResult(dry_run=False, expired_amount=amount) if amount > 0:
                return [CreditEvent(CreditEventType.CREDITS_EXPIRED, None, amount, None, result)]
            case AllowanceResult(amount=amount) if amount > 0:
                return [CreditEvent(CreditEventType.CREDITS_ADDED, None, amount, None, result)]
        return []

    def _low(
        self, user_id: str | None, available: int, source: object, team_id: str | None = None
    ) -> list[CreditEvent]:
        threshold = self.low_balance_threshold
        if threshold is None or available >= threshold:
            return []
        return [
            CreditEvent(CreditEventType.LOW_BALANCE, user_id, threshold, available, source, team_id)
        ]


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _int(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
