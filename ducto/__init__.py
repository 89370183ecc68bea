"""ducto: a credit ledger for AI products, native to Supabase."""

from ducto.errors import (
    DuctoError,
    IdempotencyConflictError,
    InsufficientCreditsError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    PricingNotLoadedError,
    RefundError,
    ReservationStateError,
    SchemaError,
    StoreError,
)
from ducto.manager import AsyncCreditManager, CreditManager
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

__version__ = "0.1.0"

__all__ = [
    "AddCreditsResult",
    "AsyncCreditManager",
    "BalanceResult",
    "CreditManager",
    "CreditMetadata",
    "DeductionResult",
    "DuctoError",
    "IdempotencyConflictError",
    "InsufficientCreditsError",
    "InvalidInputError",
    "LedgerIssue",
    "NotFoundError",
    "PermissionDeniedError",
    "PricingNotLoadedError",
    "RefundError",
    "RefundResult",
    "ReleaseResult",
    "ReservationStateError",
    "ReserveResult",
    "SchemaError",
    "SetupResult",
    "StoreError",
    "SweepResult",
    "__version__",
]
