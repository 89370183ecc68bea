"""A pure-Python model of the credit ledger's documented rules (docs/ledger.md).

The state-machine test in ``test_concurrency.py`` applies the same random operations to
the SQL ledger and to this model and compares every reply and every balance. The model
follows the documentation, not the SQL: where they differ, one of them is wrong.

What it models (docs/ledger.md, "Rules"):

- burn-down: priority, then soonest expiry (never-expiring last), then oldest;
- a grant is spendable while ``now < expires_at``; every write on an account first
  journals the expiry of its expired grants;
- floor: a deduct or reserve is admitted only if ``available - amount >= min_balance``;
- holds: settle charges the actual amount, overage included; what grants cannot pay
  becomes debt; new credits pay debt first;
- refunds give credits back where they came from, the most recently drawn first: debt
  is forgiven first, then grants are refilled (and expire again at once if they have
  expired since); debt that newer credits have paid comes back as a new paid grant;
- idempotency keys per account: a replay returns the first result (recognised before
  checks that depend on the time), other parameters are ``DC020``, a failed operation
  does not consume its key.

An operation that fails writes nothing (its SQL transaction rolls back): run each one in
``with model.atomic():``, which restores the model when it raises ModelError.

Identifiers (transactions, reservations) are the ones the SQL ledger assigned: the
caller passes them in. A grant is named by the journal row that created it (the
``transaction_id`` column of ``credit_grants``), which needs no extra id.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

Reply = dict[str, Any]
"""The fields of an RPC's result row the model predicts (a subset of the row)."""


class ModelError(Exception):
    """The model predicts that the operation fails with this SQLSTATE."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


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

    def expired(self, now: datetime) -> bool:
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
    result: Reply | None = None

    def counts(self, now: datetime) -> bool:
        return self.status == "active" and self.expires_at > now


@dataclass
class Charge:
    """A refundable journal row (usage or capture) and where its credits came from."""

    id: str
    user_id: str
    amount: int
    draws: list[tuple[str | None, int]]
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


class LedgerModel:
    """The documented ledger, one account per user, with a clock the caller moves."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.accounts: dict[str, Account] = {}
        self.holds: dict[str, Hold] = {}
        self.charges: dict[str, Charge] = {}
        # journal rows that exist but cannot be refunded (credits, refunds)
        self.other_rows: dict[str, str] = {}

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
        unswept = sum(g.remaining for g in account.grants.values() if g.expired(self.now))
        balance = account.balance - unswept
        held = self.held(account)
        return {"balance": balance, "held": held, "available": balance - held}

    def available(self, account: Account) -> int:
        """Balance minus active holds, for an account whose expiry is journalled."""
        return account.balance - self.held(account)

    # ------------------------------------------------------------ internals

    def _journal(self, account: Account, amount: int) -> None:
        account.balance += amount
        account.version += 1

    def _expire(self, account: Account) -> None:
        for grant in account.grants.values():
            if grant.remaining > 0 and grant.expired(self.now):
                self._journal(account, -grant.remaining)
                grant.remaining = 0

    def _draw(self, account: Account, amount: int) -> list[tuple[str | None, int]]:
        draws: list[tuple[str | None, int]] = []
        left = amount
        spendable = sorted(
            (g for g in account.grants.values() if g.remaining > 0 and not g.expired(self.now)),
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
        account: Account, key: str | None, operation: str, request: tuple[Any, ...], result: Reply
    ) -> None:
        if key is not None:
            account.keys[key] = StoredKey(operation, request, dict(result))

    def _admit(self, account: Account | None, amount: int, min_balance: int) -> int:
        available = 0 if account is None else self.available(account)
        if account is None or available - amount < min_balance:
            raise ModelError("DC010")
        return available

    # ------------------------------------------------------------ operations

    def add(
        self,
        new_id: str,
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
            "amount": amount,
            "tx_type": tx_type,
            "category": category,
            "priority": priority,
            "expires_at": expires_at,
            "balance_after": account.balance,
            "is_replay": False,
        }
        self._remember(account, key, "add_credits", request, result)
        return result

    def deduct(
        self,
        new_id: str,
        user_id: str,
        amount: int,
        *,
        min_balance: int = 0,
        key: str | None = None,
    ) -> Reply:
        """``credit_deduct_credits``."""
        account = self.accounts.get(user_id)
        request = (amount, min_balance)
        replay = self._replay(account, key, "usage", request)
        if replay is not None:
            return replay
        if account is not None:
            self._expire(account)
        self._admit(account, amount, min_balance)
        assert account is not None
        self._journal(account, -amount)
        draws = self._draw(account, amount)
        self.charges[new_id] = Charge(new_id, user_id, amount, draws)
        result: Reply = {
            "transaction_id": new_id,
            "reservation_id": None,
            "amount": amount,
            "overage": 0,
            "balance_after": account.balance,
            "available_after": self.available(account),
            "is_replay": False,
        }
        self._remember(account, key, "usage", request, result)
        return result

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
            "amount": amount,
            "expires_at": expires_at,
            "available_after": available - amount,
            "is_replay": False,
        }
        self._remember(account, key, "reserve_credits", request, result)
        return result

    def settle(self, new_id: str, reservation_id: str, actual: int) -> Reply:
        """``credit_settle_reservation``; ``new_id`` names the capture row, if any."""
        hold = self.holds.get(reservation_id)
        if hold is None:
            raise ModelError("DC031")
        if hold.status == "settled":
            assert hold.result is not None
            if hold.settled_amount == actual:
                return {**hold.result, "is_replay": True}
            raise ModelError("DC041")
        if hold.status == "released":
            raise ModelError("DC040")
        # active or timed out: the usage happened, so it is charged in full
        account = self.accounts[hold.user_id]
        self._expire(account)
        transaction_id: str | None = None
        if actual > 0:
            transaction_id = new_id
            self._journal(account, -actual)
            draws = self._draw(account, actual)
            self.charges[new_id] = Charge(new_id, hold.user_id, actual, draws)
        hold.status = "settled"
        hold.settled_amount = actual
        hold.result = {
            "transaction_id": transaction_id,
            "reservation_id": reservation_id,
            "amount": actual,
            "overage": max(actual - hold.amount, 0),
            "balance_after": account.balance,
            "available_after": self.available(account),
            "is_replay": False,
        }
        return dict(hold.result)

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
        # a write on the account: expired grants are journalled first
        account = self.accounts[hold.user_id]
        self._expire(account)
        hold.status = "released"
        hold.result = {
            "reservation_id": reservation_id,
            "amount": hold.amount,
            "status": "released",
            "available_after": self.available(account),
            "is_replay": False,
        }
        return dict(hold.result)

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
        result: Reply = {
            "transaction_id": new_id,
            "refunded_transaction_id": transaction_id,
            "amount": refund,
            "total_refunded": charge.refunded,
            "refundable_remaining": charge.amount - charge.refunded,
            "balance_after": account.balance,
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
