"""The public names of the package: adding or removing one is a deliberate change."""

from __future__ import annotations

import ducto
import ducto.embedded
import ducto.interface
import ducto.manager
from ducto.interface.supabase import HttpxSupabaseStore


def test_package_exports() -> None:
    assert ducto.__all__ == [
        "AddCreditsResult",
        "AggregateStatsRow",
        "AllowanceResult",
        "ArchivedError",
        "AsyncCreditManager",
        "AutoTopupRule",
        "BalanceAlert",
        "BalanceAtResult",
        "BalanceResult",
        "CheckFeatureResult",
        "CostResult",
        "CreditEvent",
        "CreditEventEmitter",
        "CreditEventType",
        "CreditLineOverdueError",
        "CreditManager",
        "CreditMetadata",
        "DailySpendRow",
        "DeductionResult",
        "DeliveryReport",
        "DuctoError",
        "EventDeliveryClaim",
        "EventEndpoint",
        "ExpiringGrant",
        "GetUserPlanResult",
        "IdempotencyConflictError",
        "InsufficientCreditsError",
        "InvalidInputError",
        "JournalRow",
        "LedgerEvent",
        "LedgerIssue",
        "LimitExceededError",
        "LimitsResult",
        "MemberLimitExceededError",
        "MeteredCall",
        "ModelPrice",
        "ModelRates",
        "NotFoundError",
        "NotTeamMemberError",
        "OverageLimitError",
        "PartitionRow",
        "PermissionDeniedError",
        "PlanResult",
        "PricePlan",
        "PricingConfigData",
        "PricingConfigError",
        "PricingEngine",
        "PricingNotLoadedError",
        "PricingVersion",
        "RefundError",
        "RefundResult",
        "ReleaseResult",
        "ReservationStateError",
        "ReserveResult",
        "SchemaError",
        "ScopeBalance",
        "SetupResult",
        "SpendByModelRow",
        "SpendByUserRow",
        "SpendWindow",
        "SpendWindowUsage",
        "StatementCategoryTotal",
        "StatementModelTotal",
        "StatementResult",
        "StatementTypeTotal",
        "StoreConnectionError",
        "StoreError",
        "SweepResult",
        "TeamDeductionResult",
        "TeamMemberResult",
        "TeamPoolExhaustedError",
        "TeamResult",
        "TooManyHoldsError",
        "TopUserRow",
        "TopupConflictError",
        "TopupRequest",
        "UnknownJobError",
        "UnknownModelError",
        "UsageMetrics",
        "VoidResult",
        "WebhookSignatureError",
        "__version__",
    ]
    assert ducto.interface.__all__ == [
        "AsyncCreditStore",
        "AsyncHttpxSupabaseStore",
        "AsyncPostgresStore",
        "AsyncSupabaseStore",
        "CreditStore",
        "HttpxSupabaseStore",
        "PostgresStore",
        "SupabaseStore",
    ]
    assert ducto.embedded.__all__ == ["POSTGRES_MAJOR", "EmbeddedPostgres", "default_data_dir"]


def test_reference_paths() -> None:
    # the module paths the API reference names
    assert ducto.manager.CreditManager is ducto.CreditManager
    assert ducto.manager.InsufficientCreditsError is ducto.InsufficientCreditsError
    assert ducto.manager.PricingNotLoadedError is ducto.PricingNotLoadedError
    assert HttpxSupabaseStore is ducto.interface.HttpxSupabaseStore
    assert issubclass(ducto.InsufficientCreditsError, Exception)


def test_every_public_name_is_documented() -> None:
    for module in (ducto, ducto.interface, ducto.embedded):
        for name in module.__all__:
            obj = getattr(module, name)
            if callable(obj) and not name.startswith("_"):
                assert obj.__doc__, f"{module.__name__}.{name} has no docstring"
