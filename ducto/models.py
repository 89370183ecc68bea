"""Typed, immutable results of ledger operations, mirroring the SQL result types.

Each class matches one ``credit_*_result`` type of the migrations field by field and is
built from a row (psycopg) or a JSON object (PostgREST) by :func:`from_row`.
"""

from __future__ import annotations

import types
import uuid
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, fields
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TypeAlias, TypeVar, Union, get_args, get_origin, get_type_hints

from pydantic import BaseModel

#: Extra data attached to a journal row or a reservation: a JSON object (string keys,
#: JSON-serialisable values), at most 16 KiB as JSON.
CreditMetadata: TypeAlias = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class AddCreditsResult:
    """Credits added as a new grant (``credit_add_credits``)."""

    transaction_id: str
    grant_id: str
    user_id: str
    amount: int
    tx_type: str
    category: str
    priority: int
    expires_at: datetime | None
    balance_after: int
    created_at: datetime
    is_replay: bool


@dataclass(frozen=True, slots=True)
class ReserveResult:
    """A hold on credits (``credit_reserve_credits``)."""

    reservation_id: str
    user_id: str
    amount: int
    operation_type: str
    expires_at: datetime
    available_after: int
    created_at: datetime
    is_replay: bool


@dataclass(frozen=True, slots=True)
class DeductionResult:
    """Credits charged by a deduction or a settled reservation.

    ``overage`` is how much a settled amount exceeded its hold. ``transaction_id`` names
    the journal row of the charge; it is None only when 0 credits were charged (a hold
    settled with 0, or usage priced at 0), since the journal has no row of 0 credits.
    ``refund_credits(result.transaction_id)`` type-checks as it is and, for a charge of 0
    credits, raises ``RefundError``: there is nothing to refund.
    ``pricing_version`` is the pricing that priced a usage or fixed-job charge (None for
    a charge by amount).
    """

    transaction_id: str | None
    reservation_id: str | None
    user_id: str
    amount: int
    overage: int
    balance_after: int
    available_after: int
    created_at: datetime
    is_replay: bool
    pricing_version: int | None


@dataclass(frozen=True, slots=True)
class ReleaseResult:
    """A hold let go (``credit_release_reservation``)."""

    reservation_id: str
    user_id: str
    amount: int
    status: str
    available_after: int
    is_replay: bool


@dataclass(frozen=True, slots=True)
class RefundResult:
    """A refund of a usage, fixed-job or capture transaction."""

    transaction_id: str
    refunded_transaction_id: str
    user_id: str
    amount: int
    total_refunded: int
    refundable_remaining: int
    balance_after: int
    created_at: datetime
    is_replay: bool


@dataclass(frozen=True, slots=True)
class ScopeBalance:
    """The credits left in a user's grants of one scope (``scope`` None: unscoped grants)."""

    scope: list[str] | None
    remaining: int


@dataclass(frozen=True, slots=True)
class VoidResult:
    """Credits removed from a grant by ``void_grant``: ``remaining`` is what is left of it."""

    transaction_id: str
    grant_id: str
    user_id: str
    amount: int
    remaining: int
    balance_after: int
    created_at: datetime
    is_replay: bool


@dataclass(frozen=True, slots=True)
class PricePlan:
    """A Stripe price and the ducto plan it sells (docs/stripe.md)."""

    price_id: str
    plan_id: str
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class BalanceResult:
    """A user's balance, the credits held by active reservations, and what is available.

    ``scopes`` breaks the credits left down per scope (docs/scopes.md): unscoped first,
    then each scope; their sum minus any debt is ``balance``.
    """

    user_id: str
    balance: int
    held: int
    available: int
    scopes: tuple[ScopeBalance, ...] = ()


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What a sweep expired (or would expire, with ``dry_run``)."""

    dry_run: bool
    accounts: int
    expired_grants: int
    expired_amount: int
    expired_holds: int
    expired_hold_amount: int


@dataclass(frozen=True, slots=True)
class CheckpointResult:
    """What ``take_checkpoints`` recorded at a month boundary (``credit_take_checkpoints``).

    ``recorded`` checkpoints were taken now, ``kept`` were already recorded and left as they
    were, and ``grants`` grant balances were recorded with the new ones.
    """

    period_start: datetime
    recorded: int
    kept: int
    grants: int


@dataclass(frozen=True, slots=True)
class PartitionRow:
    """A partition of the journal or of the draws (``credit_partitions``).

    ``month`` is the first instant (UTC) of the month it holds; None for the default
    partition, which catches the rows of a month without a partition. Its ``row_count`` is
    exact and should be 0; a month's is the estimate of the table statistics.
    """

    table_name: str
    partition_name: str
    month: datetime | None
    row_count: int


@dataclass(frozen=True, slots=True)
class LedgerIssue:
    """One broken ledger invariant reported by ``verify_ledger()``."""

    account_id: int | None
    user_id: str | None
    check_name: str
    expected: str
    actual: str


@dataclass(frozen=True, slots=True)
class SetupResult:
    """What ``setup()`` did: the migration versions it applied and those already there."""

    applied: tuple[str, ...]
    already_applied: tuple[str, ...]
    schema_version: str


# ---------------------------------------------------------------- plans and features


@dataclass(frozen=True, slots=True)
class PlanResult:
    """A plan as stored (``credit_upsert_plan``)."""

    plan_id: str
    name: str
    features: Mapping[str, Any]
    is_default: bool
    allowance: int | None
    allowance_period: str | None
    rollover_cap: int | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class GetUserPlanResult:
    """The plan a user is on (``credit_get_user_plan``).

    ``is_default`` is true when the user has no assignment and gets the default plan;
    ``plan_id`` is None (and ``features`` empty) when there is no default plan either.
    """

    user_id: str
    plan_id: str | None
    plan_name: str | None
    features: Mapping[str, Any]
    is_default: bool
    allowance: int | None
    allowance_period: str | None
    rollover_cap: int | None
    assigned_at: datetime | None


@dataclass(frozen=True, slots=True)
class CheckFeatureResult:
    """Whether a user's plan grants a feature (``credit_check_feature``).

    ``has_feature`` follows the truthy convention: absent, null and False are no; True, a
    number (0 too), a string (empty too), an object or an array are yes. ``value`` is the
    feature's JSON value (None when absent), so a numeric limit can be read from it.
    """

    user_id: str
    feature: str
    has_feature: bool
    value: Any
    plan_id: str | None


@dataclass(frozen=True, slots=True)
class AllowanceResult:
    """What one run of the allowance job did (``credit_grant_allowances``).

    ``users`` were considered; ``granted`` got this period's allowance now (``amount``
    credits in all, ``rollover`` of them carried from the previous period);
    ``already_granted`` had it from an earlier run.
    """

    users: int
    granted: int
    already_granted: int
    amount: int
    rollover: int


# ---------------------------------------------------------------- limits


@dataclass(frozen=True, slots=True)
class SpendWindow:
    """A spend window to set with ``set_limits``: at most ``spend_limit`` credits of net spend.

    ``period`` is ``"day"``, ``"week"`` or ``"month"`` (the calendar period in UTC, weeks
    from Monday) or ``"hours"`` (the last ``hours`` hours, 1 to 8784). With
    ``model_pattern`` (``*`` matches any run of characters, case-insensitive, as in the
    pricing) only charges of a matching model count and are checked; active holds count in
    every window.
    """

    period: str
    spend_limit: int
    hours: int | None = None
    model_pattern: str | None = None


@dataclass(frozen=True, slots=True)
class SpendWindowUsage:
    """A spend window and what it holds now (``credit_get_limits``).

    ``used`` is the net spend since ``window_start`` (charges minus refunds of them),
    ``held`` the account's active holds, ``remaining = spend_limit - used - held``: negative
    when a settle went past the limit (a settle is never refused).
    """

    period: str
    hours: int | None
    model_pattern: str | None
    spend_limit: int
    window_start: datetime
    used: int
    held: int
    remaining: int


@dataclass(frozen=True, slots=True)
class LimitsResult:
    """An account's limits and how much of them is in use (``credit_get_limits``).

    ``credit_line`` is the effective one (the account's own, else its plan's, else 0):
    charges are admitted down to ``min_balance - credit_line``. ``below_zero_since`` is
    when the balance last went below zero (None while it is >= 0), ``credit_line_due_at``
    when the grace ends (None without a grace).
    """

    user_id: str
    windows: tuple[SpendWindowUsage, ...]
    max_active_holds: int | None
    active_holds: int
    held: int
    credit_line: int
    credit_line_grace_seconds: int | None
    balance: int
    below_zero_since: datetime | None
    credit_line_due_at: datetime | None


# ---------------------------------------------------------------- auto top-up


@dataclass(frozen=True, slots=True)
class AutoTopupRule:
    """An account's auto top-up rule (``credit_get_auto_topup``, docs/stripe.md).

    Below ``threshold`` a debit requests ``amount`` credits (or what takes the balance to
    ``target_balance``) at ``unit_price_minor`` minor units of ``currency`` each.
    ``month_credits`` / ``month_minor`` are this calendar month's requests (UTC) that did not
    fail, checked against the caps; ``open_request_id`` the request in flight, if any.
    ``disabled_reason`` says why the ledger turned the rule off (``max_failures`` failed
    payments in a row).
    """

    user_id: str
    enabled: bool
    threshold: int
    amount: int | None
    target_balance: int | None
    unit_price_minor: Decimal
    currency: str
    monthly_cap_credits: int | None
    monthly_cap_minor: int | None
    cooldown_seconds: int
    max_failures: int
    stripe_customer_id: str
    stripe_payment_method_id: str
    consecutive_failures: int
    disabled_reason: str | None
    last_requested_at: datetime | None
    month_credits: int
    month_minor: int
    open_request_id: str | None
    balance: int
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class TopupRequest:
    """One auto top-up payment attempt (``credit_topup_request_row``).

    ``state``: ``pending`` (due for the worker), ``processing`` (claimed, or Stripe still
    working), ``requires_action`` (the customer must authenticate), ``succeeded`` (credits
    granted by ``transaction_id``) or ``failed``. ``id`` is the Stripe idempotency key and
    the PaymentIntent's ``metadata.ducto_topup_request_id``.
    """

    id: str
    user_id: str
    state: str
    credits: int
    amount_minor: int
    currency: str
    stripe_customer_id: str
    stripe_payment_method_id: str
    attempts: int
    payment_intent_id: str | None
    transaction_id: str | None
    last_error: str | None
    created_at: datetime
    completed_at: datetime | None


# ---------------------------------------------------------------- statements


@dataclass(frozen=True, slots=True)
class BalanceAtResult:
    """The journal's balance of a user at an instant (``credit_balance_at``).

    The sum of the user's journal rows created at or before ``at``. Credits that lapsed
    count until the sweep journals their expiry; holds never count.
    """

    user_id: str
    at: datetime
    balance: int


@dataclass(frozen=True, slots=True)
class StatementTypeTotal:
    """The journal rows of one type in a statement's window: how many, and their signed sum."""

    type: str
    count: int
    amount: int


@dataclass(frozen=True, slots=True)
class StatementModelTotal:
    """The rows of one model in a statement's window (a refund counts for its charge's model)."""

    model: str
    count: int
    amount: int


@dataclass(frozen=True, slots=True)
class StatementCategoryTotal:
    """The grants of one category credited in a statement's window."""

    category: str
    count: int
    amount: int


@dataclass(frozen=True, slots=True)
class ExpiringGrant:
    """A grant that expires in the 30 days after a statement's end, with what is left of it now."""

    grant_id: str
    category: str
    remaining: int
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class StatementResult:
    """A user's statement of the window [period_start, period_end) (``credit_statement``).

    ``opening_balance`` and ``closing_balance`` are the journal's balances just before the
    start and just before the end; ``by_type`` holds every row of the window, so
    ``opening_balance + sum(t.amount for t in by_type) == closing_balance``. Amounts are
    signed as in the journal (credits positive, charges and expiries negative). Every
    tuple is sorted by its key; ``expiring`` soonest first.
    """

    user_id: str
    period_start: datetime
    period_end: datetime
    opening_balance: int
    closing_balance: int
    by_type: tuple[StatementTypeTotal, ...]
    by_model: tuple[StatementModelTotal, ...]
    by_category: tuple[StatementCategoryTotal, ...]
    expiring: tuple[ExpiringGrant, ...]
    expiring_total: int


@dataclass(frozen=True, slots=True)
class JournalRow:
    """One journal row, as ``credit_export_journal`` exports it.

    ``amount`` is signed (credits positive, charges and expiries negative) and
    ``balance_after`` is the account's balance once the row was written; ``seq`` numbers an
    account's rows 1..n in commit order, so ``(account_id, seq)`` is the row's key and the
    export's order. ``metadata`` and ``usage`` are the JSON objects stored with the row.
    """

    id: str
    account_id: int
    seq: int
    user_id: str
    type: str
    amount: int
    balance_after: int
    grant_id: str | None
    reservation_id: str | None
    refund_of: str | None
    idempotency_key: str | None
    metadata: dict[str, Any]
    created_at: datetime
    pricing_version: int | None
    usage: dict[str, Any] | None
    model: str | None
    job_name: str | None
    attributed_user_id: str | None


# ---------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class LedgerEvent:
    """One event of the outbox ``credit_events`` (docs/events.md).

    Written in the transaction of the change it reports: it exists if and only if that
    change committed. ``id`` is stable and time-ordered (a UUIDv7): receivers drop a
    delivery whose id they have seen. ``type`` is one of ``balance.low``,
    ``balance.depleted``, ``grant.expiring``, ``grant.expired``, ``charge.refunded``,
    ``limit.reached``; ``payload`` its fields. ``delivery`` is ``none`` (no endpoint wanted
    it), ``pending`` or ``delivered`` (to every endpoint it was for).
    """

    id: str
    account_id: int
    user_id: str
    type: str
    payload: dict[str, Any]
    created_at: datetime
    delivery: str
    dedupe_key: str | None


@dataclass(frozen=True, slots=True)
class BalanceAlert:
    """A ``balance.low`` threshold of a user (or team pool) or of a plan.

    Either ``threshold`` credits, or ``percent`` of the account's last top-up; it fires
    when a journal write takes the balance from at or above it to below it.
    """

    id: str
    user_id: str | None
    plan_id: str | None
    threshold: int | None
    percent: Decimal | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class EventEndpoint:
    """An HTTP endpoint events are POSTed to, signed (its secret is never read back).

    ``event_types`` None: every type.
    """

    id: str
    url: str
    event_types: list[str] | None
    enabled: bool
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class EventDeliveryClaim:
    """A delivery claimed by a worker: POST ``body`` (these exact bytes, signed with
    ``secret``) to ``url``, then report it with ``claim_id``. ``attempt`` counts from 1."""

    claim_id: str
    event_id: str
    endpoint_id: str
    attempt: int
    url: str
    secret: str
    body: str


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What one delivery run did: deliveries claimed, delivered, and failed (each due again
    later); ``errors`` holds one line per failure."""

    claimed: int
    delivered: int
    failed: int
    errors: tuple[str, ...] = ()


# ---------------------------------------------------------------- usage analytics


@dataclass(frozen=True, slots=True)
class AggregateStatsRow:
    """Totals of a window [window_start, window_end) (``credit_aggregate_stats``).

    ``spent`` is what charges took, ``refunded`` what refunds made in the window gave back,
    ``net_spent`` their difference; ``credited`` and ``expired`` are credits added and
    lapsed. ``users`` counts the distinct users with a charge.
    """

    window_start: datetime
    window_end: datetime
    spent: int
    refunded: int
    net_spent: int
    credited: int
    expired: int
    charges: int
    refunds: int
    users: int


@dataclass(frozen=True, slots=True)
class DailySpendRow:
    """Spend of one UTC day of a window (``credit_daily_spend``); days without any are 0."""

    day: date
    spent: int
    refunded: int
    net_spent: int
    charges: int
    users: int


@dataclass(frozen=True, slots=True)
class SpendByModelRow:
    """Spend for one model in a window (``credit_spend_by_model``).

    ``model`` is None for charges that name no model (by amount, fixed jobs); a refund
    counts for the model of the charge it refunds.
    """

    model: str | None
    spent: int
    refunded: int
    net_spent: int
    charges: int
    users: int


@dataclass(frozen=True, slots=True)
class SpendByUserRow:
    """Spend attributed to one user in a window (``credit_spend_by_user``).

    A team pool's charges count for the member who spent.
    """

    user_id: str
    spent: int
    refunded: int
    net_spent: int
    charges: int


@dataclass(frozen=True, slots=True)
class TopUserRow:
    """One of the users with the highest net spend in a window (``credit_top_users``)."""

    rank: int
    user_id: str
    net_spent: int
    spent: int
    refunded: int
    charges: int


# ---------------------------------------------------------------- teams


@dataclass(frozen=True, slots=True)
class TeamResult:
    """A team and its pool (``credit_upsert_team``).

    ``account_user_id`` (``team:<team_id>``) names the pool's account for the account
    functions: add_credits, get_balance.
    """

    team_id: str
    name: str
    account_user_id: str
    min_balance: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class TeamMemberResult:
    """A member of a team (``credit_set_team_member``).

    ``spent_in_period`` is the member's net spend from the pool in the current
    ``limit_period`` (None without a limit).
    """

    team_id: str
    user_id: str
    role: str
    spend_limit: int | None
    limit_period: str | None
    spent_in_period: int | None
    joined_at: datetime


@dataclass(frozen=True, slots=True)
class TeamDeductionResult:
    """Usage charged to a team's pool and attributed to a member (``credit_deduct_team``).

    ``balance_after`` and ``available_after`` are the pool's; ``spent_in_period`` is the
    member's net spend in the current ``limit_period`` including this charge (None without
    a limit). ``transaction_id`` is None when the usage was priced at 0.
    """

    transaction_id: str | None
    team_id: str
    user_id: str
    amount: int
    balance_after: int
    available_after: int
    spent_in_period: int | None
    spend_limit: int | None
    limit_period: str | None
    created_at: datetime
    is_replay: bool
    pricing_version: int | None


_T = TypeVar("_T")


def from_row(cls: type[_T], row: Mapping[str, Any]) -> _T:
    """Build a result dataclass from a database row or a PostgREST JSON object."""
    converters = _CONVERTERS.get(cls)
    if converters is None:
        hints = get_type_hints(cls)
        converters = tuple(
            (f.name, _converter(hints[f.name]), f.default is MISSING)
            for f in fields(cls)  # type: ignore[arg-type]
        )
        _CONVERTERS[cls] = converters
    # a field with a default may be missing (a newer field read from an older schema)
    return cls(
        **{
            name: convert(row[name])
            for name, convert, required in converters
            if required or name in row
        }
    )


#: Per result class, each field with the function that turns a row value into its type.
_CONVERTERS: dict[type[Any], tuple[tuple[str, Callable[[Any], Any], bool], ...]] = {}


def _converter(hint: Any) -> Callable[[Any], Any]:
    if get_origin(hint) in (Union, types.UnionType):
        (hint,) = (arg for arg in get_args(hint) if arg is not type(None))
    if hint is datetime:  # PostgREST sends ISO 8601 text, psycopg a datetime
        return lambda v: datetime.fromisoformat(v) if isinstance(v, str) else v
    if hint is date:  # PostgREST sends ISO 8601 text, psycopg a date
        return lambda v: date.fromisoformat(v) if isinstance(v, str) else v
    if hint is str:  # psycopg returns uuid columns as UUID
        return lambda v: str(v) if isinstance(v, uuid.UUID) else v
    if hint is int:  # a numeric total (analytics): psycopg gives a Decimal
        return lambda v: int(v) if isinstance(v, Decimal) else v
    if hint is Decimal:  # numeric: psycopg gives a Decimal, the HTTP stores parse one
        return lambda v: v if v is None or isinstance(v, Decimal) else Decimal(v)
    if isinstance(hint, type) and issubclass(hint, BaseModel):  # a jsonb document
        return hint.model_validate
    if get_origin(hint) is tuple:  # a jsonb array of objects, each a result dataclass
        (item, _) = get_args(hint)
        return lambda v: tuple(from_row(item, row) for row in v)
    return _same


def _same(value: Any) -> Any:
    return value
