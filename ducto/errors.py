"""Exceptions raised by ducto, one per error the ledger can report.

Hierarchy::

    DuctoError                        any error from ducto (code, message, detail, hint)
    ├── InvalidInputError             an argument was refused before anything was written
    │   ├── PricingConfigError        a pricing config was refused
    │   └── OverageLimitError         a settle would charge beyond its hold's overage bound
    ├── InsufficientCreditsError      the account cannot pay, or would go below its floor
    │   ├── MemberLimitExceededError  a team member would exceed their spending limit
    │   ├── TeamPoolExhaustedError    a team's pool cannot pay above its floor
    │   ├── LimitExceededError        a charge or hold would pass a spend window's limit
    │   └── CreditLineOverdueError    below zero for longer than the credit line's grace
    ├── TooManyHoldsError             the account has as many active holds as it may
    ├── IdempotencyConflictError      an idempotency key was reused with other parameters
    ├── TopupConflictError            a top-up request already has another payment intent
    ├── NotFoundError                 a transaction, reservation, plan or team does not exist
    │   └── ArchivedError             the row it needs was archived (ducto archive)
    ├── ReservationStateError         a reservation is released, or settled otherwise
    ├── RefundError                   a refund or void exceeds what is left, or is not allowed
    ├── PermissionDeniedError         the caller's role may not do this
    │   └── NotTeamMemberError        the user is not a member of the team
    ├── PricingNotLoadedError         a usage deduction was asked for before pricing
    ├── UnknownModelError             no pricing entry matches the model, and no default
    ├── UnknownJobError               the pricing has no such fixed-cost job
    ├── SchemaError                   the database's ledger schema is missing or outdated
    ├── LedgerInconsistentError       a checkpoint or an archive was refused: the ledger, or
    │                                 a month's export, breaks an invariant
    ├── WebhookSignatureError         an event delivery's signature does not verify
    └── StoreError                    the store failed in a way ducto did not expect
        └── StoreConnectionError      the store cannot reach the database or the API

Every error the database raises carries a SQLSTATE; :func:`error_from_sqlstate` maps it
to the class above, for the psycopg store and the PostgREST store alike.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


class DuctoError(Exception):
    """Base class of every ducto error; carries the database's code, detail and hint."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        detail: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.detail = detail
        self.hint = hint

    @property
    def details(self) -> dict[str, Any]:
        """The JSON ``detail`` of a ledger error as a dict (empty when there is none)."""
        if not self.detail:
            return {}
        try:
            parsed = json.loads(self.detail)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}


class InvalidInputError(DuctoError, ValueError):
    """Raised when an argument is refused (amount, user id, metadata, key, expiry...)."""


class PricingConfigError(InvalidInputError):
    """Raised when a pricing config is refused; the active pricing is left unchanged."""


class OverageLimitError(InvalidInputError):
    """Raised when a settle would charge more beyond its hold than allowed (max_overage)."""


class InsufficientCreditsError(DuctoError):
    """Raised when a user does not have enough credits for an operation."""


class MemberLimitExceededError(InsufficientCreditsError):
    """Raised when a team charge would take a member past their spending limit."""


class TeamPoolExhaustedError(InsufficientCreditsError):
    """Raised when a team's pool cannot pay a charge above its floor."""


class LimitExceededError(InsufficientCreditsError):
    """Raised when a charge or a new hold would take a spend window past its limit.

    A subclass of :class:`InsufficientCreditsError`, like a team member's limit: the call
    is valid and the account cannot pay it now (HTTP 402). ``window`` says which window
    (``period``, ``hours``, ``model_pattern``, ``window_start``); ``used`` is the window's
    net spend, ``held`` the active holds that count against it, ``needed`` the amount.
    """

    @property
    def window(self) -> dict[str, Any]:
        """The window refused: ``period``, ``hours``, ``model_pattern``, ``window_start``."""
        window = self.details.get("window")
        return window if isinstance(window, dict) else {}

    @property
    def spend_limit(self) -> int | None:
        """The window's limit."""
        return _int_or_none(self.details.get("spend_limit"))

    @property
    def used(self) -> int | None:
        """The window's net spend when the call was refused (holds not included)."""
        return _int_or_none(self.details.get("used"))

    @property
    def held(self) -> int | None:
        """The credits of the account's active holds, which count against the window."""
        return _int_or_none(self.details.get("held"))

    @property
    def needed(self) -> int | None:
        """The amount of the refused charge or hold."""
        return _int_or_none(self.details.get("needed"))


class CreditLineOverdueError(InsufficientCreditsError):
    """Raised when the balance has been below zero for longer than the credit line's grace.

    Charges that need the credit line are refused until credits bring the balance back to
    0 (``details``: ``balance``, ``below_zero_since``, ``due_at``, ``credit_line``).
    """


class TooManyHoldsError(DuctoError):
    """Raised when a new hold would pass the account's cap on active holds (HTTP 429)."""


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class IdempotencyConflictError(DuctoError):
    """Raised when an idempotency key is reused for a different operation or parameters."""


class TopupConflictError(DuctoError):
    """Raised when a top-up request is reported with another payment intent than its own."""


class NotFoundError(DuctoError, LookupError):
    """Raised when a transaction, reservation, plan or team does not exist."""


class ArchivedError(NotFoundError):
    """Raised when what a call needs left the database with an archived month (HTTP 410).

    A refund of an archived row, a replay of an archived one-call debit's idempotency key,
    a balance before the archive horizon. ``details`` names ``archived_month`` (and the
    ``transaction_id`` or ``idempotency_key``); the month's export holds the row.
    """

    @property
    def archived_month(self) -> str | None:
        """The archived month (its start, ISO 8601) the row was in."""
        value = self.details.get("archived_month")
        return value if isinstance(value, str) else None


class ReservationStateError(DuctoError):
    """Raised when a reservation cannot be settled or released in its current state."""


class RefundError(DuctoError):
    """Raised when a refund or a void exceeds what is left, or the row is not refundable."""


class PermissionDeniedError(DuctoError, PermissionError):
    """Raised when the caller's role may not call a function or read a row."""


class NotTeamMemberError(PermissionDeniedError):
    """Raised when a team charge names a user who is not a member of the team."""


class PricingNotLoadedError(DuctoError):
    """Raised when deduct() is called before pricing is loaded, or none is published."""


class UnknownModelError(DuctoError, LookupError):
    """Raised when no pricing entry matches a usage's model and the pricing has no default."""


class UnknownJobError(DuctoError, LookupError):
    """Raised when a fixed-cost job is not in the pricing."""


class SchemaError(DuctoError):
    """Raised when the ledger schema is missing or older than this client needs."""


class WebhookSignatureError(DuctoError):
    """An event delivery's ``ducto-signature`` is missing, malformed, stale or wrong."""


class LedgerInconsistentError(DuctoError):
    """Raised when a checkpoint is refused because the ledger breaks an invariant.

    ``details`` names how many issues ``verify_ledger`` finds and the first of them; nothing
    was recorded. Also raised (DC135) when an archive is refused because a month's
    partitions, its checkpoints and its export do not agree; nothing was detached.
    """


class StoreError(DuctoError):
    """Raised when the store fails in a way ducto does not expect (the code says how)."""


class StoreConnectionError(StoreError, ConnectionError):
    """Raised when a store cannot connect; ``detail`` is the driver's or the OS's reason.

    Nothing was sent, so the call had no effect.
    """


#: SQLSTATE -> exception class. The DC codes are ducto's own (docs/ledger.md).
SQLSTATE_ERRORS: Mapping[str, type[DuctoError]] = {
    "DC001": InvalidInputError,
    "DC002": InvalidInputError,
    "DC003": InvalidInputError,
    "DC004": InvalidInputError,
    "DC005": InvalidInputError,
    "DC006": InvalidInputError,
    "DC007": InvalidInputError,
    # the balance would pass the largest balance (2^53 - 1)
    "DC008": InvalidInputError,
    # invalid_text_representation: a transaction or reservation id that is not a UUID
    "22P02": InvalidInputError,
    "DC010": InsufficientCreditsError,
    "DC020": IdempotencyConflictError,
    "DC030": NotFoundError,
    "DC031": NotFoundError,
    "DC040": ReservationStateError,
    "DC041": ReservationStateError,
    "DC042": OverageLimitError,
    "DC050": RefundError,
    "DC051": RefundError,
    "DC060": PricingConfigError,
    "DC061": UnknownModelError,
    "DC062": UnknownJobError,
    "DC063": PricingNotLoadedError,
    "DC064": NotFoundError,
    "DC080": NotFoundError,
    "DC081": NotFoundError,
    "DC082": NotTeamMemberError,
    "DC083": MemberLimitExceededError,
    "DC084": TeamPoolExhaustedError,
    "DC085": LimitExceededError,
    "DC086": TooManyHoldsError,
    "DC087": CreditLineOverdueError,
    # auto top-up: no such request or rule; a request's payment intent is another one
    "DC110": NotFoundError,
    "DC111": TopupConflictError,
    # a grant that does not exist; a void of more than is left of it
    "DC120": NotFoundError,
    "DC121": RefundError,
    # a Stripe customer no user is known for; or known as another user
    "DC122": NotFoundError,
    "DC123": InvalidInputError,
    # checkpoints: a month not closed yet; a ledger with broken invariants
    "DC130": InvalidInputError,
    "DC131": LedgerInconsistentError,
    # archive: a row, a key or a balance of an archived month; a month not the oldest, or
    # without its closing checkpoints; a month whose partitions and export disagree
    "DC132": ArchivedError,
    "DC133": InvalidInputError,
    "DC134": InvalidInputError,
    "DC135": LedgerInconsistentError,
    "42501": PermissionDeniedError,
    "42883": SchemaError,
    "PGRST202": SchemaError,
}


def error_from_sqlstate(
    code: str | None, message: str, detail: str | None = None, hint: str | None = None
) -> DuctoError:
    """Build the ducto exception for a database error code (StoreError when unknown)."""
    cls = SQLSTATE_ERRORS.get(code or "", StoreError)
    return cls(message, code=code, detail=detail or None, hint=hint or None)
