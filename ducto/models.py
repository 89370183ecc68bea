"""Typed, immutable results of ledger operations, mirroring the SQL result types.

Each class matches one ``credit_*_result`` type of the migrations field by field and is
built from a row (psycopg) or a JSON object (PostgREST) by :func:`from_row`.
"""

from __future__ import annotations

import types
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from datetime import datetime
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

    ``overage`` is how much a settled amount exceeded its hold; ``transaction_id`` is None
    only when 0 credits were charged (a hold settled with 0, or usage priced at 0).
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
class BalanceResult:
    """A user's balance, the credits held by active reservations, and what is available."""

    user_id: str
    balance: int
    held: int
    available: int


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


_T = TypeVar("_T")


def from_row(cls: type[_T], row: Mapping[str, Any]) -> _T:
    """Build a result dataclass from a database row or a PostgREST JSON object."""
    converters = _CONVERTERS.get(cls)
    if converters is None:
        hints = get_type_hints(cls)
        converters = tuple((f.name, _converter(hints[f.name])) for f in fields(cls))  # type: ignore[arg-type]
        _CONVERTERS[cls] = converters
    return cls(**{name: convert(row[name]) for name, convert in converters})


#: Per result class, each field with the function that turns a row value into its type.
_CONVERTERS: dict[type[Any], tuple[tuple[str, Callable[[Any], Any]], ...]] = {}


def _converter(hint: Any) -> Callable[[Any], Any]:
    if get_origin(hint) in (Union, types.UnionType):
        (hint,) = (arg for arg in get_args(hint) if arg is not type(None))
    if hint is datetime:  # PostgREST sends ISO 8601 text, psycopg a datetime
        return lambda v: datetime.fromisoformat(v) if isinstance(v, str) else v
    if hint is str:  # psycopg returns uuid columns as UUID
        return lambda v: str(v) if isinstance(v, uuid.UUID) else v
    if hint is Decimal:  # numeric: psycopg gives a Decimal, the HTTP stores parse one
        return lambda v: v if isinstance(v, Decimal) else Decimal(v)
    if isinstance(hint, type) and issubclass(hint, BaseModel):  # a jsonb document
        return hint.model_validate
    return _same


def _same(value: Any) -> Any:
    return value
