"""The sans-IO core: which RPC each operation calls, with which arguments, and how its
answer becomes a typed result. Every store (psycopg or PostgREST, sync or async) sends
an :class:`RpcCall` and hands the rows back; nothing here does I/O.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

from ducto._messages import shown
from ducto.errors import InvalidInputError, RefundError
from ducto.models import CreditMetadata, SpendWindow, from_row
from ducto.pricing import PricingConfigData
from ducto.usage import UsageMetrics

#: Largest amount of credits in one operation: 2^53 - 1, exact in every JSON client.
MAX_AMOUNT = 2**53 - 1

_T = TypeVar("_T")


class TextArray(tuple[str, ...]):
    """A ``text[]`` argument: a JSON array over HTTP, a PostgreSQL array through psycopg
    (where a plain list is sent as ``jsonb``)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class RpcCall:
    """One call of a ledger function: its name, named arguments and how to retry it.

    A scalar result comes back as one row ``{"value": ...}``. ``retry_safe`` is true when
    sending the call twice cannot have two effects (it is
    read-only, carries an idempotency key, or is idempotent by nature). ``replica_safe``
    is true for a read of history that may be answered by a read replica, which lags the
    primary by its replay delay: the analytics and the journal export, never a balance
    or anything a charge depends on.
    """

    function: str
    args: Mapping[str, Any] = field(default_factory=dict)
    retry_safe: bool = False
    returns_scalar: bool = False
    replica_safe: bool = False


def _amount(value: object, name: str, minimum: int = 1) -> int:
    # bool is an int in Python, and a float would be silently truncated by a driver
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(
            f"{name} must be a whole number of credits (int), got {type(value).__name__}",
            code="DC001",
        )
    if not minimum <= value <= MAX_AMOUNT:
        raise InvalidInputError(
            f"{name} must be a whole number of credits from {minimum} to {MAX_AMOUNT},"
            f" got {shown(value)}",
            code="DC001",
        )
    return value


def _max_overage(value: int | None) -> int | None:
    # None: the ledger's default bound, 9 times the hold
    return None if value is None else _amount(value, "max_overage", 0)


def _no_nul(value: str, name: str, code: str) -> str:
    # PostgreSQL text cannot hold a NUL: psycopg refuses to send one and PostgREST's
    # database answers 22P05, neither naming the argument
    if "\x00" in value:
        raise InvalidInputError(
            f"{name} must not contain a NUL character (\\x00), got {shown(value)}", code=code
        )
    return value


def _text(value: object, name: str, code: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{name} must be a non-empty string, got {shown(value)}", code=code)
    return _no_nul(value, name, code)


def _word(value: object, name: str) -> str:
    """A string argument the ledger checks against its set (tx_type, category, role...)."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be a string, got {shown(value)}", code="DC006")
    return _no_nul(value, name, "DC006")


def _optional_word(value: object, name: str) -> str | None:
    return None if value is None else _word(value, name)


def _user(value: str | uuid.UUID) -> str:
    # a Supabase user id is a UUID: its text form is what auth.uid()::text gives
    if isinstance(value, uuid.UUID):
        return str(value)
    return _text(value, "user_id", "DC002")


def _uuid(value: object, name: str) -> str:
    """A transaction, reservation or team id: a UUID, as text or ``uuid.UUID``."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, str) and "\x00" not in value:
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise InvalidInputError(f"{name} must be a UUID, got {shown(value)}", code="DC006")


def _metadata(value: CreditMetadata | None) -> dict[str, Any]:
    return _json_object(value, "metadata", "DC003")


def _json_object(value: Mapping[str, Any] | None, name: str, code: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"{name} must be a mapping, got {type(value).__name__}", code=code)
    try:
        # round-trip so the database receives plain JSON; NaN is not JSON
        plain: dict[str, Any] = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"{name} must be JSON-serialisable: {exc}", code=code) from exc
    if _has_nul(plain):  # jsonb cannot hold one either
        raise InvalidInputError(
            f"{name} must not contain a NUL character (\\x00) in a key or a string", code=code
        )
    return plain


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(key) or _has_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_has_nul(item) for item in value)
    return False


def _key(value: str | None) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(
            f"idempotency_key must be a string, got {shown(value)}", code="DC004"
        )
    return _no_nul(value, "idempotency_key", "DC004")


def _scope(value: Sequence[str] | None) -> TextArray | None:
    """A grant's scope: entries ``model:<glob>``, ``job:<name>``, ``feature:<name>``.

    The ledger checks each entry (DC006); here only the shape, so that a lone string is
    not taken for a sequence of one-character entries.
    """
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise InvalidInputError(
            f"scope must be a list of entries such as 'model:gpt-image-*', got {shown(value)}",
            code="DC006",
        )
    for entry in value:
        if not isinstance(entry, str):
            raise InvalidInputError(
                f"each scope entry must be a string, got {shown(entry)}", code="DC006"
            )
    return TextArray(_no_nul(entry, "scope", "DC006") for entry in value)


def add_credits(
    user_id: str | uuid.UUID,
    amount: int,
    tx_type: str,
    metadata: CreditMetadata | None,
    expires_at: datetime | None,
    *,
    category: str = "paid",
    priority: int = 50,
    idempotency_key: str | None = None,
    scope: Sequence[str] | None = None,
) -> RpcCall:
    """``credit_add_credits``: add a grant (limited to ``scope`` when one is given)."""
    if expires_at is not None and (
        not isinstance(expires_at, datetime) or expires_at.tzinfo is None
    ):
        raise InvalidInputError("expires_at must be a timezone-aware datetime", code="DC005")
    args: dict[str, Any] = {
        "p_user_id": _user(user_id),
        "p_amount": _amount(amount, "amount"),
        "p_tx_type": _word(tx_type, "tx_type"),
        "p_category": _word(category, "category"),
        "p_priority": priority,
        "p_expires_at": expires_at,
        "p_metadata": _metadata(metadata),
        "p_idempotency_key": _key(idempotency_key),
    }
    if scope is not None:
        # only when given: an unscoped grant is the call it always was
        args["p_scope"] = _scope(scope)
    return RpcCall("credit_add_credits", args, retry_safe=idempotency_key is not None)


def deduct_credits(
    user_id: str | uuid.UUID,
    amount: int,
    min_balance: int,
    metadata: CreditMetadata | None,
    idempotency_key: str | None,
) -> RpcCall:
    """``credit_deduct_credits``: admit, hold and capture an amount in one step."""
    return RpcCall(
        "credit_deduct_credits",
        {
            "p_user_id": _user(user_id),
            "p_amount": _amount(amount, "amount"),
            "p_min_balance": _amount(min_balance, "min_balance", 0),
            "p_metadata": _metadata(metadata),
            "p_idempotency_key": _key(idempotency_key),
        },
        retry_safe=idempotency_key is not None,
    )


def reserve_credits(
    user_id: str | uuid.UUID,
    amount: int,
    operation_type: str,
    min_balance: int,
    metadata: CreditMetadata | None,
    *,
    timeout_seconds: int = 900,
    idempotency_key: str | None = None,
) -> RpcCall:
    """``credit_reserve_credits``: hold credits for an operation."""
    return RpcCall(
        "credit_reserve_credits",
        {
            "p_user_id": _user(user_id),
            "p_amount": _amount(amount, "amount"),
            "p_operation_type": _word(operation_type, "operation_type"),
            "p_min_balance": _amount(min_balance, "min_balance", 0),
            "p_timeout_seconds": timeout_seconds,
            "p_metadata": _metadata(metadata),
            "p_idempotency_key": _key(idempotency_key),
        },
        retry_safe=idempotency_key is not None,
    )


def settle_reservation(
    reservation_id: str | uuid.UUID,
    actual_amount: int,
    metadata: CreditMetadata | None,
    max_overage: int | None,
) -> RpcCall:
    """``credit_settle_reservation``: charge the actual amount of a hold."""
    return RpcCall(
        "credit_settle_reservation",
        {
            "p_reservation_id": _uuid(reservation_id, "reservation_id"),
            "p_actual_amount": _amount(actual_amount, "actual_amount", 0),
            "p_metadata": _metadata(metadata),
            "p_max_overage": _max_overage(max_overage),
        },
        # settling twice with the same amount is a replay
        retry_safe=True,
    )


def release_reservation(reservation_id: str | uuid.UUID) -> RpcCall:
    """``credit_release_reservation``: let a hold go."""
    return RpcCall(
        "credit_release_reservation",
        {"p_reservation_id": _uuid(reservation_id, "reservation_id")},
        retry_safe=True,
    )


def refund_transaction(
    transaction_id: str | uuid.UUID | None,
    amount: int | None,
    reason: str | None,
    metadata: CreditMetadata | None,
    idempotency_key: str | None = None,
) -> RpcCall:
    """``credit_refund_transaction``: refund a charge fully (amount None) or partly.

    ``transaction_id`` is None in the result of a charge of 0 credits: nothing to refund.
    """
    if transaction_id is None:
        raise RefundError(
            "transaction_id is None: a charge of 0 credits has no transaction, so there is"
            " nothing to refund",
            code="DC050",
        )
    return RpcCall(
        "credit_refund_transaction",
        {
            "p_transaction_id": _uuid(transaction_id, "transaction_id"),
            "p_amount": None if amount is None else _amount(amount, "amount"),
            "p_reason": _optional_word(reason, "reason"),
            "p_metadata": _metadata(metadata),
            "p_idempotency_key": _key(idempotency_key),
        },
        retry_safe=idempotency_key is not None,
    )


def void_grant(
    grant_id: str | uuid.UUID,
    amount: int | None,
    reason: str | None,
    idempotency_key: str | None,
) -> RpcCall:
    """``credit_void_grant``: remove what is left of a grant (amount None) or part of it."""
    return RpcCall(
        "credit_void_grant",
        {
            "p_grant_id": _uuid(grant_id, "grant_id"),
            "p_amount": None if amount is None else _amount(amount, "amount"),
            "p_reason": _optional_word(reason, "reason"),
            "p_idempotency_key": _key(idempotency_key),
        },
        retry_safe=idempotency_key is not None,
    )


def set_price_plan(price_id: str, plan_id: str | None) -> RpcCall:
    """``credit_set_price_plan``: the plan a Stripe price sells (None removes the price)."""
    return RpcCall(
        "credit_set_price_plan",
        {
            "p_price_id": _text(price_id, "price_id", "DC006"),
            "p_plan_id": None if plan_id is None else _text(plan_id, "plan_id", "DC006"),
        },
        retry_safe=True,
    )


def list_price_plans() -> RpcCall:
    """``credit_list_price_plans``: every Stripe price mapped to a plan, by price id."""
    return RpcCall("credit_list_price_plans", retry_safe=True)


def usage_metrics(value: object) -> UsageMetrics:
    """``value`` if it is a UsageMetrics; anything else is refused before any call."""
    if not isinstance(value, UsageMetrics):
        raise InvalidInputError(
            f"metrics must be a UsageMetrics, got {type(value).__name__}", code="DC007"
        )
    return value


def _metrics(value: UsageMetrics) -> dict[str, Any]:
    return usage_metrics(value).to_json()


def deduct_usage(
    user_id: str | uuid.UUID,
    metrics: UsageMetrics,
    metadata: CreditMetadata | None,
    idempotency_key: str | None,
) -> RpcCall:
    """``credit_deduct_usage``: price usage under the active pricing and charge it."""
    return RpcCall(
        "credit_deduct_usage",
        {
            "p_user_id": _user(user_id),
            "p_metrics": _metrics(metrics),
            "p_metadata": _metadata(metadata),
            "p_idempotency_key": _key(idempotency_key),
        },
        retry_safe=idempotency_key is not None,
    )


def deduct_fixed(
    user_id: str | uuid.UUID,
    job_name: str,
    metadata: CreditMetadata | None,
    idempotency_key: str | None,
) -> RpcCall:
    """``credit_deduct_fixed``: charge a fixed-cost job at the active pricing's price."""
    return RpcCall(
        "credit_deduct_fixed",
        {
            "p_user_id": _user(user_id),
            "p_job_name": _text(job_name, "job_name", "DC006"),
            "p_metadata": _metadata(metadata),
            "p_idempotency_key": _key(idempotency_key),
        },
        retry_safe=idempotency_key is not None,
    )


def settle_usage(
    reservation_id: str | uuid.UUID,
    metrics: UsageMetrics,
    metadata: CreditMetadata | None,
    idempotency_key: str | None,
    max_overage: int | None,
) -> RpcCall:
    """``credit_settle_usage``: charge a hold by the usage measured, priced in SQL."""
    return RpcCall(
        "credit_settle_usage",
        {
            "p_reservation_id": _uuid(reservation_id, "reservation_id"),
            "p_metrics": _metrics(metrics),
            "p_metadata": _metadata(metadata),
            "p_idempotency_key": _key(idempotency_key),
            "p_max_overage": _max_overage(max_overage),
        },
        # the same usage settles once; a key makes any repeat a replay
        retry_safe=True,
    )


def publish_pricing(config: PricingConfigData, label: str | None) -> RpcCall:
    """``credit_publish_pricing``: a new version, active at once."""
    if not isinstance(config, PricingConfigData):
        raise InvalidInputError(
            f"config must be a PricingConfigData, got {type(config).__name__}", code="DC060"
        )
    # not retry_safe: a second send would publish a second (identical) version
    return RpcCall(
        "credit_publish_pricing",
        {"p_config": config.to_json(), "p_label": _optional_word(label, "label")},
    )


def get_pricing(version: int | None) -> RpcCall:
    """``credit_get_pricing``: one version, the active one when ``version`` is None."""
    return RpcCall("credit_get_pricing", {"p_version": version}, retry_safe=True)


def list_pricing_versions() -> RpcCall:
    """``credit_list_pricing_versions``: every version, newest (active) first."""
    return RpcCall("credit_list_pricing_versions", retry_safe=True)


def calculate_cost(metrics: UsageMetrics, version: int | None) -> RpcCall:
    """``credit_calculate_cost``: what usage costs, under the active or a given version."""
    return RpcCall(
        "credit_calculate_cost",
        {"p_metrics": _metrics(metrics), "p_version": version},
        retry_safe=True,
    )


def get_balance(user_id: str | uuid.UUID) -> RpcCall:
    """``credit_get_balance``: balance, held and available credits, and the credits left per
    scope."""
    return RpcCall(
        "credit_get_balance",
        {"p_user_id": _user(user_id)},
        retry_safe=True,
    )


def sweep_expired(dry_run: bool) -> RpcCall:
    """``credit_sweep_expired``: expire what is left of expired grants and holds."""
    # a sweep repeated finds nothing more to expire
    return RpcCall("credit_sweep_expired", {"p_dry_run": bool(dry_run)}, retry_safe=True)


def _aware(value: object, name: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidInputError(f"{name} must be a timezone-aware datetime", code="DC006")
    return value


def verify_ledger(since: datetime | None = None) -> RpcCall:
    """``credit_verify_ledger``: every broken invariant, one row each; with ``since``, each
    account checked from its newest checkpoint at or before it."""
    if since is None:
        # no argument at all: a schema from before checkpoints answers it too
        return RpcCall("credit_verify_ledger", retry_safe=True)
    return RpcCall("credit_verify_ledger", {"p_since": _aware(since, "since")}, retry_safe=True)


def take_checkpoints(period_start: datetime) -> RpcCall:
    """``credit_take_checkpoints``: every account's state at a month boundary (UTC)."""
    # taking a boundary again records nothing more
    return RpcCall(
        "credit_take_checkpoints",
        {"p_period_start": _aware(period_start, "period_start")},
        retry_safe=True,
    )


def partitions() -> RpcCall:
    """``credit_partitions``: the journal's and the draws' partitions, with the rows of the
    default partitions."""
    return RpcCall("credit_partitions", retry_safe=True)


def schema_version() -> RpcCall:
    """``credit_schema_version``: the version of ducto's schema in the database."""
    return RpcCall("credit_schema_version", retry_safe=True, returns_scalar=True)


# ---------------------------------------------------------------- plans and features


def _optional_amount(value: int | None, name: str, minimum: int) -> int | None:
    return None if value is None else _amount(value, name, minimum)


def upsert_plan(
    plan_id: str,
    name: str,
    features: Mapping[str, Any] | None,
    allowance: int | None,
    allowance_period: str | None,
    rollover_cap: int | None,
    is_default: bool,
) -> RpcCall:
    """``credit_upsert_plan``: create or replace a plan."""
    return RpcCall(
        "credit_upsert_plan",
        {
            "p_plan_id": _text(plan_id, "plan_id", "DC006"),
            "p_name": _text(name, "name", "DC006"),
            "p_features": _json_object(features, "features", "DC006"),
            "p_allowance": _optional_amount(allowance, "allowance", 1),
            "p_allowance_period": _optional_word(allowance_period, "allowance_period"),
            "p_rollover_cap": _optional_amount(rollover_cap, "rollover_cap", 0),
            "p_is_default": bool(is_default),
        },
        # the same plan written twice is the same plan
        retry_safe=True,
    )


def assign_plan(user_id: str | uuid.UUID, plan_id: str | None) -> RpcCall:
    """``credit_assign_plan``: put a user on a plan (None: back to the default plan)."""
    return RpcCall(
        "credit_assign_plan",
        {
            "p_user_id": _user(user_id),
            "p_plan_id": None if plan_id is None else _text(plan_id, "plan_id", "DC006"),
        },
        retry_safe=True,
    )


def get_user_plan(user_id: str | uuid.UUID) -> RpcCall:
    """``credit_get_user_plan``: the plan a user is on, with its features."""
    return RpcCall("credit_get_user_plan", {"p_user_id": _user(user_id)}, retry_safe=True)


def check_feature(user_id: str | uuid.UUID, feature: str) -> RpcCall:
    """``credit_check_feature``: whether a user's plan grants a feature, and its value."""
    return RpcCall(
        "credit_check_feature",
        {
            "p_user_id": _user(user_id),
            "p_feature": _text(feature, "feature", "DC006"),
        },
        retry_safe=True,
    )


def grant_allowances(user_id: str | uuid.UUID | None) -> RpcCall:
    """``credit_grant_allowances``: this period's allowances, once per user and period."""
    return RpcCall(
        "credit_grant_allowances",
        {"p_user_id": None if user_id is None else _user(user_id)},
        retry_safe=True,
    )


# ---------------------------------------------------------------- usage analytics


def _window(
    function: str, start: datetime, end: datetime, *, replica_safe: bool = True, **more: Any
) -> RpcCall:
    for name, value in (("start", start), ("end", end)):
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise InvalidInputError(f"{name} must be a timezone-aware datetime", code="DC006")
    # reads: sending one twice is harmless
    args = {**more, "p_start": start, "p_end": end}
    return RpcCall(function, args, retry_safe=True, replica_safe=replica_safe)


def aggregate_stats(start: datetime, end: datetime) -> RpcCall:
    """``credit_aggregate_stats``: totals of the window [start, end)."""
    return _window("credit_aggregate_stats", start, end)


def daily_spend(start: datetime, end: datetime) -> RpcCall:
    """``credit_daily_spend``: spend per UTC day of [start, end)."""
    return _window("credit_daily_spend", start, end)


def spend_by_model(start: datetime, end: datetime) -> RpcCall:
    """``credit_spend_by_model``: spend per model in [start, end)."""
    return _window("credit_spend_by_model", start, end)


def spend_by_user(start: datetime, end: datetime) -> RpcCall:
    """``credit_spend_by_user``: spend per attributed user in [start, end)."""
    return _window("credit_spend_by_user", start, end)


def top_users(limit: int, start: datetime, end: datetime) -> RpcCall:
    """``credit_top_users``: the ``limit`` users with the highest net spend in [start, end)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise InvalidInputError(
            f"limit must be an int from 1 to 1000, got {shown(limit)}", code="DC006"
        )
    return _window("credit_top_users", start, end, p_limit=limit)


# ---------------------------------------------------------------- limits

#: The kinds of spend window.
WINDOW_PERIODS = ("day", "week", "month", "hours")


def _window_spec(window: SpendWindow, index: int) -> dict[str, Any]:
    if not isinstance(window, SpendWindow):
        raise InvalidInputError(
            f"windows[{index}] must be a SpendWindow, got {type(window).__name__}", code="DC006"
        )
    if window.period not in WINDOW_PERIODS:
        raise InvalidInputError(
            f"windows[{index}].period must be one of {', '.join(WINDOW_PERIODS)},"
            f" got {shown(window.period)}",
            code="DC006",
        )
    spec: dict[str, Any] = {
        "period": window.period,
        "spend_limit": _amount(window.spend_limit, f"windows[{index}].spend_limit", 0),
    }
    # the ledger checks the rest (hours only for a rolling window, the pattern's form)
    if window.hours is not None:
        spec["hours"] = _optional_int(window.hours, f"windows[{index}].hours")
    if window.model_pattern is not None:
        spec["model_pattern"] = _text(
            window.model_pattern, f"windows[{index}].model_pattern", "DC006"
        )
    return spec


def _optional_int(value: object, name: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{name} must be an int, got {type(value).__name__}", code="DC006")
    return value


def set_limits(
    user_id: str | uuid.UUID,
    windows: Sequence[SpendWindow],
    max_active_holds: int | None,
    credit_line: int | None,
    credit_line_grace_seconds: int | None,
) -> RpcCall:
    """``credit_set_limits``: an account's whole limit configuration (what is left out is
    no limit: no windows, no cap on holds, the plan's credit line)."""
    if isinstance(windows, str | bytes) or not isinstance(windows, Sequence):
        raise InvalidInputError("windows must be a sequence of SpendWindow", code="DC006")
    return RpcCall(
        "credit_set_limits",
        {
            "p_user_id": _user(user_id),
            "p_windows": [_window_spec(w, i) for i, w in enumerate(windows)],
            "p_max_active_holds": _optional_int(max_active_holds, "max_active_holds"),
            "p_credit_line": _optional_amount(credit_line, "credit_line", 0),
            "p_credit_line_grace_seconds": _optional_int(
                credit_line_grace_seconds, "credit_line_grace_seconds"
            ),
        },
        # the same configuration set twice is the same configuration
        retry_safe=True,
    )


def get_limits(user_id: str | uuid.UUID) -> RpcCall:
    """``credit_get_limits``: an account's limits with what each window has used now."""
    return RpcCall("credit_get_limits", {"p_user_id": _user(user_id)}, retry_safe=True)


def set_plan_credit_line(
    plan_id: str, credit_line: int, credit_line_grace_seconds: int | None
) -> RpcCall:
    """``credit_set_plan_credit_line``: the default credit line of a plan's users."""
    return RpcCall(
        "credit_set_plan_credit_line",
        {
            "p_plan_id": _text(plan_id, "plan_id", "DC006"),
            "p_credit_line": _amount(credit_line, "credit_line", 0),
            "p_credit_line_grace_seconds": _optional_int(
                credit_line_grace_seconds, "credit_line_grace_seconds"
            ),
        },
        retry_safe=True,
        returns_scalar=True,
    )


# ---------------------------------------------------------------- auto top-up


def _stripe_id(value: object, name: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_]{1,255}", value):
        raise InvalidInputError(
            f"{name} must be a Stripe id (letters, digits and _), got {shown(value)}",
            code="DC006",
        )
    return value


def set_auto_topup(
    user_id: str | uuid.UUID,
    threshold: int,
    unit_price_minor: int | Decimal | str,
    currency: str,
    stripe_customer_id: str,
    stripe_payment_method_id: str,
    amount: int | None,
    target_balance: int | None,
    monthly_cap_credits: int | None,
    monthly_cap_minor: int | None,
    cooldown_seconds: int,
    max_failures: int,
    enabled: bool,
) -> RpcCall:
    """``credit_set_auto_topup``: an account's whole auto top-up rule."""
    if (amount is None) == (target_balance is None):
        raise InvalidInputError("give either amount or target_balance", code="DC006")
    if isinstance(unit_price_minor, bool) or not isinstance(unit_price_minor, int | Decimal | str):
        raise InvalidInputError(
            f"unit_price_minor must be an int or a Decimal, got {shown(unit_price_minor)}",
            code="DC006",
        )
    if not isinstance(currency, str) or not re.fullmatch(r"[a-z]{3}", currency):
        raise InvalidInputError(
            f"currency must be 3 lower-case letters (ISO 4217), got {shown(currency)}",
            code="DC006",
        )
    if not isinstance(enabled, bool):
        raise InvalidInputError("enabled must be a bool", code="DC006")
    return RpcCall(
        "credit_set_auto_topup",
        {
            "p_user_id": _user(user_id),
            "p_threshold": _amount(threshold, "threshold"),
            "p_unit_price_minor": str(unit_price_minor),
            "p_currency": currency,
            "p_stripe_customer_id": _stripe_id(stripe_customer_id, "stripe_customer_id"),
            "p_stripe_payment_method_id": _stripe_id(
                stripe_payment_method_id, "stripe_payment_method_id"
            ),
            "p_amount": _optional_amount(amount, "amount", 1),
            "p_target_balance": _optional_amount(target_balance, "target_balance", 1),
            "p_monthly_cap_credits": _optional_amount(
                monthly_cap_credits, "monthly_cap_credits", 1
            ),
            "p_monthly_cap_minor": _optional_amount(monthly_cap_minor, "monthly_cap_minor", 1),
            "p_cooldown_seconds": _optional_int(cooldown_seconds, "cooldown_seconds"),
            "p_max_failures": _optional_int(max_failures, "max_failures"),
            "p_enabled": enabled,
        },
        # the same rule set twice is the same rule
        retry_safe=True,
    )


def get_auto_topup(user_id: str | uuid.UUID) -> RpcCall:
    """``credit_get_auto_topup``: an account's rule with this month's requests."""
    return RpcCall("credit_get_auto_topup", {"p_user_id": _user(user_id)}, retry_safe=True)


def claim_topup_requests(limit: int, lease_seconds: int) -> RpcCall:
    """``credit_claim_topup_requests``: up to ``limit`` due requests, leased."""
    return RpcCall(
        "credit_claim_topup_requests",
        {
            "p_limit": _limit(limit, "limit", 1000),
            "p_lease_seconds": _limit(lease_seconds, "lease_seconds", 3600),
        },
    )


def record_topup_payment(request_id: str | uuid.UUID, payment_intent_id: str) -> RpcCall:
    """``credit_record_topup_payment``: the PaymentIntent made for a request."""
    return RpcCall(
        "credit_record_topup_payment",
        {
            "p_request_id": _uuid(request_id, "request_id"),
            "p_payment_intent_id": _stripe_id(payment_intent_id, "payment_intent_id"),
        },
        retry_safe=True,
    )


def complete_topup(
    request_id: str | uuid.UUID, payment_intent_id: str | None, status: str, error: str | None
) -> RpcCall:
    """``credit_complete_topup``: a request's payment outcome (granted once)."""
    return RpcCall(
        "credit_complete_topup",
        {
            "p_request_id": _uuid(request_id, "request_id"),
            "p_payment_intent_id": None
            if payment_intent_id is None
            else _stripe_id(payment_intent_id, "payment_intent_id"),
            "p_status": _text(status, "status", "DC006"),
            "p_error": None if error is None else _no_nul(error[:1000], "error", "DC006"),
        },
        # a succeeded payment grants once, a failure counts once: a second report is a no-op
        retry_safe=True,
    )


# ---------------------------------------------------------------- statements


def balance_at(user_id: str | uuid.UUID, at: datetime) -> RpcCall:
    """``credit_balance_at``: the sum of the user's journal rows created at or before ``at``."""
    if not isinstance(at, datetime) or at.tzinfo is None:
        raise InvalidInputError("at must be a timezone-aware datetime", code="DC006")
    return RpcCall("credit_balance_at", {"p_user_id": _user(user_id), "p_at": at}, retry_safe=True)


def statement(user_id: str | uuid.UUID, start: datetime, end: datetime) -> RpcCall:
    """``credit_statement``: the user's balances and totals of the window [start, end)."""
    # a user's own document, with what is left of their grants now: the primary's answer
    return _window("credit_statement", start, end, replica_safe=False, p_user_id=_user(user_id))


#: The most rows one page of ``credit_export_journal`` returns.
MAX_EXPORT_PAGE = 10_000


def export_journal(
    start: datetime,
    end: datetime,
    user_id: str | uuid.UUID | None,
    after: tuple[int, int] | None,
    limit: int,
) -> RpcCall:
    """``credit_export_journal``: a page of the journal rows of [start, end), in
    ``(account_id, seq)`` order, after the cursor ``after`` (the last row's key)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_EXPORT_PAGE:
        raise InvalidInputError(
            f"page_size must be from 1 to {MAX_EXPORT_PAGE}, got {limit!r}", code="DC006"
        )
    account, seq = after if after is not None else (None, None)
    # a bulk read of history: a read replica may serve it (its pages keep their order there)
    return _window(
        "credit_export_journal",
        start,
        end,
        p_user_id=None if user_id is None else _user(user_id),
        p_after_account=account,
        p_after_seq=seq,
        p_limit=limit,
    )


# ---------------------------------------------------------------- events

#: The types of the events of the outbox (``credit_events.type``).
EVENT_TYPES = (
    "balance.low",
    "balance.depleted",
    "grant.expiring",
    "grant.expired",
    "charge.refunded",
    "limit.reached",
    "topup.requested",
    "topup.succeeded",
    "topup.action_required",
    "topup.disabled",
)


def _event_types(value: Sequence[str] | None, name: str) -> TextArray | None:
    """A filter of event types: None (every type) or known types, sent as an array."""
    if value is None:
        return None
    if isinstance(value, str) or not all(isinstance(item, str) for item in value):
        raise InvalidInputError(
            f"{name} must be a list of event types, got {shown(value)}", code="DC006"
        )
    unknown = sorted(set(value) - set(EVENT_TYPES))
    if unknown:
        raise InvalidInputError(
            f"{name} must be among {', '.join(EVENT_TYPES)}, got {', '.join(unknown)}",
            code="DC006",
        )
    return TextArray(value)


def _limit(value: object, name: str, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidInputError(
            f"{name} must be from 1 to {maximum}, got {shown(value)}", code="DC006"
        )
    return value


def list_events(
    user_id: str | uuid.UUID | None,
    after: str | uuid.UUID | None,
    types: Sequence[str] | None,
    limit: int,
) -> RpcCall:
    """``credit_list_events``: events in id order after the cursor ``after``."""
    return RpcCall(
        "credit_list_events",
        {
            "p_user_id": None if user_id is None else _user(user_id),
            "p_after": None if after is None else _uuid(after, "after"),
            "p_types": _event_types(types, "types"),
            "p_limit": _limit(limit, "limit", 1000),
        },
        retry_safe=True,
    )


def poll_events(after: str | uuid.UUID | None, limit: int) -> RpcCall:
    """``credit_poll_events``: every user's events after the cursor, none of which an open
    transaction can precede (no rows while one that wrote events is open)."""
    return RpcCall(
        "credit_poll_events",
        {
            "p_after": None if after is None else _uuid(after, "after"),
            "p_limit": _limit(limit, "limit", 1000),
        },
        retry_safe=True,
    )


def set_alert(
    user_id: str | uuid.UUID | None,
    plan_id: str | None,
    threshold: int | None,
    percent: int | float | Decimal | None,
) -> RpcCall:
    """``credit_set_alert``: a balance.low threshold of a user or a plan (set once)."""
    if (user_id is None) == (plan_id is None):
        raise InvalidInputError(
            "an alert is either a user's or a plan's: give user_id or plan_id", code="DC006"
        )
    if (threshold is None) == (percent is None):
        raise InvalidInputError(
            "an alert is either a threshold in credits or a percent: give one of them",
            code="DC006",
        )
    value: Decimal | None = None
    if percent is not None:
        if isinstance(percent, bool) or not isinstance(percent, int | float | Decimal):
            raise InvalidInputError(f"percent must be a number, got {shown(percent)}", code="DC006")
        value = Decimal(str(percent))
        if not value.is_finite() or not 0 < value <= 100:
            raise InvalidInputError(
                f"percent must be above 0 and at most 100, got {shown(percent)}", code="DC006"
            )
    return RpcCall(
        "credit_set_alert",
        {
            "p_user_id": None if user_id is None else _user(user_id),
            "p_plan_id": None if plan_id is None else _word(plan_id, "plan_id"),
            "p_threshold": None if threshold is None else _amount(threshold, "threshold"),
            # as text, exact: every store's database reads it into a numeric
            "p_percent": None if value is None else str(value),
        },
        retry_safe=True,
    )


def delete_alert(alert_id: str | uuid.UUID) -> RpcCall:
    """``credit_delete_alert``: true when the alert existed."""
    return RpcCall(
        "credit_delete_alert",
        {"p_alert_id": _uuid(alert_id, "alert_id")},
        retry_safe=True,
        returns_scalar=True,
    )


def list_alerts(user_id: str | uuid.UUID | None, plan_id: str | None) -> RpcCall:
    """``credit_list_alerts``: a user's, a plan's, or every balance.low threshold."""
    return RpcCall(
        "credit_list_alerts",
        {
            "p_user_id": None if user_id is None else _user(user_id),
            "p_plan_id": None if plan_id is None else _word(plan_id, "plan_id"),
        },
        retry_safe=True,
    )


def set_grant_expiring_days(days: int) -> RpcCall:
    """``credit_set_grant_expiring_days``: how long before expiry grant.expiring fires."""
    return RpcCall(
        "credit_set_grant_expiring_days",
        {"p_days": _limit(days, "days", 365)},
        retry_safe=True,
        returns_scalar=True,
    )


def emit_due_events() -> RpcCall:
    """``credit_emit_due_events``: write the events due by time (grant.expiring)."""
    # once per grant: a repeat writes nothing more
    return RpcCall("credit_emit_due_events", retry_safe=True, returns_scalar=True)


def set_event_endpoint(
    url: str,
    secret: str,
    event_types: Sequence[str] | None,
    enabled: bool,
    endpoint_id: str | uuid.UUID | None,
) -> RpcCall:
    """``credit_set_event_endpoint``: a new endpoint, or a change of ``endpoint_id``."""
    return RpcCall(
        "credit_set_event_endpoint",
        {
            "p_url": _text(url, "url", "DC006"),
            "p_secret": _text(secret, "secret", "DC006"),
            "p_event_types": _event_types(event_types, "event_types"),
            "p_enabled": bool(enabled),
            "p_id": None if endpoint_id is None else _uuid(endpoint_id, "endpoint_id"),
        },
        retry_safe=endpoint_id is not None,
    )


def list_event_endpoints() -> RpcCall:
    """``credit_list_event_endpoints``: every endpoint, without its secret."""
    return RpcCall("credit_list_event_endpoints", retry_safe=True)


def claim_event_deliveries(limit: int, lease_seconds: int) -> RpcCall:
    """``credit_claim_event_deliveries``: up to ``limit`` due deliveries, leased."""
    return RpcCall(
        "credit_claim_event_deliveries",
        {
            "p_limit": _limit(limit, "limit", 1000),
            "p_lease_seconds": _limit(lease_seconds, "lease_seconds", 3600),
        },
    )


def finish_event_delivery(
    claim_id: str | uuid.UUID, delivered: bool, error: str | None, retry_after: int | None
) -> RpcCall:
    """``credit_finish_event_delivery``: report a claimed delivery (false: stale claim)."""
    if retry_after is not None and (
        isinstance(retry_after, bool)
        or not isinstance(retry_after, int)
        or not 0 <= retry_after <= 86400
    ):
        raise InvalidInputError(
            f"retry_after must be from 0 to 86400 seconds, got {shown(retry_after)}",
            code="DC006",
        )
    return RpcCall(
        "credit_finish_event_delivery",
        {
            "p_claim_id": _uuid(claim_id, "claim_id"),
            "p_delivered": bool(delivered),
            "p_error": None if error is None else error.replace("\x00", "")[:2000],
            "p_retry_after_seconds": retry_after,
        },
        # a claim is reported once: a repeat finds it reported and changes nothing
        retry_safe=True,
        returns_scalar=True,
    )


# ---------------------------------------------------------------- teams


def upsert_team(team_id: str | uuid.UUID, name: str, min_balance: int) -> RpcCall:
    """``credit_upsert_team``: create or rename a team (and its pool), set its floor."""
    return RpcCall(
        "credit_upsert_team",
        {
            "p_team_id": _uuid(team_id, "team_id"),
            "p_name": _text(name, "name", "DC006"),
            "p_min_balance": _amount(min_balance, "min_balance", 0),
        },
        retry_safe=True,
    )


def set_team_member(
    team_id: str | uuid.UUID,
    user_id: str | uuid.UUID,
    role: str,
    spend_limit: int | None,
    limit_period: str | None,
) -> RpcCall:
    """``credit_set_team_member``: add a member or change their role and limit."""
    return RpcCall(
        "credit_set_team_member",
        {
            "p_team_id": _uuid(team_id, "team_id"),
            "p_user_id": _user(user_id),
            "p_role": _word(role, "role"),
            "p_spend_limit": _optional_amount(spend_limit, "spend_limit", 0),
            "p_limit_period": _optional_word(limit_period, "limit_period"),
        },
        retry_safe=True,
    )


def remove_team_member(team_id: str | uuid.UUID, user_id: str | uuid.UUID) -> RpcCall:
    """``credit_remove_team_member``: whether there was such a member to remove."""
    return RpcCall(
        "credit_remove_team_member",
        {"p_team_id": _uuid(team_id, "team_id"), "p_user_id": _user(user_id)},
        retry_safe=True,
        returns_scalar=True,
    )


def deduct_team(
    team_id: str | uuid.UUID,
    user_id: str | uuid.UUID,
    metrics: UsageMetrics,
    metadata: CreditMetadata | None,
    idempotency_key: str | None,
) -> RpcCall:
    """``credit_deduct_team``: price usage and charge it to a team's pool for a member."""
    return RpcCall(
        "credit_deduct_team",
        {
            "p_team_id": _uuid(team_id, "team_id"),
            "p_user_id": _user(user_id),
            "p_metrics": _metrics(metrics),
            "p_metadata": _metadata(metadata),
            "p_idempotency_key": _key(idempotency_key),
        },
        retry_safe=idempotency_key is not None,
    )


def one(cls: type[_T], rows: Sequence[Mapping[str, Any]]) -> _T:
    """The single result row of a call, as ``cls``."""
    (row,) = rows
    return from_row(cls, row)


def many(cls: type[_T], rows: Sequence[Mapping[str, Any]]) -> list[_T]:
    """Every result row of a set-returning call, as ``cls``."""
    return [from_row(cls, row) for row in rows]


def json_default(value: object) -> Any:
    """Encode the argument types JSON lacks (datetimes) for PostgREST."""
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot send {type(value).__name__} as JSON")
