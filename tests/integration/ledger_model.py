"""A pure-Python model of the credit ledger's documented rules (docs/ledger.md,
docs/plans-teams.md, docs/pricing.md).

The state machine in ``test_state_machine.py`` applies the same random operations to the
SQL ledger and to this model and compares every reply and every balance. The model
follows the documentation, not the SQL: where they differ, one of them is wrong.

What it models:

- burn-down: priority, then soonest expiry (never-expiring last), then oldest;
- a grant is spendable while ``now < expires_at``; every write on an account first
  journals the expiry of its expired grants;
- floor: a deduct or reserve is admitted only if ``available - amount >= min_balance``;
  a usage charge's floor is the pricing's ``min_balance``, a team charge's the larger of
  the team's and the pricing's;
- holds: settle charges the actual amount (or the priced usage), overage included; what
  grants cannot pay becomes debt; new credits pay debt first;
- refunds give credits back where they came from, the most recently drawn first: debt
  is forgiven first, then grants are refilled (and expire again at once if they have
  expired since); debt that newer credits have paid comes back as a new paid grant;
- idempotency keys per account: a replay returns the first result (recognised before
  checks that depend on the time or the pricing), other parameters are ``DC020``, a
  failed operation does not consume its key;
- pricing: exact model names or the default, rates per 1M tokens and per request,
  rounded once; fixed-cost jobs;
- holds: a settle's key names its usage (the same usage under it, on any hold, is a
  replay that lets that hold go; other usage is ``DC020``, the hold kept); a settle's
  overage is at most ``max_overage``, by default 9 times the hold (``DC042``);
- plans: one allowance grant per account, period unit, calendar period (UTC) and plan,
  expiring at the period's end, with a rollover of what the previous period's grants had
  left when they expired, up to the cap; while an allowance is live (after a plan change
  within a period), a plan tops it up to its own level instead;
- teams: the pool is an account; a member's net spend in the current period (charges
  attributed to them minus refunds of those) stays within their limit; a member's keys are
  the member's own.

An operation that fails writes nothing (its SQL transaction rolls back): run each one in
``with model.atomic():``, which restores the model when it raises ModelError.

Identifiers (transactions, reservations, grants) are the ones the SQL ledger assigned:
the caller passes them in. A grant is named by the journal row that created it (the
``transaction_id`` column of ``credit_grants``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

Reply = dict[str, Any]
"""The fields of an RPC's result row the model predicts."""

Usage = tuple[tuple[str, Any], ...]
"""Usage metrics as the ledger stores them: counts at their default left out, sorted."""


class ModelError(Exception):
    """The model predicts that the operation fails with this SQLSTATE."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


def normal_usage(metrics: Mapping[str, Any]) -> Usage:
    """The stored form of usage metrics: 0 tokens and 1 request are the defaults."""
    return tuple(
        sorted(
            (name, value)
            for name, value in metrics.items()
            if name == "model" or value != (1 if name == "requests" else 0)
        )
    )


def period_bounds(period: str, at: datetime) -> tuple[datetime, datetime]:
    """The calendar period (UTC) that contains ``at``: weeks start on Monday."""
    day = at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day, day + timedelta(days=1)
    if period == "week":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    if period == "month":
        start = day.replace(day=1)
        after = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
        return start, after
    assert period == "year"
    start = day.replace(month=1, day=1)
    return start, start.replace(year=start.year + 1)


@dataclass(frozen=True)
class Pricing:
    """A published pricing version: per model (exact, lower-case names) or the default,
    ``input``/``output`` credits per 1M tokens and ``request`` credits per request."""

    version: int
    models: Mapping[str, Mapping[str, int]]
    default: Mapping[str, int] | None
    fixed_jobs: Mapping[str, int]
    min_balance: int
    rounding: str

    @classmethod
    def from_config(cls, version: int, config: Mapping[str, Any]) -> Pricing:
        return cls(
            version,
            {entry["model"]: entry for entry in config.get("models", [])},
            config["default"],
            config.get("fixed_jobs", {}),
            config.get("min_balance", 0),
            config.get("rounding", "ceil"),
        )

    def cost(self, usage: Usage) -> int:
        counts: dict[str, Any] = dict(usage)
        rates = self.models.get(counts["model"], self.default)
        if rates is None:
            raise ModelError("DC061")
        tokens: int = (
            counts.get("input_tokens", 0) * rates["input"]
            + counts.get("output_tokens", 0) * rates["output"]
        )
        requests: int = counts.get("requests", 1) * rates.get("request", 0)
        exact = Fraction(tokens, 10**6) + requests
        if self.rounding == "ceil":
            return math.ceil(exact)
        if self.rounding == "half_up":
            return math.floor(exact + Fraction(1, 2))
        return math.floor(exact)


@dataclass
class Grant:
    """A bucket of credits, named by the journal row that created it."""

    source: str
    category: str
    priority: int
    amount: int
    remaining: int
    expires_at: datetime | None
    created_at: datetime
    expired: int = 0  # what its expiry rows took, for an allowance's rollover

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    def burn_order(self) -> tuple[int, bool, datetime, datetime, str]:
        # priority, soonest expiry (never-expiring last), oldest
        return (
            self.priority,
            self.expires_at is None,
            self.expires_at or self.created_at,
            self.created_at,
            self.source,
        )


@dataclass
class Hold:
    """A reservation."""

    id: str
    user_id: str
    amount: int
    expires_at: datetime
    status: str = "active"
    settled_amount: int | None = None
    settled_usage: Usage | None = None
    result: Reply | None = None

    def counts(self, now: datetime) -> bool:
        return self.status == "active" and self.expires_at > now


@dataclass
class Charge:
    """A refundable journal row (usage, fixed_job or capture) and where its credits came
    from; ``member`` is the team member a pool's charge is attributed to."""

    id: str
    user_id: str
    amount: int
    draws: list[tuple[str | None, int]]
    member: str | None = None
    refunded: int = 0


@dataclass
class StoredKey:
    operation: str
    request: tuple[Any, ...]
    result: Reply


@dataclass
class Account:
    user_id: str
    balance: int = 0
    debt: int = 0
    version: int = 0
    grants: dict[str, Grant] = field(default_factory=dict)
    keys: dict[str, StoredKey] = field(default_factory=dict)
    # a pool's journal rows attributed to members: (member, created_at, signed amount)
    attributed: list[tuple[str, datetime, int]] = field(default_factory=list)


@dataclass
class Plan:
    id: str
    name: str
    allowance: int | None
    period: str | None
    rollover_cap: int | None
    created_at: datetime
    updated_at: datetime


@dataclass
class Member:
    role: str
    spend_limit: int | None
    limit_period: str | None
    joined_at: datetime


@dataclass
class Team:
    id: str
    name: str
    min_balance: int
    created_at: datetime
    updated_at: datetime
    members: dict[str, Member] = field(default_factory=dict)

    @property
    def pool(self) -> str:
        return f"team:{self.id}"


class LedgerModel:
    """The documented ledger, one account per user or pool, with a clock the caller moves."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.accounts: dict[str, Account] = {}
        self.holds: dict[str, Hold] = {}
        self.charges: dict[str, Charge] = {}
        # journal rows that exist but cannot be refunded (credits, refunds)
        self.other_rows: dict[str, str] = {}
        self.pricing: Pricing | None = None
        self.plans: dict[str, Plan] = {}
        self.assignments: dict[str, tuple[str, datetime]] = {}
        # the allowance grant of (user, period unit, period start), by its journal row
        # (user, period unit, period start, plan) -> the grant's source
        self.allowance_grants: dict[tuple[str, str, datetime, str], str] = {}
        self.teams: dict[str, Team] = {}

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """Undo every change of the operation inside if it raises ModelError."""
        saved = copy.deepcopy(self.__dict__)
        try:
            yield
        except ModelError:
            self.__dict__.clear()
            self.__dict__.update(saved)
            raise

    # ------------------------------------------------------------ reads

    def held(self, account: Account) -> int:
        return sum(
            h.amount
            for h in self.holds.values()
            if h.user_id == account.user_id and h.counts(self.now)
        )

    def balance(self, user_id: str) -> Reply:
        """``credit_get_balance``: net of expired grants, whether journalled or not."""
        account = self.accounts.get(user_id)
        if account is None:
            return {"balance": 0, "held": 0, "available": 0}
        unswept = sum(g.remaining for g in account.grants.values() if g.is_expired(self.now))
        balance = account.balance - unswept
        held = self.held(account)
        return {"balance": balance, "held": held, "available": balance - held}

    def available(self, account: Account | None) -> int:
        """Balance minus active holds, for an account whose expiry is journalled."""
        return 0 if account is None else account.balance - self.held(account)

    # ------------------------------------------------------------ internals

    def _journal(self, account: Account, amount: int) -> None:
        account.balance += amount
        account.version += 1

    def _expire(self, account: Account) -> None:
        for grant in account.grants.values():
            if grant.remaining > 0 and grant.is_expired(self.now):
                self._journal(account, -grant.remaining)
                grant.expired += grant.remaining
                grant.remaining = 0

    def _draw(self, account: Account, amount: int) -> list[tuple[str | None, int]]:
        draws: list[tuple[str | None, int]] = []
        left = amount
        spendable = sorted(
            (g for g in account.grants.values() if g.remaining > 0 and not g.is_expired(self.now)),
            key=Grant.burn_order,
        )
        for grant in spendable:
            if left == 0:
                break
            take = min(grant.remaining, left)
            grant.remaining -= take
            left -= take
            draws.append((grant.source, take))
        if left > 0:
            # usage that happened is never dropped: the rest is debt
            account.debt += left
            draws.append((None, left))
        return draws

    def _debit(self, account: Account, new_id: str, amount: int, member: str | None) -> None:
        """Journal and draw a charge of at least 1 credit, refundable as ``new_id``."""
        self._journal(account, -amount)
        draws = self._draw(account, amount)
        self.charges[new_id] = Charge(new_id, account.user_id, amount, draws, member)
        if member is not None:
            account.attributed.append((member, self.now, -amount))

    def _create_grant(
        self,
        account: Account,
        source: str,
        category: str,
        priority: int,
        amount: int,
        expires_at: datetime | None,
    ) -> None:
        grant = Grant(source, category, priority, amount, amount, expires_at, self.now)
        account.grants[source] = grant
        # new credits pay outstanding debt first
        paid = min(account.debt, amount)
        grant.remaining -= paid
        account.debt -= paid

    def _replay(
        self, account: Account | None, key: str | None, operation: str, request: tuple[Any, ...]
    ) -> Reply | None:
        if account is None or key is None or key not in account.keys:
            return None
        stored = account.keys[key]
        if stored.operation != operation or stored.request != request:
            raise ModelError("DC020")
        return {**stored.result, "is_replay": True}

    @staticmethod
    def _remember(
        account: Account | None,
        key: str | None,
        operation: str,
        request: tuple[Any, ...],
        result: Reply,
    ) -> None:
        # a charge on an account that does not exist (0 credits) leaves no key behind
        if key is not None and account is not None:
            account.keys[key] = StoredKey(operation, request, dict(result))

    def _admit(self, account: Account | None, amount: int, floor: int, code: str = "DC010") -> int:
        available = self.available(account)
        if available - amount < floor:
            raise ModelError(code)
        return available

    def _priced(self) -> Pricing:
        if self.pricing is None:
            raise ModelError("DC063")
        return self.pricing

    # ------------------------------------------------------------ credits and charges

    def add(
        self,
        new_id: str,
        grant_id: str,
        user_id: str,
        amount: int,
        *,
        tx_type: str = "adjustment",
        category: str = "paid",
        priority: int = 50,
        expires_at: datetime | None = None,
        key: str | None = None,
    ) -> Reply:
        """``credit_add_credits``."""
        account = self.accounts.get(user_id) or Account(user_id)
        request = (amount, tx_type, category, priority, expires_at)
        replay = self._replay(account, key, "add_credits", request)
        if replay is not None:
            return replay
        # after the replay lookup: a replay is recognised before time-dependent checks
        if expires_at is not None and expires_at <= self.now:
            raise ModelError("DC005")
        self.accounts[user_id] = account
        self._expire(account)
        self._journal(account, amount)
        self._create_grant(account, new_id, category, priority, amount, expires_at)
        self.other_rows[new_id] = user_id
        result: Reply = {
            "transaction_id": new_id,
            "grant_id": grant_id,
            "user_id": user_id,
            "amount": amount,
            "tx_type": tx_type,
            "category": category,
            "priority": priority,
            "expires_at": expires_at,
            "balance_after": account.balance,
            "created_at": self.now,
            "is_replay": False,
        }
        self._remember(account, key, "add_credits", request, result)
        return result

    def _one_call_debit(
        self,
        new_id: str,
        user_id: str,
        operation: str,
        request: tuple[Any, ...],
        key: str | None,
        amount: int | None,
        floor: int,
    ) -> Reply:
        """A deduct by amount, usage (``amount`` None) or fixed job (``request[0]``)."""
        account = self.accounts.get(user_id)
        replay = self._replay(account, key, operation, request)
        if replay is not None:
            return replay
        # priced after the replay lookup: a replay returns the original charge whatever
        # was published since; the price and its floor come from one version
        version = None
        if amount is None:
            pricing = self._priced()
            if operation == "fixed_job":
                if request[1] not in pricing.fixed_jobs:
                    raise ModelError("DC062")
                amount = pricing.fixed_jobs[request[1]]
            else:
                amount = pricing.cost(request[1])
            floor, version = pricing.min_balance, pricing.version
        if account is not None:
            self._expire(account)
        available = self._admit(account, amount, floor)
        transaction_id = None
        if amount > 0:
            assert account is not None  # an account that does not exist has nothing to pay
            transaction_id = new_id
            self._debit(account, new_id, amount, None)
        result: Reply = {
            "transaction_id": transaction_id,
            "reservation_id": None,
            "user_id": user_id,
            "amount": amount,
            "overage": 0,
            "balance_after": 0 if account is None else account.balance,
            "available_after": available - amount,
            "created_at": self.now,
            "is_replay": False,
            "pricing_version": version,
        }
        self._remember(account, key, operation, request, result)
        return result

    def deduct(
        self, new_id: str, user_id: str, amount: int, *, min_balance: int = 0, key: str | None
    ) -> Reply:
        """``credit_deduct_credits``."""
        request = ("amount", amount, min_balance)
        return self._one_call_debit(new_id, user_id, "usage", request, key, amount, min_balance)

    def deduct_usage(
        self, new_id: str, user_id: str, metrics: Mapping[str, Any], *, key: str | None
    ) -> Reply:
        """``credit_deduct_usage``: priced under the active version, its floor with it."""
        request = ("usage", normal_usage(metrics))
        return self._one_call_debit(new_id, user_id, "usage", request, key, None, 0)

    def deduct_fixed(self, new_id: str, user_id: str, job: str, *, key: str | None) -> Reply:
        """``credit_deduct_fixed``."""
        return self._one_call_debit(new_id, user_id, "fixed_job", ("job", job), key, None, 0)

    # ------------------------------------------------------------ holds

    def reserve(
        self,
        new_id: str,
        user_id: str,
        amount: int,
        *,
        min_balance: int = 0,
        timeout_seconds: int = 900,
        key: str | None = None,
    ) -> Reply:
        """``credit_reserve_credits``."""
        account = self.accounts.get(user_id)
        request = (amount, min_balance, timeout_seconds)
        replay = self._replay(account, key, "reserve_credits", request)
        if replay is not None:
            return replay
        if account is not None:
            self._expire(account)
        available = self._admit(account, amount, min_balance)
        assert account is not None
        expires_at = self.now + timedelta(seconds=timeout_seconds)
        self.holds[new_id] = Hold(new_id, user_id, amount, expires_at)
        result: Reply = {
            "reservation_id": new_id,
            "user_id": user_id,
            "amount": amount,
            "operation_type": "usage",
            "expires_at": expires_at,
            "available_after": available - amount,
            "created_at": self.now,
            "is_replay": False,
        }
        self._remember(account, key, "reserve_credits", request, result)
        return result

    def settle(
        self,
        new_id: str,
        reservation_id: str,
        *,
        actual: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        key: str | None = None,
        max_overage: int | None = None,
    ) -> Reply:
        """``credit_settle_reservation`` (an amount) or ``credit_settle_usage`` (usage,
        priced by the active version, with an optional key); ``new_id`` names the capture."""
        hold = self.holds.get(reservation_id)
        if hold is None:
            raise ModelError("DC031")
        account = self.accounts[hold.user_id]
        usage = None if metrics is None else normal_usage(metrics)
        # what a key names: the usage, or the amount given
        request = (usage, actual)
        if key is not None:
            replay = self._settle_key_replay(account, key, hold, request)
            if replay is not None:
                return replay
        if hold.status == "settled":
            # again with the same amount or usage: a replay; anything else: a conflict
            assert hold.result is not None
            same_amount = usage is not None or hold.settled_amount == actual
            if hold.settled_usage == usage and same_amount:
                return {**hold.result, "is_replay": True}
            raise ModelError("DC041")
        if hold.status == "released":
            raise ModelError("DC040")
        # active or timed out: the usage happened, so it is charged in full
        version = None
        if usage is not None:
            pricing = self._priced()
            actual, version = pricing.cost(usage), pricing.version
        assert actual is not None
        if actual - hold.amount > (9 * hold.amount if max_overage is None else max_overage):
            raise ModelError("DC042")  # nothing written, the hold as it was
        self._expire(account)
        transaction_id: str | None = None
        if actual > 0:
            transaction_id = new_id
            self._debit(account, new_id, actual, None)
        hold.status = "settled"
        hold.settled_amount = actual
        hold.settled_usage = usage
        hold.result = {
            "transaction_id": transaction_id,
            "reservation_id": reservation_id,
            "user_id": hold.user_id,
            "amount": actual,
            "overage": max(actual - hold.amount, 0),
            "balance_after": account.balance,
            "available_after": self.available(account),
            "created_at": self.now,
            "is_replay": False,
            "pricing_version": version,
        }
        if key is not None:
            account.keys[key] = StoredKey("settle_usage", request, dict(hold.result))
        return dict(hold.result)

    def _settle_key_replay(
        self, account: Account, key: str, hold: Hold, request: tuple[Any, ...]
    ) -> Reply | None:
        """A settle under a key the account has used: the same request (usage) is a replay
        that lets the retry's active hold go; anything else ``DC020``, the hold kept."""
        stored = account.keys.get(key)
        if stored is None:
            return None
        if stored.operation != "settle_usage" or stored.request != request:
            raise ModelError("DC020")
        if hold.status == "active":
            self._release(hold)
        return {**stored.result, "is_replay": True}

    def release(self, reservation_id: str) -> Reply:
        """``credit_release_reservation``."""
        hold = self.holds.get(reservation_id)
        if hold is None:
            raise ModelError("DC031")
        if hold.status == "released":
            assert hold.result is not None
            return {**hold.result, "is_replay": True}
        if hold.status == "settled":
            raise ModelError("DC040")
        return self._release(hold)

    def _release(self, hold: Hold) -> Reply:
        # a write on the account: expired grants are journalled first
        account = self.accounts[hold.user_id]
        self._expire(account)
        hold.status = "released"
        hold.result = {
            "reservation_id": hold.id,
            "user_id": hold.user_id,
            "amount": hold.amount,
            "status": "released",
            "available_after": self.available(account),
            "is_replay": False,
        }
        return dict(hold.result)

    # ------------------------------------------------------------ refunds and the sweep

    def refund(
        self, new_id: str, transaction_id: str, amount: int | None = None, *, key: str | None = None
    ) -> Reply:
        """``credit_refund_transaction``."""
        charge = self.charges.get(transaction_id)
        owner = charge.user_id if charge is not None else self.other_rows.get(transaction_id)
        if owner is None:
            raise ModelError("DC030")
        account = self.accounts[owner]
        request = (transaction_id, amount)
        replay = self._replay(account, key, "refund_transaction", request)
        if replay is not None:
            return replay
        if charge is None:
            raise ModelError("DC051")
        refundable = charge.amount - charge.refunded
        if refundable == 0:
            raise ModelError("DC050")
        refund = refundable if amount is None else amount
        if refund > refundable:
            raise ModelError("DC050")
        self._expire(account)
        self._journal(account, refund)
        self._restore(account, charge, refund, new_id)
        # credits given back to a grant that has expired since expire at once
        self._expire(account)
        self.other_rows[new_id] = owner
        if charge.member is not None:
            # a refund is attributed to the member the charge was: it lowers their spend
            account.attributed.append((charge.member, self.now, refund))
        result: Reply = {
            "transaction_id": new_id,
            "refunded_transaction_id": transaction_id,
            "user_id": owner,
            "amount": refund,
            "total_refunded": charge.refunded,
            "refundable_remaining": charge.amount - charge.refunded,
            "balance_after": account.balance,
            "created_at": self.now,
            "is_replay": False,
        }
        self._remember(account, key, "refund_transaction", request, result)
        return result

    def _restore(self, account: Account, charge: Charge, refund: int, refund_id: str) -> None:
        # The refunds of a charge give back its draws from the last one backwards: this
        # refund covers the slice [start, end) of the charge's draws in draw order.
        end = charge.amount - charge.refunded
        start = end - refund
        position = charge.amount
        excess = 0
        for source, drawn in reversed(charge.draws):
            low, high = max(position - drawn, start), min(position, end)
            position -= drawn
            if high <= low:
                continue
            part = high - low
            if source is None:
                forgiven = min(account.debt, part)
                account.debt -= forgiven
                excess += part - forgiven
            else:
                account.grants[source].remaining += part
        charge.refunded += refund
        if excess > 0:
            # debt that newer credits have paid comes back as a new paid grant
            self._create_grant(account, refund_id, "paid", 50, excess, None)

    def sweep(self) -> None:
        """``credit_sweep_expired``: expire grants and mark timed-out holds."""
        for account in self.accounts.values():
            self._expire(account)
        for hold in self.holds.values():
            if hold.status == "active" and hold.expires_at <= self.now:
                hold.status = "expired"

    # ------------------------------------------------------------ pricing

    def publish(self, version: int, config: Mapping[str, Any]) -> Reply:
        """``credit_publish_pricing``: the new version is the active one."""
        self.pricing = Pricing.from_config(version, config)
        return {"version": version, "is_active": True, "created_at": self.now}

    # ------------------------------------------------------------ plans

    def upsert_plan(
        self,
        plan_id: str,
        name: str,
        allowance: int | None,
        period: str | None,
        rollover_cap: int | None,
    ) -> Reply:
        """``credit_upsert_plan`` (never the default plan: that one is shared by all)."""
        before = self.plans.get(plan_id)
        created_at = self.now if before is None else before.created_at
        plan = Plan(plan_id, name, allowance, period, rollover_cap, created_at, self.now)
        self.plans[plan_id] = plan
        return {
            "plan_id": plan_id,
            "name": name,
            "features": {},
            "is_default": False,
            "allowance": allowance,
            "allowance_period": period,
            "rollover_cap": rollover_cap,
            "created_at": created_at,
            "updated_at": self.now,
        }

    def assign_plan(self, user_id: str, plan_id: str | None) -> Reply:
        """``credit_assign_plan``; None unassigns (the user falls back to the default plan, if
        the database has one, which is not the model's: only the assignment's end is
        predicted then)."""
        if plan_id is None:
            self.assignments.pop(user_id, None)
            return {"user_id": user_id, "assigned_at": None}
        plan = self.plans.get(plan_id)
        if plan is None:
            raise ModelError("DC080")
        before = self.assignments.get(user_id)
        if before is None or before[0] != plan_id:
            self.assignments[user_id] = (plan_id, self.now)
        return {
            "user_id": user_id,
            "plan_id": plan_id,
            "plan_name": plan.name,
            "features": {},
            "is_default": False,
            "allowance": plan.allowance,
            "allowance_period": plan.period,
            "rollover_cap": plan.rollover_cap,
            "assigned_at": self.assignments[user_id][1],
        }

    def grant_allowances(self, new_id: str, user_id: str) -> Reply:
        """``credit_grant_allowances(user_id)``: the current period's allowance, once."""
        nothing = {"users": 0, "granted": 0, "already_granted": 0, "amount": 0, "rollover": 0}
        assigned = self.assignments.get(user_id)
        plan = None if assigned is None else self.plans[assigned[0]]
        if plan is None or plan.allowance is None:
            return nothing
        assert plan.period is not None
        start, end = period_bounds(plan.period, self.now)
        account = self.accounts.setdefault(user_id, Account(user_id))
        if (user_id, plan.period, start, plan.id) in self.allowance_grants:
            return {**nothing, "users": 1, "already_granted": 1}
        self._expire(account)
        due = self._allowance_due(account, plan, start)
        if due is None:
            return {**nothing, "users": 1, "already_granted": 1}
        granted, rollover = due
        amount = granted + rollover
        self._journal(account, amount)
        self._create_grant(account, new_id, "promotional", 50, amount, end)
        self.other_rows[new_id] = user_id
        self.allowance_grants[(user_id, plan.period, start, plan.id)] = new_id
        return {**nothing, "users": 1, "granted": 1, "amount": amount, "rollover": rollover}

    def _allowance_due(
        self, account: Account, plan: Plan, start: datetime
    ) -> tuple[int, int] | None:
        """What the plan grants for the period starting at ``start``: (allowance, rollover),
        or None when nothing. While allowances are live (a plan change within a period),
        the plan tops them up to its level, without rollover; else its allowance in full
        and the rollover of the previous period's grants, up to the cap."""
        assert plan.allowance is not None and plan.period is not None
        live = [
            account.grants[source]
            for (user_id, _, _, _), source in self.allowance_grants.items()
            if user_id == account.user_id and not account.grants[source].is_expired(self.now)
        ]
        if live:
            due = plan.allowance - sum(grant.remaining for grant in live)
            return (due, 0) if due > 0 else None
        if not plan.rollover_cap:
            return plan.allowance, 0
        previous = period_bounds(plan.period, start - timedelta(microseconds=1))[0]
        left = sum(
            account.grants[source].expired
            for (user_id, period, period_start, _), source in self.allowance_grants.items()
            if (user_id, period, period_start) == (account.user_id, plan.period, previous)
        )
        return plan.allowance, min(left, plan.rollover_cap)

    # ------------------------------------------------------------ teams

    def upsert_team(self, team_id: str, name: str, min_balance: int) -> Reply:
        """``credit_upsert_team``: the pool is the account ``team:<team id>``."""
        team = self.teams.get(team_id)
        pool = f"team:{team_id}"
        account = self.accounts.setdefault(pool, Account(pool))
        if team is None:
            if account.version > 0:
                raise ModelError("DC006")
            team = self.teams[team_id] = Team(team_id, name, min_balance, self.now, self.now)
        team.name, team.min_balance, team.updated_at = name, min_balance, self.now
        return {
            "team_id": team_id,
            "name": name,
            "account_user_id": pool,
            "min_balance": min_balance,
            "created_at": team.created_at,
            "updated_at": self.now,
        }

    def _team(self, team_id: str) -> Team:
        team = self.teams.get(team_id)
        if team is None:
            raise ModelError("DC081")
        return team

    def _member_spent(self, team: Team, user_id: str, period: str) -> int:
        # net spend in the current period: charges minus refunds, each when it was made
        start = period_bounds(period, self.now)[0]
        return -sum(
            amount
            for member, at, amount in self.accounts[team.pool].attributed
            if member == user_id and at >= start
        )

    def set_team_member(
        self,
        team_id: str,
        user_id: str,
        role: str,
        spend_limit: int | None,
        limit_period: str | None,
    ) -> Reply:
        """``credit_set_team_member``: adds a member, or changes one (``joined_at`` stays)."""
        team = self._team(team_id)
        before = team.members.get(user_id)
        joined_at = self.now if before is None else before.joined_at
        team.members[user_id] = Member(role, spend_limit, limit_period, joined_at)
        spent = None
        if limit_period is not None:
            spent = self._member_spent(team, user_id, limit_period)
        return {
            "team_id": team_id,
            "user_id": user_id,
            "role": role,
            "spend_limit": spend_limit,
            "limit_period": limit_period,
            "spent_in_period": spent,
            "joined_at": joined_at,
        }

    def remove_team_member(self, team_id: str, user_id: str) -> Reply:
        """``credit_remove_team_member``: whether there was such a member."""
        team = self._team(team_id)
        return {"credit_remove_team_member": team.members.pop(user_id, None) is not None}

    def deduct_team(
        self,
        new_id: str,
        team_id: str,
        user_id: str,
        metrics: Mapping[str, Any],
        *,
        key: str | None = None,
    ) -> Reply:
        """``credit_deduct_team``: a member's usage, charged to the pool."""
        team = self._team(team_id)
        account = self.accounts[team.pool]
        usage = normal_usage(metrics)
        request = (user_id, usage)
        # a member's keys are the member's own
        key = None if key is None else f"{user_id}\x1f{key}"
        replay = self._replay(account, key, "team_usage", request)
        if replay is not None:
            return replay
        member = team.members.get(user_id)
        if member is None:
            raise ModelError("DC082")
        pricing = self._priced()
        amount = pricing.cost(usage)
        spent = None
        if member.limit_period is not None:
            assert member.spend_limit is not None
            spent = self._member_spent(team, user_id, member.limit_period)
            if spent + amount > member.spend_limit:
                raise ModelError("DC083")
        self._expire(account)
        floor = max(team.min_balance, pricing.min_balance)
        available = self._admit(account, amount, floor, "DC084")
        transaction_id = None
        if amount > 0:
            transaction_id = new_id
            self._debit(account, new_id, amount, user_id)
        result: Reply = {
            "transaction_id": transaction_id,
            "team_id": team_id,
            "user_id": user_id,
            "amount": amount,
            "balance_after": account.balance,
            "available_after": available - amount,
            "spent_in_period": None if spent is None else spent + amount,
            "spend_limit": member.spend_limit,
            "limit_period": member.limit_period,
            "created_at": self.now,
            "is_replay": False,
            "pricing_version": pricing.version,
        }
        self._remember(account, key, "team_usage", request, result)
        return result
