"""Lifecycle events (docs/events.md): the managers' events on the real stack, and how an
app follows balance changes from the database itself (the emitter on its own:
tests/unit/test_events_emitter.py).

- a manager with an emitter, over every store flavour: each operation emits its events,
  a replay emits none, a refusal emits ``insufficient_credits``, a low balance is told,
  and a subscriber that raises changes neither the result nor the ledger (nor rolls back
  the caller's transaction with a bound connection);
- the database as the source: every balance change is one UPDATE of the account row in
  the same transaction as its journal row, in the WAL that Supabase Realtime decodes
  (read here with test_decoding), and row-level security decides who may see it.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from conftest import sibling_manager
from helpers_api import Api, expect_ok, new_user_id

from ducto import CreditManager, InsufficientCreditsError, MemberLimitExceededError, UsageMetrics
from ducto.events import CreditEvent, CreditEventEmitter, CreditEventType
from ducto.interface import PostgresStore

# ---------------------------------------------------------------- a manager's events

PRICING = {"models": [{"model": "unit", "input": 0, "output": 0, "request": 1}], "default": None}


@pytest.fixture
def observed(manager: CreditManager) -> tuple[CreditManager, list[CreditEvent]]:
    """A manager of the fixture's flavour with an emitter (low balance below 50) whose
    every event is recorded, with pricing published and loaded."""
    emitter = CreditEventEmitter(low_balance_threshold=50)
    seen: list[CreditEvent] = []
    emitter.subscribe(None, seen.append)
    emitting = sibling_manager(manager, emitter=emitter)
    emitting.publish_pricing_from_dict(PRICING)
    return emitting, seen


def kinds(events: list[CreditEvent]) -> list[tuple[str, str | None, int, int | None]]:
    return [(e.type.value, e.user_id, e.amount, e.balance) for e in events]


def test_each_operation_emits_its_events(observed: tuple[CreditManager, list[CreditEvent]]) -> None:
    manager, seen = observed
    user = new_user_id()
    added_result = manager.add_credits(user, 100, idempotency_key="first")
    hold = manager.reserve_credits(user, 30, min_balance=0)
    settled = manager.settle_reservation(hold.reservation_id, 40)
    charged = manager.deduct(user, UsageMetrics("unit", requests=25))
    refund = manager.refund_credits(charged.transaction_id or "", 5)
    assert kinds(seen) == [
        ("credits_added", user, 100, 100),
        ("credits_reserved", user, 30, 70),
        ("credits_deducted", user, 40, 60),
        ("credits_deducted", user, 25, 35),
        ("low_balance", user, 50, 35),
        ("credits_refunded", user, 5, 40),
    ]
    assert [e.source for e in seen] == [added_result, hold, settled, charged, charged, refund]

    seen.clear()
    assert manager.add_credits(user, 100, idempotency_key="first").is_replay
    manager.get_balance(user)
    assert seen == [], "a replay and a read emit nothing"


def test_a_refusal_emits_insufficient_credits(
    observed: tuple[CreditManager, list[CreditEvent]],
) -> None:
    manager, seen = observed
    user = new_user_id()
    manager.add_credits(user, 10)
    seen.clear()
    with pytest.raises(InsufficientCreditsError) as refused:
        manager.deduct(user, UsageMetrics("unit", requests=11))
    [event] = seen
    assert kinds(seen) == [("insufficient_credits", user, 11, 10)]
    assert event.source is refused.value


def test_a_team_charge_names_the_team(observed: tuple[CreditManager, list[CreditEvent]]) -> None:
    manager, seen = observed
    team, member = str(uuid.uuid4()), new_user_id()
    manager.upsert_team(team, "Evented", min_balance=5)
    manager.add_credits(f"team:{team}", 60)
    manager.set_team_member(team, member, spend_limit=20, limit_period="month")
    seen.clear()
    manager.deduct_team(team, member, UsageMetrics("unit", requests=15))
    with pytest.raises(MemberLimitExceededError):
        manager.deduct_team(team, member, UsageMetrics("unit", requests=6))
    assert [(e.type.value, e.user_id, e.team_id, e.amount, e.balance) for e in seen] == [
        ("credits_deducted", member, team, 15, 45),
        ("low_balance", member, team, 50, 45),
        ("insufficient_credits", member, team, 6, None),
    ]


def test_the_sweep_emits_what_it_expired(
    observed: tuple[CreditManager, list[CreditEvent]],
) -> None:
    manager, seen = observed
    expires = datetime.now(UTC) + timedelta(seconds=1)
    manager.add_credits(new_user_id(), 7, expires_at=expires)
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.2)
    seen.clear()
    swept = manager.sweep_expired_credits()
    [event] = seen
    assert (event.type, event.user_id, event.amount) == (
        CreditEventType.CREDITS_EXPIRED,
        None,
        swept.expired_amount,
    )
    assert swept.expired_amount >= 7


def test_a_failing_subscriber_breaks_no_operation(
    manager: CreditManager, caplog: pytest.LogCaptureFixture
) -> None:
    emitter = CreditEventEmitter(low_balance_threshold=1_000)

    def broken(event: CreditEvent) -> None:
        raise RuntimeError(f"subscriber bug on {event.type}")

    emitter.subscribe(None, broken)
    emitting = sibling_manager(manager, emitter=emitter)
    user = new_user_id()
    with caplog.at_level(logging.ERROR, logger="ducto.events"):
        added_result = emitting.add_credits(user, 100)
        hold = emitting.reserve_credits(user, 10, min_balance=0)
        emitting.settle_reservation(hold.reservation_id, 10)
        with pytest.raises(InsufficientCreditsError):
            emitting.reserve_credits(user, 1_000)
    assert added_result.balance_after == 100
    assert emitting.get_balance(user).balance == 90
    assert [record.args[-1] for record in caplog.records] == [  # type: ignore[index]
        CreditEventType.CREDITS_ADDED,
        CreditEventType.CREDITS_RESERVED,
        CreditEventType.LOW_BALANCE,
        CreditEventType.CREDITS_DEDUCTED,
        CreditEventType.LOW_BALANCE,
        CreditEventType.INSUFFICIENT_CREDITS,
    ]
    assert emitting.verify_ledger() == []


def test_a_failing_subscriber_does_not_roll_back_the_callers_transaction(
    database_url: str,
) -> None:
    emitter = CreditEventEmitter()
    emitter.subscribe(None, lambda event: 1 / 0)
    user = new_user_id()
    with psycopg.connect(database_url) as conn:
        CreditManager(PostgresStore(connection=conn), emitter=emitter).add_credits(user, 12)
        conn.commit()
    with psycopg.connect(database_url) as conn:
        assert CreditManager(PostgresStore(connection=conn)).get_balance(user).balance == 12


# ---------------------------------------------------------------- the database as the source


@pytest.fixture
def logical_slot(db: psycopg.Connection[Any]) -> Iterator[str]:
    """A logical replication slot (test_decoding) that sees every change from now on."""
    slot = f"ducto_test_{uuid.uuid4().hex[:12]}"
    db.execute("select pg_create_logical_replication_slot(%s, 'test_decoding')", (slot,))
    try:
        yield slot
    finally:
        db.execute("select pg_drop_replication_slot(%s)", (slot,))


def decoded(db: psycopg.Connection[Any], slot: str) -> list[list[str]]:
    """The changes of the slot so far, one list of change lines per transaction."""
    transactions: list[list[str]] = []
    for (line,) in db.execute(
        "select data from pg_logical_slot_get_changes(%s, null, null)", (slot,)
    ).fetchall():
        if line.startswith("BEGIN"):
            transactions.append([])
        elif not line.startswith("COMMIT"):
            transactions[-1].append(line)
    return transactions


BALANCE = re.compile(r"balance\[bigint\]:(-?\d+)")


def test_every_balance_change_is_in_the_wal_with_its_journal_row(
    db: psycopg.Connection[Any], service: Api, logical_slot: str
) -> None:
    user = new_user_id()
    expect_ok(service.rpc("credit_add_credits", {"p_user_id": user, "p_amount": 100}))
    expect_ok(service.rpc("credit_deduct_credits", {"p_user_id": user, "p_amount": 30}))
    expect_ok(service.rpc("credit_reserve_credits", {"p_user_id": user, "p_amount": 5}))

    mine = [t for t in decoded(db, logical_slot) if any(f"'{user}'" in line for line in t)]
    account_changes = [
        [line for line in t if line.startswith("table public.credit_accounts:")] for t in mine
    ]
    # add: the account is created and credited (one INSERT, one UPDATE); deduct: one
    # UPDATE; the hold changes no balance (available = balance - holds, read on demand)
    assert [[BALANCE.findall(line)[0] for line in t] for t in account_changes] == [
        ["0", "100"],
        ["70"],
        [],
    ]
    # each balance UPDATE travels in the transaction that journals it (in the partition of
    # the row's month, as logical decoding names it)
    for t, balance in zip(mine[:2], ["100", "70"], strict=True):
        journal = [
            line for line in t if line.startswith("table credit_private.credit_transactions_p")
        ]
        assert len(journal) == 1
        assert f"balance_after[bigint]:{balance}" in journal[0]
    assert any(line.startswith("table public.credit_reservations: INSERT") for line in mine[2])


def test_row_level_security_decides_who_sees_a_balance_change(
    db: psycopg.Connection[Any], service: Api
) -> None:
    """What Realtime checks before it sends a change: can the subscriber select the row?"""
    owner, member, other = new_user_id(), new_user_id(), new_user_id()
    team = str(uuid.uuid4())
    expect_ok(service.rpc("credit_add_credits", {"p_user_id": owner, "p_amount": 10}))
    expect_ok(service.rpc("credit_upsert_team", {"p_team_id": team, "p_name": "Watched"}))
    expect_ok(service.rpc("credit_add_credits", {"p_user_id": f"team:{team}", "p_amount": 10}))
    expect_ok(service.rpc("credit_set_team_member", {"p_team_id": team, "p_user_id": member}))

    def visible_to(user: str, account_user_id: str) -> bool:
        with db.transaction(force_rollback=True):
            db.execute("set local role authenticated")
            db.execute(
                "select set_config('request.jwt.claims', %s, true)",
                (json.dumps({"sub": user, "role": "authenticated"}),),
            )
            found = db.execute(
                "select balance from credit_accounts where user_id = %s", (account_user_id,)
            ).fetchone()
        return found is not None

    assert visible_to(owner, owner)
    assert not visible_to(other, owner)
    # a team's pool: every member follows it, nobody else
    assert visible_to(member, f"team:{team}")
    assert not visible_to(owner, f"team:{team}")
